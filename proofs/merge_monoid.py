r"""The merge of attention states is a commutative monoid, and the max-subtracted form computes it.

## Statement

On states $(o, \ell)$ with $o \in \mathbb{R}^D$, $\ell \in \mathbb{R} \cup
\{-\infty\}$, define

$$
(o_a, \ell_a) \oplus (o_b, \ell_b) =
\bigl(\sigma(\ell_a - \ell_b)\, o_a + \sigma(\ell_b - \ell_a)\, o_b,\;
\operatorname{logaddexp}(\ell_a, \ell_b)\bigr),
$$

with $\sigma(+\infty) = 1$, $\sigma(-\infty) = 0$ and $(0, -\infty) \oplus (0, -\infty) =
(0, -\infty)$. Then (i) $a \oplus b = b \oplus a$; (ii) $(a \oplus b) \oplus c = a \oplus
(b \oplus c)$; (iii) $a \oplus (0, -\infty) = a$ for every $a$. (On states with
$\ell = -\infty$ the output of an empty set is $0$; the monoid lives on these normalised
states.) And (iv) the form `relaycore/state.py` evaluates,

$$
m = \max(\ell_a, \ell_b),\quad w_a = e^{\ell_a - m},\quad w_b = e^{\ell_b - m},\quad
o = \frac{w_a}{w_a + w_b}\, o_a + \frac{w_b}{w_a + w_b}\, o_b,\quad \ell = m + \log(w_a + w_b),
$$

(with $m$ replaced by $0$ when both sides are empty) is the same function, and in floating
point it never overflows and never produces a NaN.

## Proof

Map a state to the pair $(W, U) = (e^{\ell}, e^{\ell} o)$: total weight and
weighted sum of values. The map is a bijection from normalised states onto
$\{(W, U) : W > 0\} \cup \{(0, 0)\}$, with inverse $\ell = \log W$, $o = U / W$ ($o = 0$ when
$W = 0$). Under it the merge becomes plain addition:

$$
e^{\operatorname{logaddexp}(\ell_a, \ell_b)} = W_a + W_b, \qquad
e^{\ell}\, o = (W_a + W_b)\Bigl(\tfrac{W_a}{W_a + W_b} o_a + \tfrac{W_b}{W_a + W_b} o_b\Bigr)
= U_a + U_b ,
$$

using $\sigma(\ell_a - \ell_b) = W_a / (W_a + W_b)$ (proved in the relay identity). Addition of
pairs is commutative and associative with identity $(0, 0)$, the image of $(0, -\infty)$; a
bijection carries these laws over, which is (i)–(iii). For (iv), divide numerator and
denominator of $W_a/(W_a + W_b)$ by $e^{m}$: $W_a/(W_a + W_b) = w_a/(w_a + w_b)$ and
$\log(W_a + W_b) = m + \log(w_a + w_b)$. In floating point, $\ell_a - m \le 0$ and
$\ell_b - m \le 0$, so $w_a, w_b \in [0, 1]$ cannot overflow; the larger one is $e^{0} = 1$
exactly, so $w_a + w_b \in [1, 2]$ is never $0$ unless both sides are empty, which the code
handles before dividing; $e^{-\infty} = 0$ exactly, so an empty side gets weight 0 and
$0 \cdot o = 0$ for finite $o$. No $\infty - \infty$, $0/0$ or $0 \cdot \infty$ occurs, so
no NaN. $\blacksquare$

## Rounding of one merge

*Assumption* (the one `proofs/error_bound.py` makes of elementwise operations, Lemmas 2-4):
the merge's operations round to nearest, each with a relative error of at most $u_{acc}/2$,
$u_{acc}$ being twice the format's round-to-nearest unit as in `relaycore/bounds.py` (which
doubles it so that accumulators that truncate are covered; a merge runs no accumulator). The
exponential errs relatively by at most $u_{exp} \le 4u_{acc}$ and is exact at 0, the logarithm
absolutely by at most $u_{exp}$.

*Claim.* For two non-empty states put $L = \max(|\ell_a|, |\ell_b|)$ and
$\rho_1 = u_{exp} + 3u_{acc} + u_{acc}(L + 1)$. Each computed coefficient
$\hat c_a = \mathrm{fl}(w_a / \mathrm{fl}(w_a + w_b))$, times the roundings of its product and
of the final sum, is the exact coefficient $\sigma(\ell_a - \ell_b)$ times a factor
$e^{\pm\rho_1}$, up to an absolute $\tau$ where it underflows. The exact coefficients sum to 1,
so $|o - \hat o| \le (e^{\rho_1} - 1 + 2\tau)\max(|o_a|, |o_b|) + 3\tau$ (the $\tau$s: the
smaller weight or its coefficient, the products and the final sum may underflow, or be flushed
to zero), and $|\ell - \hat\ell| \le \rho_1 + 3u_{acc}(|\ell| + 1)$. This is the per-step term of
`relaycore/bounds.py` with the part's $|\ell| \le A + \log N$. (A merge with an empty side is
exact, as shown above.)

*Proof.* Let $\ell_b = m$ (otherwise swap the names). Then $\ell_b - m = 0$ and $w_b = e^0 = 1$
exactly. The one inexact subtraction is $d = \ell_a - m$, and $|d| \le |\ell_a| + |\ell_b| \le
2L$, reached when the lses have opposite signs, $\ell_a \approx -\ell_b$. Rounded to nearest, it
errs by at most $\tfrac{u_{acc}}{2}|d| \le u_{acc}L$, so $w_a = e^{d + \theta}$ with
$|\theta| \le u_{acc}L + u_{exp}$ (to first order). When $x$ moves by a factor $e^{\theta}$,
$x/(x + 1)$ and $1/(x + 1)$ move by factors within $e^{\pm|\theta|}$: the coefficients of the
exact sum and quotients are within $e^{\pm|\theta|}$ of $\sigma(\pm(\ell_a - \ell_b))$. The sum
$w_a + w_b$, the division, the product and the final sum add four roundings, $2u_{acc}$ in
all: $u_{exp} + 2u_{acc} + u_{acc}L \le \rho_1$, with $u_{acc}$ spare for the second-order
terms and $u_{acc}$ more that lets the two sums truncate. A $w_a$ that underflows errs by at
most $\tau$ absolutely; it moves $\hat c_a$ by $\tau$ and $\hat c_b = \mathrm{fl}(1 / (1 + w_a))$
by a factor $1 \pm \tau$. For the lse, $\hat\ell = \mathrm{fl}(m + \mathrm{fl}(\widehat{\log}\,
\hat t))$ with $\hat t = \mathrm{fl}(w_a + w_b)$ within $e^{\pm(|\theta| + u_{acc})}$ of
$e^{\ell - m}$ (the sum may truncate); the logarithm adds $u_{exp}$, its rounding
($\log \hat t \le 1$) and the addition $\tfrac{u_{acc}}{2}(1 + |\ell|)$, to first order: at
most $\rho_1 - 3u_{acc} + u_{exp} + \tfrac{u_{acc}}{2}(|\ell| + 1) \le \rho_1 +
3u_{acc}(|\ell| + 1)$, since $u_{exp} \le 4u_{acc}$. $\blacksquare$

*Where the assumption is needed.* A subtraction that truncates errs by up to $u_{acc}|d|$ in
the standard model, $2u_{acc}L$ at $\ell_a = -\ell_b$, against the $u_{acc}L$ in $\rho_1$; in
fp32, truncating $-(32 - 2^{-19}) - (32 + 2^{-17})$ moves $d$, and with it $\hat c_a$, by
$48u_{acc}$ where $\rho_1 = 40u_{acc}$. With truncating elementwise operations, $\rho_1$ and the
per-step term of `relaycore/bounds.py` would need $2u_{acc}L$. Every merge relaycore runs
subtracts in round-to-nearest arithmetic: NumPy's and PyTorch's elementwise operations, and
Triton's fp32 subtraction (PTX `sub.f32` and `fma.rn.f32`, round to nearest); only matrix
units' accumulators may truncate.

## Machine check

sympy proves (i) and (ii) for finite lses, the limit (iii) and (iv) in each of the two cases
$\ell_a \ge \ell_b$, $\ell_b > \ell_a$. (With an empty side, (i) and (ii) follow from the
definition: $\sigma(\pm\infty) = 1, 0$ make $(0, -\infty)$ an identity on either side, so both
sides of each law reduce to the merge of the non-empty states.) The rounding claim is checked
at 60 digits in the standard model ($\mathrm{fl}(x \circ y) = (x \circ y)(1 + \delta)$, every
$\delta$ and the errors of the exponential and the logarithm drawn by an adversary, at their
extremes or anywhere between), $\delta$ up to $u_{acc}/2$ and up to $u_{acc}$ for the two sums, for the
fp32 and float64 policies, with $\ell$ up to $\pm 10^4$, drawn apart, close together, or
opposite ($\ell_b = -\ell_a$, where the subtraction's error is largest). On the opposite pair
$\pm 32$ the round-to-nearest subtraction reaches $u_{acc}L$ (the term is needed), while a
subtraction at $u_{acc}$, or real fp32 truncation, leaves $\rho_1$. Then
`relaycore.state.merge` itself, on NumPy float64 and float32 arrays, against the exact merge of
the same inputs at 60 digits, over Hypothesis-drawn states with $\ell$ up to $\pm 10^4$
(opposite pairs included) and $-\infty$ on either or both sides: no NaN anywhere, the identity
returns its other side exactly (the same numbers; only a $-0$ comes back as $+0$, the merge
adding a $+0$ to it), and the error stays within the rounding bound above.
"""

