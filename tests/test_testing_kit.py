"""``relaycore.testing``: batches are exact in their dtype, the check passes a correct backend and
fails wrong results at the right place, the rounding helpers match torch's casts."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import relaycore
from relaycore import bounds
from relaycore.constants import LOG2E
from relaycore.reference import relay_attention as reference_relay
from relaycore.testing import (assert_close, blocked_steps, check, compare, make_batch, random_batch, round_to,
                               stored_merges)
from relaycore.testing.strategies import batches
from relaycore.types import AttentionState
from relaycore.validation import validate
from tolerances import bounds_for

import flawed_kernels

torch = pytest.importorskip("torch")

LOW = ("float32", "float16", "bfloat16")
TORCH_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32, "float64": torch.float64}


#: The torch backend's blocking: every part (each prefix level, the own KV) in one softmax (one
#: block however long), merged into the running total one level at a time (fast/torch_backend.py).
WHOLE_PART = 1 << 30


def torch_backend(*args, **kwargs):
    return relaycore.relay_attention(*args, **kwargs, backend="torch")


# ---- a correct implementation passes ------------------------------------------------------------


@pytest.mark.parametrize("dtype", LOW)
@given(batch=st.data())
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_torch_backend_passes(dtype, batch, poisoned_allocations):
    batch = batch.draw(batches(dtypes=(dtype,), score_magnitudes=(None, 100.0), head_dims=(8, 16, 64)))
    report = compare(torch_backend, batch, device="cpu")
    assert report.passed, str(report)
    # and at its own step count, tighter than the default's for any blocking
    report = compare(torch_backend, batch, device="cpu", steps=blocked_steps(batch, WHOLE_PART, merge="pairwise"))
    assert report.passed, str(report)
    out, lse = torch_backend(*batch.to_torch("cpu")[0], **batch.to_torch("cpu")[1])
    assert out.dtype == TORCH_DTYPES[dtype] and lse.dtype == torch.float32


def test_products_flushed_to_zero_stay_within_the_bound():
    """fp32 values near 2^-118 (normal) with scores spread, under flush-to-zero arithmetic (x86's
    FTZ and DAZ, which ``torch.set_flush_denormal`` sets; a GPU's ``.ftz`` instructions): a
    product ``p v`` or partial sum below 2^-126 becomes 0, an absolute error up to 2^-126 however
    small ``V_d``. Summed over the keys, it passes the bound's terms on the scale of ``V_d`` and
    its ``2 tau``: the same bound with ``tau_acc = 0`` fails. The accumulator's underflow term
    ``5 N tau_acc exp(rho)`` covers it (``proofs/error_bound.py``, Lemma 6)."""
    batch = make_batch([1], [4096], num_q_heads=2, head_dim=16, dtype="float32", score_magnitude=4.0, value_offset=8,
                       seed=0)
    batch = dataclasses.replace(batch, kv=batch.kv._replace(v=batch.kv.v * 2.0**-121), recipe=None)
    assert np.abs(batch.kv.v).min() >= np.finfo(np.float32).tiny  # normal: exact after the scaling, and not flushed
    steps = blocked_steps(batch, WHOLE_PART, merge="pairwise")
    args, kwargs = batch.to_torch("cpu")
    if not torch.set_flush_denormal(True):
        pytest.skip("this CPU cannot flush subnormals to zero")
    try:
        out, lse = torch_backend(*args, **kwargs)
    finally:
        torch.set_flush_denormal(False)
    report = check((out, lse), batch, steps=steps)
    assert report.passed and report.unchecked == (), str(report)
    oracle = batch.oracle()
    stats = oracle.stats
    without = dataclasses.replace(bounds.precision("float32"), tau_acc=0.0)
    old_bound = bounds.out_bound(oracle.state.out, stats.value_abs, stats.num_keys, stats.score_abs, batch.head_dim,
                                 without, steps)
    assert np.any(np.abs(out.double().numpy() - oracle.state.out) > old_bound)


def test_numpy_results_and_the_reference_pass_exactly():
    batch = random_batch(np.random.default_rng(3), dtypes=("float64",))
    report = assert_close(reference_relay(*batch.arguments()[0], **batch.arguments()[1]), batch)
    assert report.out_ratio == 0 and report.lse_ratio == 0


# ---- wrong results fail, at the right place ---------------------------------------------------


def a_batch(dtype: str = "float32") -> "relaycore.testing.Batch":
    """Three requests, two prefix levels, GQA, paged: every row sees a prefix."""
    return make_batch([2, 3, 1], [4, 3, 5], [[3, 5], [2]], [[0, 1, 1], [0, -1, 0]], num_q_heads=4,
                      num_kv_heads=2, head_dim=16, dtype=dtype, block_size=3, seed=11)


@pytest.mark.parametrize("dtype", LOW)
def test_a_perturbed_element_fails_and_is_located(dtype):
    batch = a_batch(dtype)
    args, kwargs = batch.to_torch("cpu")
    out, lse = torch_backend(*args, **kwargs)
    row, head, dim = 3, 2, 5  # request 1, token 1
    bound = bounds_for(batch).out[row, head, dim]
    out = out.clone()
    out[row, head, dim] += 10 * bound
    report = check((out, lse), batch)
    assert not report.passed and report.out_ratio > 9 and report.problems == ()
    where = report.out_worst
    assert (where.request, where.token, where.head, where.dim) == (1, 1, 2, 5)
    assert where.bound == bound and where.row == row
    with pytest.raises(AssertionError, match=r"worst out: request 1, token 1 \(row 3\), head 2, dim 5"):
        assert_close((out, lse), batch)


def test_nan_fails_and_is_located(poison):
    batch = a_batch()
    out, lse = (x.copy() for x in batch.oracle().state)
    out[5, 1, 0] = np.nan
    report = check((out, lse), batch)
    assert not report.passed and report.out_ratio == np.inf
    assert any("1 NaN, the first at request 2, token 0, head 1" in p for p in report.problems), report.problems
    # an output row a kernel never wrote: NaN from the poisoned allocation
    out = poison(torch.empty(out.shape, dtype=torch.float32))
    out[:5] = torch.from_numpy(batch.oracle().state.out[:5])
    report = check((out, torch.from_numpy(lse).float()), batch)
    assert not report.passed and report.out_worst.request == 2
    assert report.problems == (f"out: {out[5:].numel()} NaN, the first at request 2, token 0, head 0",)
    out, lse = (x.copy() for x in batch.oracle().state)
    lse[0, 3] = np.nan
    report = check((out, lse), batch)
    assert not report.passed and (report.lse_worst.row, report.lse_worst.head) == (0, 3)


def test_lse_in_base_two_fails():
    batch = a_batch()
    args, kwargs = batch.to_torch("cpu")
    out, lse = torch_backend(*args, **kwargs)
    report = check((out, lse * LOG2E), batch)
    assert not report.passed and report.lse_ratio > 1 and report.out_ratio <= 1


def test_an_ignored_prefix_fails():
    batch = a_batch()
    (q, cu, kv, _), kwargs = batch.arguments()
    report = check(reference_relay(q, cu, kv, (), **kwargs), batch)
    assert not report.passed and report.out_ratio > 1 and report.lse_ratio > 1


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float64"])
def test_result_dtypes_outside_the_contract_fail_with_a_sentence(dtype):
    # out in q's dtype; lse float32 (float64 for float64 q)
    batch = a_batch(dtype)
    out, lse = torch_backend(*batch.to_torch("cpu")[0], **batch.to_torch("cpu")[1])
    assert check((out, lse), batch).passed
    lse_dtype = "float64" if dtype == "float64" else "float32"
    wrong_out = torch.float32 if dtype != "float32" else torch.float16
    report = check((out.to(wrong_out), lse), batch)
    assert not report.passed
    assert f"out: expected dtype {dtype} (q's dtype), got {str(wrong_out)[6:]}" in report.problems
    wrong_lse = torch.float32 if dtype == "float64" else torch.float16
    report = check((out, lse.to(wrong_lse)), batch)
    assert not report.passed
    assert f"lse: expected dtype {lse_dtype} (for {dtype} q), got {str(wrong_lse)[6:]}" in report.problems
    with pytest.raises(AssertionError, match="lse: expected dtype"):
        assert_close((out, lse.to(wrong_lse)), batch)

    def wrong_out_dtype(*args, **kwargs):
        out, lse = torch_backend(*args, **kwargs)
        return out.to(wrong_out), lse

    assert not compare(wrong_out_dtype, batch, device="cpu").passed


def test_result_dtypes_follow_the_q_the_implementation_received():
    batch = a_batch("float16")
    args, kwargs = batch.to_torch("cpu", "float32")  # wider: the same values
    result = torch_backend(*args, **kwargs)
    assert not check(result, batch).passed  # torch results: q in the batch's dtype, unless told
    assert check(result, batch, q_dtype="float32").passed
    assert check(result, batch, q_dtype=torch.float32).passed
    with pytest.raises(ValueError, match="q_dtype: expected one of"):
        check(result, batch, q_dtype="float8")
    # NumPy results: the float64 arguments of batch.arguments(), or a kernel in the batch's dtype
    out, lse = batch.oracle().state
    assert check((out, lse), batch).passed
    assert check((out.astype(np.float16), lse.astype(np.float32)), batch).passed
    report = check((out.astype(np.float32), lse.astype(np.float32)), batch)
    assert "out: expected dtype float16 (q's dtype), got float32" in report.problems
    report = check((out, lse.astype(np.float32)), batch)
    assert "lse: expected dtype float64 (for float64 q), got float32" in report.problems


# ---- rows without a bound ------------------------------------------------------------------------


def test_rows_without_an_out_bound_are_not_checked_and_the_report_says_why_and_what_would_help():
    # 16 keys, scores of std 1e6 at D = 128: the scores term gamma_{D+6} A alone puts rho past
    # the out bound's limit, so no count of steps gives one
    batch = make_batch([1], [16], head_dim=128, dtype="float16", score_magnitude=1e6)
    out, lse = (x.copy() for x in batch.oracle().state)
    report = check((out.astype(np.float16), lse.astype(np.float32)), batch)
    assert report.passed and len(report.unchecked) == 2, str(report)  # neither failed nor passed in silence
    first = report.unchecked[0]
    assert first.startswith("out: no float16 error bound on 2 of 2 (query row, head) pairs (it needs N tau exp(rho) "
                            "< 1); the worst: request 0, token 0, head ")
    assert "N = 16 keys" in first and "32 steps per key (default_steps)" in first
    assert "no count of steps gives one (rho = " in first and first.endswith("smaller scores or shorter rows would")
    assert str(report).startswith("PASS where a bound exists: ") and "\n  unchecked: out: no float16" in str(report)
    # what no bound can hide is still caught: NaN and infinities
    out[0, 1, 3] = np.nan
    assert not check((out.astype(np.float16), lse.astype(np.float32)), batch).passed
    # assert_close asserts every row: it refuses to call such a batch passed, and it is no failure
    with pytest.raises(relaycore.bounds.NoBound, match=r"batch: expected an error bound on every row, got rows "
                                                       r"without one \(the rest passed\):\nPASS where a bound exists"):
        assert_close(batch.oracle().state, batch)
    with pytest.raises(ValueError, match=r"batch: expected an error bound on every row, got rows without one: out: "):
        bounds_for(batch)


def test_where_only_the_lse_bound_is_missing_out_is_still_checked():
    # rho past 2 at the default count of steps: an out bound, no lse bound; the kernel's count
    # of steps would give one, and the report says so
    batch = make_batch([1, 1], [5000, 8], num_q_heads=1, head_dim=16, dtype="bfloat16", score_magnitude=2000)
    out, lse = (torch.from_numpy(x.copy()) for x in batch.oracle().state)
    result = (out.to(torch.bfloat16), lse.float())
    report = check(result, batch)
    assert report.passed and len(report.unchecked) == 1, str(report)
    assert re.match(r"lse: no bfloat16 error bound on 1 of 2 \(query row, head\) pairs \(it is proved for rho <= 2 "
                    r"only\); the worst: request 0, token 0, head 0: N = 5000 keys, A = \S+, 10000 steps per key "
                    r"\(default_steps\), rho = \S+ > 2; the kernel's counted steps \(steps=, blocked_steps\) would: "
                    r"on that row a bound exists up to \d+ steps per key$", report.unchecked[0]), report.unchecked
    # out is held to its bound on every row (on the long row a loose one: rho is past 2), the lse
    # on the row that has one
    for row, error in ((0, 1e30), (1, 10 * bounds_for(batch, steps=3).out[1, 0, 5])):
        wrong = out.clone()
        wrong[row, 0, 5] += error
        failed = check((wrong.to(torch.bfloat16), lse.float()), batch)
        assert not failed.passed and failed.out_worst.request == row
    shifted = lse.clone()
    shifted[1, 0] += 0.1
    failed = check((out.to(torch.bfloat16), shifted.float()), batch)
    assert not failed.passed and failed.lse_worst.request == 1 and failed.unchecked == report.unchecked
    # the counted steps of a kernel give every row a bound
    assert check(result, batch, steps=3).unchecked == ()
    # given steps that still leave a row without one, the remedy is fewer of them, as many as
    # the default count's remedy said
    most = re.search(r"up to (\d+) steps per key", report.unchecked[0]).group(1)
    fewer = check(result, batch, steps=5000).unchecked[0]
    assert "5000 steps per key, rho = " in fewer and fewer.endswith(f"; fewer steps per key would: on that row a bound "
                                                                    f"exists up to {most} steps per key")
    assert check(result, batch, steps=int(most)).unchecked == ()
    assert check(result, batch, steps=int(most) + 1).unchecked != ()


def test_which_rows_have_a_bound_is_relaycore_bounds_own_answer(monkeypatch):
    """A refusal ``relaycore.bounds`` gives for some rows only, for whatever reason, leaves the
    other rows checked against their bounds, and the report quotes it."""
    batch = a_batch()
    keys = batch.oracle().stats.num_keys
    refused = keys == np.unique(keys[keys > 0])[1]  # the rows of one length: some rows, not all
    true_bound = relaycore.bounds.out_bound

    def out_bound(ref_out, value_abs, num_keys, *args, **kwargs):
        if np.any(np.asarray(num_keys) == keys[refused][0]):
            raise relaycore.bounds.NoBound("value_abs: expected values that cannot overflow, got some")
        return true_bound(ref_out, value_abs, num_keys, *args, **kwargs)

    expected = bounds_for(batch).out
    monkeypatch.setattr(relaycore.bounds, "out_bound", out_bound)
    out, lse = batch.oracle().state
    report = check((out.astype(np.float32), lse.astype(np.float32)), batch)
    assert report.passed and len(report.unchecked) == 1, str(report)
    assert report.unchecked[0].startswith(f"out: no float32 error bound on {int(refused.sum())} of {keys.size} (query "
                                          f"row, head) pairs (relaycore.bounds: value_abs: expected values that "
                                          f"cannot overflow, got some); the worst: ")
    assert report.unchecked[0].endswith("; no count of steps gives one (at 1 step per key, relaycore.bounds: "
                                        "value_abs: expected values that cannot overflow, got some)")
    wrong = out.astype(np.float32)
    wrong[~refused] += 10 * expected[~refused]  # every row with a bound is held to it
    failed = check((wrong, lse.astype(np.float32)), batch)
    assert not failed.passed and 9 < failed.out_ratio < 11


def test_scores_of_a_given_magnitude_whatever_the_scale():
    # score_magnitude is the standard deviation of softmax_scale * q . k, for any scale and D
    for scale, d in ((None, 128), (0.5, 128), (0.05, 16), (2.0, 8)):
        batch = make_batch([64], [256], num_q_heads=1, head_dim=d, dtype="float64", softmax_scale=scale,
                           score_magnitude=100.0)
        effective = 1 / np.sqrt(d) if scale is None else scale
        scores = effective * np.einsum("qd,kd->qk", batch.q[:, 0], batch.kv.k[:, 0])
        assert 90 < scores.std() < 110, (scale, d, scores.std())


@pytest.mark.parametrize("space", ["default", "cpu", "cuda"])
def test_the_default_spaces_draw_no_row_without_a_bound(space):
    """The largest row each space draws (every prefix level at its longest, the longest own KV,
    D and scores at their largest) keeps rho under half the lse bound's limit in every dtype:
    verify's and the strategies' draws are all checked."""
    from relaycore.verify import SPACES

    box = relaycore.testing.BatchSpace(**({} if space == "default" else SPACES[space]))
    magnitude = max((m for m in box.score_magnitudes if m is not None), default=None)
    for dtype in LOW:
        for scale in box.softmax_scales:
            batch = make_batch([1], [box.max_kv_len], [[box.max_prefix_len]] * box.max_levels, [[0]] * box.max_levels,
                               num_q_heads=max(box.kv_heads) * max(box.group_sizes), num_kv_heads=max(box.kv_heads),
                               head_dim=max(box.head_dims), dtype=dtype, softmax_scale=scale,
                               score_magnitude=magnitude, seed=1)
            stats = batch.oracle().stats
            rho = relaycore.bounds.weight_perturbation(stats.num_keys, stats.score_abs, batch.head_dim,
                                                       relaycore.bounds.precision(dtype))
            assert rho.max() < relaycore.bounds.LSE_RHO_MAX / 2, (space, dtype, scale, rho.max())
            assert check(batch.oracle().state, batch, q_dtype="float64").unchecked == ()


# ---- what the implementation receives --------------------------------------------------------


@pytest.mark.parametrize("device", [None, "cpu"])
@pytest.mark.parametrize("dtype", ["float16", "float64"])
@pytest.mark.parametrize("kernel, argument", [
    (flawed_kernels.doubles_q_in_place, "q"),
    (flawed_kernels.zeroes_values_in_place, "kv.v_cache"),
    (flawed_kernels.writes_a_prefix_id, "prefixes[0].prefix_ids"),
])
def test_a_kernel_that_writes_into_its_inputs_fails_naming_the_argument(kernel, argument, dtype, device):
    batch = a_batch(dtype)  # paged: kv.v_cache
    oracle = compare(relaycore.relay_attention, batch, device=device)
    assert oracle.passed and oracle.problems == ()
    report = compare(kernel, batch, device=device)
    assert not report.passed, str(report)
    assert report.problems[0].startswith(f"{argument}: expected unchanged by the call (attention must not write into "
                                         f"its inputs), got "), report.problems
    assert str(report).startswith(f"FAIL: {argument}: expected unchanged by the call")
    # the oracle saw the batch's own values: what the kernel computed from the ones it wrote is wrong
    if argument != "prefixes[0].prefix_ids":
        assert report.out_ratio > 1
    # and the batch is as it was: the next implementation gets the same problem
    assert compare(relaycore.relay_attention, batch, device=device).out_ratio == oracle.out_ratio


def test_a_kernel_that_resizes_an_input_fails_naming_it():
    def shrinks_q(q, cu_seqlens_q, kv, prefixes, **kwargs):
        result = relaycore.relay_attention(q, cu_seqlens_q, kv, prefixes, **kwargs)
        q.resize((1,) + q.shape[1:], refcheck=False)
        return result

    batch = a_batch("float64")
    report = compare(shrinks_q, batch)
    assert not report.passed and report.problems == (
        f"q: expected unchanged by the call (attention must not write into its inputs), got its shape changed from "
        f"{batch.q.shape} to {(1,) + batch.q.shape[1:]}",)


def test_arguments_and_tensors_are_copies_of_the_batch():
    batch = a_batch("float64")
    before = batch.q.copy()
    (q, cu, kv, prefixes), _ = batch.arguments()
    (tq, tcu, tkv, tprefixes), _ = batch.to_torch("cpu")  # float64 on the CPU: .to() would share memory
    for given in (q, kv.k_cache, prefixes[0].v, cu, kv.block_table):
        given[...] = 0
    for given in (tq, tkv.v_cache, tprefixes[1].k, tcu):
        given.zero_()
    assert np.array_equal(batch.q, before) and np.array_equal(batch.arguments()[0][0], before)
    assert not any(np.shares_memory(a, b) for a, b in zip(batch.arguments()[0][2], batch.kv))


def test_a_torch_kernel_on_the_numpy_arguments_may_answer_in_float64():
    # compare(fn, batch) hands fn float64 arrays: a result in float64 (torch or NumPy) is in
    # its inputs' format; one in the batch's dtype is that of a kernel computing in it
    batch = a_batch("float16")
    report = compare(flawed_kernels.torch_on_numpy, batch)
    assert report.passed, str(report)

    def in_float32(*args, **kwargs):
        out, lse = flawed_kernels.torch_on_numpy(*args, **kwargs)
        return out.float(), lse.float()

    assert "out: expected dtype float16 (q's dtype), got float32" in compare(in_float32, batch).problems


def test_wrong_shapes_fail_with_a_sentence():
    batch = a_batch()
    out, lse = batch.oracle().state
    report = check((out[:-1], lse), batch)
    assert not report.passed
    assert report.problems == (f"out: expected shape {out.shape}, got {out[:-1].shape}",)


def test_a_failure_report_leads_with_its_reason_and_hints_at_the_usual_lse_mistakes():
    batch = a_batch()
    out, lse = batch.oracle().state
    wrong_dtype = str(check((out.astype(np.float32), lse.astype(np.float32)), batch, q_dtype="float16"))
    assert wrong_dtype.startswith("FAIL: out: expected dtype float16 (q's dtype), got float32\n  worst error ")
    transposed = str(check((out, lse.T), batch))
    assert transposed.startswith(f"FAIL: lse: expected shape {lse.shape}, got {lse.T.shape} (its transpose: "
                                 "relaycore's lse is [total_q, Hq])")
    assert check((out, lse), batch).hints == ()
    swapped = check((lse, out), batch)  # (lse, out): FlashAttention's order in some APIs, not relaycore's
    assert not swapped.passed and swapped.hints == (
        "the result looks like (lse, out): relaycore's result is (out, lse), out first",), str(swapped)
    for factor, form in ((LOG2E, "in base 2 (log2 of the sum of exp)"), (1 / LOG2E, "in base 2 read as natural log")):
        report = check((out, lse * factor), batch)
        assert not report.passed and report.hints == (
            f"lse looks to be {form}: relaycore's lse is natural log; convert with ln 2 = 0.693147",)
        assert "\n  hint: lse looks to be" in str(report)
    shifted = check((out, lse + 1.0), batch)  # wrong, but not by a change of base: no hint
    assert not shifted.passed and shifted.hints == ()
    # every key counted twice adds ln 2 to one decode row's lse: an offset, not a base, even
    # where one row cannot tell them apart
    one = make_batch([1], [6], [[4]], [[0]], num_q_heads=1, num_kv_heads=1, head_dim=16, seed=4)
    out1, lse1 = one.oracle().state
    doubled = check((out1, lse1 + np.log(2.0)), one)
    assert not doubled.passed and doubled.hints == ()


@pytest.mark.parametrize("make, got", [
    (lambda out, lse: out, r"one ndarray of shape \(\d+, \d+, \d+\)"),
    (lambda out, lse: (out,), "a tuple of 1: ndarray"),
    (lambda out, lse: {"out": out, "lse": lse}, "dict"),
    (lambda out, lse: (out, lse, lse), "a tuple of 3: ndarray, ndarray, ndarray"),
    (lambda out, lse: [1.0, 2.0], "a list of 2: float, float"),
])
def test_a_result_that_is_not_a_pair_is_refused_with_what_it_was(make, got):
    batch = a_batch()
    out, lse = batch.oracle().state
    with pytest.raises(TypeError, match=r"result: expected a pair \(out, lse\) of arrays or tensors, got " + got):
        check(make(out, lse), batch)


def test_a_result_that_holds_no_values_is_refused_by_name():
    """A meta tensor holds none, a sparse tensor or a masked array not all of them as an
    array: each is refused naming ``out`` or ``lse``, not left to torch or NumPy to fail."""
    batch = a_batch()
    out, lse = (torch.from_numpy(x) for x in batch.oracle().state)
    for check_or_assert in (check, assert_close):
        with pytest.raises(ValueError, match="^out: expected a tensor that holds values, got a tensor on the meta "
                                             "device$"):
            check_or_assert((out.to("meta"), lse.to("meta")), batch)
        with pytest.raises(ValueError, match="^lse: expected a tensor that holds values, got a tensor on the meta "
                                             "device$"):
            check_or_assert((out, lse.to("meta")), batch)
        with pytest.raises(TypeError, match=r"^out: expected a dense \(torch.strided\) tensor, got layout "
                                            r"torch.sparse_coo; pass .to_dense\(\)$"):
            check_or_assert((out.to_sparse(), lse), batch)
        with pytest.raises(TypeError, match=r"^lse: expected a plain NumPy array, got a masked array"):
            check_or_assert((out.numpy(), np.ma.masked_array(lse.numpy(), mask=True)), batch)


def test_compare_refuses_a_function_it_cannot_call():
    with pytest.raises(TypeError, match="^fn: expected a callable with relaycore.relay_attention's signature, got "
                                        "int$"):
        compare(3, a_batch())


def test_bounds_for_refuses_a_dtype_that_is_not_a_name():
    with pytest.raises(TypeError, match=r"^dtype: expected a format's name, one of \['bfloat16', 'float16', "
                                        r"'float32', 'float64'\], got list \['x'\]$"):
        relaycore.testing.bounds_for(a_batch(), ["x"])


def test_oracle_and_kit_need_numpy_alone():
    code = (
        "import sys; sys.modules['torch'] = sys.modules['hypothesis'] = sys.modules['triton'] = None\n"
        "import numpy as np, relaycore, relaycore.reference, relaycore.testing as kit\n"
        "batch = kit.random_batch(np.random.default_rng(1), dtypes=('bfloat16',))\n"
        "args, kwargs = batch.arguments()\n"
        "print(kit.assert_close(relaycore.relay_attention(*args, **kwargs), batch).passed)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stdout.strip() == "True", run.stderr


# ---- batches ----------------------------------------------------------------------------------


@given(batches(dtypes=("float16", "bfloat16", "float32"), layouts=("paged",)))
def test_drawn_batches_are_valid_and_exact_in_their_dtype(batch):
    args, kwargs = batch.arguments()
    validate(*args, **kwargs)
    for x in (batch.q, batch.kv.k_cache, batch.kv.v_cache, *(p.k for p in batch.prefixes)):
        assert np.array_equal(round_to(x, batch.dtype), x, equal_nan=True)  # a paged cache's unread slots are NaN
    targs, _ = batch.to_torch("cpu")
    assert targs[0].dtype == TORCH_DTYPES[batch.dtype]
    assert np.array_equal(targs[0].double().numpy(), batch.q)  # the dtype carries the values unchanged
    assert targs[1].dtype == torch.int32


@pytest.mark.parametrize("batch_dtype, carriers", [
    ("float16", ("float16", "float32", "float64")),
    ("bfloat16", ("bfloat16", "float32", "float64")),
    ("float32", ("float32", "float64")),
    ("float64", ("float64",)),
])
def test_to_torch_takes_only_dtypes_that_carry_the_values_unchanged(batch_dtype, carriers):
    # |values| up to ~1e5: beyond float16's range, so bfloat16 -> float16 would change them too
    # (float16 holds no such values: make_batch refuses draws that round to inf)
    magnitude = None if batch_dtype == "float16" else 1e10
    batch = make_batch([2, 1], [3, 2], [[4]], [[0, 0]], dtype=batch_dtype, score_magnitude=magnitude, seed=3)
    for dtype in carriers:
        for given in (dtype, TORCH_DTYPES[dtype]):
            (q, _, _, prefixes), _ = batch.to_torch("cpu", given)
            assert q.dtype == TORCH_DTYPES[dtype] and np.array_equal(q.double().numpy(), batch.q)
            assert np.array_equal(prefixes[0].k.double().numpy(), batch.prefixes[0].k)
    for dtype in set(TORCH_DTYPES) - set(carriers):
        assert not np.array_equal(round_to(batch.q, dtype), batch.q)  # it would change what the oracle saw
        for given in (dtype, TORCH_DTYPES[dtype]):
            expected = f"dtype: expected one of {list(carriers)} (formats that hold every {batch_dtype} value unchanged), got {dtype}"
            with pytest.raises(ValueError, match=re.escape(expected)):
                batch.to_torch("cpu", given)
    with pytest.raises(ValueError, match=r"dtype: expected one of .*, got torch.int32"):
        batch.to_torch("cpu", torch.int32)


def test_make_batch_recipe_rebuilds_the_same_batch_and_describe_shows_it():
    batch = a_batch("bfloat16")
    again = make_batch(**batch.recipe)
    assert np.array_equal(again.q, batch.q) and np.array_equal(again.kv.k_cache, batch.kv.k_cache, equal_nan=True)
    assert np.array_equal(again.kv.block_table, batch.kv.block_table)
    text = batch.describe()
    for fragment in ("B=3", "Hq=4, Hkv=2 (GQA, 2 query heads per KV head)", "D=16", "bfloat16", "block_size 3",
                     "q_lens  [2, 3, 1]", "kv_lens [4, 3, 5]", "prefix level 1: 1 prefixes of lengths [2]; ids per request [0, -1, 0]",
                     "rebuild: relaycore.testing.make_batch(q_lens=[2, 3, 1]"):
        assert fragment in text, text


def test_a_value_offset_moves_the_values_alone_and_prints_in_the_call_that_rebuilds_the_batch():
    plain = make_batch([2, 1], [5, 3], [[4]], [[0, 0]], dtype="bfloat16", block_size=2, seed=3)
    assert "value_offset" not in plain.recipe  # the default: the batches and calls printed before it existed
    shifted = make_batch([2, 1], [5, 3], [[4]], [[0, 0]], dtype="bfloat16", block_size=2, seed=3, value_offset=8)
    assert np.array_equal(shifted.q, plain.q) and np.array_equal(shifted.kv.k_cache, plain.kv.k_cache, equal_nan=True)
    read = ~np.isnan(plain.kv.v_cache)
    assert np.allclose(shifted.kv.v_cache[read] - 8, plain.kv.v_cache[read], atol=2.0**-4)  # one bf16 ulp at 8
    assert np.all(round_to(shifted.prefixes[0].v, "bfloat16") == shifted.prefixes[0].v)
    assert repr(shifted).endswith("score_magnitude=None, seed=3, value_offset=8.0)")
    rebuilt = eval(repr(shifted), {"make_batch": make_batch})
    assert np.array_equal(rebuilt.kv.v_cache, shifted.kv.v_cache, equal_nan=True)
    with pytest.raises(ValueError, match=r"value_offset: expected a finite float, got inf"):
        make_batch([1], [2], value_offset=float("inf"))
    with pytest.raises(ValueError, match=r"value_offsets: expected finite numbers, got \['8'\]"):
        random_batch(0, value_offsets=("8",))


def test_a_value_scale_scales_the_values_alone_down_to_subnormals_and_prints_in_the_call_that_rebuilds_the_batch():
    plain = make_batch([2, 1], [5, 3], [[4]], [[0, 0]], dtype="float16", block_size=2, seed=3, value_offset=2)
    assert "value_scale" not in plain.recipe  # the default: the batches and calls printed before it existed
    tiny = make_batch([2, 1], [5, 3], [[4]], [[0, 0]], dtype="float16", block_size=2, seed=3, value_offset=2,
                      value_scale=2.0**-20)
    assert np.array_equal(tiny.q, plain.q) and np.array_equal(tiny.kv.k_cache, plain.kv.k_cache, equal_nan=True)
    read = ~np.isnan(plain.kv.v_cache)
    values = np.concatenate([tiny.kv.v_cache[read], tiny.prefixes[0].v.ravel()])
    assert np.all(values / 2.0**-24 == np.round(values / 2.0**-24))  # exact in fp16: multiples of its least subnormal
    assert np.mean(np.abs(values) < 2.0**-14) > 0.9  # subnormals, almost all
    assert np.all(np.abs(tiny.kv.v_cache[read] - plain.kv.v_cache[read] * 2.0**-20) <= 2.0**-25)  # one rounding
    assert repr(tiny).endswith("seed=3, value_offset=2.0, value_scale=9.5367431640625e-07)")
    rebuilt = eval(repr(tiny), {"make_batch": make_batch})
    assert np.array_equal(rebuilt.kv.v_cache, tiny.kv.v_cache, equal_nan=True)
    with pytest.raises(ValueError, match=r"value_scale: expected a finite positive float, got 0"):
        make_batch([1], [2], value_scale=0)
    with pytest.raises(ValueError, match=r"value_scale: expected v \(value_offset plus a standard normal, times "
                                         r"value_scale\) to round to finite float16 values"):
        make_batch([1], [2], dtype="float16", value_scale=2.0**20)
    with pytest.raises(ValueError, match=r"value_scales: expected finite positive numbers, got \[-1\]"):
        random_batch(0, value_scales=(-1,))


def test_drawn_batches_scale_their_values_only_when_asked_and_draw_everything_else_as_before():
    for seed in range(20):
        default = random_batch(seed).recipe
        assert "value_scale" not in default
        scaled = dict(random_batch(seed, value_scales=(2.0**-20,)).recipe)
        assert scaled.pop("value_scale") == 2.0**-20 and scaled == default


@pytest.mark.parametrize("dtype", ("float16", "bfloat16"))
@given(batch=st.data())
@settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_torch_backend_passes_on_values_scaled_to_subnormals(dtype, batch):
    """Outputs of a few ``2^-24`` in fp16 round absolutely (the bound's ``2 tau``); bf16 values
    scaled as far keep their relative precision."""
    batch = batch.draw(batches(dtypes=(dtype,), head_dims=(8, 16), value_scales=(2.0**-20,)))
    report = compare(torch_backend, batch, device="cpu", steps=blocked_steps(batch, WHOLE_PART, merge="pairwise"))
    assert report.passed, str(report)


def test_drawn_batches_offset_their_values_in_a_share_of_cases_and_draw_the_rest_as_before():
    from hypothesis import find

    offsets = []
    for seed in range(60):
        recipe = dict(random_batch(seed).recipe)
        offsets.append(recipe.pop("value_offset", 0.0))
        assert recipe == random_batch(seed, value_offsets=(0.0,)).recipe
    assert set(offsets) == {0.0, 8.0} and 10 <= offsets.count(8.0) <= 30
    assert find(batches(), lambda batch: batch.recipe.get("value_offset") == 8.0).kv_lens.size >= 1


def test_an_accumulator_kept_in_low_precision_fails_on_values_away_from_zero():
    """FlashAttention's loop with its output accumulator rounded to bf16 after every block of 16
    keys: on long rows its error is a share of the output, which zero-mean values keep near 0
    and values offset by 8 do not. Its correct twin, the torch backend and the reference pass
    on both."""
    for offset in (0.0, 8.0):
        batch = make_batch([1, 1], [2000, 1500], num_q_heads=2, head_dim=64, dtype="bfloat16", value_offset=offset)
        steps = blocked_steps(batch, flawed_kernels.BLOCK_N, split=False)
        flawed = compare(flawed_kernels.accumulator_rounded, batch, device="cpu", steps=steps)
        assert flawed.passed == (offset == 0), str(flawed)
        twin = compare(flawed_kernels.online_softmax, batch, device="cpu", steps=steps)
        assert twin.passed and twin.out_ratio < 0.5, str(twin)
        backend = compare(torch_backend, batch, device="cpu", steps=blocked_steps(batch, WHOLE_PART, merge="pairwise"))
        assert backend.passed and backend.unchecked == (), str(backend)
        reference = compare(relaycore.relay_attention, batch)
        assert reference.out_ratio == 0 and reference.lse_ratio == 0
    assert flawed.out_ratio > 1.2


def subnormal_values(batch, rng: np.random.Generator):
    """``batch`` with every value (own and prefix) replaced by a multiple of ``2^-24`` from 1 to
    39: fp16 subnormals, exact in fp16, so that every stored mean rounds absolutely."""
    tiny = lambda v: rng.integers(1, 40, size=v.shape) * 2.0**-24  # noqa: E731
    return dataclasses.replace(batch, kv=batch.kv._replace(v=tiny(batch.kv.v)),
                               prefixes=tuple(level._replace(v=tiny(level.v)) for level in batch.prefixes), recipe=None)


def test_a_cascade_that_stores_its_levels_in_fp16_passes_with_stored_merges_which_its_subnormal_outputs_need():
    """A cascade that stores each segment's output in fp16 before merging (FlashInfer's cascade
    wrapper does) rounds each stored output once more (``proofs/error_bound.py``, Lemma 8). With
    values that are fp16 subnormals those roundings are absolute and add up over three levels
    past the bound without ``stored``; ``stored_merges`` prices them. The torch backend, which
    merges in fp32, passes the same batch without it."""
    rng = np.random.default_rng(0)
    batch = make_batch([4, 3, 5], [6, 4, 7], prefix_lens=[[5, 6], [7], [3, 4]],
                       prefix_ids=[[0, 1, 0], [0, 0, -1], [1, 0, 1]], num_q_heads=4, num_kv_heads=2, head_dim=16,
                       dtype="float16", score_magnitude=0.5, seed=0)
    merges = stored_merges(batch)
    assert merges[:, 0].tolist() == [3] * 7 + [2] * 5  # the levels each request reads
    steps = blocked_steps(batch, WHOLE_PART, merge="pairwise")
    report = compare(flawed_kernels.stored_cascade, batch, device="cpu", steps=steps, stored=merges)
    assert report.passed and report.unchecked == (), str(report)
    tiny = subnormal_values(batch, rng)
    without = compare(flawed_kernels.stored_cascade, tiny, device="cpu", steps=steps)
    assert not without.passed and without.out_ratio > 1.04, str(without)
    assert without.lse_ratio <= 1  # the lse never reads a stored output
    priced = compare(flawed_kernels.stored_cascade, tiny, device="cpu", steps=steps, stored=merges)
    assert priced.passed and priced.out_ratio < 0.6, str(priced)
    backend = compare(torch_backend, tiny, device="cpu", steps=steps)
    assert backend.passed, str(backend)


@pytest.mark.parametrize("dtype", ("float16", "bfloat16"))
@given(batch=st.data())
@settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_a_stored_cascade_passes_at_its_stored_merges(dtype, batch):
    batch = batch.draw(batches(dtypes=(dtype,), score_magnitudes=(None, 100.0), head_dims=(8, 16)))
    report = compare(flawed_kernels.stored_cascade, batch, device="cpu",
                     steps=blocked_steps(batch, WHOLE_PART, merge="pairwise"), stored=stored_merges(batch))
    assert report.passed, str(report)


def test_a_negative_or_misshaped_stored_is_refused_not_passed():
    batch = make_batch([2, 1], [5, 1], [[3]], [[0, -1]], num_q_heads=4, num_kv_heads=2, head_dim=16, dtype="float16")
    junk = (np.full((3, 4, 16), 7, np.float16), np.full((3, 4), -5, np.float32))
    with pytest.raises(ValueError, match=r"stored: expected a finite count of at least 0"):
        check(junk, batch, stored=-1)
    with pytest.raises(ValueError, match=r"stored_merge: expected one of \('pairwise', 'running'\), got 'fold'"):
        check(junk, batch, stored=1, stored_merge="fold")
    with pytest.raises(ValueError, match=r"merge: expected 'pairwise' or 'running' .*, got 'fold'"):
        stored_merges(batch, merge="fold")
    with pytest.raises(ValueError, match=r"levels: expected 1 with merge='pairwise' .*, got 2"):
        stored_merges(batch, levels=2)
    with pytest.raises(ValueError, match=r"stored: expected a number, or an array of 2 axes that broadcasts to the "
                                         r"rows' shape \(3, 4\), got shape \(2, 1\)"):
        check(junk, batch, stored=stored_merges(make_batch([2], [5])))
    with pytest.raises(TypeError, match="batch: expected a relaycore.testing.Batch, got str"):
        stored_merges("batch")


def test_random_batch_is_a_function_of_its_seed():
    a = random_batch(np.random.default_rng(5), dtypes=("float16",))
    b = random_batch(np.random.default_rng(5), dtypes=("float16",))
    assert a.recipe == b.recipe and np.array_equal(a.q, b.q)


def test_paged_batches_hide_wrong_values_past_each_request():
    batch = make_batch([1], [3], block_size=2, seed=4)
    table = batch.kv.block_table
    assert table.shape[1] >= 2 and batch.kv.k_cache.shape[0] >= 3  # a spare block exists
    last = batch.kv.k_cache[table[0, 1], 1]  # slot past kv_len
    assert np.any(last != 0)


def test_space_rejects_nonsense():
    with pytest.raises(ValueError, match="max_kv_len: expected at least max_q_len = 8, got 4"):
        random_batch(np.random.default_rng(0), max_q_len=8, max_kv_len=4)
    with pytest.raises(ValueError, match="dtypes: expected a non-empty subset"):
        random_batch(np.random.default_rng(0), dtypes=("float8",))
    with pytest.raises(ValueError, match=r"min_batch, max_batch: expected min_batch <= max_batch, got 3 > 2"):
        random_batch(np.random.default_rng(0), min_batch=3, max_batch=2)
    with pytest.raises(ValueError, match=r"min_batch, max_batch: expected min_batch <= max_batch, got 1 > 0"):
        random_batch(np.random.default_rng(0), max_batch=0)
    with pytest.raises(ValueError, match=r"layouts: expected a non-empty subset of \['ragged', 'paged'\], got \['tiled'\]"):
        random_batch(np.random.default_rng(0), layouts=("tiled",))
    with pytest.raises(ValueError, match="head_dims: expected at least one choice, got none"):
        random_batch(np.random.default_rng(0), head_dims=())
    with pytest.raises(ValueError, match=r"block_sizes: expected positive ints, got \[0\]"):
        random_batch(np.random.default_rng(0), layouts=("paged",), block_sizes=(0,))
    for field, value, message in (
            ("max_levels", -1, r"max_levels: expected an int >= 0, got -1"),
            ("max_prefix_len", 2.5, r"max_prefix_len: expected an int >= 0, got 2.5"),
            ("head_dims", (0, 8), r"head_dims: expected positive ints, got \[0, 8\]"),
            ("block_sizes", (16.5,), r"block_sizes: expected positive ints, got \[16.5\]"),
            ("score_magnitudes", (None, -1.0), r"score_magnitudes: expected None or finite positive numbers"),
            ("softmax_scales", ("a",), r"softmax_scales: expected None or finite positive numbers, got \['a'\]"),
            ("causal", (1,), r"causal: expected bools, got \[1\]")):
        with pytest.raises(ValueError, match=message):
            random_batch(0, **{field: value})
    with pytest.raises(ValueError, match=r"rng: expected a seed >= 0, got -1"):
        random_batch(-1)
    with pytest.raises(ValueError, match=r"min_q_len, max_q_len: expected min_q_len <= max_q_len, got 3 > 2"):
        random_batch(np.random.default_rng(0), min_q_len=3, max_q_len=2)
    for field, value in (("head_dims", 8), ("dtypes", "float16"), ("causal", True)):
        with pytest.raises(TypeError, match=rf"{field}: expected a tuple of choices, e\.g\. .*, got {value!r}"):
            random_batch(0, **{field: value})
    with pytest.raises(TypeError, match=r"rng: expected a numpy.random.Generator or an int seed, got float"):
        random_batch(0.5)


def test_random_batch_takes_a_seed_for_its_generator():
    assert random_batch(11).recipe == random_batch(np.random.default_rng(11)).recipe


def test_min_q_len_draws_decode_batches_and_leaves_the_default_draws_alone():
    for seed in range(40):
        batch = random_batch(np.random.default_rng(seed), min_q_len=1, max_q_len=1)
        assert batch.q_lens.tolist() == [1] * batch.batch_size
        longer = random_batch(np.random.default_rng(seed), min_q_len=2)
        assert longer.q_lens.min() >= 2
    # the default (min_q_len 0) draws what it drew before min_q_len existed: seeds stay reproducible
    drawn = [random_batch(np.random.default_rng(seed)).recipe for seed in range(3)]
    assert [r["q_lens"] for r in drawn] == [[0, 0, 0, 4], [0, 1], [0, 3, 0, 5]]
    assert [r["seed"] for r in drawn] == [266896304, 1799343698, 715083808]


def test_a_batch_prints_as_the_call_that_rebuilds_it():
    batch = make_batch([2, 1], [5, 1], [[3]], [[0, -1]], num_q_heads=4, num_kv_heads=2, head_dim=16, dtype="float16",
                       block_size=2, seed=3)
    text = repr(batch)
    assert text.startswith("make_batch(q_lens=[2, 1], kv_lens=[5, 1], prefix_lens=[[3]], prefix_ids=[[0, -1]], ")
    rebuilt = eval(text, {"make_batch": make_batch})
    assert all(np.array_equal(a, b, equal_nan=True) for a, b in zip(rebuilt.kv, batch.kv)) and np.array_equal(rebuilt.q, batch.q)
    # NumPy scalars in the call print as plain numbers; a batch changed since prints its sizes instead
    assert "np." not in repr(make_batch([1], [2], num_q_heads=np.int64(2), softmax_scale=np.float64(0.5)))
    changed = dataclasses.replace(batch, causal=False)
    assert repr(changed).startswith("Batch(B=2, q_lens=[2, 1], kv_lens=[5, 1], levels=1, ")
    assert "rebuild:" not in changed.describe()


def test_hypothesis_prints_a_batch_as_the_call_that_rebuilds_it():
    from hypothesis.vendor.pretty import pretty

    batch = make_batch([2, 1], [5, 1], [[3]], [[0, -1]], num_q_heads=4, num_kv_heads=2, head_dim=16)
    assert pretty(batch) == repr(batch) and pretty(batch).startswith("make_batch(q_lens=[2, 1], ")


def test_a_negative_or_misshaped_steps_is_refused_not_passed():
    """``steps`` loosens the bound: a negative count made every result pass, and another
    batch's counts were blamed on the scores."""
    batch = make_batch([2, 1], [5, 1], [[3]], [[0, -1]], num_q_heads=4, num_kv_heads=2, head_dim=16, dtype="float16")
    junk = (np.full((3, 4, 16), 7, np.float16), np.full((3, 4), -5, np.float32))
    assert not check(junk, batch).passed
    with pytest.raises(ValueError, match=r"steps: expected a finite count of at least 1"):
        check(junk, batch, steps=-1e5)
    with pytest.raises(ValueError, match=r"steps: expected a number, or an array of 2 axes that broadcasts to the "
                                         r"rows' shape \(3, 4\), got shape \(2, 1\)"):
        check(junk, batch, steps=blocked_steps(make_batch([2], [5]), 16))
    with pytest.raises(TypeError, match="batch: expected a relaycore.testing.Batch, got str"):
        check(junk, "batch")


@pytest.mark.parametrize("arguments, error, message", [
    (dict(q_lens=[-1], kv_lens=[1]), ValueError, r"q_lens: expected ints >= 0, got -1"),
    (dict(q_lens=3, kv_lens=[3]), TypeError, r"q_lens: expected a sequence of ints \(a list, tuple, range or other "
                                              r"sequence, or a 1-D NumPy array\), got int"),
    (dict(q_lens=[1.5], kv_lens=[2]), ValueError, r"q_lens: expected ints >= 0, got 1\.5"),
    (dict(num_q_heads=3, num_kv_heads=2), ValueError, r"num_q_heads: expected a multiple of num_kv_heads \(2\), got 3"),
    (dict(prefix_lens=[[3]], prefix_ids=[[1]]), ValueError,
     r"prefix_ids\[0\]: expected ids in \[-1, 1\) \(level 0 has 1 prefixes\), got 1"),
    (dict(prefix_lens=[[3]], prefix_ids=[[-2]]), ValueError, r"prefix_ids\[0\]: expected ints >= -1, got -2"),
    (dict(head_dim=0), ValueError, r"head_dim: expected an int >= 1, got 0"),
    (dict(num_kv_heads=0), ValueError, r"num_kv_heads: expected an int >= 1, got 0"),
    (dict(score_magnitude=-1), ValueError, r"score_magnitude: expected None or a finite positive float, got -1"),
    (dict(softmax_scale="x"), TypeError, r"softmax_scale: expected a float or None, got str"),
    (dict(seed=-1), ValueError, r"seed: expected an int >= 0, got -1"),
    (dict(causal="yes"), TypeError, r"causal: expected a bool, got str"),
    (dict(q_lens={0: 1}), TypeError, r"q_lens: expected a sequence of ints .*, got dict"),
    (dict(q_lens="1"), TypeError, r"q_lens: expected a sequence of ints .*, got str"),
    (dict(kv_lens=b"\x02"), TypeError, r"kv_lens: expected a sequence of ints .*, got bytes"),
    (dict(kv_lens={2}), TypeError, r"kv_lens: expected a sequence of ints .*, got set"),
    (dict(q_lens=np.ones((1, 1), int)), TypeError, r"q_lens: expected a sequence of ints .*, got an array of shape "
                                                   r"\(1, 1\)"),
    (dict(prefix_lens={0: [3]}, prefix_ids=[[0]]), TypeError, r"prefix_lens: expected one list per prefix level "
                                                             r"\(in a sequence or NumPy array\), got dict"),
    (dict(prefix_lens=[[3]], prefix_ids={(0,)}), TypeError, r"prefix_ids: expected one list per prefix level .*, "
                                                           r"got set"),
    (dict(q_lens=[np.uint64(2**63)], kv_lens=[np.uint64(2**63)]), ValueError,
     r"q_lens: expected lengths whose sum, the last offset, fits in metadata_dtype int32 \(at most 2147483647\), "
     r"got a sum of 9223372036854775808"),
    (dict(kv_lens=[2**62, 2**62], q_lens=[1, 1], metadata_dtype="int64"), ValueError,
     r"kv_lens: expected lengths whose sum, the last offset, fits in metadata_dtype int64 "
     r"\(at most 9223372036854775807\), got a sum of 9223372036854775808"),
])
def test_make_batch_names_the_argument_it_refuses(arguments, error, message):
    with pytest.raises(error, match=message):
        make_batch(**{"q_lens": [1], "kv_lens": [2], **arguments})


def test_make_batch_takes_any_sequence_in_order_as_a_list():
    """A ``range`` (or any other ``Sequence``, or a 1-D array) of lengths or ids is read as the
    list of its entries: the same recipe, the same batch."""

    def arrays(batch):
        return (batch.q, batch.cu_seqlens_q, *batch.kv, *batch.prefixes[0])

    ranged, listed = make_batch([1, 1], range(3, 5)), make_batch([1, 1], [3, 4])
    assert ranged.recipe == listed.recipe and repr(ranged) == repr(listed)
    np.testing.assert_array_equal(ranged.kv.v, listed.kv.v)
    listed = make_batch([1, 1], [3, 4], [[2, 5]], [[1, 0]], block_size=2)
    for other in (make_batch([1, 1], range(3, 5), (range(2, 6, 3),), [range(1, -1, -1)], block_size=2),
                  make_batch(np.ones(2, int), np.arange(3, 5), np.array([[2, 5]]), ([1, 0],), block_size=2)):
        assert other.recipe == listed.recipe and repr(other) == repr(listed)
        for got, want in zip(arrays(other), arrays(listed)):
            np.testing.assert_array_equal(got, want)  # NaN where the paged cache is unused, in both


def test_make_batch_refuses_values_its_dtype_cannot_hold_naming_what_drew_them():
    """A ``value_offset`` or ``score_magnitude`` whose draws round to inf in the dtype is refused
    by name, not left for the oracle to refuse as an infinite ``kv.v`` or ``q``; the limit is
    the dtype's largest finite value, so bfloat16 holds what float16 does not."""
    with pytest.raises(ValueError, match=r"^value_offset: expected v \(value_offset plus a standard normal\) to round "
                                         r"to finite float16 values \(at most 65504\), got value_offset = 1000000\.0, "
                                         r"which draws \d+\.\d+$"):
        make_batch([1], [2], value_offset=1e6, dtype="float16")
    with pytest.raises(ValueError, match=r"^score_magnitude: expected q and k \(normal, of standard deviation "
                                         r"sqrt\(score_magnitude / \(scale sqrt\(D\)\)\) = 1e\+154\) to round to "
                                         r"finite float32 values \(at most 3\.4028235e\+38\), got score_magnitude = "
                                         r"1e\+308, which draws "):
        make_batch([1], [2], score_magnitude=1e308)
    assert np.abs(make_batch([1], [2], value_offset=1e6, dtype="bfloat16").kv.v).min() > 9e5
    assert np.abs(make_batch([1], [2], value_offset=6e4, dtype="float16").kv.v).max() <= 65504


def test_int64_metadata_is_drawn_on_request_and_leaves_every_other_draw_alone():
    for seed in range(20):
        narrow = random_batch(seed, layouts=("paged",))
        either = random_batch(seed, layouts=("paged",), metadata_dtypes=("int32", "int64"))
        assert repr(either).replace(", metadata_dtype='int64'", "") == repr(narrow)
    wide = random_batch(0, layouts=("paged",), metadata_dtypes=("int64",))
    assert repr(wide).endswith("metadata_dtype='int64')") and eval(repr(wide), {"make_batch": make_batch}).recipe == wide.recipe
    metadata = [wide.cu_seqlens_q, wide.kv.block_table, wide.kv.kv_lens, *(x for p in wide.prefixes for x in p[2:])]
    assert all(x.dtype == np.int64 for x in metadata)
    (_, cu, kv, _), _ = wide.to_torch("cpu")
    assert cu.dtype == kv.block_table.dtype == kv.kv_lens.dtype == torch.int64
    assert compare(relaycore.relay_attention, wide).passed
    with pytest.raises(ValueError, match=r"metadata_dtypes: expected a non-empty subset of \['int32', 'int64'\], "
                                         r"got \['int16'\]"):
        random_batch(0, metadata_dtypes=("int16",))
    with pytest.raises(ValueError, match=r"metadata_dtype: expected 'int32' or 'int64', got 'int8'"):
        make_batch([1], [2], metadata_dtype="int8")


def test_to_torch_refuses_a_device_it_cannot_reach():
    batch = make_batch([1], [2])
    with pytest.raises(ValueError, match=r"device: expected a torch device or its name .*, got 'nodevice'"):
        batch.to_torch("nodevice")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"device: expected a device this torch has, got 'cuda'"):
            compare(lambda *a, **k: None, batch, device="cuda")


