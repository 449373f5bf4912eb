"""Host time of planning a decode step, with the metadata on the GPU and on the host.

Run on the GPU machine: ``python3 tests/gpu/perf_planning.py OUT_DIR``. For each batch: one
prefix of 8192 tokens, 128 own tokens a request in pages of 16, block tables of 256 columns,
Hq 32, Hkv 8, D 128, fp16. Times ``prepare`` and ``GraphPlan.update`` (host wall clock, mean of
50 calls, median of 3 rounds that take the calls in turn) in two situations:

* **idle**: the GPU has nothing queued (a ``torch.cuda.synchronize()`` before each call);
* **busy**: the stream has ``QUEUED_MS`` of work queued ahead of the call (a spinning kernel,
  ``torch.cuda._sleep``), as when an engine plans step ``n + 1`` while step ``n`` runs (the
  attention alone of a 32-layer model's decode step at batch 128 and these shapes takes about
  32 x 99 us on an H200, ``docs/benchmarks``). A call that reads metadata
  from the GPU waits for that work; one with the metadata on the host does not.

Beside them, where FlashInfer imports (from ``.whl``, as ``perf_host_call.py``), the ``plan``
of its wrappers for the same batch sizes (``relaycore.bench.providers``' planners: the cascade
wrapper and the per-request paged decode), with their metadata on the GPU, or on the host where
relaycore's is (``providers.FLASHINFER_HOST_METADATA``: FlashInfer's page lists stay on the
GPU; relaycore's host metadata are NumPy arrays, its block table among them). Each wrapper's result
after its plan is first checked against the float64 oracle (``relaycore.bench.problem``);
one that fails is not timed.

Prints one line per point and writes them to ``OUT_DIR/planning.json`` (the card, the versions,
the commit and the date beside them: the committed ``docs/benchmarks/planning.json``, whose
figure ``relaycore.bench.host`` draws).
"""

from __future__ import annotations

import json
import statistics
import sys
import time

import numpy as np
import torch

from relaycore import PagedKV, PrefixLevel
from relaycore.bench.grids import Point
from relaycore.bench.problem import check, compute_oracle, make_problem
from relaycore.bench.providers import Unsupported, flashinfer_cascade_planner, flashinfer_paged_planner
from relaycore.bench.results import environment
from relaycore.fast.triton import prepare, prepare_graph

PAGE, COLUMNS, OWN, PREFIX = 16, 256, 128, 8192
HQ, HKV, D = 32, 8, 128
CALLS = 50
ROUNDS = 3
QUEUED_MS = 3.0
WHAT = (f"host wall time of planning a decode step (one prefix of {PREFIX}, {OWN} own tokens a request in {PAGE}-token "
        f"pages, relaycore's block tables of {COLUMNS} columns, Hq {HQ}, Hkv {HKV}, D {D}, fp16): relaycore's prepare and "
        f"GraphPlan.update, FlashInfer's cascade and paged-decode plan; metadata on the GPU or the host (FlashInfer: "
        f"index pointers and last-page lengths on the host, page lists on the GPU); the GPU idle or with "
        f"{QUEUED_MS:g} ms of work queued; mean of {CALLS} calls, median of {ROUNDS} rounds that take the calls in "
        f"turn, ms (tests/gpu/perf_planning.py OUT)")


def batch_args(batch: int, host: bool):
    """The decode batch's arguments, metadata on the host (NumPy) or on the GPU."""
    gen = torch.Generator(device="cuda").manual_seed(batch)
    q = torch.randn(batch, HQ, D, generator=gen, device="cuda", dtype=torch.float16)
    blocks = batch * COLUMNS
    cache = torch.randn(blocks, PAGE, HKV, D, generator=gen, device="cuda", dtype=torch.float16)
    prefix = torch.randn(PREFIX, HKV, D, generator=gen, device="cuda", dtype=torch.float16)
    meta = dict(cu=np.arange(batch + 1), table=np.random.default_rng(batch).permutation(blocks).reshape(batch, COLUMNS),
                lens=np.full(batch, OWN), prefix_cu=np.array([0, PREFIX]), ids=np.zeros(batch))
    meta = {k: v.astype(np.int32) if host else torch.tensor(v, dtype=torch.int32, device="cuda") for k, v in meta.items()}
    kv = PagedKV(cache, cache, meta["table"], meta["lens"])
    return q, meta["cu"], kv, [PrefixLevel(prefix, prefix, meta["prefix_cu"], meta["ids"])]


def spin_ms(cycles: int) -> float:
    """GPU time of ``torch.cuda._sleep(cycles)``."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    torch.cuda._sleep(cycles)
    end.record()
    end.synchronize()
    return start.elapsed_time(end)


def host_ms(fn, busy_cycles: int) -> float:
    """Mean host wall time of ``fn`` in ms, with ``busy_cycles`` of a spinning kernel queued
    ahead of each call (0: the GPU idle)."""
    fn()
    total = 0.0
    for _ in range(CALLS):
        torch.cuda.synchronize()
        if busy_cycles:
            torch.cuda._sleep(busy_cycles)
        start = time.perf_counter()
        fn()
        total += time.perf_counter() - start
    torch.cuda.synchronize()
    return total / CALLS * 1e3


def peer_plans(batch: int, host: bool):
    """``{name: plan}``: FlashInfer's wrappers' ``plan`` calls for a decode batch of these sizes,
    each checked once through a run against the oracle (printed and left out where FlashInfer
    is missing or a result fails)."""
    try:
        import flashinfer  # noqa: F401
    except ImportError as exc:
        print(f"FlashInfer not timed: {exc}", flush=True)
        return {}
    problem = make_problem(Point("decode", batch, HQ, HKV, D, PREFIX, OWN, 1), "cuda")
    oracle = compute_oracle(problem)
    plans = {}
    for name, planner in (("flashinfer_cascade", flashinfer_cascade_planner),
                          ("flashinfer_paged", flashinfer_paged_planner)):
        try:
            wrapper, plan, cache, _ = planner(problem, host=host)
            plan()
            verdict = check(oracle, wrapper.run(problem.q, cache))
        except (Unsupported, RuntimeError) as exc:
            print(f"B {batch} {name}: not timed, {exc}", flush=True)
            continue
        if not verdict.passed:
            print(f"B {batch} {name}: not timed, {verdict.message}", flush=True)
            continue
        plans[name] = plan
    return plans


def main(out_dir: str) -> None:
    spin_ms(1000)  # loads the kernel
    cycles = int(QUEUED_MS / spin_ms(10_000_000) * 10_000_000)
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}: busy = {spin_ms(cycles):.2f} ms queued",
          flush=True)
    rows = []
    for batch in (8, 32, 128):
        for host in (False, True):
            args = batch_args(batch, host)
            graph = prepare_graph(*args)
            peers = peer_plans(batch, host)
            calls = dict(prepare=lambda: prepare(*args), update=lambda: graph.update(*args),
                         **{f"{name}_plan": plan for name, plan in peers.items()})
            for busy in (0, cycles):
                times = {name: [] for name in calls}
                for _ in range(ROUNDS):  # in turn: the host's speed drifts (perf_host_call.py)
                    for name, fn in calls.items():
                        times[name].append(host_ms(fn, busy))
                row = dict(batch=batch, metadata="host" if host else "gpu", gpu="busy" if busy else "idle",
                           **{f"{name}_ms": statistics.median(t) for name, t in times.items()})
                rows.append(row)
                print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    with open(f"{out_dir}/planning.json", "w") as f:
        json.dump(dict(what=WHAT, environment=environment("cuda"), rows=rows), f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".")
