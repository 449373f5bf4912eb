"""GPU time of a graph plan's replay against a graph of each step's own plan.

Run on the GPU machine: ``python3 tests/gpu/perf_graph_plan.py OUT_DIR``. A ``GraphPlan``'s
launches run a program per item of the most a batch of its shapes can have, and read every
work list; a step's own plan (``prepare``) launches its items alone and computes the items of
a launch over one shared prefix from the program id (``Launch.regular``). Two sets of points,
Hq 32, D 128, fp16, own KV in pages of 16:

* **decode** (``docs/guide/serving.md``'s table): one prefix of 8192 tokens, 128 own tokens a
  request, Hkv 8 and 32, batch 8 / 32 / 128, block tables of 512 and 4096 keys. Columns: the
  step's own plan; the same with its lists read (every ``regular`` cleared); the graph plan.
* **two levels**: append requests whose rows fill the tallest tiles (4 requests of 512 new
  tokens; and 2 of 160 beside 32 decode requests), Hkv 8, level 0 one prefix of 2048 tokens,
  level 1 four prefixes over 2048 rows, 1024 own keys a request. At a step where they read
  level 1 they are split; where none does (ids -1) each reads its context in one pass. The
  graph plan has both launches for them, and the single-pass one is padded: at a split step
  its programs all exit. Columns: the step's own plan; the graph plan; the graph plan with a
  merge program per token and head (no list of the step's tokens with states,
  ``Plan.merge_tokens``: the same bits); at a split step, the graph plan without that
  single-pass launch (its count is 0 there, so its result is the same bits).

Every graph's result is first compared with the step's own plan's, bit for bit
(``torch.equal``); a point that differs stops the run. Times: graph replays back to back with
the L2 warm, CUDA events around each, median of ``REPS`` after ``WARMUP``, the mean of
``ROUNDS`` rounds that take the columns in turn (µs). Writes ``OUT_DIR/graph_plan.json`` with
the card, the versions, the commit and the date.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import sys

import numpy as np
import torch

import relaycore
from relaycore import PagedKV, PrefixLevel
from relaycore.bench.results import environment
from relaycore.fast.triton import prepare, prepare_graph

HQ, D, PAGE = 32, 128, 16
WARMUP, REPS, ROUNDS = 20, 200, 2
WHAT = (f"GPU time of one call (Hq {HQ}, D {D}, fp16, own KV in pages of {PAGE}) captured in a CUDA graph: a graph "
        f"of the step's own plan (prepare), the same with its lists read, a GraphPlan's replay, and at split steps "
        f"of two-level batches the GraphPlan without its padded single-pass launch; back to back with the L2 warm, "
        f"median of {REPS} replays, mean of {ROUNDS} rounds, us (tests/gpu/perf_graph_plan.py OUT)")


def lists_read(plan):
    """``plan`` with every launch reading its item list (``regular`` cleared)."""
    return dataclasses.replace(plan, launches=tuple(dataclasses.replace(x, regular=()) for x in plan.launches))


def every_token_merged(plan):
    """``plan`` (a graph plan's) with a merge program per token and head of the batch, not over
    its list of the step's tokens with states."""
    return dataclasses.replace(plan, merge_tokens=None, merge_count=None)


def without_padded_single_pass(plan):
    """``plan`` (a graph plan's) without its padded single-pass launches."""
    kept = tuple(x for x in plan.launches if not (x.single_pass and x.count is not None))
    return dataclasses.replace(plan, launches=kept)


def paged_batch(q_lens, hkv: int, table_keys: int, own_keys: int, levels):
    """``relay_attention``'s arguments on the GPU: requests of ``q_lens`` queries and ``own_keys``
    own keys each, in block tables of ``table_keys`` keys over shuffled pages; ``levels``: per
    prefix level, ``(rows, cu_seqlens, prefix_ids)``."""
    gen = torch.Generator(device="cuda").manual_seed(len(q_lens) * hkv + table_keys)

    def rand(*shape):
        return torch.randn(*shape, generator=gen, device="cuda", dtype=torch.float16)

    def ints(values):
        return torch.tensor(values, dtype=torch.int32, device="cuda")

    batch, columns = len(q_lens), table_keys // PAGE
    table = torch.randperm(batch * columns, generator=gen, device="cuda").to(torch.int32).view(batch, columns)
    kv = PagedKV(rand(batch * columns, PAGE, hkv, D), rand(batch * columns, PAGE, hkv, D), table,
                 ints([own_keys] * batch))
    prefixes = [PrefixLevel(rand(rows, hkv, D), rand(rows, hkv, D), ints(cu), ints(ids)) for rows, cu, ids in levels]
    return rand(sum(q_lens), HQ, D), ints(np.concatenate([[0], np.cumsum(q_lens)])), kv, prefixes


def captured(args, plan):
    """``(graph, result, plan)``: a CUDA graph of one call with ``plan`` over ``args``, and the
    plan, which must live as long as the graph (its replays read the plan's lists)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        relaycore.relay_attention(*args, plan=plan)  # compiles outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        result = relaycore.relay_attention(*args, plan=plan)
    return graph, result, plan


def replay_us(graph) -> float:
    """Median GPU time of ``REPS`` back-to-back replays of ``graph`` (µs)."""
    for _ in range(WARMUP):
        graph.replay()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(REPS)]
    for start, end in events:
        start.record()
        graph.replay()
        end.record()
    torch.cuda.synchronize()
    return statistics.median(start.elapsed_time(end) * 1e3 for start, end in events)


def time_columns(graphs, expected, label):
    """Each graph's time (µs, the mean of ``ROUNDS`` rounds), after its result is checked against
    ``expected`` bit for bit."""
    for name, (graph, result, _) in graphs.items():
        graph.replay()
        torch.cuda.synchronize()
        if not (torch.equal(result.out, expected.out) and torch.equal(result.lse, expected.lse)):
            raise SystemExit(f"{label}: {name} differs from the step's own plan")
    rounds = [{name: replay_us(graph) for name, (graph, _, _) in graphs.items()} for _ in range(ROUNDS)]
    return {name: round(statistics.mean(r[name] for r in rounds), 2) for name in graphs}


def decode_points():
    for hkv in (8, 32):
        for batch in (8, 32, 128):
            for table_keys in (512, 4096):
                args = paged_batch([1] * batch, hkv, table_keys, 128, [(8192, [0, 8192], [0] * batch)])
                own = prepare(*args)
                graphs = {"own plan": captured(args, own), "own plan, lists read": captured(args, lists_read(own)),
                          "graph plan": captured(args, prepare_graph(*args))}
                label = f"decode Hkv {hkv} B {batch} table {table_keys}"
                times = time_columns(graphs, relaycore.relay_attention(*args, plan=own), label)
                row = dict(kind="decode", hkv=hkv, batch=batch, table_keys=table_keys, us=times,
                           ratio=round(times["graph plan"] / times["own plan"], 3))
                print(label, times, row["ratio"], flush=True)
                yield row


TWO_LEVEL_SHAPES = {"append 4 x 512": [512] * 4, "32 decode + append 2 x 160": [1] * 32 + [160] * 2}


def two_level_points():
    for name, q_lens in TWO_LEVEL_SHAPES.items():
        batch = len(q_lens)
        args = paged_batch(q_lens, 8, 1024, 1024, [(2048, [0, 2048], [0] * batch),
                                                     (2048, [0, 512, 1024, 1536, 2048], np.arange(batch) % 4)])
        level_1_ids = args[3][1].prefix_ids
        graph_plan = prepare_graph(*args)  # planned for the split step
        if not any(x.single_pass and x.padded for x in graph_plan.launches):
            raise SystemExit(f"{name}: the graph plan has no padded single-pass launch: {graph_plan}")
        graph = captured(args, graph_plan)
        for step in ("split", "single pass"):
            if step == "single pass":  # no request reads level 1
                level_1_ids.fill_(-1)
                graph_plan.update(*args)
            own = prepare(*args)
            graphs = {"own plan": captured(args, own), "graph plan": graph,
                      "graph plan, a merge program per token": captured(args, every_token_merged(graph_plan.plan))}
            if step == "split":
                graphs["graph plan without its padded single-pass launch"] = captured(
                    args, without_padded_single_pass(graph_plan.plan))
            label = f"two levels, {name}, {step} step"
            times = time_columns(graphs, relaycore.relay_attention(*args, plan=own), label)
            row = dict(kind="two levels", shape=name, step=step, us=times,
                       ratio=round(times["graph plan"] / times["own plan"], 3), graph_plan=repr(graph_plan))
            print(label, times, row["ratio"], flush=True)
            yield row


def main(out_dir: str) -> None:
    rows = list(two_level_points()) + list(decode_points())
    with open(f"{out_dir}/graph_plan.json", "w") as f:
        json.dump(dict(what=WHAT, environment=environment("cuda"), rows=rows), f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
