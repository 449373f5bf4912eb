"""The algebra of attention states: the one definition of the merge.

An attention state over a key set ``S`` is ``(o, l)`` with ``l = log sum_{j in S} exp(s_j)`` and
``o = sum_{j in S} exp(s_j - l) v_j``. Two states over disjoint key sets merge into the state over
their union::

    l = logaddexp(l_a, l_b)
    o = sigmoid(l_a - l_b) * o_a + sigmoid(l_b - l_a) * o_b

The merge is commutative and associative with identity ``(0, -inf)``, the state of an empty key
set (``proofs/merge_monoid.py``). It is written here once, max-subtracted so that it never
overflows and never makes a NaN, for NumPy arrays and torch tensors alike; the reference and the
portable backend both call it, and the Triton kernels restate it in ``fast/triton``.

A state's ``lse`` is finite, or ``-inf`` for the empty set: ``+inf`` (the log of an infinite sum)
and NaN are not states. ``check_lse`` rejects them where the values are on the host; the NumPy
merge (the oracle's) calls it, the torch merge (the backends' hot path) reads no values.
A state's ``out`` is finite; ``check_out`` rejects ``+-inf`` and NaN on the host alike
(``relaycore.merge_states`` calls both checks).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from relaycore.types import AttentionState


def _is_numpy(x) -> bool:
    return isinstance(x, np.ndarray) or np.isscalar(x)


def empty_state(shape, head_dim: int, *, like=None) -> AttentionState:
    """The identity of the merge: ``out = 0`` ``[*shape, head_dim]``, ``lse = -inf`` ``[*shape]``.

    Args:
        shape: leading shape, e.g. ``(total_q, Hq)``.
        head_dim: ``D``.
        like: a torch tensor whose device the result takes (and float32 lse, out of its dtype);
            ``None`` gives float64 NumPy arrays.
    """
    shape = tuple(shape)
    if like is None or _is_numpy(like):
        return AttentionState(np.zeros(shape + (head_dim,)), np.full(shape, -np.inf))
    import torch

    return AttentionState(
        torch.zeros(shape + (head_dim,), dtype=like.dtype, device=like.device),
        torch.full(shape, float("-inf"), dtype=torch.float32, device=like.device),
    )


def check_lse(name: str, lse) -> None:
    """Reject an ``lse`` that holds ``+inf`` or NaN, where reading it costs no synchronization.

    Args:
        name: the argument's name for the message, e.g. ``"b.lse"``.
        lse: ``[...]`` any float dtype; a NumPy array, or a torch tensor. Tensors off the CPU are
            not read (that would synchronize the device): for them a valid ``lse`` is the
            caller's precondition.

    Raises:
        ValueError: naming ``name``, the expected values, the first offending value and its index.
    """
    _refuse(name, lse, "finite values or -inf (the empty state)", lambda x, xp: xp.isnan(x) | (x == np.inf))


def check_out(name: str, out) -> None:
    """Reject an ``out`` that holds ``+-inf`` or NaN, where reading it costs no synchronization.

    Args:
        name: the argument's name for the message, e.g. ``"a.out"``.
        out: ``[..., D]`` any float dtype; a NumPy array, or a torch tensor. Tensors off the CPU
            are not read, as in ``check_lse``.

    Raises:
        ValueError: naming ``name``, the expected values, the first offending value and its index.
    """
    _refuse(name, out, "finite values", lambda x, xp: ~xp.isfinite(x))


def _refuse(name: str, x, expected: str, bad_of) -> None:
    """Raise a ValueError if ``bad_of(x, xp)`` (``xp``: ``numpy`` or ``torch``) marks any
    element of ``x``; tensors off the CPU are not read."""
    if _is_numpy(x):
        x = np.asarray(x)
        bad = bad_of(x, np)
        if not bad.any():
            return
        first = tuple(int(i) for i in np.argwhere(bad)[0])
    else:
        if x.device.type != "cpu":
            return
        import torch

        bad = bad_of(x, torch)
        if not bool(bad.any()):
            return
        first = tuple(int(i) for i in bad.nonzero()[0])
    count = int(bad.sum())
    others = f" ({count - 1} more)" if count > 1 else ""
    raise ValueError(f"{name}: expected {expected}, got {float(x[first])} at index {first}{others}")


def merge(a: AttentionState, b: AttentionState) -> AttentionState:
    """Merge the states of two disjoint key sets.

    Args:
        a: ``out [..., D]``, ``lse [...]``; ``out`` finite, ``lse`` finite or ``-inf``.
        b: same shapes as ``a``.

    Returns:
        The state over the union. NumPy inputs compute in their own float dtype; torch inputs
        compute the weights in float32 (or float64 when ``lse`` is float64) and return ``out`` in
        ``a.out``'s dtype. An empty side (``lse = -inf``) leaves the other unchanged, and two
        empty sides give ``(0, -inf)``.

    Raises:
        ValueError: NumPy inputs only, an ``lse`` of ``+inf`` or NaN (``check_lse``). Torch
            inputs are not read (the backends' hot path, on any device): a row whose ``lse`` is
            ``+inf`` or NaN on either side gets NaN in ``out`` (and no meaningful ``lse``);
            the other rows are unaffected. ``relaycore.merge_states`` checks CPU tensors too.
    """
    if _is_numpy(a.lse):
        check_lse("a.lse", a.lse)
        check_lse("b.lse", b.lse)
    return _merge(a, b)


def merge_all(states: Sequence[AttentionState]) -> AttentionState:
    """Merge states left to right (the order fixes the rounding, not the exact value).

    Raises:
        ValueError: no state, or, for NumPy states, an ``lse`` of ``+inf`` or NaN (named
            ``states[i].lse``); torch states are not read, as in ``merge``.
    """
    if not states:
        raise ValueError("merge_all: expected at least one state, got none")
    for i, s in enumerate(states):
        if _is_numpy(s.lse):
            check_lse(f"states[{i}].lse", s.lse)
    acc = states[0]
    for s in states[1:]:
        acc = _merge(acc, s)
    return acc


def _merge(a: AttentionState, b: AttentionState) -> AttentionState:
    """``merge`` without the value check."""
    if _is_numpy(a.lse):
        return _merge_numpy(a, b)
    return _merge_torch(a, b)


def _merge_numpy(a: AttentionState, b: AttentionState) -> AttentionState:
    la = np.asarray(a.lse)
    lb = np.asarray(b.lse)
    m = np.maximum(la, lb)
    m_safe = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(over="ignore"):  # a difference past float's range (lse near -1e308 and 1e308) is -inf:
        wa = np.exp(la - m_safe)  # exp(-inf) = 0 exactly, the weight it stands for rounds to; the larger
        wb = np.exp(lb - m_safe)  # side is exp(0) = 1 exactly
    total = wa + wb  # in [1, 2] unless both sides are empty (then 0)
    seen = total > 0
    total_safe = np.where(seen, total, 1.0)
    lse = np.where(seen, m_safe + np.log(total_safe), -np.inf)
    out = (wa / total_safe)[..., None] * a.out + (wb / total_safe)[..., None] * b.out
    return AttentionState(out.astype(np.result_type(a.out), copy=False), lse.astype(np.result_type(la), copy=False))


def _merge_torch(a: AttentionState, b: AttentionState) -> AttentionState:
    import torch

    acc = torch.float64 if a.lse.dtype == torch.float64 else torch.float32
    la = a.lse.to(acc)
    lb = b.lse.to(acc)
    m = torch.maximum(la, lb)
    m_safe = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    wa = torch.exp(la - m_safe)
    wb = torch.exp(lb - m_safe)
    total = wa + wb
    seen = total > 0
    total_safe = torch.where(seen, total, torch.ones_like(total))
    lse = torch.where(seen, m_safe + torch.log(total_safe), torch.full_like(total, float("-inf")))
    out = (wa / total_safe).unsqueeze(-1) * a.out.to(acc) + (wb / total_safe).unsqueeze(-1) * b.out.to(acc)
    return AttentionState(out.to(a.out.dtype), lse.to(a.lse.dtype))

