"""A serving engine's decode loop over several steps, under Triton's CPU interpreter
(``TRITON_INTERPRET=1``, set as ``tests/test_triton_interpret.py`` sets it, with the same
fallback to a fresh process).

What the single-batch tests do not reach: state carried from step to step. One pool of pages
per layer is shared by the requests, handed out in shuffled order, and a finished request's
pages are poisoned with NaN and handed to the next request that joins; block tables are wider
than any request needs, past each request's pages holding ids of other requests' pages, -1 and
ids past the pool; requests join and leave, the scheduler reorders them, one prefills a chunk
while the others decode, on two prefix levels of several prompts (and none). Each step plans
once and every layer's call writes into views of one output buffer poisoned with NaN. Every
result is held to the oracle's derived bound at the kernels' counted steps, and to
``torch.equal`` against itself rerun and against each request alone. A graph plan replays a
padded decode batch in the same way, and refuses a step past its capacities naming the
argument.
"""

from __future__ import annotations

import threading

import pytest

from interpreted import TINY, dots_summed_in_order, fresh_process_only, in_process, run_in_a_fresh_process, torch  # noqa: E402,F401,I001

import numpy as np  # noqa: E402

import relaycore  # noqa: E402
from relaycore import PagedKV, PrefixLevel  # noqa: E402
from relaycore.fast.triton import plan, prepare, prepare_graph, run_planned  # noqa: E402
from relaycore.testing import Batch, assert_close, round_to  # noqa: E402
from relaycore.validation import validate  # noqa: E402
from tolerances import triton_steps  # noqa: E402

HQ, HKV, D, PAGE, LAYERS = 4, 2, 16, 4, 2


@fresh_process_only
def test_in_a_fresh_process():
    run_in_a_fresh_process(__file__, timeout=600)


class Engine:
    """Per layer a pool of pages (float64 values exact in ``dtype`` beside the torch pool the
    kernels read; free memory NaN) and two prefix levels; requests that take pages as they grow.

    Args:
        width: block table columns. The table's rows past a request's pages hold ``GARBAGE``
            and ids of other pages, which are never read.
    """

    GARBAGE = (-1, 10**6, 2**31 - 1)

    def __init__(self, *, dtype: str, num_pages: int, width: int, prefix_lens, seed: int):
        self.rng = np.random.default_rng(seed)
        self.dtype, self.torch_dtype, self.width, self.num_pages = dtype, getattr(torch, dtype), width, num_pages
        shape = (num_pages, PAGE, HKV, D)
        self.pool64 = [[np.full(shape, np.nan) for _ in range(2)] for _ in range(LAYERS)]  # [layer][k, v]
        self.pool = [[torch.full(shape, float("nan"), dtype=self.torch_dtype) for _ in range(2)] for _ in range(LAYERS)]
        self.free = [int(p) for p in self.rng.permutation(num_pages)]  # popped from the end: freed pages first
        self.prefix_cu = [np.concatenate([[0], np.cumsum(lens)]).astype(np.int32) for lens in prefix_lens]
        self.prefix64 = [[(self.values(sum(lens)), self.values(sum(lens))) for lens in prefix_lens] for _ in range(LAYERS)]
        self.requests = {}  # id -> {"pages", "kv_len", "ids"}

    def values(self, *shape):
        return round_to(self.rng.standard_normal(shape + (HKV, D) if len(shape) == 1 else shape), self.dtype)

    def tensor(self, x):
        return torch.from_numpy(np.ascontiguousarray(x)).to(self.torch_dtype)

    def join(self, rid, ids):
        self.requests[rid] = {"pages": [], "kv_len": 0, "ids": list(ids)}

    def leave(self, rid):
        pages = self.requests.pop(rid)["pages"]
        for layer in range(LAYERS):
            for x64, x in zip(self.pool64[layer], self.pool[layer]):
                x64[pages], x[pages] = np.nan, float("nan")  # stale memory
        self.free += pages

    def append(self, rid, n):
        """Write the KV of ``n`` new tokens of request ``rid`` into every layer's pool."""
        req = self.requests[rid]
        for t in range(req["kv_len"], req["kv_len"] + n):
            if t % PAGE == 0:
                req["pages"].append(self.free.pop())
            page = req["pages"][-1]
            for layer in range(LAYERS):
                for x64, x in zip(self.pool64[layer], self.pool[layer]):
                    x64[page, t % PAGE] = self.values(1)[0]
                    x[page, t % PAGE] = self.tensor(x64[page, t % PAGE])
        req["kv_len"] += n

    def step(self, order, q_lens):
        """Append the scheduled tokens; the step's metadata as NumPy arrays."""
        for rid, n in zip(order, q_lens):
            self.append(rid, n)
        table = np.empty((len(order), self.width), dtype=np.int64)
        for b, rid in enumerate(order):
            pages = self.requests[rid]["pages"]
            table[b] = pages + self.rng.choice(self.GARBAGE + tuple(range(self.num_pages)),
                                               size=self.width - len(pages)).tolist()
        return {"cu_q": np.concatenate([[0], np.cumsum(q_lens)]).astype(np.int32),
                "kv_lens": np.array([self.requests[r]["kv_len"] for r in order], dtype=np.int32),
                "table": table.astype(np.int32),
                "ids": [np.array([self.requests[r]["ids"][i] for r in order], dtype=np.int32)
                        for i in range(len(self.prefix_cu))]}

    def arguments(self, layer, q, meta, as_tensors=False):
        """``(q, cu_seqlens_q, kv, prefixes)`` of ``layer``: fresh metadata arrays (NumPy, or CPU tensors)."""
        host = (lambda x: torch.from_numpy(x.copy())) if as_tensors else (lambda x: x.copy())
        kv = PagedKV(*self.pool[layer], host(meta["table"]), host(meta["kv_lens"]))
        levels = [PrefixLevel(self.tensor(k), self.tensor(v), host(cu), host(ids))
                  for (k, v), cu, ids in zip(self.prefix64[layer], self.prefix_cu, meta["ids"])]
        return q, host(meta["cu_q"]), kv, levels

    def batch(self, layer, q64, meta) -> Batch:
        """The step's problem for the oracle: the float64 values the kernels read."""
        kv = PagedKV(*self.pool64[layer], meta["table"], meta["kv_lens"])
        levels = tuple(PrefixLevel(k, v, cu, ids) for (k, v), cu, ids in zip(self.prefix64[layer], self.prefix_cu,
                                                                          meta["ids"]))
        return Batch(q64, meta["cu_q"], kv, levels, True, None, self.dtype)

    def queries(self, total_q):
        q64 = round_to(self.rng.standard_normal((total_q, HQ, D)), self.dtype)
        return q64, self.tensor(q64)


