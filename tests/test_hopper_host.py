"""The host side of the Gluon single-pass tile of sm_90 (``relaycore.fast.triton.hopper``), on the
CPU: which copies a launch takes (``descriptors``), which copies of its inputs a call makes
for it, and where the tile runs (``usable``). Its kernel runs only on a GPU (``tests/gpu``);
``tests/test_kernel_resources.py`` compiles it."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from layouts import TILE_LAYOUTS

torch = pytest.importorskip("torch")


@pytest.fixture
def hopper():
    """The module, imported inside a test: triton must not be imported at collection, before the
    interpreter tests set ``TRITON_INTERPRET`` (``tests/test_triton_interpret.py``)."""
    module = pytest.importorskip("relaycore.fast.triton.hopper")
    if module.gluon is None:
        pytest.skip("this triton has no Gluon")
    return module


def _level(rows=300, hkv=2, d=128):
    return torch.zeros(rows, hkv, d, dtype=torch.float16)


@pytest.mark.parametrize("page, box", [(1, 0), (8, 8), (16, 16), (24, 0), (64, 64), (128, 128), (256, 128),
                                       (384, 128), (192, 0)])
def test_a_paged_cache_is_copied_by_page_boxes_where_tma_can(hopper, page, box):
    """A box per page where the page divides the 128-key block and is a multiple of 8 rows (the
    swizzle period), a box per block where pages hold whole blocks, else a row per key. The block
    that crosses the causal limit copies its other rows in chunks that each lie in one box and
    one page (one page-table read a chunk)."""
    cache = torch.zeros(4, page, 2, 128, dtype=torch.float16)
    level = _level()
    assert hopper.descriptors(level, level, cache, cache, True)[-1] == box
    if box:
        rows = hopper.constexprs(4, 2, 128, True, page, True, True, box, False)["BOX_ROWS"]
        assert rows >= 8 and box % rows == 0 and page % rows == 0


def test_ragged_own_kv_is_copied_by_blocks_and_unpacked_rows_by_rows(hopper):
    level = _level()
    assert hopper.descriptors(level, level, level, level, False)[-1] == hopper.BLOCK_N
    strided = _level(hkv=4)[:, :2]  # two of four heads: rows not packed
    assert hopper.descriptors(level, level, strided, strided, False)[-1] == 0


@pytest.mark.parametrize("tile", [True, False], ids=["the tile reads level 0", "no tile"])
def test_a_level_the_tile_cannot_read_in_place_is_copied_before_the_launches_fork(hopper, monkeypatch, tile):
    """Level 0 with its heads apart (its rows not contiguous, so no tensor descriptor reads it):
    where a launch of the call runs the tile over it, the call's sources hold one contiguous copy,
    which every launch reads (it is made on the caller's stream before the launches fork from
    it); else the level itself, and never a copy of what the kernels read in place."""
    from relaycore import PrefixLevel
    from relaycore.fast.triton import backend as triton_backend
    from relaycore.fast.triton import launch, prepare
    from relaycore.testing import make_batch

    monkeypatch.setenv("TRITON_INTERPRET", "1")  # planning takes CPU tensors, as under the interpreter
    monkeypatch.setattr(triton_backend, "runs_on_the_cpu", lambda: True)  # in a process that compiles them too
    batch = make_batch(q_lens=[1, 1, 40, 1], kv_lens=[300, 129, 400, 200], prefix_lens=[[2048, 700]],
                       prefix_ids=[[0, 1, 0, 0]], num_q_heads=16, num_kv_heads=4, head_dim=128, dtype="float16",
                       block_size=16, seed=9)
    (q, cu, kv, (level,)), kwargs = batch.to_torch("cpu")
    planned = prepare(q, cu, kv, [level], **kwargs)
    assert any(x.single_pass and x.reads_prefix for x in planned.launches)

    def heads_apart(x):
        wide = torch.zeros(x.shape[0], x.shape[1], 2, x.shape[2], dtype=x.dtype)
        wide[:, :, 0] = x
        return wide[:, :, 0]

    apart = PrefixLevel(heads_apart(level.k), heads_apart(level.v), level.cu_seqlens, level.prefix_ids)
    monkeypatch.setattr(hopper, "usable", lambda *_: tile)
    out = torch.empty(q.shape, dtype=q.dtype)
    sources = launch._sources(planned, q, kv, [apart], out, interpret=False)
    (k, v), = sources.levels
    if tile:
        assert k.is_contiguous() and v.is_contiguous()
        assert torch.equal(k, level.k) and torch.equal(v, level.v)
    else:
        assert k is apart.k and v is apart.v
    assert sources.q is q and sources.own[0] is kv.k_cache and sources.own[1] is kv.v_cache
    # a launch that does not read level 0 passes ``out`` in its place, or, where it runs the tile
    # and a caller's ``out`` has no tensor descriptor (not 16-byte aligned), a tensor like it
    assert sources.stand_in is out
    shifted = torch.empty(out.numel() + 1, dtype=out.dtype)[1:].view(out.shape)
    assert launch._sources(planned, q, kv, [apart], shifted, interpret=False).stand_in is shifted  # all read it
    alone = level._replace(prefix_ids=torch.full_like(level.prefix_ids, -1))
    unshared = prepare(q, cu, kv, [alone], **kwargs)
    assert any(x.single_pass and not x.reads_prefix for x in unshared.launches)
    stand_in = launch._sources(unshared, q, kv, [alone], shifted, interpret=False).stand_in
    assert (stand_in is not shifted) == tile
    assert stand_in.shape == out.shape and stand_in.dtype == out.dtype and hopper.readable(stand_in) == tile


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_descriptor_copied_from_its_template_is_the_one_triton_would_build(hopper, dtype):
    """``_rows_descriptor`` copies a checked template over each new base: every field must be
    what ``TensorDescriptor`` builds from that base, and the template must hold no tensor."""
    for rows, box in [(300, hopper.BLOCK_N), (300, 16), (48, 8)]:
        for _ in range(2):  # the first builds the template, the second copies it
            x = torch.zeros(rows, 2, 64, dtype=dtype)
            built = hopper.TensorDescriptor(x, [rows, 128], [128, 1], [box, 64], hopper._box_layout(box, 64, dtype))
            copied = hopper._rows_descriptor(x, box)
            assert type(copied) is type(built) and vars(copied) == vars(built) and copied.base is x
        assert hopper._rows_template(dtype, rows, 2, 64, box).base is None


def test_the_tile_never_runs_off_a_gpu(hopper):
    q = torch.zeros(4, 8, 128, dtype=torch.float16)
    assert not hopper.usable(q, 128, hopper.TILE_M)


#: Drawn batches whose tall requests read their context in one pass (``tests/gpu``'s space for
#: them, at the CPU's sizes): up to two prefix levels, often one that no request uses (no rows).
#: About 1 in 5 drawn batches hold a single-pass request, 1 in 25 beside a second level (400
#: draws on the CPU, 2026-11-29: 84 and 15).
SINGLE_PASS_SPACE = dict(max_batch=3, max_q_len=40, max_kv_len=200, max_levels=2, max_prefixes=2,
                         max_prefix_len=300, head_dims=(64, 128), kv_heads=(1, 2), group_sizes=(4, 5),
                         block_sizes=(1, 8, 16, 17), dtypes=("float16", "bfloat16"))


@pytest.fixture
def recorded(hopper, monkeypatch):
    """``(launches, run)``: ``run(batch)`` plans and calls a batch (returning its q) on the CPU as on
    an sm_90 GPU, recording each launch as ``(kernel, args, constexprs)`` instead of running it
    (the Gluon tile cannot run here)."""
    from relaycore.fast.triton import launch as launch_module
    from relaycore.fast.triton import plan
    from relaycore.validation import validate

    launches = []
    monkeypatch.setattr(launch_module, "interpreting", lambda: False)
    monkeypatch.setattr(launch_module, "CONCURRENT_PARTIALS", False)
    monkeypatch.setattr(hopper, "usable", lambda q, head_dim, block_m: block_m == hopper.TILE_M)
    monkeypatch.setattr(launch_module, "launch", lambda kernel, grid, args, constexprs, **_: launches.append(
        (kernel, args, constexprs)))

    def run(batch, fused_qkv=False):
        """``fused_qkv``: q a view of a wider tensor (its rows not packed), as a fused QKV
        projection's output is."""
        launches.clear()
        args, kwargs = batch.to_torch("cpu")
        q = args[0]
        if fused_qkv:
            wide = torch.zeros(q.shape[0], 2 * q.shape[1], q.shape[2], dtype=q.dtype)
            wide[:, :q.shape[1]] = q
            q = wide[:, :q.shape[1]]
        launch_module.run_planned(plan(validate(*args, **kwargs)), q, args[2], args[3])
        return q

    return launches, run


