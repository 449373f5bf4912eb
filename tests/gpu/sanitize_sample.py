"""A sample of shapes for compute-sanitizer (``scripts/gpu_suite.sh`` runs it under memcheck):
ragged and paged own KV, causal or not, zero to two prefix levels, GQA, odd lengths, a
single-pass append request, fp16, bf16 and fp32, head_dim 64 and 128, and 80 and 200, which
are not powers of two (the kernels mask the columns of their head axis past ``D``: the last
row's would be past the end of its tensor). Each result is also checked against the oracle.
Then two graph plans over steps of new lengths and ids, each step against its own plan's bits:
one of decode requests on one level (padded launches), and one of two levels whose append
request moves between the single pass and the split (a padded single-pass launch, and a merge
launch whose few programs each fold several of the step's listed tokens)."""

import itertools

import relaycore
from relaycore.testing import assert_close, make_batch

SHAPES = [
    # q_lens, kv_lens, prefix_lens, prefix_ids
    ([1, 1, 1], [130, 1, 77], [[300, 17]], [[0, 1, -1]]),
    ([5, 0, 33], [40, 9, 33], [[1000], [3, 64]], [[0, 0, 0], [1, -1, 0]]),
    ([1], [2049], [], []),
    # 40 tokens x GQA 4 = 160 rows: a single-pass request (prefix then own KV, no states) beside a decode one
    ([40, 1], [70, 200], [[300]], [[0, 0]]),
]

for (q_lens, kv_lens, prefix_lens, prefix_ids), (dtype, d, block) in itertools.product(
    SHAPES, [("float16", 128, None), ("bfloat16", 64, 16), ("float32", 64, 5), ("float16", 80, 16),
             ("bfloat16", 200, None)]
):
    batch = make_batch(q_lens, kv_lens, prefix_lens, prefix_ids, num_q_heads=8, num_kv_heads=2, head_dim=d,
                       dtype=dtype, block_size=block, causal=len(q_lens) != 1, seed=len(q_lens))
    args, kwargs = batch.to_torch("cuda")
    assert_close(relaycore.relay_attention(*args, **kwargs, backend="triton"), batch)
    print("ok", dtype, d, "paged" if block else "ragged", q_lens, kv_lens, prefix_lens, flush=True)

# a graph plan over steps of new lengths and ids: padded launches, whose programs past the
# step's item count exit, each step the bits of its own plan; the metadata on the host, so that
# the kernels read the plans' copies of the block table
import dataclasses  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from graph_steps import EngineTensors  # noqa: E402
from relaycore.fast.triton import default_config, prepare, prepare_graph  # noqa: E402

engine = EngineTensors([1] * 40 + [4], num_q_heads=8, num_kv_heads=2, head_dim=128, dtype=torch.float16,
                       device="cuda", page_size=16, max_blocks=256, level_rows=[3000], level_prefixes=[3],
                       host_metadata=True)
rng = np.random.default_rng(0)
engine.step(rng)
graph_plan = prepare_graph(*engine.args())
assert any(launch.count is not None for launch in graph_plan.plan.launches), graph_plan
assert graph_plan.plan.block_table is not None, graph_plan
short = 0  # launches whose programs past the step's items exit
for step in range(3):
    engine.step(rng)
    graph_plan.update(*engine.args())
    short += sum(int(x.count) < x.num_items for x in graph_plan.plan.launches if x.count is not None)
    replayed = relaycore.relay_attention(*engine.args(), plan=graph_plan)
    alone = relaycore.relay_attention(*engine.args(), plan=prepare(*engine.args()))
    assert torch.equal(replayed.out, alone.out) and torch.equal(replayed.lse, alone.lse), step
assert short, "no step left a padded launch short of its capacity: the exit was not run"
print("ok graph plan", graph_plan, f"({short} launches short of their capacity)", flush=True)

# two prefix levels and an append request (40 tokens x GQA 4 = 160 rows: on sm_90 the Gluon
# tile): single-pass at the steps where it reads no prefix of the second level, split at the
# others, so its padded single-pass launch runs full at some steps and empty at others, and
# the merge launch's list of tokens with states holds 48 of them at some steps and 8 at others,
# folded by 3 programs per head (``Config.merge_programs``: the bits of any count)
engine = EngineTensors([1] * 8 + [40], num_q_heads=8, num_kv_heads=2, head_dim=128, dtype=torch.float16,
                       device="cuda", page_size=16, max_blocks=16, level_rows=[3000, 500], level_prefixes=[3, 2],
                       host_metadata=True)
engine.step(rng)
config = dataclasses.replace(default_config(128, "float16", 2), merge_programs=3 * 8)
graph_plan = prepare_graph(*engine.args(), config=config)
(one_pass,) = [x for x in graph_plan.plan.launches if x.single_pass]
assert one_pass.count is not None, graph_plan
counts, merged = set(), set()
for second in (-1, 0, -1, 1):
    engine.step(rng)
    engine.levels[1].prefix_ids[-1] = second  # the append request's prefix on the second level
    graph_plan.update(*engine.args())
    counts.add(int(one_pass.count))
    merged.add(int(graph_plan.plan.merge_count))
    replayed = relaycore.relay_attention(*engine.args(), plan=graph_plan)
    alone = relaycore.relay_attention(*engine.args(), plan=prepare(*engine.args()))
    assert torch.equal(replayed.out, alone.out) and torch.equal(replayed.lse, alone.lse), second
assert min(counts) < max(counts) == one_pass.num_items, counts
assert sorted(merged) == [8, 48], merged
print("ok graph plan of two levels", graph_plan, f"(single-pass items per step: {sorted(counts)}; tokens merged per "
      f"step: {sorted(merged)})", flush=True)
