"""Host time of one planned call, relaycore against the peers.

Run on the GPU machine: ``python3 tests/gpu/perf_host_call.py OUT_DIR [PROVIDER ...]``
(FlashInfer from ``.whl`` on ``PYTHONPATH`` where present, installed with ``--no-index
--no-deps`` as ``scripts/bench_gpu.sh`` does; default providers: ``PROVIDERS``). For each
point, every provider the benchmark knows (``relaycore.bench.providers``) is prepared once
(relaycore's ``prepare``, FlashInfer's ``plan``) and checked against the oracle; then each of
``ROUNDS`` rounds times ``CALLS`` calls of every provider in turn (the order rotating from round
to round), each behind a spinning kernel so that no launch waits for the GPU. The host wall
time per call is what a model's layer costs the host outside a CUDA graph (eager serving,
``torch.compile`` without graphs); inside a CUDA graph none of it exists. The rounds
interleave the providers because the GPU machine's host drifts by up to a third within a
minute (``fast/triton/NOTES.md``, session 24); the thread's CPU time per call, which leaves out
the time the host ran something else, is reported beside the wall time.

Prints one line per point and provider (medians over the rounds), writes them to
``OUT_DIR/host_call.json`` (the card, the versions, the commit and the date beside them: the
committed ``docs/benchmarks/host_call.json``, whose figure ``relaycore.bench.host`` draws), and a
cProfile of relaycore's calls at the first point to ``OUT_DIR/perf_host_call.prof.txt``.
"""

from __future__ import annotations

import cProfile
import io
import json
import os
import pstats
import statistics
import sys
import time
from typing import Callable, Dict, Tuple

import torch

from relaycore.bench.grids import Point
from relaycore.bench.problem import check, compute_oracle, make_problem
from relaycore.bench.providers import Unsupported, by_name
from relaycore.bench.results import environment

CALLS = 200
ROUNDS = 7
POINTS = [
    Point("decode", 8, 32, 8, 128, 8192, 128, 1),
    Point("decode", 128, 32, 8, 128, 8192, 128, 1),
    Point("decode", 32, 32, 32, 128, 2048, 128, 1),
    Point("append", 4, 32, 8, 128, 2048, 512, 512),
]
PROVIDERS = ["relaycore_triton", "flashinfer_cascade", "flashinfer_paged", "sdpa"]
WHAT = (f"host wall time of one eager call with a plan made beforehand (relaycore: relay_attention(plan=); "
        f"FlashInfer: wrapper.run after plan; SDPA over the concatenated KV), {CALLS} calls queued behind a spinning "
        f"kernel so that no launch waits for the GPU, {ROUNDS} rounds that time the providers in turn; host_us = "
        f"median wall time per call, rounds = [wall_us, cpu_us] of each round (tests/gpu/perf_host_call.py OUT)")


def host_us(fn, calls: int) -> Tuple[float, float]:
    """``(wall, cpu)``: the host's wall time and the thread's CPU time per call of ``fn`` over
    ``calls`` calls, in microseconds, behind a spinning kernel long enough that no launch waits
    for the GPU."""
    torch.cuda.synchronize()
    torch.cuda._sleep(50_000_000)  # tens of ms of queued GPU time on an H100/H200
    wall, cpu = time.perf_counter(), time.thread_time()
    for _ in range(calls):
        fn()
    wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
    torch.cuda.synchronize()
    return wall / calls * 1e6, cpu / calls * 1e6


def prepared_calls(point: Point, problem, providers) -> Dict[Tuple[str, str], Callable[[], object]]:
    """``{(provider, variant): call}`` of every provider that runs ``problem`` and passes the
    oracle's check; the others are printed with the reason."""
    oracle = compute_oracle(problem)
    calls = {}
    for provider in by_name(providers):
        reason = provider.probe()
        if reason is not None:
            print(f"{point.label}  {provider.name}: skipped ({reason})", flush=True)
            continue
        for variant, setup in provider.variants(problem):
            try:
                prepared = setup()
                verdict = check(oracle, *prepared.result(prepared.fn()))
            except (Unsupported, RuntimeError) as exc:  # e.g. an SDPA backend that has no kernel here
                print(f"{point.label}  {provider.name}/{variant}: not timed, {exc}", flush=True)
                continue
            if not verdict.passed:
                print(f"{point.label}  {provider.name}/{variant}: not timed, {verdict.message}", flush=True)
                continue
            calls[provider.name, variant] = prepared.fn
    return calls


def main(out_dir: str, providers) -> None:
    os.makedirs(out_dir, exist_ok=True)
    rows = []
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    relay_calls = None
    for point in POINTS:
        calls = prepared_calls(point, make_problem(point, "cuda"), providers)
        order = list(calls)
        times = {key: [] for key in order}
        for r in range(ROUNDS):
            for key in order[r % len(order):] + order[: r % len(order)]:
                times[key].append(host_us(calls[key], CALLS))
        for (name, variant), measured in times.items():
            wall, cpu = (statistics.median(x) for x in zip(*measured))
            rows.append(dict(point=point.to_dict(), provider=name, variant=variant, host_us=wall, host_cpu_us=cpu,
                             rounds=[list(m) for m in measured]))
            print(f"{point.label}  {name}/{variant}: {wall:.1f} us per call (CPU {cpu:.1f})", flush=True)
            if name == "relaycore_triton" and relay_calls is None:
                relay_calls = calls[name, variant]
    with open(f"{out_dir}/host_call.json", "w") as f:
        json.dump(dict(what=WHAT, environment=environment("cuda"), rows=rows), f, indent=1)
    if relay_calls is not None:
        profile = cProfile.Profile()
        torch.cuda.synchronize()
        torch.cuda._sleep(50_000_000)
        profile.enable()
        for _ in range(CALLS):
            relay_calls()
        profile.disable()
        torch.cuda.synchronize()
        text = io.StringIO()
        pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(30)
        with open(f"{out_dir}/perf_host_call.prof.txt", "w") as f:
            f.write(text.getvalue())
        print(text.getvalue())


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".", sys.argv[2:] or PROVIDERS)
