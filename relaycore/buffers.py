"""Buffers a caller hands a call for its result (``relay_attention(..., out=, lse=)``): what
they must be (``check_result_buffers``) and how a backend that computes its result elsewhere
delivers it into them (``store``).

A serving engine hands each attention layer its output buffer; the Triton kernels write into
it directly (under ``torch.compile`` through the op ``relaycore::relay_attention_planned_into``),
the other backends copy their result in. A buffer must be an array the call can
write as it would write its own result, and must not share memory with what the call reads:
``out=q`` would have the kernels read queries where results were already written.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np

from relaycore.types import AttentionState
from relaycore.validation import array_kind, call_array_names, call_arrays, check_dense, describe, device_name, dtype_name

#: A NumPy array's ``(first byte, last byte + 1)`` (``np.byte_bounds`` before NumPy 2).
_byte_bounds = getattr(getattr(np.lib, "array_utils", np), "byte_bounds")


def lse_dtype(dtype: str) -> str:
    """The dtype of ``lse`` for torch q of ``dtype`` (a canonical name): float32, or float64
    for float64 q."""
    return "float64" if dtype == "float64" else "float32"


def result_dtypes(kind: str, dtype: str) -> Tuple[str, str]:
    """The dtypes of a call's ``(out, lse)``: float64 for NumPy inputs (the reference computes
    in float64); for torch, ``out`` in q's ``dtype`` and ``lse`` in ``lse_dtype(dtype)``."""
    if kind == "numpy":
        return "float64", "float64"
    return dtype, lse_dtype(dtype)


def check_result_buffers(out, lse, q, cu_seqlens_q, kv, prefixes, *, num_q_heads: int, head_dim: int, dtype: str,
                         eager: bool = True) -> None:
    """Refuse ``out``/``lse`` buffers (``None``: none given) that a call cannot write its result
    into: each must be an array of q's kind on q's device, of the result's shape (``out
    [total_q, Hq, D]``, ``lse [total_q, Hq]``) and dtype (``result_dtypes``), contiguous (NumPy:
    C-contiguous and writeable), a plain ``torch.Tensor`` that does not require grad, and, with
    ``eager``, not a negative view, writeable here (no inference tensor outside
    ``torch.inference_mode``), and in memory apart from every array of the call
    (``validation.call_arrays``: q, the metadata, the keys and values) and from the other
    buffer. Under ``torch.compile`` (``eager=False``, from ``run_planned``) only the checks the
    compiler can trace run.

    Raises:
        TypeError: naming the buffer: another kind or type of array, or another dtype.
        ValueError: naming the buffer: another device or shape, or a tensor that cannot be
            written in place as a plain array (above), or memory shared with an argument (naming
            it) or the other buffer.
    """
    total_q = int(q.shape[0])
    shapes = ((total_q, num_q_heads, head_dim), (total_q, num_q_heads))
    if isinstance(q, np.ndarray):
        fast = (None, None)
    else:  # torch: the common case in one expression (a call's host time), the messages below;
        import torch  # the dtypes are ``result_dtypes``' as torch dtypes

        fast = (q.dtype, torch.float64 if q.dtype == torch.float64 else torch.float32)
    for name, x, shape, want, index in (("out", out, shapes[0], fast[0], 0), ("lse", lse, shapes[1], fast[1], 1)):
        if x is None:
            continue
        fine = (want is not None and type(x) is torch.Tensor and x.dtype == want and x.device == q.device
                and x.shape == shape and x.is_contiguous() and not x.requires_grad)
        if fine and eager:
            fine = not x.is_neg() and (not x.is_inference() or torch.is_inference_mode_enabled())
        if not fine:
            _check_buffer(name, x, shape, result_dtypes(array_kind(q), dtype)[index], q, eager)
    if not eager:
        return
    arrays = call_arrays(q, cu_seqlens_q, kv, prefixes)
    taken = [_extent(x) for x in arrays if array_kind(x) is not None]  # a list for cu_seqlens_q: no memory
    for x in (out, lse):  # out against the arrays, then lse against them and out
        if x is None:
            continue
        span = _extent(x)
        if any(_intersect(span, other) for other in taken):
            names = call_array_names(type(kv)._fields, len(prefixes))
            other = next((n for n, y in zip(names, arrays) if array_kind(y) is not None
                          and _intersect(span, _extent(y))), "out")
            raise ValueError(f"{'out' if x is out else 'lse'}: expected memory apart from the call's arrays and the "
                             f"other buffer, got a buffer that overlaps {other}")
        taken.append(span)


