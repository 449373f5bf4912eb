"""``run_planned``: the launches of a planned batch (no host synchronization, no planning)."""

from __future__ import annotations

import threading
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch

from relaycore.constants import LN2, LOG2E
from relaycore.buffers import check_result_buffers
from relaycore.types import AttentionState, PagedKV, PrefixLevel, RequestKV
from relaycore.validation import check_block_ids, to_host_ints

from relaycore.fast.triton import hopper
from relaycore.fast.triton.config import block_d
from relaycore.fast.triton.kernels import merge_kernel, partial_kernel
from relaycore.fast.triton.launcher import current_stream, interpreting, launch, run_compiled
from relaycore.fast.triton.plan import REGULAR_FIELDS, Launch, Plan, merge_grid


def _kv_strides(x: torch.Tensor, paged: bool) -> Tuple[int, int, int]:
    """(block, slot, head) strides: a contiguous-rows tensor ``[rows, Hkv, D]`` has no block axis."""
    strides = x.stride()
    return strides[:3] if paged else (0, strides[0], strides[1])


def _contiguous_last(x: torch.Tensor) -> torch.Tensor:
    """``x`` as the kernels read it: a unit stride along the last axis, and its values in
    memory (a view with torch's negative bit holds ``-x``; ``resolve_neg`` copies)."""
    if x.is_neg():
        x = x.resolve_neg()
    return x if x.stride(-1) == 1 else x.contiguous()


def run_planned(plan: Plan, q: torch.Tensor, kv: RequestKV, prefixes: Sequence[PrefixLevel] = (), *,
                out: Optional[torch.Tensor] = None, lse: Optional[torch.Tensor] = None,
                cu_seqlens_q=None) -> AttentionState:
    """Relay attention of a planned batch.

    The launches, and the check of ``out``/``lse`` where given: no host synchronization, so it
    may be captured in a CUDA graph. Under
    ``torch.compile`` it is the single op ``relaycore::relay_attention_planned``
    (``relaycore.fast.triton.op``), which the compiler traces with its shapes and calls as is.

    Args:
        plan: from ``relaycore.fast.triton.plan`` for these inputs' metadata.
        q: ``[total_q, Hq, D]`` fp16/bf16/fp32 on the plan's device.
        kv: the requests' own KV (``RaggedKV`` or ``PagedKV``, as planned).
        prefixes: the ``PrefixLevel`` s, as planned.
        out, lse: buffers for the result, or ``None``: new ones. Checked here
            (``buffers.check_result_buffers``: the result's shape and dtype, contiguous, apart
            from the call's arrays, ``cu_seqlens_q`` among them where given; under
            ``torch.compile`` where they lie is not checked). The kernels write into them (under
            ``torch.compile`` through the op ``relaycore::relay_attention_planned_into``).
        cu_seqlens_q: the call's, for the buffers' check alone (the plan holds its values).

    Returns:
        ``AttentionState(out [total_q, Hq, D] in q's dtype, lse [total_q, Hq] float32)``: the
        given buffers, where given.

    Raises:
        TypeError, ValueError: a buffer that the result cannot be written into, naming it.
    """
    if out is not None or lse is not None:
        check_result_buffers(out, lse, q, cu_seqlens_q, kv, prefixes, num_q_heads=plan.num_q_heads,
                             head_dim=plan.head_dim, dtype=plan.dtype, eager=not torch.compiler.is_compiling())
    return run_into(plan, q, kv, prefixes, out, lse)


def run_into(plan: Plan, q: torch.Tensor, kv: RequestKV, prefixes: Sequence[PrefixLevel],
             out: Optional[torch.Tensor] = None, lse: Optional[torch.Tensor] = None) -> AttentionState:
    """``run_planned`` of buffers checked already (``relay_attention`` without a plan checks
    them before it picks a backend): the op under ``torch.compile``, else ``run_eager``."""
    if torch.compiler.is_compiling():
        from relaycore.fast.triton.op import call_op

        return call_op(plan, q, kv, prefixes, out, lse)
    return run_eager(plan, q, kv, prefixes, out, lse)