def _assert_copies_can_read(args):
    """What the tile's copies need of a launch's arguments (``hopper.readable``; without it the
    tile does not compile): level 0's and the own KV's pointers 16-byte aligned and their
    strides multiples of 16 elements, an int32 block table. The arguments, in the order
    ``launch._launch_hopper`` passes them: q, four descriptors, level 0's k and v, the own k and
    v, items, tokens, the table, out, lse, the scale, q's two strides, level 0's four, the own
    KV's six, the table's."""
    assert all(x.data_ptr() % 16 == 0 for x in args[5:9])
    assert all(stride % 16 == 0 for stride in args[17:27]), args[17:27]
    assert args[11].dtype == torch.int32


def test_every_single_pass_launch_gets_a_descriptor_of_each_source(hopper, recorded):
    """The tile compiles against four tensor descriptors (level 0's keys and values, the own
    ones): the launch must build all four, of the batch's dtype and ``[box, D]`` boxes, for any
    batch and any q, whatever it reads. A GPU drew a batch whose level 0 had no rows (strides of
    0 from NumPy) and the tile got ``None``; a review found that a q whose rows are not packed,
    standing in for a level the launch does not read, would have too. Here the launches are
    recorded, not run."""
    from hypothesis import strategies as st

    from relaycore.testing.strategies import batches

    launches, run = recorded
    tiles = []

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(batch=batches(**SINGLE_PASS_SPACE), fused_qkv=st.booleans())
    def check(batch, fused_qkv):
        q = run(batch, fused_qkv)
        for kernel, kernel_args, constexprs in launches:
            if kernel is not hopper.single_pass_tile:
                continue
            tiles.append(batch)
            descs = kernel_args[1:5]
            assert all(isinstance(x, hopper.TensorDescriptor) for x in descs), (descs, batch.describe())
            _assert_copies_can_read(kernel_args)
            box = constexprs["OWN_BOX"] or hopper.BLOCK_N
            for x, rows in zip(descs, (hopper.BLOCK_N, hopper.BLOCK_N, box, box)):
                assert x.base.dtype == q.dtype and list(x.block_shape) == [rows, batch.head_dim], batch.describe()

    check()
    assert len(tiles) >= 5  # about one drawn batch in four launches the tile (17 of 60 in CI's profile)


