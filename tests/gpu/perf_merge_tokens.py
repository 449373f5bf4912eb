"""GPU time of a call whose merge launch runs over the tokens that have slots
(``Plan.merge_tokens``) against one that runs over every token, beside a long append request
that reads its context in one pass (a chunked-prefill step: its tokens have no slots).

Run on the GPU machine: ``python3 tests/gpu/perf_merge_tokens.py OUT_DIR``, with ``tests/gpu``
and ``tests`` on ``PYTHONPATH``. Decode requests beside one append request, Hq 32, Hkv 8, D 128,
fp16, one prefix of 8192 tokens that every request reads, own KV in pages of 16 (as many own
keys as the append's queries, at least 1024). Both plans are ``prepare``'s, one with its list
dropped (``merge_tokens=None``); their results are compared bit for bit before they are timed
(``perf_graph_plan.time_columns``: CUDA graphs replayed back to back, µs). Writes
``OUT_DIR/merge_tokens.json`` with the card, the versions, the commit and the date.
"""

from __future__ import annotations

import dataclasses
import json
import sys

import relaycore
from relaycore.bench.results import environment
from relaycore.fast.triton import prepare
from perf_graph_plan import captured, paged_batch, time_columns

POINTS = ((64, 2048), (128, 1024), (32, 512))  # (decode requests, the append's queries)


def main(out_dir: str) -> None:
    rows = []
    for decode, append in POINTS:
        q_lens = [1] * decode + [append]
        args = paged_batch(q_lens, 8, 4096, max(append, 1024), [(8192, [0, 8192], [0] * len(q_lens))])
        listed = prepare(*args)
        if listed.merge_tokens is None or listed.merge_tokens.shape[0] != decode:
            raise SystemExit(f"{decode} + {append}: expected the decode tokens listed, got {listed.merge_tokens}")
        every = dataclasses.replace(listed, merge_tokens=None)
        label = f"{decode} decode + {append} append"
        us = time_columns({"listed": captured(args, listed), "every token": captured(args, every)},
                          relaycore.relay_attention(*args, plan=listed), label)
        print(label, us, flush=True)
        rows.append(dict(decode=decode, append=append, us=us))
    with open(f"{out_dir}/merge_tokens.json", "w") as f:
        json.dump(dict(what="GPU time of a call, merge over the listed tokens or every token (us; "
                            "tests/gpu/perf_merge_tokens.py OUT)", environment=environment("cuda"), rows=rows), f,
                  indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
