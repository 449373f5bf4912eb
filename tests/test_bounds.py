"""The bounds refuse, with a sentence, what they cannot bound (``relaycore.bounds``)."""

from __future__ import annotations

import numpy as np
import pytest

from relaycore import bounds


def test_an_unknown_dtype_has_no_precision_policy():
    with pytest.raises(ValueError, match=r"dtype: expected one of \['bfloat16', 'float16', 'float32', 'float64'\], "
                                         r"got 'int8'"):
        bounds.precision("int8")


def test_a_dtype_that_is_not_a_name_is_refused_as_a_type():
    for dtype in ([1], {"float16": 1}):  # unhashable: no lookup crashes on them
        with pytest.raises(TypeError, match=rf"^dtype: expected a format's name, one of \[.*\], got "
                                            rf"{type(dtype).__name__} "):
            bounds.precision(dtype)


FP32 = bounds.precision("float32")
ROWS = (np.array([4, 0]), np.array([1.0, 0.0]))  # num_keys, score_abs: a row of 4 keys, a row of none


@pytest.mark.parametrize("call, error, message", [
    (lambda: bounds.lse_bound(np.zeros(2), ROWS[0], np.array([np.nan, 0.0]), 16, FP32), ValueError,
     r"score_abs: expected values >= 0 on every row that sees a key, got nan"),
    (lambda: bounds.weight_perturbation(ROWS[0], np.array([-1.0, 0.0]), 16, FP32), ValueError,
     r"score_abs: expected values >= 0 on every row that sees a key, got -1\.0"),
    (lambda: bounds.lse_bound(np.array([np.nan, 0.0]), *ROWS, 16, FP32), ValueError,
     r"ref_lse: expected finite values on every row that sees a key, got nan"),
    (lambda: bounds.out_bound(np.zeros((2, 4)), np.full((2, 4), np.nan), *ROWS, 16, FP32), ValueError,
     r"value_abs: expected values >= 0 on every row that sees a key, got nan"),
    (lambda: bounds.out_bound(np.full((2, 4), np.inf), np.ones((2, 4)), *ROWS, 16, FP32), ValueError,
     r"ref_out: expected finite values on every row that sees a key, got inf"),
    (lambda: bounds.out_bound(np.zeros((2, 4)), np.ones((2, 5)), *ROWS, 16, FP32), ValueError,
     r"ref_out: expected a shape that broadcasts with the rows' shape \(2, 5\), got \(2, 4\)"),
    (lambda: bounds.out_bound(np.zeros((2, 4)), np.ones((2, 4)), *ROWS, -100, FP32), ValueError,
     r"head_dim: expected an int >= 0, got -100"),
    (lambda: bounds.lse_bound(np.zeros(2), *ROWS, 4.5, FP32), ValueError, r"head_dim: expected an int >= 0, got 4\.5"),
    (lambda: bounds.lse_bound(np.zeros(2), np.array([-4, 0]), ROWS[1], 16, FP32), ValueError,
     r"num_keys: expected whole counts >= 0, got -4\.0"),
    (lambda: bounds.default_steps(np.array([2.5])), ValueError, r"num_keys: expected whole counts >= 0, got 2\.5"),
    (lambda: bounds.output_growth(ROWS[0], "float32"), TypeError,
     r"prec: expected a relaycore.bounds.Precision \(bounds.precision\(dtype\)\), got str"),
    (lambda: bounds.lse_bound(np.zeros(2), *ROWS, 16, FP32, scale="x"), TypeError,
     r"scale: expected a number or an array of numbers, got str"),
    (lambda: bounds.out_rho_limit(np.nan), ValueError, r"score_abs: expected values >= 0, got nan"),
    (lambda: bounds.gamma(-1e8, 2.0**-24), ValueError, r"n: expected finite counts >= 0, got -100000000\.0"),
    (lambda: bounds.gamma(np.nan, 2.0**-24), ValueError, r"n: expected finite counts >= 0, got nan"),
    (lambda: bounds.gamma(4, np.nan), ValueError, r"u: expected a finite unit roundoff >= 0, got nan"),
])
def test_arguments_outside_their_contract_are_refused_by_name(call, error, message):
    """A NaN magnitude or reference gave a NaN bound, a negative ``head_dim`` or count a
    negative one: each is refused, naming the argument."""
    with pytest.raises(error, match=f"^{message}$"):
        call()