@pytest.mark.parametrize("levels", [0, 1], ids=["no prefix", "a level no request uses"])
def test_a_tile_that_reads_no_prefix_gets_descriptors_beside_a_strided_q(hopper, recorded, levels):
    """A launch that does not read level 0 passes a stand-in for it: not q, whose rows need not
    be packed (a view of a fused QKV projection's output has no tensor descriptor)."""
    from relaycore.testing import make_batch

    launches, run = recorded
    batch = make_batch([1, 32], [300, 300], [[200]] * levels, [[-1, -1]] * levels, num_q_heads=128,
                       num_kv_heads=32, head_dim=128, dtype="float16")
    run(batch, fused_qkv=True)
    tiles = [args for kernel, args, _ in launches if kernel is hopper.single_pass_tile]
    assert tiles and all(isinstance(x, hopper.TensorDescriptor) for args in tiles for x in args[1:5])


@pytest.mark.parametrize("levels", [1, 2])
def test_a_graph_plans_single_pass_launch_passes_the_tile_its_count_where_it_is_padded(hopper, recorded, monkeypatch,
                                                                                     levels):
    """In a graph plan of two prefix levels a tall request may be split at a step, so its
    single-pass launch is padded: the tile gets ``PADDED`` and the launch's count tensor (the
    plan's, which ``update`` refills), and its programs past the count exit. With one level the
    launch has no count, as an eager plan's."""
    from relaycore.fast.triton import backend as triton_backend
    from relaycore.fast.triton import launch as launch_module
    from relaycore.fast.triton import prepare_graph
    from relaycore.testing import make_batch

    launches, _ = recorded
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # planning takes CPU tensors, as under the interpreter
    monkeypatch.setattr(triton_backend, "runs_on_the_cpu", lambda: True)
    batch = make_batch([1, 40], [300, 300], [[200], [100]][:levels], [[0, 0], [0, -1]][:levels], num_q_heads=16,
                       num_kv_heads=4, head_dim=128, dtype="float16", block_size=16)
    (q, cu, kv, prefixes), kwargs = batch.to_torch("cpu")
    graph = prepare_graph(q, cu, kv, prefixes, **kwargs)
    (one_pass,) = [x for x in graph.plan.launches if x.single_pass]
    launch_module.run_planned(graph.plan, q, kv, prefixes)
    (tile,) = [(args, constexprs) for kernel, args, constexprs in launches if kernel is hopper.single_pass_tile]
    args, constexprs = tile
    assert constexprs["PADDED"] == (levels == 2) == (one_pass.count is not None)
    if levels == 2:
        assert args[-1] is one_pass.count and int(one_pass.count) == one_pass.num_items  # the request reads level 0 alone


