"""The Triton fast path: relay-attention kernels for CUDA GPUs (and Triton's CPU interpreter).

``plan(meta)`` turns a batch's metadata into work lists once; ``run_planned(plan, q, kv,
prefixes)`` launches the kernels with no host synchronization (reusable across layers and
inside CUDA graphs). ``relaycore.relay_attention(..., backend="triton")`` does both per call;
``prepare(q, cu_seqlens_q, kv, prefixes)`` validates and plans once for
``relaycore.relay_attention(..., plan=)``; ``prepare_graph`` makes a ``GraphPlan``, whose
launches and buffers stay the same from step to step (``update``), for CUDA graphs replayed
every step.
"""

from relaycore.fast.triton.backend import prepare
from relaycore.fast.triton.config import Config, default_config
from relaycore.fast.triton.graph import GraphPlan, prepare_graph
from relaycore.fast.triton.launch import run_planned
from relaycore.fast.triton.plan import Plan, plan, relay_grouping

__all__ = ["Config", "GraphPlan", "Plan", "default_config", "plan", "prepare", "prepare_graph", "relay_grouping",
           "run_planned"]
