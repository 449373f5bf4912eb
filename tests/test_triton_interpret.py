"""The Triton kernels under Triton's CPU interpreter (``TRITON_INTERPRET=1``): what CI can run.

Triton decides at ``@triton.jit`` time whether a function is interpreted, its own library
(``tl.zeros``...) included, when ``triton`` is imported. So the variable is set here before
anything imports triton; if another module of the same pytest process imported triton first,
the in-process tests are skipped and ``test_in_a_fresh_process`` runs this module again in a
fresh interpreter with the variable set. On a machine with CUDA the module is skipped:
``tests/gpu`` runs the same kernels compiled.

Shapes are small and configurations tiny (16-row tiles, 16-key chunks) so that tiling,
chunking and the merge all happen at interpreter speed. bf16 is left to the GPU suite (the
interpreter's bf16 arithmetic is wrong, see ``../shared/gpu/README.md``). Results are held to
the error bound at the kernels' own count of rounding steps (``relaycore.fast.triton.rounding``),
not at ``default_steps``.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import subprocess
import sys
from unittest import mock

import pytest

from interpreted import TINY, dots_summed_in_order, fresh_process_only, in_process, run_in_a_fresh_process, torch  # noqa: E402,F401,I001

import numpy as np  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import relaycore  # noqa: E402
from relaycore import PagedKV, RaggedKV, bounds  # noqa: E402
from relaycore.fast.triton import Config, default_config, plan, prepare, run_planned  # noqa: E402
from relaycore.fast.triton import backend, kernels, op  # noqa: E402
from relaycore.fast.triton.config import (block_d, chunk_size, decode_chunks, max_chunks, single_pass,  # noqa: E402
                                          tile_height)
from relaycore.fast.triton.graph import Bounds, graph_launches, prepare_graph, slot_capacity  # noqa: E402
from relaycore.fast.triton.launch import lanes  # noqa: E402
from relaycore.fast.triton.plan import (check_metadata, fold_steps, longest_first, merge_grid, query_layout,  # noqa: E402
                                        regular_items, single_pass_requests, stamp_metadata)
from relaycore.fast.triton.rounding import DIVISION_STEPS, MERGE_STEPS, steps_per_token  # noqa: E402
from relaycore.proofs.error_bound import ALL_AT_ONCE_MERGE_STEPS, TRITON_DIVISION_STEPS  # noqa: E402
from relaycore.testing import assert_close, make_batch  # noqa: E402
from relaycore.testing.strategies import batches  # noqa: E402
from relaycore.validation import validate  # noqa: E402
from graph_steps import EngineTensors, write_metadata  # noqa: E402
from layouts import in_nan_padded_rows, with_guarded_tail  # noqa: E402
from tolerances import triton_steps  # noqa: E402

plan_module = importlib.import_module("relaycore.fast.triton.plan")  # the package's ``plan`` is the function


#: The same with taller tiles allowed, so that own tiles of 16 and 32 rows both occur; only the
#: 32-row tiles split off their unmasked blocks and carry their pages; the 16-row own tiles
#: walk 32 keys a step, every other tile 16.
TALL = Config(block_m=32, prefix_block_m=16, min_block_m=16, block_n=16, short_block_n=32, min_chunk=16,
              target_chunks=4, num_warps=4, num_stages=2, unmasked_min_block_m=32, carry_pages_min_block_m=32)

SPACE = dict(max_batch=3, max_q_len=4, max_kv_len=40, max_levels=2, max_prefixes=2, max_prefix_len=40,
             head_dims=(16, 32), kv_heads=(1, 2), group_sizes=(1, 2, 3))
SETTINGS = settings(max_examples=120, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _run(batch, config=None, relay=None, dtype=None, fused_merge=None, regular=True):
    args, kwargs = batch.to_torch("cpu", dtype)
    meta = validate(*args, **kwargs)
    planned = plan(meta, config=config, relay=relay, fused_merge=fused_merge, regular=regular)
    return run_planned(planned, args[0], args[2], args[3])


def _assert_close(result, batch, config=None):
    """``assert_close`` at the steps the kernels take under ``config`` (default: the public one)."""
    args, kwargs = batch.to_torch("cpu")
    return assert_close(result, batch, steps=triton_steps(validate(*args, **kwargs), config))


def _same(a, b) -> bool:
    return torch.equal(a.out, b.out) and torch.equal(a.lse, b.lse)


@fresh_process_only
def test_in_a_fresh_process():
    run_in_a_fresh_process(__file__, timeout=900)


def test_the_interpreter_set_after_the_kernels_were_imported_is_refused_with_its_reason():
    """``triton.jit`` reads ``TRITON_INTERPRET`` when a kernel is defined: set later, the kernels
    stay compiled for a GPU, and CPU tensors are refused with that reason, not launched."""
    script = """if True:
        import os, relaycore, torch
        from relaycore import RaggedKV
        from relaycore.fast.triton import backend
        os.environ["TRITON_INTERPRET"] = "1"
        z, cu = torch.zeros(1, 2, 16), torch.tensor([0, 1], dtype=torch.int32)
        assert not backend.runs_on_the_cpu()
        print(relaycore.select_backend(z, cu, RaggedKV(z[:, :1], z[:, :1], cu)).name)
        try:
            relaycore.relay_attention(z, cu, RaggedKV(z[:, :1], z[:, :1], cu), backend="triton")
        except ValueError as exc:
            print(exc)
    """
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.splitlines() == [
        "torch",
        "backend 'triton' cannot run this batch: needs CUDA tensors here: TRITON_INTERPRET=1 was set after the "
        "kernels were imported, which left them compiled for a GPU (set it before importing triton), got device cpu"]


@in_process
def test_kernels_are_interpreted():
    assert type(kernels.partial_kernel).__name__ == "InterpretedFunction"


@in_process
@SETTINGS
@given(batch=batches(dtypes=("float16", "float32"), **SPACE))
def test_tiny_tiles_match_the_oracle(batch, poisoned_allocations):
    _assert_close(_run(batch, TINY), batch, TINY)


@in_process
@SETTINGS
@given(batch=batches(dtypes=("float16",), **SPACE))
def test_tall_tiles_match_the_oracle(batch, poisoned_allocations):
    _assert_close(_run(batch, TALL), batch, TALL)


@in_process
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=batches(dtypes=("float16", "bfloat16"), value_scales=(2.0**-20,), **SPACE),
       config=st.sampled_from([TINY, TALL]))
def test_values_scaled_to_subnormals_match_the_oracle(batch, config, poisoned_allocations):
    """Values of a few ``2^-24``: fp16 outputs that round absolutely, weights times values that
    reach fp32's subnormals in bf16 (the bound's ``2 tau`` and Lemma 6's terms)."""
    _assert_close(_run(batch, config), batch, config)


@in_process
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=batches(dtypes=("float16", "float32"), **SPACE))
def test_public_entry_matches_the_oracle(batch, poisoned_allocations):
    args, kwargs = batch.to_torch("cpu")
    _assert_close(relaycore.relay_attention(*args, **kwargs, backend="triton"), batch)
    _assert_close(relaycore.relay_attention(*args, **kwargs, plan=prepare(*args, **kwargs)), batch)


@in_process
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=batches(dtypes=("float16", "float32"), **{**SPACE, "head_dims": (1, 5, 24, 40)}),
       config=st.sampled_from([TINY, TALL]), fused=st.booleans())
def test_a_head_dim_that_is_not_a_power_of_two_matches_the_oracle(batch, config, fused, poisoned_allocations):
    """A tile's head axis is the power of two from 16 that holds ``D`` (16 for 1 and 5, 32 for
    24, 64 for 40); the columns past ``D`` are not read: q and the keys and values are views of
    rows whose columns past ``D`` are NaN, and a read of one would make the result NaN. Nor
    written: ``out`` is followed by a guarded tail, which a column stored past the last row's
    ``D`` would reach (a row's overflow into the next row is written over by that row, in the
    interpreter's order)."""
    args, kwargs = batch.to_torch("cpu")
    q, cu_seqlens_q, kv, prefixes = in_nan_padded_rows(args)
    meta = validate(q, cu_seqlens_q, kv, prefixes, **kwargs)
    out, tail_intact = with_guarded_tail((meta.total_q, meta.num_q_heads, meta.head_dim), q.dtype)
    result = run_planned(plan(meta, config=config, fused_merge=fused), q, kv, prefixes, out=out)
    assert tail_intact(), "a store past the last row's head_dim columns"
    _assert_close(result, batch, config)


@in_process
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=batches(dtypes=("float16", "float32"), **{**SPACE, "max_q_len": 10, "max_levels": 1}))
def test_single_pass_requests_match_the_oracle(batch, poisoned_allocations):
    """Requests of up to 30 rows: under TINY those of 17 and more read their context in one pass."""
    _assert_close(_run(batch, TINY), batch, TINY)


def _append_batch(dtype="float16", block_size=None, seed=0):
    # GQA 3; under TINY requests 0 and 2 (27 and 21 rows) are single-pass, 1 and 3 split; 3 has no prefix
    return make_batch([9, 1, 7, 2], [20, 33, 7, 25], prefix_lens=[[7, 37]], prefix_ids=[[1, 0, 1, -1]], num_q_heads=6,
                      num_kv_heads=2, head_dim=16, dtype=dtype, block_size=block_size, seed=seed)


@in_process
def test_single_pass_requests_own_no_slots_and_are_planned_from_the_request_alone():
    args, kwargs = _append_batch().to_torch("cpu")
    meta = validate(*args, **kwargs)
    assert single_pass_requests(meta, TINY).tolist() == [True, False, True, False]
    planned = plan(meta, config=TINY)
    counts = np.diff(planned.slot_offsets.numpy())
    assert counts[:9].sum() == 0 and counts[10:17].sum() == 0 and counts[9] > 0 and counts[17:].min() > 0
    assert [x.single_pass for x in planned.launches if x.level < 0].count(True) == 1
    two_levels = validate(*_two_level_append_batch().to_torch("cpu")[0], **kwargs)
    assert single_pass_requests(two_levels, TINY).tolist() == [True, False, False, False, True], (
        "the single pass walks level 0's prefix: a request that reads a second level is split")
    # beside a fused merge: the other tokens fold as the merge kernel would, the counters end at zero
    fused = plan(meta, config=TINY, fused_merge=True)
    assert _same(run_planned(fused, args[0], args[2], args[3]), run_planned(planned, args[0], args[2], args[3]))
    assert not fused.arrivals.any()


@in_process
def test_the_merge_runs_over_the_tokens_that_can_have_slots_and_its_list_changes_no_bit(poisoned_allocations):
    """Beside single-pass requests, whose tokens have no slots, the merge launch runs a program
    per listed token and head (``Plan.merge_tokens``), not per token and head of the batch: the
    same bits. A graph plan lists each step's tokens with slots and their count
    (``Plan.merge_count``) in a fixed grid of ``Config.merge_programs``, here 3 programs per
    head, whose each folds several tokens: its tall requests (40 and 36 tokens) are single-pass
    at every step over one level, and over two at the steps where they read no second-level
    prefix."""
    args, kwargs = _append_batch().to_torch("cpu")
    planned = plan(validate(*args, **kwargs), config=TINY)
    assert planned.merge_tokens.tolist() == np.flatnonzero(np.diff(planned.slot_offsets.numpy())).tolist() == [9, 17, 18]
    every_token = dataclasses.replace(planned, merge_tokens=None)
    assert _same(run_planned(planned, args[0], args[2], args[3]), run_planned(every_token, args[0], args[2], args[3]))
    decode = make_batch([1, 1], [5, 9], prefix_lens=[[7]], prefix_ids=[[0, 0]], head_dim=16, dtype="float16")
    assert plan(validate(*decode.to_torch("cpu")[0]), config=TINY).merge_tokens is None, "every token has slots"
    config = dataclasses.replace(TINY, merge_programs=6)
    for levels, seconds in ((1, [None, None]), (2, [-1, 0, -1])):
        engine = EngineTensors([40, 1, 36], num_q_heads=2, num_kv_heads=2, head_dim=16, dtype=torch.float16,
                               device="cpu", page_size=8, max_blocks=8, level_rows=[40, 30][:levels],
                               level_prefixes=[2, 2][:levels], seed=4)
        rng = np.random.default_rng(levels)
        engine.step(rng)
        graph = prepare_graph(*engine.args(), config=config)
        assert graph.plan.merge_tokens.shape[0] == (1 if levels == 1 else 77), graph
        assert merge_grid(graph.plan) == (1 if levels == 1 else 3)
        counts = []
        for second in seconds:
            engine.step(rng)
            if second is not None:
                engine.levels[1].prefix_ids[[0, 2]] = second
            graph.update(*engine.args())
            with_slots = np.flatnonzero(np.diff(graph.plan.slot_offsets.numpy()))
            counts.append(int(graph.plan.merge_count))
            assert graph.plan.merge_tokens[: counts[-1]].tolist() == with_slots.tolist(), (levels, second)
            back = op._unpack(*op._pack(graph.plan), engine.q, graph.plan.softmax_scale)  # what torch.compile runs
            assert back.merge_tokens is graph.plan.merge_tokens and back.merge_count is graph.plan.merge_count
            q, cu, kv, prefixes = engine.args()
            alone = run_planned(plan(validate(q, cu, kv, prefixes), config=config), q, kv, prefixes)
            assert _same(relaycore.relay_attention(q, cu, kv, prefixes, plan=graph), alone), (levels, second)
        assert counts == ([1, 1] if levels == 1 else [1, 77, 1]), counts