@pytest.mark.parametrize("layout", TILE_LAYOUTS)
def test_the_tile_gets_inputs_its_copies_can_read_or_does_not_run(hopper, recorded, layout):
    """Layouts that validation takes and the tile's copies cannot read in place (it would not
    compile: TMA coordinates must be 32-bit, ``cp.async`` needs rows aligned to 4 bytes): a
    level 0 or a block table is copied for the tile before the launches fork; the own KV (a
    paged cache is the whole pool) is not, and the launch runs ``partial_kernel`` instead."""
    from layouts import tile_batch, with_layout

    from relaycore.fast.triton import launch as launch_module
    from relaycore.fast.triton import kernels, plan
    from relaycore.validation import validate

    launches, _ = recorded
    (q, cu, kv, (level,)), kwargs = tile_batch(layout).to_torch("cpu")
    kv, level = with_layout(layout, kv, level)
    launch_module.run_planned(plan(validate(q, cu, kv, [level], **kwargs)), q, kv, [level])
    tiles = [args for kernel, args, _ in launches if kernel is hopper.single_pass_tile]
    if layout == "own KV misaligned":
        assert not tiles
        assert any(kernel is kernels.partial_kernel and constexprs["SINGLE_PASS"]
                   for kernel, _, constexprs in launches)
    else:
        assert len(tiles) == 1
        _assert_copies_can_read(tiles[0])
        assert all(isinstance(x, hopper.TensorDescriptor) for x in tiles[0][1:5])


def test_an_append_request_after_one_token_gives_the_tile_its_first_token_as_a_value(hopper, recorded):
    """One decode token, then one append request: the append request's launch computes its
    items from the program id (``plan.regular_items``), and its first token is 1. Triton
    specializes an integer argument equal to 1 into a constant, and with that constant triton
    3.6.0 cannot compile the tile (an LLVM assertion in its lowering, at head_dim 64 and 128;
    reproduced by compiling the tile for sm_90 on the CPU, ``fast/triton/NOTES.md``, session
    17): the launch must pass it, and the tile take it as a value."""
    from relaycore.testing import make_batch

    launches, run = recorded
    # 32 appended tokens x GQA 4: one 128-row tile, every segment one chunk (Hkv 32: 4 chunks
    # a decode segment), so the launch's one item is computed
    batch = make_batch([1, 32], [300, 300], [[200]], [[0, 0]], num_q_heads=128, num_kv_heads=32, head_dim=128,
                       dtype="float16")
    run(batch)
    tiles = [args for kernel, args, _ in launches if kernel is hopper.single_pass_tile]
    assert len(tiles) == 1
    names = [p.name for p in hopper.single_pass_tile.params if not p.is_constexpr]
    assert len(names) == len(tiles[0]) and tiles[0][names.index("grid_tok_first")] == 1
    param = next(p for p in hopper.single_pass_tile.params if p.name == "grid_tok_first")
    assert param.do_not_specialize, "a first token of 1 would be compiled in as a constant"