def test_make_batch_rejects_lists_that_do_not_line_up():
    with pytest.raises(ValueError, match="kv_lens: expected 2 entries, got 1"):
        make_batch([1, 1], [3])
    with pytest.raises(ValueError, match=r"prefix_ids: expected one list per level \(1 levels\), got 2"):
        make_batch([1, 1], [3, 3], [[4]], [[0, 0], [0, 0]])
    with pytest.raises(ValueError, match=r"prefix_ids\[0\]: expected 2 entries, got 3"):
        make_batch([1, 1], [3, 3], [[4]], [[0, 0, 0]])
    with pytest.raises(ValueError, match="dtype: expected one of .*, got 'float8'"):
        make_batch([1], [3], dtype="float8")
    with pytest.raises(ValueError, match="dtype: expected one of .*, got 'int8'"):
        round_to(np.zeros(2), "int8")


@pytest.mark.parametrize("block_size", [0, -2, 1.5, True])
def test_make_batch_refuses_what_no_call_could_take_when_it_builds(block_size):
    with pytest.raises(ValueError, match="q_lens: expected q_len <= kv_len for every request .*, "
                                         "got request 1 with q_len 3 > kv_len 2"):
        make_batch([1, 3], [1, 2])
    with pytest.raises(ValueError, match=r"block_size: expected None \(ragged\) or a positive int, got "):
        make_batch([1], [3], block_size=block_size)