@in_process
@pytest.mark.parametrize("block_size", [None, 4])
def test_requests_without_a_prefix_in_one_chunk_write_their_result_with_the_merge_bits(block_size):
    # under TALL: requests 0 and 3 see no prefix (no id; an empty prefix), their own KV is one
    # chunk of 16 and their rows a 16-row tile, shorter than the tallest; 1 reads a prefix, 2's
    # 40 own keys are three chunks of 16
    batch = make_batch([1, 1, 1, 2], [5, 9, 40, 3], prefix_lens=[[0, 7]], prefix_ids=[[-1, 1, -1, 0]], num_q_heads=4,
                       num_kv_heads=2, head_dim=16, dtype="float16", block_size=block_size)
    args, kwargs = batch.to_torch("cpu")
    meta = validate(*args, **kwargs)
    assert single_pass_requests(meta, TALL).tolist() == [True, False, False, True]
    tall_rows = validate(*make_batch([9], [9], num_q_heads=4, num_kv_heads=2, head_dim=16).to_torch("cpu")[0])
    assert not single_pass_requests(tall_rows, TALL).any(), "18 rows take the tallest tile: they keep the merge"
    assert not single_pass_requests(meta, TALL, unshared=False).any()
    direct = plan(meta, config=TALL)
    counts = np.diff(direct.slot_offsets.numpy())
    assert counts[[0, 3, 4]].tolist() == [0, 0, 0] and counts[[1, 2]].min() > 0
    passes = [x for x in direct.launches if x.single_pass]
    assert len(passes) == 1 and not passes[0].reads_prefix, "no prefix walk is compiled for them"
    merged = plan(meta, config=TALL, unshared_single_pass=False)
    assert _same(run_planned(direct, args[0], args[2], args[3]), run_planned(merged, args[0], args[2], args[3]))
    _assert_close(run_planned(direct, args[0], args[2], args[3]), batch, TALL)
    # a batch of such requests alone has no states and no merge launch
    alone = make_batch([1, 1], [5, 16], num_q_heads=4, num_kv_heads=2, head_dim=16, dtype="float16",
                       block_size=block_size)
    args, kwargs = alone.to_torch("cpu")
    meta = validate(*args, **kwargs)
    assert plan(meta, config=TALL).num_slots == 0
    assert _same(run_planned(plan(meta, config=TALL), args[0], args[2], args[3]),
                 run_planned(plan(meta, config=TALL, unshared_single_pass=False), args[0], args[2], args[3]))


@in_process
def test_the_items_that_read_the_most_keys_launch_first_and_the_order_changes_no_bit():
    args, kwargs = _append_batch().to_torch("cpu")
    planned = plan(validate(*args, **kwargs), config=TINY)
    (one_pass,) = [x for x in planned.launches if x.single_pass]
    fields = one_pass.items.numpy()
    # (first token, first row): request 0 (tokens 0-8) reads 37 + 20 and 37 + 17 keys, request 2
    # (tokens 10-16) 37 + 7 and 37 + 6; each request's last rows see the most own keys
    tok_first, row0 = kernels.ITEM_FIELDS.index("tok_first"), kernels.ITEM_FIELDS.index("row0")
    assert fields[:, [tok_first, row0]].tolist() == [[0, 16], [0, 0], [10, 16], [10, 0]]
    reversed_order = dataclasses.replace(planned, launches=tuple(
        dataclasses.replace(x, items=x.items.flip(0).contiguous()) for x in planned.launches))
    assert _same(run_planned(planned, args[0], args[2], args[3]), run_planned(reversed_order, args[0], args[2], args[3]))


def _shared_prefix_batch(dtype="float16", block_size=None, seed=0):
    # 5 requests, 2 levels; requests 0, 2, 3 share level-0 prefix 1; a q_len 0 request; GQA 3
    return make_batch([2, 1, 3, 1, 0], [5, 33, 3, 20, 4], prefix_lens=[[7, 37], [19]],
                      prefix_ids=[[1, 0, 1, 1, -1], [0, -1, 0, 0, 0]], num_q_heads=6, num_kv_heads=2, head_dim=16,
                      dtype=dtype, block_size=block_size, seed=seed)


@in_process
def test_runs_are_bitwise_identical():
    batch = _shared_prefix_batch()
    first, second = _run(batch, TINY), _run(batch, TINY)
    assert _same(first, second)


@in_process
def test_relay_and_per_request_grouping_give_the_same_bits():
    batch = _shared_prefix_batch()
    relay, per_request = _run(batch, TINY, relay=True), _run(batch, TINY, relay=False)
    _assert_close(relay, batch, TINY)
    assert _same(relay, per_request)


@in_process
@settings(max_examples=25, deadline=None)
@given(batch=batches(dtypes=("float16", "float32"), **SPACE))
def test_the_fused_merge_and_the_merge_kernel_give_the_same_bits(batch):
    args, kwargs = batch.to_torch("cpu")
    planned = plan(validate(*args, **kwargs), config=TINY, fused_merge=True)
    fused = run_planned(planned, args[0], args[2], args[3])
    assert _same(fused, _run(batch, TINY, fused_merge=False))
    assert not planned.arrivals.any(), "the arrival counters are left at zero for the next call"
    assert _same(fused, run_planned(planned, args[0], args[2], args[3]))


@in_process
@settings(max_examples=25, deadline=None)
@given(batch=batches(dtypes=("float16", "float32"), **SPACE))
def test_the_unmasked_blocks_change_no_bit(batch):
    """Walking the fully seen blocks without masks is the masked walk with its identity selects
    left out: the same bits, the causal diagonal and ragged chunk ends included."""
    masked = dataclasses.replace(TALL, unmasked_min_block_m=2 * TALL.block_m)
    assert _same(_run(batch, TALL), _run(batch, masked))
    assert _same(_run(batch, dataclasses.replace(TALL, unmasked_min_block_m=16)), _run(batch, masked))


@in_process
@settings(max_examples=25, deadline=None)
@given(batch=batches(dtypes=("float16",), layouts=("paged",), **SPACE))
def test_carried_pages_change_no_bit(batch):
    """Reading each next block's pages a step ahead reads the same pages: the same bits, ragged
    chunk ends (a carried read past ``key_stop`` is masked) and odd page sizes included."""
    carried, own_step = (dataclasses.replace(TINY, carry_pages_min_block_m=m) for m in (16, 2 * TINY.block_m))
    assert _same(_run(batch, carried), _run(batch, own_step))


@in_process
@settings(max_examples=25, deadline=None)
@given(batch=batches(dtypes=("float16",), **SPACE), fused=st.booleans())
def test_computed_items_change_no_bit(batch, fused):
    """A launch whose items the kernel computes from its program id (``regular_items``) runs
    the items of its list."""
    assert _same(_run(batch, TALL, fused_merge=fused), _run(batch, TALL, fused_merge=fused, regular=False))


@in_process
def test_launches_of_one_group_in_chunk_major_order_are_computed():
    """A prefix that every request shares, and a request alone, need no list; the own tiles of
    several requests, and a list in any other order, read theirs."""
    shared = make_batch([1, 1, 1, 1], [5, 9, 3, 20], prefix_lens=[[70]], prefix_ids=[[0, 0, 0, 0]], num_q_heads=4,
                        num_kv_heads=2, head_dim=16, seed=2)
    decode = plan(validate(*shared.to_torch("cpu")[0], **shared.to_torch("cpu")[1]), config=TINY)
    assert [bool(x.regular) for x in decode.launches] == [x.level >= 0 for x in decode.launches]
    prefix = decode.launches[0].items.numpy()
    assert prefix.shape[0] > 1 and regular_items(prefix, TINY.block_m) == decode.launches[0].regular
    assert regular_items(prefix[::-1].copy(), TINY.block_m) == ()
    alone = make_batch([3], [40], prefix_lens=[[70]], prefix_ids=[[0]], num_q_heads=4, num_kv_heads=2, head_dim=16,
                       seed=2)
    assert all(x.regular for x in plan(validate(*alone.to_torch("cpu")[0], **alone.to_torch("cpu")[1]),
                                       config=TINY).launches)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=batches(dtypes=("float16",), **(SPACE | dict(max_batch=8, max_q_len=40))),
       config=st.sampled_from([TINY, TALL, default_config(16, "float16", 2)]), relay=st.booleans())
def test_the_regular_tuple_read_from_the_groups_is_regular_items_of_the_lists(batch, config, relay):
    """``plan`` reads each launch's ``regular`` from the groups it made the items of
    (``plan._regular``); ``regular_items`` of the lists themselves is the definition, and the
    kernel computes its items from that tuple: they must agree at every launch. The lists are
    longest first, where ``plan`` skips the sort of items in order already (``_in_plan_order``)."""
    args, kwargs = batch.to_torch("cpu")
    meta = validate(*args, **kwargs)
    for launch in plan(meta, config=config, relay=relay).launches:
        items = launch.items.numpy()
        assert launch.regular == regular_items(items, launch.block_m), launch
        assert np.array_equal(items, longest_first(items, meta.group_size, meta.causal and launch.level < 0)), launch


def test_a_level_of_one_prefix_and_one_chunk_size_plans_as_the_sorted_groups_would():
    """Decode batches whose users share one prefix and one chunk size (``_prefix_groups``' one
    group, without sorting) plan the same lists and tuples as when one request reads another
    prefix, or none, and the others still share."""
    for ids in ([0, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0]):
        shared = make_batch([1, 1, 2, 1], [5, 9, 3, 20], prefix_lens=[[70, 30]], prefix_ids=[ids], num_q_heads=4,
                            num_kv_heads=2, head_dim=16, seed=2)
        planned = plan(validate(*shared.to_torch("cpu")[0], **shared.to_torch("cpu")[1]), config=TINY)
        level = [x for x in planned.launches if x.level == 0]
        users = [b for b, i in enumerate(ids) if i >= 0]
        assert sum(int(x.tokens.numel()) for x in level) == sum([1, 1, 2, 1][b] for b in users)
        for launch in planned.launches:
            assert launch.regular == regular_items(launch.items.numpy(), launch.block_m)


def test_a_query_layout_is_that_of_its_batch_whatever_was_planned_before():
    """``query_layout`` is cached by the query counts (``plan._query_layout``): batches with the
    same ``cu_seqlens_q`` but other heads per KV head or configs (or prefix levels, which it does
    not depend on), planned one after the other, each get their own layout, equal to its
    definition, in read-only arrays."""
    for group, levels, config in ((1, 0, TINY), (4, 0, TINY), (4, 2, TINY), (4, 2, TALL), (1, 1, TALL)):
        b = make_batch([1, 9, 0, 2], [5, 9, 3, 20], prefix_lens=[[7]] * levels, prefix_ids=[[0, 0, -1, 0]] * levels,
                       num_q_heads=2 * group, num_kv_heads=2, head_dim=16, seed=group)
        args, kwargs = b.to_torch("cpu")
        queries = query_layout(validate(*args, **kwargs), config)
        q_lens = np.array([1, 9, 0, 2])
        rows = q_lens * group
        assert np.array_equal(queries.q_lens, q_lens) and np.array_equal(queries.first_token, [0, 1, 10, 10])
        assert np.array_equal(queries.rows, rows)
        assert np.array_equal(queries.own_tile, tile_height(rows, config, prefix=False))
        assert np.array_equal(queries.tall, single_pass(rows, config)), (group, levels)
        assert queries.tall[1] == (group * 9 >= config.block_m)  # the cases differ in it
        assert np.array_equal(queries.token_request, [0] + [1] * 9 + [3, 3])
        assert not any(values.flags.writeable for values in queries)


