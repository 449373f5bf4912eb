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
    with pytest.raises(ValueError, match=r"n: expected n \* u below 1 \(no bound past it\), got n \* u up to 1\.0"):
        bounds.gamma(np.array([1, 2**24]), 2.0**-24)


def test_out_bound_is_refused_where_the_perturbed_weights_may_all_underflow():
    prec = bounds.precision("float16")
    score_abs = np.array([1e8])  # scores this large perturb a weight by exp(rho), rho > 100
    assert bounds.weight_perturbation(np.ones(1), score_abs, 4, prec, steps=1)[0] > 100
    with pytest.raises(ValueError, match=r"num_keys: expected N \* tau \* exp\(rho\) below 1 \(no bound past it\)"):
        bounds.out_bound(np.zeros((1, 4)), np.ones((1, 4)), np.ones(1), score_abs, 4, prec, steps=1)
