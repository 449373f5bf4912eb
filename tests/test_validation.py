"""Every bad input raises ``ValueError``/``TypeError`` naming the argument, the expected and the
received, before any backend runs; the reference validates the same way."""

from __future__ import annotations

import re

import numpy as np
import pytest

import relaycore
from relaycore.reference import context_statistics, full_attention, relay_attention
from relaycore.testing import make_batch
from relaycore.types import PrefixLevel, RaggedKV


def call(paged: bool = False) -> dict:
    """A valid call: B = 2, q_lens [1, 2], kv_lens [3, 2], Hq = 4, Hkv = 2, D = 8, one level of
    two prefixes (lengths 2 and 4) used as [0, 1]; float64 NumPy arrays, int32 metadata."""
    batch = make_batch([1, 2], [3, 2], [[2, 4]], [[0, 1]], num_q_heads=4, num_kv_heads=2, head_dim=8,
                       dtype="float64", block_size=2 if paged else None)
    (q, cu, kv, prefixes), kwargs = batch.arguments()
    return dict(q=q, cu_seqlens_q=cu, kv=kv, prefixes=list(prefixes), **kwargs)


def level(c: dict, **fields) -> list:
    return [c["prefixes"][0]._replace(**fields)]


I32 = lambda *values: np.array(values, dtype=np.int32)  # noqa: E731

