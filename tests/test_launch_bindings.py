"""A plan's launches as its last call ran them (``Plan.bindings``), on the CPU: the launches are
recorded instead of run, as on a GPU, so that what the second call of a plan (a model's next
layer) hands the kernels can be compared with what the first one did. The kernels themselves
run in ``tests/gpu``, every call after a plan's first through these bindings."""

from __future__ import annotations

import dataclasses

import pytest

torch = pytest.importorskip("torch")


@pytest.fixture
def recorded(monkeypatch):
    """``(looked_up, rerun)``: the launches that built their arguments and looked their kernel up
    (``launcher.launch``: ``(kernel, args, constexprs)``) and those run from a binding
    (``launcher.run_compiled``: ``(compiled, grid, every)``), of calls on the CPU as on a GPU
    without the Gluon tile (no kernel runs, so triton need not interpret)."""
    pytest.importorskip("triton")
    from relaycore.fast.triton import backend as triton_backend
    from relaycore.fast.triton import hopper
    from relaycore.fast.triton import launch as launch_module

    looked_up, rerun = [], []

    def launch(kernel, grid, args, constexprs, **_):
        looked_up.append((kernel, args, constexprs))
        return ("compiled", kernel, grid, len(looked_up))  # what run_compiled must get back

    monkeypatch.setenv("TRITON_INTERPRET", "1")  # planning takes CPU tensors, as under the interpreter
    monkeypatch.setattr(triton_backend, "runs_on_the_cpu", lambda: True)  # in a process that compiles them too
    monkeypatch.setattr(launch_module, "interpreting", lambda: False)  # launching does not
    monkeypatch.setattr(launch_module, "CONCURRENT_PARTIALS", False)
    monkeypatch.setattr(hopper, "usable", lambda *_: False)
    monkeypatch.setattr(launch_module, "launch", launch)
    monkeypatch.setattr(launch_module, "run_compiled", lambda compiled, grid, every, **_: rerun.append(
        (compiled, grid, every)))
    return looked_up, rerun


def _decode_batch(**kwargs):
    from relaycore.testing import make_batch

    return make_batch([1, 1, 1], [40, 7, 23], [[100]], [[0, 0, -1]], num_q_heads=8, num_kv_heads=2, head_dim=64,
                      block_size=8, dtype="float16", **kwargs)


def _called(make_plan):
    """``(args, kwargs, plan)``: a decode batch's arguments and ``make_plan``'s plan of them,
    called once (which binds its launches)."""
    import relaycore

    args, kwargs = _decode_batch().to_torch("cpu")
    planned = make_plan(*args, **kwargs)
    relaycore.relay_attention(*args, **kwargs, backend="triton", plan=planned)
    return args, kwargs, planned


