"""The fused merge (``plan.fused_merge``): the partial programs count their arrivals per row and
the last one folds the row, so which program folds depends on timing. What it computes must
not: the bits of the merge kernel's, run after run, with the counters left at zero."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

from relaycore.fast.triton import plan, run_planned  # noqa: E402
from relaycore.testing import assert_close, make_batch  # noqa: E402
from relaycore.validation import validate  # noqa: E402

pytestmark = pytest.mark.gpu


def _decode_batch(batch_size: int, prefix: int, hkv: int):
    """Decode rows over one shared prefix: many chunks per row (a long prefix cut in about 8
    chunks, and the own chunks), so many programs race to finish each row."""
    return make_batch(q_lens=[1] * batch_size, kv_lens=[128 + 37 * b for b in range(batch_size)],
                      prefix_lens=[[prefix]], prefix_ids=[[0] * batch_size], num_q_heads=32, num_kv_heads=hkv,
                      head_dim=128, dtype="float16", block_size=16, seed=batch_size)


def _mixed_batch():
    """Decode and append rows, two prefix levels, GQA 4, a request without a level-0 prefix."""
    return make_batch(q_lens=[1, 1, 40, 1, 7, 1], kv_lens=[300, 129, 400, 2000, 64, 1],
                      prefix_lens=[[2048, 700], [513]], prefix_ids=[[0, 1, 0, 0, -1, 1], [0, 0, -1, 0, 0, 0]],
                      num_q_heads=16, num_kv_heads=4, head_dim=128, dtype="bfloat16", block_size=16, seed=7)


@pytest.mark.parametrize("make", [lambda: _decode_batch(1, 16384, 8), lambda: _decode_batch(8, 4096, 32),
                                  lambda: _decode_batch(8, 2048, 8), lambda: _decode_batch(16, 16384, 8), _mixed_batch],
                         ids=["B1-p16384", "B8-p4096", "B8-Hkv8-fold32", "B16-Hkv8-fold64", "mixed"])
def test_fused_and_launched_merge_give_the_same_bits_every_run(make, poisoned_allocations):
    batch = make()
    args, kwargs = batch.to_torch("cuda")
    meta = validate(*args, **kwargs)
    fused, launched = plan(meta, fused_merge=True), plan(meta, fused_merge=False)
    assert fused.fused_merge and not launched.fused_merge
    want = run_planned(launched, args[0], args[2], args[3])
    assert_close(want, batch)
    for run in range(200):
        got = run_planned(fused, args[0], args[2], args[3])
        assert torch.equal(got.out, want.out) and torch.equal(got.lse, want.lse), f"run {run}"
    torch.cuda.synchronize()
    assert not fused.arrivals.any(), "the arrival counters are left at zero"


def test_fused_merge_inside_a_cuda_graph(poisoned_allocations):
    batch = _decode_batch(4, 8192, 8)
    args, kwargs = batch.to_torch("cuda")
    meta = validate(*args, **kwargs)
    fused = plan(meta, fused_merge=True)
    want = run_planned(plan(meta, fused_merge=False), args[0], args[2], args[3])
    run_planned(fused, args[0], args[2], args[3])  # compile outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        got = run_planned(fused, args[0], args[2], args[3])
    for _ in range(50):
        got.out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(got.out, want.out) and torch.equal(got.lse, want.lse)
    assert not fused.arrivals.any()
