r"""The floating-point error bound of `relaycore/bounds.py`, proved and checked.

## Precision model

Inputs $q, k, v$ are exact in their format (fp16, bf16 or fp32: the
oracle reads the same values). Scores are dot products accumulated in fp32, scaled, and
exponentiated after subtracting a running maximum; the unnormalised weights $p_j$ are rounded
once to the input format before the $P V$ product, whose sums run in fp32, while the
normaliser $\sum_j p_j$ sums the fp32 weights. A row may be processed in blocks (online
softmax: when the running maximum grows, the accumulators are rescaled by
$e^{m_{old} - m_{new}}$), and partial states may be merged (the relay form). The output is
divided by the normaliser in fp32 and rounded once to the input format. $u_{acc}$ is twice
fp32's unit roundoff (so that an accumulator that truncates is covered), $u_{exp}$ bounds the
relative error of the hardware exponential (and the absolute error of its logarithm), $u_p = u_{out}$ is the input format's unit
roundoff, and $\tau$ bounds the absolute error of rounding a weight in $[0, 1]$ near underflow.

## Notation

One query row sees $N \ge 1$ keys with exact scores $s_j = c \sum_d q_d k_{jd}$
($c$ the softmax scale). Put $A = \max_j c \sum_d |q_d k_{jd}|$ (so $|s_j| \le A$),
$V_d = \max_j |v_{jd}|$, $\gamma_n = n u_{acc} / (1 - n u_{acc})$, and let the exact result be
$o_d = \sum_j w_j v_{jd} / \sum_j w_j$, $\ell = \log \sum_j e^{s_j}$, with
$w_j = e^{s_j - m}$ for any shift $m$ (it cancels).

## Lemma 1: perturbed weights

*If the computed output is*

$$
\hat o_d = \frac{\sum_j (a_j + t_j)\, v_{jd}}{\sum_j (b_j + t'_j)},\qquad
a_j = w_j e^{\alpha_j},\; b_j = w_j e^{\beta_j},\; |\alpha_j|, |\beta_j| \le \rho,\;
|t_j|, |t'_j| \le \tau,
$$

*with a shift $m$ for which $B = \sum_j b_j \ge e^{-\rho}$, and $\varepsilon = N \tau e^{\rho}
< 1$, then*

$$
|\hat o_d - o_d| \le \frac{(e^{2\rho} - 1) + 2\varepsilon}{1 - \varepsilon}\, V_d .
$$

*Proof.* Let $W = \sum_j w_j$ and $B' = B + \sum_j t'_j$, so $|B' - B| \le N\tau \le
\varepsilon B$. Since $e^{-\rho} W \le B \le e^{\rho} W$, each $a_j / B$ lies in
$[e^{-2\rho}, e^{2\rho}]\, w_j / W$, hence $a_j / B'$ lies within
$\bigl(e^{2\rho}/(1-\varepsilon) - 1\bigr) w_j / W$ of $w_j / W$. Then

$$
|\hat o_d - o_d| \le \sum_j \Bigl|\frac{a_j}{B'} - \frac{w_j}{W}\Bigr| V_d
+ \frac{\sum_j |t_j|}{B'} V_d
\le \Bigl(\frac{e^{2\rho}}{1 - \varepsilon} - 1\Bigr) V_d + \frac{N \tau}{(1-\varepsilon) e^{-\rho}} V_d ,
$$

which is the claim, because $\sum_j w_j / W = 1$. $\blacksquare$

The bound is attained: one key with $\alpha = \rho$, $\beta = -\rho$ gives
$\hat o = e^{2\rho} v$. Without the underflow terms it is $(e^{2\rho} - 1) V_d \approx 2\rho V_d$: relative
errors of the *weights* become an absolute error of the output on the scale of the values,
not of the output (which may be near 0 through cancellation).

## Lemma 2: one part computed in low precision has that form

The weight of key $j$, in the units of the final running maximum, is perturbed by:

1. *the score*: the fp32 dot product errs by at most $\gamma_D \cdot c\sum_d|q_d k_{jd}|$, the
   scale's rounding and the product by $u_{acc} |s_j|$, the subtraction of the running
   maximum by $u_{acc} |\hat s_j - m|/2 \le u_{acc} A$: together at most $\gamma_{D+6} A$ in
   the exponent. The maximum itself is a shift common to all keys and cancels.
2. *the weight's rounding* to the input format (numerator only): $|\log(\hat p/p)| \le
   \log(1 + u_p) \le u_p$ for a normal result (round to nearest), else an absolute error
   $\le \tau$ (the $t_j$; the normaliser's own fp32 underflow is the $t'_j$).
3. *the sums*: an $N$-term fp32 sum in any order multiplies each term by $\prod (1 +
   \delta)^{\pm 1}$ over at most $N$ roundings, a factor within $e^{\pm \gamma_N}$.
   (fp16 and bf16 products $\hat p_j v_{jd}$ are exact in fp32; for fp32 inputs the product's
   rounding takes the slot of item 2.)
4. *steps*: the key's own exponential, every rescale of the accumulators that holds it, and
   every merge (next lemma) it passes. One exponential of an argument $x$ with
   $|x| \le 2(A + \log N + 1)$, the rounding of $x$, and up to three products and sums
   perturb the weight by at most $u_{exp} + 3u_{acc} + u_{acc}(A + \log N + 1)$.
5. *the output*: $\mathrm{fl}(\mathrm{acc}/\ell)$ then rounding to the input format is a
   relative error at most $u_o = (1 + u_{acc})(1 + u_{out}) - 1$, plus, where the result
   underflows (an fp16 output below $2^{-14}$ is subnormal), an absolute error of at most
   $\tau$ in each of the two roundings.

Items 1-4 perturb numerator and normaliser weights by $e^{\pm\rho}$ with

$$
\rho = \gamma_{D+6}\, A + u_p + \gamma_N + S\,\bigl(u_{exp} + 3u_{acc} + u_{acc}(A + \log N + 1)\bigr),
$$

$S$ the number of steps; the key that attains the final maximum has weight
$e^{0} = 1$ before its perturbation, so $B \ge e^{-\rho}$. Lemma 1 and item 5 give
`out_bound`:

$$
|\hat o_d - o_d| \le \frac{(e^{2\rho} - 1) + 2\varepsilon}{1 - \varepsilon}\, V_d\,(1 + u_o)
+ u_o\, |o_d| + 2\tau .
$$

## Lemma 3: a merge keeps the form, one step further

Let two states over disjoint key sets be of the form of Lemma 1 with $\rho_a, \rho_b$, and
$\hat\ell_a = \mathrm{fl}(m_a + \mathrm{fl}(\log B_a))$ (same for $b$). Then
$e^{\hat\ell_a} = e^{m_a} B_a e^{\eta_a}$ with $|\eta_a| \le u_{acc}(A + \log N + 1)$ (the
rounding of the logarithm and of the addition, each at most half of that), and the merge's coefficient
$\hat c_a = \mathrm{fl}(w_a/(w_a + w_b))$, times its product and sum, equals
$e^{\hat\ell_a}/(e^{\hat\ell_a} + e^{\hat\ell_b})$ within $e^{\pm\rho_1}$,
$\rho_1 = u_{exp} + 3u_{acc} + u_{acc}(A + \log N + 1)$ (the merge monoid's rounding). So
$\hat o = \hat c_a \hat o_a + \hat c_b \hat o_b$ is the Lemma-1 form over $S_a \sqcup S_b$
with shift $m$, numerator weights $e^{m_a - m} a_j e^{\eta_a \pm \rho_1}$ and normaliser
weights $e^{m_a - m} b_j e^{\eta_a}$: $\rho$ grows by $\rho_1 + |\eta|$, which is at most
**two steps**. A merge therefore counts as two steps (one for the exponential and the
coefficient, one for the rounding of the incoming $\ell$). A merge with an empty state is
exact ($e^{0} = 1$, $e^{-\infty} = 0$) and costs nothing.

*Counting steps.* In a part of $N_i$ keys cut in blocks of at least one key, a key is
rescaled at most $N_i - 1$ times; with $P$ non-empty parts, $N_i \le N - P + 1$, so a key
passes at most $1 + (N - P) + 2(P - 1) \le 2N - 1$ steps. `default_steps` is $2N$: safe for
any blocking and any relay split.

## The lse

$\hat\ell = \mathrm{fl}(m + \mathrm{fl}(\log \hat B))$ with $\hat B$ the computed normaliser,
within $e^{\pm\rho}$ of $\sum_j e^{s_j - m}$ (Lemma 2, normaliser side), so
$|\log \hat B - (\ell - m)| \le \rho$; the logarithm and the addition add at most
$u_{acc}(|\ell| + |m| + \log N + 1)$, covered by the spare $\gamma$-terms. `lse_bound` is
$\rho + 3u_{acc}(|\ell| + 1)$.

## Machine check

`check_perturbed_weights_lemma` draws weights, values and extreme perturbations ($\pm\rho$
exactly, worst signs, underflow terms $\pm\tau$) and checks Lemma 1 at 60 digits.
`check_merge_coefficients` checks the rounding of one merge in fp32 against $\rho_1$.
`check_simulated_kernel` runs the whole computation at 60 digits with *every* rounding done
explicitly to fp32, fp16 or bf16 (`relaycore.proofs.rounding`), an adversarial exponential
(relative error up to $2^{-22}$ with drawn signs) and logarithm (absolute error up to
$2^{-22}$), fp32 sums rounded to nearest or truncated,
blocks of 1 to 4 keys and 1 to 4 relay parts, in two forms: natural log with pairwise merges
(`relaycore.state.merge`, the PyTorch backend) and base 2 with all parts merged at once (the
Triton kernels: scores scaled by $c \log_2 e$, `exp2`, `log2`, the lse times $\ln 2$ at the
end), over Hypothesis-drawn problems including scores up to $10^4$ and weights down to the
underflow of fp16 and fp32, and asserts that the error of every output element and of the
lse is within `relaycore.bounds.out_bound` / `lse_bound`. `check_not_absurdly_loose` measures
observed error / bound on typical inputs (normal $q, k, v$, $c = 1/\sqrt{D}$, 48 keys in two
relay parts, blocks of 16) and requires the ratio to stay above `LOOSENESS_FLOOR`: within a
factor 100 for fp16 and bf16, where the rounding of the weights dominates; fp32's errors on
random data are far below its worst case. The docs page of this proof shows the measured
table.
"""