def _same_argument(a, b) -> bool:
    """The same value, or tensors that Triton specializes alike (the buffers of each call are
    its own), or tensor descriptors of the same numbers over such tensors."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and a.stride() == b.stride())
    if type(a).__name__ == "TensorDescriptor":
        numbers = lambda x: {name: value for name, value in vars(x).items() if name != "base"}  # noqa: E731
        return type(a) is type(b) and numbers(a) == numbers(b) and _same_argument(a.base, b.base)
    return type(a) is type(b) and a == b


def _next_layer(args):
    """A call's arguments with new tensors of the same values (the next layer's)."""
    layer = [x.clone() if isinstance(x, torch.Tensor) else x for x in args]
    layer[2] = type(args[2])(*(x.clone() for x in args[2]))
    layer[3] = tuple(type(level)(*(x.clone() for x in level)) for level in args[3])
    return layer


def _assert_rerun_as_built(first, looked_up, rerun):
    """The second call looked nothing up and reran each of the first call's launches (``first``)
    with the arguments that launch built."""
    assert len(looked_up) == len(first) and len(rerun) == len(first)
    for (kernel, args_then, constexprs), (compiled, _, every) in zip(first, rerun):
        assert compiled[1] is kernel
        then = (*args_then, *constexprs.values())
        assert len(every) == len(then) and all(_same_argument(a, b) for a, b in zip(every, then))


@pytest.mark.parametrize("fused_merge", [False, True])
def test_the_next_call_reruns_each_launch_with_the_arguments_it_would_build(recorded, fused_merge):
    import relaycore
    from relaycore.fast.triton import prepare

    looked_up, rerun = recorded
    args, kwargs = _decode_batch().to_torch("cpu")
    planned = prepare(*args, **kwargs)
    planned = dataclasses.replace(planned, fused_merge=fused_merge)  # copies hold no bindings
    assert planned.bindings == {}
    state = relaycore.relay_attention(*args, **kwargs, backend="triton", plan=planned)
    first = list(looked_up)
    assert len(first) == len(planned.launches) + (not fused_merge) and not rerun
    assert sorted(planned.bindings) == sorted([*range(len(planned.launches))] + ([] if fused_merge else [-1]))

    layer = _next_layer(args)
    relaycore.relay_attention(*layer, **kwargs, backend="triton", plan=planned)
    _assert_rerun_as_built(first, looked_up, rerun)
    # the call's own tensors are the new layer's, not the first call's
    assert rerun[0][2][0] is layer[0]
    kv, levels = args[2], args[3]
    then = {id(x) for x in (args[0], *kv, *(x for level in levels for x in level), *state)}
    assert not [x for _, _, every in rerun for x in every if isinstance(x, torch.Tensor) and id(x) in then]


def test_the_gluon_tile_is_bound_too(recorded, monkeypatch):
    """An append batch whose launch runs the Gluon tile of sm_90 (as on an H100/H200): the next
    layer's call reruns it from its binding, with descriptors of the same numbers over the new
    layer's tensors."""
    import relaycore
    from relaycore.fast.triton import hopper, prepare
    from relaycore.testing import make_batch

    if hopper.gluon is None:
        pytest.skip("this triton has no Gluon")
    looked_up, rerun = recorded
    monkeypatch.setattr(hopper, "usable", lambda q, head_dim, block_m: block_m == hopper.TILE_M)
    args, kwargs = make_batch([40, 32], [300, 40], [[200]], [[0, 0]], num_q_heads=16, num_kv_heads=4, head_dim=64,
                              block_size=16, dtype="float16").to_torch("cpu")
    planned = prepare(*args, **kwargs)
    relaycore.relay_attention(*args, **kwargs, backend="triton", plan=planned)
    first = list(looked_up)
    assert [launched for launched in first if launched[0] is hopper.single_pass_tile] and not rerun

    layer = _next_layer(args)
    relaycore.relay_attention(*layer, **kwargs, backend="triton", plan=planned)
    _assert_rerun_as_built(first, looked_up, rerun)
    kv, (level,) = layer[2], layer[3]
    for (kernel, _, _), (_, _, every) in zip(first, rerun):
        if kernel is hopper.single_pass_tile:
            assert {id(x.base) for x in every[1:5]} <= {id(kv.k_cache), id(kv.v_cache), id(level.k), id(level.v)}


def test_arguments_that_specialize_otherwise_look_the_kernel_up_again(recorded):
    import relaycore
    from relaycore import PagedKV
    from relaycore.fast.triton import prepare

    looked_up, rerun = recorded
    args, kwargs, planned = _called(prepare)
    bound = len(looked_up)

    # q one element off a 16-byte boundary: Triton compiles another kernel for it
    storage = torch.empty(args[0].numel() + 1, dtype=args[0].dtype)
    shifted = storage[1:].view(args[0].shape).copy_(args[0])
    relaycore.relay_attention(shifted, *args[1:], **kwargs, backend="triton", plan=planned)
    assert len(looked_up) == 2 * bound and not rerun
    assert all(launched[0] is shifted for _, launched, _ in looked_up[bound:])

    # a cache of the same shape with other strides (every other page of a larger one)
    kv = args[2]
    wide = [torch.zeros((2 * x.shape[0], *x.shape[1:]), dtype=x.dtype)[::2] for x in (kv.k_cache, kv.v_cache)]
    for x, src in zip(wide, (kv.k_cache, kv.v_cache)):
        x.copy_(src)
    relaycore.relay_attention(shifted, args[1], PagedKV(*wide, kv.block_table, kv.kv_lens), args[3], **kwargs,
                              backend="triton", plan=planned)
    own = [i for i, launch in enumerate(planned.launches) if launch.level < 0]
    assert own and len(looked_up) == 2 * bound + len(own) and len(rerun) == bound - len(own)


