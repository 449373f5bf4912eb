"""The Triton backend's protocol functions (``relaycore.dispatch``): ``supports`` and ``run``."""

from __future__ import annotations

from relaycore.types import AttentionState
from relaycore.validation import BatchMeta

from relaycore.fast.triton.config import DTYPES, HEAD_DIMS
from relaycore.fast.triton.launch import interpreting, run_planned
from relaycore.fast.triton.plan import plan


def supports(meta: BatchMeta) -> str | None:
    """``None`` when the Triton kernels can run the batch, else the reason they cannot.

    They need torch tensors on a CUDA device (or on the CPU under ``TRITON_INTERPRET=1``,
    Triton's interpreter, which is how CI runs them), q in fp16, bf16 or fp32, and a head_dim
    that is a power of two from 16 to 256.
    """
    if meta.array_kind != "torch":
        return "needs torch tensors, got NumPy arrays"
    if not meta.device.startswith("cuda") and not (interpreting() and meta.device == "cpu"):
        return f"needs CUDA tensors (or CPU tensors under TRITON_INTERPRET=1), got device {meta.device}"
    if meta.dtype not in DTYPES:
        return f"needs q in {list(DTYPES)}, got {meta.dtype}"
    if meta.head_dim not in HEAD_DIMS:
        return f"needs head_dim in {list(HEAD_DIMS)}, got {meta.head_dim}"
    return None


def run(q, cu_seqlens_q, kv, prefixes, meta: BatchMeta) -> AttentionState:
    """Relay attention on validated inputs: plan the batch, then launch (see ``run_planned``)."""
    return run_planned(plan(meta), q, kv, prefixes)