from __future__ import annotations

import mpmath
import numpy as np
import sympy as sp
from hypothesis import given
from hypothesis import strategies as st

from relaycore import bounds, state
from relaycore.proofs import exact
from relaycore.proofs import rounding as fp
from relaycore.proofs.draws import checked, finite
from relaycore.types import AttentionState

_oa, _ob, _oc = sp.symbols("o_a o_b o_c", real=True)
_la, _lb, _lc = sp.symbols("l_a l_b l_c", real=True)


def _sigmoid(x):
    return 1 / (1 + sp.exp(-x))


def _merge(a, b):
    (oa, la), (ob, lb) = a, b
    return _sigmoid(la - lb) * oa + _sigmoid(lb - la) * ob, sp.log(sp.exp(la) + sp.exp(lb))


def vanishes(expr) -> bool:
    """``expr`` is identically 0: first at three points (every symbol a distinct positive
    rational), then by ``sp.simplify``. The points make a false identity fail at once: on an
    expression that is not 0, ``sp.simplify`` can run for many minutes instead of answering."""
    symbols = sorted(expr.free_symbols, key=str)
    for k in range(3):
        point = {s: sp.Rational(2 * i + 3 + k, 5 + 2 * k) for i, s in enumerate(symbols)}
        if abs(sp.N(expr.subs(point), 40)) > 1e-30:
            return False
    return sp.simplify(expr) == 0


