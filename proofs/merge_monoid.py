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
o = \frac{w_a o_a + w_b o_b}{w_a + w_b},\quad \ell = m + \log(w_a + w_b),
$$

(with $m$ replaced by $0$ when both sides are empty) is the same function, and in floating
point it never overflows and never produces a NaN.

## Proof

Map a state to the pair $(W, N) = (e^{\ell}, e^{\ell} o)$: total weight and
weighted sum of values. The map is a bijection from normalised states onto
$\{(W, N) : W > 0\} \cup \{(0, 0)\}$, with inverse $\ell = \log W$, $o = N / W$ ($o = 0$ when
$W = 0$). Under it the merge becomes plain addition:

$$
e^{\operatorname{logaddexp}(\ell_a, \ell_b)} = W_a + W_b, \qquad
e^{\ell}\, o = (W_a + W_b)\Bigl(\tfrac{W_a}{W_a + W_b} o_a + \tfrac{W_b}{W_a + W_b} o_b\Bigr)
= N_a + N_b ,
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

In a format of unit roundoff $u$ (taken as $u_{acc}$, twice the
round-to-nearest unit, as in `relaycore/bounds.py`) with an exponential of relative error
$u_{exp}$, each computed coefficient $\hat c_a = \mathrm{fl}(w_a / (w_a + w_b))$ times its
product and sum is the exact coefficient times a factor $e^{\pm\rho_1}$,
$\rho_1 = u_{exp} + 3u_{acc} + u_{acc}(\max(|\ell_a|, |\ell_b|) + 1)$: one exponential, the
subtraction $\ell_a - m$ (absolute error $\le u\,|\ell_a - m|$), the sum, the division, the
product and the final sum. The exact coefficients sum to 1, so
$|o - \hat o| \le (e^{\rho_1} - 1)\max(|o_a|, |o_b|) + 2\tau$ (the $\tau$s: the two products
may underflow), and $|\ell - \hat\ell| \le \rho_1 +
3u_{acc}(|\ell| + 1)$. This is the per-step term of `relaycore/bounds.py` with the part's
$|\ell| \le A + \log N$.

## Machine check

sympy proves (i), (ii), the limit (iii) and (iv) in each of the two cases
$\ell_a \ge \ell_b$, $\ell_b > \ell_a$. Then `relaycore.state.merge` itself, on NumPy float64
and float32 arrays, against the exact merge of the same inputs at 60 digits, over
Hypothesis-drawn states with $\ell$ up to $\pm 10^4$ and $-\infty$ on either or both sides: no
NaN anywhere, the identity returns its other side bit for bit, and the error stays within the
rounding bound above.
"""

from __future__ import annotations

import mpmath
import numpy as np
import sympy as sp
from hypothesis import given
from hypothesis import strategies as st

from relaycore import bounds, state
from relaycore.proofs import exact
from relaycore.proofs.draws import checked, finite
from relaycore.types import AttentionState

_oa, _ob, _oc = sp.symbols("o_a o_b o_c", real=True)
_la, _lb, _lc = sp.symbols("l_a l_b l_c", real=True)


def _sigmoid(x):
    return 1 / (1 + sp.exp(-x))


def _merge(a, b):
    (oa, la), (ob, lb) = a, b
    return _sigmoid(la - lb) * oa + _sigmoid(lb - la) * ob, sp.log(sp.exp(la) + sp.exp(lb))


def _same(x, y) -> bool:
    """Equal states: outs equal, and lses equal as exponentials (log of a sum of exps)."""
    return sp.simplify(x[0] - y[0]) == 0 and sp.simplify(sp.exp(x[1]) - sp.exp(y[1])) == 0


def check_commutative_associative():
    """sympy: a + b = b + a and (a + b) + c = a + (b + c) for symbolic states."""
    a, b, c = (_oa, _la), (_ob, _lb), (_oc, _lc)
    assert _same(_merge(a, b), _merge(b, a))
    assert _same(_merge(_merge(a, b), c), _merge(a, _merge(b, c)))


def check_identity():
    """sympy: merging (0, l_b) and letting l_b -> -inf gives a back."""
    out, lse = _merge((_oa, _la), (0, _lb))
    assert sp.limit(out, _lb, -sp.oo) == _oa
    assert sp.simplify(sp.limit(sp.exp(lse), _lb, -sp.oo) - sp.exp(_la)) == 0


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


def _lse(allow_empty: bool = True):
    finite_lse = st.one_of(finite(1e4), finite(30.0))
    return st.one_of(finite_lse, st.just(-np.inf)) if allow_empty else finite_lse


def check_state_merge_floating_point():
    """relaycore.state.merge on float64 and float32 NumPy arrays vs the exact merge, 60 digits."""

    @checked(400)
    @given(
        st.sampled_from(["float64", "float32"]),
        st.lists(st.tuples(_lse(), _lse(), finite(100.0), finite(100.0)), min_size=1, max_size=6),
    )
    def run(dtype, rows):
        np_dtype = np.dtype(dtype)
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
            if np.isinf(lb[i]):  # identity: the other side, bit for bit
                assert got.out[i, 0] == oa[i, 0] and got.lse[i] == la[i]
            if np.isinf(la[i]):
                assert got.out[i, 0] == ob[i, 0] and got.lse[i] == lb[i]
            if want_lse == exact.NEG_INF:
                assert got.lse[i] == -np.inf
                continue
            rho = merge_rho(max(abs(float(x)) for x in (la[i], lb[i]) if np.isfinite(x)), prec)
            out_bound = np.expm1(rho) * max(abs(float(oa[i, 0])), abs(float(ob[i, 0]))) + 2 * prec.tau
            lse_bound = rho + 3 * prec.u_acc * (abs(float(want_lse)) + 1)
            assert abs(mpmath.mpf(float(got.out[i, 0])) - want_out[0]) <= out_bound, (dtype, rows[i])
            assert abs(mpmath.mpf(float(got.lse[i])) - want_lse) <= lse_bound, (dtype, rows[i])

    run()
