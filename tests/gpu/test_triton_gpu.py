"""The Triton kernels compiled on a CUDA GPU: the property suite at real sizes, determinism,
batch invariance, layouts, CUDA graphs. Run on the GPU machine with ``pytest -m gpu tests/gpu``
(``scripts/gpu_suite.sh`` runs this, the sanitizer sample and the timings). Results are held to
the error bound at the kernels' own count of rounding steps (``relaycore.fast.triton.rounding``)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

from hypothesis import HealthCheck, given, settings  # noqa: E402

import relaycore  # noqa: E402
from relaycore import PagedKV, PrefixLevel, RaggedKV  # noqa: E402
from relaycore.fast.triton import hopper, plan, prepare, run_planned  # noqa: E402
from relaycore.fast.triton import launch as launch_module  # noqa: E402
from relaycore.fast.triton.plan import REGULAR_FIELDS  # noqa: E402
from relaycore.testing import assert_close, make_batch  # noqa: E402
from relaycore.testing.strategies import batches  # noqa: E402
from relaycore.validation import validate  # noqa: E402
from layouts import TILE_LAYOUTS, in_nan_padded_rows, tile_batch, with_guarded_tail, with_layout  # noqa: E402
from tolerances import triton_steps  # noqa: E402

pytestmark = pytest.mark.gpu

#: Real sizes, bounded so that the float64 oracle on the host keeps up.
SPACE = dict(max_batch=6, max_q_len=24, max_kv_len=700, max_levels=2, max_prefixes=2, max_prefix_len=2600,
             head_dims=(64, 128), kv_heads=(1, 2), group_sizes=(1, 4, 5), block_sizes=(1, 16, 17))
SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large])


def _assert_close_to_oracle(batch):
    """Run ``batch`` on the GPU with the public configuration and check it against the oracle
    under the bound at the steps that configuration takes."""
    args, kwargs = batch.to_torch("cuda")
    result = relaycore.relay_attention(*args, **kwargs, backend="triton")
    assert_close(result, batch, steps=triton_steps(validate(*args, **kwargs)))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_matches_the_oracle(dtype, poisoned_allocations):
    @SETTINGS
    @given(batch=batches(dtypes=(dtype,), **SPACE))
    def check(batch):
        _assert_close_to_oracle(batch)

    check()


def test_float32_matches_the_oracle(poisoned_allocations):
    @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
    @given(batch=batches(dtypes=("float32",), **SPACE))
    def check(batch):
        _assert_close_to_oracle(batch)

    check()


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_a_head_dim_that_is_not_a_power_of_two_matches_the_oracle(dtype, poisoned_allocations):
    """``D`` of 40, 80, 96 and 192 (head axes of 64, 128, 128 and 256 columns) over q, keys and
    values whose columns past ``D`` are NaN (``in_nan_padded_rows``): the result matches the
    oracle, so no column past ``D`` was read, and has the bits of the packed inputs; ``out`` is
    followed by a guarded tail that no store reaches (``with_guarded_tail``)."""
    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
    @given(batch=batches(dtypes=(dtype,), **{**SPACE, "head_dims": (40, 80, 96, 192)}))
    def check(batch):
        args, kwargs = batch.to_torch("cuda")
        q = args[0]
        out, tail_intact = with_guarded_tail(q.shape, q.dtype, q.device)
        padded = relaycore.relay_attention(*in_nan_padded_rows(args), **kwargs, backend="triton", out=out)
        assert tail_intact(), "a store past the last row's head_dim columns"
        assert_close(padded, batch, steps=triton_steps(validate(*args, **kwargs)))
        packed = relaycore.relay_attention(*args, **kwargs, backend="triton")
        assert torch.equal(padded.out, packed.out) and torch.equal(padded.lse, packed.lse)

    check()


@pytest.fixture(params=["hopper", "triton"])
def single_pass_tile(request, monkeypatch):
    """Each single-pass tile: the Gluon one where ``hopper.usable`` (an sm_90 GPU), then the
    Triton one, which every other GPU runs."""
    monkeypatch.setattr(launch_module, "HOPPER_SINGLE_PASS", request.param == "hopper")
    return request.param


def test_the_hopper_tile_runs_on_sm90():
    q = torch.empty(1, 8, 128, dtype=torch.float16, device="cuda")
    assert hopper.usable(q, 128, hopper.TILE_M) == (torch.cuda.get_device_capability() == (9, 0))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
@pytest.mark.parametrize("hkv", [8, 32])
def test_single_pass_requests_match_the_oracle(dtype, hkv, single_pass_tile, poisoned_allocations):
    """Append requests whose rows fill the tallest tiles (``config.single_pass``) beside decode
    rows: the first and third read their prefix and own KV in one pass."""
    batch = make_batch([160, 1, 130, 3], [300, 500, 130, 40], prefix_lens=[[2048, 700]], prefix_ids=[[0, 0, 1, -1]],
                       num_q_heads=32, num_kv_heads=hkv, head_dim=128, dtype=dtype, block_size=16, seed=hkv)
    args, kwargs = batch.to_torch("cuda")
    planned = plan(validate(*args, **kwargs))
    assert any(x.single_pass for x in planned.launches)
    _assert_close_to_oracle(batch)


@pytest.mark.parametrize("head_dim, group, block_size, dtype", [
    (128, 4, 24, "float16"), (64, 1, 16, "bfloat16"), (128, 8, 1, "bfloat16"), (64, 4, 256, "float16")])
def test_single_pass_shapes_match_the_oracle(head_dim, group, block_size, dtype, single_pass_tile,
                                             poisoned_allocations):
    """Single-pass requests with prefixes that end inside a block (or are empty), own KV that
    ends inside a block and a page, and pages the tensor-memory copy takes whole, in boxes, or
    not at all (1, 24)."""
    batch = make_batch([130, 257, 200, 1], [130, 700, 333, 50], prefix_lens=[[1000, 129, 1]],
                       prefix_ids=[[0, 1, -1, 2]], num_q_heads=2 * group, num_kv_heads=2, head_dim=head_dim,
                       dtype=dtype, block_size=block_size, seed=block_size)
    args, kwargs = batch.to_torch("cuda")
    assert any(x.single_pass for x in plan(validate(*args, **kwargs)).launches)
    _assert_close_to_oracle(batch)


def test_single_pass_requests_beside_an_empty_prefix_level_match_the_oracle(single_pass_tile,
                                                                          poisoned_allocations):
    """A prefix level that no request uses has no rows (from NumPy, strides of 0): the single
    pass must not read it, nor build a tensor descriptor of it (Hypothesis found this)."""
    batch = make_batch([33, 130], [33, 200], prefix_lens=[[]], prefix_ids=[[-1, -1]], num_q_heads=4,
                       num_kv_heads=1, head_dim=64, dtype="bfloat16", seed=0)
    args, kwargs = batch.to_torch("cuda")
    assert any(x.single_pass for x in plan(validate(*args, **kwargs)).launches)
    _assert_close_to_oracle(batch)


@pytest.mark.parametrize("head_dim", [64, 128])
def test_an_append_request_after_one_decode_token_matches_the_oracle(head_dim, single_pass_tile,
                                                                   poisoned_allocations):
    """The append request's launch computes its one item, whose first token is 1: with that 1
    as a constant, triton 3.6.0 could not compile the Gluon tile (``hopper.single_pass_tile``
    takes it as a value; ``tests/test_hopper_host.py``)."""
    batch = make_batch([1, 32], [300, 300], [[200]], [[0, 0]], num_q_heads=128, num_kv_heads=32, head_dim=head_dim,
                       dtype="float16", block_size=16)
    args, kwargs = batch.to_torch("cuda")
    planned = plan(validate(*args, **kwargs))
    tok_first = REGULAR_FIELDS.index("tok_first")
    assert [x.regular[tok_first] for x in planned.launches if x.single_pass] == [1]
    _assert_close_to_oracle(batch)


@pytest.mark.parametrize("levels", [0, 1], ids=["no prefix", "a level no request uses"])
def test_single_pass_requests_of_a_strided_q_give_the_bits_of_a_packed_one(levels, single_pass_tile):
    """q a view of a fused QKV projection's output (its rows not packed): the kernels read it in
    place, and a launch that reads no prefix gets a stand-in for level 0 that has a tensor
    descriptor (q, strided, has none; ``tests/test_hopper_host.py``)."""
    batch = make_batch([1, 32], [300, 300], [[200]] * levels, [[-1, -1]] * levels, num_q_heads=128,
                       num_kv_heads=32, head_dim=128, dtype="float16", block_size=16)
    (q, cu, kv, prefixes), kwargs = batch.to_torch("cuda")
    planned = prepare(q, cu, kv, prefixes, **kwargs)
    assert any(x.single_pass for x in planned.launches)
    packed = relaycore.relay_attention(q, cu, kv, prefixes, **kwargs, plan=planned)
    qkv = torch.zeros(q.shape[0], 3 * q.shape[1], q.shape[2], dtype=q.dtype, device=q.device)
    qkv[:, :q.shape[1]] = q
    strided = relaycore.relay_attention(qkv[:, :q.shape[1]], cu, kv, prefixes, **kwargs, plan=planned)
    assert torch.equal(strided.out, packed.out) and torch.equal(strided.lse, packed.lse)
    assert_close(packed, batch, steps=triton_steps(validate(q, cu, kv, prefixes, **kwargs)))


@pytest.mark.parametrize("layout", TILE_LAYOUTS)
def test_single_pass_requests_over_layouts_the_tile_cannot_copy_match_the_oracle(layout, single_pass_tile,
                                                                                  poisoned_allocations):
    """Layouts that validation takes and the Gluon tile's copies cannot read in place: level 0
    and the block table are copied for it, the own KV runs ``partial_kernel``
    (``tests/test_hopper_host.py``; on the GPU none of them may fail to compile)."""
    batch = tile_batch(layout)
    (q, cu, kv, (level,)), kwargs = batch.to_torch("cuda")
    kv, level = with_layout(layout, kv, level)
    assert any(x.single_pass for x in plan(validate(q, cu, kv, [level], **kwargs)).launches)
    result = relaycore.relay_attention(q, cu, kv, [level], **kwargs, backend="triton")
    assert_close(result, batch, steps=triton_steps(validate(q, cu, kv, [level], **kwargs)))


#: Drawn batches with requests tall enough to read their context in one pass: up to 80 tokens x
#: GQA 4 or 5 (rows >= 128 from 32 tokens), up to two prefix levels (a request that reads the
#: second takes the split), pages that the tensor-memory copy takes a box per page (8, 16) or not
#: at all (1, 17), or ragged KV. About 1 in 2 drawn batches hold a single-pass request, 1 in 8
#: beside a second level (counted on the CPU over 400 draws, 2026-11-29: 190 and 48).
SINGLE_PASS_SPACE = dict(SPACE, max_batch=3, max_q_len=80, max_levels=2, group_sizes=(4, 5),
                         block_sizes=(1, 8, 16, 17))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_drawn_single_pass_requests_match_the_oracle(dtype, single_pass_tile, poisoned_allocations):
    @settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
    @given(batch=batches(dtypes=(dtype,), **SINGLE_PASS_SPACE))
    def check(batch):
        _assert_close_to_oracle(batch)

    check()


@pytest.mark.parametrize("block_size", [16, None])
def test_single_pass_requests_without_the_causal_mask_match_the_oracle(block_size, single_pass_tile,
                                                                       poisoned_allocations):
    """``causal=False``: every tile walks its request's whole own KV, so its last block ends at
    ``kv_len`` (333 and 700 keys: whole pages, then a page cut short, then keys past the end)."""
    batch = make_batch([130, 257, 1], [333, 700, 50], prefix_lens=[[1000, 129]], prefix_ids=[[0, 1, -1]],
                       num_q_heads=8, num_kv_heads=2, head_dim=128, dtype="float16", block_size=block_size,
                       causal=False, seed=3)
    args, kwargs = batch.to_torch("cuda")
    assert any(x.single_pass for x in plan(validate(*args, **kwargs)).launches)
    _assert_close_to_oracle(batch)


def test_single_pass_paged_and_ragged_give_the_same_bits(single_pass_tile):
    pool = Pool(seed=17)
    requests = [pool.request(40 + 45 * (b % 3), 300 + 97 * b, b % 3 - 1) for b in range(6)]
    ragged = _run(pool.batch(requests))
    for page_size in (1, 8, 16, 24, 64, 256):
        assert _equal(_run(pool.batch(requests, page_size=page_size)), ragged), page_size


# ---------------------------------------------------------------------------------------------
# batches built from a pool of requests, so that one request can run alone or among others


class Pool:
    """Requests with their own tensors, sharing a level of ``P`` prefixes and a second level of
    two (GQA 4, D 128)."""

    def __init__(self, seed: int, dtype=torch.float16, hq=32, hkv=8, d=128, prefix_lens=(2048, 700, 5000),
                 second_lens=(300, 900)):
        self.gen = torch.Generator(device="cuda").manual_seed(seed)
        self.dtype, self.hq, self.hkv, self.d = dtype, hq, hkv, d
        self.prefix_lens = list(prefix_lens)
        self.levels = [(self._rand(sum(lens), hkv), self._rand(sum(lens), hkv),
                        torch.tensor(np.concatenate([[0], np.cumsum(lens)]), dtype=torch.int32, device="cuda"))
                       for lens in (prefix_lens, second_lens)]

    def _rand(self, n, heads):
        return torch.randn(n, heads, self.d, generator=self.gen, device="cuda").to(self.dtype)

    def request(self, q_len: int, kv_len: int, prefix: int, second: int = -1):
        """A request reading prefix ``prefix`` of the first level and ``second`` of the second
        (-1: none)."""
        return dict(q=self._rand(q_len, self.hq), k=self._rand(kv_len, self.hkv), v=self._rand(kv_len, self.hkv),
                    prefix=prefix, second=second)

    def batch(self, requests, page_size=None, levels=1):
        """``(q, cu_seqlens_q, kv, prefixes)`` with the first ``levels`` prefix levels; ragged own
        KV, or paged with shuffled pages."""
        q = torch.cat([r["q"] for r in requests])
        cu_q = torch.tensor(np.concatenate([[0], np.cumsum([len(r["q"]) for r in requests])]), dtype=torch.int32,
                            device="cuda")
        prefixes = [PrefixLevel(*self.levels[level],
                                torch.tensor([r[key] for r in requests], dtype=torch.int32, device="cuda"))
                    for level, key in enumerate(("prefix", "second")[:levels])]
        kv_lens = [len(r["k"]) for r in requests]
        if page_size is None:
            cu_k = torch.tensor(np.concatenate([[0], np.cumsum(kv_lens)]), dtype=torch.int32, device="cuda")
            kv = RaggedKV(torch.cat([r["k"] for r in requests]), torch.cat([r["v"] for r in requests]), cu_k)
        else:
            pages = [-(-n // page_size) for n in kv_lens]
            order = torch.randperm(sum(pages) + 1, generator=self.gen, device="cuda")
            cache_k = torch.full((sum(pages) + 1, page_size, self.hkv, self.d), float("nan"), dtype=self.dtype,
                                 device="cuda")
            cache_v = cache_k.clone()
            table = torch.zeros(len(requests), max(pages + [1]), dtype=torch.int32, device="cuda")
            at = 0
            for b, r in enumerate(requests):
                for j in range(pages[b]):
                    block = order[at]
                    at += 1
                    table[b, j] = block
                    rows = slice(j * page_size, min((j + 1) * page_size, kv_lens[b]))
                    n = rows.stop - rows.start
                    cache_k[block, :n] = r["k"][rows]
                    cache_v[block, :n] = r["v"][rows]
            kv = PagedKV(cache_k, cache_v, table, torch.tensor(kv_lens, dtype=torch.int32, device="cuda"))
        return q, cu_q, kv, prefixes


def _run(args, **kwargs):
    return relaycore.relay_attention(*args, backend="triton", **kwargs)


def _rows(state, lo, hi):
    return state.out[lo:hi], state.lse[lo:hi]


def _equal(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("q_len, own", [(1, 130), (37, 300), (96, 400)])
def test_a_request_has_the_same_bits_alone_and_in_any_batch(q_len, own):
    """Alone with one prefix level, then in batches of one level and of two, where other requests
    read the second: at 37 and 96 queries (148 and 384 rows at GQA 4) the request is single-pass
    (``plan.single_pass_requests``), and stays so beside a second level it does not read."""
    pool = Pool(seed=q_len)
    rng = np.random.default_rng(q_len)
    target = pool.request(q_len, own, prefix=0)
    alone = _rows(_run(pool.batch([target])), 0, q_len)
    assert _equal(_rows(_run(pool.batch([target], levels=2)), 0, q_len), alone), "alone, beside an unread level"
    others = [pool.request(q, int(rng.integers(q, q + 400)), int(rng.integers(-1, 3)), int(rng.integers(-1, 2)))
              for q in (int(rng.choice([1, 1, 1, 5, 40, 96])) for _ in range(255))]
    for i, size in enumerate((1, 2, 3, 8, 31, 64, 100, 256)):
        at = int(rng.integers(0, size))
        requests = others[: size - 1]
        requests = requests[:at] + [target] + requests[at:]
        args = pool.batch(requests, page_size=16 if size % 2 else None, levels=1 + i % 2)
        lo = sum(len(r["q"]) for r in requests[:at])
        assert _equal(_rows(_run(args), lo, lo + q_len), alone), f"batch of {size}, target at {at}, {1 + i % 2} levels"


def test_reruns_are_bitwise_identical():
    pool = Pool(seed=7)
    requests = [pool.request(1 if b % 3 else 17, 200 + b, b % 3) for b in range(48)]
    args = pool.batch(requests, page_size=16)
    planned = prepare(*args)
    first = relaycore.relay_attention(*args, plan=planned)
    for _ in range(100):
        again = relaycore.relay_attention(*args, plan=planned)
        assert _equal(again, first)


@pytest.mark.parametrize("page_size", [None, 16], ids=["ragged", "paged"])
def test_a_plan_of_inference_tensors_gives_the_bits_of_the_call(page_size):
    """A serving loop under ``torch.inference_mode``: its GPU metadata keep no version counter,
    and a plan (or a graph plan) of them runs as one of ordinary tensors does."""
    from relaycore.fast.triton import prepare_graph

    pool = Pool(seed=11)
    requests = [pool.request(1 + 15 * (b % 5 == 0), 120 + 9 * b, b % 3 - 1) for b in range(10)]
    want = _run(pool.batch(requests, page_size=page_size))
    with torch.inference_mode():
        args = pool.batch(requests, page_size=page_size)
        assert args[1].is_inference()
        for planned in (prepare(*args), prepare_graph(*args)):
            assert _equal(relaycore.relay_attention(*args, plan=planned), want)


def test_paged_and_ragged_give_the_same_bits():
    pool = Pool(seed=3)
    requests = [pool.request(1 + 9 * (b % 2), 150 + 37 * b, b % 3 - 1) for b in range(12)]
    ragged = _run(pool.batch(requests))
    for page_size in (1, 16, 64):
        assert _equal(_run(pool.batch(requests, page_size=page_size)), ragged)


def test_relay_and_per_request_grouping_give_the_same_bits():
    pool = Pool(seed=5)
    requests = [pool.request(1 + 20 * (b % 4 == 0), 300, b % 2) for b in range(20)]
    args = pool.batch(requests, page_size=16)
    meta = validate(*args)
    relay = run_planned(plan(meta, relay=True), args[0], args[2], args[3])
    per_request = run_planned(plan(meta, relay=False), args[0], args[2], args[3])
    assert _equal(relay, per_request)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_requests_without_a_prefix_write_their_result_with_the_merge_bits(dtype):
    """Decode requests that see no prefix and whose own KV is one chunk write their result from
    their own tiles, with no state and no merge (``plan.single_pass_requests``): the merge of
    one state returns it unchanged, which rests on this GPU's ``exp2(0) = 1`` and ``log2(1) =
    0``. Beside requests that read a prefix, and alone (no merge launch at all)."""
    pool = Pool(seed=13, dtype=dtype)
    rng = np.random.default_rng(13)
    requests = [pool.request(1 + 4 * (b % 5 == 0), int(rng.integers(8, 257)), -1 if b % 3 else b % 2)
                for b in range(40)]
    for chosen in (requests, [r for r in requests if r["prefix"] < 0]):
        for page_size in (16, None):
            args = pool.batch(chosen, page_size=page_size)
            meta = validate(*args)
            direct = plan(meta)
            assert any(x.single_pass and not x.reads_prefix for x in direct.launches)
            merged = run_planned(plan(meta, unshared_single_pass=False), args[0], args[2], args[3])
            assert _equal(run_planned(direct, args[0], args[2], args[3]), merged)


@pytest.mark.parametrize("append", [0, 2], ids=["decode", "with single-pass requests"])
def test_cuda_graph_replay_gives_the_eager_bits(append):
    """Decode requests, and with append requests beside them (the single-pass tile: on sm_90
    the Gluon one, whose tensor descriptors the capture holds)."""
    pool = Pool(seed=11)
    requests = [pool.request(1, 128, 0) for _ in range(32)] + [pool.request(160, 900, 1) for _ in range(append)]
    args = pool.batch(requests, page_size=16)
    planned = prepare(*args)
    eager = relaycore.relay_attention(*args, plan=planned)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        relaycore.relay_attention(*args, plan=planned)  # warm-up outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = relaycore.relay_attention(*args, plan=planned)
    graph.replay()
    torch.cuda.synchronize()
    assert _equal(captured, eager)


@pytest.mark.parametrize("offset", [0, 1], ids=["aligned", "one element off 16 bytes"])
@pytest.mark.parametrize("append_prefix", [1, -1], ids=["append on a prefix", "append alone"])
def test_buffers_given_hold_the_bits_of_a_call_without_them(offset, append_prefix, single_pass_tile):
    """``out=``/``lse=`` poisoned with NaN: decode requests beside append requests (the
    single-pass tile; on sm_90 the Gluon one, which, where its launch reads no prefix, compiles
    against a stand-in for level 0: ``out``, or a tensor like it where ``out`` has no tensor
    descriptor), eager and replayed from a CUDA graph captured with them."""
    pool = Pool(seed=17)
    requests = ([pool.request(1, 128, 0) for _ in range(24)] + [pool.request(1, 200, -1) for _ in range(4)]
                + [pool.request(130, 600, append_prefix) for _ in range(2)])
    args = pool.batch(requests, page_size=16)
    planned = prepare(*args)
    assert any(x.single_pass and x.block_m == hopper.TILE_M and x.reads_prefix == (append_prefix >= 0)
               for x in planned.launches)
    want = relaycore.relay_attention(*args, plan=planned)

    def poisoned():
        pool_out = torch.full((want.out.numel() + offset,), float("nan"), dtype=want.out.dtype, device="cuda")
        return pool_out[offset:].view(want.out.shape), torch.full_like(want.lse, float("nan"))

    out, lse = poisoned()
    got = relaycore.relay_attention(*args, plan=planned, out=out, lse=lse)
    assert got.out is out and got.lse is lse and _equal(got, want)
    assert _equal(_run(args, out=poisoned()[0]), want)  # without a plan, out alone
    out, lse = poisoned()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        relaycore.relay_attention(*args, plan=planned, out=out, lse=lse)  # warm-up outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        relaycore.relay_attention(*args, plan=planned, out=out, lse=lse)
    out.fill_(float("nan"))
    lse.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, want.out) and torch.equal(lse, want.lse)


def test_torch_compile_gives_the_eager_bits():
    pool = Pool(seed=13)
    requests = [pool.request(1 + 8 * (b % 5 == 0), 128 + b, b % 2) for b in range(16)]
    q, cu, kv, prefixes = pool.batch(requests, page_size=16)
    planned = prepare(q, cu, kv, prefixes)
    eager = relaycore.relay_attention(q, cu, kv, prefixes, plan=planned)

    def step(q, kv, prefixes):
        out, lse = relaycore.relay_attention(q, cu, kv, prefixes, plan=planned)
        return out, lse

    compiled = torch.compile(step, fullgraph=True)(q, kv, prefixes)
    assert _equal(compiled, eager)

    def into(q, kv, prefixes, out, lse):  # the op that writes into result buffers
        return relaycore.relay_attention(q, cu, kv, prefixes, plan=planned, out=out, lse=lse)

    out, lse = torch.full_like(eager.out, float("nan")), torch.full_like(eager.lse, float("nan"))
    written = torch.compile(into, fullgraph=True)(q, kv, prefixes, out, lse)
    assert written.out is out and written.lse is lse and _equal(written, eager)


@pytest.mark.parametrize("head_dim", [16, 32, 64, 80, 128, 192, 256])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_every_head_dim_and_dtype(head_dim, dtype, poisoned_allocations):
    # decode and append rows, two levels, paged: every tile height and chunk count occur
    batch = make_batch([1, 40, 0, 3], [300, 40, 7, 2100], prefix_lens=[[700, 5], [1300]],
                       prefix_ids=[[0, 0, 1, -1], [0, -1, 0, 0]], num_q_heads=8, num_kv_heads=2, head_dim=head_dim,
                       dtype=dtype, block_size=16, seed=head_dim)
    _assert_close_to_oracle(batch)
