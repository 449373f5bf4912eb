"""Host time of planning a decode step, with the metadata on the GPU and on the host.

Run on the GPU machine: ``python3 tests/gpu/perf_planning.py OUT_DIR``. For each batch: one
prefix of 8192 tokens, 128 own tokens a request in pages of 16, block tables of 256 columns,
Hq 32, Hkv 8, D 128, fp16. Times ``prepare`` and ``GraphPlan.update`` (host wall clock, mean of
50 calls) in two situations:

* **idle**: the GPU has nothing queued (a ``torch.cuda.synchronize()`` before each call);
* **busy**: the stream has ``QUEUED_MS`` of work queued ahead of the call (a spinning kernel,
  ``torch.cuda._sleep``), as when an engine plans step ``n + 1`` while step ``n`` runs (the
  attention alone of a 32-layer model's decode step at batch 128 and these shapes takes about
  32 x 99 us on an H200, ``docs/benchmarks``). A call that reads metadata
  from the GPU waits for that work; one with the metadata on the host does not.

Prints one line per point and writes them as JSON lines to ``OUT_DIR/perf_planning.jsonl``.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch

from relaycore import PagedKV, PrefixLevel
from relaycore.fast.triton import prepare, prepare_graph

PAGE, COLUMNS, OWN, PREFIX = 16, 256, 128, 8192
HQ, HKV, D = 32, 8, 128
CALLS = 50
QUEUED_MS = 3.0


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
            for busy in (0, cycles):
                row = dict(batch=batch, metadata="host" if host else "gpu", gpu="busy" if busy else "idle",
                           prepare_ms=host_ms(lambda: prepare(*args), busy),
                           update_ms=host_ms(lambda: graph.update(*args), busy))
                rows.append(row)
                print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    with open(f"{out_dir}/perf_planning.jsonl", "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".")
