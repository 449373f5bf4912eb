"""The attention state of query rows over a block of keys, in float64, never NaN."""

from __future__ import annotations

from typing import Optional

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