from __future__ import annotations

import random

import mpmath
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from relaycore import bounds
from relaycore.proofs import exact
from relaycore.proofs import rounding as fp
from relaycore.proofs.draws import checked
from relaycore.proofs.merge_monoid import merge_rho

#: The adversarial exponential's largest extra relative error (with fp32's own rounding it stays
#: within ``bounds.EXP_REL_FP32``).
EXP_WOBBLE = 2.0**-22
#: The adversarial logarithm's largest extra absolute error (``lg2.approx.f32`` is documented
#: at ``2^-22.6`` absolute near 1).
LOG_WOBBLE = 2.0**-22


class Elementary:
    """The hardware's fp32 ``exp``/``exp2`` and ``log``/``log2``, as an adversary: each result
    carries an extra error drawn per call from ``rng`` (relative ``EXP_WOBBLE`` for the
    exponential, exact at 0; absolute ``LOG_WOBBLE`` for the logarithm)."""

    def __init__(self, rng: random.Random, extreme: bool):
        self.rng, self.extreme = rng, extreme

    def _draw(self, size: float) -> float:
        return self.rng.choice((-1, 1)) * size if self.extreme else self.rng.uniform(-1, 1) * size

    def __call__(self, x, base=None):
        if x == 0 or x == exact.NEG_INF:
            return mpmath.mpf(1) if x == 0 else mpmath.mpf(0)
        return fp.exp(x, self._draw(EXP_WOBBLE), base)

    def log(self, x, base=None):
        """fp32 ``log(x)`` (or ``log2``) with an absolute error up to ``LOG_WOBBLE``, then rounded."""
        return fp.r32((mpmath.log(x) if base is None else mpmath.log(x, base)) + self._draw(LOG_WOBBLE))