#: Run the partial launches of a call (one per KV source and tile height) side by side on
#: separate CUDA streams, joined before the merge. They write disjoint scratch slots, so the
#: bits are those of running them one after the other (``False``, which ``tests/gpu`` compares
#: with); at small batch each launch fills only part of the GPU and the overlap removes a whole
#: kernel's latency from the call (``fast/triton/NOTES.md``).
CONCURRENT_PARTIALS = True

#: Run single-pass launches with ``hopper.single_pass_tile`` where ``hopper.usable`` and the
#: tile's copies can read the own KV in place (``hopper.readable``, ``_sources``), else
#: ``partial_kernel``. ``tests/gpu`` runs both.
HOPPER_SINGLE_PASS = True


class _Lanes(threading.local):
    """Per host thread and device: the side streams of the partial launches and the events
    that fork them from the caller's stream and join them back (created once, recorded anew
    by every call; inside a graph capture the records and waits become the graph's edges)."""

    def __init__(self) -> None:
        self.by_device: Dict[int, Tuple[torch.cuda.Event, List[torch.cuda.Stream], List[torch.cuda.Event]]] = {}

    def get(self, device: torch.device, n: int):
        if device.index not in self.by_device:
            self.by_device[device.index] = (torch.cuda.Event(), [], [])
        fork, streams, joins = self.by_device[device.index]
        while len(streams) < n:
            streams.append(torch.cuda.Stream(device))
            joins.append(torch.cuda.Event())
        return fork, streams[:n], joins[:n]


_LANES = _Lanes()


class _Sources(NamedTuple):
    """The tensors a call's launches read, each in a layout the kernels read in place: the
    call's own where it is, else a copy (a last axis that is not contiguous; for the Gluon tile,
    a level 0 it cannot read in place, or a block table that is not int32). ``run_eager`` makes
    them on the caller's stream before the launches fork from it, so that every copy is ordered
    before the launches that read it, on any stream, and freed after them (the caller's stream
    joins every side stream).

    Attributes:
        q: ``[total_q, Hq, D]``.
        levels: each prefix level's ``(k, v)``, ``[rows, Hkv, D]``.
        own: the requests' own ``(k, v)``: ragged ``[rows, Hkv, D]`` or paged caches
            ``[num_pages, page, Hkv, D]``.
        table: a paged cache's block table ``[B, max_pages]`` (the plan's copy where it holds
            one); ``None`` for ragged KV.
        tiles: whether each of the plan's launches runs ``hopper.single_pass_tile`` (else
            ``partial_kernel``).
        stand_in: what a launch passes for a level 0 it does not read (a level of no rows,
            or a launch of requests without a prefix): the call's ``out`` (contiguous, in q's
            dtype), or a tensor like it where such a launch runs the Gluon tile, which compiles
            against a tensor descriptor of it, and ``out`` (a caller's buffer) is not
            ``hopper.readable``.
    """

    q: torch.Tensor
    levels: Tuple[Tuple[torch.Tensor, torch.Tensor], ...]
    own: Tuple[torch.Tensor, torch.Tensor]
    table: Optional[torch.Tensor]
    tiles: Tuple[bool, ...]
    stand_in: torch.Tensor


