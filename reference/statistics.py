"""Per-row statistics of the keys each query sees: what ``relaycore.bounds`` needs."""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import numpy as np

from relaycore.types import PrefixLevel, RequestKV
from relaycore.reference.problem import Problem, load
from relaycore.reference.softmax import row_chunks


class ContextStatistics(NamedTuple):
    """What the error bounds of a query row depend on.

    Attributes:
        num_keys: int64 ``[total_q, Hq]``, ``N``: keys the row sees (prefix tokens and own).
        score_abs: float64 ``[total_q, Hq]``, ``A = max_j scale * sum_d |q_d k_jd|`` over the
            keys the row sees (0 when it sees none).
        value_abs: float64 ``[total_q, Hq, D]``, ``V_d = max_j |v_jd|`` over the keys the row
            sees (0 when it sees none).
    """

    num_keys: np.ndarray
    score_abs: np.ndarray
    value_abs: np.ndarray


def context_statistics(
    q,
    cu_seqlens_q,
    kv: RequestKV,
    prefixes: Sequence[PrefixLevel] = (),
    *,
    causal: bool = True,
    softmax_scale: Optional[float] = None,
) -> ContextStatistics:
    """``N``, ``A`` and ``V_d`` of every query row (arguments as ``relaycore.relay_attention``).

    Raises:
        TypeError, ValueError: invalid input (``relaycore.validation``), or a non-finite value
            a query attends (``reference/problem.py``).
    """
    return statistics_from_problem(load(q, cu_seqlens_q, kv, prefixes, causal=causal, softmax_scale=softmax_scale))


def statistics_from_problem(problem: Problem) -> ContextStatistics:
    """``context_statistics`` on a loaded ``Problem``."""
    meta = problem.meta
    total_q, hq, d = problem.q.shape
    hkv, g = meta.num_kv_heads, meta.group_size
    num_keys = np.zeros((total_q, hq), dtype=np.int64)
    score_abs = np.zeros((total_q, hq))
    value_abs = np.zeros((total_q, hq, d))
    for b in range(meta.batch):
        lo, hi = int(meta.cu_seqlens_q[b]), int(meta.cu_seqlens_q[b + 1])
        if hi == lo:
            continue
        k, v = problem.context(b)  # [L, Hkv, D]
        n = problem.keys_seen(b)  # query j sees context tokens 0 .. n[j] - 1
        num_keys[lo:hi] = n[:, None]
        if k.shape[0] == 0:
            continue
        last = np.maximum(n - 1, 0)
        k_abs = np.abs(k).transpose(1, 2, 0)[:, None]  # [Hkv, 1, D, L]
        for rows in row_chunks(lo, hi, hq * k.shape[0] * 8):
            m = rows.stop - rows.start
            qb = np.abs(problem.q[rows]).reshape(m, hkv, g, d).transpose(1, 2, 0, 3)  # [Hkv, G, m, D]
            running = np.maximum.accumulate(np.matmul(qb, k_abs), axis=-1)  # [Hkv, G, m, L]
            last_rows = last[rows.start - lo:rows.stop - lo]
            a = np.take_along_axis(running, last_rows[None, None, :, None], axis=-1)[..., 0]  # [Hkv, G, m]
            score_abs[rows] = a.transpose(2, 0, 1).reshape(m, hq) * meta.softmax_scale
        score_abs[lo:hi] = np.where(n[:, None] > 0, score_abs[lo:hi], 0.0)
        v_running = np.maximum.accumulate(np.abs(v), axis=0)[last]  # [q_len, Hkv, D]
        value_abs[lo:hi] = np.where(n[:, None, None] > 0, np.repeat(v_running, g, axis=1), 0.0)
    return ContextStatistics(num_keys, score_abs, value_abs)