def test_rows_that_see_no_key_are_not_read_and_an_infinite_magnitude_has_no_bound():
    """The oracle's lse is ``-inf`` on a row that sees no key: its bound is 0 whatever the row
    holds. An infinite ``A`` is a magnitude with no bound (``NoBound``), not bad input."""
    num_keys, score_abs = np.array([4, 0]), np.array([1.0, np.nan])
    lse = bounds.lse_bound(np.array([0.5, -np.inf]), num_keys, score_abs, 16, FP32)
    out = bounds.out_bound(np.array([[1.0], [np.nan]]), np.array([[1.0], [np.nan]]), num_keys, score_abs, 16, FP32)
    assert lse[1] == out[1, 0] == 0 and 0 < lse[0] < 1e-3 and 0 < out[0, 0] < 1e-3
    with pytest.raises(bounds.NoBound, match=r"got rho = inf"):
        bounds.lse_bound(0.0, 4, np.inf, 16, FP32)
    assert bounds.out_bound_refused(np.ones((1, 4)), [4], [np.inf], 16, FP32).tolist() == [True]


def test_gamma_is_refused_where_n_u_reaches_one():
    assert bounds.gamma(2**23, 2.0**-24) == pytest.approx(1.0)  # n u = 1/2: 1/2 / (1 - 1/2)
    with pytest.raises(bounds.NoBound, match=r"n: expected n \* u below 1 \(no bound past it\), got n \* u up to 1\.0"):
        bounds.gamma(np.array([1, 2**24]), 2.0**-24)


def test_out_bound_is_refused_where_the_perturbed_weights_may_all_underflow():
    prec = bounds.precision("float16")
    score_abs = np.array([1e8])  # scores this large perturb a weight by exp(rho), rho > 100
    assert bounds.weight_perturbation(np.ones(1), score_abs, 4, prec, steps=1)[0] > 100
    with pytest.raises(bounds.NoBound, match=r"num_keys: expected N \* tau \* exp\(rho\) below 1 \(no bound past it\)"):
        bounds.out_bound(np.zeros((1, 4)), np.ones((1, 4)), np.ones(1), score_abs, 4, prec, steps=1)


@pytest.mark.parametrize("steps, message", [
    (-1e5, r"steps: expected a finite count of at least 1 .*, got -100000\.0"),
    (0, r"steps: expected a finite count of at least 1 .*, got 0\.0"),
    (np.inf, r"steps: expected a finite count of at least 1 .*, got inf"),
    (np.array([[3.0], [np.nan]]), r"steps: expected a finite count of at least 1 .*, got nan"),
    (np.ones(2), r"steps: expected a number, or an array of 2 axes that broadcasts to the rows' shape \(2, 2\) "
                 r"\(one count per query token is a column \[total_q, 1\]\), got shape \(2,\)"),
    (np.ones((3, 1)), r"steps: expected a number, or an array of 2 axes .*, got shape \(3, 1\)"),
])
def test_steps_that_are_not_a_count_per_row_are_refused(steps, message):
    """A negative, zero or infinite count would loosen the bound without limit (a negative one
    passes anything), and a 1-D array would broadcast over the heads of ``[rows, heads]``."""
    num_keys = np.array([[4, 4], [9, 9]])
    with pytest.raises(ValueError, match=message):
        bounds.weight_perturbation(num_keys, np.ones((2, 2)), 8, bounds.precision("float16"), steps)
    with pytest.raises(TypeError, match="steps: expected a number or an array of numbers, got str"):
        bounds.weight_perturbation(num_keys, np.ones((2, 2)), 8, bounds.precision("float16"), "x")