def simulate_part(q, keys, values, scale, dtype: str, block: int, exp, ar: fp.Arithmetic, base=None) -> tuple:
    """One part (one query row over some keys) as a blocked online-softmax kernel computes it.

    Args:
        q: ``[D]`` query, exact in ``dtype``.
        keys, values: ``[n][D]``, exact in ``dtype``.
        scale: the softmax scale; rounded to fp32 as a kernel receives it (times ``log2 e``
            first when ``base == 2``).
        dtype: ``"float16"``, ``"bfloat16"`` or ``"float32"``.
        block: keys per block.
        exp: the fp32 exponential and logarithm (``Elementary``).
        ar: the fp32 arithmetic (rounding of the accumulations).
        base: ``None`` for natural exponentials, ``2`` for the ``exp2``/``log2`` form of the
            Triton kernels (scores and lse in base 2).

    Returns:
        ``(out [D] fp32 values, lse fp32)``, lse in ``base``; ``(0, -inf)`` for ``n == 0``.
    """
    dim, n = len(q), len(keys)
    if n == 0:
        return exact.empty(dim)
    scale = fp.r32(scale if base is None else scale / mpmath.log(2))
    m, norm, acc = exact.NEG_INF, mpmath.mpf(0), [mpmath.mpf(0)] * dim
    for start in range(0, n, block):
        rows = range(start, min(n, start + block))
        s = [ar.mul(ar.dot(q, keys[j]), scale) for j in rows]
        m_new = max([m] + s)
        alpha = exp(ar.add(m, -m_new), base) if m != exact.NEG_INF else mpmath.mpf(0)
        p = [exp(ar.add(x, -m_new), base) for x in s]
        norm = ar.add(ar.mul(norm, alpha), ar.total(p))
        p_low = [fp.round_to(x, dtype) for x in p]
        for d in range(dim):
            products = [ar.mul(p_low[i], values[j][d]) for i, j in enumerate(rows)]
            acc[d] = ar.add(ar.mul(acc[d], alpha), ar.total(products))
        m = m_new
    return [ar.div(a, norm) for a in acc], ar.add(m, exp.log(norm, base))


