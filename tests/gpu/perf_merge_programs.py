"""GPU time of a two-level graph plan's replay as ``Config.merge_programs`` varies.

Run on the GPU machine: ``python3 tests/gpu/perf_merge_programs.py OUT_DIR``, with ``tests/gpu``
on ``PYTHONPATH``. The batches are ``perf_graph_plan.py``'s two-level ones (append requests whose
rows fill the tallest tiles, split at one step and single-pass at the other). A graph plan's
merge launch there runs over a list of the step's tokens with states, by at most
``merge_programs`` programs, each folding every so many listed tokens of its head; the last
column runs a program per token and head of the batch (``perf_graph_plan.every_token_merged``).
Every column's result is compared with the step's own plan's bit for bit before it is timed
(``perf_graph_plan.time_columns``). Writes ``OUT_DIR/merge_programs.json`` with the card, the
versions, the commit and the date.
"""

from __future__ import annotations

import dataclasses
import json
import sys

import numpy as np
import torch

import relaycore
from relaycore.bench.results import environment
from relaycore.fast.triton import default_config, prepare, prepare_graph

from perf_graph_plan import D, TWO_LEVEL_SHAPES, captured, every_token_merged, paged_batch, time_columns

HKV = 8
MERGE_PROGRAMS = (1024, 2048, 4096, 8192, 16384, 32768)


def points():
    for name, q_lens in TWO_LEVEL_SHAPES.items():
        batch = len(q_lens)
        args = paged_batch(q_lens, HKV, 1024, 1024, [(2048, [0, 2048], [0] * batch),
                                                      (2048, [0, 512, 1024, 1536, 2048], np.arange(batch) % 4)])
        ids = args[3][1].prefix_ids
        split_ids = ids.clone()
        plans = {m: prepare_graph(*args, config=dataclasses.replace(default_config(D, "float16", HKV), merge_programs=m))
                 for m in MERGE_PROGRAMS}
        for step in ("split", "single pass"):
            ids.copy_(split_ids if step == "split" else torch.full_like(split_ids, -1))  # none reads level 1
            for graph_plan in plans.values():
                graph_plan.update(*args)
            graphs = {f"merge_programs {m}": captured(args, graph_plan) for m, graph_plan in plans.items()}
            graphs["a merge program per token"] = captured(args, every_token_merged(plans[MERGE_PROGRAMS[0]].plan))
            label = f"two levels, {name}, {step} step"
            times = time_columns(graphs, relaycore.relay_attention(*args, plan=prepare(*args)), label)
            print(label, times, flush=True)
            yield dict(shape=name, step=step, us=times)


def main(out_dir: str) -> None:
    rows = list(points())
    with open(f"{out_dir}/merge_programs.json", "w") as f:
        json.dump(dict(what="GPU time of a two-level graph plan's replay (Hq 32, D 128, fp16, Hkv 8) by "
                            "Config.merge_programs, us (tests/gpu/perf_merge_programs.py OUT)",
                       environment=environment("cuda"), rows=rows), f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
