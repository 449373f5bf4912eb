"""Contract details of the public API that cut across backends: result dtypes, the checks of
``merge_states``, and scales that are not floats."""

import dataclasses
import re

import numpy as np
import pytest

import relaycore
from relaycore import AttentionState, RaggedKV
from relaycore.testing import make_batch

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("dtype, lse_dtype", [("float64", torch.float64), ("float16", torch.float32),
                                              ("bfloat16", torch.float32), ("float32", torch.float32)])
def test_every_backend_returns_lse_in_one_dtype(dtype, lse_dtype):
    batch = make_batch([1, 2], [3, 4], prefix_lens=[[2]], prefix_ids=[[0, 0]], head_dim=16, dtype=dtype)
    args, kwargs = batch.to_torch("cpu")
    for backend in ("auto", "reference", "torch"):
        out, lse = relaycore.relay_attention(*args, **kwargs, backend=backend)
        assert (out.dtype, lse.dtype) == (args[0].dtype, lse_dtype), backend


def test_merge_states_keeps_dtypes_and_refuses_mixed_or_integer_ones():
    a = AttentionState(np.ones((2, 3), np.float32), np.zeros(2, np.float32))
    merged = relaycore.merge_states(a, a)
    assert (merged.out.dtype, merged.lse.dtype) == (np.float32, np.float32)
    with pytest.raises(TypeError, match=r"b\.out: expected the dtype of a\.out \(float32\), got float64"):
        relaycore.merge_states(a, AttentionState(np.ones((2, 3)), np.zeros(2, np.float32)))
    ints = AttentionState(torch.ones(2, 3, dtype=torch.int64), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(TypeError, match="a.out: expected a floating-point dtype, got int64"):
        relaycore.merge_states(ints, ints)


def test_a_scale_too_large_for_a_float_is_a_value_error():
    args, kwargs = make_batch([1], [2], head_dim=16).arguments()
    with pytest.raises(ValueError, match="softmax_scale"):
        relaycore.relay_attention(*args, causal=True, softmax_scale=10**400)


def test_the_oracle_sees_a_dtype_mismatch_before_widening_bfloat16():
    from relaycore.reference import full_attention

    q = torch.randn(1, 2, 16, dtype=torch.bfloat16)
    k = torch.randn(2, 1, 16)
    with pytest.raises(TypeError, match="kv.k: expected q's dtype bfloat16, got float32"):
        full_attention(q, torch.tensor([0, 1]), RaggedKV(k, k, torch.tensor([0, 2])))


@pytest.mark.parametrize("block_size", [None, 3])
def test_the_torch_backend_cuts_large_batches_into_request_groups(monkeypatch, block_size):
    import relaycore.fast.torch_backend as torch_backend
    from relaycore.testing import assert_close
    from relaycore.validation import validate

    batch = make_batch([1, 3, 0, 2], [5, 6, 4, 9], prefix_lens=[[3, 4]], prefix_ids=[[1, 0, -1, 1]],
                       num_q_heads=4, num_kv_heads=2, head_dim=16, block_size=block_size)
    args, kwargs = batch.to_torch("cpu")
    monkeypatch.setattr(torch_backend, "MAX_SCORE_ELEMENTS", 50)
    assert torch_backend._request_groups(validate(*args, **kwargs)) == [(0, 1), (1, 2), (2, 3), (3, 4)]
    assert_close(relaycore.relay_attention(*args, **kwargs, backend="torch"), batch)


def test_the_torch_backends_groups_bound_the_gathered_keys_too(monkeypatch):
    # decode with GQA: the padded keys and values (2 x Hkv x D a key) outgrow the scores (Hq a
    # key); one long request must not pad the gather of the short ones
    import relaycore.fast.torch_backend as torch_backend
    from relaycore.validation import validate

    batch = make_batch([1] * 6, [4] * 5 + [64], num_q_heads=8, num_kv_heads=2, head_dim=16)
    meta = validate(*batch.arguments()[0], **batch.arguments()[1])
    monkeypatch.setattr(torch_backend, "MAX_SCORE_ELEMENTS", 5 * 4 * 2 * 2 * 16)  # the short ones' gather, exactly
    groups = torch_backend._request_groups(meta)
    assert groups == [(0, 5), (5, 6)]
    for lo, hi in groups:
        size = torch_backend.group_elements(hi - lo, 1, int(meta.kv_lens[lo:hi].max()), meta)
        assert size <= torch_backend.MAX_SCORE_ELEMENTS or hi - lo == 1


@pytest.mark.parametrize("error", [
    OSError("libcuda.so.1: cannot open shared object file"),
    RuntimeError("0 active drivers ([]). There should only be one."),
    AttributeError("module 'triton.language' has no attribute 'gather'"),
    ImportError("No module named 'triton'"),
])
def test_a_triton_import_that_fails_any_way_leaves_auto_on_torch_and_says_why(tmp_path, monkeypatch, error):
    from relaycore import dispatch
    from relaycore.validation import validate

    (tmp_path / "broken_triton_backend.py").write_text(f"raise {type(error).__name__}({str(error)!r})\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(dispatch.BACKENDS, "triton", "broken_triton_backend")
    args, kwargs = make_batch([1], [2], head_dim=16).to_torch("cpu")
    meta = dataclasses.replace(validate(*args, **kwargs), device="cuda:0")  # what a GPU batch would say
    why = f"{type(error).__name__}: {error}"
    choice = dispatch.choose(meta, "auto")
    assert choice == ("torch", f"torch tensors on cuda:0; Triton is not available here: {why}")
    with pytest.raises(RuntimeError, match=re.escape(f"backend 'triton' is not available here: {why}")) as info:
        dispatch.choose(meta, "triton")
    assert type(info.value.__cause__) is type(error)
