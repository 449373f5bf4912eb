"""The float64 oracle: its two forms agree, and the semantics' invariances hold.

Every comparison of two float64 computations uses ``tolerances.float64_agreement`` (twice the
float64 bound of ``relaycore.bounds``); layout changes that must not change a single bit are
compared with ``np.array_equal``.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from relaycore.reference import context_statistics, full_attention, relay_attention, relay_parts
from relaycore.reference import softmax
from relaycore.reference.softmax import attention_state
from relaycore.testing import Batch, make_batch
from relaycore.testing.strategies import batches
from relaycore.types import AttentionState, PagedKV, PrefixLevel, RaggedKV
from tolerances import Tolerance, assert_agree, float64_agreement, softmax_tolerance, sum_tolerance

F64 = dict(dtypes=("float64",), score_magnitudes=(None, 100.0, 1e4))


def both_forms(batch: Batch):
    args, kwargs = batch.arguments()
    return relay_attention(*args, **kwargs), full_attention(*args, **kwargs)


def rows(batch: Batch, requests) -> np.ndarray:
    """The query rows of ``requests``, in that order."""
    cu = batch.cu_seqlens_q
    return np.concatenate([np.arange(cu[b], cu[b + 1]) for b in requests] + [np.zeros(0, dtype=np.int64)])


def offsets(lens) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)


def replace(batch: Batch, **fields) -> Batch:
    return dataclasses.replace(batch, recipe=None, **fields)


# ---- the two forms --------------------------------------------------------------------------


@given(batches(**F64))
def test_relay_form_equals_full_form(batch):
    relay, full = both_forms(batch)
    assert_agree(relay, full, float64_agreement(batch), batch.describe())
    assert relay.out.dtype == relay.lse.dtype == np.float64


@given(batches(dtypes=("float32", "float16", "bfloat16"), max_kv_len=20, max_prefix_len=20))
def test_relay_form_equals_full_form_on_low_precision_values(batch):
    relay, full = both_forms(batch)
    assert_agree(relay, full, float64_agreement(batch), batch.describe())


@given(batches(score_magnitudes=(1e4,), dtypes=("float64", "float16"), min_batch=1))
def test_scores_of_ten_thousand_neither_overflow_nor_make_nan(batch):
    relay, full = both_forms(batch)
    for state in (relay, full):
        assert not np.isnan(state.out).any() and not np.isnan(state.lse).any()
        assert np.isfinite(state.out).all()
    assert_agree(relay, full, float64_agreement(batch), batch.describe())


def test_scores_of_exactly_plus_minus_ten_thousand():
    # q = 100 e0 against keys +-100 e0 with scale 1: scores +1e4 (twice) and -1e4 (three times)
    q = np.zeros((1, 1, 4))
    q[0, 0, 0] = 100.0
    k = np.zeros((5, 1, 4))
    k[:, 0, 0] = [100.0, -100.0, 100.0, -100.0, -100.0]
    v = np.arange(20, dtype=np.float64).reshape(5, 1, 4)
    kv = RaggedKV(k[3:], v[3:], np.array([0, 2], dtype=np.int32))
    prefix = PrefixLevel(k[:3], v[:3], np.array([0, 3], dtype=np.int32), np.array([0], dtype=np.int32))
    batch = Batch(q, np.array([0, 1], dtype=np.int32), kv, (prefix,), True, 1.0, "float64")
    # the -1e4 keys weigh exp(-2e4) = 0 in float64
    exact = AttentionState(((v[0] + v[2]) / 2)[None], np.array([[1e4 + np.log(2.0)]]))
    for state in both_forms(batch):
        assert_agree(state, exact, float64_agreement(batch))
        np.testing.assert_array_equal(state.out, exact.out)


# ---- invariances ----------------------------------------------------------------------------


def permute_requests(batch: Batch, order) -> Batch:
    """The batch with its requests in ``order`` (ragged or paged request KV)."""
    q = batch.q[rows(batch, order)]
    cu_q = offsets(batch.q_lens[order])
    if isinstance(batch.kv, PagedKV):
        kv = batch.kv._replace(block_table=batch.kv.block_table[order], kv_lens=batch.kv.kv_lens[order])
    else:
        cu_k = batch.kv.cu_seqlens
        own = np.concatenate([np.arange(cu_k[b], cu_k[b + 1]) for b in order] + [np.zeros(0, dtype=np.int64)])
        kv = RaggedKV(batch.kv.k[own], batch.kv.v[own], offsets(batch.kv_lens[order]))
    prefixes = tuple(level._replace(prefix_ids=level.prefix_ids[order]) for level in batch.prefixes)
    return replace(batch, q=q, cu_seqlens_q=cu_q, kv=kv, prefixes=prefixes)


@given(batches(**F64), st.randoms(use_true_random=False))
def test_permuting_requests_permutes_the_result(batch, random):
    order = list(range(batch.batch_size))
    random.shuffle(order)
    permuted = permute_requests(batch, np.asarray(order, dtype=np.int64))
    expected = batch.oracle().state
    index = rows(batch, order)
    for got in both_forms(permuted):
        assert_agree(got, AttentionState(expected.out[index], expected.lse[index]), float64_agreement(permuted))


def split_level(batch: Batch, level: int, cuts) -> Batch:
    """Level ``level`` split in two consecutive levels: prefix ``p``'s first ``cuts[p]`` tokens,
    then the rest, with the same ids."""
    old = batch.prefixes[level]
    lens = np.diff(old.cu_seqlens)
    head = np.concatenate([np.arange(old.cu_seqlens[p], old.cu_seqlens[p] + c) for p, c in enumerate(cuts)] + [np.zeros(0, np.int64)])
    tail = np.concatenate([np.arange(old.cu_seqlens[p] + c, old.cu_seqlens[p + 1]) for p, c in enumerate(cuts)] + [np.zeros(0, np.int64)])
    first = PrefixLevel(old.k[head], old.v[head], offsets(cuts), old.prefix_ids)
    second = PrefixLevel(old.k[tail], old.v[tail], offsets(lens - np.asarray(cuts, dtype=np.int64)), old.prefix_ids)
    return replace(batch, prefixes=batch.prefixes[:level] + (first, second) + batch.prefixes[level + 1 :])


@given(batches(**F64), st.data())
def test_splitting_a_prefix_level_in_two_changes_nothing(batch, data):
    if not batch.prefixes:
        return
    level = data.draw(st.integers(0, len(batch.prefixes) - 1), label="level")
    lens = np.diff(batch.prefixes[level].cu_seqlens)
    cuts = [data.draw(st.integers(0, int(n)), label=f"cut of prefix {p}") for p, n in enumerate(lens)]
    split = split_level(batch, level, cuts)
    for got in both_forms(split):
        assert_agree(got, batch.oracle().state, float64_agreement(split), split.describe())


def move_own_tokens_into_a_prefix(batch: Batch, counts) -> Batch:
    """Move ``counts[b]`` own tokens of each request into a new last prefix level (prefix ``b``
    used by request ``b`` alone): the first ones when causal (they precede every query), the
    last ones when not (order does not matter then). Ragged request KV."""
    cu_k = batch.kv.cu_seqlens
    moved, kept = [], []
    for b, m in enumerate(counts):
        own = np.arange(cu_k[b], cu_k[b + 1])
        cut = m if batch.causal else len(own) - m
        (moved, kept)[0 if batch.causal else 1].append(own[:cut])
        (kept, moved)[0 if batch.causal else 1].append(own[cut:])
    moved = np.concatenate(moved + [np.zeros(0, np.int64)])
    kept = np.concatenate(kept + [np.zeros(0, np.int64)])
    level = PrefixLevel(batch.kv.k[moved], batch.kv.v[moved], offsets(counts), np.arange(batch.batch_size, dtype=np.int32))
    kv = RaggedKV(batch.kv.k[kept], batch.kv.v[kept], offsets(batch.kv_lens - np.asarray(counts, dtype=np.int64)))
    return replace(batch, kv=kv, prefixes=batch.prefixes + (level,))


@given(batches(layouts=("ragged",), **F64), st.data())
def test_moving_tokens_between_request_and_prefix_changes_nothing(batch, data):
    spare = batch.kv_lens - batch.q_lens  # own tokens that precede every query
    counts = [data.draw(st.integers(0, int(n)), label=f"moved from request {b}") for b, n in enumerate(spare)]
    moved = move_own_tokens_into_a_prefix(batch, counts)
    for got in both_forms(moved):
        assert_agree(got, batch.oracle().state, float64_agreement(moved), moved.describe())


@given(batches(layouts=("ragged",), **F64), st.sampled_from([1, 2, 3, 4, 7, 8, 9, 16, 17]))
def test_ragged_and_paged_request_kv_give_the_same_bits(batch, block_size):
    paged = make_batch(**{**batch.recipe, "block_size": block_size})
    assert isinstance(paged.kv, PagedKV)
    for a, b in zip(both_forms(batch), both_forms(paged)):
        assert np.array_equal(a.out, b.out) and np.array_equal(a.lse, b.lse)


# ---- empty parts ------------------------------------------------------------------------------


@given(batches(**F64))
def test_parts_without_keys_are_exactly_empty_and_results_never_nan(batch):
    args, kwargs = batch.arguments()
    parts = relay_parts(*args, **kwargs)
    assert len(parts) == len(batch.prefixes) + 1
    request_of_row = np.repeat(np.arange(batch.batch_size), batch.q_lens)
    for level, part in zip(batch.prefixes, parts):
        lens = np.diff(level.cu_seqlens)
        ids = level.prefix_ids[request_of_row]
        empty = (ids < 0) | (lens[np.maximum(ids, 0)] == 0 if len(lens) else True)
        assert np.array_equal(part.out[empty], np.zeros_like(part.out[empty]))
        assert np.all(part.lse[empty] == -np.inf)
        assert np.all(np.isfinite(part.lse[~empty]))
    for state in list(parts) + list(both_forms(batch)):
        assert not np.isnan(state.out).any() and not np.isnan(state.lse).any()
    # every query sees at least its own last token, so the merged result is never empty
    assert np.all(np.isfinite(batch.oracle().state.lse))


@pytest.mark.parametrize("paged", [False, True])
def test_empty_batch_and_empty_requests(paged):
    bs = 2 if paged else None
    empty = make_batch([], [], [[3, 0]], [[]], num_q_heads=4, num_kv_heads=2, head_dim=8, block_size=bs)
    for state in both_forms(empty):
        assert state.out.shape == (0, 4, 8) and state.lse.shape == (0, 4)
    hollow = make_batch([0, 0, 1], [0, 2, 1], [[0, 2], []], [[0, -1, 0], [-1, -1, -1]], block_size=bs)
    relay, full = both_forms(hollow)
    assert relay.out.shape == (1, 2, 8)
    assert_agree(relay, full, float64_agreement(hollow))
    parts = relay_parts(*hollow.arguments()[0], **hollow.arguments()[1])
    assert np.all(parts[0].lse == -np.inf) and np.all(parts[0].out == 0)  # a prefix of length 0
    assert np.all(parts[1].lse == -np.inf) and np.all(parts[1].out == 0)  # a level with no prefix


def test_a_row_that_sees_no_key_is_zero_and_minus_infinity():
    scores = np.array([[[1.0, 2.0], [3.0, 4.0]]])
    values = np.ones((1, 2, 3))
    state = attention_state(scores, values, np.array([[True, False], [False, False]]))
    assert state.lse[0, 1] == -np.inf and np.array_equal(state.out[0, 1], np.zeros(3))
    assert state.lse[0, 0] == 1.0 and np.array_equal(state.out[0, 0], np.ones(3))
    none = attention_state(np.zeros((2, 0)), np.zeros((0, 3)))
    assert np.all(none.lse == -np.inf) and np.array_equal(none.out, np.zeros((2, 3)))


@given(st.lists(st.floats(-30, 30), min_size=1, max_size=8), st.integers(0, 2**31 - 1))
@settings(max_examples=50)
def test_attention_state_is_the_softmax_written_plainly(scores, seed):
    s = np.array([scores])
    v = np.random.default_rng(seed).standard_normal((1, len(scores), 3))
    plain_total = np.exp(s).sum(axis=-1)  # |s| <= 30: no overflow without the max subtraction
    plain = AttentionState((np.exp(s)[:, None] @ v)[:, 0] / plain_total[:, None], np.log(plain_total))
    state = attention_state(s[:, None], v)  # one row
    tol = softmax_tolerance(s, v, "float64")
    assert_agree(AttentionState(state.out[:, 0], state.lse[:, 0]), plain, Tolerance(2 * tol.out, 2 * tol.lse))


# ---- statistics -------------------------------------------------------------------------------


def brute_force_statistics(batch: Batch):
    """N, A, V of every row by walking the context key by key (paged KV through the table)."""
    q, hq, d = batch.q, batch.num_q_heads, batch.head_dim
    group = hq // batch.num_kv_heads
    scale = batch.softmax_scale or 1 / np.sqrt(d)
    n = np.zeros(q.shape[:2], dtype=np.int64)
    a = np.zeros(q.shape[:2])
    v_abs = np.zeros(q.shape)
    for b in range(batch.batch_size):
        keys = []
        for level in batch.prefixes:
            p = level.prefix_ids[b]
            if p >= 0:
                keys += [(level.k[t], level.v[t]) for t in range(level.cu_seqlens[p], level.cu_seqlens[p + 1])]
        kv_len, q_len = int(batch.kv_lens[b]), int(batch.q_lens[b])
        for t in range(kv_len):
            if isinstance(batch.kv, PagedKV):
                bs = batch.kv.k_cache.shape[1]
                block = batch.kv.block_table[b, t // bs]
                keys.append((batch.kv.k_cache[block, t % bs], batch.kv.v_cache[block, t % bs]))
            else:
                start = batch.kv.cu_seqlens[b]
                keys.append((batch.kv.k[start + t], batch.kv.v[start + t]))
        num_prefix = len(keys) - kv_len
        for j in range(q_len):
            row = batch.cu_seqlens_q[b] + j
            seen = keys[: num_prefix + kv_len - q_len + j + 1] if batch.causal else keys
            for h in range(hq):
                n[row, h] = len(seen)
                for k, v in seen:
                    a[row, h] = max(a[row, h], scale * float(np.sum(np.abs(q[row, h]) * np.abs(k[h // group]))))
                    v_abs[row, h] = np.maximum(v_abs[row, h], np.abs(v[h // group]))
    return n, a, v_abs


@given(batches(max_batch=3, max_kv_len=8, max_prefix_len=8))
@settings(max_examples=20)
def test_context_statistics_match_a_key_by_key_walk(batch):
    args, kwargs = batch.arguments()
    stats = context_statistics(*args, **kwargs)
    n, a, v = brute_force_statistics(batch)
    assert np.array_equal(stats.num_keys, n)
    assert np.all(np.abs(stats.score_abs - a) <= sum_tolerance(batch.head_dim, "float64") * a)
    assert np.array_equal(stats.value_abs, v)


@given(batches(**F64), st.sampled_from([1, 2**12, 2**15]))
@settings(max_examples=30)
def test_taking_rows_in_chunks_changes_no_result(batch, score_bytes):
    """``SCORE_BYTES`` only bounds the oracle's memory: with chunks of one query token and up,
    every form and the statistics agree with one chunk per product."""
    args, kwargs = batch.arguments()
    whole = (relay_attention(*args, **kwargs), full_attention(*args, **kwargs), context_statistics(*args, **kwargs))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(softmax, "SCORE_BYTES", score_bytes)
        chunked = (relay_attention(*args, **kwargs), full_attention(*args, **kwargs),
                   context_statistics(*args, **kwargs))
    for got, expected in zip(chunked[:2], whole[:2]):
        assert_agree(got, expected, float64_agreement(batch), batch.describe())
    assert np.array_equal(chunked[2].num_keys, whole[2].num_keys)
    assert np.all(np.abs(chunked[2].score_abs - whole[2].score_abs)
                  <= 2 * sum_tolerance(batch.head_dim, "float64") * whole[2].score_abs)
    assert np.array_equal(chunked[2].value_abs, whole[2].value_abs)


# ---- inputs -------------------------------------------------------------------------------------


def test_reference_takes_lists_and_torch_tensors_of_any_float_dtype():
    torch = pytest.importorskip("torch")
    for dtype in ("bfloat16", "float16", "float32", "float64"):
        batch = make_batch([2, 1], [3, 4], [[2, 3]], [[1, 0]], num_q_heads=4, num_kv_heads=2, dtype=dtype, block_size=3)
        expected = batch.oracle().state
        args, kwargs = batch.to_torch("cpu")
        for form in (relay_attention, full_attention):
            got = form(*args, **kwargs)
            assert isinstance(got.out, np.ndarray) and got.out.dtype == np.float64
            assert_agree(got, expected, float64_agreement(batch))
    listed = make_batch([1], [2])
    (q, cu, kv, prefixes), kwargs = listed.arguments()
    got = relay_attention(q.tolist(), cu.tolist(), RaggedKV(kv.k.tolist(), kv.v.tolist(), kv.cu_seqlens.tolist()), [], **kwargs)
    assert np.array_equal(got.out, listed.oracle().state.out)


@pytest.mark.parametrize("form", [relay_attention, full_attention, context_statistics])
def test_lists_that_are_no_array_of_numbers_are_refused_by_name(form):
    """NumPy's own refusal of nested lists of unequal lengths, and a ``None`` or a string read
    as a 0-d array ("expected rank 1, got shape ()"), named the wrong thing or nothing."""
    (q, cu, kv, _), kwargs = make_batch([1, 2], [2, 3], dtype="float64").arguments()
    ragged = [q[0].tolist(), q[1, :, :-1].tolist(), q[2].tolist()]
    with pytest.raises(ValueError, match="^q: expected an array, or nested lists of equal lengths, got a ragged list$"):
        form(ragged, cu, kv, **kwargs)
    for bad in (None, "013"):
        with pytest.raises(TypeError, match=rf"^cu_seqlens_q: expected an array of numbers \(a NumPy array, a "
                                            rf"torch tensor or nested lists\), got {type(bad).__name__}, which NumPy "
                                            rf"reads as dtype "):
            form(q, bad, kv, **kwargs)
    level = PrefixLevel([[[1.0] * 8], [[1.0] * 7]], [[[1.0] * 8]] * 2, [0, 2], [0, 0])
    with pytest.raises(ValueError, match=r"^prefixes\[0\]\.k: expected an array, or nested lists of equal lengths"):
        form(q, cu, kv, [level], **kwargs)


def test_lists_of_metadata_are_taken_beside_torch_tensors_as_beside_numpy():
    """Every array may be anything ``np.asarray`` takes: a list ``cu_seqlens_q`` was refused
    beside a torch q ("expected a NumPy array or torch tensor, got list")."""
    torch = pytest.importorskip("torch")
    batch = make_batch([2, 1], [3, 4], [[2, 3]], [[1, -1]], num_q_heads=4, num_kv_heads=2, dtype="float32")
    (q, cu, kv, (level,)), kwargs = batch.to_torch("cpu")
    listed = ([int(x) for x in cu], RaggedKV(kv.k, kv.v, kv.cu_seqlens.tolist()),
              [PrefixLevel(level.k, level.v, level.cu_seqlens.tolist(), tuple(level.prefix_ids.tolist()))])
    for form in (relay_attention, full_attention):
        assert np.array_equal(form(q, *listed, **kwargs).out, form(*batch.arguments()[0], **kwargs).out)
    with pytest.raises(TypeError, match="^kv.k: expected a torch array like q, got a numpy array$"):
        relay_attention(q, listed[0], RaggedKV(kv.k.tolist(), kv.v, kv.cu_seqlens), **kwargs)


def test_reference_backend_returns_tensors_like_every_backend():
    torch = pytest.importorskip("torch")
    import relaycore

    batch = make_batch([2, 1], [3, 4], [[2, 3]], [[1, 0]], num_q_heads=4, num_kv_heads=2, dtype="float16")
    args, kwargs = batch.to_torch("cpu")
    out, lse = relaycore.relay_attention(*args, **kwargs, backend="reference")
    assert out.dtype == torch.float16 and lse.dtype == torch.float32 and out.device.type == "cpu"
    expected = batch.oracle().state
    assert torch.equal(out, torch.from_numpy(expected.out).to(torch.float16))
    assert torch.equal(lse, torch.from_numpy(expected.lse).to(torch.float32))


# ---- non-finite inputs ------------------------------------------------------------------------


def reference_backend(*args, **kwargs):
    import relaycore

    return relaycore.relay_attention(*args, **kwargs, backend="reference")


ORACLE_FORMS = (relay_attention, full_attention, reference_backend, context_statistics)


def value_arrays(batch: Batch) -> dict:
    """The batch's float arrays by the names a caller writes: ``q``, ``kv.k``, ``prefixes[1].v``."""
    arrays = {"q": batch.q}
    fields = ("k_cache", "v_cache") if isinstance(batch.kv, PagedKV) else ("k", "v")
    arrays.update({f"kv.{f}": getattr(batch.kv, f) for f in fields})
    for i, level in enumerate(batch.prefixes):
        arrays.update({f"prefixes[{i}].k": level.k, f"prefixes[{i}].v": level.v})
    return arrays