# ---- rounding --------------------------------------------------------------------------------


def special_values(rng: np.random.Generator) -> np.ndarray:
    wide = rng.standard_normal(4000) * np.exp(rng.uniform(-110, 110, 4000))
    ties = (np.arange(1, 200) + 0.5) * 2.0**-7  # halfway between bf16 neighbours in [1, 2)
    fp16_ties = (np.arange(1, 200) + 0.5) * 2.0**-10
    subnormal = np.array([2.0**-130, 3 * 2.0**-134, 2.0**-149, 2.0**-24, 2.0**-25, 3 * 2.0**-26, 6e-8])
    huge = np.array([65504.0, 65520.0, 65519.99, 3.3e38, 3.4e38, 1e300, np.inf, -np.inf, np.nan, 0.0, -0.0])
    return np.concatenate([wide, ties, fp16_ties, subnormal, -subnormal, huge])


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
@pytest.mark.parametrize("source", ["float32", "float64"])
def test_rounding_matches_torch_casts(dtype, source, rng):
    with np.errstate(over="ignore"):
        x = special_values(rng).astype(source)
        expected = torch.from_numpy(x).to(TORCH_DTYPES[dtype]).double().numpy()
    got = round_to(x, dtype)
    assert np.array_equal(got, expected, equal_nan=True)
    number = ~np.isnan(expected)
    assert np.array_equal(np.signbit(got[number]), np.signbit(expected[number]))  # -0 stays -0


