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
    scalar = AttentionState(np.array(1.0), np.array(0.0))  # out needs its head axis
    with pytest.raises(ValueError, match=r"a\.out: expected shape \[\.\.\., D\] \(at least one axis\), got shape \(\)"):
        relaycore.merge_states(scalar, scalar)
    ints = AttentionState(torch.ones(2, 3, dtype=torch.int64), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(TypeError, match=r"a\.out: expected a dtype in \[.float16., .bfloat16., .float32., .float64.\], got int64"):
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


# Result buffers: ``relay_attention(..., out=, lse=)``


def _buffers_batch(dtype="float16"):
    return make_batch([2, 1, 3, 0], [5, 9, 4, 2], prefix_lens=[[7, 3]], prefix_ids=[[0, 1, -1, 0]], num_q_heads=4,
                      num_kv_heads=2, head_dim=16, dtype=dtype, seed=3)


@pytest.mark.parametrize("backend, kind", [("reference", "numpy"), ("reference", "torch"), ("torch", "torch")])
@pytest.mark.parametrize("given", ["out", "lse", "both"])
def test_a_call_writes_its_result_into_the_buffers_given(backend, kind, given):
    """Buffers poisoned with NaN hold the bits of the call without them, and are what it returns."""
    batch = _buffers_batch("float64" if kind == "numpy" else "float16")
    args, kwargs = batch.arguments() if kind == "numpy" else batch.to_torch("cpu")
    want = relaycore.relay_attention(*args, **kwargs, backend=backend)
    full = np.full_like if kind == "numpy" else torch.full_like
    buffers = {name: full(x, np.nan) for name, x in zip(("out", "lse"), want) if given in (name, "both")}
    got = relaycore.relay_attention(*args, **kwargs, backend=backend, **buffers)
    for name, x, y in zip(("out", "lse"), got, want):
        assert (x is buffers[name]) if name in buffers else (x is not None)
        assert (np.array_equal(x, y) if kind == "numpy" else torch.equal(x, y)), name


def test_result_buffers_of_another_kind_device_shape_dtype_or_layout_are_refused():
    args, kwargs = _buffers_batch().to_torch("cpu")
    q = args[0]
    total_q, hq, d = q.shape
    out, lse = torch.empty_like(q), torch.empty(total_q, hq)
    cases = [
        (dict(out=out.numpy()), TypeError, r"out: expected a torch array like q, got numpy array of shape"),
        (dict(lse=[0.0] * total_q), TypeError, r"lse: expected a torch array like q, got list"),
        (dict(out=out.to("meta")), ValueError, r"out: expected device cpu \(q's\), got meta"),
        (dict(out=out[1:]), ValueError, rf"out: expected shape \({total_q}, {hq}, {d}\) \(the result's\), got \({total_q - 1}, "),
        (dict(lse=lse[:, None]), ValueError, rf"lse: expected shape \({total_q}, {hq}\) \(the result's\), got \({total_q}, 1, {hq}\)"),
        (dict(out=out.float()), TypeError, r"out: expected dtype float16 \(the result's\), got float32"),
        (dict(lse=lse.double()), TypeError, r"lse: expected dtype float32 \(the result's\), got float64"),
        (dict(out=torch.empty(hq, total_q, d, dtype=q.dtype).transpose(0, 1)), ValueError,
         r"out: expected a contiguous tensor, got strides"),
        (dict(lse=torch.empty(total_q, hq, requires_grad=True)), ValueError, r"lse: expected a tensor that does not "
                                                                            r"require grad"),
    ]
    for buffers, error, message in cases:
        for backend in ("reference", "torch"):
            with pytest.raises(error, match=message):
                relaycore.relay_attention(*args, **kwargs, backend=backend, **buffers)
    # NumPy: C-contiguous and writeable
    nargs, nkwargs = _buffers_batch("float64").arguments()
    want = relaycore.relay_attention(*nargs, **nkwargs)
    read_only = np.empty_like(want.out)
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match=r"out: expected a C-contiguous, writeable array, got .*\(read-only\)"):
        relaycore.relay_attention(*nargs, **nkwargs, out=read_only)
    with pytest.raises(ValueError, match=r"lse: expected a C-contiguous, writeable array, got one with strides"):
        relaycore.relay_attention(*nargs, **nkwargs, lse=np.empty(want.lse.shape[::-1]).T)
    with pytest.raises(TypeError, match=r"out: expected dtype float64 \(the result's; NumPy inputs give"):
        relaycore.relay_attention(*nargs, **nkwargs, out=want.out.astype(np.float32))


