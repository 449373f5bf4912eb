"""The Triton fast path: relay-attention kernels for CUDA GPUs (and Triton's CPU interpreter).

``plan(meta)`` turns a batch's metadata into work lists once; ``run_planned(plan, q, kv,
prefixes)`` launches the kernels with no host synchronization (reusable across layers and
inside CUDA graphs). ``relaycore.relay_attention(..., backend="triton")`` does both per call;
``prepare(q, cu_seqlens_q, kv, prefixes)`` validates and plans once for
``relaycore.relay_attention(..., plan=)``.
"""

from relaycore.fast.triton.backend import prepare
from relaycore.fast.triton.config import Config, default_config
from relaycore.fast.triton.launch import run_planned
from relaycore.fast.triton.plan import Plan, plan, relay_grouping

__all__ = ["Config", "Plan", "default_config", "plan", "prepare", "relay_grouping", "run_planned"]