# (id, paged, mutation of the call, exception, argument named, fragment of the received value)
CASES = [
    ("q rank", False, lambda c: dict(q=c["q"][0]), ValueError, "q", "got shape (4, 8)"),
    ("q dtype", False, lambda c: dict(q=c["q"].astype(np.int64)), TypeError, "q", "got int64"),
    ("q heads empty", False, lambda c: dict(q=c["q"][:, :0]), ValueError, "q", "got shape (3, 0, 8)"),
    ("kv.k dtype", False, lambda c: dict(kv=c["kv"]._replace(k=c["kv"].k.astype(np.float32))), TypeError, "kv.k", "got float32"),
    ("kv.v shape", False, lambda c: dict(kv=c["kv"]._replace(v=c["kv"].v[:-1])), ValueError, "kv.v", "got (4, 2, 8)"),
    ("kv.k head_dim", False, lambda c: dict(kv=c["kv"]._replace(k=c["kv"].k[..., :4], v=c["kv"].v[..., :4])), ValueError, "kv.k", "with head_dim 4"),
    ("Hq not a multiple of Hkv", False, lambda c: dict(kv=c["kv"]._replace(k=np.zeros((5, 3, 8)), v=np.zeros((5, 3, 8)))),
     ValueError, "kv.k", "got 3"),
    ("kv.k rank", False, lambda c: dict(kv=c["kv"]._replace(k=c["kv"].k[0])), ValueError, "kv.k", "got shape (2, 8)"),
    ("cu_seqlens_q not monotone", False, lambda c: dict(cu_seqlens_q=I32(0, 4, 3)), ValueError, "cu_seqlens_q", "cu_seqlens_q[1] = 4 > cu_seqlens_q[2] = 3"),
    ("cu_seqlens_q not matching q", False, lambda c: dict(cu_seqlens_q=I32(0, 1, 2)), ValueError, "cu_seqlens_q", "got 2"),
    ("cu_seqlens_q start", False, lambda c: dict(cu_seqlens_q=I32(1, 2, 3)), ValueError, "cu_seqlens_q", "got 1"),
    ("cu_seqlens_q dtype", False, lambda c: dict(cu_seqlens_q=np.array([0.0, 1.0, 3.0])), TypeError, "cu_seqlens_q", "got float64"),
    ("cu_seqlens_q empty", False, lambda c: dict(cu_seqlens_q=I32()), ValueError, "cu_seqlens_q", "got shape (0,)"),
    ("kv.cu_seqlens length", False, lambda c: dict(kv=c["kv"]._replace(cu_seqlens=I32(0, 5))), ValueError, "kv.cu_seqlens", "got (2,)"),
    ("kv.cu_seqlens not matching kv.k", False, lambda c: dict(kv=c["kv"]._replace(cu_seqlens=I32(0, 3, 4))), ValueError, "kv.cu_seqlens", "got 4"),
    ("q_len > kv_len", False, lambda c: dict(kv=c["kv"]._replace(cu_seqlens=I32(0, 4, 5))), ValueError, "cu_seqlens_q", "q_len 2 > kv_len 1"),
    ("prefix id too large", False, lambda c: dict(prefixes=level(c, prefix_ids=I32(0, 2))), ValueError, "prefixes[0].prefix_ids", "prefix_ids[1] = 2"),
    ("prefix id below -1", False, lambda c: dict(prefixes=level(c, prefix_ids=I32(-2, 0))), ValueError, "prefixes[0].prefix_ids", "prefix_ids[0] = -2"),
    ("prefix_ids shape", False, lambda c: dict(prefixes=level(c, prefix_ids=I32(0))), ValueError, "prefixes[0].prefix_ids", "got (1,)"),
    ("prefix KV heads", False, lambda c: dict(prefixes=level(c, k=np.zeros((6, 1, 8)), v=np.zeros((6, 1, 8)))), ValueError, "prefixes[0].k", "got shape (6, 1, 8)"),
    ("prefix cu_seqlens", False, lambda c: dict(prefixes=level(c, cu_seqlens=I32(0, 2, 5))), ValueError, "prefixes[0].cu_seqlens", "got 5"),
    ("prefix dtype", False, lambda c: dict(prefixes=level(c, v=c["prefixes"][0].v.astype(np.float32))), TypeError, "prefixes[0].v", "float32"),
    ("prefix dtype not q's", False, lambda c: dict(prefixes=level(c, k=c["prefixes"][0].k.astype(np.float32), v=c["prefixes"][0].v.astype(np.float32))),
     TypeError, "prefixes[0].k", "got float32"),
    ("prefix cu_seqlens empty", False, lambda c: dict(prefixes=level(c, cu_seqlens=I32())), ValueError, "prefixes[0].cu_seqlens", "got shape (0,)"),
    ("prefixes not a list", False, lambda c: dict(prefixes=c["prefixes"][0]), TypeError, "prefixes", "got PrefixLevel"),
    ("prefix not a PrefixLevel", False, lambda c: dict(prefixes=[tuple(c["prefixes"][0])]), TypeError, "prefixes[0]", "got tuple"),
    ("kv not a KV type", False, lambda c: dict(kv=tuple(c["kv"])), TypeError, "kv", "got tuple"),
    ("causal not a bool", False, lambda c: dict(causal=1), TypeError, "causal", "got int"),
    ("softmax_scale negative", False, lambda c: dict(softmax_scale=-1.0), ValueError, "softmax_scale", "got -1.0"),
    ("softmax_scale NaN", False, lambda c: dict(softmax_scale=float("nan")), ValueError, "softmax_scale", "got nan"),
    ("softmax_scale text", False, lambda c: dict(softmax_scale="0.1"), TypeError, "softmax_scale", "got str"),
    ("softmax_scale below float32", False, lambda c: dict(softmax_scale=1e-320), ValueError, "softmax_scale", "got 1e-320"),
    ("softmax_scale past float32", False, lambda c: dict(softmax_scale=1e300), ValueError, "softmax_scale", "got 1e+300"),
    ("block id past the cache", True, lambda c: dict(kv=c["kv"]._replace(block_table=np.where(np.arange(c["kv"].block_table.shape[1]) == 0, c["kv"].k_cache.shape[0], c["kv"].block_table).astype(np.int32))),
     ValueError, "kv.block_table", "block_table[0, 0] ="),
    ("negative block id", True, lambda c: dict(kv=c["kv"]._replace(block_table=np.full_like(c["kv"].block_table, -1))), ValueError, "kv.block_table", "= -1"),
    ("block table too narrow", True, lambda c: dict(kv=c["kv"]._replace(block_table=c["kv"].block_table[:, :1])), ValueError, "kv.block_table", "got 1 columns"),
    ("block table rows", True, lambda c: dict(kv=c["kv"]._replace(block_table=c["kv"].block_table[:1])), ValueError, "kv.block_table", "got shape (1,"),
    ("kv_lens negative", True, lambda c: dict(kv=c["kv"]._replace(kv_lens=I32(-1, 2))), ValueError, "kv.kv_lens", "kv_lens[0] = -1"),
    ("kv_lens shape", True, lambda c: dict(kv=c["kv"]._replace(kv_lens=I32(3))), ValueError, "kv.kv_lens", "got (1,)"),
    ("k_cache dtype", True, lambda c: dict(kv=c["kv"]._replace(k_cache=c["kv"].k_cache.astype(np.float16))), TypeError, "kv.k_cache", "got float16"),
    ("k_cache without slots", True, lambda c: dict(kv=c["kv"]._replace(k_cache=c["kv"].k_cache[:, :0], v_cache=c["kv"].v_cache[:, :0])),
     ValueError, "kv.k_cache", "block_size >= 1, got shape (5, 0, 2, 8)"),
    ("v_cache shape", True, lambda c: dict(kv=c["kv"]._replace(v_cache=c["kv"].v_cache[:, :1])), ValueError, "kv.v_cache", "got (")
]