def test_result_buffers_that_share_memory_with_an_input_or_each_other_are_refused():
    """An in-place call (``out=q``) would read q where the result has been written: refused,
    as are buffers over the metadata, the keys, the values, or each other; adjacent memory is
    not shared."""
    args, kwargs = _buffers_batch().to_torch("cpu")
    q, cu, kv, (level,) = args
    total_q, hq, d = q.shape
    with pytest.raises(ValueError, match=r"out: expected memory apart from the call's arrays and the other buffer, "
                                         r"got a buffer that overlaps q"):
        relaycore.relay_attention(*args, **kwargs, out=q)
    with pytest.raises(ValueError, match=r"out: .*overlaps kv\.k"):
        relaycore.relay_attention(*args, **kwargs, out=kv.k.reshape(-1)[: q.numel()].view(q.shape))
    values = level.v.view(torch.float32).reshape(-1)  # the prefix values' bytes as fp32
    with pytest.raises(ValueError, match=r"lse: .*overlaps prefixes\[0\]\.v"):
        relaycore.relay_attention(*args, **kwargs, lse=values[: total_q * hq].view(total_q, hq))
    # one fp32 pool: out's fp16 elements take its first total_q * hq * d / 2 entries
    pool = torch.empty(total_q * hq * d // 2 + total_q * hq)
    out = pool.view(torch.float16)[: total_q * hq * d].view(q.shape)
    start = total_q * hq * d // 2
    with pytest.raises(ValueError, match=r"lse: .*overlaps out"):
        relaycore.relay_attention(*args, **kwargs, out=out, lse=pool[start - 1 : start - 1 + total_q * hq].view(total_q, hq))
    want = relaycore.relay_attention(*args, **kwargs, backend="torch")
    got = relaycore.relay_attention(*args, **kwargs, backend="torch", out=out, lse=pool[start:].view(total_q, hq))
    assert torch.equal(got.out, want.out) and torch.equal(got.lse, want.lse)
    # the metadata: a paged cache's block table under lse (the kernels would read page ids we overwrite)
    (q, cu, paged, levels), paged_kwargs = make_batch([1, 1], [40, 40], num_q_heads=4, num_kv_heads=2, head_dim=16,
                                                      block_size=4, seed=1).to_torch("cpu")
    table = torch.zeros(q.shape[0] * q.shape[1] + paged.block_table.numel(), dtype=torch.int32)
    table[: paged.block_table.numel()] = paged.block_table.reshape(-1)
    paged = paged._replace(block_table=table[: paged.block_table.numel()].view(paged.block_table.shape))
    with pytest.raises(ValueError, match=r"lse: .*overlaps kv\.block_table"):
        relaycore.relay_attention(q, cu, paged, levels, **paged_kwargs, lse=table.view(torch.float32)[: q.shape[0] * q.shape[1]]
                                  .view(q.shape[0], q.shape[1]))
    memory = torch.zeros(q.numel() + cu.numel(), dtype=cu.dtype)
    memory[: cu.numel()] = cu
    with pytest.raises(ValueError, match=r"out: .*overlaps cu_seqlens_q"):
        relaycore.relay_attention(q, memory[: cu.numel()], paged, levels, **paged_kwargs,
                                  out=memory.view(q.dtype)[: q.numel()].view(q.shape))


def test_the_reference_refuses_a_call_to_be_differentiated():
    """It computes in NumPy, out of autograd's sight: its result would carry no gradient."""
    args, kwargs = _buffers_batch().to_torch("cpu")
    graded = (args[0].clone().requires_grad_(), *args[1:])
    with pytest.raises(ValueError, match=r"backend 'reference' cannot run this batch: has no backward \(it computes "
                                         r"in NumPy\), and an input requires grad"):
        relaycore.relay_attention(*graded, **kwargs, backend="reference")
    with torch.no_grad():
        got = relaycore.relay_attention(*graded, **kwargs, backend="reference")
    assert torch.equal(got.out, relaycore.relay_attention(*args, **kwargs, backend="reference").out)
    assert relaycore.relay_attention(*graded, **kwargs).out.grad_fn is not None  # auto: the PyTorch backend


def test_buffers_that_cannot_be_written_as_plain_arrays_are_refused():
    """A call to be differentiated returns new tensors (as torch's out= ops refuse autograd); a
    negative view, an inference tensor outside inference mode and a tensor subclass are not
    plain arrays to write into."""
    args, kwargs = _buffers_batch().to_torch("cpu")
    q = args[0]
    want = relaycore.relay_attention(*args, **kwargs, backend="torch")
    graded = (q.clone().requires_grad_(), *args[1:])
    with pytest.raises(ValueError, match=r"out: expected no buffer for a call to be differentiated"):
        relaycore.relay_attention(*graded, **kwargs, out=torch.empty_like(q))
    with torch.no_grad():  # not differentiated: written
        got = relaycore.relay_attention(*graded, **kwargs, backend="torch", out=torch.empty_like(q))
    assert torch.equal(got.out, want.out)
    with pytest.raises(ValueError, match=r"out: expected a plain tensor, got a negative view"):
        relaycore.relay_attention(*args, **kwargs, out=torch._neg_view(torch.empty_like(q)))
    with torch.inference_mode():
        frozen = torch.empty_like(want.lse)
        got = relaycore.relay_attention(*args, **kwargs, backend="torch", lse=frozen)  # inside the mode: written
    assert got.lse is frozen and torch.equal(frozen, want.lse)
    with pytest.raises(ValueError, match=r"lse: expected a tensor writable here, got an inference tensor outside"):
        relaycore.relay_attention(*args, **kwargs, lse=frozen)

    class Tagged(torch.Tensor):
        pass

    with pytest.raises(TypeError, match=r"out: expected a torch\.Tensor, got a Tagged"):
        relaycore.relay_attention(*args, **kwargs, out=torch.empty_like(q).as_subclass(Tagged))
    with pytest.raises(TypeError, match=r"out: expected a torch\.Tensor, got a Parameter"):
        relaycore.relay_attention(*args, **kwargs, out=torch.nn.Parameter(torch.empty_like(q), requires_grad=False))
    with pytest.raises(TypeError, match=r"out: expected dtype float64 \(the result's; NumPy inputs give float64 "
                                        r"results\), got float32"):
        nargs, nkwargs = _buffers_batch("float32").arguments()
        relaycore.relay_attention(*nargs, **nkwargs, out=np.empty(nargs[0].shape, np.float32))
