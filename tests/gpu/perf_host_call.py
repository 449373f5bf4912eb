"""Host time of one planned call, relaycore against the peers.

Run on the GPU machine: ``python3 tests/gpu/perf_host_call.py OUT_DIR [PROVIDER ...]``
(FlashInfer from ``.whl`` on ``PYTHONPATH`` where present: ``scripts/bench_gpu.sh`` shows how;
default providers: ``PROVIDERS``). For each point and each provider the benchmark knows
(``relaycore.bench.providers``), the call is prepared
once (relaycore's ``prepare``, FlashInfer's ``plan``), checked against the oracle, then called
``CALLS`` times with a spinning kernel queued ahead of them, so that no launch waits for the
GPU: the host wall time per call is what a model's layer costs the host outside a CUDA graph
(eager serving, ``torch.compile`` without graphs). Inside a CUDA graph none of it exists.

Prints one line per point and provider, writes them as JSON lines to
``OUT_DIR/perf_host_call.jsonl``, and a cProfile of relaycore's calls at the first point to
``OUT_DIR/perf_host_call.prof.txt``.
"""

from __future__ import annotations

import cProfile
import io
import json
import os
import pstats
import sys
import time

import torch

from relaycore.bench.grids import Point
from relaycore.bench.problem import check, compute_oracle, make_problem
from relaycore.bench.providers import Unsupported, by_name

CALLS = 200
ROUNDS = 5
POINTS = [
    Point("decode", 8, 32, 8, 128, 8192, 128, 1),
    Point("decode", 128, 32, 8, 128, 8192, 128, 1),
    Point("decode", 32, 32, 32, 128, 2048, 128, 1),
    Point("append", 4, 32, 8, 128, 2048, 512, 512),
]
PROVIDERS = ["relaycore_triton", "flashinfer_cascade", "flashinfer_paged", "sdpa"]


def host_us(fn, calls: int) -> float:
    """Host wall time of ``fn`` in microseconds, the median over ``ROUNDS`` rounds of ``calls``
    calls, each round behind a spinning kernel long enough that no launch waits for the GPU."""
    rounds = []
    for _ in range(ROUNDS):
        torch.cuda.synchronize()
        torch.cuda._sleep(50_000_000)  # tens of ms of queued GPU time on an H100/H200
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        rounds.append((time.perf_counter() - start) / calls * 1e6)
    torch.cuda.synchronize()
    return sorted(rounds)[len(rounds) // 2]


def main(out_dir: str, providers) -> None:
    os.makedirs(out_dir, exist_ok=True)
    rows = []
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    relay_calls = None
    for point in POINTS:
        problem = make_problem(point, "cuda")
        oracle = compute_oracle(problem)
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
                us = host_us(prepared.fn, CALLS)
                row = dict(point=point.to_dict(), provider=provider.name, variant=variant, host_us=us,
                           device=torch.cuda.get_device_name(), torch=torch.__version__)
                rows.append(row)
                print(f"{point.label}  {provider.name}/{variant}: {us:.1f} us per call", flush=True)
                if provider.name == "relaycore_triton" and relay_calls is None:
                    relay_calls = prepared.fn
    with open(f"{out_dir}/perf_host_call.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
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
