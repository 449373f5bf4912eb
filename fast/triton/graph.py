"""Plans for CUDA graph replay: launches, grids and buffers fixed by the tensors' shapes.

A ``Plan`` holds one step's work lists, and its launches' grids are that step's: a CUDA graph
captured around a call with it replays that step only. A serving engine captures its decode
step once per batch size and replays it every step, with new lengths and prefix ids in the
same tensors; every step must then make the same launches (kernels, compile-time constants,
grids) over the same memory. A ``GraphPlan`` does:

* its launches are every launch a batch of its shapes can need (``graph_launches``): per prefix
  level, the prefix tiles of each height its requests' rows can fill; per own-tile height, the
  tiles that write states and those of the single-pass requests;
* each launch runs a program per item of the most it can have (``GraphLaunch.capacity``), its
  token and slot lists are ``total_q`` long, and the scratch holds the most slots
  (``slot_capacity``). The programs past the step's items, whose count they read from the
  device, exit (``partial_kernel``'s ``PADDED``, ``Launch.count``). A request whose rows fill
  the tallest tiles is single-pass at a step where it reads no prefix past level 0
  (``plan.single_pass_requests``), so in a batch of two levels or more it has room in both
  kinds of launch, and the single-pass launch is padded too; in a batch of at most one level
  it is single-pass at every step, and that launch, whose items the query counts fix, has no
  padding;
* where a request is single-pass at some step, its tokens have no states there, so the merge
  launch runs over a list of the step's tokens with states and reads their count
  (``Plan.merge_tokens``, ``Plan.merge_count``), in a grid of at most
  ``Config.merge_programs`` programs whose each folds every so many listed tokens;
* ``GraphPlan.update`` plans a step with ``plan_work``, as ``plan`` does but with every request
  that sees no prefix keeping its state and the merge (below), and copies each launch's count
  and lists into the same device memory on the current stream, so that a graph replayed after
  it reads them.

A row's bits are those of ``prepare``'s plan for the same batch: the lists hold the same items;
what differs changes no bit (every list is read, never computed: ``regular_items``; the states
are folded by the merge launch, not in the partial programs: ``merge_in_partials``; a request
that sees no prefix keeps its state and the merge: ``single_pass_requests``; a single-pass
launch of the tallest tiles compiles the prefix walk, which an item without a prefix does not
enter). ``tests`` compare both bit for bit.

Measured on an H200 (``tests/gpu/perf_graph_plan.py``, ``docs/benchmarks/graph_plan.json``,
2026-11-29), decode, one prefix of 8192, 128 own keys a request, graph replay: 1.01-1.26x the
time of a graph of each step's own plan: the lists read instead of computed, and at batch 128
with 4096-key tables mostly the programs past the count; in a batch of two levels, a step
whose tall requests are all single-pass 1.37x while its merge ran a program per token and head,
each finding no state (243.9 -> 212.0 us over the step's list, 2026-11-30). From sessions 19-20
(``fast/triton/NOTES.md``): a program past the count costs about 0.3 us of an SM's program
slot (one that ran a padding item's tile masked off, about 2.6; one that exited on an item of
no rows, an L2 read of its own item, 7-9 us more at batch 128 with 4096-key tables). Persistent launches (one wave of programs looping over the
step's items) were up to 12% slower at batch 32-128 (the own tile in a loop), and ones that
fetched their items from an atomic counter slower still; a fused merge saved nothing
measurable at the batches it fits.

Fixed by the first batch: every tensor's shape, dtype and device, ``cu_seqlens_q``'s values
(each request's query count: 1 at decode), ``causal`` and ``softmax_scale``. Free from step to
step, within those shapes: the own KV lengths (a paged request's up to its block table's
columns), the prefix lengths and the prefix ids.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Tuple

import numpy as np
import torch

from relaycore.types import AttentionState, PagedKV
from relaycore.validation import BatchMeta, call_arrays

from relaycore.fast.triton.backend import validate_for_triton
from relaycore.fast.triton.config import Config, default_config, max_chunks, single_pass, tile_height, wanted_chunks
from relaycore.fast.triton.kernels import NUM_ITEM_FIELDS
from relaycore.fast.triton.plan import (Launch, Plan, Work, check_int32, check_signature, fold_height,
                                        list_starts, pages_read, plan_work, query_layout, stamp_metadata,
                                        staged, tensor_signature, uploaded)


class Bounds(NamedTuple):
    """What the tensors' shapes bound in every batch a ``GraphPlan`` runs.

    Attributes:
        own_len: int64 ``[B]``: each request's most own keys (paged: its block table's columns
            times the page size; ragged: the own rows less the other requests' queries, each
            request's keys ending with its queries).
        level_rows: per prefix level, its rows (``k.shape[0]``: every prefix's keys together).
        level_prefixes: per prefix level, its prefixes (``cu_seqlens.shape[0] - 1``).
    """

    own_len: np.ndarray
    level_rows: Tuple[int, ...]
    level_prefixes: Tuple[int, ...]

    @staticmethod
    def of(meta: BatchMeta, kv, prefixes) -> "Bounds":
        if isinstance(kv, PagedKV):
            own = np.full(meta.batch, int(kv.block_table.shape[1]) * meta.block_size, dtype=np.int64)
        else:
            q_lens = meta.q_lens.astype(np.int64)
            own = int(kv.k.shape[0]) - (meta.total_q - q_lens)
        return Bounds(own, tuple(int(level.k.shape[0]) for level in prefixes),
                      tuple(int(level.cu_seqlens.shape[0]) - 1 for level in prefixes))


class GraphLaunch(NamedTuple):
    """One launch of a ``GraphPlan``: the ``Launch`` fields that fix its compiled kernel, the
    most items it can have, and whether a step can have fewer (``padded``: its programs read
    the step's count, ``Launch.count``, and those past it exit)."""

    level: int
    block_m: int
    single_pass: bool
    reads_prefix: bool
    capacity: int
    padded: bool


def graph_launches(meta: BatchMeta, bounds: Bounds, config: Config) -> Tuple[GraphLaunch, ...]:
    """Every launch ``plan_work`` can make for a batch with ``meta``'s query counts within
    ``bounds``, with the most items each can have; launches that can have none are left out.

    Own tiles: a request's rows fix its tile height, and whether it can be single-pass
    (``single_pass``: rows that fill the tallest tile, one chunk per segment; a graph plan gives
    the requests that see no prefix the state and the merge,
    ``plan.single_pass_requests(unshared=False)``). Such a request is single-pass at every
    step in a batch of at most one prefix level; with more, at the steps where it reads no
    prefix past level 0, and it needs room among the split requests too. Its items: its tiles
    times its most own chunks (``max_chunks``), or its tiles alone single-pass (one chunk).

    Prefix tiles of level ``l``: the sharers of a prefix with the same chunk size are one group
    (``plan._prefix_groups``), whose rows ``r_g`` fix the tile height ``h`` (``tile_height``); its
    items are ``ceil(r_g / h)`` tiles times its chunks. With ``R`` rows in all (requests that
    are not single-pass at every step), ``G`` groups at most (requests, and prefixes times chunk
    sizes) and ``C`` the most chunks of one prefix, the items of height ``h`` are at most both

    * ``sum_g ceil(r_g / h) * C``, where ``sum_g ceil(r_g / h) <= (R + G_h (h - 1)) // h``,
      ``G_h <= R // (h // 2 + 1)`` above the shortest height (a group of height ``h`` has more
      than ``h / 2`` rows) and a group has one tile below ``block_m``, and
    * the most tiles of one group (``ceil(R / h)`` at ``block_m``, else 1) times
      ``sum_g chunks_g``, which is at most the chunk sizes times ``level_rows // min_chunk + G``
      (``ceil(len_p / min_chunk)`` summed over prefixes).
    """
    rows = meta.q_lens.astype(np.int64) * meta.group_size
    active = rows > 0
    tall = single_pass_at_some_step(meta, config)
    split = active & ~always_single_pass(meta, config)  # split at some step
    launches = []

    for level, (level_rows, num_prefixes) in enumerate(zip(bounds.level_rows, bounds.level_prefixes)):
        total = int(rows[split].sum())
        if not total or not level_rows or not num_prefixes:
            continue
        wanted = np.unique(wanted_chunks(rows[split], config))  # a prefix's chunk sizes among its sharers
        most_chunks = int(max_chunks(level_rows, rows[split], config).max())
        groups = min(int(split.sum()), num_prefixes * wanted.size)
        chunk_sum = wanted.size * (level_rows // config.min_chunk + groups)
        height, tallest = config.prefix_block_m, int(tile_height(total, config, prefix=True))
        while height <= tallest:
            groups_h = groups if height == config.prefix_block_m else min(groups, total // (height // 2 + 1))
            most_tiles = -(-total // height) if height == config.block_m else 1  # of one group
            tiles = min(groups_h * most_tiles, (total + groups_h * (height - 1)) // height)
            capacity = min(tiles * most_chunks, most_tiles * chunk_sum)
            if capacity:
                launches.append(GraphLaunch(level, height, False, False, capacity, True))
            height *= 2

    own_height = tile_height(rows, config, prefix=False)
    tiles = -(-rows // own_height)
    own_chunks = max_chunks(bounds.own_len, rows, config)
    for height in np.unique(own_height[active])[::-1]:
        height = int(height)
        at = active & (own_height == height)
        capacity = int((tiles * own_chunks)[at & split].sum())
        if capacity:
            launches.append(GraphLaunch(-1, height, False, False, capacity, True))
        capacity = int(tiles[at & tall].sum())
        if capacity:
            launches.append(GraphLaunch(-1, height, True, meta.num_levels >= 1, capacity, meta.num_levels > 1))
    return tuple(launches)


def single_pass_at_some_step(meta: BatchMeta, config: Config) -> np.ndarray:
    """bool ``[B]``: the requests of a graph plan that may be single-pass at a step, and have no
    slots there: those with rows that fill the tallest tiles (``config.single_pass``)."""
    rows = meta.q_lens.astype(np.int64) * meta.group_size
    return np.asarray(single_pass(rows, config), dtype=bool) & (rows > 0)


def always_single_pass(meta: BatchMeta, config: Config) -> np.ndarray:
    """bool ``[B]``: the requests of a graph plan that are single-pass at every step, which have
    no slots: those whose rows fill the tallest tiles (``config.single_pass``), in a batch of
    at most one prefix level (``graph_launches``)."""
    return single_pass_at_some_step(meta, config) & (meta.num_levels <= 1)


def slot_capacity(meta: BatchMeta, bounds: Bounds, config: Config) -> int:
    """The most scratch slots a batch within ``bounds`` has: each query token of a request that
    is not single-pass at every step (``always_single_pass``) owns at most ``max_chunks`` slots
    per segment it sees."""
    rows = meta.q_lens.astype(np.int64) * meta.group_size
    always = always_single_pass(meta, config)
    per_token = max_chunks(bounds.own_len, rows, config)
    for level_rows, num_prefixes in zip(bounds.level_rows, bounds.level_prefixes):
        if num_prefixes:
            per_token = per_token + max_chunks(level_rows, rows, config)
    return int((meta.q_lens.astype(np.int64) * np.where(always, 0, per_token)).sum())


class GraphPlan:
    """A plan whose launches, grids and device memory are the same at every step, so that a
    CUDA graph captured around calls with it replays any later step after ``update``
    (module doc; ``docs/guide/serving.md``).

    Made by ``relaycore.fast.triton.prepare_graph`` from a first batch. Pass it as
    ``relay_attention(..., plan=)`` like a ``Plan``; ``plan`` is the ``Plan`` it runs, whose
    lists are views of one device buffer that ``update`` refills. Keep it alive as long as any
    graph captured with it: every replay reads that buffer.

    Attributes:
        plan: the ``Plan`` of the last ``update``'s batch, over the fixed buffers.
        launches: the ``GraphLaunch`` of each of ``plan.launches``.
        bounds: the ``Bounds`` of its shapes.
    """

    def __init__(self, meta: BatchMeta, bounds: Bounds, config: Config, signature, device: torch.device):
        """Launches and buffers for batches like ``meta``'s within ``bounds``; its lists hold no
        batch until ``update``."""
        self.bounds = bounds
        self.launches = graph_launches(meta, bounds, config)
        self._q_lens = meta.q_lens
        self._metadata_dtypes = None  # of the first batch's metadata on the host (``_refill``)
        self._config = config
        self._queries = query_layout(meta, config)  # the same at every step: ``_refill`` checks the query counts
        total_q = meta.total_q
        # the tokens that can have slots (those of a request split at some step); where a
        # request is single-pass at some step, the merge launch runs over a list of the step's
        # tokens with slots and its count (``plan.merge_tokens``, ``plan.merge_count``), with
        # room for these
        self._mergeable = ~always_single_pass(meta, config)[self._queries.token_request]
        self._listed = bool(single_pass_at_some_step(meta, config).any() and self._mergeable.any())
        # one int32 buffer of regions (``list_starts``): slot_offsets, each launch's item count
        # (and the merge launch's last, where it has a list), per launch its items, tokens and
        # slots (regions 2 + 3 i, 3 + 3 i, 4 + 3 i), the merge launch's tokens where it has a
        # list, and last the copy of a block table given on the host
        num_launches = len(self.launches)
        sizes = [total_q + 1, num_launches + self._listed]
        for launch in self.launches:
            sizes += [launch.capacity * NUM_ITEM_FIELDS.value, total_q, total_q]
        if self._listed:
            sizes.append(int(self._mergeable.sum()))
        table = meta.host_block_table
        if table is not None:
            sizes.append(table.size)
        self._starts, self._sizes = list_starts(sizes), sizes
        # each launch's index by what ``fill`` looks a step's launches up by
        self._index = {(launch.level, launch.block_m, launch.single_pass): i for i, launch in enumerate(self.launches)}
        # a normal tensor even when made under ``torch.inference_mode``: ``update`` writes into it
        # in place, which an inference tensor refuses outside the mode (an engine may prepare
        # under it and update without it, in another thread: the mode is per thread)
        with torch.inference_mode(False):
            self._device = torch.zeros(self._starts[-1], dtype=torch.int32, device=device)
            views = [self._device[self._region(r)] for r in range(len(sizes))]
        self.plan = Plan(
            total_q=total_q, num_q_heads=meta.num_q_heads, num_kv_heads=meta.num_kv_heads, head_dim=meta.head_dim,
            dtype=meta.dtype, paged=meta.paged, causal=meta.causal, softmax_scale=meta.softmax_scale, config=config,
            num_slots=slot_capacity(meta, bounds, config), slot_offsets=views[0],
            launches=tuple(
                Launch(level=launch.level, block_m=launch.block_m, single_pass=launch.single_pass,
                       reads_prefix=launch.reads_prefix, fold_rows=fold_height(launch.block_m, launch.block_m),
                       regular=(), items=views[2 + 3 * i].view(launch.capacity, NUM_ITEM_FIELDS.value),
                       tokens=views[3 + 3 * i], slots=views[4 + 3 * i],
                       count=views[1][i : i + 1] if launch.padded else None)
                for i, launch in enumerate(self.launches)),
            fused_merge=False, arrivals=torch.zeros((0,), dtype=torch.int32, device=device), relay=True,
            device=str(device), num_levels=meta.num_levels,
            block_table=None if table is None else views[-1].view(table.shape),
            merge_tokens=views[2 + 3 * num_launches] if self._listed else None,
            merge_count=views[1][num_launches:] if self._listed else None,
            signature=signature)

    def _region(self, r: int) -> slice:
        """Region ``r`` of the buffer, without its alignment padding."""
        return slice(self._starts[r], self._starts[r] + self._sizes[r])

    def update(self, q, cu_seqlens_q, kv, prefixes=(), *, causal: bool = True, softmax_scale=None) -> None:
        """Plan a step's batch into the fixed buffers, for the calls (and graph replays) after it.

        Validates the batch (reading its metadata to the host, as ``prepare``: a synchronization
        unless it is on the host already), plans it and copies its work lists (and a block
        table given on the host) to the device in one copy on the current stream that does not
        synchronize: a graph replayed on that stream after this call reads them, one replayed
        before does not. Every layer of the step then runs with
        this plan, as with ``prepare``'s.

        Args:
            q, cu_seqlens_q, kv, prefixes, causal, softmax_scale: as ``relaycore.relay_attention``,
                in tensors of the shapes, dtypes and devices of the first batch, with its query
                counts.

        Raises:
            TypeError, ValueError: bad input, or a batch these buffers were not made for
                (another shape, dtype or device, other query counts, ``causal`` or
                ``softmax_scale``), naming the argument.
        """
        meta = validate_for_triton(q, cu_seqlens_q, kv, prefixes, causal=causal, softmax_scale=softmax_scale)
        prefixes = tuple(prefixes)
        self._refill(meta, call_arrays(q, cu_seqlens_q, kv, prefixes),
                     stamp_metadata(cu_seqlens_q, kv, prefixes, block_table=meta.host_block_table is not None))

    def _refill(self, meta: BatchMeta, tensors, stamps) -> None:
        plan = self.plan
        if meta.paged != plan.paged:
            raise ValueError(f"kv: expected {'PagedKV' if plan.paged else 'RaggedKV'} (the graph plan's), got "
                             f"{'PagedKV' if meta.paged else 'RaggedKV'}")
        if len(tensors) != len(plan.signature):
            raise ValueError(f"prefixes: expected {plan.num_levels} levels (the graph plan's), got {meta.num_levels}")
        check_signature(plan.signature, tensors, "the graph plan's")
        # a NumPy array's dtype, which the signature leaves out (``tensor_signature``)
        dtypes = tuple(None if stamp.values is None else stamp.values.dtype for stamp in stamps)
        self._metadata_dtypes = dtypes if self._metadata_dtypes is None else self._metadata_dtypes
        for stamp, want, got in zip(stamps, self._metadata_dtypes, dtypes):
            if got != want:
                raise TypeError(f"{stamp.name}: expected dtype {want} (the graph plan's), got {got}")
        if not np.array_equal(meta.q_lens, self._q_lens):  # the shapes fix the batch size
            b = int(np.argmax(meta.q_lens != self._q_lens))
            raise ValueError(f"cu_seqlens_q: expected the graph plan's query counts, got q_len {int(meta.q_lens[b])} "
                             f"for request {b} where the plan has {int(self._q_lens[b])}; a graph replays "
                             f"one batch shape: prepare a graph plan per query count")
        if meta.causal != plan.causal:
            raise ValueError(f"causal: expected {plan.causal} (the graph plan's), got {meta.causal}")
        if meta.softmax_scale != plan.softmax_scale:
            raise ValueError(f"softmax_scale: expected the graph plan's {plan.softmax_scale}, got {meta.softmax_scale}")
        # relay grouping is what bounds a level's groups by its prefixes (``graph_launches``)
        work = plan_work(meta, self._config, relay=True, unshared_single_pass=False, queries=self._queries)
        host = self.fill(work, meta.host_block_table)
        self._device.copy_(staged(host, self._device.device), non_blocking=True)
        self.plan = dataclasses.replace(plan, stamps=stamps, ready=uploaded(self._device.device),
                                        pages_read=pages_read(meta, self._device.device))

    def fill(self, work: Work, block_table: np.ndarray | None = None) -> np.ndarray:
        """int32: the contents of the device buffer for ``work``: each launch's item count, and
        its items and lists followed by zeros up to their capacity; the merge launch's tokens
        with slots and their count, where it has a list; and ``block_table``, int64 ``[B,
        max_blocks]``, the values of a block table given on the host
        (``BatchMeta.host_block_table``), where the plan holds its copy.

        Raises:
            ValueError: work past a capacity (a bound of ``graph_launches`` or ``slot_capacity``
                that does not hold), an unpadded launch short of its items, or slots for a token
                the merge launch leaves out (``always_single_pass``): a bug, never the caller's
                input; or an offset past int32 (``check_int32``).
        """
        if work.num_slots > self.plan.num_slots:
            raise ValueError(f"graph plan: {work.num_slots} slots, past the capacity {self.plan.num_slots}")
        if (np.diff(work.slot_offsets) > 0)[~self._mergeable].any():
            raise ValueError("graph plan: a token of a request single-pass at every step has slots")
        writes = {0: work.slot_offsets}  # the values of each region written, by region; the rest is zeros
        counts = np.zeros(len(self.launches) + self._listed, dtype=np.int64)  # each launch's item count
        if self._listed:  # within its room: the tokens with slots are mergeable ones (checked above)
            listed = np.flatnonzero(np.diff(work.slot_offsets) > 0)
            writes[2 + 3 * len(self.launches)], counts[-1] = listed, listed.size
        for w in work.launches:
            i = self._index.get((w.level, w.block_m, w.single_pass))
            if i is None or w.items.shape[0] > self.launches[i].capacity or (w.reads_prefix and
                                                                                not self.launches[i].reads_prefix):
                raise ValueError(f"graph plan: a launch (level {w.level}, tiles of {w.block_m} rows, single pass "
                                 f"{w.single_pass}, {w.items.shape[0]} items) past its launches {self.launches}")
            counts[i] = w.items.shape[0]
            for r, values in zip((2, 3, 4), (w.items.reshape(-1), w.tokens, w.slots)):
                if values.size > self._sizes[r + 3 * i]:  # a launch lists a token at most once
                    raise ValueError(f"graph plan: {values.size} list entries past {self._sizes[r + 3 * i]}")
                writes[r + 3 * i] = values
        short = [x for x, count in zip(self.launches, counts) if not x.padded and count < x.capacity]
        if short:  # a launch without a count runs every item of its grid
            raise ValueError(f"graph plan: unpadded launches short of their items, {short}: {counts.tolist()} items")
        writes[1] = counts
        if block_table is not None:
            writes[len(self._sizes) - 1] = block_table.reshape(-1)
        # the range check of every value written at once, the padding left out: its zeros change
        # neither bound, since slot_offsets starts at 0 (and the error names the same maximum)
        check_int32(np.concatenate(list(writes.values())))
        host = np.zeros(self._starts[-1], dtype=np.int32)
        for r, values in writes.items():
            host[self._starts[r] : self._starts[r] + values.size] = values  # cast to int32 in the copy
        return host

    @property
    def scratch_bytes(self) -> int:
        """Device memory a call allocates for the states at this capacity (fp32 ``out [slots,
        Hq, D]`` and ``lse2 [slots, Hq]``), besides its result."""
        plan = self.plan
        return plan.num_slots * plan.num_q_heads * (plan.head_dim + 1) * 4

    def run(self, q, cu_seqlens_q, kv, prefixes=(), *, causal: bool = True, softmax_scale=None, out=None,
            lse=None) -> AttentionState:
        """``Plan.run`` of ``plan`` (what ``relay_attention(..., plan=)`` calls)."""
        return self.plan.run(q, cu_seqlens_q, kv, prefixes, causal=causal, softmax_scale=softmax_scale, out=out,
                             lse=lse)

    def __repr__(self) -> str:
        items = ", ".join(f"{launch.capacity} x {launch.block_m}-row tiles of "
                          f"{'the own KV' if launch.level < 0 else f'level {launch.level}'}"
                          f"{' single-pass' if launch.single_pass else ''}" for launch in self.launches)
        return (f"GraphPlan(total_q={self.plan.total_q}, launches=[{items}], slots={self.plan.num_slots} "
                f"({self.scratch_bytes} bytes a call), {self._device.numel() * 4} bytes of lists)")


def prepare_graph(q, cu_seqlens_q, kv, prefixes=(), *, causal: bool = True, softmax_scale=None,
                  config: Config | None = None) -> GraphPlan:
    """A ``GraphPlan`` for batches with the shapes and query counts of this one, planned for
    this one (``GraphPlan.update`` plans the next).

    Args:
        q, cu_seqlens_q, kv, prefixes, causal, softmax_scale: as ``relaycore.relay_attention``.
            Their shapes fix the capacities: a paged request's block table columns bound its
            own KV, each level's rows and ``cu_seqlens`` its prefixes.
        config: launch configuration; default ``default_config(head_dim, dtype, num_kv_heads)``.

    Raises:
        TypeError, ValueError: bad input, or a batch these kernels cannot run (the reason).
    """
    meta = validate_for_triton(q, cu_seqlens_q, kv, prefixes, causal=causal, softmax_scale=softmax_scale)
    prefixes = tuple(prefixes)
    config = default_config(meta.head_dim, meta.dtype, meta.num_kv_heads) if config is None else config
    signature = tensor_signature(q, cu_seqlens_q, kv, prefixes)
    graph = GraphPlan(meta, Bounds.of(meta, kv, prefixes), config, signature, torch.device(meta.device))
    graph._refill(meta, call_arrays(q, cu_seqlens_q, kv, prefixes),
                  stamp_metadata(cu_seqlens_q, kv, prefixes, block_table=meta.host_block_table is not None))
    return graph