def _same(x, y) -> bool:
    """Equal states: outs equal, and lses equal as exponentials (log of a sum of exps)."""
    return vanishes(x[0] - y[0]) and vanishes(sp.exp(x[1]) - sp.exp(y[1]))


def check_commutative_associative():
    """sympy: a + b = b + a and (a + b) + c = a + (b + c) for symbolic states."""
    a, b, c = (_oa, _la), (_ob, _lb), (_oc, _lc)
    assert _same(_merge(a, b), _merge(b, a))
    assert _same(_merge(_merge(a, b), c), _merge(a, _merge(b, c)))


def check_identity():
    """sympy: merging (0, l_b) and letting l_b -> -inf gives a back."""
    out, lse = _merge((_oa, _la), (0, _lb))
    assert sp.limit(out, _lb, -sp.oo) == _oa
    assert vanishes(sp.limit(sp.exp(lse), _lb, -sp.oo) - sp.exp(_la))


def check_max_subtracted_form():
    """sympy: the max-subtracted form equals the sigmoid form when l_a >= l_b and when l_b > l_a."""
    d = sp.symbols("d", nonnegative=True)  # the gap between the larger and the smaller lse
    for la, lb, m in ((_la, _la - d, _la), (_lb - d, _lb, _lb)):
        wa, wb = sp.exp(la - m), sp.exp(lb - m)
        form = ((wa * _oa + wb * _ob) / (wa + wb), m + sp.log(wa + wb))
        assert _same(form, _merge((_oa, la), (_ob, lb)))