def test_check_reads_a_result_with_the_negative_bit_as_its_values():
    batch = make_batch([1, 2], [3, 4], [[2]], [[0, 0]], head_dim=16, dtype="float64")
    out, lse = (torch.from_numpy(x) for x in batch.oracle().state)
    assert check((torch._neg_view(-out), torch._neg_view(-lse)), batch).passed


# ---- a downstream trial: reports under pytest, hints, what a function receives ------------------


GUIDE = Path(__file__).resolve().parents[1] / "docs" / "guide" / "testing.md"


def test_the_guide_says_how_to_install_relaycore_which_is_not_on_pypi():
    text = GUIDE.read_text()
    assert "pip install relaycore`" not in text and "pip install relaycore;" not in text  # a name anyone could take
    assert 'pip install "/path/to/relaycore[testing]"' in text
    assert re.search(r'pip install "relaycore\[testing\] @ git\+\S+"', text)
    assert "NumPy alone" in text


def test_a_report_has_no_truth_value():
    """``assert report`` passed every report, failed ones too: it raises, as NumPy's arrays do."""
    batch = a_batch()
    out, lse = batch.oracle().state
    failed = check((out, lse + 1.0), batch)
    for report in (failed, check((out, lse), batch)):
        with pytest.raises(TypeError, match=r"a Report has no truth value .*: use report\.passed"):
            bool(report)
        with pytest.raises(TypeError, match="report.passed"):
            assert report  # noqa: PT017 (the pattern refused)
    assert not failed.passed


