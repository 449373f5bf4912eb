"""The attention state of query rows over a block of keys, in float64, never NaN."""

from __future__ import annotations

from typing import Iterator, Optional

import numpy as np

from relaycore.types import AttentionState


def attention_state(scores: np.ndarray, values: np.ndarray, seen: Optional[np.ndarray] = None) -> AttentionState:
    """Softmax-weighted values and log-sum-exp of each row of scores.

    ``lse = log sum_j exp(s_j)`` and ``out = sum_j exp(s_j - lse) v_j`` over the keys a row
    sees, computed max-subtracted: ``exp`` never overflows however large the scores, and a row
    that sees no key is exactly ``(0, -inf)``.

    Args:
        scores: float64 ``[..., M, N]`` (already scaled).
        values: float64 ``[..., N, D]``, broadcastable against ``scores``' leading axes.
        seen: bool broadcastable to ``scores``; ``True`` where the row sees the key (all keys
            when ``None``).

    Returns:
        ``AttentionState(out [..., M, D], lse [..., M])`` float64.

    Raises:
        ValueError: a score of a key a row sees is not finite. The oracle's inputs are finite
            (``problem.from_validated``), so that is a product ``softmax_scale * q . k`` that
            overflows float64, where attention has no meaningful float64 result.
    """
    overflow = ~np.isfinite(scores) if seen is None else seen & ~np.isfinite(scores)
    if overflow.any():
        value = scores[tuple(np.argwhere(overflow)[0])]
        raise ValueError(
            f"q: expected scores softmax_scale * q . k finite in float64 (the reference's format), got a score of "
            f"{value}: q and the keys it attends are finite, their products overflow float64"
        )
    if seen is not None:
        scores = np.where(seen, scores, -np.inf)
    peak = np.max(scores, axis=-1, initial=-np.inf)
    shift = np.where(np.isfinite(peak), peak, 0.0)
    weights = np.exp(scores - shift[..., None])  # exp(-inf) = 0 for unseen keys
    total = weights.sum(axis=-1)
    any_seen = total > 0
    total_safe = np.where(any_seen, total, 1.0)
    out = np.matmul(weights, values) / total_safe[..., None]
    lse = np.where(any_seen, shift + np.log(total_safe), -np.inf)
    return AttentionState(out, lse)


#: Bytes of float64 scores that ``grouped_attention`` holds at once (the softmax holds a few
#: arrays of that size: the scores, their exponentials, the mask): it takes the query rows in
#: chunks that fit, so the oracle's memory does not grow with the rows that share a prefix or a
#: request (B 16 x 512 tokens, 32 query heads, over an 8192-token prefix would be 17 GB of
#: scores in one product).
SCORE_BYTES = 64 * 2**20


def row_chunks(start: int, stop: int, row_bytes: int) -> Iterator[slice]:
    """Consecutive slices of ``range(start, stop)``, each of rows whose ``row_bytes`` each add up
    to at most ``SCORE_BYTES`` (at least one row a slice)."""
    step = max(1, SCORE_BYTES // max(row_bytes, 1))
    for first in range(start, stop, step):
        yield slice(first, min(first + step, stop))


def grouped_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, softmax_scale: float,
                      seen: Optional[np.ndarray] = None) -> AttentionState:
    """Attention of query tokens over one sequence of keys, grouped-query heads.

    Per KV head, the rows are (query token, query head of the head's group), and the scores of
    all of them are one matrix product with the keys, taken ``row_chunks`` at a time (each
    row's result is its own; the chunks only bound memory).

    Args:
        q: float64 ``[n, Hq, D]``.
        k, v: float64 ``[L, Hkv, D]``; ``Hq`` a multiple of ``Hkv``.
        softmax_scale: the score scale.
        seen: bool ``[n, L]``: ``True`` where the token sees the key (all keys when ``None``).

    Returns:
        ``AttentionState(out [n, Hq, D], lse [n, Hq])`` float64 (``attention_state``).
    """
    n, hq, d = q.shape
    length, hkv = k.shape[:2]
    g = hq // hkv
    out = np.zeros((n, hq, d))
    lse = np.full((n, hq), -np.inf)
    keys, values = k.transpose(1, 2, 0), v.transpose(1, 0, 2)  # [Hkv, D, L], [Hkv, L, D]
    for rows in row_chunks(0, n, hq * length * 8):
        m = rows.stop - rows.start
        qh = q[rows].reshape(m, hkv, g, d).transpose(1, 0, 2, 3).reshape(hkv, m * g, d)
        scores = np.matmul(qh, keys) * softmax_scale  # [Hkv, m*G, L]
        part = attention_state(scores, values, None if seen is None else np.repeat(seen[rows], g, axis=0))
        out[rows] = part.out.reshape(hkv, m, g, d).transpose(1, 0, 2, 3).reshape(m, hq, d)
        lse[rows] = part.lse.reshape(hkv, m, g).transpose(1, 0, 2).reshape(m, hq)
    return AttentionState(out, lse)