def _same(a, b) -> bool:
    return torch.equal(a.out, b.out) and torch.equal(a.lse, b.lse)


def _assert_close(result, batch, args, config=None):
    return assert_close(result, batch, steps=triton_steps(validate(*args), config))


#: Per step: requests that leave, requests that join (id, prefix ids at levels 0 and 1, prompt length).
EVENTS = {
    0: ([], [(0, (0, 1), 6), (1, (1, -1), 3), (2, (-1, -1), 5)]),
    2: ([0], [(3, (0, 0), 7)]),  # 3 takes 0's pages, poisoned
    3: ([], [(4, (-1, 1), 2)]),
}


@in_process
@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_a_decode_loop_over_a_shared_page_pool_matches_the_oracle_alone_or_batched(dtype):
    engine = Engine(dtype=dtype, num_pages=24, width=5, prefix_lens=[[11, 19], [6, 9]], seed=7)
    chunk, pending = 4, {}
    out_buffer = torch.empty(16, HQ * D, dtype=engine.torch_dtype)  # the engine's [max_tokens, Hq * D]
    lse_buffer = torch.empty(16, HQ)
    reused = set()
    for step in range(5):
        leaving, joining = EVENTS.get(step, ([], []))
        freed = {p for rid in leaving for p in engine.requests[rid]["pages"]}
        for rid in leaving:
            engine.leave(rid)
        for rid, ids, prompt in joining:
            engine.join(rid, ids)
            pending[rid] = prompt
        order = list(engine.requests)
        engine.rng.shuffle(order)
        q_lens = [min(chunk, pending.get(rid, 0)) or 1 for rid in order]  # a prefill chunk, or a decode token
        for rid, n in zip(order, q_lens):
            pending[rid] = max(0, pending.get(rid, 0) - n)
        meta = engine.step(order, q_lens)
        reused |= freed & {p for rid in order for p in engine.requests[rid]["pages"]}
        total_q = int(meta["cu_q"][-1])
        queries = [engine.queries(total_q) for _ in range(LAYERS)]
        planned = prepare(*engine.arguments(0, queries[0][1], meta))  # once per step, for every layer
        for layer, (q64, q) in enumerate(queries):
            args = engine.arguments(layer, q, meta)
            out_buffer.fill_(float("nan"))
            lse_buffer.fill_(float("nan"))
            got = relaycore.relay_attention(*args, plan=planned, out=out_buffer[:total_q].view(total_q, HQ, D),
                                            lse=lse_buffer[:total_q])
            assert got.out.data_ptr() == out_buffer.data_ptr() and got.lse.data_ptr() == lse_buffer.data_ptr()
            _assert_close(got, engine.batch(layer, q64, meta), args)
            got = relaycore.AttentionState(got.out.clone(), got.lse.clone())
            assert _same(relaycore.relay_attention(*args, plan=planned), got), f"step {step}, layer {layer}: rerun"
            if layer:
                continue
            for b, rid in enumerate(order):  # batch invariance: each request alone, in a table of its own row
                lo, hi = int(meta["cu_q"][b]), int(meta["cu_q"][b + 1])
                alone = {"cu_q": np.array([0, hi - lo], dtype=np.int32), "kv_lens": meta["kv_lens"][b : b + 1],
                         "table": meta["table"][b : b + 1], "ids": [ids[b : b + 1] for ids in meta["ids"]]}
                one = relaycore.relay_attention(*engine.arguments(layer, q[lo:hi], alone, as_tensors=True),
                                                backend="triton")
                assert _same(one, relaycore.AttentionState(got.out[lo:hi], got.lse[lo:hi])), f"step {step}, request {rid}"
    assert reused, "a page freed by a request that left was handed to one that joined"