def _check_buffer(name: str, x, shape: Tuple[int, ...], want: str, q, eager: bool) -> None:
    """``check_result_buffers`` of one buffer, with the messages."""
    kind, device = array_kind(q), device_name(q)
    if array_kind(x) != kind:
        raise TypeError(f"{name}: expected a {kind} array like q, got {describe(x)}")
    check_dense(name, x)
    if kind == "torch":
        import torch

        if type(x) is not torch.Tensor:
            raise TypeError(f"{name}: expected a torch.Tensor, got a {type(x).__name__}")
    if device_name(x) != device:
        raise ValueError(f"{name}: expected device {device} (q's), got {device_name(x)}")
    if tuple(x.shape) != shape:
        raise ValueError(f"{name}: expected shape {shape} (the result's), got {tuple(x.shape)}")
    if dtype_name(x) != want:
        numpy = "; NumPy inputs give float64 results" if kind == "numpy" else ""
        raise TypeError(f"{name}: expected dtype {want} (the result's{numpy}), got {dtype_name(x)}")
    if kind == "numpy":
        if not (x.flags.c_contiguous and x.flags.writeable):
            raise ValueError(f"{name}: expected a C-contiguous, writeable array, got one with strides {x.strides} "
                             f"{'' if x.flags.writeable else '(read-only)'}".rstrip())
        return
    if not x.is_contiguous():
        raise ValueError(f"{name}: expected a contiguous tensor, got strides {tuple(x.stride())}")
    if x.requires_grad:
        raise ValueError(f"{name}: expected a tensor that does not require grad (the call writes into it), "
                         f"got one that does")
    if not eager:
        return
    if x.is_neg():
        raise ValueError(f"{name}: expected a plain tensor, got a negative view (torch._neg_view): resolve it with "
                         f".resolve_neg()")
    if x.is_inference() and not torch.is_inference_mode_enabled():
        raise ValueError(f"{name}: expected a tensor writable here, got an inference tensor outside "
                         f"torch.inference_mode()")


def _extent(x) -> Tuple[int, int]:
    """The bytes ``[first, last + 1)`` a NumPy array or torch tensor spans (empty if it has no
    elements; for a strided array, a bound: arrays that interleave are reported as overlapping)."""
    if isinstance(x, np.ndarray):
        return (0, 0) if x.size == 0 else _byte_bounds(x)
    low = x.data_ptr()
    if x.is_contiguous():
        return low, low + x.nbytes
    if x.numel() == 0:
        return low, low
    return low, low + x.element_size() * (sum(s * (n - 1) for s, n in zip(x.stride(), x.shape)) + 1)  # strides >= 0


def _intersect(a: Tuple[int, int], b: Tuple[int, int]) -> bool:
    """Whether two byte extents (``_extent``), neither empty, share a byte."""
    return a[0] < a[1] and b[0] < b[1] and a[0] < b[1] and b[0] < a[1]


def store(s: AttentionState, out=None, lse=None) -> AttentionState:
    """``s`` written into the buffers a caller gave (checked by ``check_result_buffers``): NumPy
    arrays by assignment, torch tensors by ``copy_``; ``None`` keeps ``s``'s own array.

    Returns:
        ``AttentionState(out, lse)``: the given buffers, where given, holding ``s``'s values.
    """
    pair = []
    for buffer, x in ((out, s.out), (lse, s.lse)):
        if buffer is None:
            pair.append(x)
        elif isinstance(buffer, np.ndarray):
            buffer[...] = x
            pair.append(buffer)
        else:
            pair.append(buffer.copy_(x))
    return AttentionState(*pair)