def test_a_prefix_level_planned_from_the_cache_is_the_level_planned_afresh():
    """A prefix level's launches are cached by what decides them (``plan._prefix_launches``):
    decode steps that keep the prefixes and grow the own KV, then batches that change a prefix
    id, a prefix length, the query counts, heads per KV head, a config or ``relay``, planned one
    after the other, each get the work planned with an empty cache, in read-only arrays."""
    steps = [([1, 1, 1, 1], [5, 9, 3, 20], [[70, 30]], [[0, 0, 1, 0]], 1, TINY, True),
             ([1, 1, 1, 1], [6, 10, 4, 21], [[70, 30]], [[0, 0, 1, 0]], 1, TINY, True),
             ([1, 1, 1, 1], [6, 10, 4, 21], [[70, 30]], [[0, 1, 1, -1]], 1, TINY, True),
             ([1, 1, 1, 1], [6, 10, 4, 21], [[70, 90]], [[0, 1, 1, -1]], 1, TINY, True),
             ([1, 3, 1, 1], [6, 10, 4, 21], [[70, 90]], [[0, 1, 1, -1]], 1, TINY, True),
             ([1, 3, 1, 1], [6, 10, 4, 21], [[70, 90]], [[0, 1, 1, -1]], 4, TINY, True),
             ([1, 3, 1, 1], [6, 10, 4, 21], [[70, 90]], [[0, 1, 1, -1]], 4, TALL, True),
             ([1, 3, 1, 1], [6, 10, 4, 21], [[70, 90]], [[0, 1, 1, -1]], 4, TALL, False),
             ([1, 1, 1, 1], [5, 9, 3, 20], [[70, 30]], [[0, 0, 1, 0]], 1, TINY, True)]
    plan_module._cached_prefix_launches.cache_clear()  # of the tests before
    hits = []  # of the cache, by the step's plan_work
    for q_lens, kv_lens, prefix_lens, prefix_ids, group, config, relay in steps:
        b = make_batch(q_lens, kv_lens, prefix_lens=prefix_lens, prefix_ids=prefix_ids, num_q_heads=2 * group,
                       num_kv_heads=2, head_dim=16, seed=3)
        args, kwargs = b.to_torch("cpu")
        meta = validate(*args, **kwargs)
        cached = plan_module.plan_work(meta, config, relay=relay)
        hits.append(plan_module._cached_prefix_launches.cache_info().hits)
        plan_module._cached_prefix_launches.cache_clear()
        afresh = plan_module.plan_work(meta, config, relay=relay)
        assert cached.fold_steps == afresh.fold_steps and np.array_equal(cached.slot_offsets, afresh.slot_offsets)
        assert len(cached.launches) == len(afresh.launches)
        for x, y in zip(cached.launches, afresh.launches):
            for field in x._fields:
                assert np.array_equal(getattr(x, field), getattr(y, field)), (field, q_lens, prefix_ids)
            if x.level >= 0:
                assert not x.items.flags.writeable and not x.tokens.flags.writeable
    assert hits == [0, 1, 0, 0, 0, 0, 0, 0, 0]  # the second step's level from the first's


def test_a_tile_head_axis_is_the_power_of_two_from_16_that_holds_head_dim():
    widths = {d: block_d(d) for d in (1, 15, 16, 17, 24, 40, 80, 96, 128, 129, 192, 255, 256)}
    assert widths == {1: 16, 15: 16, 16: 16, 17: 32, 24: 32, 40: 64, 80: 128, 96: 128, 128: 128, 129: 256, 192: 256,
                      255: 256, 256: 256}
    # a head axis of 256 columns takes the wide configuration, whatever head_dim needs it
    assert default_config(192, "float16", 8) == default_config(256, "float16", 8) != default_config(128, "float16", 8)
    assert default_config(96, "float16", 8) == default_config(128, "float16", 8)


def test_a_fused_fold_is_as_tall_as_the_rows_it_folds():
    """16 rows at least (4 slots deep), then the power of two that holds the items' rows, up to
    64 rows and the tile's height."""
    fold_height = plan_module.fold_height
    assert [fold_height(rows, 64) for rows in (1, 4, 16, 17, 32, 33, 64)] == [16, 16, 16, 32, 32, 64, 64]
    assert fold_height(100, 128) == 64 and fold_height(20, 16) == 16


@in_process
@settings(max_examples=15, deadline=None)
@given(batch=batches(dtypes=("float16",), **SPACE))
def test_the_fused_merge_folds_tall_tiles_in_slices_with_the_same_bits(batch):
    """A 32-row tile folds its finished rows all at once (2 slots deep) or 16 at a time (4 deep,
    ``plan.fold_height`` capped at 16): the bits of the merge kernel's fold either way."""
    args, kwargs = batch.to_torch("cpu")
    launched = _run(batch, TALL, fused_merge=False)
    for tallest in (plan_module.MAX_FOLD_ROWS, 16):
        with mock.patch.object(plan_module, "MAX_FOLD_ROWS", tallest):
            planned = plan(validate(*args, **kwargs), config=TALL, fused_merge=True)
        assert all(launch.fold_rows <= tallest for launch in planned.launches)
        assert _same(run_planned(planned, args[0], args[2], args[3]), launched)
        assert not planned.arrivals.any()


def test_fold_steps_count_slices_times_reads():
    # 16 rows read 4 slots at once, 32 rows 2, 64 rows 1; slices run one after the other
    assert fold_steps(4, 16, 17) == 5  # a decode request at GQA 4, 17 slots
    assert fold_steps(32, 32, 17) == 9  # 8 such requests in one prefix tile
    assert fold_steps(32, 32, 9) == 5
    assert fold_steps(128, 64, 3) == 6  # two 64-row slices, 3 slots each


@in_process
def test_the_fused_merge_is_planned_for_a_small_batch():
    batch = _shared_prefix_batch()
    args, kwargs = batch.to_torch("cpu")
    meta = validate(*args, **kwargs)
    assert plan(meta, config=TINY).fused_merge and not plan(meta, config=TINY, fused_merge=False).fused_merge
    assert plan(meta, config=TINY).arrivals.shape == (meta.total_q, meta.num_q_heads)
    few = dataclasses.replace(TINY, fused_merge_max_tokens=meta.total_q - 1)
    assert not plan(meta, config=few).fused_merge and plan(meta, config=few).arrivals.numel() == 0
    planned = plan(meta, config=TINY)
    slots = int(np.diff(planned.slot_offsets.numpy()).max())
    steps = max(fold_steps(int(launch.items[:, kernels.ITEM_FIELDS.index("num_rows")].max()), launch.fold_rows, slots)
                for launch in planned.launches)  # the longest fold a program may run
    assert steps > 1
    assert plan(meta, config=dataclasses.replace(TINY, fused_merge_max_fold_steps=steps)).fused_merge
    assert not plan(meta, config=dataclasses.replace(TINY, fused_merge_max_fold_steps=steps - 1)).fused_merge
    # every token has a slot (its own KV ends with it), so a program reaches every row
    assert np.diff(plan(meta, config=TINY).slot_offsets.numpy()).min() >= 1


@in_process
@pytest.mark.parametrize("make", [_shared_prefix_batch, _append_batch], ids=["decode", "append"])
def test_paged_and_ragged_give_the_same_bits(make):
    ragged = _run(make(), TINY)
    for block_size in (1, 4, 5):
        assert _same(_run(make(block_size=block_size), TINY), ragged)


@in_process
@pytest.mark.parametrize("make", [_shared_prefix_batch, _append_batch], ids=["decode", "append"])
@pytest.mark.parametrize("config", [TINY, TALL], ids=["tiny", "tall"])
def test_a_request_alone_and_in_a_batch_gives_the_same_bits(make, config):
    batch = make()
    whole = _run(batch, config)
    for b in range(len(batch.recipe["q_lens"])):
        lo, hi = int(batch.cu_seqlens_q[b]), int(batch.cu_seqlens_q[b + 1])
        # request b alone: the same values, so slice them out of the batch's arrays
        args, kwargs = batch.to_torch("cpu")
        q, cu_q, kv, prefixes = args
        k_lo, k_hi = int(kv.cu_seqlens[b]), int(kv.cu_seqlens[b + 1])
        alone_kv = RaggedKV(kv.k[k_lo:k_hi], kv.v[k_lo:k_hi], torch.tensor([0, k_hi - k_lo], dtype=torch.int32))
        alone_prefixes = [level._replace(prefix_ids=level.prefix_ids[b : b + 1]) for level in prefixes]
        alone_q = q[lo:hi]
        meta = validate(alone_q, torch.tensor([0, hi - lo], dtype=torch.int32), alone_kv, alone_prefixes, **kwargs)
        alone = run_planned(plan(meta, config=config), alone_q, alone_kv, alone_prefixes)
        assert torch.equal(alone.out, whole.out[lo:hi]) and torch.equal(alone.lse, whole.lse[lo:hi]), f"request {b}"


def _two_level_append_batch(dtype="float16", seed=0):
    # under TINY and TALL, requests 0, 2 and 4 (40, 40, 36 rows at GQA 1) fill the tallest
    # tiles; 0 reads level 0 alone, 2 level 0 and level 1, 4 only level 1's empty prefix; the
    # decode request 1 reads both levels, 3 level 1
    return make_batch([40, 1, 40, 2, 36], [60, 33, 50, 25, 40], prefix_lens=[[7, 37], [11, 0]],
                      prefix_ids=[[1, 0, 1, -1, -1], [-1, 0, 0, 0, 1]], num_q_heads=2, num_kv_heads=2, head_dim=16,
                      dtype=dtype, seed=seed)


def _alone(batch, b: int, levels: int, config):
    """Request ``b`` of ``batch`` planned and run alone, with its first ``levels`` prefix levels:
    the same values, sliced out of the batch's arrays."""
    args, kwargs = batch.to_torch("cpu")
    q, cu_q, kv, prefixes = args
    lo, hi = int(cu_q[b]), int(cu_q[b + 1])
    k_lo, k_hi = int(kv.cu_seqlens[b]), int(kv.cu_seqlens[b + 1])
    alone_kv = RaggedKV(kv.k[k_lo:k_hi], kv.v[k_lo:k_hi], torch.tensor([0, k_hi - k_lo], dtype=torch.int32))
    alone_prefixes = [level._replace(prefix_ids=level.prefix_ids[b : b + 1]) for level in prefixes[:levels]]
    meta = validate(q[lo:hi], torch.tensor([0, hi - lo], dtype=torch.int32), alone_kv, alone_prefixes, **kwargs)
    return run_planned(plan(meta, config=config), q[lo:hi], alone_kv, alone_prefixes)


@in_process
@pytest.mark.parametrize("config", [TINY, TALL], ids=["tiny", "tall"])
def test_a_single_pass_request_has_its_bits_whatever_prefix_levels_its_batch_has(config):
    """A request whose rows fill the tallest tiles is single-pass where it reads no prefix past
    level 0 (``plan.single_pass_requests``), a property of the request: alone with one level,
    alone beside a second level it does not read, and in a batch where others read that level,
    its bits are the same. Until session 34 the batch's level count decided it, and a 64-token
    append request differed in 59 of its 64 rows once its batch had a second level."""
    batch = _two_level_append_batch()
    args, kwargs = batch.to_torch("cpu")
    meta = validate(*args, **kwargs)
    assert single_pass_requests(meta, config).tolist() == [True, False, False, False, True]
    whole = run_planned(plan(meta, config=config), args[0], args[2], args[3])
    _assert_close(whole, batch, config)
    for b, reads in enumerate([1, 2, 2, 2, 0]):  # the levels up to the last one it reads
        lo, hi = int(batch.cu_seqlens_q[b]), int(batch.cu_seqlens_q[b + 1])
        for levels in sorted({reads, 2}):
            alone = _alone(batch, b, levels, config)
            assert torch.equal(alone.out, whole.out[lo:hi]) and torch.equal(alone.lse, whole.lse[lo:hi]), (b, levels)