@in_process
@pytest.mark.parametrize("as_tensors", [False, True], ids=["numpy", "tensors"])
def test_a_graph_plan_replays_a_padded_decode_loop_within_the_oracle_bound(as_tensors, poisoned_allocations):
    """Four decode slots, filled by two or four requests and padded with requests of one token in
    a page of their own; own KV across 16-key chunks (``TINY``); per-layer buffers reused at
    every step. A step past the plan's capacities is refused naming the argument, and leaves
    the plan as the last step's update made it."""
    capacity = 4
    engine = Engine(dtype="float16", num_pages=40, width=6, prefix_lens=[[11, 19], [6, 9]], seed=3)
    dummy = engine.free.pop()
    for layer in range(LAYERS):
        for x64, x in zip(engine.pool64[layer], engine.pool[layer]):
            x64[dummy, 0] = engine.values(1)[0]
            x[dummy, 0] = engine.tensor(x64[dummy, 0])
    for rid, ids, prompt in [(0, (0, 1), 14), (1, (1, -1), 17), (2, (-1, 0), 12), (3, (0, 0), 20)]:
        engine.join(rid, ids)
        engine.append(rid, prompt - 1)  # prefilled; each step appends one token

    def padded(order):
        meta = engine.step(order, [1] * len(order))
        pad = capacity - len(order)
        table = np.concatenate([meta["table"], np.full((pad, engine.width), -1, dtype=np.int32)])
        table[len(order):, 0] = dummy
        return {"cu_q": np.arange(capacity + 1, dtype=np.int32), "table": table,
                "kv_lens": np.concatenate([meta["kv_lens"], np.ones(pad, dtype=np.int32)]),
                "ids": [np.concatenate([ids, np.full(pad, -1, dtype=np.int32)]) for ids in meta["ids"]]}

    outs = [torch.empty(capacity, HQ, D, dtype=torch.float16) for _ in range(LAYERS)]
    lses = [torch.empty(capacity, HQ) for _ in range(LAYERS)]
    graph = None
    for step, order in enumerate([[0, 1], [3, 2, 1, 0], [3, 1]]):
        meta = padded(order)
        queries = [engine.queries(capacity) for _ in range(LAYERS)]
        if graph is None:
            graph = prepare_graph(*engine.arguments(0, queries[0][1], meta, as_tensors), config=TINY)
        else:
            graph.update(*engine.arguments(0, queries[0][1], meta, as_tensors))
        for layer, (q64, q) in enumerate(queries):
            args = engine.arguments(layer, q, meta, as_tensors)
            outs[layer].fill_(float("nan"))
            lses[layer].fill_(float("nan"))
            got = relaycore.relay_attention(*args, plan=graph, out=outs[layer], lse=lses[layer])
            _assert_close(got, engine.batch(layer, q64, meta), args, TINY)
            own = run_planned(plan(validate(*args), config=TINY), q, args[2], args[3])
            assert _same(got, own), f"step {step}, layer {layer}"
    assert int(meta["kv_lens"].max()) > 16, "own KV of two chunks"
    q, last = args[0], relaycore.AttentionState(got.out.clone(), got.lse.clone())
    past = dict(meta, kv_lens=meta["kv_lens"].copy())
    past["kv_lens"][0] = engine.width * PAGE + 1
    with pytest.raises(ValueError, match=r"^kv\.block_table: expected at least 7 columns \(request 0 needs them for "
                                         r"kv_lens 25 at block_size 4\), got 6 columns"):
        graph.update(*engine.arguments(LAYERS - 1, q, past, as_tensors))
    more = {"cu_q": np.arange(capacity + 2, dtype=np.int32), "kv_lens": np.append(meta["kv_lens"], 1),
            "table": np.concatenate([meta["table"], meta["table"][-1:]]),
            "ids": [np.append(ids, -1).astype(np.int32) for ids in meta["ids"]]}
    more["kv_lens"] = more["kv_lens"].astype(np.int32)
    with pytest.raises(ValueError, match=r"^q: expected shape \(4, 4, 16\), dtype float16 on cpu \(the graph plan's\), "
                                         r"got shape \(5, 4, 16\)"):
        graph.update(*engine.arguments(LAYERS - 1, engine.queries(capacity + 1)[1], more, as_tensors))
    longer = [np.array([0, 14, 15], dtype=np.int32), engine.prefix_cu[1]]
    engine.prefix_cu, kept = longer, engine.prefix_cu
    with pytest.raises(ValueError, match=r"^prefixes\[0\]\.cu_seqlens: expected the last offset to equal "
                                         r"prefixes\[0\]\.k\.shape\[0\] = 30, got 15"):
        graph.update(*engine.arguments(LAYERS - 1, q, meta, as_tensors))
    engine.prefix_cu = kept
    assert _same(relaycore.relay_attention(*engine.arguments(LAYERS - 1, q, meta, as_tensors), plan=graph), last)