def simulate_merge(a: tuple, b: tuple, exp, ar: fp.Arithmetic) -> tuple:
    """``relaycore.state.merge`` (torch path, fp32) with every operation rounded to fp32."""
    (oa, la), (ob, lb) = a, b
    m = max(la, lb)
    m = m if mpmath.isfinite(m) else mpmath.mpf(0)
    wa, wb = exp(ar.add(la, -m)), exp(ar.add(lb, -m))
    total = ar.add(wa, wb)
    if total == 0:
        return [mpmath.mpf(0)] * len(oa), exact.NEG_INF
    ca, cb = ar.div(wa, total), ar.div(wb, total)
    return [ar.add(ar.mul(ca, x), ar.mul(cb, y)) for x, y in zip(oa, ob)], ar.add(m, exp.log(total))


def simulate_merge_all_base2(states: list, exp, ar: fp.Arithmetic) -> tuple:
    """The Triton merge kernel's form: all parts at once, base-2 lses, one max, one division,
    the lse converted to natural log (times ``ln 2``) at the end."""
    dim = len(states[0][0])
    m = max(lse for _, lse in states)
    m = m if mpmath.isfinite(m) else mpmath.mpf(0)
    total, acc = mpmath.mpf(0), [mpmath.mpf(0)] * dim
    for out, lse in states:
        w = exp(ar.add(lse, -m), 2)
        total = ar.add(total, w)
        acc = [ar.add(x, ar.mul(w, o)) for x, o in zip(acc, out)]
    if total == 0:
        return [mpmath.mpf(0)] * dim, exact.NEG_INF
    return [ar.div(x, total) for x in acc], ar.mul(ar.add(m, exp.log(total, 2)), fp.r32(mpmath.log(2)))


