"""The merge of attention states (``relaycore.state``), for NumPy arrays and torch tensors.

Commutativity and the identity are exact in floating point (the formula is symmetric, and an
empty side weighs exactly 0 against exactly 1), so they are tested bit for bit; associativity
holds to rounding, within ``tolerances.merge_tolerance``.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import relaycore
from relaycore import state
from relaycore.types import AttentionState
from tolerances import Tolerance, assert_agree, merge_tolerance

torch = pytest.importorskip("torch")

SHAPE = (3, 2)  # leading shape of every drawn state
D = 4


@st.composite
def states(draw, lse_magnitude: float = 50.0, empty_rows: bool = True) -> AttentionState:
    """A float64 NumPy state of ``SHAPE``; some rows empty ``(0, -inf)`` when ``empty_rows``."""
    seed = draw(st.integers(0, 2**31 - 1), label="seed")
    rng = np.random.default_rng(seed)
    lse = rng.uniform(-lse_magnitude, lse_magnitude, SHAPE)
    out = rng.standard_normal(SHAPE + (D,))
    if empty_rows:
        empty = rng.random(SHAPE) < draw(st.sampled_from([0.0, 0.3, 1.0]), label="empty fraction")
        lse = np.where(empty, -np.inf, lse)
        out = np.where(empty[..., None], 0.0, out)
    return AttentionState(out, lse)


def as_torch(s: AttentionState) -> AttentionState:
    return AttentionState(torch.from_numpy(s.out).float(), torch.from_numpy(s.lse).float())


def as_numpy(s: AttentionState) -> AttentionState:
    return AttentionState(s.out.double().numpy(), s.lse.double().numpy())


def assert_same_bits(a: AttentionState, b: AttentionState) -> None:
    if isinstance(a.out, np.ndarray):
        assert np.array_equal(a.out, b.out) and np.array_equal(a.lse, b.lse)
    else:
        assert torch.equal(a.out, b.out) and torch.equal(a.lse, b.lse)


def exact_merge(parts) -> AttentionState:
    """The merge of ``parts`` computed in 60-digit arithmetic, then rounded to float64."""
    import mpmath

    mpmath.mp.dps = 60
    out = np.zeros(SHAPE + (D,))
    lse = np.full(SHAPE, -np.inf)
    for i in np.ndindex(*SHAPE):
        seen = [p for p in parts if np.isfinite(p.lse[i])]
        if not seen:
            continue
        total = mpmath.fsum(mpmath.exp(mpmath.mpf(float(p.lse[i]))) for p in seen)
        lse[i] = float(mpmath.log(total))
        for d in range(D):
            out[i + (d,)] = float(mpmath.fsum(mpmath.exp(mpmath.mpf(float(p.lse[i]))) * float(p.out[i + (d,)]) for p in seen) / total)
    return AttentionState(out, lse)


@pytest.mark.parametrize("kind", ["numpy", "torch"])
@given(states(), states())
def test_merge_is_commutative_bit_for_bit(kind, a, b):
    if kind == "torch":
        a, b = as_torch(a), as_torch(b)
    assert_same_bits(state.merge(a, b), state.merge(b, a))


@pytest.mark.parametrize("kind", ["numpy", "torch"])
@given(states())
def test_empty_state_is_an_exact_identity(kind, a):
    empty = state.empty_state(SHAPE, D)
    if kind == "torch":
        a = as_torch(a)
        empty = state.empty_state(SHAPE, D, like=a.out)
    assert_same_bits(state.merge(a, empty), a)
    assert_same_bits(state.merge(empty, a), a)


@pytest.mark.parametrize("kind", ["numpy", "torch"])
@given(states(), states(), states())
def test_merge_is_associative_to_rounding(kind, a, b, c):
    dtype = "float64"
    if kind == "torch":
        a, b, c = as_torch(a), as_torch(b), as_torch(c)
        dtype = "float32"
    left = state.merge(state.merge(a, b), c)
    right = state.merge(a, state.merge(b, c))
    if kind == "torch":
        a, b, c, left, right = map(as_numpy, (a, b, c, left, right))
    tol = merge_tolerance([a, b, c], dtype)
    assert_agree(left, right, Tolerance(2 * tol.out, 2 * tol.lse), "(a+b)+c vs a+(b+c)")
    assert_agree(left, exact_merge([a, b, c]), tol, "(a+b)+c vs exact")


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_two_empty_states_merge_to_empty_without_nan(kind):
    like = None if kind == "numpy" else torch.zeros(1)
    empty = state.empty_state(SHAPE, D, like=like)
    merged = state.merge(empty, empty)
    out, lse = (merged.out, merged.lse) if kind == "numpy" else as_numpy(merged)
    assert np.array_equal(out, np.zeros(SHAPE + (D,))) and np.all(lse == -np.inf)


def test_lse_at_the_ends_of_the_range_merge_without_a_warning():
    """lse near -1e308 beside 1e308: their difference is past float64's range, -inf, whose weight
    0 is exact (the true one rounds to 0): no overflow warning, the larger side's state."""
    a = AttentionState(np.ones((1, 1, 2)), np.array([[-1e308]]))
    b = AttentionState(np.full((1, 1, 2), 2.0), np.array([[1e308]]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        merged = state.merge(a, b)
    assert np.array_equal(merged.out, b.out) and np.array_equal(merged.lse, b.lse)


@pytest.mark.parametrize("kind", ["numpy", "torch"])
@given(states(lse_magnitude=1e4, empty_rows=False), states(lse_magnitude=1e4, empty_rows=False))
def test_lse_of_ten_thousand_neither_overflows_nor_loses_the_merge(kind, a, b):
    # shift b to within a few units of a so that both sides carry weight at |lse| ~ 1e4
    b = AttentionState(b.out, a.lse + np.sign(b.lse) * np.minimum(np.abs(b.lse) * 1e-3, 5.0))
    dtype = "float64"
    if kind == "torch":
        a, b = as_torch(a), as_torch(b)
        dtype = "float32"
    merged = state.merge(a, b)
    if kind == "torch":
        a, b, merged = map(as_numpy, (a, b, merged))
    assert np.all(np.isfinite(merged.out)) and np.all(np.isfinite(merged.lse))
    assert_agree(merged, exact_merge([a, b]), merge_tolerance([a, b], dtype))


def test_merge_states_api_matches_state_merge_and_rejects_mismatches():
    rng = np.random.default_rng(0)
    a = AttentionState(rng.standard_normal((2, 3)), rng.standard_normal(2))
    b = AttentionState(rng.standard_normal((2, 3)), rng.standard_normal(2))
    assert_same_bits(relaycore.merge_states(a, b), state.merge(a, b))
    with pytest.raises(ValueError, match=r"b.out: expected the shape of a.out \(2, 3\), got \(2, 4\)"):
        relaycore.merge_states(a, AttentionState(np.zeros((2, 4)), np.zeros(2)))
    with pytest.raises(TypeError, match=r"b.lse: expected a NumPy array or torch tensor, got list"):
        relaycore.merge_states(a, AttentionState(b.out, [0.0, 0.0]))
    with pytest.raises(TypeError, match="expected all arrays of one kind"):
        relaycore.merge_states(a, as_torch(b))
    with pytest.raises(TypeError, match=r"a: expected an AttentionState \(out, lse\), got ndarray"):
        relaycore.merge_states(a.out, b)
    with pytest.raises(ValueError, match=r"b.lse: expected the shape of a.lse \(2,\), got \(3,\)"):
        relaycore.merge_states(a, AttentionState(b.out, np.zeros(3)))
    with pytest.raises(ValueError, match=r"a.lse: expected shape \(2,\) \(a.out without its last axis\), got \(3,\)"):
        relaycore.merge_states(AttentionState(np.zeros((2, 3)), np.zeros(3)), AttentionState(np.zeros((2, 3)), np.zeros(3)))


def test_merge_all_needs_a_state_and_folds_left():
    rng = np.random.default_rng(1)
    parts = [AttentionState(rng.standard_normal((2, 3)), rng.standard_normal(2)) for _ in range(3)]
    assert_same_bits(state.merge_all(parts), state.merge(state.merge(parts[0], parts[1]), parts[2]))
    with pytest.raises(ValueError, match="expected at least one state"):
        state.merge_all([])


# ---- states that are not states: lse = +inf or NaN ---------------------------------------------


def invalid_pair(bad_lse: float) -> tuple:
    """A valid float64 state ``a`` and a state ``b`` whose row 1 has ``lse = bad_lse``."""
    rng = np.random.default_rng(2)
    a = AttentionState(rng.standard_normal((3, 4)), rng.standard_normal(3))
    lse = rng.standard_normal(3)
    lse[1] = bad_lse
    return a, AttentionState(rng.standard_normal((3, 4)), lse)


def _in_kind(kind, *states):
    """``states`` (NumPy) as NumPy (``"numpy"``) or CPU torch tensors (``"torch float32"``,
    ``"torch bfloat16"``)."""
    if kind == "numpy":
        return states
    dtype = torch.float32 if kind == "torch float32" else torch.bfloat16
    return tuple(AttentionState(torch.from_numpy(s.out).to(dtype), torch.from_numpy(s.lse).to(dtype)) for s in states)


@pytest.mark.parametrize("kind", ["numpy", "torch float32", "torch bfloat16"])
@pytest.mark.parametrize("bad_lse, shown", [(np.inf, "inf"), (np.nan, "nan")])
def test_merge_states_rejects_an_lse_of_plus_inf_or_nan_on_the_host(kind, bad_lse, shown):
    a, b = _in_kind(kind, *invalid_pair(bad_lse))
    expected = rf"b\.lse: expected finite values or -inf \(the empty state\), got {shown} at index \(1,\)"
    with pytest.raises(ValueError, match=expected):
        relaycore.merge_states(a, b)
    with pytest.raises(ValueError, match=expected.replace("b", "a", 1)):
        relaycore.merge_states(b, a)


@pytest.mark.parametrize("bad_lse, shown", [(np.inf, "inf"), (np.nan, "nan")])
def test_the_numpy_merge_of_the_oracle_rejects_an_lse_of_plus_inf_or_nan(bad_lse, shown):
    a, b = invalid_pair(bad_lse)
    with pytest.raises(ValueError, match=rf"b\.lse: expected finite values or -inf .*got {shown} at index \(1,\)"):
        state.merge(a, b)
    with pytest.raises(ValueError, match=rf"states\[2\]\.lse: expected finite values or -inf .*got {shown}"):
        state.merge_all([a, a, b])


@pytest.mark.parametrize("bad_lse", [np.inf, np.nan])
def test_the_torch_merge_reads_no_values_and_an_invalid_row_gives_nan_as_documented(bad_lse):
    # the backends' hot path: no check (on a GPU it would synchronize); the docstring says what
    # an invalid row gives, and the valid rows are untouched
    a, b = (as_torch(s) for s in invalid_pair(bad_lse))
    merged = state.merge(a, b)
    assert torch.isnan(merged.out[1]).all()
    valid = [0, 2]
    expected = state.merge(AttentionState(a.out[valid], a.lse[valid]), AttentionState(b.out[valid], b.lse[valid]))
    assert torch.equal(merged.out[valid], expected.out) and torch.equal(merged.lse[valid], expected.lse)


@pytest.mark.parametrize("kind", ["numpy", "torch float32", "torch bfloat16"])
@pytest.mark.parametrize("bad_out, shown", [(np.inf, "inf"), (-np.inf, "-inf"), (np.nan, "nan")])
def test_merge_states_rejects_a_non_finite_out_on_the_host(kind, bad_out, shown):
    # row 2 of b is empty (lse -inf): its out is read all the same
    rng = np.random.default_rng(3)
    a = AttentionState(rng.standard_normal((3, 4)), rng.standard_normal(3))
    b = AttentionState(rng.standard_normal((3, 4)), np.array([0.5, 1.0, -np.inf]))
    b.out[2] = 0.0
    b.out[1, 2] = bad_out
    b.out[2, 0] = bad_out
    a, b = _in_kind(kind, a, b)
    expected = rf"b\.out: expected finite values, got {shown} at index \(1, 2\) \(1 more\)$"
    with pytest.raises(ValueError, match=expected):
        relaycore.merge_states(a, b)
    with pytest.raises(ValueError, match=expected.replace("b", "a", 1)):
        relaycore.merge_states(b, a)


def test_the_torch_merge_reads_no_out_values():
    # the hot path leaves a non-finite out unchecked: it flows into its own row only
    a, b = (as_torch(s) for s in invalid_pair(0.0))
    b.out[1, 2] = float("inf")
    merged = state.merge(a, b)
    assert torch.isinf(merged.out[1, 2]) and torch.isfinite(merged.out[[0, 2]]).all()