def with_values(batch: Batch, arrays: dict) -> Batch:
    """``batch`` with its float arrays replaced by ``arrays`` (named as in ``value_arrays``)."""
    if isinstance(batch.kv, PagedKV):
        kv = batch.kv._replace(k_cache=arrays["kv.k_cache"], v_cache=arrays["kv.v_cache"])
    else:
        kv = batch.kv._replace(k=arrays["kv.k"], v=arrays["kv.v"])
    prefixes = tuple(
        level._replace(k=arrays[f"prefixes[{i}].k"], v=arrays[f"prefixes[{i}].v"]) for i, level in enumerate(batch.prefixes)
    )
    return replace(batch, q=arrays["q"], kv=kv, prefixes=prefixes)


def attended(batch: Batch) -> dict:
    """Per array of ``value_arrays``, bool over its leading axes: ``True`` where some query
    attends that row (paged caches: ``[num_blocks, block_size]`` slots), walked token by token."""
    with_queries = [b for b in range(batch.batch_size) if batch.q_lens[b] > 0]
    marks = {"q": np.ones(batch.q.shape[0], dtype=bool)}
    if isinstance(batch.kv, PagedKV):
        slots = np.zeros(batch.kv.k_cache.shape[:2], dtype=bool)
        bs = slots.shape[1]
        for b in with_queries:
            for t in range(int(batch.kv_lens[b])):
                slots[batch.kv.block_table[b, t // bs], t % bs] = True
        marks["kv.k_cache"] = marks["kv.v_cache"] = slots
    else:
        rows = np.zeros(batch.kv.k.shape[0], dtype=bool)
        for b in with_queries:
            rows[batch.kv.cu_seqlens[b] : batch.kv.cu_seqlens[b + 1]] = True
        marks["kv.k"] = marks["kv.v"] = rows
    for i, level in enumerate(batch.prefixes):
        rows = np.zeros(level.k.shape[0], dtype=bool)
        for b in with_queries:
            p = level.prefix_ids[b]
            if p >= 0:
                rows[level.cu_seqlens[p] : level.cu_seqlens[p + 1]] = True
        marks[f"prefixes[{i}].k"] = marks[f"prefixes[{i}].v"] = rows
    return marks


def outcome(form, batch: Batch):
    """The form's result on the batch's NumPy arguments, or the ValueError's message."""
    args, kwargs = batch.arguments()
    try:
        return form(*args, **kwargs)
    except ValueError as exc:
        return str(exc)


NON_FINITE = st.sampled_from([np.inf, -np.inf, np.nan])


@given(batches(**F64), NON_FINITE)
@settings(max_examples=40)
def test_values_no_query_attends_are_not_read(batch, bad):
    marks = attended(batch)
    arrays = {}
    for name, x in value_arrays(batch).items():
        x = x.copy()
        x[~marks[name]] = bad
        arrays[name] = x
    hidden = with_values(batch, arrays)
    for form in ORACLE_FORMS:
        clean, got = outcome(form, batch), outcome(form, hidden)
        assert all(np.array_equal(a, b) for a, b in zip(clean, got)), form.__name__


@given(batches(**F64), NON_FINITE, st.data())
@settings(max_examples=40)
def test_a_non_finite_value_a_query_attends_is_refused_by_name_and_index(batch, bad, data):
    marks = attended(batch)
    names = [name for name in value_arrays(batch) if marks[name].any()]
    assume(names)  # a batch without query tokens attends nothing
    name = data.draw(st.sampled_from(names), label="argument")
    x = value_arrays(batch)[name].copy()
    rows = np.argwhere(marks[name])
    lead = tuple(int(i) for i in rows[data.draw(st.integers(0, len(rows) - 1), label="row")])
    rest = tuple(data.draw(st.integers(0, n - 1), label=f"axis {a}") for a, n in enumerate(x.shape[len(lead) :]))
    x[lead + rest] = bad
    poisoned = with_values(batch, {**value_arrays(batch), name: x})
    expected = f"{name}: expected finite values, got {bad} at index {lead + rest}"
    for form in ORACLE_FORMS:
        assert outcome(form, poisoned) == expected, form.__name__


def test_non_finite_values_are_counted_and_the_first_named():
    batch = make_batch([2, 1], [3, 4], [[2, 3], [1]], [[1, 0], [0, -1]], num_q_heads=4, num_kv_heads=2, dtype="float64")
    v = batch.prefixes[1].v.copy()
    v[0, 1, 5], v[0, 0, 7], v[0, 1, 0] = np.nan, -np.inf, np.inf
    poisoned = with_values(batch, {**value_arrays(batch), "prefixes[1].v": v})
    for form in ORACLE_FORMS:
        assert outcome(form, poisoned) == "prefixes[1].v: expected finite values, got -inf at index (0, 0, 7) (2 more)"


@pytest.mark.parametrize("block_size", [None, 3])
def test_torch_inputs_with_a_non_finite_value_are_refused_like_numpy(block_size):
    torch = pytest.importorskip("torch")
    batch = make_batch([2, 1], [3, 4], [[2, 3]], [[1, 0]], num_q_heads=4, num_kv_heads=2, dtype="bfloat16",
                       block_size=block_size)
    args, kwargs = batch.to_torch("cpu")
    (q, cu, kv, prefixes) = args
    k_name = "kv.k_cache" if block_size else "kv.k"
    k = kv[0].clone()
    index = (int(kv.block_table[1, 1]), 0, 1, 6) if block_size else (4, 1, 6)  # request 1's own tokens
    k[index] = float("nan")
    for form in ORACLE_FORMS:
        with pytest.raises(ValueError) as err:
            form(q, cu, kv._replace(**{k_name[3:]: k}), prefixes, **kwargs)
        assert str(err.value) == f"{k_name}: expected finite values, got nan at index {index}"


def test_scores_that_overflow_float64_are_refused_alike_by_both_forms():
    # finite float64 q and k whose product is beyond float64: +inf against one key, -inf against another
    for key in (1e10, -1e10):
        q = np.zeros((1, 1, 4))
        q[0, 0, 0] = 1e300
        k = np.zeros((2, 1, 4))
        k[:, 0, 0] = [key, 1.0]
        batch = Batch(q, np.array([0, 1], dtype=np.int32), RaggedKV(k, np.ones((2, 1, 4)), np.array([0, 2], dtype=np.int32)),
                      (), True, 1.0, "float64")
        with np.errstate(over="ignore"):
            messages = {outcome(form, batch) for form in (relay_attention, full_attention, reference_backend)}
        assert messages == {
            f"q: expected scores softmax_scale * q . k finite in float64 (the reference's format), got a score of "
            f"{np.inf if key > 0 else -np.inf}: q and the keys it attends are finite, their products overflow float64"
        }


def test_the_testing_kit_names_the_non_finite_argument():
    from relaycore.testing import check

    batch = make_batch([1], [2], dtype="float64")
    q = batch.q.copy()
    q[0, 1, 2] = np.inf
    with pytest.raises(ValueError, match=r"^q: expected finite values, got inf at index \(0, 1, 2\)$"):
        check(batch.oracle().state, with_values(batch, {**value_arrays(batch), "q": q}))