def assert_names(exc: BaseException, argument: str, received: str) -> None:
    message = str(exc)
    assert message.startswith(f"{argument}:"), message
    assert "expected" in message and "got" in message, message
    assert received in message, message


@pytest.mark.parametrize("name, paged, mutate, error, argument, received", CASES, ids=[c[0] for c in CASES])
def test_bad_input_names_argument_expected_and_received(name, paged, mutate, error, argument, received):
    c = call(paged)
    c.update(mutate(c))
    for fn in (relaycore.relay_attention, full_attention, relay_attention, context_statistics):
        with pytest.raises(error) as info:
            fn(**c)
        assert_names(info.value, argument, received)


@pytest.mark.parametrize("paged, mutate, argument", [
    (False, lambda c: dict(kv=c["kv"]._replace(cu_seqlens=I32(0, 3, 5, 5))), "kv.cu_seqlens"),
    (True, lambda c: dict(kv=c["kv"]._replace(kv_lens=I32(3, 2, 1))), "kv.kv_lens"),
    (False, lambda c: dict(prefixes=level(c, prefix_ids=I32(0, 1, 0))), "prefixes[0].prefix_ids"),
], ids=["kv.cu_seqlens", "kv.kv_lens", "prefix_ids"])
def test_a_request_count_unlike_cu_seqlens_q_names_where_b_comes_from(paged, mutate, argument):
    """An engine that adds a request everywhere but in cu_seqlens_q is told the arrays disagree
    on B, and which one B was read from, as the block table's rows are."""
    c = call(paged)
    c.update(mutate(c))
    with pytest.raises(ValueError) as info:
        relaycore.relay_attention(**c)
    assert_names(info.value, argument, "got (")
    assert "B from cu_seqlens_q" in str(info.value), str(info.value)


@pytest.mark.parametrize("paged", [False, True])
def test_the_valid_call_is_valid(paged):
    out, lse = relaycore.relay_attention(**call(paged))
    assert out.shape == (3, 4, 8) and lse.shape == (3, 4)


def test_context_lens_counts_every_level_a_request_names_and_its_own_tokens():
    batch = make_batch([1, 2, 1], [3, 2, 5], [[2, 4], [7]], [[0, 1, -1], [-1, 0, 0]], num_q_heads=4,
                       num_kv_heads=2, head_dim=8, dtype="float64")
    args, kwargs = batch.arguments()
    assert relaycore.validation.validate(*args, **kwargs).context_lens().tolist() == [3 + 2, 2 + 4 + 7, 5 + 7]


