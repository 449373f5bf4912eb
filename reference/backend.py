"""The reference as a backend: ``relay_attention(..., backend="reference")`` for any input.

NumPy inputs give float64 results. torch tensors (any device) are copied to
the host, computed in float64, and returned as torch tensors on q's device: ``out`` converted to
q's dtype, ``lse`` float32 (float64 for float64 q), as every backend returns them. torch is never imported here: the
results are made with the input tensors' own methods.
"""

from __future__ import annotations

from typing import Optional

from relaycore.buffers import store
from relaycore.types import AttentionState
from relaycore.validation import BatchMeta
from relaycore.reference.problem import from_validated
from relaycore.reference.relay import relay_from_problem


def supports(meta: BatchMeta) -> Optional[str]:
    """``None``: the reference runs every validated batch (NumPy, or torch on any device) but
    one to be differentiated (``BatchMeta.needs_grad``): it computes in NumPy, which autograd
    does not see, so its result would carry no gradient."""
    if meta.needs_grad:
        return "has no backward (it computes in NumPy), and an input requires grad (use backend='torch', or torch.no_grad())"
    return None


def run(q, cu_seqlens_q, kv, prefixes, meta: BatchMeta, *, out=None, lse=None) -> AttentionState:
    """Relay attention in float64 on validated inputs (see ``relaycore.relay_attention``),
    written into ``out``/``lse`` where given (``relaycore.buffers.store``).

    Returns:
        NumPy inputs: ``out`` float64 ``[total_q, Hq, D]``, ``lse`` float64 ``[total_q, Hq]``.
        torch inputs: ``out`` in q's dtype, ``lse`` float32 (float64 for float64 q), on q's device.

    Raises:
        ValueError: a non-finite value that a query attends, or a score that overflows float64
            (``relaycore.reference`` reads the values; validation does not).
    """
    result = relay_from_problem(from_validated(q, kv, prefixes, meta))
    if meta.array_kind == "numpy":
        return store(result, out, lse)
    # lse in float32, or float64 for float64 q; made with q's own methods, on q's device (from a
    # fresh tensor: q may be a view that a new tensor must not take after, one with the negative bit)
    out_template = q.new_empty(0)
    lse_template = out_template if str(q.dtype) == "torch.float64" else out_template.float()
    return store(AttentionState(out_template.new_tensor(result.out), lse_template.new_tensor(result.lse)), out, lse)