def test_steps_on_rows_that_see_no_key_are_not_read():
    rho = bounds.weight_perturbation(np.array([[0], [3]]), np.ones((2, 1)), 8, bounds.precision("float16"),
                                     np.array([[0], [3]]))
    assert rho[0, 0] == 0 and rho[1, 0] > 0


@pytest.mark.parametrize("stored, message", [
    (-1, r"stored: expected a finite count of at least 0 on every row that sees a key, got -1\.0"),
    (np.inf, r"stored: expected a finite count of at least 0 .*, got inf"),
    (np.ones(2), r"stored: expected a number, or an array of 2 axes .*, got shape \(2,\)"),
])
def test_stored_that_is_not_a_count_per_row_is_refused(stored, message):
    """A negative count would loosen the bound (Lemma 8 adds ``stored u_p`` and ``H``)."""
    num_keys = np.array([[4, 4], [9, 9]])
    with pytest.raises(ValueError, match=message):
        bounds.weight_perturbation(num_keys, np.ones((2, 2)), 8, bounds.precision("float16"), stored=stored)
    with pytest.raises(ValueError, match=message):
        bounds.out_bound(np.zeros((2, 2, 8)), np.ones((2, 2, 8)), num_keys, np.ones((2, 2)), 8,
                         bounds.precision("float16"), stored=stored)


def test_running_folds_of_stored_outputs_carry_lemma_10s_term_and_an_unknown_form_is_refused():
    """Lemma 10: ``stored_merge="running"`` adds ``S (tau + tau_acc) exp(S (u_p + 5/2 u_acc) + 3
    u_acc (N - 1))`` in place of Lemma 8's ``H``, the same ``rho``; any other form is refused,
    naming the argument."""
    prec = bounds.precision("float16")
    n, s = 24, 2
    plain = bounds.out_bound(np.zeros(1), np.zeros(1), n, 0.0, 1, prec, 11)[0]
    running = bounds.out_bound(np.zeros(1), np.zeros(1), n, 0.0, 1, prec, 11, stored=s, stored_merge="running")[0]
    h = s * (prec.tau + prec.tau_acc) * np.exp(s * (prec.u_p + 2.5 * prec.u_acc) + 3 * prec.u_acc * (n - 1))
    u_o = (1 + prec.u_out) * (1 + prec.u_acc) - 1
    assert running - plain == pytest.approx(h * (1 + u_o), abs=0, rel=1e-12)  # the N term alone is ~4e-6 of it
    assert bounds.weight_perturbation(n, 0.0, 1, prec, 11, stored=s) > bounds.weight_perturbation(n, 0.0, 1, prec, 11)
    with pytest.raises(ValueError, match=r"stored_merge: expected one of \('pairwise', 'running'\), got 'fold'"):
        bounds.out_bound(np.zeros(1), np.zeros(1), n, 0.0, 1, prec, stored=1, stored_merge="fold")
    with pytest.raises(ValueError, match=r"stored_merge: expected one of"):
        bounds.out_bound_refused(np.zeros(1), n, 0.0, 1, prec, stored=1, stored_merge=None)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_running_stored_underflow_is_lemma_10s_closed_form(dtype):
    """``H^run_S = S (tau + tau_acc) exp(S (u_p + 5/2 u_acc) + 3 u_acc (N - 1))``, computed here
    at 60 digits from the format's constants, against ``_stored_underflow`` at rel 1e-12: in bf16
    and fp32, where ``tau = tau_acc``, a dropped ``tau_acc`` halves it."""
    import mpmath

    prec = bounds.precision(dtype)
    # (u_p, tau) as log2: half an ulp at 1; half fp16's smallest subnormal, else fp32's smallest normal (a flush)
    fmt = {"float16": (-11, -25), "bfloat16": (-8, -126), "float32": (-24, -126)}[dtype]
    with mpmath.workdps(60):
        u_acc = mpmath.ldexp(1, -23)  # fp32 sums: 2^-23, u_p the input format's 2^-p
        u_p, tau, tau_acc = mpmath.ldexp(1, fmt[0]), mpmath.ldexp(1, fmt[1]), mpmath.ldexp(1, -126)
        for n, s in ((1, 1), (24, 2), (4096, 3), (2**20, 2)):
            want = s * (tau + tau_acc) * mpmath.exp(s * (u_p + mpmath.mpf(5) / 2 * u_acc) + 3 * u_acc * (n - 1))
            got = bounds._stored_underflow(np.array(float(n)), prec, s, "running")
            assert float(got) == pytest.approx(float(want), abs=0, rel=1e-12), (dtype, n, s)


