"""The one place tests get tolerances: ``relaycore.bounds`` turned into per-element bounds.

Every comparison in the suite goes through here (or through ``relaycore.testing.check``,
which uses the same ``bounds_for``): no test picks an ``atol`` of its own. A backend whose
blocking is known passes its count of rounding steps (``triton_steps``) instead of
``relaycore.bounds.default_steps``, which holds for any blocking.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np

from relaycore import bounds
from relaycore.testing import Batch, Tolerance, bounds_for
from relaycore.types import AttentionState

if TYPE_CHECKING:  # the Triton package imports torch and triton
    from relaycore.fast.triton import Config
    from relaycore.validation import BatchMeta

__all__ = [
    "Tolerance", "assert_agree", "bounds_for", "float64_agreement", "merge_tolerance", "softmax_tolerance", "sum_tolerance",
    "triton_steps",
]


def float64_agreement(batch: Batch) -> Tolerance:
    """How far two float64 computations of the same batch may differ: each lies within the
    float64 bound of the exact value, so their difference lies within twice that bound."""
    tol = bounds_for(batch, "float64")
    return Tolerance(2 * tol.out, 2 * tol.lse)


def triton_steps(meta: BatchMeta, config: Optional[Config] = None) -> np.ndarray:
    """The Triton kernels' rounding steps per key, for ``steps=`` of ``relaycore.testing``'s
    ``assert_close`` / ``check`` / ``bounds_for``.

    Args:
        meta: ``relaycore.validation.BatchMeta`` of the batch.
        config: the ``relaycore.fast.triton.Config`` it runs with (default: the one
            ``relay_attention`` uses).

    Returns:
        int64 ``[total_q, 1]``: ``relaycore.fast.triton.rounding.steps_per_token`` as a column,
        so that it broadcasts over the query heads of the bound's ``[total_q, Hq]`` rows.
    """
    from relaycore.fast.triton.rounding import steps_per_token

    return steps_per_token(meta, config)[:, None]


def softmax_tolerance(scores, values, dtype: str, steps=None) -> Tolerance:
    """Bound on the error of the attention state of given scores and values.

    The scores are inputs here, not products ``q . k``, so the score term of the bound is taken
    at ``D = 0`` (an over-estimate: it still counts six roundings of each score).

    Args:
        scores: ``[..., N]`` (``-inf`` for keys the row does not see).
        values: ``[..., N, D]``.
        dtype: the precision of the computation.
        steps: rescale/merge steps per key (default: any blocking).

    Returns:
        ``Tolerance(out [..., D], lse [...])`` against the exact state.
    """
    s = np.asarray(scores, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    seen = np.isfinite(s)
    num_keys = seen.sum(axis=-1)
    score_abs = np.where(seen, np.abs(s), 0.0).max(axis=-1, initial=0.0)
    value_abs = np.where(seen[..., None], np.abs(v), 0.0).max(axis=-2, initial=0.0)
    prec = bounds.precision(dtype)
    log_n = np.log(np.maximum(num_keys, 1))
    return Tolerance(
        bounds.out_bound(value_abs, value_abs, num_keys, score_abs, 0, prec, steps),  # |exact out_d| <= V_d
        bounds.lse_bound(score_abs + log_n, num_keys, score_abs, 0, prec, steps),  # |exact lse| <= A + log N
    )


def merge_tolerance(states: Sequence[AttentionState], dtype: str) -> Tolerance:
    """Bound on the rounding error of merging ``states`` (in any order and grouping) against
    the exact merge: merging ``k`` states is attention over ``k`` keys whose scores are the
    states' ``lse`` and whose values are their ``out``, one merge step per key.

    Args:
        states: states of one shape (NumPy arrays).
        dtype: the precision the merge runs in.
    """
    lse = np.stack([np.asarray(s.lse, dtype=np.float64) for s in states], axis=-1)
    out = np.stack([np.asarray(s.out, dtype=np.float64) for s in states], axis=-2)
    return softmax_tolerance(lse, out, dtype, steps=len(states))


def sum_tolerance(num_terms: int, dtype: str) -> float:
    """Relative error of a sum of ``num_terms`` non-negative terms in ``dtype``, any order
    (``gamma_n``); twice that between two such sums."""
    return 2 * float(bounds.gamma(num_terms, bounds.UNIT_ROUNDOFF[dtype]))


def assert_agree(a: AttentionState, b: AttentionState, tol: Tolerance, what: str = "") -> None:
    """``|a - b| <= tol`` elementwise for ``out`` and ``lse``, with ``-inf`` matching only
    ``-inf``; the message names the worst element."""
    for name, x, y, bound in (("out", a.out, b.out, tol.out), ("lse", a.lse, b.lse, tol.lse)):
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        assert x.shape == y.shape, f"{what} {name}: shapes {x.shape} and {y.shape} differ"
        with np.errstate(invalid="ignore"):
            error = np.where(x == y, 0.0, np.abs(x - y))
        bad = ~(error <= bound)  # NaN errors are bad too
        if bad.any():
            i = np.unravel_index(int(np.argmax(np.where(bad, error, -1.0))), x.shape)
            raise AssertionError(
                f"{what} {name}: {int(bad.sum())} elements beyond the bound; worst at {tuple(int(j) for j in i)}: "
                f"{x[i]!r} vs {y[i]!r}, error {error[i]:.3g}, bound {bound[i]:.3g}"
            )
