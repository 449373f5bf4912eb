"""A graph plan's CUDA graph, captured once, replays every later step (``relaycore.fast.triton.graph``):
each step's bits are those of the plan made for that step alone."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

import relaycore  # noqa: E402
from relaycore.fast.triton import prepare, prepare_graph  # noqa: E402
from graph_steps import EngineTensors  # noqa: E402

pytestmark = pytest.mark.gpu

#: (query counts, page size, prefixes per level): decode; decode beside speculative (4 queries)
#: and append requests (160 queries at GQA 4: the tallest tiles, single-pass on the first level,
#: the Gluon tile on sm_90); ragged decode; 128 decode requests (padded launches of the own
#: tiles, of 128-row prefix tiles over 2 prefixes and, on a second level, of 64-row ones over
#: 16, each far past its step's items).
SHAPES = {
    "decode": ([1] * 24, 16, [3, 2]),
    "mixed": ([1] * 6 + [4, 4, 160], 16, [3, 2]),
    "ragged": ([1] * 12, 0, [3, 2]),
    "wide": ([1] * 128, 16, [2, 16]),
}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("levels", [1, 2], ids=["one level", "two levels"])
@pytest.mark.parametrize("shape", list(SHAPES), ids=list(SHAPES))
def test_one_captured_graph_replays_every_step_with_the_bits_of_its_own_plan(shape, levels, dtype,
                                                                             poisoned_allocations):
    q_lens, page_size, prefixes = SHAPES[shape]
    engine = EngineTensors(q_lens, num_q_heads=32, num_kv_heads=8, head_dim=128, dtype=dtype, device="cuda",
                           page_size=page_size, max_blocks=64, own_rows=sum(q_lens) + 700 * len(q_lens),
                           level_rows=[16384, 16384 if shape == "wide" else 900][:levels],
                           level_prefixes=prefixes[:levels], seed=len(q_lens))
    rng = np.random.default_rng(levels)
    engine.step(rng)
    graph_plan = prepare_graph(*engine.args())
    if shape == "wide":  # the padded prefix tiles of both heights run, and the own tiles
        padded = {(x.level, x.block_m) for x in graph_plan.plan.launches if x.count is not None}
        assert {(0, 128), (-1, 16)} <= padded and (levels == 1 or (1, 64) in padded), graph_plan
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        relaycore.relay_attention(*engine.args(), plan=graph_plan)  # compiles outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = relaycore.relay_attention(*engine.args(), plan=graph_plan)
    for step in range(12):
        engine.step(rng)
        graph_plan.update(*engine.args())
        graph.replay()
        alone = relaycore.relay_attention(*engine.args(), plan=prepare(*engine.args()))
        torch.cuda.synchronize()
        assert torch.equal(captured.out, alone.out) and torch.equal(captured.lse, alone.lse), step


def _on_cpu_tensors(args):
    """``args`` with their NumPy metadata as CPU tensors over the same memory (an engine's
    pinned buffers): written in place as the arrays are."""
    q, cu, kv, levels = args
    kv = type(kv)(*(torch.from_numpy(x) if isinstance(x, np.ndarray) else x for x in kv))
    levels = [type(level)(*(torch.from_numpy(x) if isinstance(x, np.ndarray) else x for x in level)) for level in levels]
    return q, torch.from_numpy(cu), kv, levels


@pytest.mark.parametrize("host", ["numpy", "cpu tensors"])
@pytest.mark.parametrize("shape", ["decode", "mixed", "ragged"])
def test_metadata_on_the_host_plans_without_a_synchronization_and_gives_the_same_bits(shape, host,
                                                                                      poisoned_allocations):
    """With every length, id and the block table on the host, ``prepare``, ``GraphPlan.update``
    and a call without a plan synchronize nothing (``torch.cuda.set_sync_debug_mode("error")``
    raises on a synchronization), and each step's bits are those of the same metadata on the
    GPU."""
    q_lens, page_size, prefixes = SHAPES[shape]
    made = [EngineTensors(q_lens, num_q_heads=32, num_kv_heads=8, head_dim=128, dtype=torch.float16, device="cuda",
                          page_size=page_size, max_blocks=64, own_rows=sum(q_lens) + 700 * len(q_lens),
                          level_rows=[16384, 900], level_prefixes=prefixes, seed=3, host_metadata=on_host)
            for on_host in (False, True)]
    device, engine = made
    host_args = (lambda: engine.args()) if host == "numpy" else (lambda: _on_cpu_tensors(engine.args()))
    rngs = [np.random.default_rng(7), np.random.default_rng(7)]
    for e, rng in zip(made, rngs):
        e.step(rng)
    graph_plan = prepare_graph(*host_args())
    assert graph_plan.plan.block_table is not None or not page_size
    relaycore.relay_attention(*host_args(), plan=graph_plan)  # compiles outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = relaycore.relay_attention(*host_args(), plan=graph_plan)
    for step in range(6):
        for e, rng in zip(made, rngs):
            e.step(rng)
        torch.cuda.set_sync_debug_mode("error")
        try:
            graph_plan.update(*host_args())
            graph.replay()
            planned = relaycore.relay_attention(*host_args(), plan=prepare(*host_args()))
            unplanned = relaycore.relay_attention(*host_args())
        finally:
            torch.cuda.set_sync_debug_mode("default")
        alone = relaycore.relay_attention(*device.args(), plan=prepare(*device.args()))
        for got in (captured, planned, unplanned):
            assert torch.equal(got.out, alone.out) and torch.equal(got.lse, alone.lse), step