def test_the_public_api_takes_arrays_only():
    c = call()
    c["q"] = c["q"].tolist()
    with pytest.raises(TypeError) as info:
        relaycore.relay_attention(**c)
    assert_names(info.value, "q", "got list")


torch = pytest.importorskip("torch")


def torch_call(device_of_q: str = "cpu", dtype=torch.float32, paged: bool = False) -> dict:
    batch = make_batch([1, 2], [3, 2], [[2, 4]], [[0, 1]], num_q_heads=4, num_kv_heads=2, head_dim=8,
                       dtype=str(dtype).replace("torch.", ""), block_size=2 if paged else None)
    (q, cu, kv, prefixes), kwargs = batch.to_torch("cpu", dtype)
    return dict(q=q.to(device_of_q), cu_seqlens_q=cu, kv=kv, prefixes=list(prefixes), **kwargs)


def test_offsets_whose_differences_wrap_around_are_refused():
    """np.diff of these int64 offsets wraps around to steps that all look non-negative; taken
    as lengths they would ask for ~6e18 rows."""
    a = 6148914691236517206  # about 2**64 / 3
    wrapping, plain = np.array([0, a, 2 * a - 2**64, 3], dtype=np.int64), np.array([0, 1, 2, 3], dtype=np.int64)
    z = np.zeros((3, 1, 8))
    cases = {
        "cu_seqlens_q": dict(cu_seqlens_q=wrapping, kv=RaggedKV(z, z, plain)),
        "kv.cu_seqlens": dict(cu_seqlens_q=plain, kv=RaggedKV(z, z, wrapping)),
        "prefixes[0].cu_seqlens": dict(cu_seqlens_q=plain, kv=RaggedKV(z, z, plain),
                                       prefixes=[PrefixLevel(z, z, wrapping, np.zeros(3, dtype=np.int64))]),
    }
    for name, c in cases.items():
        for fn in (relaycore.relay_attention, full_attention, relay_attention):
            with pytest.raises(ValueError) as info:
                fn(z, **c)
            assert_names(info.value, name, f"{name}[1] = {a} > {name}[2] = {2 * a - 2**64}")


def test_tensors_on_two_devices():
    c = torch_call("meta")  # the metadata on the CPU is on the host: the first float tensor is named
    with pytest.raises(ValueError) as info:
        relaycore.relay_attention(**c)
    assert_names(info.value, "kv.k", "got cpu")
    assert "expected device meta" in str(info.value)
    c = torch_call()
    c["cu_seqlens_q"] = c["cu_seqlens_q"].to("meta")  # metadata neither on q's device nor on the host
    with pytest.raises(ValueError) as info:
        relaycore.relay_attention(**c)
    assert_names(info.value, "cu_seqlens_q", "got meta")
    assert "expected device cpu (the device of q) or the host (a NumPy array or a CPU tensor)" in str(info.value)


def test_on_host_is_numpy_or_a_cpu_tensor_beside_another_device():
    on_host = relaycore.validation.on_host
    cpu = torch.zeros(2, dtype=torch.int32)
    assert on_host(np.zeros(2), "cuda:0") and on_host(np.zeros(2), "cpu")
    assert on_host(cpu, "cuda:0") and not on_host(cpu, "cpu")  # beside CPU q it is on q's device
    assert not on_host(cpu.to("meta"), "cuda:0")