def simulate(problem: dict, exp) -> tuple:
    """The relay computation of one query row: each part blocked, the parts merged (pairwise
    left to right in natural log, or all at once in base 2), the output rounded once to the
    input format."""
    q, keys, values, dtype = problem["q"], problem["keys"], problem["values"], problem["dtype"]
    ar = fp.Arithmetic(problem.get("accumulate", "nearest"))
    base = 2 if problem.get("form") == "base2" else None
    states = []
    for part in range(problem["parts"]):
        idx = [j for j, label in enumerate(problem["labels"]) if label == part]
        states.append(simulate_part(q, [keys[j] for j in idx], [values[j] for j in idx], problem["scale"], dtype,
                                    problem["block"], exp, ar, base))
    if base == 2:
        out, lse = simulate_merge_all_base2(states, exp, ar)
    else:
        out, lse = exact.fold(states, lambda a, b: simulate_merge(a, b, exp, ar))
    return [fp.round_to(x, dtype) for x in out], lse


def reference(problem: dict) -> tuple:
    """The exact state, and the bound's inputs ``(V [D], A)``."""
    c = mpmath.mpf(problem["scale"])
    q, keys, values = problem["q"], problem["keys"], problem["values"]
    scores = [c * mpmath.fsum(mpmath.mpf(a) * b for a, b in zip(q, k)) for k in keys]
    score_abs = max(c * mpmath.fsum(abs(mpmath.mpf(a) * b) for a, b in zip(q, k)) for k in keys)
    value_abs = [max(abs(v[d]) for v in values) for d in range(len(q))]
    return exact.attention(scores, values), value_abs, score_abs


def errors_and_bounds(problem: dict, exp, steps=None) -> tuple:
    """``(out errors [D], out bounds [D], lse error, lse bound)`` as floats; ``steps`` as in
    ``relaycore.bounds`` (default: ``default_steps``)."""
    (ref_out, ref_lse), value_abs, score_abs = reference(problem)
    out, lse = simulate(problem, exp)
    prec = bounds.precision(problem["dtype"])
    n, dim = len(problem["keys"]), len(problem["q"])
    out_err = [float(abs(x - y)) for x, y in zip(out, ref_out)]
    out_b = bounds.out_bound(np.array([float(x) for x in ref_out]), np.array([float(v) for v in value_abs]), n, float(score_abs), dim, prec, steps)
    lse_b = float(bounds.lse_bound(float(ref_lse), n, float(score_abs), dim, prec, steps))
    return out_err, [float(b) for b in out_b], float(abs(lse - ref_lse)), lse_b


def _exact_in(dtype: str, x: float) -> float:
    return float(fp.round_to(x, dtype))


