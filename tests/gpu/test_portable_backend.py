"""The PyTorch backend and the testing kit on a CUDA GPU: the backend's results hold the bound
there (``compare`` handing it copies on the device), and torch's TF32 setting reaches the
PyTorch backend's float32 products, never the Triton kernels' (``docs/guide/api.md``)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

from hypothesis import HealthCheck, given, settings  # noqa: E402

import relaycore  # noqa: E402
from relaycore.testing import compare, make_batch  # noqa: E402
from relaycore.testing.strategies import batches  # noqa: E402

pytestmark = pytest.mark.gpu


def torch_backend(*args, **kwargs):
    return relaycore.relay_attention(*args, **kwargs, backend="torch")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(batch=batches(dtypes=("float32", "float16", "bfloat16"), score_magnitudes=(None, 100.0), head_dims=(64, 128),
                     max_batch=8, max_q_len=64, max_kv_len=600, max_prefix_len=600))
def test_the_torch_backend_holds_the_bound_on_cuda(batch):
    report = compare(torch_backend, batch, device="cuda")
    assert report.passed, str(report)


def _long_float32_batch():
    """Two requests of 4 queries over a 1024-key prefix and 700 own keys each, D 128, float32:
    rows long enough that TF32's 10-bit significand shows in every output."""
    return make_batch([4, 4], [700, 700], [[1024]], [[0, 0]], num_q_heads=4, num_kv_heads=2, head_dim=128,
                      dtype="float32", seed=5)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_tf32_reaches_the_torch_backend_only(backend, monkeypatch):
    batch = _long_float32_batch()
    args, kwargs = batch.to_torch("cuda")
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    ieee = relaycore.relay_attention(*args, **kwargs, backend=backend)
    report = compare(lambda *a, **k: relaycore.relay_attention(*a, **k, backend=backend), batch, device="cuda")
    assert report.passed, str(report)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", True)
    tf32 = relaycore.relay_attention(*args, **kwargs, backend=backend)
    same = torch.equal(tf32.out, ieee.out) and torch.equal(tf32.lse, ieee.lse)
    assert same == (backend == "triton")