def merge_rho(lse_abs, prec: bounds.Precision):
    """``rho_1``: the log-perturbation of each coefficient in one merge (see the docstring)."""
    return prec.u_exp + 3 * prec.u_acc + prec.u_acc * (lse_abs + 1)


def merge_standard_model(la, lb, prec: bounds.Precision, draw, sub_unit=None, sum_unit=None) -> tuple:
    """``relaycore.state.merge``'s max-subtracted form on two non-empty states, in the standard
    model of rounding at 60 digits.

    Every operation multiplies its exact result by ``1 + draw(u_acc / 2)`` (the subtraction
    ``l_a - m`` by ``1 + draw(sub_unit)``, the sums ``w_a + w_b`` and ``c_a o_a + c_b o_b`` by
    ``1 + draw(sum_unit)``), the exponential (exact at 0) by ``1 + draw(u_exp)``, and the
    logarithm is off by ``draw(u_exp)``: ``draw(size)`` is the adversary, a number in
    ``[-size, size]``.

    Args:
        la, lb: the two lses (mpf, finite).
        prec: the precision policy.
        draw: the adversary.
        sub_unit: the subtraction's largest relative error; default ``u_acc / 2`` (to nearest).
        sum_unit: the two sums' largest relative error; default ``u_acc`` (truncation allowed).

    Returns:
        ``(c_a, c_b, lse)``: the factors by which the computed ``out`` holds ``o_a`` and ``o_b``
        (each coefficient times the roundings of its product and of the final sum), and the
        computed lse.
    """
    half, u_exp = mpmath.mpf(prec.u_acc) / 2, mpmath.mpf(prec.u_exp)
    sub_unit = half if sub_unit is None else mpmath.mpf(sub_unit)
    sum_unit = 2 * half if sum_unit is None else mpmath.mpf(sum_unit)

    def fl(x, unit=half):
        return x * (1 + draw(unit))

    def exp(x):
        return mpmath.mpf(1) if x == 0 else mpmath.exp(x) * (1 + draw(u_exp))

    m = max(la, lb)
    wa, wb = exp(fl(la - m, sub_unit)), exp(fl(lb - m, sub_unit))
    total = fl(wa + wb, sum_unit)
    final_sum = 1 + draw(sum_unit)
    ca, cb = (fl(fl(w / total)) * final_sum for w in (wa, wb))
    return ca, cb, fl(m + fl(mpmath.log(total) + draw(u_exp)))


def _adversary(rnd, extreme: bool):
    return lambda size: (rnd.choice((-1, 1)) if extreme else rnd.uniform(-1, 1)) * size


@st.composite
def _lse_pairs(draw):
    """Two finite lses up to 1, 40, 10^3 or 10^4 in magnitude: apart, close, or opposite."""
    magnitude = draw(st.sampled_from([1.0, 40.0, 1e3, 1e4]))
    la = draw(finite(magnitude))
    relation = draw(st.sampled_from(["apart", "close", "opposite"]))
    if relation == "apart":
        lb = draw(finite(magnitude))
    elif relation == "close":
        lb = la + draw(finite(1.0))
    else:
        lb = -la
    return mpmath.mpf(la), mpmath.mpf(lb)


def check_merge_rounding_standard_model():
    """One merge in the standard model, fp32 and float64 policies: each coefficient within
    ``exp(+-rho_1)`` of exact and the lse within ``rho_1 + 3 u_acc (|l| + 1)``, the subtraction
    rounded to nearest and the two sums allowed to truncate."""

    @checked(300)
    @given(st.sampled_from(["float32", "float64"]), _lse_pairs(), st.randoms(use_true_random=False), st.booleans())
    def run(dtype, pair, rnd, extreme):
        la, lb = pair
        prec = bounds.precision(dtype)
        ca, cb, lse = merge_standard_model(la, lb, prec, _adversary(rnd, extreme))
        rho1 = merge_rho(float(max(abs(la), abs(lb))), prec)
        for got, want in ((ca, exact.sigmoid(la - lb)), (cb, exact.sigmoid(lb - la))):
            assert abs(mpmath.log(got / want)) <= rho1, (dtype, la, lb)
        want_lse = exact.logaddexp(la, lb)
        assert abs(lse - want_lse) <= rho1 + 3 * prec.u_acc * (abs(want_lse) + 1), (dtype, la, lb)

    run()