@in_process
def test_a_graph_plan_moves_a_tall_request_between_the_single_pass_and_the_split(poisoned_allocations):
    """In a batch of two prefix levels, a graph plan's tall request is single-pass at the steps
    where it reads no prefix past level 0 and split at the others: its padded single-pass launch
    runs some of its items, none or all, and every step has the bits of its own plan."""
    engine = EngineTensors([40, 1, 36], num_q_heads=2, num_kv_heads=2, head_dim=16, dtype=torch.float16, device="cpu",
                           page_size=8, max_blocks=8, level_rows=[40, 30], level_prefixes=[2, 2], seed=4)
    rng = np.random.default_rng(4)
    engine.step(rng)
    graph = prepare_graph(*engine.args(), config=TINY)
    (one_pass,) = [x for x in graph.plan.launches if x.single_pass]
    assert one_pass.count is not None and one_pass.reads_prefix, graph
    # on a GPU it follows launch 0 on the caller's stream; every other launch has a side stream
    on_caller, on_sides = lanes(graph.plan)
    assert on_caller == [0] + [i for i, x in enumerate(graph.plan.launches) if x is one_pass], on_caller
    assert on_sides == [i for i in range(1, len(graph.plan.launches)) if i not in on_caller], on_sides
    counts = set()
    for second in ([-1, 0, -1], [0, -1, -1], [1, 1, 0], [-1, -1, -1]):  # level 1's ids: 2, 1, 0, 2 single-pass
        engine.step(rng)
        write_metadata(engine.levels[1].prefix_ids, second)
        graph.update(*engine.args())
        q, cu, kv, prefixes = engine.args()
        meta = validate(q, cu, kv, prefixes)
        expected = [(second[b] < 0 or not int(np.diff(prefixes[1].cu_seqlens)[second[b]])) for b in (0, 2)]
        assert single_pass_requests(meta, TINY)[[0, 2]].tolist() == expected, second
        counts.add(int(one_pass.count))
        own = plan(meta, config=TINY)
        assert lanes(own)[0] == [0], "a step's own plan has no padded launch: launch 0 alone on the caller's stream"
        alone = run_planned(own, q, kv, prefixes)
        assert _same(relaycore.relay_attention(q, cu, kv, prefixes, plan=graph), alone), second
    assert len(counts) == 3 and max(counts) == one_pass.num_items, counts  # none, some and all of its items


@in_process
def test_empty_batch_and_empty_rows():
    batch = make_batch([0, 1], [0, 1], prefix_lens=[[0]], prefix_ids=[[0, 0]], head_dim=16, dtype="float16")
    result = _run(batch, TINY)
    _assert_close(result, batch, TINY)
    empty = make_batch([], [], head_dim=16, dtype="float16")
    out, lse = _run(empty, TINY)
    assert out.shape == (0, 2, 16) and lse.shape == (0, 2)


@in_process
def test_lse_is_natural_log():
    # one key with score s: lse = s exactly in natural log (base 2 would give s * log2(e))
    q = torch.full((1, 1, 16), 0.25, dtype=torch.float32)
    k = torch.full((1, 1, 16), 1.0, dtype=torch.float32)
    kv = RaggedKV(k, k, torch.tensor([0, 1], dtype=torch.int32))
    cu = torch.tensor([0, 1], dtype=torch.int32)
    out, lse = relaycore.relay_attention(q, cu, kv, softmax_scale=1.0, backend="triton")
    # one key, A = scale * sum_d |q_d k_d| = 4, head dim 16, in fp32: the derived bound (1.5e-5); base 2 would be 1.77 off
    tolerance = bounds.lse_bound(4.0, 1, 4.0, 16, bounds.precision("float32"))
    assert abs(float(lse) - 4.0) <= tolerance
    assert torch.equal(out, k)


