"""Form two of the oracle: the relay split.

For each level and each prefix, the queries of *all* requests that use it (every token, every
query head of a KV head's group) are gathered into one matrix and multiplied with the prefix KV
as one matrix product; each request's own tokens give one causal (or full) part; the parts are
merged with ``relaycore.state.merge``, the library's one definition of the merge.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np

from relaycore import state
from relaycore.types import AttentionState, PrefixLevel, RequestKV
from relaycore.reference.problem import Problem, load
from relaycore.reference.softmax import grouped_attention


def relay_attention(
    q,
    cu_seqlens_q,
    kv: RequestKV,
    prefixes: Sequence[PrefixLevel] = (),
    *,
    causal: bool = True,
    softmax_scale: Optional[float] = None,
) -> AttentionState:
    """Relay attention in float64: every prefix part, the own part, merged.

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

    Example:
        >>> import numpy as np
        >>> from relaycore import RaggedKV, PrefixLevel
        >>> from relaycore.reference import relay_attention, full_attention
        >>> rng = np.random.default_rng(0)
        >>> kv = RaggedKV(rng.standard_normal((5, 1, 4)), rng.standard_normal((5, 1, 4)), [0, 2, 5])
        >>> system = PrefixLevel(rng.standard_normal((3, 1, 4)), rng.standard_normal((3, 1, 4)), [0, 3], [0, 0])
        >>> q = rng.standard_normal((3, 2, 4))
        >>> a = relay_attention(q, [0, 1, 3], kv, [system])
        >>> b = full_attention(q, [0, 1, 3], kv, [system])
        >>> bool(np.allclose(a.out, b.out, rtol=1e-13, atol=0))
        True
    """
    return relay_from_problem(load(q, cu_seqlens_q, kv, prefixes, causal=causal, softmax_scale=softmax_scale))


def relay_parts(
    q,
    cu_seqlens_q,
    kv: RequestKV,
    prefixes: Sequence[PrefixLevel] = (),
    *,
    causal: bool = True,
    softmax_scale: Optional[float] = None,
) -> List[AttentionState]:
    """The parts ``relay_attention`` merges: one state per prefix level, then the own part.

    Returns:
        ``[level_0, ..., level_{L-1}, own]``, each ``AttentionState(out float64 [total_q, Hq, D],
        lse float64 [total_q, Hq])``; a query whose request has no prefix at a level (id -1, or a
        prefix of length 0) has ``(0, -inf)`` in that level's state.
    """
    return parts_from_problem(load(q, cu_seqlens_q, kv, prefixes, causal=causal, softmax_scale=softmax_scale))


def relay_from_problem(problem: Problem) -> AttentionState:
    """``relay_attention`` on a loaded ``Problem``: the merge of ``parts_from_problem``."""
    return state.merge_all(parts_from_problem(problem))


def parts_from_problem(problem: Problem) -> List[AttentionState]:
    """``relay_parts`` on a loaded ``Problem``."""
    levels = [_prefix_part(problem, level) for level in range(problem.meta.num_levels)]
    return levels + [_own_part(problem)]


def _prefix_part(problem: Problem, level: int) -> AttentionState:
    """One level: per prefix, all its users' query rows times its KV as one matrix product per
    KV head (``grouped_attention``, in chunks of rows that bound its memory)."""
    meta = problem.meta
    total_q, hq, d = problem.q.shape
    out = np.zeros((total_q, hq, d))
    lse = np.full((total_q, hq), -np.inf)
    row_ids = np.repeat(meta.prefix_ids[level], meta.q_lens)  # [total_q]: each row's prefix id
    for p in np.unique(row_ids[row_ids >= 0]):
        rows = np.flatnonzero(row_ids == p)
        part = grouped_attention(problem.q[rows], problem.prefix_k[level][p], problem.prefix_v[level][p],
                                 meta.softmax_scale)
        out[rows], lse[rows] = part.out, part.lse
    return AttentionState(out, lse)


def _own_part(problem: Problem) -> AttentionState:
    """Each request's queries over its own tokens; causal: query j sees tokens ``t <= kv_len -
    q_len + j``."""
    meta = problem.meta
    total_q, hq, d = problem.q.shape
    out = np.zeros((total_q, hq, d))
    lse = np.full((total_q, hq), -np.inf)
    for b in range(meta.batch):
        lo, hi = int(meta.cu_seqlens_q[b]), int(meta.cu_seqlens_q[b + 1])
        if hi == lo:
            continue
        k, v = problem.own_k[b], problem.own_v[b]  # [kv_len, Hkv, D]
        q_len, kv_len = hi - lo, k.shape[0]
        seen = None
        if meta.causal:
            seen = np.arange(kv_len)[None, :] <= (kv_len - q_len + np.arange(q_len))[:, None]  # [q_len, kv_len]
        part = grouped_attention(problem.q[lo:hi], k, v, meta.softmax_scale, seen)
        out[lo:hi], lse[lo:hi] = part.out, part.lse
    return AttentionState(out, lse)
