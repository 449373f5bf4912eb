"""The bounds refuse, with a sentence, what they cannot bound (``relaycore.bounds``)."""

from __future__ import annotations

import numpy as np
import pytest

from relaycore import bounds


def test_an_unknown_dtype_has_no_precision_policy():
    with pytest.raises(ValueError, match=r"dtype: expected one of \['bfloat16', 'float16', 'float32', 'float64'\], "
                                         r"got 'int8'"):
        bounds.precision("int8")


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


def test_lse_bound_is_refused_beyond_rho_2_where_it_is_not_proved():
    """At ``default_steps`` a row of 2.1e5 keys with ``|q . k|`` up to 20 has ``rho`` just above
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
    with pytest.raises(bounds.NoBound, match=r"num_keys = 210000, score_abs = 20, steps = 500000; pass"):
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