def check_the_subtraction_must_round_to_nearest():
    """The opposite fp32 lses ``-(32 - 2^-19)``, ``32 + 2^-17``, the subtraction the only
    rounding: to nearest it needs rho_1's L-term (standard model) and stays within rho_1; at
    ``u_acc`` (standard model) or truncated in fp32 it moves ``c_a`` beyond rho_1."""
    prec = bounds.precision("float32")
    la, lb = -(32 - mpmath.mpf(2) ** -19), 32 + mpmath.mpf(2) ** -17
    assert (fp.r32(la), fp.r32(lb)) == (la, lb)
    d, u_acc = la - lb, mpmath.mpf(prec.u_acc)
    rho1 = merge_rho(float(lb), prec)

    def moved(d_hat):
        """``|log(c_a / sigma(l_a - l_b))|`` for a weight ``exp(d_hat)`` against ``w_b = 1``."""
        return abs(mpmath.log(mpmath.exp(d_hat) / (mpmath.exp(d_hat) + 1) / exact.sigmoid(d)))

    for sign in (-1, 1):
        assert merge_rho(0.0, prec) < moved(d * (1 + sign * u_acc / 2)) <= rho1
        assert moved(d * (1 + sign * u_acc)) > rho1
    assert moved(fp.r32(d)) <= rho1 < moved(fp.round_to(d, "float32", "toward_zero"))


def _lse(allow_empty: bool = True):
    finite_lse = st.one_of(finite(1e4), finite(30.0))
    return st.one_of(finite_lse, st.just(-np.inf)) if allow_empty else finite_lse


def _lse_pair():
    """Two lses of a row, each finite or -inf, or opposite finite ones."""
    return st.one_of(st.tuples(_lse(), _lse()), _lse(allow_empty=False).map(lambda x: (x, -x)))


def check_state_merge_floating_point():
    """relaycore.state.merge on float64 and float32 NumPy arrays vs the exact merge, 60 digits."""

    @checked(400)
    @given(
        st.sampled_from(["float64", "float32"]),
        st.lists(st.tuples(_lse_pair(), finite(100.0), finite(100.0)), min_size=1, max_size=6),
    )
    def run(dtype, rows):
        np_dtype = np.dtype(dtype)
        rows = [(la, lb, oa, ob) for (la, lb), oa, ob in rows]
        la, lb, oa, ob = (np.array(col, dtype=np_dtype) for col in zip(*rows))
        oa = np.where(np.isinf(la), 0, oa).astype(np_dtype)[:, None]  # empty state: out 0
        ob = np.where(np.isinf(lb), 0, ob).astype(np_dtype)[:, None]
        got = state.merge(AttentionState(oa, la), AttentionState(ob, lb))
        assert not np.isnan(got.out).any() and not np.isnan(got.lse).any()
        prec = bounds.precision(dtype)
        for i in range(len(rows)):
            want_out, want_lse = exact.merge_sigmoid(
                ([mpmath.mpf(float(oa[i, 0]))], mpmath.mpf(float(la[i]))),
                ([mpmath.mpf(float(ob[i, 0]))], mpmath.mpf(float(lb[i]))),
            )
            if np.isinf(lb[i]):  # identity: the other side exactly (== also takes a -0.0 that became +0.0)
                assert got.out[i, 0] == oa[i, 0] and got.lse[i] == la[i]
            if np.isinf(la[i]):
                assert got.out[i, 0] == ob[i, 0] and got.lse[i] == lb[i]
            if want_lse == exact.NEG_INF:
                assert got.lse[i] == -np.inf
                continue
            rho = merge_rho(max(abs(float(x)) for x in (la[i], lb[i]) if np.isfinite(x)), prec)
            out_abs = max(abs(float(oa[i, 0])), abs(float(ob[i, 0])))
            out_bound = (np.expm1(rho) + 2 * prec.tau) * out_abs + 3 * prec.tau
            lse_bound = rho + 3 * prec.u_acc * (abs(float(want_lse)) + 1)
            assert abs(mpmath.mpf(float(got.out[i, 0])) - want_out[0]) <= out_bound, (dtype, rows[i])
            assert abs(mpmath.mpf(float(got.lse[i])) - want_lse) <= lse_bound, (dtype, rows[i])

    run()