def test_a_graph_plan_rebinds_after_each_update(recorded):
    """``GraphPlan.update`` makes a new plan (``dataclasses.replace``): its launches start unbound."""
    import relaycore
    from relaycore.fast.triton import prepare_graph

    looked_up, rerun = recorded
    args, kwargs, graph = _called(prepare_graph)
    first = len(looked_up)
    assert graph.plan.bindings and first and not rerun
    graph.update(*args, **kwargs)
    assert graph.plan.bindings == {}
    relaycore.relay_attention(*args, **kwargs, backend="triton", plan=graph)
    assert len(looked_up) == 2 * first and not rerun


@pytest.mark.parametrize("which", ["kv.k_cache", "kv.v_cache", "kv.block_table", "prefixes[0].k", "prefixes[0].v"])
def test_exactly_the_launches_that_read_a_tensor_off_its_alignment_look_their_kernel_up(recorded, which):
    """One of the call's tensors 2 bytes past a 16-byte boundary (the same values): the launches
    that read it compile for it, the others rerun their bindings."""
    import relaycore
    from relaycore.fast.triton import prepare

    looked_up, rerun = recorded
    args, kwargs, planned = _called(prepare)
    bound = len(looked_up)
    q, cu, kv, levels = args
    fields = dict(kv._asdict(), **{f"prefixes[0].{name}": x for name, x in levels[0]._asdict().items()})
    x = fields[which[3:] if which.startswith("kv.") else which]
    storage = torch.empty(x.numel() + 1, dtype=x.dtype)
    shifted = storage[1:].view(x.shape).copy_(x)
    if which.startswith("kv."):
        kv = kv._replace(**{which[3:]: shifted})
    else:
        levels = (levels[0]._replace(**{which.split(".")[1]: shifted}),)
    relaycore.relay_attention(q, cu, kv, levels, **kwargs, backend="triton", plan=planned)

    def reads(launched):
        return any(a is shifted for a in launched)

    again = looked_up[bound:]
    readers = [launch for launch in planned.launches if (launch.level < 0) == which.startswith("kv.")]
    assert again and len(again) == len(readers) and all(reads(launched) for _, launched, _ in again)
    assert len(rerun) == bound - len(again) and not any(reads(every) for _, _, every in rerun)


def test_launches_pass_no_hook_where_none_is_set():
    """triton >= 3.5 keeps each launch hook as a chain, never ``None``: an empty one is passed as
    ``None`` (its launcher then calls nothing and builds no metadata), one with calls as it is."""
    pytest.importorskip("triton")
    from relaycore.fast.triton import launcher

    runtime = getattr(launcher._knobs, "runtime", None)
    if not isinstance(getattr(getattr(runtime, "launch_enter_hook", None), "calls", None), list):
        pytest.skip("this triton's launch hooks are not chains")
    if runtime.launch_enter_hook.calls or runtime.launch_exit_hook.calls:
        pytest.skip("a launch hook is set in this process")
    assert launcher._hooks() == (None, None)

    def profiler(metadata):
        return None

    runtime.launch_enter_hook.add(profiler)
    try:
        assert launcher._hooks() == (runtime.launch_enter_hook, None)
    finally:
        runtime.launch_enter_hook.remove(profiler)
    assert launcher._hooks() == (None, None)


def test_the_calls_of_a_plan_on_one_stream_share_its_scratch(recorded):
    """The states' scratch is the plan's (``Plan.scratch``, a pair per stream; off a GPU, the
    key ``None``): the next layer's call hands every launch the buffers the first call
    allocated; a copy of the plan allocates its own."""
    import relaycore
    from relaycore.fast.triton import prepare

    looked_up, rerun = recorded
    args, kwargs, planned = _called(prepare)
    assert list(planned.scratch) == [None]
    part_out, part_lse = planned.scratch[None]
    assert part_out.dtype == part_lse.dtype == torch.float32
    assert part_out.shape == (planned.num_slots, planned.num_q_heads, planned.head_dim)
    assert part_lse.shape == (planned.num_slots, planned.num_q_heads)
    relaycore.relay_attention(*args, **kwargs, backend="triton", plan=planned)
    for every in [launched for _, launched, _ in looked_up] + [every for _, _, every in rerun]:
        assert [x for x in every if x is part_out] and [x for x in every if x is part_lse]
    assert dataclasses.replace(planned).scratch == {}
