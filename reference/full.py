"""Form one of the oracle: attention over each request's concatenated context, no split at all.

Each request's prefixes (level by level) and own tokens are laid end to end into one key
sequence, and each query attends the keys an explicit mask allows. Nothing here knows about the
relay split or the merge; ``relay.py`` computes the same numbers the other way, and the two
agree to float64 rounding (``tests/test_reference.py``).
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from relaycore.types import AttentionState, PrefixLevel, RequestKV
from relaycore.reference.problem import Problem, load
from relaycore.reference.softmax import grouped_attention


def full_attention(
    q,
    cu_seqlens_q,
    kv: RequestKV,
    prefixes: Sequence[PrefixLevel] = (),
    *,
    causal: bool = True,
    softmax_scale: Optional[float] = None,
) -> AttentionState:
    """Attention of every query over its whole context with an explicit mask (float64).

    Args:
        q: ``[total_q, Hq, D]``, any float dtype; anything ``np.asarray`` takes, or a torch tensor.
        cu_seqlens_q: integer ``[B + 1]``.
        kv: ``RaggedKV`` or ``PagedKV`` of the requests' own tokens.
        prefixes: ``PrefixLevel`` s, in context order.
        causal: mask own tokens after each query's position.
        softmax_scale: default ``1/sqrt(D)``.

    Returns:
        ``AttentionState(out float64 [total_q, Hq, D], lse float64 [total_q, Hq])``.

    Raises:
        TypeError, ValueError: invalid input (``relaycore.validation``), or a non-finite value
            a query attends, or a score that overflows float64 (``reference/problem.py``).
    """
    return full_from_problem(load(q, cu_seqlens_q, kv, prefixes, causal=causal, softmax_scale=softmax_scale))


def full_from_problem(problem: Problem) -> AttentionState:
    """``full_attention`` on a loaded ``Problem``."""
    meta = problem.meta
    total_q, hq, d = problem.q.shape
    out = np.zeros((total_q, hq, d))
    lse = np.full((total_q, hq), -np.inf)
    for b in range(meta.batch):
        lo, hi = int(meta.cu_seqlens_q[b]), int(meta.cu_seqlens_q[b + 1])
        if hi == lo:
            continue
        k, v = problem.context(b)  # [L, Hkv, D]
        # query j sees the first keys_seen[j] context tokens
        seen = np.arange(k.shape[0])[None, :] < problem.keys_seen(b)[:, None]  # [q_len, L]
        state = grouped_attention(problem.q[lo:hi], k, v, meta.softmax_scale, seen)
        out[lo:hi], lse[lo:hi] = state.out, state.lse
    return AttentionState(out, lse)