def test_assert_close_leaves_its_own_frame_out_of_pytest_tracebacks():
    batch = a_batch()
    out, lse = batch.oracle().state
    with pytest.raises(AssertionError) as failure:
        assert_close((out, lse + 1.0), batch)
    shown = failure.traceback.filter(failure)
    assert [entry.frame.code.name for entry in shown] == ["test_assert_close_leaves_its_own_frame_out_of_pytest_"
                                                          "tracebacks"]


def test_the_guide_and_the_docstrings_assert_a_report_as_its_text():
    """``assert report.passed, report`` shows pytest's repr of the dataclass, cut at 240
    characters: the readable report is ``str(report)``."""
    sources = {GUIDE: GUIDE.read_text()}
    sources.update((path, path.read_text()) for path in (Path(relaycore.__file__).parent / "testing").glob("*.py"))
    sources[Path(relaycore.__file__).parent / "verify.py"] = (Path(relaycore.__file__).parent / "verify.py").read_text()
    bare = [f"{path.name}: {m.group(0)}" for path, text in sources.items()
            for m in re.finditer(r"assert (\w+)\.passed, \1\b(?![.\w(])", text)]
    assert bare == []
    assert "str(report)" in GUIDE.read_text() and "assert report.passed, str(report)" in batches.__doc__


