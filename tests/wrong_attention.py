"""Deliberately wrong relay-attention functions, for ``relaycore verify --function`` to reject.

Each has ``relaycore.relay_attention``'s signature, takes torch tensors, and returns
``(out in q's dtype, lse float32)`` like a backend.
"""

from __future__ import annotations

import numpy as np

import relaycore
from relaycore.reference import relay_parts
from relaycore.types import AttentionState


def ignore_prefix(q, cu_seqlens_q, kv, prefixes, *, causal=True, softmax_scale=None):
    """Attention over the request's own tokens only: every prefix is dropped."""
    return relaycore.relay_attention(q, cu_seqlens_q, kv, (), causal=causal, softmax_scale=softmax_scale, backend="torch")


def _merge_with_the_wrong_sign(a: AttentionState, b: AttentionState) -> AttentionState:
    """``sigmoid(l_b - l_a) o_a + sigmoid(l_a - l_b) o_b``: each side gets the other's weight."""
    with np.errstate(invalid="ignore", over="ignore"):
        gap = np.nan_to_num(a.lse - b.lse, nan=0.0)  # two empty sides: -inf - -inf
        weight_a = 1.0 / (1.0 + np.exp(gap))  # sigmoid(l_b - l_a), which belongs to b
    return AttentionState(weight_a[..., None] * a.out + (1 - weight_a)[..., None] * b.out, np.logaddexp(a.lse, b.lse))


def merge_with_wrong_sign(q, cu_seqlens_q, kv, prefixes, *, causal=True, softmax_scale=None):
    """The relay parts of the float64 reference, merged with the sign of the log-sum-exp gap
    flipped."""
    parts = relay_parts(q, cu_seqlens_q, kv, prefixes, causal=causal, softmax_scale=softmax_scale)
    total = parts[0]
    for part in parts[1:]:
        total = _merge_with_the_wrong_sign(total, part)
    return AttentionState(q.new_tensor(total.out), q.new_empty(0).float().new_tensor(total.lse))


def crash(q, cu_seqlens_q, kv, prefixes, *, causal=True, softmax_scale=None):
    """Raises, as a kernel that fails to launch would."""
    raise RuntimeError("kernel launch failed")