def test_stored_merges_add_u_p_to_rho_and_their_underflow_to_the_out_bound():
    """Lemma 8: each merge that reads outputs stored in the input dtype adds ``u_p`` to ``rho``
    and ``rho_Delta``, and ``H = stored tau exp(stored (u_p + 4 u_acc))`` to the out bound, which
    is what carries a test's fp16 subnormal outputs; ``stored = 0`` is the default, bit for bit,
    and the lse bound does not take it."""
    prec = bounds.precision("float16")
    n, a, v, ref = np.array([40.0]), np.array([3.0]), np.full((1, 4), 2.0**-20), np.zeros((1, 4))
    plain = bounds.out_bound(ref, v, n, a, 4, prec, 12)
    assert np.array_equal(bounds.out_bound(ref, v, n, a, 4, prec, 12, stored=0), plain)
    rho0, rho2 = (bounds.weight_perturbation(n, a, 4, prec, 12, stored=s) for s in (0, 2))
    assert rho2[0] - rho0[0] == pytest.approx(2 * prec.u_p, rel=1e-12)
    growth0, growth2 = (bounds.output_growth(n, prec, 12, stored=s) for s in (0, 2))
    assert growth2[0] - growth0[0] == pytest.approx(2 * prec.u_p, rel=1e-12)
    h = 2 * prec.tau * np.exp(2 * (prec.u_p + 4 * prec.u_acc))
    assert np.all(bounds.out_bound(ref, v, n, a, 4, prec, 12, stored=2) - plain >= h)
    assert np.all(bounds.out_bound(ref, v, n, a, 4, prec, 12, stored=2) > 2 * plain)  # H dominates these values
    with pytest.raises(TypeError, match="stored"):
        bounds.lse_bound(np.zeros(1), n, a, 4, prec, 12, stored=2)