def reads_whole_pages(q, cu_seqlens_q, kv, prefixes, *, causal, softmax_scale):
    """Decode over a paged cache, no prefixes: every slot of a request's pages is read, the
    scores past ``kv_len`` masked to a weight of 0, which leaves ``0 * NaN`` in ``out``."""
    out, lse = np.zeros(q.shape), np.zeros(q.shape[:2])
    for b in range(len(cu_seqlens_q) - 1):
        pages = kv.block_table[b, :-(-int(kv.kv_lens[b]) // kv.k_cache.shape[1])]
        k, v = (x[pages].reshape(-1, *x.shape[2:]) for x in (kv.k_cache, kv.v_cache))
        scores = np.einsum("hd,khd->hk", q[b], np.nan_to_num(k)) * (softmax_scale or q.shape[-1] ** -0.5)
        scores[:, int(kv.kv_lens[b]):] = -np.inf
        lse[b] = np.log(np.exp(scores - scores.max(-1, keepdims=True)).sum(-1)) + scores.max(-1)
        out[b] = np.einsum("hk,khd->hd", np.exp(scores - lse[b][:, None]), v)
    return out, lse


def test_nan_from_a_paged_batch_comes_with_a_hint_that_they_were_planted():
    batch = make_batch([1, 1], [3, 5], num_q_heads=2, num_kv_heads=2, head_dim=8, dtype="float64", block_size=4)
    report = compare(reads_whole_pages, batch)
    assert not report.passed and any(p.startswith("out: ") and " NaN, the first at request 0" in p
                                     for p in report.problems), str(report)
    planted = [h for h in report.hints if "unused cache slots hold NaN on purpose" in h]
    assert len(planted) == 1 and "past a request's kv_len" in planted[0] and "even multiplied by 0" in planted[0]
    assert "\n  hint: " in str(report)
    # a ragged batch has no planted NaN: no such hint; nor has a paged result without NaN
    ragged = make_batch([1, 1], [3, 5], num_q_heads=2, num_kv_heads=2, head_dim=8, dtype="float64")
    out, lse = ragged.oracle().state
    out = out.copy()
    out[0, 0, 0] = np.nan
    assert check((out, lse), ragged).hints == ()
    assert check(tuple(x + 1.0 for x in batch.oracle().state), batch).hints == ()


def test_nan_only_in_requests_that_read_an_empty_segment_comes_with_the_empty_state():
    """A split kernel that takes a softmax over a segment with no key gets 0/0 = NaN there: the
    report says that those requests read an empty segment (id -1, a prefix of length 0) and what
    the empty state is; NaN elsewhere gets no such hint."""
    batch = make_batch([1, 1, 1], [2, 2, 2], prefix_lens=[[3, 0]], prefix_ids=[[0, -1, 1]], num_q_heads=2,
                       num_kv_heads=1, head_dim=8, dtype="float64")
    out, lse = (x.copy() for x in batch.oracle().state)
    out[1:3] = np.nan  # requests 1 (id -1) and 2 (prefix 1, of length 0)
    report = check((out, lse), batch)
    assert not report.passed and report.hints == (
        "every row with NaN is in a request that reads an empty segment (request 1: level 0 id -1; request 2: level 0 "
        "prefix 1 of length 0): a segment with no key is the state (out = 0, lse = -inf), which a merge leaves "
        "unchanged; a softmax over no key gives 0/0 = NaN",), str(report)
    out[0, 0, 0] = np.nan  # request 0 reads prefix 0, of 3 keys, and its own: no empty segment
    assert check((out, lse), batch).hints == ()


BASE_2 = ("lse looks to be in base 2 (log2 of the sum of exp): relaycore's lse is natural log; convert with "
          "ln 2 = 0.693147")


@pytest.mark.parametrize("batch", [
    make_batch([1], [6], [[4]], [[0]], num_q_heads=1, num_kv_heads=1, head_dim=16, seed=4),  # one row
    make_batch([3], [2000], num_q_heads=2, head_dim=16, seed=1),  # long rows, lse all about 8
    make_batch([2, 3], [1500, 900], [[600]], [[0, 0]], num_q_heads=4, num_kv_heads=2, head_dim=64, dtype="bfloat16",
               score_magnitude=100.0, seed=2),
], ids=["one row", "equal rows", "large scores"])
def test_an_lse_in_base_two_is_named_on_one_row_and_on_rows_of_equal_lse(batch):
    args, kwargs = batch.to_torch("cpu")
    out, lse = torch_backend(*args, **kwargs)
    assert check((out, lse), batch).hints == ()  # correct: no hint
    report = check((out, (lse.double() * LOG2E).float()), batch)  # a kernel that never converted its base-2 lse
    assert not report.passed and report.hints == (BASE_2,), str(report)


def test_the_lse_base_hint_stays_quiet_where_the_base_is_not_the_reason():
    one = make_batch([1], [6], [[4]], [[0]], num_q_heads=1, num_kv_heads=1, head_dim=16, seed=4)
    out, lse = one.oracle().state
    (ref,) = lse.ravel()
    # an offset that makes got / ref 1.4427 to three digits on this one row: not the base's ratio to 1e-6
    near = check((out, lse + ref * (LOG2E - 1) * (1 + 1e-4)), one)
    assert not near.passed and near.hints == ()
    # several rows: an offset (each key counted twice adds ln 2), base 2 with errors past the bound: no hint
    batch = make_batch([3], [2000], num_q_heads=2, head_dim=16, seed=1)
    out, lse = batch.oracle().state
    for wrong in (lse + np.log(2.0), lse * LOG2E + np.random.default_rng(0).normal(0, 0.1, lse.shape)):
        report = check((out, wrong), batch)
        assert not report.passed and report.hints == (), str(report)
    # a correct lse beside a wrong out: the lse hint is not asked
    assert check((out + 1.0, lse), batch).hints == ()


def test_strategies_without_hypothesis_say_how_to_install_them(monkeypatch):
    import importlib

    monkeypatch.setitem(sys.modules, "hypothesis", None)
    monkeypatch.delitem(sys.modules, "relaycore.testing.strategies")
    with pytest.raises(ImportError, match=r"needs Hypothesis.*relaycore\[testing\]") as refused:
        importlib.import_module("relaycore.testing.strategies")
    assert isinstance(refused.value.__cause__, ImportError) and "hypothesis" in str(refused.value.__cause__)


@given(batches(dtypes=("float16", "bfloat16"), score_magnitudes=(None, 100.0)))
def test_a_batch_s_arrays_cast_to_its_format_losslessly(batch):
    """What the guide tells a NumPy kernel that runs its fp16 path: ``batch.arguments()``'s
    arrays ``.astype(np.float16)`` are the batch's values (NaN where a paged cache is unused);
    bfloat16, which NumPy lacks, rides in float32."""
    (q, _, kv, prefixes), _ = batch.arguments()
    narrow = np.float16 if batch.dtype == "float16" else np.float32
    for x in (q, *kv[:2], *(y for level in prefixes for y in level[:2])):
        assert x.dtype == np.float64
        assert np.array_equal(x.astype(narrow).astype(np.float64), x, equal_nan=True)
    if batch.dtype == "bfloat16":
        assert np.array_equal(relaycore.testing.round_to_bfloat16(q), q.astype(np.float32))


def test_the_guide_says_what_a_function_receives():
    text = GUIDE.read_text()
    section = text[text.index("## What your function receives"):]
    section = section[:section.index("\n## ", 1)]
    for fact in ("RaggedKV", "PagedKV", "PrefixLevel", "last", "../math/causal.md", "h // (Hq // Hkv)",
                 "1/sqrt(D)", "-1", "NaN", "to_torch", ".astype(np.float16)", "bfloat16"):
        assert fact in section, fact
    assert "(#what-your-function-receives)" in text[:text.index("## What your function receives")]


# ---- a downstream trial: narrower prefixes, host metadata, misspelled fields, shrinking ------


#: sha256 of the recipes of seeds 0..199, drawn before ``min_prefix_len`` and ``unread_levels``
#: existed, in the default space and ``relaycore verify``'s: their defaults draw the same batches.
RECIPES_BEFORE = {"default": "5c30f1651a30be82", "cpu": "62f3402fb142e1b3", "cuda": "a07b67dd0c64ca0d"}


@pytest.mark.parametrize("space", sorted(RECIPES_BEFORE))
def test_every_seed_draws_the_batch_it_drew_before_the_prefix_fields(space):
    import hashlib

    from relaycore.verify import SPACES

    fields = {} if space == "default" else SPACES[space]
    recipes = repr([random_batch(seed, **fields).recipe for seed in range(200)])
    assert hashlib.sha256(recipes.encode()).hexdigest()[:16] == RECIPES_BEFORE[space]


def test_min_prefix_len_and_unread_levels_leave_out_what_a_kernel_refuses():
    lengths, unread = set(), 0
    for seed in range(200):
        levels = random_batch(seed).prefixes
        unread += sum(1 for level in levels if not (level.prefix_ids >= 0).any())
        batch = random_batch(seed, min_prefix_len=3, unread_levels=False, min_batch=0)
        for level in batch.prefixes:
            assert (level.prefix_ids >= 0).any(), batch.describe()  # read by a request, so it has a prefix
            lengths.update(np.diff(level.cu_seqlens).tolist())
        assert batch.batch_size > 0 or batch.prefixes == (), batch.describe()  # no request: no level to read
    assert unread > 20  # the default draws unread levels often
    assert min(lengths) == 3 and {3, 4} <= lengths  # the shortest two lengths are the edge cases, drawn often
    for field, value, error, message in (
            ("min_prefix_len", -1, ValueError, r"^min_prefix_len: expected an int >= 0, got -1$"),
            ("min_prefix_len", 13, ValueError, r"^min_prefix_len, max_prefix_len: expected min_prefix_len <= "
                                               r"max_prefix_len, got 13 > 12$"),
            ("unread_levels", 0, TypeError, r"^unread_levels: expected a bool, got 0$")):
        with pytest.raises(error, match=message):
            random_batch(0, **{field: value})
    with pytest.raises(ValueError, match=r"^max_prefixes: expected at least 1 with unread_levels=False \(a level that "
                                         r"a request reads has a prefix\), got 0$"):
        random_batch(0, max_prefixes=0, unread_levels=False)


def test_narrowed_prefixes_still_shrink():
    from hypothesis import find

    strategy = batches(min_prefix_len=1, unread_levels=False)
    shrunk = find(strategy, lambda batch: len(batch.prefixes) >= 2, settings=settings(database=None))
    assert shrunk.recipe["prefix_lens"] == [[1], [1]], shrunk  # two levels of one prefix of the shortest length
    assert all((level.prefix_ids >= 0).any() for level in shrunk.prefixes)
    shrunk = find(strategy, lambda batch: any(np.diff(level.cu_seqlens).max() >= 5 for level in batch.prefixes),
                  settings=settings(database=None))
    assert shrunk.recipe["prefix_lens"] == [[5]], shrunk


@pytest.mark.parametrize("space", [{"dtype": ("float16",)}, {"max_prefix": 3}])
def test_a_misspelled_field_is_refused_with_the_valid_ones(space):
    (name,) = space
    message = rf"^{name}: expected a relaycore.testing.BatchSpace field, one of \[.*'dtypes'.*'max_prefixes'.*\], got " \
              rf"'{name}' \(did you mean {name}\w*\?\)$"
    with pytest.raises(TypeError, match=message):
        batches(**space)
    with pytest.raises(TypeError, match=message):
        random_batch(0, **space)
    with pytest.raises(TypeError, match=r"^nothing_like_it: expected a relaycore.testing.BatchSpace field, one of "
                                        r"\['block_sizes', .*\], got 'nothing_like_it'$"):
        batches(nothing_like_it=1)


def metadata_on_the_host(q, cu_seqlens_q, kv, prefixes, *, causal, softmax_scale):
    """A kernel that takes its metadata as NumPy arrays beside its tensors, and refuses tensors there."""
    metadata = [cu_seqlens_q, *kv[2:], *(x for level in prefixes for x in level[2:])]
    if not all(isinstance(x, np.ndarray) for x in metadata):
        raise TypeError(f"metadata: expected NumPy arrays, got {sorted({type(x).__name__ for x in metadata})}")
    return torch_backend(q, cu_seqlens_q, kv, prefixes, causal=causal, softmax_scale=softmax_scale)


def writes_into_host_metadata(q, cu_seqlens_q, kv, prefixes, *, causal, softmax_scale):
    result = metadata_on_the_host(q, cu_seqlens_q, kv, prefixes, causal=causal, softmax_scale=softmax_scale)
    cu_seqlens_q[-1] += 1
    return result


def test_compare_hands_a_kernel_its_metadata_on_the_host():
    batch = make_batch([2, 1], [5, 1], [[3]], [[0, -1]], num_q_heads=4, num_kv_heads=2, head_dim=16, dtype="float16",
                       block_size=2, seed=3)
    report = compare(metadata_on_the_host, batch, device="cpu", host_metadata=True)
    assert report.passed, str(report)
    with pytest.raises(TypeError, match=r"metadata: expected NumPy arrays, got \['Tensor'\]"):
        compare(metadata_on_the_host, batch, device="cpu")
    written = compare(writes_into_host_metadata, batch, device="cpu", host_metadata=True)
    assert not written.passed and written.problems[0].startswith("cu_seqlens_q: expected unchanged by the call")
    with pytest.raises(ValueError, match=r"^host_metadata: expected with a torch device \(device=None passes NumPy "
                                         r"arrays, whose metadata is on the host already\), got host_metadata=True "
                                         r"with device=None$"):
        compare(metadata_on_the_host, batch, host_metadata=True)
    with pytest.raises(TypeError, match=r"^host_metadata: expected a bool, got 'yes'$"):
        compare(metadata_on_the_host, batch, device="cpu", host_metadata="yes")


def test_the_guide_says_how_a_kernel_gets_its_metadata_on_the_host():
    text = GUIDE.read_text()
    section = text[text.index("## What your function receives"):]
    section = section[:section.index("\n## ", 1)]
    for fact in ("compare(fn, batch, device=\"cuda\", host_metadata=True)", "relaycore verify --host-metadata",
                 "relaycore.verify.run(..., host_metadata=True)"):
        assert fact in " ".join(section.split()), fact


def test_the_strategy_says_that_a_shrunk_example_may_keep_requests_without_a_query():
    """The number of requests is drawn before their lengths and ids, field by field, so Hypothesis
    removes requests from the end only: requests of q_len 0 before the one a failure needs stay.
    The docstring and the guide say so instead of promising the smallest batch."""
    from hypothesis import find
    from random import Random

    def reads_a_prefix_with_a_query(batch):
        return batch.q.shape[0] > 0 and any((level.prefix_ids >= 0).any() for level in batch.prefixes)

    shrunk = [find(batches(), reads_a_prefix_with_a_query, settings=settings(database=None), random=Random(seed))
              for seed in range(6)]
    kept = [b.q_lens.tolist() for b in shrunk if b.batch_size > 1 and b.q_lens[0] == 0]
    assert kept, "every shrunk example lost its empty requests: the docstring's caveat may go"
    doc = " ".join(batches.__doc__.split())
    assert "shrink towards the smallest batch" not in doc
    assert "may thus keep requests with ``q_len`` 0 before the one that fails (``q_lens=[0, 0, 0, 1]``)" in doc
    assert "may keep requests with `q_len` 0 before the one that fails" in " ".join(GUIDE.read_text().split())


# ---- a failing batch cut down to the requests its failure needs ------------------------------

def _own_kv(batch, b):
    """Request ``b``'s own keys and values, ``[kv_len, Hkv, D]`` each, from either layout."""
    n = int(batch.kv_lens[b])
    if batch.paged:
        blocks = batch.kv.block_table[b]
        return tuple(np.concatenate([cache[block] for block in blocks])[:n] for cache in (batch.kv.k_cache,
                                                                                          batch.kv.v_cache))
    start = int(batch.kv.cu_seqlens[b])
    return batch.kv.k[start:start + n], batch.kv.v[start:start + n]


@pytest.mark.parametrize("seed", range(12))
def test_the_requests_of_a_batch_keep_their_values_and_results(seed):
    """``Batch.requests`` holds the picked requests with their own queries, KV and prefix ids
    (the prefix levels whole): the same values, and the whole batch's oracle rows of them pass
    the sub-batch's check; the sub-batch prints as the call that rebuilds it."""
    batch = random_batch(seed, max_batch=5, layouts=("ragged", "paged"))
    rng = np.random.default_rng(seed)
    picked = rng.permutation(batch.batch_size)[: rng.integers(0, batch.batch_size + 1)].tolist()
    sub = batch.requests(picked)
    cu, cu_sub = batch.cu_seqlens_q, sub.cu_seqlens_q
    assert sub.batch_size == len(picked) and cu_sub.dtype == cu.dtype and sub.paged == batch.paged
    rows = np.concatenate([np.arange(cu[b], cu[b + 1]) for b in picked] + [np.zeros(0, dtype=np.int64)])
    assert np.array_equal(sub.q, batch.q[rows])
    for i, b in enumerate(picked):
        assert all(np.array_equal(x, y) for x, y in zip(_own_kv(sub, i), _own_kv(batch, b)))
        for level, whole in zip(sub.prefixes, batch.prefixes):
            assert level.prefix_ids[i] == whole.prefix_ids[b] and level.k is whole.k
    whole = batch.oracle().state
    assert_close(AttentionState(whole.out[rows], whole.lse[rows]), sub)
    again = eval(repr(sub), {"make_batch": make_batch})
    assert repr(again) == repr(sub) and np.array_equal(again.q, sub.q)
    assert repr(sub).endswith(f".requests({picked})")


def test_requests_of_requests_are_requests_of_the_first_batch():
    batch = make_batch([1, 2, 0, 1], [3, 2, 4, 1], prefix_lens=[[5, 2]], prefix_ids=[[0, 1, -1, 1]], block_size=2)
    sub = batch.requests([3, 1, 0]).requests([2, 0])
    assert sub.picked == (0, 3) and repr(sub).endswith(".requests([0, 3])")
    assert np.array_equal(sub.q, batch.requests([0, 3]).q) and sub.kv.block_table.tolist() == \
        batch.kv.block_table[[0, 3]].tolist()


def test_requests_refuse_indices_outside_the_batch():
    batch = make_batch([1, 1], [1, 2])
    with pytest.raises(ValueError, match=r"^indices: expected request indices in \[0, 2\), got 2$"):
        batch.requests([0, 2])
    with pytest.raises(ValueError, match=r"^indices: expected ints >= 0, got -1$"):
        batch.requests([-1])
    with pytest.raises(TypeError, match=r"^indices: expected a sequence of ints"):
        batch.requests({0, 1})


def test_fewest_requests_keeps_a_failure_and_no_request_it_does_not_need():
    """On the examples Hypothesis shrinks with empty requests kept before the one a failure
    needs, ``fewest_requests`` leaves that one alone; none of what it keeps can go."""
    from hypothesis import find
    from random import Random
    from relaycore.testing import fewest_requests

    def reads_a_prefix_with_a_query(batch):
        return batch.q.shape[0] > 0 and any((level.prefix_ids >= 0).any() for level in batch.prefixes)

    kept_empty = 0
    for seed in range(6):
        shrunk = find(batches(), reads_a_prefix_with_a_query, settings=settings(database=None), random=Random(seed))
        kept_empty += int(shrunk.batch_size > 1)
        small = fewest_requests(shrunk, reads_a_prefix_with_a_query)
        assert small.batch_size == 1 and reads_a_prefix_with_a_query(small), repr(small)
    assert kept_empty, "no shrunk example kept a request it did not need: pick another property"

    batch = make_batch([0, 2, 0, 1, 3], [1, 2, 4, 1, 3])
    fails = lambda b: int((b.q_lens > 0).sum()) >= 2  # noqa: E731  (two requests with queries)
    small = fewest_requests(batch, fails)
    assert small.picked == (3, 4) and all(not fails(small.requests([i])) for i in range(2))
    with pytest.raises(ValueError, match=r"^fails: expected True for the batch given \(the failure to keep\), got "
                                         r"False$"):
        fewest_requests(batch, lambda b: False)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("host_metadata", [False, True])
def test_a_batch_from_a_calls_own_tensors_has_the_oracle_of_the_batch_they_came_from(dtype, host_metadata):
    """``batch_from`` of an engine's tensors (here ``to_torch``'s: paged, two levels) is the same
    problem: the same oracle, bit for bit, and the same verdicts on a right and a wrong result."""
    from relaycore.testing import batch_from

    batch = make_batch([2, 1, 3], [5, 1, 7], prefix_lens=[[3, 4], [6]], prefix_ids=[[0, 1, -1], [0, 0, -1]],
                       num_q_heads=4, num_kv_heads=2, head_dim=16, dtype=dtype, block_size=4, seed=3)
    args, kwargs = batch.to_torch("cpu", host_metadata=host_metadata)
    ours = batch_from(*args, **kwargs)
    assert ours.dtype == dtype and ours.paged
    args[2].kv_lens[0] += 1  # the engine writes its metadata and values again: the batch holds copies
    args[0].mul_(2)
    assert np.array_equal(ours.kv.kv_lens, batch.kv.kv_lens) and np.array_equal(ours.q, batch.q)
    for got, want in zip(ours.oracle().state, batch.oracle().state):
        assert np.array_equal(got, want)
    args, kwargs = batch.to_torch("cpu", host_metadata=host_metadata)
    result = relaycore.relay_attention(*args, **kwargs, backend="torch")
    assert check(result, ours).passed
    wrong = AttentionState(result.out.clone(), result.lse)
    wrong.out[4, 1, 2] += 0.5
    report = check(wrong, ours)
    assert not report.passed and "request 2, token 1 (row 4), head 1, dim 2" in str(report)


def test_a_batch_from_a_call_refuses_what_the_call_refuses_and_values_its_dtype_rounds():
    from relaycore.testing import batch_from

    args, kwargs = make_batch([1], [3], dtype="float32", seed=1).to_torch("cpu")
    with pytest.raises(ValueError, match=r"^q: expected values exact in float16 \(the format that selects the bound\)"):
        batch_from(*args, **kwargs, dtype="float16")
    assert batch_from(*args, **kwargs).dtype == "float32"
    with pytest.raises(ValueError, match=r"^dtype: expected one of \['float16', 'bfloat16', 'float32', 'float64'\], "
                                         r"got 'half'"):
        batch_from(*args, **kwargs, dtype="half")
    q, cu, kv, prefixes = args
    with pytest.raises(TypeError, match=r"^cu_seqlens_q"):
        batch_from(q, cu.float(), kv, prefixes, **kwargs)