@in_process
def test_a_graph_plan_made_under_inference_mode_is_updated_outside_it():
    """An engine that captures under ``torch.inference_mode`` and plans each step without it (in
    a scheduler thread, say: the mode is per thread): the graph plan's buffer, which ``update``
    writes in place, is a normal tensor. It was an inference tensor, and ``update`` raised
    torch's ``RuntimeError: Inplace update to inference tensor outside InferenceMode``."""
    engine = Engine(dtype="float16", num_pages=12, width=3, prefix_lens=[[7, 5]], seed=1)
    for rid, ids, prompt in [(0, (0,), 5), (1, (-1,), 9), (2, (1,), 3)]:
        engine.join(rid, ids)
        engine.append(rid, prompt - 1)
    steps = [engine.step([0, 1, 2], [1, 1, 1]) for _ in range(3)]
    q = engine.queries(3)[1]
    with torch.inference_mode():
        graph = prepare_graph(*engine.arguments(0, q, steps[0]), config=TINY)
    failures = []

    def update(meta):
        try:
            graph.update(*engine.arguments(0, q, meta))
        except Exception as error:  # noqa: BLE001  (reported below, in the test's thread)
            failures.append(error)

    for meta in steps[1:]:
        worker = threading.Thread(target=update, args=(meta,))
        worker.start()
        worker.join()
        assert not failures, failures
        args = engine.arguments(0, q, meta)
        own = run_planned(plan(validate(*args), config=TINY), q, args[2], args[3])
        assert _same(relaycore.relay_attention(*args, plan=graph), own)
    with torch.inference_mode():  # and back under the mode
        graph.update(*engine.arguments(0, q, steps[0]))
        assert not graph.plan.slot_offsets.is_inference()