def test_lse_bound_is_refused_beyond_rho_2_where_it_is_not_proved():
    """At ``default_steps`` a row of 2.1e5 keys with ``A = max_j scale * sum_d |q_d k_jd|`` up to 20 has ``rho`` just above
    2: no lse bound is proved there (``proofs/error_bound.py``, "The lse"), so ``lse_bound``
    names the row's sizes and asks for the kernel's counted steps; the out bound still exists."""
    prec = bounds.precision("float16")
    num_keys, score_abs = np.array([[3.0, 0.0], [2.1e5, 3.0]]), np.full((2, 2), 20.0)
    rho = bounds.weight_perturbation(num_keys, score_abs, 128, prec)
    assert rho[1, 0] > bounds.LSE_RHO_MAX == 2 and rho[0, 0] < 2
    with pytest.raises(bounds.NoBound, match=r"num_keys, steps: expected rho <= 2 for the lse bound \(it is proved "
                                             r"only there\), got rho = 2\.04\d* on a row of num_keys = 210000, "
                                             r"score_abs = 20, steps = 420000 \(default_steps\); pass the kernel's "
                                             r"counted steps \(steps=\)"):
        bounds.lse_bound(np.full((2, 2), 30.0), num_keys, score_abs, 128, prec)
    with pytest.raises(bounds.NoBound, match=r"num_keys = 210000, score_abs = 20, steps = 500000; fewer steps per key would"):
        bounds.lse_bound(np.full((2, 2), 30.0), num_keys, score_abs, 128, prec, steps=np.array([[1.0], [5e5]]))
    assert issubclass(bounds.NoBound, ValueError)
    assert np.all(np.isfinite(bounds.out_bound(np.zeros((2, 2, 4)), np.ones((2, 2, 4)), num_keys, score_abs, 128, prec)))
    counted = -(-num_keys // 64) + 2  # blocks of 64 keys and one merge
    assert np.all(bounds.lse_bound(np.full((2, 2), 30.0), num_keys, score_abs, 128, prec, counted) < 0.05)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_lse_bound_up_to_rho_2_is_the_closed_form_bit_for_bit(dtype):
    prec = bounds.precision(dtype)
    num_keys = np.array([0.0, 1.0, 7.0, 4096.0, 2.0e5, 2.0e5])
    score_abs = np.array([0.0, 0.0, 3.0, 20.0, 20.0, 1e3])
    ref = np.array([-np.inf, 0.0, 4.2, -25.0, 32.0, 1e3])
    steps = np.array([1.0, 1.0, 3.0, 8194.0, 4e5, 3127.0])
    rho = bounds.weight_perturbation(num_keys, score_abs, 128, prec, steps)
    assert rho.max() <= 2
    want = np.where(num_keys > 0, rho + 3 * prec.u_acc * (np.where(num_keys > 0, np.abs(ref), 0.0) + 1), 0.0)
    got = bounds.lse_bound(ref, num_keys, score_abs, 128, prec, steps)
    assert got.tobytes() == want.tobytes() and got[0] == 0


def test_the_largest_finite_values_are_the_formats():
    for dtype in ("float16", "float32", "float64"):
        assert bounds.LARGEST_FINITE[dtype] == float(np.finfo(dtype).max)
        assert bounds.precision(dtype).largest == float(np.finfo(dtype).max)
    assert bounds.LARGEST_FINITE["bfloat16"] == float.fromhex("0x1.fep127")  # 0x7f7f: 8 significand bits
    for dtype in ("float16", "bfloat16", "float32"):
        assert bounds.precision(dtype).largest_acc == float(np.finfo(np.float32).max)
    assert bounds.precision("float64").largest_acc == float(np.finfo(np.float64).max)


def test_out_bound_is_refused_where_the_output_may_round_to_inf():
    """fp16, 12 keys of value 65504, scores 0 and eleven times -0.6724: the weights rounded to
    fp16 are above the fp32 ones the normaliser sums, the fp32 output is 65536, and fp16 rounds
    it to inf (``proofs/error_bound.py``, Lemma 5, which simulates it). Without the overflow
    condition ``out_bound`` said 100.5."""
    prec = bounds.precision("float16")
    a = float(np.float16(0.6724))
    with pytest.raises(bounds.NoBound, match=r"value_abs: expected exp\(rho_Delta\) \(1 \+ eps\) V_d \+ 2 eps rho <= 65504, "
                                             r"the largest finite float16 \(a computed output up to that size could round "
                                             r"to inf: no bound\), got up to 6553\d\.\d+"):
        bounds.out_bound(np.array([65504.0]), np.array([65504.0]), 12, a, 1, prec)
    # where exp(rho_Delta) V_d stays below 65504 there is a bound, and it is the closed form
    growth = float(bounds.output_growth(12, prec))
    v = 65504.0 * np.exp(-growth) * (1 - 2.0**-20)
    rho = float(bounds.weight_perturbation(12, a, 1, prec))
    eps, eps_acc = (12 * tau * np.exp(rho) for tau in (prec.tau, prec.tau_acc))
    u_o = (1 + prec.u_out) * (1 + prec.u_acc) - 1
    want = ((np.expm1(2 * rho) + 2 * eps) / (1 - eps) * v + 5 * eps_acc) * (1 + u_o) + u_o * v + 2 * prec.tau
    assert bounds.out_bound(np.array([v]), np.array([v]), 12, a, 1, prec)[0] == pytest.approx(want, rel=1e-15)
    assert growth == pytest.approx(prec.u_p + 2 * float(bounds.gamma(12, prec.u_acc)) + 2 * 24 * prec.u_acc, rel=1e-15)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_the_accumulators_underflow_is_an_absolute_term_in_its_own_format(dtype):
    """Lemma 6: products ``p v``, sums, rescales and merges that underflow the accumulation
    format err absolutely, on no value's scale. On values 0 the bound is that term,
    ``5 N tau_acc exp(rho) (1 + u_o)``, and the output's own ``2 tau``; ``tau_acc`` is the
    accumulation format's (fp32's 2^-126 for fp16 inputs too, not fp16's 2^-25)."""
    prec = bounds.precision(dtype)
    assert prec.tau_acc == bounds.UNDERFLOW_ABS[bounds.ACCUMULATION[dtype]] <= prec.tau
    n, a = np.array([1.0, 4096.0]), np.array([0.0, 20.0])
    rho = bounds.weight_perturbation(n, a, 128, prec)
    u_o = (1 + prec.u_out) * (1 + prec.u_acc) - 1
    want = 5 * (n * prec.tau_acc * np.exp(rho)) * (1 + u_o) + 2 * prec.tau
    assert bounds.out_bound(np.zeros((2, 1)), np.zeros((2, 1)), n, a, 128, prec)[:, 0].tobytes() == want.tobytes()


def test_out_bound_is_refused_where_an_fp32_accumulator_may_overflow():
    """bf16 values of a quarter of the largest bf16: one key's output is fine, but 12 such keys
    sum past fp32's largest value in the accumulator."""
    prec = bounds.precision("bfloat16")
    v = np.full((2, 1), float.fromhex("0x1.fep125"))  # a quarter of bf16's largest finite value
    assert np.all(np.isfinite(bounds.out_bound(v, v, np.array([1, 2]), np.ones(2), 1, prec)))
    with pytest.raises(bounds.NoBound, match=r"value_abs: expected N exp\(rho \+ rho_Delta\) \(1 \+ eps\) V_d \+ 2 eps rho "
                                             r"<= 3\.4028235e\+38, the largest finite float32 \(an accumulator up to that "
                                             r"size could overflow: no bound\)"):
        bounds.out_bound(v, v, np.array([1, 12]), np.ones(2), 1, prec)


def test_the_dot_products_are_checked_where_the_scale_is_given():
    """``A = scale * sum_d |q_d k_jd|``: a tiny scale can hide dot products past fp32's range."""
    prec = bounds.precision("bfloat16")
    args = (np.zeros((1, 1)), np.ones((1, 1)), np.ones(1), np.array([10.0]), 1, prec)
    assert np.isfinite(bounds.out_bound(*args)[0, 0]) and np.isfinite(bounds.out_bound(*args, scale=1.0)[0, 0])
    with pytest.raises(bounds.NoBound, match=r"score_abs, scale: expected \(1 \+ gamma_D\) A / scale <= 3\.4028235e\+38, "
                                             r"the largest finite float32 \(the dot products q \. k must not overflow\), "
                                             r"got up to 1\.0000001e\+39"):
        bounds.out_bound(*args, scale=1e-38)
    with pytest.raises(bounds.NoBound, match=r"score_abs, scale: expected"):
        bounds.lse_bound(np.zeros(1), np.ones(1), np.array([10.0]), 1, prec, scale=1e-38)
    for bad in (0.0, -1.0, np.inf, np.nan):
        with pytest.raises(ValueError, match=r"scale: expected the finite positive softmax scale"):
            bounds.out_bound(*args, scale=bad)
    assert bounds.MIN_SCALE["float32"] * 2.0**27 < bounds.LARGEST_FINITE["float32"]


def test_out_bound_is_refused_where_the_merge_lemmas_are_not_proved():
    """Lemma 3 (pairwise merge, two steps) is proved while ``rho <= 2.5 + min(A, 256) / 4``: an
    fp32 row of 8e5 keys at ``default_steps`` and ``A = 20`` is past it (``eps`` is tiny there,
    so that check does not catch it); the kernel's counted steps give a bound."""
    prec = bounds.precision("float32")
    n, a = np.array([8e5]), np.array([20.0])
    assert bounds.weight_perturbation(n, a, 128, prec)[0] > 7.5
    with pytest.raises(bounds.NoBound, match=r"num_keys, steps: expected rho <= 2\.5 \+ min\(A, 256\) / 4 for the out bound "
                                             r"\(the merge lemmas are proved only there\), got rho = 8\.\d+ where the limit is "
                                             r"7\.5; pass the kernel's counted steps"):
        bounds.out_bound(np.zeros((1, 4)), np.ones((1, 4)), n, a, 128, prec)
    assert np.all(np.isfinite(bounds.out_bound(np.zeros((1, 4)), np.ones((1, 4)), n, a, 128, prec, -(-n // 64) + 2)))
    assert float(bounds.out_rho_limit(a)[0]) == 7.5 and float(bounds.out_rho_limit(1e4)) == 66.5


def test_out_bound_refused_names_the_rows_out_bound_refuses():
    """``out_bound_refused`` marks exactly the rows on which ``out_bound`` raises, whatever the
    reason, so that a checker can hold the other rows to their bound."""
    prec = bounds.precision("float16")
    a16 = float(np.float16(0.6724))
    rows = [  # (value, N, A, steps): a bound; an output that may overflow; eps >= 1; fine again
        (3.0, 12, a16, 24), (65504.0, 12, a16, 24), (3.0, 1, 1e8, 1), (1.0, 4096, 20.0, 66)]
    v = np.array([[r[0], 0.5 * r[0]] for r in rows])
    n, a, steps = (np.array([r[i] for r in rows], dtype=np.float64) for i in (1, 2, 3))
    refused = bounds.out_bound_refused(v, n, a, 1, prec, steps)
    assert refused.tolist() == [False, True, True, False]
    for i in range(len(rows)):
        one = (v[i:i + 1], n[i:i + 1], a[i:i + 1], 1, prec, steps[i:i + 1])
        if refused[i]:
            with pytest.raises(bounds.NoBound):
                bounds.out_bound(v[i:i + 1], *one)
        else:
            assert np.all(np.isfinite(bounds.out_bound(v[i:i + 1], *one)))
    fp32 = bounds.precision("float32")  # rho past the merge lemmas' limit
    assert bounds.out_bound_refused(np.ones((2, 4)), np.array([8e5, 100]), np.array([20.0, 20.0]), 128, fp32).tolist() \
        == [True, False]
    assert bounds.out_bound_refused(np.ones((1, 1)), np.ones(1), np.array([10.0]), 1, bounds.precision("bfloat16"),
                                    scale=1e-38).tolist() == [True]


def test_a_refusal_suggests_counted_steps_only_where_fewer_steps_would_give_a_bound():
    fp16 = bounds.precision("float16")
    with pytest.raises(bounds.NoBound, match=r"pass the kernel's counted steps"):
        bounds.lse_bound(0.0, 3e5, 20.0, 64, fp16)  # default_steps' 6e5 steps per key: 1 step keeps rho small
    with pytest.raises(bounds.NoBound, match=r"no count of steps gives one \(rho = 4\.2\d+ at 1 step per key\)"):
        bounds.lse_bound(0.0, 4, 5e5, 64, fp16)  # the scores' rounding alone passes the limit


def test_a_refusal_past_the_rho_limit_names_its_row_among_several():
    # two rows of 8e5 keys at A = 20 in fp32: rho passes out_rho_limit on both (a NoBound, not a
    # broadcasting error while the message is written)
    with pytest.raises(bounds.NoBound, match=r"expected rho <= 2\.5 \+ min\(A, 256\) / 4 .* got rho = 8\.039"):
        bounds.out_bound(np.zeros((2, 4)), np.ones((2, 4)), np.full(2, 8e5), np.full(2, 20.0), 128,
                         bounds.precision("float32"))
    with pytest.raises(bounds.NoBound, match=r"fewer steps per key would \(rho = 0\.03\d+ at 1 step per key\)"):
        bounds.lse_bound(0.0, 3e5, 20.0, 64, bounds.precision("float16"), steps=6e5)  # the steps were passed