@st.composite
def problems(draw):
    """A small adversarial problem: one query row, 1-12 keys, 1-4 relay parts, blocks of 1-4,
    natural-log pairwise merges or the base-2 all-at-once form, fp32 sums rounded to nearest or
    truncated."""
    dtype = draw(st.sampled_from(["float16", "bfloat16", "float32"]))
    dim = draw(st.integers(1, 6))
    n = draw(st.integers(1, 12))
    kind = draw(st.sampled_from(["typical", "large", "underflow"]))
    if kind == "underflow":  # scores spread so that weights reach fp16 subnormals and fp32 underflow
        dim, scale = 1, 1.0
        q = [1.0]
        keys = [[float(draw(st.sampled_from([0, -8, -12, -16, -17.5, -20, -24, -80, -87.5, -90, -104, -200])) + draw(st.floats(-2, 2)))] for _ in range(n)]
    else:
        magnitude = 1.0 if kind == "typical" else draw(st.sampled_from([30.0, 100.0, 250.0]))
        scale = draw(st.sampled_from([1 / np.sqrt(dim), 1.0, 0.125]))
        q = draw(st.lists(st.floats(-magnitude, magnitude), min_size=dim, max_size=dim))
        keys = draw(st.lists(st.lists(st.floats(-magnitude, magnitude), min_size=dim, max_size=dim), min_size=n, max_size=n))
    values = draw(st.lists(st.lists(st.floats(-4, 4), min_size=dim, max_size=dim), min_size=n, max_size=n))
    parts = draw(st.integers(1, 4))
    form = draw(st.sampled_from(["natural", "base2"]))
    accumulate = draw(st.sampled_from(["nearest", "toward_zero"]))
    exact_vec = lambda vs: [mpmath.mpf(_exact_in(dtype, x)) for x in vs]  # noqa: E731
    return dict(
        dtype=dtype,
        scale=scale,
        q=exact_vec(q),
        keys=[exact_vec(k) for k in keys],
        values=[exact_vec(v) for v in values],
        parts=parts,
        labels=draw(st.lists(st.integers(0, parts - 1), min_size=n, max_size=n)),
        block=draw(st.integers(1, 4)),
        form=form,
        accumulate=accumulate,
    )


def check_perturbed_weights_lemma():
    """Lemma 1 at 60 digits, with the perturbations at their extremes."""

    @checked(400)
    @given(
        st.lists(st.tuples(st.floats(-30, 0), st.floats(-5, 5), st.booleans(), st.booleans(), st.sampled_from([-1, 0, 1]), st.sampled_from([-1, 0, 1])), min_size=1, max_size=10),
        st.sampled_from([1e-7, 1e-4, 1e-2, 0.3]),
        st.sampled_from([0.0, 2.0**-25, 1e-3]),
    )
    def run(rows, rho, tau):
        rho, tau = mpmath.mpf(rho), mpmath.mpf(tau)
        scores = [mpmath.mpf(r[0]) for r in rows]
        top = max(scores)
        w = [mpmath.exp(s - top) for s in scores]  # the largest weight is 1, so B >= e^-rho
        v = [mpmath.mpf(r[1]) for r in rows]
        a = [wj * mpmath.exp(rho if r[2] else -rho) + r[4] * tau for wj, r in zip(w, rows)]
        b = [wj * mpmath.exp(rho if r[3] else -rho) + r[5] * tau for wj, r in zip(w, rows)]
        eps = len(rows) * tau * mpmath.exp(rho)
        if eps >= 1 or min(b) < 0:
            return
        got = mpmath.fsum(x * y for x, y in zip(a, v)) / mpmath.fsum(b)
        want = mpmath.fsum(x * y for x, y in zip(w, v)) / mpmath.fsum(w)
        bound = (mpmath.expm1(2 * rho) + 2 * eps) / (1 - eps) * max(abs(x) for x in v)
        assert abs(got - want) <= bound * (1 + exact.AGREE)  # attained by one key: 60-digit slack

    run()


def check_merge_coefficients():
    """One fp32 merge: each coefficient (with its product and sum) within exp(+-rho_1) of exact."""
    prec = bounds.precision("float32")

    @checked(400)
    @given(st.floats(-1e4, 1e4), st.floats(-60, 60), st.randoms(use_true_random=False))
    def run(la, gap, rnd):
        la, lb = fp.r32(la), fp.r32(la + gap)
        exp, ar = Elementary(rnd, extreme=True), fp.Arithmetic()
        (ca,), _ = simulate_merge(([mpmath.mpf(1)], la), ([mpmath.mpf(0)], lb), exp, ar)
        (cb,), _ = simulate_merge(([mpmath.mpf(0)], la), ([mpmath.mpf(1)], lb), exp, ar)
        rho1 = merge_rho(float(max(abs(la), abs(lb))), prec)
        for got, want in ((ca, exact.sigmoid(la - lb)), (cb, exact.sigmoid(lb - la))):
            if got == 0:  # fp32 underflow of the smaller side: an absolute error below tau
                assert want <= bounds.UNDERFLOW_ABS["float32"]
                continue
            assert abs(mpmath.log(got / want)) <= rho1

    run()


