"""The Triton backend's protocol functions (``relaycore.dispatch``: ``supports``, ``run``) and
the planned path behind ``relay_attention(..., plan=)`` (``prepare``, ``run_with_plan``)."""

from __future__ import annotations

from relaycore.types import AttentionState, PagedKV
from relaycore.validation import BatchMeta, validate

from relaycore.fast.triton.config import DTYPES, HEAD_DIMS
from relaycore.fast.triton.launch import run_planned
from relaycore.fast.triton.launcher import interpreting
from relaycore.fast.triton.plan import Plan, plan


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


def prepare(q, cu_seqlens_q, kv, prefixes=(), *, causal: bool = True, softmax_scale=None) -> Plan:
    """Validate a batch once and plan it for ``relay_attention(..., plan=)``.

    Reads the metadata to the host (one synchronization), so call it once per step and reuse
    the plan for every layer whose lengths, ids, ``causal`` and ``softmax_scale`` are the same.

    Args:
        q, cu_seqlens_q, kv, prefixes, causal, softmax_scale: as ``relaycore.relay_attention``.

    Returns:
        A ``Plan``.

    Raises:
        TypeError, ValueError: bad input, or a batch these kernels cannot run (the reason).
    """
    meta = validate(q, cu_seqlens_q, kv, tuple(prefixes), causal=causal, softmax_scale=softmax_scale)
    reason = supports(meta)
    if reason is not None:
        raise ValueError(f"backend 'triton' cannot run this batch: {reason}")
    return plan(meta)


def run_with_plan(plan_: Plan, q, kv, prefixes, *, causal: bool, softmax_scale) -> AttentionState:
    """``run_planned`` after the checks that need no host synchronization: q's shape, dtype and
    device, the KV layout, the number of prefix levels, ``causal`` and ``softmax_scale`` must be
    the plan's."""
    if not isinstance(plan_, Plan):
        raise TypeError(f"plan: expected a relaycore.fast.triton.Plan (from prepare), got {type(plan_).__name__}")
    want = (plan_.total_q, plan_.num_q_heads, plan_.head_dim)
    if tuple(q.shape) != want:
        raise ValueError(f"q: expected shape {want} (the plan's), got {tuple(q.shape)}")
    if str(q.dtype).replace("torch.", "") != plan_.dtype or str(q.device) != plan_.device:
        raise ValueError(f"q: expected dtype {plan_.dtype} on {plan_.device} (the plan's), got {q.dtype} on {q.device}")
    if isinstance(kv, PagedKV) != plan_.paged:
        raise ValueError(f"kv: expected {'PagedKV' if plan_.paged else 'RaggedKV'} (the plan's), got {type(kv).__name__}")
    if len(prefixes) != plan_.num_levels:
        raise ValueError(f"prefixes: expected {plan_.num_levels} levels (the plan's), got {len(prefixes)}")
    if bool(causal) != plan_.causal:
        raise ValueError(f"causal: expected {plan_.causal} (the plan's), got {causal}")
    if softmax_scale is not None and float(softmax_scale) != plan_.softmax_scale:
        raise ValueError(f"softmax_scale: expected {plan_.softmax_scale} (the plan's) or None, got {softmax_scale}")
    return run_planned(plan_, q, kv, tuple(prefixes))