def _sources(plan: Plan, q: torch.Tensor, kv: RequestKV, prefixes: Sequence[PrefixLevel], out: torch.Tensor,
             interpret: bool) -> _Sources:
    """The ``_Sources`` of a call (copies made on the current stream).

    A single-pass launch runs the Gluon tile where ``hopper.usable`` (the machine and the
    model) and where the tile's copies can read the own KV in place (``hopper.readable``); the
    own KV is not copied (a paged cache is the whole pool), so another layout runs
    ``partial_kernel``. For a tile, level 0 is copied unless it is packed and readable, and the
    block table is read as int32 (its entries are block ids, below ``num_blocks``)."""
    levels = [(_contiguous_last(level.k), _contiguous_last(level.v)) for level in prefixes]
    if isinstance(kv, PagedKV):
        table = kv.block_table if plan.block_table is None else plan.block_table
        own, table = (_contiguous_last(kv.k_cache), _contiguous_last(kv.v_cache)), _contiguous_last(table)
    else:
        own, table = (_contiguous_last(kv.k), _contiguous_last(kv.v)), None
    tile_kv = (HOPPER_SINGLE_PASS and not interpret and any(item_list.single_pass for item_list in plan.launches)
               and hopper.readable(own[0]) and hopper.readable(own[1]))
    tiles = tuple(tile_kv and item_list.single_pass and hopper.usable(q, plan.head_dim, item_list.block_m)
                  for item_list in plan.launches)
    reads_level0 = any(tile and item_list.reads_prefix for tile, item_list in zip(tiles, plan.launches))
    if reads_level0 and levels[0][0].shape[0] and not all(x.is_contiguous() and hopper.readable(x) for x in levels[0]):
        levels[0] = tuple(x.clone(memory_format=torch.contiguous_format) for x in levels[0])  # a fresh, packed copy
    if any(tiles) and table is not None and table.dtype != torch.int32:
        table = table.to(torch.int32)
    stands_in = any(tile and not (item_list.reads_prefix and levels[0][0].shape[0])
                    for tile, item_list in zip(tiles, plan.launches))  # a tile that reads no level 0
    stand_in = torch.empty_like(out) if stands_in and not hopper.readable(out) else out
    return _Sources(q, tuple(levels), own, table, tiles, stand_in)


def run_eager(plan: Plan, q: torch.Tensor, kv: RequestKV, prefixes: Sequence[PrefixLevel],
              out: Optional[torch.Tensor] = None, lse: Optional[torch.Tensor] = None) -> AttentionState:
    """``run_planned`` outside ``torch.compile``: the kernel launches themselves, writing into
    ``out``/``lse`` where given (else new tensors). Reads only
    ``kv.k``/``kv.v`` (ragged) or ``kv.k_cache``/``kv.v_cache`` and ``kv.block_table`` (paged;
    the plan's copy where it holds one, ``Plan.block_table``) and each level's ``k``/``v``: the
    plan holds every offset.

    The caller's stream first waits for the copy of the plan's lists (``Plan.ready``), which
    may have been queued on another stream; inside a CUDA graph capture it does not wait (the
    lists must be on the device before the capture starts: ``torch.cuda.graph`` synchronizes
    the device first). Any copy of an input the kernels cannot read in place is made next, on
    the caller's stream (``_Sources``). The partial launches run on the caller's stream and,
    with ``CONCURRENT_PARTIALS``, on side streams (``lanes``) that fork from it before the
    first launch and join it before the merge (or, with the plan's fused merge, before the call
    returns); inside a CUDA graph capture they become parallel branches of the graph."""
    total_q, hq, d = plan.total_q, plan.num_q_heads, plan.head_dim
    interpret = interpreting()
    main = current_stream(q.device) if q.is_cuda else None
    capturing = main is not None and torch.cuda.is_current_stream_capturing()
    if plan.ready is not None and not capturing:
        main.wait_event(plan.ready)  # lists copied on another stream
    given = [x for x in (out, lse) if x is not None]
    if out is None:
        out = torch.empty((total_q, hq, d), dtype=q.dtype, device=q.device)
    if lse is None:
        lse = torch.empty((total_q, hq), dtype=torch.float32, device=q.device)
    if total_q == 0:
        return AttentionState(out, lse)
    if plan.pages_read is not None:
        _check_block_ids(plan.pages_read, kv)
    sources = _sources(plan, _contiguous_last(q), kv, prefixes, out, interpret)
    part_out, part_lse = _scratch(plan, q.device, main, capturing)
    if CONCURRENT_PARTIALS and not interpret and len(plan.launches) > 1:
        on_caller, on_sides = lanes(plan)
        fork, sides, joins = _LANES.get(q.device, len(on_sides))
        fork.record(main)
        for side in sides:
            side.wait_event(fork)
        try:
            for index in on_caller:
                _launch_partial(plan, index, sources, part_out, part_lse, out, lse, interpret, None)
            for index, side in zip(on_sides, sides):
                _launch_partial(plan, index, sources, part_out, part_lse, out, lse, interpret, side)
        finally:  # also when a launch fails: what is queued on a side reads memory the caller's stream frees
            for side, join in zip(sides, joins):
                join.record(side)
                main.wait_event(join)
    else:
        for index in range(len(plan.launches)):
            _launch_partial(plan, index, sources, part_out, part_lse, out, lse, interpret, None)
    if not plan.fused_merge and plan.num_slots:  # no slots: every token was written by a single pass
        listed, counted = plan.merge_tokens is not None, plan.merge_count is not None
        tokens = plan.merge_tokens if listed else plan.slot_offsets  # unread where not listed (nor counted)
        args = (part_out, part_lse, plan.slot_offsets, tokens, plan.merge_count if counted else tokens, out, lse)
        grid = (merge_grid(plan), hq)
        _launch_bound(plan, MERGE, merge_kernel, grid, args, _layout(args, ()),
                      lambda: (dict(NUM_Q_HEADS=hq, HEAD_DIM=d, BLOCK_D=block_d(d), TOKENS_LISTED=listed,
                                    TOKENS_COUNTED=counted, LN2=LN2), 1, 1), q.device, None)
    for x in given:  # written in place, counted as torch's own ops count it: autograd refuses a saved buffer
        if not x.is_inference():  # (inference tensors keep no count)
            torch.autograd.graph.increment_version(x)
    return AttentionState(out, lse)


