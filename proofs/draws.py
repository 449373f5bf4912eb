"""Hypothesis strategies for the inputs of the numeric machine checks.

Every check runs with ``SETTINGS``: no deadline (60-digit arithmetic is slow), derandomized so
that a run on CI explores the same inputs as a run on a laptop, no example database, and the
first failure raised as the plain ``AssertionError`` it is.
"""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st

SETTINGS = dict(deadline=None, derandomize=True, database=None, report_multiple_bugs=False)


def checked(max_examples: int):
    """``hypothesis.settings`` for a check that draws ``max_examples`` inputs."""
    return settings(max_examples=max_examples, **SETTINGS)


def finite(magnitude: float):
    """Floats in ``[-magnitude, magnitude]``, no NaN or infinity."""
    return st.floats(-magnitude, magnitude, allow_nan=False, allow_infinity=False)


@st.composite
def keys(draw, min_keys: int = 0, max_keys: int = 8, max_dim: int = 3, score_magnitude: float = 50.0):
    """One query's keys: ``(scores [N], values [N][D], D)``; scores up to ``score_magnitude``."""
    n = draw(st.integers(min_keys, max_keys))
    dim = draw(st.integers(1, max_dim))
    scores = draw(st.lists(finite(score_magnitude), min_size=n, max_size=n))
    values = draw(st.lists(st.lists(finite(10.0), min_size=dim, max_size=dim), min_size=n, max_size=n))
    return scores, values, dim


@st.composite
def labels(draw, n: int, max_parts: int = 4):
    """A partition of ``n`` keys into ``k`` parts (some may be empty): ``(k, part of each key)``."""
    k = draw(st.integers(1, max_parts))
    return k, draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n))


def vectors(count: int, dim: int, magnitude: float = 3.0):
    """``count`` vectors of ``dim`` floats in ``[-magnitude, magnitude]``."""
    return st.lists(st.lists(finite(magnitude), min_size=dim, max_size=dim), min_size=count, max_size=count)


@st.composite
def requests(draw, max_levels: int = 3, max_prefix: int = 4, max_own: int = 5, max_dim: int = 3):
    """One request of the relay semantics, with raw vectors.

    Returns:
        dict with ``dim``, ``scale``, ``causal``, ``levels`` (a list of ``(keys, values)``, one
        per prefix level, possibly empty), ``own`` (``(keys, values)``, ``kv_len`` of them) and
        ``queries`` (``q_len <= kv_len`` query vectors, the last ``q_len`` own tokens').
    """
    dim = draw(st.integers(1, max_dim))
    levels = []
    for _ in range(draw(st.integers(0, max_levels))):
        n = draw(st.integers(0, max_prefix))
        levels.append((draw(vectors(n, dim)), draw(vectors(n, dim))))
    kv_len = draw(st.integers(0, max_own))
    q_len = draw(st.integers(0, kv_len))
    return dict(
        dim=dim,
        scale=draw(st.sampled_from([1.0, 0.5, 2.0, 10.0])),
        causal=draw(st.booleans()),
        levels=levels,
        own=(draw(vectors(kv_len, dim)), draw(vectors(kv_len, dim))),
        queries=draw(vectors(q_len, dim)),
    )