@pytest.mark.parametrize("paged", [False, True])
def test_metadata_on_the_host_beside_torch_tensors_gives_the_same_result(paged):
    c = torch_call(paged=paged)
    expected = relaycore.relay_attention(**c, backend="torch")
    host = dict(c, cu_seqlens_q=c["cu_seqlens_q"].numpy(), kv=c["kv"]._replace(**{
        name: getattr(c["kv"], name).numpy() for name in ("block_table", "kv_lens", "cu_seqlens")
        if name in c["kv"]._fields}), prefixes=[p._replace(cu_seqlens=p.cu_seqlens.numpy(), prefix_ids=p.prefix_ids.numpy())
                                               for p in c["prefixes"]])
    meta = relaycore.validation.validate(**host)
    assert (meta.host_block_table is not None) == paged  # a NumPy block table is on the host: a backend copies it
    for got, want in zip(relaycore.relay_attention(**host, backend="torch"), expected):
        assert torch.equal(got, want)
    assert relaycore.validation.validate(**c).host_block_table is None  # a CPU tensor beside CPU q is on q's device


def test_tensors_without_values():
    c = torch_call()
    c = {k: (v.to("meta") if isinstance(v, torch.Tensor) else v) for k, v in c.items()}
    c["kv"] = RaggedKV(*(x.to("meta") for x in c["kv"]))
    c["prefixes"] = [PrefixLevel(*(x.to("meta") for x in p)) for p in c["prefixes"]]
    with pytest.raises(ValueError) as info:
        relaycore.relay_attention(**c)
    assert_names(info.value, "q", "meta device")


def test_mixed_array_libraries_and_dtypes():
    c = call()  # NumPy q: its metadata must be NumPy too
    c["cu_seqlens_q"] = torch.from_numpy(c["cu_seqlens_q"])
    with pytest.raises(TypeError) as info:
        relaycore.relay_attention(**c)
    assert_names(info.value, "cu_seqlens_q", "got a torch array")
    c = torch_call()
    c["kv"] = c["kv"]._replace(k=c["kv"].k.numpy())
    with pytest.raises(TypeError) as info:
        relaycore.relay_attention(**c)
    assert_names(info.value, "kv.k", "got a numpy array")
    c = torch_call(dtype=torch.bfloat16)
    c["kv"] = c["kv"]._replace(k=c["kv"].k.float(), v=c["kv"].v.float())
    with pytest.raises(TypeError) as info:
        relaycore.relay_attention(**c)
    assert_names(info.value, "kv.k", "got float32")


def test_backend_choices_are_checked_and_never_swapped():
    with pytest.raises(ValueError) as info:
        relaycore.relay_attention(**call(), backend="fastest")
    assert_names(info.value, "backend", "got 'fastest'")
    with pytest.raises(TypeError) as info:
        relaycore.relay_attention(**call(), backend=None)
    assert_names(info.value, "backend", "got NoneType")
    with pytest.raises(ValueError, match=re.escape("backend 'torch' cannot run this batch: needs torch tensors")):
        relaycore.relay_attention(**call(), backend="torch")


def test_arrays_whose_elements_are_not_their_values_are_refused():
    c = call()
    c["q"] = np.ma.masked_array(c["q"], mask=np.zeros(c["q"].shape, dtype=bool))
    for fn in (relaycore.relay_attention, full_attention, relay_attention):
        with pytest.raises(TypeError) as info:
            fn(**c)
        assert_names(info.value, "q", "masked array")
    for name in ("q", "cu_seqlens_q"):
        c = torch_call()
        c[name] = c[name].to_sparse()
        for fn in (relaycore.relay_attention, full_attention):
            with pytest.raises(TypeError) as info:
                fn(**c)
            assert_names(info.value, name, "got layout torch.sparse_coo")
    c = torch_call(paged=True)
    c["kv"] = c["kv"]._replace(block_table=c["kv"].block_table.to_sparse())
    with pytest.raises(TypeError) as info:
        relaycore.relay_attention(**c)
    assert_names(info.value, "kv.block_table", "got layout torch.sparse_coo")


