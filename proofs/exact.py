r"""Exact attention in 60-digit arithmetic: the objects every proof talks about.

A query with scores $s_j$ over a set of keys $S$ (values $v_j \in \mathbb{R}^D$) has the
*attention state* $(o, \ell)$ with

$$
\ell = \log \sum_{j \in S} e^{s_j}, \qquad o = \sum_{j \in S} e^{s_j - \ell}\, v_j ,
$$

and the empty set has the state $(0, -\infty)$. This module computes those states with mpmath
(60 significant digits), and the two textbook forms of the merge, so that the proofs can compare
the relay form with attention over the whole context far below float64's rounding.
"""

from __future__ import annotations

from typing import Sequence

import mpmath

#: Working precision of every exact computation, in decimal digits.
DIGITS = 60
mpmath.mp.dps = DIGITS

NEG_INF = mpmath.mpf("-inf")


def attention(scores: Sequence, values: Sequence[Sequence]) -> tuple:
    """The exact state of one query over a key set.

    Args:
        scores: ``[N]`` numbers (anything ``mpmath.mpf`` takes).
        values: ``[N][D]`` numbers.

    Returns:
        ``(out, lse)``: ``out`` a list of ``D`` mpf, ``lse`` an mpf.

    Raises:
        ValueError: no key (the empty set's state is ``empty(D)``).
    """
    if len(scores) == 0:
        raise ValueError("attention: expected at least one key, got none (use empty(D))")
    s = [mpmath.mpf(x) for x in scores]
    m = max(s)
    w = [mpmath.exp(x - m) for x in s]
    total = mpmath.fsum(w)
    dim = len(values[0])
    out = [mpmath.fsum(w[j] * mpmath.mpf(values[j][d]) for j in range(len(s))) / total for d in range(dim)]
    return out, m + mpmath.log(total)


def empty(dim: int) -> tuple:
    """The state of the empty key set: ``([0] * dim, -inf)``."""
    return [mpmath.mpf(0)] * dim, NEG_INF


def state(scores: Sequence, values: Sequence[Sequence], dim: int) -> tuple:
    """``attention`` for a non-empty key set, ``empty(dim)`` for an empty one."""
    return attention(scores, values) if len(scores) else empty(dim)


def merge_sigmoid(a: tuple, b: tuple) -> tuple:
    r"""The merge in its sigmoid form: $o = \sigma(\ell_a - \ell_b) o_a + \sigma(\ell_b - \ell_a) o_b$,
    $\ell = \operatorname{logaddexp}(\ell_a, \ell_b)$, with $\sigma(-\infty) = 0$."""
    (oa, la), (ob, lb) = a, b
    if lb == NEG_INF:  # sigma(+inf) = 1, sigma(-inf) = 0; two empty sides give (0, -inf)
        return list(oa), la
    if la == NEG_INF:
        return list(ob), lb
    ca, cb = sigmoid(la - lb), sigmoid(lb - la)
    return [ca * x + cb * y for x, y in zip(oa, ob)], logaddexp(la, lb)


def merge_logaddexp(a: tuple, b: tuple) -> tuple:
    r"""The merge in its log-sum-exp form: $\ell = \log(e^{\ell_a} + e^{\ell_b})$,
    $o = (e^{\ell_a} o_a + e^{\ell_b} o_b) / e^{\ell}$."""
    (oa, la), (ob, lb) = a, b
    ea, eb = mpmath.exp(la), mpmath.exp(lb)  # exp(-inf) = 0
    if ea + eb == 0:
        return [mpmath.mpf(0)] * len(oa), NEG_INF
    total = ea + eb
    return [(ea * x + eb * y) / total for x, y in zip(oa, ob)], mpmath.log(total)


def sigmoid(x):
    """``1 / (1 + exp(-x))`` in mpmath."""
    return 1 / (1 + mpmath.exp(-x))


def logaddexp(a, b):
    """``log(exp(a) + exp(b))`` without overflow; ``-inf`` if both are ``-inf``."""
    if a == NEG_INF:
        return b
    if b == NEG_INF:
        return a
    m = max(a, b)
    return m + mpmath.log(mpmath.exp(a - m) + mpmath.exp(b - m))


def fold(states: Sequence[tuple], merge=merge_sigmoid) -> tuple:
    """Merge states left to right with ``merge``."""
    acc = states[0]
    for s in states[1:]:
        acc = merge(acc, s)
    return acc


def distance(a: tuple, b: tuple) -> mpmath.mpf:
    """Largest absolute difference between two states (outs and lses; equal infinities count 0)."""
    (oa, la), (ob, lb) = a, b
    gaps = [abs(x - y) for x, y in zip(oa, ob)]
    if la == lb:
        gaps.append(mpmath.mpf(0))
    elif mpmath.isinf(la) or mpmath.isinf(lb):
        return mpmath.inf
    else:
        gaps.append(abs(la - lb))
    return max(gaps)


#: Two exact computations of the same quantity along different roads agree to about this.
AGREE = mpmath.mpf(10) ** (-(DIGITS - 10))
