"""The partial launches of a call overlap on side streams (``launch.CONCURRENT_PARTIALS``):
the same bits as running them one after another, and ordered with the caller's stream
whichever stream that is."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

import relaycore  # noqa: E402
from relaycore import PrefixLevel  # noqa: E402
from relaycore.fast.triton import launch, prepare  # noqa: E402
from relaycore.testing import assert_close, make_batch  # noqa: E402

pytestmark = pytest.mark.gpu


def _batch():
    """Decode and append rows over two prefix levels and paged own KV: several partial
    launches (each level, each tile height, the own KV)."""
    return make_batch(q_lens=[1, 1, 40, 1, 7, 1], kv_lens=[300, 129, 400, 2000, 64, 1],
                      prefix_lens=[[2048, 700], [513]], prefix_ids=[[0, 1, 0, 0, -1, 1], [0, 0, -1, 0, 0, 0]],
                      num_q_heads=16, num_kv_heads=4, head_dim=128, dtype="float16", block_size=16, seed=5)


def test_overlapped_and_serial_launches_give_the_same_bits(monkeypatch, poisoned_allocations):
    batch = _batch()
    args, kwargs = batch.to_torch("cuda")
    planned = prepare(*args, **kwargs)
    assert len(planned.launches) >= 3
    overlapped = relaycore.relay_attention(*args, **kwargs, plan=planned)
    monkeypatch.setattr(launch, "CONCURRENT_PARTIALS", False)
    serial = relaycore.relay_attention(*args, **kwargs, plan=planned)
    assert torch.equal(overlapped.out, serial.out) and torch.equal(overlapped.lse, serial.lse)
    assert_close(overlapped, batch)


def test_a_call_on_a_side_stream_is_ordered_with_that_stream(poisoned_allocations):
    batch = _batch()
    args, kwargs = batch.to_torch("cuda")
    planned = prepare(*args, **kwargs)
    expected = relaycore.relay_attention(*args, **kwargs, plan=planned)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(20):
            got = relaycore.relay_attention(*args, **kwargs, plan=planned)
            copied = (got.out.clone(), got.lse.clone())  # reads on the caller's stream, no sync
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    assert torch.equal(copied[0], expected.out) and torch.equal(copied[1], expected.lse)


@pytest.mark.parametrize("layout", ["heads apart", "last axis strided"])
def test_copies_of_a_strided_level_are_ordered_before_every_launch_that_reads_them(layout, poisoned_allocations):
    """A prefix level the kernels cannot read in place is copied (the last axis strided: for
    every tile; heads not packed: for the Gluon single-pass tile of sm_90) once, on the caller's
    stream before the launches fork from it. The launches that read it may run on side streams:
    the copy must be ordered before them there and freed after them, so the results are those of
    the same values packed, bit for bit, call after call."""
    batch = make_batch(q_lens=[1, 1, 40, 1], kv_lens=[300, 129, 400, 200], prefix_lens=[[2048, 700]],
                       prefix_ids=[[0, 1, 0, 0]], num_q_heads=16, num_kv_heads=4, head_dim=128, dtype="float16",
                       block_size=16, seed=9)
    (q, cu, kv, (level,)), kwargs = batch.to_torch("cuda")
    planned = prepare(q, cu, kv, [level], **kwargs)
    assert planned.launches[0].level == 0 and any(x.single_pass for x in planned.launches[1:])
    expected = relaycore.relay_attention(q, cu, kv, [level], **kwargs, plan=planned)

    def strided(x):
        wide = torch.zeros(*x.shape, 2, dtype=x.dtype, device=x.device) if layout == "last axis strided" else \
            torch.zeros(x.shape[0], x.shape[1], 2, x.shape[2], dtype=x.dtype, device=x.device)
        view = wide[..., 0] if layout == "last axis strided" else wide[:, :, 0]
        view.copy_(x)
        return view

    apart = PrefixLevel(strided(level.k), strided(level.v), level.cu_seqlens, level.prefix_ids)
    for _ in range(10):
        got = relaycore.relay_attention(q, cu, kv, [apart], **kwargs, plan=planned)
        assert torch.equal(got.out, expected.out) and torch.equal(got.lse, expected.lse)


@pytest.mark.parametrize("host_metadata", [False, True], ids=["metadata on the GPU", "metadata on the host"])
def test_a_plan_made_on_one_stream_runs_on_another(host_metadata, poisoned_allocations):
    """A plan's lists (and its copy of a host block table) are copied on the stream current
    when it is made, without a synchronization; a call on another stream waits for that copy
    (``Plan.ready``), here queued behind 50 ms of other work."""
    from relaycore.fast.triton import prepare_graph

    batch = _batch()
    args, kwargs = batch.to_torch("cuda", host_metadata=host_metadata)
    expected = relaycore.relay_attention(*args, **kwargs, plan=prepare(*args, **kwargs))
    graph_plan = prepare_graph(*args, **kwargs)
    graph_plan._device.zero_()  # what a call reads unless it waits for the update below
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        torch.cuda._sleep(100_000_000)  # about 50 ms at the H200's clock
        planned = prepare(*args, **kwargs)
        torch.cuda._sleep(100_000_000)
        graph_plan.update(*args, **kwargs)
    for plan in (planned, graph_plan):
        got = relaycore.relay_attention(*args, **kwargs, plan=plan)  # on the default stream
        torch.cuda.synchronize()
        assert torch.equal(got.out, expected.out) and torch.equal(got.lse, expected.lse)


def test_planning_inside_a_graph_capture_is_refused():
    """A capture would record the copy of the lists and repeat it at every replay, from pinned
    host memory that is no longer the plan's: a call without a plan, ``prepare`` and
    ``GraphPlan.update`` are refused there (before, the synchronization of reading metadata on
    the GPU failed the capture; metadata on the host reads without one)."""
    from relaycore.fast.triton import prepare_graph

    batch = _batch()
    args, kwargs = batch.to_torch("cuda", host_metadata=True)
    graph_plan = prepare_graph(*args, **kwargs)
    torch.cuda.synchronize()
    for plan_inside in (lambda: relaycore.relay_attention(*args, **kwargs), lambda: prepare(*args, **kwargs),
                        lambda: graph_plan.update(*args, **kwargs)):
        with pytest.raises(ValueError, match="plan: expected a plan made before the CUDA graph capture"):
            with torch.cuda.graph(torch.cuda.CUDAGraph()):
                plan_inside()


def test_a_plan_keeps_a_scratch_per_stream_and_a_capture_its_own(poisoned_allocations):
    """The states' scratch is the plan's, a pair per stream (``launch._scratch``): a call on
    that stream writes every slot it reads (here over NaN left in it), on another stream it
    takes a pair of its own, and a call captured in a CUDA graph takes one from the graph's
    pool (the graph may outlive the plan), which replays read back."""
    batch = _batch()
    args, kwargs = batch.to_torch("cuda")
    planned = prepare(*args, **kwargs)
    expected = relaycore.relay_attention(*args, **kwargs, plan=planned)
    assert planned.num_slots and list(planned.scratch) == [torch.cuda.current_stream().cuda_stream]
    for x in planned.scratch[torch.cuda.current_stream().cuda_stream]:
        x.fill_(float("nan"))
    again = relaycore.relay_attention(*args, **kwargs, plan=planned)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        other = relaycore.relay_attention(*args, **kwargs, plan=planned)
    torch.cuda.current_stream().wait_stream(side)
    assert len(planned.scratch) == 2
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = relaycore.relay_attention(*args, **kwargs, plan=planned)
    assert len(planned.scratch) == 2
    for pair in planned.scratch.values():
        for x in pair:
            x.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    for got in (again, other, captured):
        assert torch.equal(got.out, expected.out) and torch.equal(got.lse, expected.lse)
    assert_close(expected, batch)
