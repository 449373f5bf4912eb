"""The Triton backend's protocol functions (``relaycore.dispatch``: ``supports``, ``run``) and
``prepare``, which plans a batch once for ``relay_attention(..., plan=)`` (``Plan.run``)."""

from __future__ import annotations

import torch
import triton

from relaycore.types import AttentionState
from relaycore.validation import BatchMeta, validate

from relaycore.fast.triton.config import DTYPES, MAX_HEAD_DIM
from relaycore.fast.triton.kernels import partial_kernel
from relaycore.fast.triton.launch import run_into
from relaycore.fast.triton.launcher import interpreting
from relaycore.fast.triton.plan import Plan, _plan, plan, stamp_metadata, tensor_signature


def runs_on_the_cpu() -> bool:
    """Whether the kernels run on CPU tensors: under Triton's interpreter, ``TRITON_INTERPRET=1``
    set before they were defined (``triton.jit`` reads it then, at import: set later, it leaves
    them compiled for a GPU)."""
    return interpreting() and not isinstance(partial_kernel, triton.runtime.JITFunction)


def supports(meta: BatchMeta) -> str | None:
    """``None`` when the Triton kernels can run the batch, else the reason they cannot.

    They need torch tensors on an NVIDIA GPU (or on the CPU under ``TRITON_INTERPRET=1``,
    Triton's interpreter, which is how CI runs them: ``runs_on_the_cpu``), q in fp16, bf16 or
    fp32, and a head_dim of at most 256 (any size: a tile's head axis is the power of two that
    holds it, ``config.block_d``). They have no backward: a call to be differentiated
    (``BatchMeta.needs_grad``) goes to another backend. A ROCm build of torch is refused: the
    kernels have never run on one, and ``launcher`` caches compiled kernels by NVIDIA's
    specialization, not by AMD's (which also keys a pointer on its storage being within 2 GB).
    """
    if meta.array_kind != "torch":
        return "needs torch tensors, got NumPy arrays"
    if not meta.device.startswith("cuda") and not (runs_on_the_cpu() and meta.device == "cpu"):
        if interpreting() and meta.device == "cpu":
            return ("needs CUDA tensors here: TRITON_INTERPRET=1 was set after the kernels were imported, which "
                    "left them compiled for a GPU (set it before importing triton), got device cpu")
        return f"needs CUDA tensors (or CPU tensors under TRITON_INTERPRET=1), got device {meta.device}"
    if meta.device.startswith("cuda") and torch.version.hip is not None:
        return (f"needs an NVIDIA GPU, got a ROCm build of torch (HIP {torch.version.hip}): the kernels have never "
                "run there, and their launcher does not key on Triton's AMD pointer specialization")
    if meta.dtype not in DTYPES:
        return f"needs q in {list(DTYPES)}, got {meta.dtype}"
    if meta.head_dim > MAX_HEAD_DIM:
        return f"needs head_dim <= {MAX_HEAD_DIM}, got {meta.head_dim}"
    if meta.needs_grad:
        return "has no backward, and an input requires grad (use backend='torch', or torch.no_grad())"
    return None


def run(q, cu_seqlens_q, kv, prefixes, meta: BatchMeta, *, out=None, lse=None) -> AttentionState:
    """Relay attention on validated inputs: plan the batch, then launch (see ``run_planned``),
    writing into ``out``/``lse`` where given (checked by the caller, as ``dispatch`` says)."""
    return run_into(plan(meta), q, kv, prefixes, out, lse)


def prepare(q, cu_seqlens_q, kv, prefixes=(), *, causal: bool = True, softmax_scale=None) -> Plan:
    """Validate a batch once and plan it for ``relay_attention(..., plan=)``.

    Reads the metadata to the host (a synchronization, unless it is all on the host already:
    ``relaycore.validation.on_host``), so call it once per step and reuse the plan for every
    layer whose lengths, ids, ``causal`` and ``softmax_scale`` are the same.

    Args:
        q, cu_seqlens_q, kv, prefixes, causal, softmax_scale: as ``relaycore.relay_attention``.

    Returns:
        A ``Plan``.

    Raises:
        TypeError, ValueError: bad input, or a batch these kernels cannot run (the reason).
    """
    meta = validate_for_triton(q, cu_seqlens_q, kv, prefixes, causal=causal, softmax_scale=softmax_scale)
    prefixes = tuple(prefixes)
    return _plan(meta, signature=tensor_signature(q, cu_seqlens_q, kv, prefixes),
                 stamps=stamp_metadata(cu_seqlens_q, kv, prefixes, block_table=meta.host_block_table is not None))


def validate_for_triton(q, cu_seqlens_q, kv, prefixes=(), *, causal: bool = True, softmax_scale=None) -> BatchMeta:
    """``validate``, and a batch the Triton kernels can run (``supports``).

    Raises:
        TypeError, ValueError: bad input, or a batch these kernels cannot run (the reason).
    """
    meta = validate(q, cu_seqlens_q, kv, prefixes, causal=causal, softmax_scale=softmax_scale)
    reason = supports(meta)
    if reason is not None:
        raise ValueError(f"backend 'triton' cannot run this batch: {reason}")
    return meta