def check_simulated_kernel():
    """The whole kernel with explicit roundings stays within relaycore.bounds."""

    @checked(1000)
    @given(problems(), st.randoms(use_true_random=False), st.booleans())
    def run(problem, rnd, extreme):
        out_err, out_b, lse_err, lse_b = errors_and_bounds(problem, Elementary(rnd, extreme))
        for e, b in zip(out_err, out_b):
            assert e <= b, (problem["dtype"], e, b)
        assert lse_err <= lse_b, (problem["dtype"], lse_err, lse_b)

    run()


def typical_ratios(cases: int = 6, keys: int = 48, dim: int = 16, seed: int = 0) -> dict:
    """Worst observed error / bound per format on typical inputs (normal q, k, v, scale 1/sqrt(D),
    blocks of 16 keys, two relay parts of ``keys / 2``).

    Returns:
        ``{dtype: {"out": r, "lse": r, "out_counted": r, "lse_counted": r}}``: the largest ratios
        over ``cases`` drawn problems, against the bound with ``default_steps`` and with the steps
        this blocking really takes (``*_counted``: 1 exponential + 1 rescale + 2 for the merge).
    """
    rng = np.random.default_rng(seed)
    counted = 1 + (keys // 2 // 16 - 1) + 2
    result = {}
    for dtype in ("float16", "bfloat16", "float32"):
        worst = dict(out=0.0, lse=0.0, out_counted=0.0, lse_counted=0.0)
        for _ in range(cases):
            vec = lambda shape: [[mpmath.mpf(_exact_in(dtype, x)) for x in row] for row in rng.standard_normal(shape)]  # noqa: E731
            problem = dict(dtype=dtype, scale=1 / np.sqrt(dim), q=vec((1, dim))[0], keys=vec((keys, dim)), values=vec((keys, dim)),
                           parts=2, labels=[int(j >= keys // 2) for j in range(keys)], block=16)
            for suffix, steps in (("", None), ("_counted", counted)):
                out_err, out_b, lse_err, lse_b = errors_and_bounds(problem, Elementary(random.Random(seed), extreme=False), steps)
                worst["out" + suffix] = max(worst["out" + suffix], max(e / b for e, b in zip(out_err, out_b)))
                worst["lse" + suffix] = max(worst["lse" + suffix], lse_err / lse_b)
        result[dtype] = worst
    return result


#: The least observed / bound ratio on typical inputs that ``check_not_absurdly_loose`` accepts,
#: ``(with default_steps, with counted steps)``. fp32's rounding errors are far below its
#: worst case on random data (they cancel like a random walk), and the exponential's error,
#: eight times fp32's unit roundoff, dominates its bound.
LOOSENESS_FLOOR = {"float16": (1e-2, 1e-2), "bfloat16": (1e-2, 1e-2), "float32": (1e-5, 1e-4)}


def check_not_absurdly_loose():
    """On typical inputs the worst observed output error is above ``LOOSENESS_FLOOR`` times the
    bound, per format (and never above the bound)."""
    for dtype, r in typical_ratios(cases=3).items():
        floor_default, floor_counted = LOOSENESS_FLOOR[dtype]
        assert floor_counted <= r["out_counted"] <= 1, (dtype, r)
        assert floor_default <= r["out"] <= r["out_counted"], (dtype, r)
        assert r["lse"] <= r["lse_counted"] <= 1, (dtype, r)