@in_process
def test_supports_names_what_it_cannot_run(monkeypatch):
    def meta_of(head_dim=16, dtype=torch.float16, device="cpu"):
        q = torch.zeros(1, 2, head_dim, dtype=dtype, device=device)
        k = torch.zeros(1, 1, head_dim, dtype=dtype, device=device)
        return validate(q, torch.tensor([0, 1], dtype=torch.int32), RaggedKV(k, k, torch.tensor([0, 1], dtype=torch.int32)))

    assert backend.supports(meta_of()) is None
    assert all(backend.supports(meta_of(head_dim=d)) is None for d in (1, 48, 200, 256))
    assert backend.supports(meta_of(head_dim=257)) == "needs head_dim <= 256, got 257"
    assert "float64" in backend.supports(meta_of(dtype=torch.float64))
    with pytest.raises(ValueError, match="head_dim <= 256, got 320"):
        q = torch.zeros(1, 2, 320, dtype=torch.float16)
        k = torch.zeros(1, 1, 320, dtype=torch.float16)
        relaycore.relay_attention(q, torch.tensor([0, 1], dtype=torch.int32),
                                  RaggedKV(k, k, torch.tensor([0, 1], dtype=torch.int32)), backend="triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert "CUDA" in backend.supports(meta_of())
    from relaycore.dispatch import choose

    on_a_gpu = dataclasses.replace(meta_of(), device="cuda:0")
    monkeypatch.setattr(torch.version, "hip", None)
    assert backend.supports(on_a_gpu) is None
    monkeypatch.setattr(torch.version, "hip", "6.2.41133")
    assert "ROCm" in backend.supports(on_a_gpu)
    assert choose(on_a_gpu).name == "torch" and "ROCm" in choose(on_a_gpu).reason


@in_process
@pytest.mark.parametrize("block_size", [None, 4])
def test_views_with_the_negative_bit_give_the_bits_of_the_values_they_show(block_size):
    """``torch._neg_view(-x)`` equals ``x`` but holds ``-x`` in memory: the kernels read values,
    with a plan or without."""
    args, kwargs = _shared_prefix_batch(block_size=block_size).to_torch("cpu")
    q, cu, kv, prefixes = args
    negated = (torch._neg_view(-q), torch._neg_view(-cu),
               kv._replace(**{f: torch._neg_view(-getattr(kv, f)) for f in kv._fields}),
               [p._replace(k=torch._neg_view(-p.k), v=torch._neg_view(-p.v)) for p in prefixes])
    want = relaycore.relay_attention(*args, **kwargs, backend="triton")
    planned = prepare(*args, **kwargs)
    for got in (relaycore.relay_attention(*negated, **kwargs, backend="triton"),
                relaycore.relay_attention(negated[0], cu, negated[2], negated[3], **kwargs, plan=planned)):
        assert torch.equal(got.out, want.out) and torch.equal(got.lse, want.lse)


@in_process
@pytest.mark.parametrize("block_size", [None, 4], ids=["ragged", "paged"])
def test_a_plan_made_from_metadata_alone_refuses_kv_it_was_not_made_for(block_size):
    """``plan(meta)`` holds no signature of the call, but the metadata fix the KV tensors' heads,
    head_dim and (ragged, levels) rows, and the block table's rows and least columns: another
    shape would be read past its end or in the wrong place."""
    args, kwargs = _shared_prefix_batch(block_size=block_size).to_torch("cpu")
    q, cu, kv, prefixes = args
    planned = plan(validate(*args, **kwargs))
    assert _same(relaycore.relay_attention(*args, **kwargs, plan=planned),
                 relaycore.relay_attention(*args, **kwargs, backend="triton"))
    first, second = kv._fields[:2]
    rows = (slice(None), slice(0, 1)) if block_size else slice(0, 3)  # a page of 1 slot; 3 rows
    bad = [(first, kv._replace(**{first: getattr(kv, first)[rows]}), ValueError, "expected shape"),
           (second, kv._replace(**{second: getattr(kv, second)[..., :1, :]}), ValueError, "expected shape"),
           (first, kv._replace(**{first: getattr(kv, first).float()}), TypeError, "expected dtype float16"),
           (second, kv._replace(**{second: getattr(kv, second).numpy()}), TypeError, "expected a torch tensor")]
    if block_size:
        bad.append(("block_table", kv._replace(block_table=kv.block_table[:, :1]), ValueError, r"expected shape \(5, >= "))
    for field, other, error, message in bad:
        with pytest.raises(error, match=rf"^kv\.{field}: {message}"):
            relaycore.relay_attention(q, cu, other, prefixes, **kwargs, plan=planned)
    with pytest.raises(TypeError, match=r"^q: expected a dense \(torch.strided\) tensor, got layout torch.sparse_coo"):
        relaycore.relay_attention(q.to_sparse(), cu, kv, prefixes, **kwargs, plan=planned)
    short = [prefixes[0]._replace(k=prefixes[0].k[:-1]), prefixes[1]]
    with pytest.raises(ValueError, match=r"^prefixes\[0\]\.k: expected shape \(44, 2, 16\) \(the plan's\), got \(43, 2, 16\)"):
        relaycore.relay_attention(q, cu, kv, short, **kwargs, plan=planned)


@in_process
def test_a_plan_on_the_cpu_reads_a_changed_block_table_and_refuses_an_id_past_the_cache():
    """As on a GPU, the entries of the block table may change between a plan's calls (the
    kernels read them); on the CPU the entries read are also checked to be blocks of the cache,
    since the interpreter would read whatever lies at any address."""
    args, kwargs = _shared_prefix_batch(block_size=4).to_torch("cpu")
    q, cu, kv, prefixes = args
    plans = {"prepare": prepare(*args, **kwargs), "prepare_graph": prepare_graph(*args, **kwargs, config=TINY),
             "plan(meta)": plan(validate(*args, **kwargs))}
    read = {int(i) for b, n in enumerate(kv.kv_lens) for i in kv.block_table[b, : -(-int(n) // 4)]}
    spare = min(set(range(kv.k_cache.shape[0])) - read)
    k_cache, v_cache, moved = kv.k_cache.clone(), kv.v_cache.clone(), kv.block_table.clone()
    first = int(kv.block_table[0, 0])
    k_cache[spare], v_cache[spare], moved[0, 0] = kv.k_cache[first], kv.v_cache[first], spare
    elsewhere = kv._replace(k_cache=k_cache, v_cache=v_cache, block_table=moved)
    past = kv.block_table.clone()
    past[0, 0] = kv.k_cache.shape[0] + 100_000
    for name, planned in plans.items():
        want = relaycore.relay_attention(q, cu, kv, prefixes, **kwargs, plan=planned)
        assert _same(relaycore.relay_attention(q, cu, elsewhere, prefixes, **kwargs, plan=planned), want), name
        with pytest.raises(ValueError, match=r"kv\.block_table: expected block ids in \[0, \d+\) \(num_blocks of "
                                             r"kv\.k_cache\), got block_table\[0, 0\] = 100\d+"):
            relaycore.relay_attention(q, cu, kv._replace(block_table=past), prefixes, **kwargs, plan=planned)
    with pytest.raises(ValueError, match=r"kv\.block_table: expected block ids"):
        run_planned(plans["plan(meta)"], q, kv._replace(block_table=past), prefixes)
    with pytest.raises(ValueError, match=r"kv\.block_table: expected shape \(5, >= 9\) \(the plan's\), got shape \(5, 1\)"):
        run_planned(plans["plan(meta)"], q, kv._replace(block_table=kv.block_table[:, :1]), prefixes)
    step = torch.compile(lambda kv: relaycore.relay_attention(q, cu, kv, prefixes, **kwargs, plan=plans["prepare"]),
                         backend="aot_eager", fullgraph=True)
    assert _same(step(elsewhere), relaycore.relay_attention(q, cu, kv, prefixes, **kwargs, plan=plans["prepare"]))
    with pytest.raises(ValueError, match=r"kv\.block_table: expected block ids"):  # the op checks it too
        step(kv._replace(block_table=past))


@in_process
def test_a_plan_refuses_other_inputs():
    batch = _shared_prefix_batch()
    args, kwargs = batch.to_torch("cpu")
    planned = prepare(*args, **kwargs)
    q, cu, kv, prefixes = args
    with pytest.raises(ValueError, match="causal"):
        relaycore.relay_attention(q, cu, kv, prefixes, causal=not kwargs["causal"], plan=planned)
    with pytest.raises(ValueError, match="q: expected shape"):
        relaycore.relay_attention(q[1:], cu, kv, prefixes, plan=planned)
    with pytest.raises(TypeError, match=r"q: expected dtype float16 \(the plan's\), got float32"):
        relaycore.relay_attention(q.float(), cu, kv, prefixes, plan=planned)
    with pytest.raises(TypeError, match=r"q: expected a torch tensor \(the plan's\), got list"):
        relaycore.relay_attention(q.tolist(), cu, kv, prefixes, plan=planned)
    with pytest.raises(TypeError, match=r"q: expected a dense \(torch.strided\) tensor, got layout torch.sparse_coo"):
        relaycore.relay_attention(q.to_sparse(), cu, kv, prefixes, plan=planned)
    with pytest.raises(TypeError, match=r"kv\.v: expected a dense \(torch.strided\) tensor, got layout torch.sparse_coo"):
        relaycore.relay_attention(q, cu, kv._replace(v=kv.v.to_sparse()), prefixes, plan=planned)
    with pytest.raises(TypeError, match=r"kv\.k: expected shape .* dtype float16 on cpu \(the plan's\), got .* dtype float32"):
        relaycore.relay_attention(q, cu, kv._replace(k=kv.k.float()), prefixes, plan=planned)
    with pytest.raises(ValueError, match="prefixes"):
        relaycore.relay_attention(q, cu, kv, prefixes[:1], plan=planned)
    with pytest.raises(ValueError, match="backend"):
        relaycore.relay_attention(q, cu, kv, prefixes, backend="torch", plan=planned)
    paged = _shared_prefix_batch(block_size=4).to_torch("cpu")[0][2]
    assert isinstance(paged, PagedKV)
    with pytest.raises(ValueError, match="kv: expected RaggedKV"):
        relaycore.relay_attention(q, cu, paged, prefixes, plan=planned)
    # every tensor must have its planned shape, dtype and device (checked without a sync)
    one_head = RaggedKV(kv.k[:, :1].contiguous(), kv.v[:, :1].contiguous(), kv.cu_seqlens)
    with pytest.raises(ValueError, match=r"kv\.k: expected shape"):
        relaycore.relay_attention(q, cu, one_head, prefixes, plan=planned)
    with pytest.raises(ValueError, match=r"prefixes\[0\]\.k: expected shape"):
        relaycore.relay_attention(q, cu, kv, [prefixes[0]._replace(k=prefixes[0].k[:-1])] + list(prefixes[1:]), plan=planned)
    with pytest.raises(ValueError, match="cu_seqlens_q: expected shape"):
        relaycore.relay_attention(q, cu[:-1], kv, prefixes, plan=planned)
    with pytest.raises(TypeError, match="causal: expected a bool"):
        relaycore.relay_attention(q, cu, kv, prefixes, causal="yes", plan=planned)
    # softmax_scale=None means 1/sqrt(D) with a plan too: a plan made for another scale refuses it
    scaled = prepare(*args, **{**kwargs, "softmax_scale": 0.9})
    with pytest.raises(ValueError, match="softmax_scale"):
        relaycore.relay_attention(q, cu, kv, prefixes, causal=kwargs["causal"], plan=scaled)
    # Plan.run's defaults are relay_attention's: causal, 1/sqrt(D)
    assert kwargs["causal"] and kwargs.get("softmax_scale") is None
    assert _same(planned.run(q, cu, kv, prefixes), relaycore.relay_attention(q, cu, kv, prefixes, plan=planned))


@in_process
def test_a_plan_refuses_lengths_and_ids_that_changed_since_it_was_prepared():
    batch = _shared_prefix_batch(block_size=4)
    (q, cu, kv, prefixes), kwargs = batch.to_torch("cpu")
    planned = prepare(q, cu, kv, prefixes, **kwargs)
    _assert_close(relaycore.relay_attention(q, cu, kv, prefixes, **kwargs, plan=planned), batch)
    # the next decode step's lengths in a new tensor: on the CPU the values are compared
    longer = kv.kv_lens + 1
    with pytest.raises(ValueError, match=r"kv\.kv_lens: expected the values the plan was prepared with, got "
                                         r"kv\.kv_lens\[0\] = \d+ where the plan has \d+; prepare a new plan"):
        relaycore.relay_attention(q, cu, kv._replace(kv_lens=longer), prefixes, **kwargs, plan=planned)
    ids = prefixes[0].prefix_ids.clone()
    ids[0] = -1 if ids[0] >= 0 else 0  # another request's prefix, or none
    with pytest.raises(ValueError, match=r"prefixes\[0\]\.prefix_ids: expected the values the plan was prepared"):
        relaycore.relay_attention(q, cu, kv, [prefixes[0]._replace(prefix_ids=ids), *prefixes[1:]], **kwargs,
                                  plan=planned)
    # equal values in other tensors are the planned call
    same = kv._replace(kv_lens=kv.kv_lens.clone())
    _assert_close(relaycore.relay_attention(q, cu, same, prefixes, **kwargs, plan=planned), batch)


@in_process
@pytest.mark.parametrize("block_size", [None, 4], ids=["ragged", "paged"])
def test_metadata_on_the_host_gives_the_bits_of_metadata_on_the_device(block_size):
    """Metadata given as NumPy arrays is on the host (``validation.on_host``): it is read
    without a synchronization, and a plan holds a copy of a host block table that the kernels
    read in its place. The bits are those of the same metadata on q's device."""
    batch = _shared_prefix_batch(block_size=block_size)
    args, kwargs = batch.to_torch("cpu")
    host_args, _ = batch.to_torch("cpu", host_metadata=True)
    q, cu, kv, prefixes = host_args
    offsets = kv._fields[2]  # the block table, or the ragged KV's cu_seqlens
    assert isinstance(cu, np.ndarray) and isinstance(getattr(kv, offsets), np.ndarray)
    device = relaycore.relay_attention(*args, **kwargs, plan=prepare(*args, **kwargs))
    planned = prepare(*host_args, **kwargs)
    assert (planned.block_table is not None) == (block_size is not None)
    if block_size:  # the planned entries, 0 past each request's last block (never read)
        used = np.arange(kv.block_table.shape[1])[None, :] < -(-kv.kv_lens[:, None] // block_size)
        assert torch.equal(planned.block_table, torch.from_numpy(np.where(used, kv.block_table, 0)))
    assert _same(relaycore.relay_attention(*host_args, **kwargs, plan=planned), device)
    assert _same(relaycore.relay_attention(*host_args, **kwargs, backend="triton"), device)
    graph = prepare_graph(*host_args, **kwargs, config=TINY)
    alone = run_planned(plan(validate(*args, **kwargs), config=TINY), args[0], args[2], args[3])
    assert _same(relaycore.relay_attention(*host_args, **kwargs, plan=graph), alone)
    # a plan holds the host values: equal values in other arrays are the planned call, changed ones are refused
    copies = kv._replace(**{offsets: getattr(kv, offsets).copy()})
    assert _same(relaycore.relay_attention(q, cu.copy(), copies, prefixes, **kwargs, plan=planned), device)
    if block_size:
        kv.block_table[0, 0] += 1
        with pytest.raises(ValueError, match=r"kv\.block_table: expected the values the plan was prepared with, got "
                                             r"kv\.block_table\[0, 0\] = \d+ where the plan has \d+"):
            relaycore.relay_attention(q, cu, kv, prefixes, **kwargs, plan=planned)
    prefixes[0].prefix_ids[0] = -1
    with pytest.raises(ValueError, match=r"prefixes\[0\]\.prefix_ids: expected the values the plan was prepared"):
        relaycore.relay_attention(q, cu, kv, prefixes, **kwargs, plan=graph)
    # equal values in another dtype are refused as another tensor dtype is (the call without a plan refuses floats)
    for name, planned_call in (("prepare", planned), ("prepare_graph", graph)):
        with pytest.raises(TypeError, match=r"cu_seqlens_q: expected dtype int32 \(the plan's\), got float64"):
            relaycore.relay_attention(q, cu.astype(np.float64), kv, prefixes, **kwargs, plan=planned_call)
    with pytest.raises(TypeError, match=r"cu_seqlens_q: expected a NumPy array of shape \(\d+,\) \(the plan's\), "
                                         r"got shape \(\d+,\), dtype int32 on cpu"):
        relaycore.relay_attention(q, torch.from_numpy(cu), kv, prefixes, **kwargs, plan=planned)
    with pytest.raises(TypeError, match=r"cu_seqlens_q: expected shape \(\d+,\), dtype int32 on cpu \(the plan's\), "
                                         r"got a list"):
        relaycore.relay_attention(*args[:1], cu.tolist(), *args[2:], **kwargs, plan=prepare(*args, **kwargs))


@in_process
@pytest.mark.parametrize("block_size", [None, 4], ids=["ragged", "paged"])
def test_plans_of_inference_tensors_give_the_bits_of_the_call(block_size):
    """A serving loop under ``torch.inference_mode``: its tensors keep no version counter, so a
    plan stamps their values where reading them is free (here, on the CPU) and nothing else."""
    batch = _shared_prefix_batch(block_size=block_size)
    want = relaycore.relay_attention(*batch.to_torch("cpu")[0], **batch.to_torch("cpu")[1], backend="triton")
    with torch.inference_mode():
        args, kwargs = batch.to_torch("cpu")
        assert args[1].is_inference()
        planned, graph = prepare(*args, **kwargs), prepare_graph(*args, **kwargs, config=TINY)
        assert _same(relaycore.relay_attention(*args, **kwargs, plan=planned), want)
        alone = run_planned(plan(validate(*args, **kwargs), config=TINY), *args[:1], *args[2:])
        assert _same(relaycore.relay_attention(*args, **kwargs, plan=graph), alone)
        args[1][1] += 1
        for planned_call in (planned, graph):
            with pytest.raises(ValueError, match=r"cu_seqlens_q: expected the values the plan was prepared with"):
                relaycore.relay_attention(*args, **kwargs, plan=planned_call)


@in_process
def test_host_metadata_of_any_int_dtype_and_layout_gives_the_same_bits():
    """int64 NumPy metadata, a block table in column-major order, and entries past each
    request's last block that no int32 holds (never read): the bits of int32 tensors."""
    batch = _shared_prefix_batch(block_size=4)
    args, kwargs = batch.to_torch("cpu")
    expected = relaycore.relay_attention(*args, **kwargs, backend="triton")
    (q, cu, kv, prefixes), _ = batch.to_torch("cpu", host_metadata=True)
    table = np.asfortranarray(kv.block_table.astype(np.int64))
    used = np.arange(table.shape[1])[None, :] < -(-kv.kv_lens[:, None] // 4)
    assert not used.all()
    table[~used] = 2**40
    wide = (cu.astype(np.int64), PagedKV(kv.k_cache, kv.v_cache, table, kv.kv_lens.astype(np.int64)),
            [p._replace(cu_seqlens=p.cu_seqlens.astype(np.int64), prefix_ids=p.prefix_ids.astype(np.int64))
             for p in prefixes])
    planned = prepare(q, *wide, **kwargs)
    assert planned.block_table.is_contiguous() and int(planned.block_table.max()) < kv.k_cache.shape[0]
    for got in (relaycore.relay_attention(q, *wide, **kwargs, plan=planned),
                relaycore.relay_attention(q, *wide, **kwargs, backend="triton")):
        assert _same(got, expected)


@in_process
@pytest.mark.parametrize("block_size", [None, 4])
def test_int64_metadata_tensors_give_the_bits_of_int32_ones(block_size):
    """``make_batch(metadata_dtype="int64")``: the same values with every offset, length, id and
    block table entry an int64 tensor (the contract takes both)."""
    from relaycore.testing import make_batch

    def batch(metadata_dtype):
        return make_batch([1, 3, 0], [9, 5, 2], [[6, 3]], [[0, 1, -1]], num_q_heads=4, num_kv_heads=2, head_dim=16,
                          dtype="float16", block_size=block_size, seed=4, metadata_dtype=metadata_dtype)

    narrow, wide = batch("int32"), batch("int64")
    (q, cu, kv, prefixes), kwargs = wide.to_torch("cpu")
    assert cu.dtype == torch.int64 and all(x.dtype == torch.int64 for x in kv[2:])
    expected = relaycore.relay_attention(*narrow.to_torch("cpu")[0], **kwargs, backend="triton")
    got = relaycore.relay_attention(q, cu, kv, prefixes, **kwargs, backend="triton")
    assert _same(got, expected)
    _assert_close(got, wide)


@in_process
def test_a_call_with_a_plan_refuses_prefixes_that_are_not_a_list_of_levels():
    """As a call without a plan does: a single ``PrefixLevel`` (a ``NamedTuple``) was taken
    apart into its four fields, and a level given as a plain tuple failed with an
    ``AttributeError``."""
    batch = _shared_prefix_batch()
    (q, cu, kv, prefixes), kwargs = batch.to_torch("cpu")
    planned = prepare(q, cu, kv, prefixes, **kwargs)
    for plan_or_none in (planned, None):
        with pytest.raises(TypeError, match="prefixes: expected a list or tuple of relaycore.PrefixLevel, got "
                                            "PrefixLevel"):
            relaycore.relay_attention(q, cu, kv, prefixes[0], **kwargs, backend="triton", plan=plan_or_none)
        with pytest.raises(TypeError, match=r"prefixes\[1\]: expected relaycore.PrefixLevel, got tuple"):
            relaycore.relay_attention(q, cu, kv, [prefixes[0], tuple(prefixes[1])], **kwargs, backend="triton",
                                      plan=plan_or_none)


@in_process
def test_a_call_to_be_differentiated_is_refused_by_the_kernels_without_a_backward():
    batch = _shared_prefix_batch(dtype="float32")
    (q, cu, kv, prefixes), kwargs = batch.to_torch("cpu")
    planned = prepare(q, cu, kv, prefixes, **kwargs)
    q.requires_grad_()
    assert validate(q, cu, kv, prefixes, **kwargs).needs_grad
    with pytest.raises(ValueError, match=r"backend 'triton' cannot run this batch: has no backward, and an input "
                                         r"requires grad \(use backend='torch', or torch.no_grad\(\)\)"):
        relaycore.relay_attention(q, cu, kv, prefixes, **kwargs, backend="triton")
    with pytest.raises(ValueError, match=r"plan: expected a call without gradients .*, got an input that requires grad"):
        relaycore.relay_attention(q, cu, kv, prefixes, **kwargs, plan=planned)
    with torch.no_grad():  # inference: the kernels run
        assert not validate(q, cu, kv, prefixes, **kwargs).needs_grad
        _assert_close(relaycore.relay_attention(q, cu, kv, prefixes, **kwargs, plan=planned), batch)
    out, _ = relaycore.relay_attention(q, cu, kv, prefixes, **kwargs, backend="torch")
    out.sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()


def test_on_a_gpu_a_plan_refuses_the_planned_tensors_written_in_place_and_trusts_others():
    # a GPU tensor's values are not read (that would synchronize): its stamp holds no values,
    # and only an in-place write to the very tensor planned with is seen, by its version counter
    cu = torch.tensor([0, 1, 2], dtype=torch.int32)
    kv = RaggedKV(torch.zeros(5, 1, 16), torch.zeros(5, 1, 16), torch.tensor([0, 2, 5], dtype=torch.int32))
    stamps = tuple(stamp._replace(values=None) for stamp in stamp_metadata(cu, kv, (), block_table=False))
    check_metadata(stamps, cu, kv, ())
    check_metadata(stamps, cu, kv._replace(cu_seqlens=torch.tensor([0, 3, 5], dtype=torch.int32)), ())  # trusted
    kv.cu_seqlens[1] = 3
    with pytest.raises(ValueError, match=r"kv\.cu_seqlens: expected the values the plan was prepared with, got the "
                                         r"same tensor written in place since \(its version counter 0 -> 1\)"):
        check_metadata(stamps, cu, kv, ())


@in_process
def test_a_block_table_with_strided_columns_reads_the_right_pages():
    batch = make_batch([2, 3], [5, 6], num_q_heads=4, num_kv_heads=2, head_dim=16, block_size=2, seed=1)
    (q, cu, kv, prefixes), kwargs = batch.to_torch("cpu")
    columns_strided = kv._replace(block_table=kv.block_table.t().contiguous().t())
    assert columns_strided.block_table.stride(1) != 1
    _assert_close(relaycore.relay_attention(q, cu, columns_strided, prefixes, **kwargs, backend="triton"), batch)


@in_process
def test_chunks_and_tiles_depend_on_the_request_alone():
    # decode: about 128 programs over the KV heads, at least min_chunk keys, powers of two
    assert [decode_chunks(h) for h in (1, 4, 8, 16, 32, 64, 128, 256)] == [16, 16, 16, 8, 4, 2, 1, 1]
    cfg = default_config(128, "float16", 32)
    assert [chunk_size(n, 1, cfg) for n in (1, 512, 2048, 8192, 16384)] == [256, 256, 512, 2048, 4096]
    cfg = default_config(128, "float16", 8)
    assert [chunk_size(n, 4, cfg) for n in (1, 512, 2048, 8192, 16384)] == [256, 256, 256, 512, 1024]
    # more rows per request: fewer chunks; 16 tiles of rows: one chunk
    assert chunk_size(8192, 32, cfg) == 1024 and chunk_size(8192, 256, cfg) == 8192
    assert [tile_height(r, cfg, prefix=False) for r in (1, 16, 17, 64, 65, 1000)] == [16, 16, 32, 64, 128, 128]
    assert [tile_height(r, cfg, prefix=True) for r in (1, 64, 65)] == [64, 64, 128]
    with pytest.raises(ValueError, match="block_n"):
        Config(block_m=64, prefix_block_m=64, min_block_m=16, block_n=8, short_block_n=16, min_chunk=64, target_chunks=8,
               num_warps=4, num_stages=2)


def test_chunk_sizes_and_tile_heights_are_the_least_doublings_that_hold_them():
    """``config._doubled_to``, behind ``chunk_size`` and ``tile_height``: ``start * 2^k`` for the
    least ``k >= 0`` that reaches ``need``, elementwise and for a scalar."""
    from relaycore.fast.triton.config import _doubled_to

    need = np.arange(-3, 1 << 17)
    for start in (1, 16, 48, 64, 256):
        got = _doubled_to(start, need)
        doublings = got // start
        assert got.dtype == np.int64 and np.all(got % start == 0) and np.all(doublings & (doublings - 1) == 0)
        assert np.all(got >= need) and np.all((got == start) | (got // 2 < need)), start
        assert [_doubled_to(start, int(n)) for n in need[:40]] == got[:40].tolist()
    assert _doubled_to(16, (1 << 52) + 1) == 1 << 53


def test_tall_tiles_carry_their_pages():
    cfg = default_config(128, "float16", 8)
    # an append tile: 128 rows; the short own tiles walk a decode request's own keys in one step
    assert cfg.carries_pages(128) and not cfg.carries_pages(64) and not cfg.carries_pages(16)


@in_process
def test_plan_slots_cover_every_chunk_of_every_segment():
    batch = _shared_prefix_batch()
    args, kwargs = batch.to_torch("cpu")
    meta = validate(*args, **kwargs)
    p = plan(meta, config=TINY)
    offsets = p.slot_offsets.numpy()
    written = np.zeros(p.num_slots, dtype=np.int64)
    g = meta.group_size
    for launch in p.launches:
        items, slots, tokens = launch.items.numpy(), launch.slots.numpy(), launch.tokens.numpy()
        for tok_base, row0, rows, _, _, _, _, chunk, tok_first, _, _ in items:
            for r in range(row0, row0 + rows):
                if r % g == 0 and not launch.single_pass:  # one row per token is enough to name its slot
                    written[slots[tok_base + r // g] + chunk] += 1
                if tok_first >= 0:
                    assert tokens[tok_base + r // g] == tok_first + r // g, "tok_first names consecutive tokens"
    assert np.all(written == 1), "each slot is written by exactly one item (per KV head)"
    assert offsets[-1] == p.num_slots


def _steps_from_work_lists(meta, planned) -> np.ndarray:
    """Steps per token read off the plan's work items, as the kernels walk them: the most
    steps (of its launch's ``block_n_for``) in which the token sees a key of one chunk (a
    single-pass item's prefix blocks included), plus the merge's steps when more than one chunk
    holds such a key, plus the divisions' step (``div.full.f32``, within 2 ulp) for every token."""
    blocks = np.zeros(meta.total_q, dtype=np.int64)
    held = [set() for _ in range(meta.total_q)]  # (level, chunk) holding a key the token sees
    g = meta.group_size
    for launch in planned.launches:
        step = planned.config.block_n_for(launch.block_m, own=launch.level < 0)
        items, tokens = launch.items.numpy(), launch.tokens.numpy()
        for item in items:
            f = dict(zip(kernels.ITEM_FIELDS, item))
            for j in range(f["row0"] // g, (f["row0"] + f["num_rows"] - 1) // g + 1):
                stop = f["key_end"]
                if meta.causal and launch.level < 0:
                    stop = min(stop, f["causal_shift"] + j + 1)
                if stop > f["key_start"]:
                    tok = tokens[f["tok_base"] + j]
                    walked = -(-(stop - f["key_start"]) // step)
                    if launch.single_pass:  # the prefix's blocks come first in the same walk
                        walked += -(-f["prefix_len"] // step)
                    blocks[tok] = max(blocks[tok], walked)
                    held[tok].add((launch.level, f["chunk"]))
    return blocks + np.array([MERGE_STEPS if len(h) >= 2 else 0 for h in held], dtype=np.int64) + DIVISION_STEPS


def test_the_merge_counts_the_steps_the_proof_derives():
    assert MERGE_STEPS == ALL_AT_ONCE_MERGE_STEPS
    assert DIVISION_STEPS == TRITON_DIVISION_STEPS == 1


@in_process
@settings(max_examples=60, deadline=None)
@given(batch=batches(dtypes=("float16", "float32"), **SPACE), config=st.sampled_from([TINY, TALL, None]))
def test_counted_steps_are_those_of_the_work_lists_and_never_above_the_default(batch, config):
    args, kwargs = batch.to_torch("cpu")
    meta = validate(*args, **kwargs)
    counted = steps_per_token(meta, config)
    assert counted.shape == (meta.total_q,) and counted.dtype == np.int64
    np.testing.assert_array_equal(counted, _steps_from_work_lists(meta, plan(meta, config=config)))
    num_keys = batch.oracle().stats.num_keys[:, 0]
    assert np.all((counted >= 1) & (counted <= bounds.default_steps(num_keys)))


def _steps(q_lens, kv_lens, prefix_lens=(), prefix_ids=(), config=TINY, **kwargs):
    batch = make_batch(q_lens, kv_lens, prefix_lens, prefix_ids, **kwargs)
    args, call = batch.to_torch("cpu")
    return steps_per_token(validate(*args, **call), config).tolist()


@in_process
def test_counted_steps_by_hand():
    # TINY: steps of 16 keys; a request of up to 16 rows cuts a segment into about 2 chunks.
    # Every token's count ends with DIVISION_STEPS = 1 (its divisions are div.full.f32)
    # 5 own keys: one chunk, one step, no merge; its chunk's division and the fold's x / 1
    assert _steps([1], [5], num_q_heads=1) == [1 + 1]
    # 17 own keys in chunks of 16: token 0 sees keys 0..15 (one chunk), token 1 also key 16
    assert _steps([2], [17], num_q_heads=1) == [1 + 1, 1 + MERGE_STEPS + 1]
    assert _steps([2], [17], num_q_heads=1, causal=False) == [1 + MERGE_STEPS + 1] * 2
    # prefix of 37 and 40 own keys in chunks of 32: two steps in each first chunk, four chunks
    assert _steps([1], [40], [[37]], [[0]], num_q_heads=1) == [2 + MERGE_STEPS + 1]
    # 3 tokens x GQA 6 = 18 rows, two tiles: one chunk of 32 holds all 20 own keys; token 0
    # sees 18 of them (two steps), token 2 all 20
    assert _steps([3], [20], num_q_heads=6) == [2 + 1] * 3
    # the public configuration, fp16, D 128, one KV head: decode over a prefix of 16384 keys
    # in 16 chunks of 1024, steps of 64 (prefix tiles): 16 steps, the merge and the divisions,
    # 19, where default_steps says 33024; its 128 own keys are one step of the 16-row own tile
    long = dict(num_q_heads=1, head_dim=128, dtype="float16", config=None)
    assert _steps([1], [128], [[16384]], [[0]], **long) == [16 + MERGE_STEPS + 1] == [19]
    # the same 16384 keys as the request's own: chunks of 1024 in the own tile's steps of 128
    assert _steps([1], [16384], **long) == [8 + MERGE_STEPS + 1]
    # 40 appended tokens x GQA 4 = 160 rows: a single-pass request (every segment one chunk,
    # tiles of 128 full); one walk over the prefix's 700 keys (11 steps), then token j's
    # 2061 + j own keys (33 steps); no merge; its one division
    assert _steps([40], [2100], [[700]], [[0]], **dict(long, num_q_heads=4)) == [11 + 33 + 1] * 40
    # two prefix levels: the split form; every segment is one chunk, the merge counts
    assert _steps([40], [2100], [[700], [5]], [[0], [0]], **dict(long, num_q_heads=4)) == [33 + MERGE_STEPS + 1] * 40


@in_process
def test_the_op_carries_every_field_of_a_plan():
    """What crosses the op boundary rebuilds the plan: its configuration (every field, a
    non-default one here), flags and work lists."""
    args, kwargs = _append_batch().to_torch("cpu")
    meta = validate(*args, **kwargs)
    fused = plan(meta, config=dataclasses.replace(TINY, unmasked_min_block_m=32), fused_merge=True)
    launched = plan(meta, config=TINY, fused_merge=False)
    assert any(x.single_pass for x in fused.launches) and fused.merge_tokens is None
    assert launched.merge_tokens is not None, "the merge launch's list of tokens"
    for planned in (fused, launched):
        _assert_carried(planned, op._unpack(*op._pack(planned), args[0], planned.softmax_scale))


def _assert_carried(planned, back):
    """Every field of ``planned`` is ``back``'s, but those only the eager entry checks."""
    for field in dataclasses.fields(planned):
        want, got = getattr(planned, field.name), getattr(back, field.name)
        if field.name in ("signature", "known_shapes"):
            continue  # checks of the eager entry, not needed past the op
        if isinstance(want, torch.Tensor):
            assert torch.equal(want, got), field.name
        elif field.name == "launches":
            fields = lambda x: (x.level, x.block_m, x.single_pass, x.fold_rows, x.regular)  # noqa: E731
            assert [fields(x) for x in want] == [fields(x) for x in got]
            assert any(x.regular for x in want) and not all(x.regular for x in want)
            assert all(torch.equal(a.items, b.items) and torch.equal(a.tokens, b.tokens) and torch.equal(a.slots, b.slots)
                       for a, b in zip(want, got))
        else:
            assert want == got, field.name


@in_process
def test_torch_compile_traces_the_planned_call_as_one_op():
    batch = _shared_prefix_batch(block_size=4)
    args, kwargs = batch.to_torch("cpu")
    planned = prepare(*args, **kwargs)
    q, cu, kv, prefixes = args
    eager = relaycore.relay_attention(*args, **kwargs, plan=planned)

    def step(q, kv, prefixes):
        return relaycore.relay_attention(q, cu, kv, prefixes, **kwargs, plan=planned)

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)(q, kv, prefixes)
    assert _same(compiled, eager)
    tensors, ints = op._pack(planned)
    checks = torch.library.opcheck(
        torch.ops.relaycore.relay_attention_planned,
        (q, [kv.k_cache, kv.v_cache, kv.block_table], [t for level in prefixes for t in (level.k, level.v)], tensors,
         ints, planned.softmax_scale),
        test_utils=("test_schema", "test_faketensor"),
    )
    assert set(checks.values()) == {"SUCCESS"}
    with pytest.raises(TypeError, match="plan"):
        relaycore.relay_attention(*args, **kwargs, plan="not a plan")
    # metadata on the host: the op reads the plan's copy of the block table
    (q, cu, kv, prefixes), _ = batch.to_torch("cpu", host_metadata=True)
    planned = prepare(q, cu, kv, prefixes, **kwargs)  # ``step`` reads these ``cu`` and ``planned``
    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)(q, kv, prefixes)
    assert _same(compiled, eager)


@in_process
@pytest.mark.parametrize("block_size", [None, 4], ids=["ragged", "paged"])
def test_the_kernels_write_into_the_buffers_given(block_size):
    """``out=``/``lse=`` poisoned with NaN: every route to the kernels (a call, a plan, a graph
    plan, ``torch.compile``) writes the bits of the call without them into the buffers and
    returns them; a plan checks them as a call does. A buffer that is not 16-byte aligned is
    written as well (the kernels specialize on alignment)."""
    batch = _shared_prefix_batch(block_size=block_size)
    args, kwargs = batch.to_torch("cpu")
    want = relaycore.relay_attention(*args, **kwargs, backend="triton")
    planned, graph = prepare(*args, **kwargs), prepare_graph(*args, **kwargs, config=TINY)
    graph_want = relaycore.relay_attention(*args, **kwargs, plan=graph)

    def poisoned(offset=0):
        pool = torch.full((want.out.numel() + offset,), float("nan"), dtype=want.out.dtype)
        return pool[offset:].view(want.out.shape), torch.full_like(want.lse, float("nan"))

    routes = [("call", want, lambda **b: relaycore.relay_attention(*args, **kwargs, backend="triton", **b)),
              ("plan", want, lambda **b: relaycore.relay_attention(*args, **kwargs, plan=planned, **b)),
              ("graph plan", graph_want, lambda **b: relaycore.relay_attention(*args, **kwargs, plan=graph, **b))]
    for name, expected, route in routes:
        for offset in (0, 1):
            out, lse = poisoned(offset)
            got = route(out=out, lse=lse)
            assert got.out is out and got.lse is lse and _same(got, expected), (name, offset)
        out, _ = poisoned()
        got = route(out=out)
        assert got.out is out and _same(got, expected), name
        with pytest.raises(ValueError, match="out: .*overlaps q"):
            route(out=args[0])
        with pytest.raises(TypeError, match=r"lse: expected dtype float32 \(the result's\), got float16"):
            route(lse=want.lse.half())
    q, cu, kv, prefixes = args
    # run_planned checks the buffers itself (it is public): a layout the kernels cannot write is refused
    strided = torch.empty(want.out.shape[1], want.out.shape[0], want.out.shape[2], dtype=q.dtype).transpose(0, 1)
    with pytest.raises(ValueError, match="out: expected a contiguous tensor"):
        run_planned(planned, q, kv, prefixes, out=strided)
    out, lse = poisoned()  # metadata that is not an array has no memory to share
    assert _same(run_planned(planned, q, kv, prefixes, out=out, lse=lse, cu_seqlens_q=cu.tolist()), want)
    # the kernels' writes count as in-place writes: a buffer autograd saved is not silently overwritten
    weight = torch.ones(want.lse.shape, requires_grad=True)
    saved = torch.zeros_like(want.lse)
    product = (weight * saved).sum()  # saves ``saved`` for the backward pass
    relaycore.relay_attention(*args, **kwargs, plan=planned, lse=saved)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        product.backward()

    def step(q, kv, prefixes, out, lse):
        return relaycore.relay_attention(q, cu, kv, prefixes, **kwargs, plan=planned, out=out, lse=lse)

    out, lse = poisoned()
    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)(q, kv, prefixes, out, lse)
    assert _same(compiled, want) and torch.equal(out, want.out) and torch.equal(lse, want.lse)


@in_process
def test_torch_compile_writes_into_the_buffers_in_place():
    """Under ``torch.compile`` a call with buffers is the op ``relay_attention_planned_into``,
    which mutates them: Inductor passes the caller's buffers to it (no allocation, no copy), and
    the bits are the eager call's. Its schema and fake implementation pass ``opcheck``."""
    from torch._inductor.utils import run_and_get_code

    batch = _shared_prefix_batch(block_size=4)
    (q, cu, kv, prefixes), kwargs = batch.to_torch("cpu")
    planned = prepare(q, cu, kv, prefixes, **kwargs)
    want = relaycore.relay_attention(q, cu, kv, prefixes, **kwargs, plan=planned)

    def step(q, kv, prefixes, out, lse):
        return relaycore.relay_attention(q, cu, kv, prefixes, **kwargs, plan=planned, out=out, lse=lse)

    out, lse = torch.full_like(want.out, float("nan")), torch.full_like(want.lse, float("nan"))
    got, code = run_and_get_code(torch.compile(step, fullgraph=True), q, kv, prefixes, out, lse)
    assert got.out is out and got.lse is lse and _same(got, want)
    source = "\n".join(code)
    assert "relay_attention_planned_into" in source and "copy_" not in source
    tensors, ints = op._pack(planned)
    own = [kv.k_cache, kv.v_cache, kv.block_table]
    prefix_kv = [t for level in prefixes for t in (level.k, level.v)]
    checks = torch.library.opcheck(torch.ops.relaycore.relay_attention_planned_into,
                                   (q, own, prefix_kv, tensors, ints, planned.softmax_scale, torch.empty_like(out),
                                    torch.empty_like(lse)), test_utils=("test_schema", "test_faketensor"))
    assert set(checks.values()) == {"SUCCESS"}


# Graph plans (``relaycore.fast.triton.graph``): one set of launches and buffers for every step


@pytest.mark.parametrize("config", [TINY, TALL, default_config(128, "float16", 8)], ids=["tiny", "tall", "default"])
def test_max_chunks_is_the_most_chunks_of_any_shorter_segment(config):
    for rows in (1, 4, 16, 17, 40, 64, 200):
        lengths = np.arange(0, 40 * config.min_chunk)
        chunks = -(-lengths // chunk_size(lengths, rows, config))
        assert np.array_equal(np.maximum.accumulate(chunks), max_chunks(lengths, rows, config)), rows


def test_a_decode_graph_plan_holds_what_a_batch_sharing_one_prefix_needs():
    """B 128, Hq 32 / Hkv 8 (GQA 4), one prefix slot of 16384 rows, 64 pages of 16 per request:
    the prefix launches hold the 4 x 16 items of every request on one prefix (128-row tiles) or
    the 16 of one 64-row tile, the own launch every request's 4 chunks; no request is
    single-pass, so every launch is padded."""
    config = default_config(128, "float16", 8)
    args, kwargs = make_batch([1] * 128, [1024] * 128, prefix_lens=[[16384]], prefix_ids=[[0] * 128], num_q_heads=32,
                              num_kv_heads=8, head_dim=128, dtype="float16", block_size=16).to_torch("cpu")
    kv = args[2]
    args = (*args[:2], kv._replace(block_table=kv.block_table[:, :64]), *args[3:])  # no spare column: 64 pages
    meta = validate(*args, **kwargs)
    bounds = Bounds.of(meta, args[2], args[3])
    capacities = {(x.level, x.block_m, x.single_pass): x.capacity for x in graph_launches(meta, bounds, config)}
    assert capacities == {(0, 64, False): 16, (0, 128, False): 64, (-1, 16, False): 128 * 4}
    assert slot_capacity(meta, bounds, config) == 128 * (16 + 4)
    graph = prepare_graph(*args, **kwargs, config=config)
    assert graph.scratch_bytes == 128 * 20 * 32 * 129 * 4  # 42 MB: serving.md
    assert "slots=2560 (42270720 bytes a call)" in repr(graph)
    assert all(launch.count is not None for launch in graph.plan.launches)
    full = plan(meta, config=config)
    assert [x.num_items for x in full.launches] == [64, 128 * 4] and full.num_slots == 128 * (16 + 4)


GRAPH_SHAPES = st.fixed_dictionaries(dict(
    q_lens=st.lists(st.integers(0, 6), min_size=1, max_size=4),
    group=st.sampled_from([1, 2, 3]), num_kv_heads=st.sampled_from([1, 2]),
    page_size=st.sampled_from([0, 4, 8]), max_blocks=st.integers(2, 5), spare_rows=st.integers(0, 40),
    levels=st.lists(st.tuples(st.integers(0, 40), st.integers(1, 3)), max_size=2),
    causal=st.booleans(), config=st.sampled_from([TINY, TALL]), dtype=st.sampled_from(["float16", "float32"]),
    host_metadata=st.booleans(), seed=st.integers(0, 2**16)))


def _engine(shape, device="cpu") -> EngineTensors:
    q_lens = shape["q_lens"]
    if shape["page_size"] and max(q_lens) > shape["page_size"] * shape["max_blocks"]:
        shape = dict(shape, page_size=0)
    return EngineTensors(q_lens, num_q_heads=shape["group"] * shape["num_kv_heads"],
                         num_kv_heads=shape["num_kv_heads"], head_dim=16, dtype=getattr(torch, shape["dtype"]),
                         device=device, page_size=shape["page_size"], max_blocks=shape["max_blocks"],
                         own_rows=sum(q_lens) + shape["spare_rows"], level_rows=[r for r, _ in shape["levels"]],
                         level_prefixes=[p for _, p in shape["levels"]], causal=shape["causal"], seed=shape["seed"],
                         host_metadata=shape["host_metadata"])


@in_process
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shape=GRAPH_SHAPES)
def test_a_graph_plan_gives_each_step_the_bits_of_its_own_plan(shape, poisoned_allocations):
    """One graph plan, refilled for each of four steps drawn within its shapes, runs them as the
    plan made for each step alone does, bit for bit: its padding items write nothing, and every
    launch a step needs is one of its launches, with room for the step's items and slots."""
    engine, config, rng = _engine(shape), shape["config"], np.random.default_rng(shape["seed"])
    engine.step(rng)
    graph = prepare_graph(*engine.args(), causal=engine.causal, config=config)
    for step in range(4):
        if step:
            engine.step(rng)
            graph.update(*engine.args(), causal=engine.causal)
        q, cu, kv, prefixes = engine.args()
        alone = run_planned(plan(validate(q, cu, kv, prefixes, causal=engine.causal), config=config), q, kv, prefixes)
        replayed = relaycore.relay_attention(q, cu, kv, prefixes, causal=engine.causal, plan=graph)
        assert _same(replayed, alone), step


@in_process
def test_a_graph_plan_keeps_the_dtype_of_its_first_batchs_metadata_on_the_host():
    """A NumPy array's dtype is fixed by the first batch, as a tensor's: ``update`` refuses
    another (a call would refuse the first dtype's arrays after it)."""
    engine = EngineTensors([1, 2], num_q_heads=4, num_kv_heads=2, head_dim=16, dtype=torch.float16, device="cpu",
                           page_size=4, max_blocks=4, level_rows=[12], level_prefixes=[2], host_metadata=True)
    engine.step(np.random.default_rng(1))
    q, cu, kv, prefixes = engine.args()
    graph = prepare_graph(q, cu, kv, prefixes)
    wider = kv._replace(kv_lens=kv.kv_lens.astype(np.int64))
    with pytest.raises(TypeError, match=r"^kv\.kv_lens: expected dtype int32 \(the graph plan's\), got int64$"):
        graph.update(q, cu, wider, prefixes)
    graph.update(q, cu, kv, prefixes)  # the first dtype still passes
    assert _same(relaycore.relay_attention(q, cu, kv, prefixes, plan=graph),
                 run_planned(plan(validate(q, cu, kv, prefixes)), q, kv, prefixes))


@in_process
def test_a_graph_plan_refuses_a_batch_of_other_shapes_or_query_counts():
    engine = EngineTensors([1, 1, 3], num_q_heads=4, num_kv_heads=2, head_dim=16, dtype=torch.float16, device="cpu",
                           page_size=4, max_blocks=4, level_rows=[20], level_prefixes=[2])
    engine.step(np.random.default_rng(0))
    q, cu, kv, prefixes = engine.args()
    graph = prepare_graph(q, cu, kv, prefixes)
    with pytest.raises(ValueError, match=r"cu_seqlens_q: expected the graph plan's query counts, got q_len 2 for "
                                         r"request 1 where the plan has 1"):
        graph.update(q, torch.tensor([0, 1, 3, 5], dtype=torch.int32), kv, prefixes)
    # another batch: what to do is said, to update and to a call
    fewer = torch.tensor([0, 1, 2, 4], dtype=torch.int32)  # 4 query tokens
    with pytest.raises(ValueError, match=r"^q: expected shape \(5, 4, 16\), dtype float16 on cpu \(the graph plan's\), "
                                         r"got shape \(4, 4, 16\), dtype float16 on cpu: a plan runs the batch it was "
                                         r"prepared for: prepare one for this batch \(a graph plan, one per batch size"):
        graph.update(q[:4], fewer, kv, prefixes)
    with pytest.raises(ValueError, match=r"^q: expected shape \(5, 4, 16\) \(the plan's\), got \(4, 4, 16\): a plan runs"):
        relaycore.relay_attention(q[:4], fewer, kv, prefixes, plan=graph)
    with pytest.raises(ValueError, match=r"^q: expected shape \(5, 4, 16\) \(the plan's\), got \(5, 4, 8\)$"):
        relaycore.relay_attention(q[..., :8], cu, kv, prefixes, plan=graph)  # another model: no advice
    two = kv._replace(block_table=kv.block_table[:2], kv_lens=torch.tensor([4, 8], dtype=torch.int32))
    with pytest.raises(ValueError, match=r"^cu_seqlens_q: expected shape \(4,\), dtype int32 on cpu \(the graph "
                                         r"plan's\), got shape \(3,\), dtype int32 on cpu: a plan runs"):
        graph.update(q, torch.tensor([0, 1, 5], dtype=torch.int32), two,
                     [prefixes[0]._replace(prefix_ids=prefixes[0].prefix_ids[:2])])
    wider = kv._replace(block_table=torch.zeros(3, 5, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"kv\.block_table: expected shape \(3, 4\), dtype int32 on cpu \(the graph "
                                         r"plan's\), got shape \(3, 5\)"):
        graph.update(q, cu, wider, prefixes)
    with pytest.raises(ValueError, match="prefixes: expected 1 levels"):
        graph.update(q, cu, kv, [])
    ragged = RaggedKV(torch.zeros(5, 2, 16, dtype=torch.float16), torch.zeros(5, 2, 16, dtype=torch.float16),
                      torch.tensor([0, 1, 2, 5], dtype=torch.int32))
    with pytest.raises(ValueError, match=r"kv: expected PagedKV \(the graph plan's\), got RaggedKV"):
        graph.update(q, cu, ragged, prefixes)
    with pytest.raises(ValueError, match="causal: expected True"):
        graph.update(q, cu, kv, prefixes, causal=False)
    with pytest.raises(ValueError, match="softmax_scale"):
        graph.update(q, cu, kv, prefixes, softmax_scale=0.5)
    # a call with lengths written since the last update is refused, as with any plan
    kv.kv_lens[0] += 1
    with pytest.raises(ValueError, match=r"kv\.kv_lens: expected the values the plan was prepared with"):
        relaycore.relay_attention(q, cu, kv, prefixes, plan=graph)
    graph.update(q, cu, kv, prefixes)
    relaycore.relay_attention(q, cu, kv, prefixes, plan=graph)


@settings(max_examples=300, deadline=None)
@given(shape=GRAPH_SHAPES, many=st.booleans(), wide=st.booleans(), scale=st.sampled_from([1, 8, 64]),
       config=st.sampled_from([TINY, TALL, default_config(128, "float16", 8), default_config(128, "float16", 32)]))
def test_the_launches_of_a_graph_plan_hold_every_step_within_its_shapes(shape, many, wide, scale, config):
    """The capacities against the work lists alone (no kernel runs), at serving sizes too: up to
    128 requests, of up to 192 queries, levels of up to 2560 rows and 27 prefixes, own KV of up
    to 1280 keys a request."""
    q_lens = [q * (32 if wide else 1) for q in shape["q_lens"] * (32 if many else 1)]
    shape = dict(shape, q_lens=q_lens, max_blocks=shape["max_blocks"] * scale, spare_rows=shape["spare_rows"] * scale,
                 levels=[(rows * scale, count * (scale // 8 + 1)) for rows, count in shape["levels"]])
    engine, rng = _engine(shape), np.random.default_rng(shape["seed"])
    engine.step(rng)
    graph = prepare_graph(*engine.args(), causal=engine.causal, config=config)
    for _ in range(6):
        engine.step(rng)
        q, cu, kv, prefixes = engine.args()
        meta = validate(q, cu, kv, prefixes, causal=engine.causal)
        graph.fill(plan_module.plan_work(meta, config, relay=True, unshared_single_pass=False))


@in_process
def test_the_programs_past_a_graph_plans_count_read_nothing_of_their_items(poisoned_allocations):
    """Past the step's items, a padded launch's rows hold anything: its programs exit on the
    count before they use a field (here every such row names whole tiles of keys far out of
    bounds), so the step's bits are its own plan's."""
    engine = EngineTensors([1, 1, 1, 4], num_q_heads=4, num_kv_heads=2, head_dim=16, dtype=torch.float16,
                           device="cpu", page_size=4, max_blocks=8, level_rows=[40], level_prefixes=[2])
    rng = np.random.default_rng(5)
    engine.step(rng)
    graph = prepare_graph(*engine.args(), config=TINY)
    engine.step(rng)
    graph.update(*engine.args())
    padded = [x for x in graph.plan.launches if x.count is not None and int(x.count) < x.num_items]
    assert padded, graph
    for launch in padded:
        launch.items[int(launch.count):] = 10**6
        launch.items[int(launch.count):, kernels.ITEM_FIELDS.index("num_rows")] = launch.block_m
    q, cu, kv, prefixes = engine.args()
    alone = run_planned(plan(validate(q, cu, kv, prefixes), config=TINY), q, kv, prefixes)
    assert _same(relaycore.relay_attention(q, cu, kv, prefixes, plan=graph), alone)


def test_a_graph_plan_refuses_work_that_leaves_an_unpadded_launch_short():
    """The single-pass launch of a batch of at most one prefix level has no count (its query
    counts fix its items): every program of its grid runs, so a step must fill it; one that
    does not is a bug, refused, not run."""
    engine = EngineTensors([1, 32], num_q_heads=4, num_kv_heads=2, head_dim=16, dtype=torch.float16, device="cpu",
                           page_size=8, max_blocks=8, level_rows=[40], level_prefixes=[2])
    engine.step(np.random.default_rng(1))
    graph = prepare_graph(*engine.args(), config=TALL)
    assert any(x.single_pass and x.count is None for x in graph.plan.launches), graph
    work = plan_module.plan_work(validate(*engine.args()), TALL, relay=True, unshared_single_pass=False)
    graph.fill(work)
    with pytest.raises(ValueError, match="unpadded launches short of their items"):
        graph.fill(work._replace(launches=tuple(w for w in work.launches if not w.single_pass)))


@in_process
def test_a_graph_plan_runs_under_torch_compile_with_its_padded_launches():
    engine = EngineTensors([1] * 6, num_q_heads=4, num_kv_heads=2, head_dim=16, dtype=torch.float16, device="cpu",
                           page_size=4, max_blocks=16, level_rows=[40], level_prefixes=[2])
    rng = np.random.default_rng(3)
    engine.step(rng)
    graph = prepare_graph(*engine.args(), config=TINY)
    assert any(launch.count is not None for launch in graph.plan.launches)
    back = op._unpack(*op._pack(graph.plan), engine.q, graph.plan.softmax_scale)
    assert [(x.level, x.block_m, x.single_pass, x.count is not None, x.items.data_ptr()) for x in back.launches] == [
        (x.level, x.block_m, x.single_pass, x.count is not None, x.items.data_ptr()) for x in graph.plan.launches]

    def step(q, kv, prefixes):
        return relaycore.relay_attention(q, engine.cu_seqlens_q, kv, prefixes, plan=graph)

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    for _ in range(2):  # the same compiled call for every step: the plan's fields do not change
        engine.step(rng)
        graph.update(*engine.args())
        q, cu, kv, prefixes = engine.args()
        alone = run_planned(plan(validate(q, cu, kv, prefixes), config=TINY), q, kv, prefixes)
        assert _same(compiled(q, kv, prefixes), alone)