def lanes(plan: Plan) -> Tuple[List[int], List[int]]:
    """Where ``run_eager`` queues ``plan``'s partial launches with ``CONCURRENT_PARTIALS``:
    ``(on_caller, on_sides)``, launch indices in order. Launch 0 runs on the caller's stream,
    and so does a graph plan's padded single-pass launch after it (``Launch.single_pass`` with
    a ``count``: at a step where its requests read a prefix past level 0 it has no items).
    Against a side stream of its own, in graph replays on an H200, that saved 4-6 us beside 32
    decode requests, at steps with items and without, and cost 1.5-2.7 us (0.7%) at the split
    step of four 512-token appends (``fast/triton/NOTES.md``, session 37). Every other launch
    gets a side stream."""
    padded = [i for i, x in enumerate(plan.launches) if i and x.single_pass and x.count is not None]
    return [0] + padded, [i for i in range(1, len(plan.launches)) if i not in padded]


def _check_block_ids(pages_read: torch.Tensor, kv: PagedKV) -> None:
    """Refuse a block table on the CPU whose entries that the kernels read (``Plan.pages_read``)
    are not blocks of the cache: the interpreter would read whatever lies at such an address.

    Raises:
        ValueError: naming ``kv.block_table``: fewer entries than the plan reads, or the first
            entry read that is not a block id.
    """
    table, pages = kv.block_table, pages_read.numpy()
    columns = int(pages.max()) if pages.size else 0
    if table.ndim != 2 or table.shape[0] != pages.size or table.shape[1] < columns:
        raise ValueError(f"kv.block_table: expected shape ({pages.size}, >= {columns}) (the plan's), got shape "
                         f"{tuple(table.shape)}")
    check_block_ids(to_host_ints(table), pages, int(kv.k_cache.shape[0]))