@pytest.mark.parametrize("paged", [False, True])
def test_views_with_the_negative_bit_give_the_values_they_show(paged):
    # torch._neg_view(-x) equals x but holds -x in memory (as .imag of a conjugated complex tensor does)
    c = torch_call(paged=paged)
    negated = dict(c, q=torch._neg_view(-c["q"]), cu_seqlens_q=torch._neg_view(-c["cu_seqlens_q"]),
                   kv=c["kv"]._replace(**{f: torch._neg_view(-getattr(c["kv"], f)) for f in c["kv"]._fields}),
                   prefixes=[p._replace(k=torch._neg_view(-p.k), v=torch._neg_view(-p.v)) for p in c["prefixes"]])
    assert negated["q"].is_neg() and torch.equal(negated["q"], c["q"])
    for backend in ("torch", "reference"):
        for got, want in zip(relaycore.relay_attention(**negated, backend=backend), relaycore.relay_attention(**c, backend=backend)):
            assert torch.equal(got, want), backend


def test_arrays_in_either_byte_order_and_tensor_subclasses_are_arrays():
    """A big-endian NumPy array is named and read by its format (``>f8`` is float64); a
    subclass of ``torch.Tensor`` is a tensor."""
    c = call()
    swapped = lambda x: x.astype(x.dtype.newbyteorder(">"))  # noqa: E731
    big = dict(c, q=swapped(c["q"]), cu_seqlens_q=swapped(c["cu_seqlens_q"]),
               kv=c["kv"]._replace(k=swapped(c["kv"].k), cu_seqlens=swapped(c["kv"].cu_seqlens)))
    for got, want in zip(relaycore.relay_attention(**big), relaycore.relay_attention(**c)):
        assert np.array_equal(got, want)
    with pytest.raises(TypeError) as info:
        relaycore.relay_attention(**dict(c, q=swapped(c["q"].astype(np.float32))))
    assert_names(info.value, "kv.k", "got float64")
    assert "float32" in str(info.value) and ">f4" not in str(info.value)

    class Tagged(torch.Tensor):
        pass

    t = torch_call()
    want = relaycore.relay_attention(**t, backend="torch")
    got = relaycore.relay_attention(**dict(t, q=t["q"].as_subclass(Tagged)), backend="torch")
    assert torch.equal(got.out.as_subclass(torch.Tensor), want.out) and torch.equal(got.lse, want.lse)


def test_states_of_other_formats_are_refused():
    """An np.matrix multiplies as matrices; float8 and longdouble are formats no state is in."""
    ones = np.ones((2, 3))
    cases = [(relaycore.AttentionState(np.matrix(ones), np.zeros(2)), "a.out", "got an np.matrix"),
             (relaycore.AttentionState(ones.astype(np.longdouble), np.zeros(2)), "a.out", f"got {np.dtype(np.longdouble).name}"),
             (relaycore.AttentionState(torch.ones(2, 3).to(torch.float8_e4m3fn), torch.zeros(2)), "a.out",
              "got float8_e4m3fn")]
    for state, name, received in cases:
        with pytest.raises(TypeError) as info:
            relaycore.merge_states(state, state)
        assert_names(info.value, name, received)


def test_result_buffers_and_states_whose_elements_are_not_their_values_are_refused():
    c = call()
    out = np.ma.masked_array(np.zeros(c["q"].shape), mask=np.zeros(c["q"].shape, dtype=bool))
    with pytest.raises(TypeError) as info:
        relaycore.relay_attention(**c, out=out)
    assert_names(info.value, "out", "masked array")
    state = relaycore.AttentionState(np.ma.masked_array(np.ones((2, 3))), np.zeros(2))
    with pytest.raises(TypeError) as info:
        relaycore.merge_states(state, state)
    assert_names(info.value, "a.out", "masked array")
    t = torch_call()
    with pytest.raises(TypeError) as info:
        relaycore.relay_attention(**t, out=torch.zeros(t["q"].shape).to_sparse())
    assert_names(info.value, "out", "got layout torch.sparse_coo")