def _scratch(plan: Plan, device: torch.device, stream: Optional[torch.cuda.Stream],
             capturing: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """The states of a call: fp32 ``out [num_slots, Hq, D]`` and ``lse2 [num_slots, Hq]``.

    The plan keeps the pair its first call on a stream allocated there (``Plan.scratch``, by
    the stream's handle), and its next calls on that stream reuse it: each is ordered after the
    last one's merge (its side launches fork from the stream after it), as a plan's calls must
    be (``Plan.arrivals``). A call being captured in a CUDA graph takes a pair of its own from
    the graph's pool, which lives as long as the graph: a graph may outlive the plan it was
    captured with (``GraphPlan.update`` replaces its plan every step)."""
    key = None if stream is None else stream.cuda_stream
    pair = None if capturing else plan.scratch.get(key)
    if pair is None:
        hq, d = plan.num_q_heads, plan.head_dim
        pair = (torch.empty((plan.num_slots, hq, d), dtype=torch.float32, device=device),
                torch.empty((plan.num_slots, hq), dtype=torch.float32, device=device))
        if not capturing:
            plan.scratch[key] = pair
    return pair


class Binding(NamedTuple):
    """A launch of a plan as its last call made it (``Plan.bindings``): the next call whose
    arguments have the same ``layout`` runs ``compiled`` with these ``constexprs`` directly,
    without building them or looking the kernel up (``launcher.run_compiled``).

    Attributes:
        kernel: the kernel launched (a launch of a plan may run ``partial_kernel`` at one call
            and the Gluon tile at another: ``_Sources.tiles``).
        layout: what Triton specializes of the call's own arguments (``_layout``); the plan's
            own (its lists, counts and regular fields) and the constexprs are the plan's for
            all its calls.
        compiled: the compiled kernel.
        constexprs: the constexpr values, in signature order.
    """

    kernel: Any
    layout: Tuple
    compiled: Any
    constexprs: Tuple


#: ``Plan.bindings`` key of the merge launch (the partial launches use their index).
MERGE = -1


def _layout(tensors: Sequence[torch.Tensor], ints: Tuple[int, ...]) -> Tuple:
    """What Triton specializes of a call's tensors (dtype, 16-byte alignment) and integers
    (their values: a change rebinds, and ``launch`` then looks up or compiles the kernel)."""
    return (ints, *[(t.dtype, t.data_ptr() % 16 == 0) for t in tensors])


def _launch_bound(plan: Plan, key: int, kernel, grid: Tuple[int, int], args: Tuple, layout: Tuple,
                  configure: Callable[[], Tuple[Dict[str, Any], int, int]], device: torch.device,
                  stream: Optional[torch.cuda.Stream]) -> None:
    """Launch ``kernel`` over ``args``: by the plan's binding ``key`` where its layout is
    ``layout``, else through ``launch`` with ``configure()`` (the constexprs, warps and stages),
    keeping the compiled kernel as the binding (one per launch: a call of another layout
    replaces it; none when interpreting)."""
    binding = plan.bindings.get(key)
    if binding is not None and binding.kernel is kernel and binding.layout == layout:
        run_compiled(binding.compiled, grid, (*args, *binding.constexprs), device=device, stream=stream)
        return
    constexprs, num_warps, num_stages = configure()
    compiled = launch(kernel, grid, args, constexprs, num_warps=num_warps, num_stages=num_stages, device=device,
                      stream=stream)
    if compiled is not None:
        plan.bindings[key] = Binding(kernel, layout, compiled, tuple(constexprs.values()))


def _launch_partial(plan: Plan, index: int, sources: _Sources, part_out: torch.Tensor, part_lse: torch.Tensor,
                    out: torch.Tensor, lse: torch.Tensor, interpret: bool, stream: Optional[torch.cuda.Stream]) -> None:
    """The partial-kernel launch of ``plan.launches[index]`` on ``stream`` (``None``: the
    current one): the launch's items over the KV source it names (a prefix level, or the
    requests' own KV); with the plan's fused merge, its programs also write the rows of
    ``out``/``lse`` they finish."""
    item_list = plan.launches[index]
    q = sources.q
    if item_list.reads_prefix and sources.levels[0][0].shape[0]:  # what its items read first: level 0
        pre_k, pre_v = sources.levels[0]
    else:  # not read, but the Gluon tile compiles against a descriptor of it: ``_Sources.stand_in``
        pre_k, pre_v = sources.stand_in, sources.stand_in
    if item_list.level >= 0:
        (k, v), paged, causal, table = sources.levels[item_list.level], False, False, item_list.items
    elif sources.table is not None:
        (k, v), paged, causal, table = sources.own, True, plan.causal, sources.table
    else:
        (k, v), paged, causal, table = sources.own, False, plan.causal, item_list.items
    grid = (item_list.num_items, plan.num_kv_heads)
    regular = item_list.regular or (0,) * len(REGULAR_FIELDS)
    if sources.tiles[index]:
        _launch_hopper(plan, index, grid, regular, q, pre_k, pre_v, k, v, paged, causal, table, out, lse, stream)
        return
    page_size = k.shape[1] if paged else 1
    strides = (*q.stride()[:2], *_kv_strides(k, paged), *_kv_strides(v, paged), table.stride(0) if paged else 0)
    pre_strides = (*pre_k.stride()[:2], *pre_v.stride()[:2])
    args = (q, k, v, item_list.items, item_list.tokens, item_list.slots, table, part_out, part_lse,
            plan.slot_offsets, plan.arrivals, out, lse, plan.softmax_scale * LOG2E, *strides, pre_k, pre_v,
            *pre_strides, *regular, item_list.items if item_list.count is None else item_list.count)
    # the plan's lists, counts and regular fields are the same at every call: the rest says
    # whether this call's arguments specialize as the last call's did
    layout = _layout((q, k, v, table, part_out, part_lse, out, lse, pre_k, pre_v), (page_size, *strides, *pre_strides))

    def configure():
        cfg = plan.config
        constexprs = dict(
            NUM_Q_HEADS=plan.num_q_heads, GROUP=plan.group_size, HEAD_DIM=plan.head_dim,
            BLOCK_D=block_d(plan.head_dim), BLOCK_M=item_list.block_m,
            BLOCK_N=cfg.block_n_for(item_list.block_m, own=item_list.level < 0), PAGED=paged, PAGE_SIZE=page_size,
            CAUSAL=causal, UPCAST=interpret and q.dtype == torch.bfloat16, DOT_PRECISION="ieee",
            FUSED_MERGE=plan.fused_merge and not item_list.single_pass,
            SPLIT_UNMASKED=item_list.block_m >= cfg.unmasked_min_block_m,
            CARRY_PAGES=paged and cfg.carries_pages(item_list.block_m), SINGLE_PASS=item_list.single_pass,
            PREFIX=item_list.reads_prefix, ITEMS_LISTED=not item_list.regular, FOLD_M=item_list.fold_rows, LN2=LN2,
            PADDED=item_list.count is not None)
        return constexprs, cfg.warps(item_list.block_m), cfg.num_stages

    _launch_bound(plan, index, partial_kernel, grid, args, layout, configure, q.device, stream)


def _launch_hopper(plan: Plan, index: int, grid: Tuple[int, int], regular: Tuple[int, ...], q: torch.Tensor,
                   pre_k: torch.Tensor, pre_v: torch.Tensor, k: torch.Tensor, v: torch.Tensor, paged: bool,
                   causal: bool, table: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
                   stream: Optional[torch.cuda.Stream]) -> None:
    """``plan.launches[index]`` as a launch of ``hopper.single_pass_tile``, bound as the partial
    launches are (``_launch_bound``): its tensor descriptors are the call's, and what Triton
    specializes of them (dtype, box) follows from the tensors' dtypes and ``own_box``."""
    item_list = plan.launches[index]
    *descs, own_box = hopper.descriptors(pre_k, pre_v, k, v, paged)
    page_size = k.shape[1] if paged else 1
    ints = (q.stride(0), q.stride(1), pre_k.stride(0), pre_k.stride(1), pre_v.stride(0), pre_v.stride(1),
            *_kv_strides(k, paged), *_kv_strides(v, paged), table.stride(0) if paged else 0)
    args = (q, *descs, pre_k, pre_v, k, v, item_list.items, item_list.tokens, table, out, lse,
            plan.softmax_scale * LOG2E, *ints, *regular,
            item_list.items if item_list.count is None else item_list.count)
    layout = _layout((q, pre_k, pre_v, k, v, table, out, lse), (page_size, own_box, *ints))

    def configure():
        return (hopper.constexprs(plan.num_q_heads, plan.group_size, plan.head_dim, paged, page_size, causal,
                                  not item_list.regular, own_box, item_list.count is not None), 4, 1)

    _launch_bound(plan, index, hopper.single_pass_tile, grid, args, layout, configure, q.device, stream)
