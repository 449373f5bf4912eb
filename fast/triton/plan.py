"""Host-side planning: work lists and scratch layout, computed once from the batch metadata.

A plan depends only on the lengths and ids of a batch (``relaycore.validation.BatchMeta``),
not on any value of q or KV, so a serving engine plans once per step and runs every layer
with it: ``run_planned`` does no host synchronization and no planning (its host work is the
launches and, where the caller gives result buffers, their check).

The scratch layout
    Every query token owns a run of *slots*, one per chunk of each KV segment it sees, in a
    fixed order: the chunks of its prefix at level 0, at level 1, ..., then the chunks of its
    own KV. A slot holds the chunk's state (fp32 ``out [Hq, D]``, ``lse2 [Hq]``); the merge
    kernel folds a token's slots in that order. A segment of ``L`` keys is cut every
    ``chunk_size(L)`` keys counted from its first key, so a token's slots, and what each
    holds, depend only on its own request: the batch around it changes nothing.

The work lists
    One partial-kernel launch per KV source (each prefix level, then the own KV). An item is a
    tile of up to ``block_m`` rows over one chunk. The rows of a prefix tile are the query
    tokens (x query heads of a KV group) of the requests that share the prefix: that is the
    relay split, which reads each prefix chunk once per tile instead of once per request.
    Tiles of one prefix chunk are adjacent in the list, so programs that run together share the
    chunk in L2. An item whose tokens are consecutive (one request's; every request's, when
    all share the prefix) names its first token, and the kernel computes its rows' tokens
    instead of reading them from the list: one dependent read less before the first product.
    A launch lists the items that read the most keys first (``longest_first``), so that the
    programs the GPU starts last, which decide when the launch ends, are short.

Single-pass requests
    A request whose rows fill the tallest tiles and whose segments are one chunk each
    (``config.single_pass``: an append request) gains nothing from sharing prefix tiles, so
    where it reads no prefix past level 0 it owns no slots: its own tiles (their own launch)
    walk its prefix, then its own KV, in one running state and write its result. Both tests
    are of the request alone, so its bits are the same in any batch. The merge
    kernel leaves its tokens alone. So does a decode request that sees no prefix and whose own
    KV is one chunk (a short context without a shared prefix): the merge would return its one
    state unchanged, so its own tiles write the result at once.
"""

from __future__ import annotations

import functools
import weakref
from dataclasses import dataclass, field
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch

from relaycore.types import AttentionState, PagedKV, PrefixLevel, RaggedKV
from relaycore.validation import (BatchMeta, call_array_names, call_arrays, check_dense, check_prefix_levels, largest,
                                  needs_grad, resolve_scale, smallest)

from relaycore.fast.triton.config import Config, chunk_size, default_config, single_pass, tile_height, wanted_chunks
from relaycore.fast.triton.kernels import FOLD_DEPTH, FOLD_STATES, ITEM_FIELDS, NUM_ITEM_FIELDS


@dataclass(frozen=True)
class Launch:
    """The work of one partial-kernel launch.

    Attributes:
        level: the prefix level it reads, or ``-1`` for the requests' own KV.
        block_m: the tile height of its items.
        single_pass: its items are single-pass requests' own tiles (``single_pass_requests``):
            each walks the item's prefix (level 0) then the own KV, and writes the result.
        reads_prefix: some single-pass item has a prefix to walk (a launch whose items have
            none compiles no prefix walk, which holds registers and shared memory).
        fold_rows: the rows a program of the fused merge folds at once (``fold_height``).
        regular: ``regular_items`` of the items: the kernel computes each item from its
            program id and these, instead of reading the list; ``()``: it reads the list.
        items: int32 ``[num_items, NUM_ITEM_FIELDS]`` on the device (see ``kernels.ITEM_FIELDS``).
        tokens: int32 ``[n]`` on the device: the token lists the items index.
        slots: int32 ``[n]`` on the device: each listed token's slot for chunk 0 of the segment.
        count: int32 ``[1]`` on the device: the step's items, the first of ``items`` (a graph
            plan's launch, ``relaycore.fast.triton.graph``, whose grid is fixed at its capacity
            and whose items are not: the programs past them exit); ``None``: every item of
            ``items`` is the step's.
    """

    level: int
    block_m: int
    single_pass: bool
    reads_prefix: bool
    fold_rows: int
    regular: Tuple[int, ...]
    items: torch.Tensor
    tokens: torch.Tensor
    slots: torch.Tensor
    count: Optional[torch.Tensor] = None

    @property
    def num_items(self) -> int:
        return int(self.items.shape[0])


@dataclass(frozen=True)
class Plan:
    """Everything ``run_planned`` needs besides the tensors of q and KV.

    Attributes:
        total_q, num_q_heads, num_kv_heads, head_dim: shapes of the batch.
        dtype: q's dtype name.
        paged: whether the own KV is paged.
        causal: causal masking of the own KV.
        softmax_scale: the resolved scale.
        config: the launch configuration.
        num_slots: scratch slots in all.
        slot_offsets: int32 ``[total_q + 1]`` on the device.
        launches: one ``Launch`` per KV source that has work, levels first.
        fused_merge: whether the partial programs fold the states themselves
            (``merge_in_partials``) instead of a merge launch.
        arrivals: int32 ``[total_q, Hq]`` zeros on the device, the arrival counters of the
            fused merge (empty without it). The kernels count in them and leave them zero, so
            the calls of one plan must be ordered (one stream, or streams joined by events,
            as a model's layers are); two calls of one plan running at once would mix counts.
        relay: whether prefix rows are grouped across requests (``relay_grouping``).
        device: the device of the work lists.
        num_levels: prefix levels planned for.
        block_table: int32 ``[B, max_blocks]`` on the device: the plan's copy of a block table
            given on the host (``relaycore.validation.on_host``), which the kernels read in its
            place; ``None``: they read the call's ``kv.block_table``.
        merge_tokens: int32 ``[n]`` on the device: the tokens that can have slots, in order,
            which the merge launch folds (one program per token and head) where the others
            (single-pass requests') would leave most of its programs idle (``merge_tokens``);
            of a ``GraphPlan``, the step's tokens with slots followed by room
            (``merge_count``); ``None``: it runs a program per token and head of the batch, or
            the plan has no merge launch (``fused_merge``).
        merge_count: int32 ``[1]`` on the device: how many of ``merge_tokens``' entries hold
            this step's tokens with slots, the rest being room (a ``GraphPlan``'s list, whose
            merge launch has a fixed grid: ``merge_programs``); ``None``: all of them.
        ready: a ``torch.cuda.Event`` recorded after the copy of the lists to a GPU, on the
            stream current when they were made (``uploaded``): a call on another stream waits
            for it (``launch.run_eager``); ``None`` off a GPU, or past the op boundary of
            ``torch.compile``.
        signature: ``(argument name, shape, dtype, device)`` of every tensor of the call the
            plan was prepared for (``tensor_signature``); empty for a plan made from metadata
            alone, whose ``run`` then checks what the metadata fix (``known_shapes``).
        stamps: what ``run`` can check of the metadata values without a synchronization
            (``stamp_metadata``); empty for a plan made from metadata alone.
        known_shapes: ``(argument name, shape)`` of each tensor the kernels read, as the
            metadata fix it (``known_shapes``): what ``run`` checks of a plan without a
            ``signature``.
        pages_read: int64 ``[B]`` on the CPU, the block-table entries each request reads, on a
            plan for CPU tensors that reads the call's table: its calls check those entries are
            blocks of the cache (``launch.run_eager``, the op's calls included), since the
            interpreter would read any address; ``None`` elsewhere (on a GPU reading them would
            synchronize).
        bindings: each launch as the last call ran it (``launch.Binding``, by launch index),
            which the next call with arguments of the same layout (the next layer's) reruns
            without building its constexprs or looking its kernel up; empty until a call on a
            GPU, and in every copy (``dataclasses.replace``).
        scratch: the states' scratch of the calls on each stream (``launch._scratch``, by the
            stream's handle): fp32 ``out [num_slots, Hq, D]`` and ``lse2 [num_slots, Hq]``,
            ``num_slots * Hq * (D + 1) * 4`` bytes of device memory per stream, held as long as
            the plan; empty until a call, and in every copy.
    """

    total_q: int
    num_q_heads: int
    num_kv_heads: int
    head_dim: int
    dtype: str
    paged: bool
    causal: bool
    softmax_scale: float
    config: Config
    num_slots: int
    slot_offsets: torch.Tensor
    launches: Tuple[Launch, ...]
    fused_merge: bool
    arrivals: torch.Tensor
    relay: bool
    device: str
    num_levels: int
    block_table: Optional[torch.Tensor] = None
    merge_tokens: Optional[torch.Tensor] = None
    merge_count: Optional[torch.Tensor] = None
    ready: Optional[Any] = field(default=None, compare=False, repr=False)
    signature: Tuple[Tuple[str, tuple, Any, Any], ...] = ()
    stamps: Tuple["Stamp", ...] = field(default=(), compare=False, repr=False)
    known_shapes: Tuple[Tuple[str, Tuple[Any, ...]], ...] = field(default=(), compare=False, repr=False)
    pages_read: Optional[torch.Tensor] = field(default=None, compare=False, repr=False)
    bindings: Dict[int, Any] = field(default_factory=dict, init=False, compare=False, repr=False)
    scratch: Dict[Optional[int], Tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict, init=False,
                                                                          compare=False, repr=False)

    @property
    def group_size(self) -> int:
        return self.num_q_heads // self.num_kv_heads

    def run(self, q, cu_seqlens_q, kv, prefixes=(), *, causal: bool = True, softmax_scale=None, out=None,
            lse=None) -> AttentionState:
        """``run_planned`` after the checks that need no host synchronization (what
        ``relay_attention(..., plan=)`` calls): every tensor must have the shape, dtype and
        device it had when the plan was prepared (layers of a model share them; of a plan made
        from metadata alone, the KV tensors must have the shapes the metadata fix; on the CPU the
        block table's entries that the kernels read must be blocks of the cache), and
        ``causal`` and ``softmax_scale`` (``None`` meaning ``1/sqrt(D)``) must be the plan's;
        the defaults are ``relay_attention``'s. ``out``/``lse``: buffers for the result, as
        ``relay_attention``'s (``run_planned`` checks them).
        The metadata whose values the plan holds (``stamp_metadata``: the lengths and ids, and a
        block table given on the host) must hold the planned values: on the host (a NumPy
        array or a CPU tensor) they are compared, and so is a NumPy array's dtype (the
        signature holds a tensor's); a tensor on a GPU that the plan was prepared
        with and that was written in place since is refused (its version counter moved), and
        another one is trusted, since reading it would synchronize (``docs/guide/serving.md``).
        Under ``torch.compile`` the metadata, and where ``out``/``lse`` lie in memory, are not
        checked.

        Raises:
            TypeError, ValueError: an input that differs from what was planned, naming it.
        """
        from relaycore.fast.triton.launch import run_planned

        if not isinstance(kv, (RaggedKV, PagedKV)):
            raise TypeError(f"kv: expected relaycore.RaggedKV or relaycore.PagedKV, got {type(kv).__name__}")
        check_prefix_levels(prefixes)
        if not isinstance(causal, (bool, np.bool_)):
            raise TypeError(f"causal: expected a bool, got {type(causal).__name__}")
        if bool(causal) != self.causal:
            raise ValueError(f"causal: expected {self.causal} (the plan's), got {causal}")
        scale = resolve_scale(softmax_scale, self.head_dim)
        if scale != self.softmax_scale:
            raise ValueError(f"softmax_scale: expected the plan's {self.softmax_scale}, got {softmax_scale} (resolved to {scale})")
        want = (self.total_q, self.num_q_heads, self.head_dim)
        if not isinstance(q, torch.Tensor):
            raise TypeError(f"q: expected a torch tensor (the plan's), got {type(q).__name__}")
        if tuple(q.shape) != want:
            advice = f": {ANOTHER_BATCH}" if tuple(q.shape[1:]) == want[1:] else ""
            raise ValueError(f"q: expected shape {want} (the plan's), got {tuple(q.shape)}{advice}")
        if str(q.dtype).replace("torch.", "") != self.dtype:
            raise TypeError(f"q: expected dtype {self.dtype} (the plan's), got {str(q.dtype).replace('torch.', '')}")
        if str(q.device) != self.device:
            raise ValueError(f"q: expected device {self.device} (the plan's), got {q.device}")
        if isinstance(kv, PagedKV) != self.paged:
            raise ValueError(f"kv: expected {'PagedKV' if self.paged else 'RaggedKV'} (the plan's), got {type(kv).__name__}")
        if len(prefixes) != self.num_levels:
            raise ValueError(f"prefixes: expected {self.num_levels} levels (the plan's), got {len(prefixes)}")
        if self.signature:
            check_signature(self.signature, call_arrays(q, cu_seqlens_q, kv, prefixes), "the plan's")
        else:  # q's layout, which the signature holds
            check_dense("q", q)
            check_known_shapes(self.known_shapes, q, kv, prefixes, block_table=self.block_table is None)
        if needs_grad(q, kv, prefixes):
            raise ValueError("plan: expected a call without gradients (the Triton kernels have no backward), got an "
                             "input that requires grad in grad mode; use backend='torch', or torch.no_grad()")
        if self.stamps and not torch.compiler.is_compiling():
            check_metadata(self.stamps, cu_seqlens_q, kv, prefixes)
        return run_planned(self, q, kv, tuple(prefixes), out=out, lse=lse, cu_seqlens_q=cu_seqlens_q)


class Stamp(NamedTuple):
    """What ``Plan.run`` checks of one metadata array of the call a plan was prepared for.

    Attributes:
        name: the argument, as ``relay_attention`` names it.
        ref: a weak reference to the array.
        version: a tensor's version counter then (torch counts every in-place write); ``None``
            for a NumPy array and an inference tensor (``torch.inference_mode`` keeps no count:
            one on a GPU is trusted, as another tensor is).
        values: the values then where reading them costs no synchronization (a NumPy array, a
            CPU tensor); ``None`` on a GPU.
    """

    name: str
    ref: Any
    version: Optional[int]
    values: Optional[np.ndarray]


def host_values(x) -> Optional[np.ndarray]:
    """The values of a NumPy array or CPU tensor (a view); ``None`` for a tensor on a GPU."""
    if isinstance(x, np.ndarray):
        return x
    return x.resolve_neg().numpy() if x.is_cpu else None


def metadata_arrays(cu_seqlens_q, kv, prefixes, *, block_table: bool) -> List[Any]:
    """The metadata whose values a plan holds, in the order of ``metadata_names``: the lengths
    and the prefix ids, and with ``block_table`` a paged cache's block table (a plan holds it
    where it was given on the host, ``Plan.block_table``, and its stamp is of the whole array,
    entries past a request's last block included; else the kernels read it at run time, so
    only its shape is planned)."""
    arrays = [cu_seqlens_q, kv.kv_lens if isinstance(kv, PagedKV) else kv.cu_seqlens]
    for level in prefixes:
        arrays += (level.cu_seqlens, level.prefix_ids)
    if block_table and isinstance(kv, PagedKV):
        arrays.append(kv.block_table)
    return arrays


@functools.lru_cache(maxsize=None)
def metadata_names(paged: bool, num_levels: int, block_table: bool) -> Tuple[str, ...]:
    """The argument names of ``metadata_arrays``, as ``relay_attention`` names them."""
    names = ["cu_seqlens_q", "kv.kv_lens" if paged else "kv.cu_seqlens"]
    for i in range(num_levels):
        names += (f"prefixes[{i}].cu_seqlens", f"prefixes[{i}].prefix_ids")
    return tuple(names + ["kv.block_table"] * (block_table and paged))


def stamp_metadata(cu_seqlens_q, kv, prefixes, *, block_table: bool) -> Tuple[Stamp, ...]:
    """The ``Stamp`` of every metadata array of a call (``metadata_arrays``), taken when its
    plan is prepared; ``block_table``: the plan holds a copy of the block table."""
    def stamp(name, x):
        values = host_values(x)
        version = None if isinstance(x, np.ndarray) or x.is_inference() else x._version
        return Stamp(name, weakref.ref(x), version, None if values is None else values.copy())

    names = metadata_names(isinstance(kv, PagedKV), len(prefixes), block_table)
    return tuple(stamp(name, x) for name, x in zip(names, metadata_arrays(cu_seqlens_q, kv, prefixes,
                                                                          block_table=block_table)))


def check_metadata(stamps: Tuple[Stamp, ...], cu_seqlens_q, kv, prefixes) -> None:
    """Refuse metadata that no longer holds what its plan was prepared with, where that can be
    seen without a synchronization (``Plan.run``).

    Raises:
        TypeError: naming the argument: an array on the host whose dtype differs from the
            planned one.
        ValueError: naming the argument: an array on the host whose values differ from the
            planned ones, or the planned tensor on a GPU itself, written in place since.
    """
    advice = "prepare a new plan (or update a graph plan) when the lengths, ids or a block table on the host change"
    # the stamps are of the same arrays in the same order, the block table last where stamped
    for stamp, x in zip(stamps, metadata_arrays(cu_seqlens_q, kv, prefixes, block_table=True)):
        name = stamp.name
        got = host_values(x)
        if stamp.values is not None and got is not None:
            if got.dtype != stamp.values.dtype:
                raise TypeError(f"{name}: expected dtype {stamp.values.dtype} (the plan's), got {got.dtype}")
            if not _same_values(got, stamp.values):
                i = tuple(int(j) for j in np.argwhere(got != stamp.values)[0])  # the shapes are the plan's
                at = ", ".join(map(str, i))
                raise ValueError(f"{name}: expected the values the plan was prepared with, got {name}[{at}] = "
                                 f"{got[i]} where the plan has {stamp.values[i]}; {advice}")
        elif stamp.version is not None and stamp.ref() is x and x._version != stamp.version:
            raise ValueError(f"{name}: expected the values the plan was prepared with, got the same tensor written in "
                             f"place since (its version counter {stamp.version} -> {x._version}); {advice}")


def _same_values(got: np.ndarray, want: np.ndarray) -> bool:
    """``np.array_equal`` of two integer arrays of one dtype, by their bytes where that is the
    same and cheaper (the same shape, and short: a batch's lengths and ids)."""
    if got.shape == want.shape and got.size <= 4096:
        return got.tobytes() == want.tobytes()
    return bool(np.array_equal(got, want))


#: What a call with a plan for another batch is told to do.
ANOTHER_BATCH = ("a plan runs the batch it was prepared for: prepare one for this batch (a graph plan, one per batch "
                 "size, or pad the batch to its size)")


def check_signature(planned, tensors: Sequence[Any], whose: str) -> None:
    """Refuse a call whose tensors (``validation.call_arrays``) differ from the ``planned``
    ``tensor_signature``, saying what to do (``ANOTHER_BATCH``) where ``q`` or ``cu_seqlens_q``
    differs in its first axis alone (another batch's query tokens or requests).

    Raises:
        TypeError: naming the first tensor whose dtype (or kind: tensor, NumPy array) differs, or
            whose elements are not its values (``validation.check_dense``: sparse, masked).
        ValueError: naming the first tensor whose shape or device differs.
    """
    for entry, x in zip(planned, tensors):
        if (isinstance(x, torch.Tensor) and x.layout is torch.strided and x.shape == entry[1] and x.dtype == entry[2]
                and x.device == entry[3]):
            continue  # the common cases, without building the entry: a tensor, and a plain NumPy array
        if type(x) is np.ndarray and entry[2] == "ndarray" and x.shape == entry[1]:
            continue
        check_dense(entry[0], x)
        got = _entry(x)
        if entry[1:] != got:
            error = TypeError if got[1] != entry[2] else ValueError  # a dtype or kind, as validation's
            advice = f": {ANOTHER_BATCH}" if _other_batch(entry, got) else ""
            raise error(f"{entry[0]}: expected {_described(*entry[1:])} ({whose}), got {_described(*got)}{advice}")


def _other_batch(entry, got) -> bool:
    """Whether ``got`` (``_entry``) differs from the signature's ``entry`` as another batch's
    ``q`` or ``cu_seqlens_q`` does: in the first axis of its shape alone."""
    shape, want = tuple(got[0]), tuple(entry[1])
    return (entry[0] in ("q", "cu_seqlens_q") and got[1:] == entry[2:] and len(shape) == len(want) >= 1
            and shape[1:] == want[1:])


def _described(shape, dtype, device) -> str:
    if dtype == "ndarray":
        return f"a NumPy array of shape {tuple(shape)}"
    if not device:
        return f"a {dtype}"
    return f"shape {tuple(shape)}, dtype {str(dtype).replace('torch.', '')} on {device}"


def tensor_signature(q, cu_seqlens_q, kv, prefixes) -> Tuple[Tuple[str, tuple, Any, Any], ...]:
    """``(name, shape, dtype, device)`` of every tensor of a call (``validation.call_arrays``; torch's
    objects: comparing them costs a call less than comparing their names); a NumPy array gets
    its shape, ``"ndarray"`` and ``"numpy"`` (``torch.compile`` cannot read its dtype), anything
    else the shape ``()``, its type's name and ``""``."""
    names = call_array_names(type(kv)._fields, len(prefixes))
    return tuple((name, *_entry(x)) for name, x in zip(names, call_arrays(q, cu_seqlens_q, kv, prefixes)))


def _entry(x) -> Tuple[Any, Any, Any]:
    """``(shape, dtype, device)`` of one argument in ``tensor_signature``."""
    if isinstance(x, torch.Tensor):
        return x.shape, x.dtype, x.device
    if isinstance(x, np.ndarray):
        return x.shape, "ndarray", "numpy"
    return (), type(x).__name__, ""


class AtLeast(NamedTuple):
    """An axis of ``known_shapes`` that holds at least ``n``."""

    n: int


def known_shapes(meta: BatchMeta) -> Tuple[Tuple[str, Tuple[Any, ...]], ...]:
    """``Plan.known_shapes``: the shapes of the KV tensors (own, then each level's ``k``/``v``)
    and of a paged cache's block table that ``meta`` fixes: each axis an ``int``, an
    ``AtLeast`` (a block table's columns: those its longest request needs, or more) or
    ``None`` (a paged cache's block count: the block ids are read on the device)."""
    hkv, d = meta.num_kv_heads, meta.head_dim
    if meta.paged:
        cache = (None, meta.block_size, hkv, d)
        needed = largest(-(-meta.kv_lens // meta.block_size)) if meta.batch else 0
        shapes = [("kv.k_cache", cache), ("kv.v_cache", cache), ("kv.block_table", (meta.batch, AtLeast(needed)))]
    else:
        rows = int(meta.kv_lens.sum())
        shapes = [("kv.k", (rows, hkv, d)), ("kv.v", (rows, hkv, d))]
    for i, lens in enumerate(meta.prefix_lens):
        rows = int(lens.sum())
        shapes += [(f"prefixes[{i}].k", (rows, hkv, d)), (f"prefixes[{i}].v", (rows, hkv, d))]
    return tuple(shapes)


def check_known_shapes(known, q, kv, prefixes, *, block_table: bool) -> None:
    """Refuse KV tensors that are not what a plan made from metadata alone reads
    (``known_shapes``): torch tensors, dense, on q's device, of q's dtype (a block table: of an
    integer dtype) and of the known shape. ``block_table``: the kernels read the call's.

    Raises:
        TypeError: naming the tensor whose type, layout or dtype differs.
        ValueError: naming the tensor whose shape or device differs.
    """
    tensors = [*kv[:2], *([kv.block_table] if isinstance(kv, PagedKV) else []), *(x for p in prefixes for x in p[:2])]
    device, dtype = q.device, q.dtype
    for (name, shape), x in zip(known, tensors):
        integer = name == "kv.block_table"
        if integer and not block_table:
            continue
        if (isinstance(x, torch.Tensor) and x.layout is torch.strided and x.device == device
                and (x.dtype in _INDEX_DTYPES if integer else x.dtype is dtype)
                and (x.shape == shape or _fits(x.shape, shape))):
            continue  # the common case, without building a message
        _refuse_unknown(name, shape, x, q, integer)


#: The dtypes of a block table.
_INDEX_DTYPES = (torch.int32, torch.int64)


def _fits(got: Sequence[int], want: Tuple[Any, ...]) -> bool:
    """Whether a shape holds every axis of a ``known_shapes`` shape."""
    if len(got) != len(want):
        return False
    for m, n in zip(got, want):
        if n is not None and (m < n.n if isinstance(n, AtLeast) else m != n):
            return False
    return True


def _refuse_unknown(name: str, shape: Tuple[Any, ...], x: Any, q: torch.Tensor, integer: bool) -> None:
    """The error of ``check_known_shapes`` for the tensor ``name`` it did not accept."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch tensor (the plan's), got {type(x).__name__}")
    check_dense(name, x)
    if x.dtype not in _INDEX_DTYPES if integer else x.dtype != q.dtype:
        want = "int32 or int64" if integer else str(q.dtype).replace("torch.", "")
        raise TypeError(f"{name}: expected dtype {want} (the plan's), got {str(x.dtype).replace('torch.', '')}")
    if x.device != q.device:
        raise ValueError(f"{name}: expected device {q.device} (the plan's), got {x.device}")
    want = ", ".join("any" if n is None else f">= {n.n}" if isinstance(n, AtLeast) else str(n) for n in shape)
    raise ValueError(f"{name}: expected shape ({want}) (the plan's), got {tuple(x.shape)}")


def relay_grouping(meta: BatchMeta) -> bool:
    """Whether the rows of a prefix tile mix the queries of every request that shares it.

    The relay split and the per-request grouping (each request's prefix rows in tiles of their
    own) compute the same chunk states: a token's slots, their chunk boundaries and the tile
    configuration are those of its own request in both, and a row's bits do not depend on the
    other rows of its tile. They differ only in which rows share a tile. Grouping the sharers
    reads each prefix chunk once per ``block_m`` rows instead of once per request and launches
    no more programs, so it is never slower; where each prefix has one user (batch 1 included)
    the two groupings are the same list, i.e. the relay plan *is* the per-request plan (one
    program per (tile, chunk, KV head) walking the request's context chunk by chunk, its states
    folded by the merge kernel). So grouping is always on;
    this function is the one place that says so, and tests flip it through ``plan(relay=False)``
    to check that both forms give the same bits.
    """
    return True


def merge_in_partials(total_q: int, fold_steps: int, config: Config) -> bool:
    """Whether the partial programs fold each token's states (the fused merge) instead of a
    merge launch after them.

    Both fold a row with the same operations in the same order (``kernels.fold_slots`` over the
    tile's rows, ``kernels.merge_kernel`` over one row), so a row's bits are the same either way,
    and this choice may depend on the batch. The fused merge saves a dependent launch. It needs a program
    to reach every row, i.e. every token to have a slot: validation guarantees it (a request's
    own KV ends with its query tokens, so each token sees at least one own chunk), except for
    a single-pass request's tokens, which have none and are written by their own tiles.
    ``config.fused_merge_max_tokens`` and ``config.fused_merge_max_fold_steps`` bound the
    batches it is used for.

    Args:
        total_q: query tokens of the batch.
        fold_steps: the serial steps of the longest fold a program may run (``fold_steps``).
        config: the launch configuration.
    """
    return 0 < total_q <= config.fused_merge_max_tokens and fold_steps <= config.fused_merge_max_fold_steps


class Queries(NamedTuple):
    """What a batch's query counts fix in its plan under a configuration, whatever its lengths
    and ids (``query_layout``). A ``GraphPlan``, whose every step has the query counts of its
    first batch, computes them once and gives them to ``plan_work``.

    Attributes:
        q_lens: int64 ``[B]``: query tokens of each request.
        first_token: int64 ``[B]``: its first query token.
        rows: int64 ``[B]``: its rows per KV head (query tokens x the group's query heads).
        own_tile: int64 ``[B]``: the height of its own tiles (``tile_height``).
        wanted: int64 ``[B]``: the chunks it cuts a segment into at most (``wanted_chunks``).
        tall: bool ``[B]``: the requests whose rows fill the tallest tiles and whose segments
            are one chunk each (``config.single_pass``): single-pass where they read no prefix
            past level 0 (``single_pass_requests``).
        token_request: int64 ``[total_q]``: each query token's request.
    """

    q_lens: np.ndarray
    first_token: np.ndarray
    rows: np.ndarray
    own_tile: np.ndarray
    wanted: np.ndarray
    tall: np.ndarray
    token_request: np.ndarray


def query_layout(meta: BatchMeta, config: Config) -> Queries:
    """The ``Queries`` of ``meta``'s batch under ``config``, whose arrays are read-only: cached by
    the query counts, which the steps of a serving engine repeat (1 a request at decode)."""
    cu_seqlens_q = meta.cu_seqlens_q.astype(np.int64, copy=False).tobytes()
    return _query_layout(cu_seqlens_q, meta.group_size, config)


@functools.lru_cache(maxsize=64)
def _query_layout(cu_seqlens_q: bytes, group_size: int, config: Config) -> Queries:
    """``query_layout`` of a batch with these ``cu_seqlens_q`` (int64 ``[B + 1]``, as bytes) and
    query heads per KV head."""
    cu = np.frombuffer(cu_seqlens_q, dtype=np.int64)
    q_lens = cu[1:] - cu[:-1]
    rows = q_lens * group_size
    queries = Queries(q_lens, cu[:-1], rows, tile_height(rows, config, prefix=False), wanted_chunks(rows, config),
                      single_pass(rows, config), np.arange(q_lens.size).repeat(q_lens))
    for values in queries:
        values.flags.writeable = False
    return queries


class Segments(NamedTuple):
    """The KV segments of each request of a batch and how they are cut: functions of the request
    alone (``request_segments``), which ``plan_work`` and ``single_pass_requests`` share.

    Attributes:
        queries: what the requests' query counts fix (``query_layout``).
        lens: int64 ``[S, B]``: keys of each segment, its prefix at each level (0 where it names
            none), then its own KV.
        sizes: int64 ``[S, B]``: their ``chunk_size``.
    """

    queries: Queries
    lens: np.ndarray
    sizes: np.ndarray


def request_segments(meta: BatchMeta, config: Config, queries: Optional[Queries] = None) -> Segments:
    """The ``Segments`` of ``meta``'s requests under ``config``; ``queries``: ``query_layout(meta,
    config)``, where the caller has it."""
    q = query_layout(meta, config) if queries is None else queries
    lens = np.empty((meta.num_levels + 1, meta.batch), dtype=np.int64)
    for level, (prefix_lens, ids) in enumerate(zip(meta.prefix_lens, meta.prefix_ids)):
        lens[level] = np.where(ids >= 0, prefix_lens[np.maximum(ids, 0)] if len(prefix_lens) else 0, 0)
    lens[-1] = meta.kv_lens
    # one call for every segment: chunk_size is elementwise, rows broadcast over the levels
    return Segments(q, lens, chunk_size(lens, q.rows, config, wanted=q.wanted))


def single_pass_requests(meta: BatchMeta, config: Config, *, unshared: bool = True,
                         segments: Optional[Segments] = None) -> np.ndarray:
    """bool ``[B]``: the requests whose own tiles read their whole context in one pass and
    write their result, with no states and no merge. Functions of the request alone:

    * those whose rows fill the tallest tiles and whose segments are one chunk each
      (``config.single_pass``: append requests) and that read no prefix past level 0 (the
      single-pass tile walks level 0's prefix, then the own KV);
    * those that see no prefix, whose own KV is one chunk (``chunk_size``) and whose rows fit a
      tile shorter than ``block_m`` (``tile_height``: decode and short append requests). Their
      one state would leave the merge unchanged (its weight is ``exp2(0) = 1``, the sum it is
      divided by 1), so writing it at once gives the same bits, without the state's round trip
      or the merge launch (H200,
      128 own keys, no prefix, batch 8-128: 2.4-7.2 us less, ``fast/triton/NOTES.md``, session
      17). Taller ones keep the state and the merge: on sm_90 they would run the Gluon tile,
      not measured there yet. ``unshared=False`` leaves every such request the state and the
      merge (tests compare).

    ``segments``: ``request_segments(meta, config)``, where the caller has them.
    """
    seg = request_segments(meta, config) if segments is None else segments
    tall = seg.queries.tall
    if meta.num_levels > 1:  # keys past level 0: an empty prefix has none, as a request that names none
        tall = tall & ~seg.lens[1:-1].any(axis=0)
    if not unshared:
        return tall
    own = seg.lens[-1]
    no_prefix = seg.lens[:-1].sum(axis=0) == 0  # its context is its own KV
    short = seg.queries.own_tile < config.block_m
    return tall | (no_prefix & short & (own <= seg.sizes[-1]))


#: The shortest and the tallest slice of rows a fused fold folds at once: ``FOLD_DEPTH`` slots
#: deep, and one slot deep.
MIN_FOLD_ROWS = FOLD_STATES.value // FOLD_DEPTH.value
MAX_FOLD_ROWS = FOLD_STATES.value


def fold_height(rows: int, block_m: int) -> int:
    """Rows a program of the fused merge folds at once, in a launch of ``block_m``-row tiles whose
    items hold at most ``rows`` rows: the power of two from ``MIN_FOLD_ROWS`` that holds them, at
    most ``MAX_FOLD_ROWS`` and ``block_m``.

    A fold's slices run one after the other, and the states a slice has in flight are a fixed
    budget (``kernels.FOLD_STATES``): 16 rows read 4 slots at once, 32 rows 2, 64 rows 1. A
    decode request's rows (its group's query heads) fold in one 16-row slice, 4 slots deep; a
    prefix tile whose rows came from 8 requests at GQA 4 folds them in one slice, not 2
    (measured on an H200, ``fast/triton/NOTES.md``, session 6: 16 requests in one slice instead
    of 4, batch 16, Hkv 8, prefix 16384: 61.2 -> 49.3 us; since session 9 that batch takes the
    merge launch, 38.9 us, ``Config.fused_merge_max_fold_steps``). Which rows fold together changes
    none of their bits (``kernels.fold_slots``).
    """
    height = MIN_FOLD_ROWS
    while height < rows and height < MAX_FOLD_ROWS:
        height *= 2
    return min(height, block_m)


def fold_steps(rows: int, fold_rows: int, slots: int) -> int:
    """Serial steps of the fused fold of a tile of ``rows`` rows that folds ``fold_rows`` at a
    time, its rows owning up to ``slots`` slots each: its slices, one after the other, times the
    reads of a slice, ``FOLD_STATES // fold_rows`` slots at once (at most ``FOLD_DEPTH``). Each
    step waits one L2 round trip, and the program that folds is the call's last to finish.
    """
    depth = max(1, min(FOLD_DEPTH.value, FOLD_STATES.value // fold_rows))
    return -(-rows // fold_rows) * -(-slots // depth)


#: The fields ``regular_items`` gives, in order (the kernel's ``grid_*`` arguments).
REGULAR_FIELDS = ("rows", "tiles", "chunk", "length", "kv_base", "causal_shift", "tok_first", "prefix_start",
                  "prefix_len")

#: Each item field's column in a work list (``kernels.ITEM_FIELDS``).
COLUMN = {name: i for i, name in enumerate(ITEM_FIELDS)}
#: The fields an item takes from its group (the same in every item of one group), and their columns.
GROUP_FIELDS = ("kv_base", "causal_shift", "tok_first", "prefix_start", "prefix_len")
GROUP_COLUMNS = [COLUMN[name] for name in GROUP_FIELDS]


def regular_items(items: np.ndarray, block_m: int) -> Tuple[int, ...]:
    """``REGULAR_FIELDS`` of a launch whose items are those of one group of consecutive tokens
    in chunk-major order (item ``i``: tile ``i % tiles`` of ``block_m`` rows over chunk
    ``i // tiles``), or ``()`` for any other list.

    Such a launch (a batch of one request, or of requests that share one prefix, as decode
    batches do) needs no list: the kernel computes each item from its program id and these
    numbers. A program then issues its first key loads without waiting for a read of the list
    (an L2 miss when the batch starts cold). The items are checked against the list itself,
    in the order it has (``longest_first``), so both give the same items, hence the same bits.
    This is the definition; ``plan`` reads the same tuple from the groups the items were made
    of where they decide it (``_regular``: one group without the causal mask or of one tile,
    or several), and asks this function the rest.

    Args:
        items: int64 ``[num_items, NUM_ITEM_FIELDS]``, in launch order.
        block_m: the launch's tile height.
    """
    if items[:, COLUMN["tok_base"]].any():  # a later group's items (the computed ones index from token 0)
        return ()
    rows = int((items[:, COLUMN["row0"]] + items[:, COLUMN["num_rows"]]).max())
    tiles = -(-rows // block_m)
    if items.shape[0] % tiles or items[0, COLUMN["tok_first"]] < 0:
        return ()
    shared = items[0, GROUP_COLUMNS]
    if not (items[:, GROUP_COLUMNS] == shared).all():  # several groups
        return ()
    key_start, key_end = items[:, COLUMN["key_start"]], items[:, COLUMN["key_end"]]
    length = int(key_end.max())
    chunk = int(key_end[0] - key_start[0]) if items.shape[0] == tiles else int(key_start[tiles])
    regular = (rows, tiles, max(chunk, 1), length, *(int(v) for v in shared))
    # the items the kernel computes: item 0's group fields, and tile i % tiles of chunk i // tiles
    i = np.arange(items.shape[0])
    c, row0 = i // tiles, (i % tiles) * block_m
    expected = np.repeat(items[:1], items.shape[0], axis=0)
    expected[:, COLUMN["tok_base"]] = 0
    expected[:, COLUMN["row0"]] = row0
    expected[:, COLUMN["num_rows"]] = np.minimum(block_m, rows - row0)
    expected[:, COLUMN["key_start"]] = c * chunk
    expected[:, COLUMN["key_end"]] = np.minimum(c * chunk + chunk, length)
    expected[:, COLUMN["chunk"]] = c
    return regular if np.array_equal(expected, items) else ()


def longest_first(items: np.ndarray, group: int, causal: bool) -> np.ndarray:
    """A launch's items, those that read the most keys first (ties in plan order).

    The GPU starts a launch's programs in grid order as SMs free up, so the programs started
    last decide when the launch ends: the short ones go last. Which SM runs an item, and when,
    changes none of its bits.

    Args:
        items: int64 ``[num_items, NUM_ITEM_FIELDS]`` (``kernels.ITEM_FIELDS``).
        group: query heads per KV head (rows per token).
        causal: the items read causal own KV (their last row's token bounds the keys read).
    """
    stop = items[:, COLUMN["key_end"]]
    if causal:
        last_row = items[:, COLUMN["row0"]] + items[:, COLUMN["num_rows"]] - 1
        stop = np.minimum(stop, items[:, COLUMN["causal_shift"]] + last_row // group + 1)
    keys = np.maximum(stop - items[:, COLUMN["key_start"]], 0) + items[:, COLUMN["prefix_len"]]
    return items[(-keys).argsort(kind="stable")]


class _Groups(NamedTuple):
    """The row groups of one KV source, in plan order, one entry per group (int64 ``[G]``, bool
    for ``one_pass``): what its items read (``kernels.ITEM_FIELDS``), and how they are cut."""

    kv_base: np.ndarray  # the segment's first row (a prefix's, ragged own KV's) or its request (paged)
    seg_len: np.ndarray  # keys of the segment
    causal_shift: np.ndarray  # own KV: keys before the request's first query token
    prefix_start: np.ndarray  # single pass: the first row of the level-0 prefix it reads first
    prefix_len: np.ndarray  # single pass: that prefix's length (0: none)
    one_pass: np.ndarray  # single-pass requests' own tiles
    count: np.ndarray  # query tokens: its requests', in request order
    tok_first: np.ndarray  # its first token where its tokens are consecutive (the kernel skips the list), else -1
    chunk: np.ndarray  # keys per chunk (``chunk_size``): the same for every request of a group
    tile: np.ndarray  # rows per tile (``tile_height``)

    def take(self, index: np.ndarray) -> "_Groups":
        return _Groups(*(x[index] for x in self))


def _prefix_groups(ids: np.ndarray, lens: np.ndarray, user: np.ndarray, sizes: np.ndarray, relay: bool,
                   token_request: np.ndarray, group_size: int, config: Config):
    """The row groups of a prefix level: a prefix's users (single-pass requests aside) form one
    group per chunk size with ``relay`` (sharers with the same chunking read the prefix
    together), else one each. Groups go in the order of their prefixes, then of their chunk
    sizes (``relay``) or requests.

    Args:
        ids: int64 ``[B]``: each request's prefix at this level (``BatchMeta.prefix_ids``).
        lens: int64 ``[P]``: the level's prefix lengths (``BatchMeta.prefix_lens``).
        user: bool ``[B]``: the requests that read the level in its launches: a prefix, and not
            single-pass.
        sizes: int64 ``[B]``: each request's chunk size at this level (``Segments.sizes``).
        token_request: int64 ``[total_q]``: each query token's request.
        group_size: query heads per KV head.

    Returns:
        ``(groups, tokens, token_group)``: the ``_Groups``; int64 ``[n]``, the groups' tokens,
        group by group (the token lists their items index); int64 ``[n]``, each one's group.
    """
    users = user.nonzero()[0]
    if (relay and users.size and not np.count_nonzero(ids[users] != ids[users[0]])
            and not np.count_nonzero(sizes[users] != sizes[users[0]])):
        # one group (a decode batch's users of one prefix): what the sorts below come to when
        # every user has the same prefix and chunk size, the users and their tokens in order
        leaders, tokens = users[:1], user[token_request].nonzero()[0]
        token_group, count = np.zeros(tokens.size, dtype=np.int64), np.array([tokens.size], dtype=np.int64)
        consecutive = tokens.size and tokens[-1] - tokens[0] + 1 == tokens.size
        tok_first = np.array([tokens[0] if consecutive else -1], dtype=np.int64)
    else:
        leaders, tokens, token_group, count, tok_first = _sorted_groups(ids, sizes, users, relay, token_request,
                                                                        ids.size)
    prefixes = ids[leaders]
    zeros = np.zeros(leaders.size, dtype=np.int64)
    groups = _Groups((lens.cumsum() - lens)[prefixes], lens[prefixes], zeros, zeros, zeros, zeros.astype(bool),
                     count, tok_first, sizes[leaders], tile_height(count * group_size, config, prefix=True))
    return groups, tokens, token_group


def _sorted_groups(ids: np.ndarray, sizes: np.ndarray, users: np.ndarray, relay: bool, token_request: np.ndarray,
                   batch: int):
    """``_prefix_groups``' groups of ``users`` (int64, in request order) by their prefix ``ids``
    (and chunk ``sizes`` with ``relay``): ``(leaders, tokens, token_group, count, tok_first)``,
    each group's first request, the groups' tokens group by group, each token's group, and
    each group's token count and first token (``_Groups``), int64 each."""
    new = np.ones(users.size, dtype=bool)  # in plan order: whether the request starts a group
    if relay:
        users = users[np.lexsort((sizes[users], ids[users]))]  # stable: ties keep the request order
        new[1:] = (ids[users[1:]] != ids[users[:-1]]) | (sizes[users[1:]] != sizes[users[:-1]])
    else:
        users = users[ids[users].argsort(kind="stable")]
    group_of = np.full(batch, -1, dtype=np.int64)
    group_of[users] = new.cumsum() - 1
    leaders = users[new]  # each group's first request

    # each group's tokens, in group order (a request's are consecutive, so each group's are in order)
    tok_group = group_of[token_request]
    tokens = (tok_group >= 0).nonzero()[0]
    tokens = tokens[tok_group[tokens].argsort(kind="stable")]
    token_group = tok_group[tokens]
    count = np.bincount(token_group, minlength=leaders.size)
    if tokens.size:
        ends = count.cumsum()  # a group without tokens gets some token below: it has no work
        first, last = tokens[np.minimum(ends - count, tokens.size - 1)], tokens[np.maximum(ends - 1, 0)]
        tok_first = np.where(last - first + 1 == count, first, -1)
    else:
        tok_first = np.full(leaders.size, -1, dtype=np.int64)
    return leaders, tokens, token_group, count, tok_first


def _own_groups(meta: BatchMeta, single: np.ndarray, seg: Segments):
    """The row groups of the requests' own KV: every request is a group of its own, whose tokens
    are consecutive. Returns ``(groups, tokens, token_group)`` as ``_prefix_groups``."""
    batch, queries = meta.batch, seg.queries
    q_lens, kv_lens = queries.q_lens, seg.lens[-1]
    kv_base = np.arange(batch, dtype=np.int64) if meta.paged else kv_lens.cumsum() - kv_lens
    prefix_start, prefix_len = np.zeros(batch, dtype=np.int64), np.zeros(batch, dtype=np.int64)
    if meta.num_levels and np.count_nonzero(single):  # a single-pass request reads its level-0 prefix first
        ids, lens = meta.prefix_ids[0], meta.prefix_lens[0].astype(np.int64, copy=False)
        reads = single & (ids >= 0)
        prefix_start[reads] = (lens.cumsum() - lens)[ids[reads]]
        prefix_len[reads] = lens[ids[reads]]
    groups = _Groups(kv_base, kv_lens, kv_lens - q_lens, prefix_start, prefix_len, single, q_lens,
                     queries.first_token, seg.sizes[-1], queries.own_tile)
    return groups, np.arange(meta.total_q), queries.token_request


def _tile_items(groups: _Groups, group_size: int, tile: int) -> np.ndarray:
    """int64 ``[num_items, NUM_ITEM_FIELDS]``: the items of one launch's ``groups``
    (``kernels.ITEM_FIELDS``), group by group, each group's chunks in order and each chunk's
    tiles of ``tile`` rows in order. The launch lists the groups' tokens one group after the
    other; ``group_size``: rows per token."""
    rows = groups.count * group_size
    tiles = -(-rows // tile)
    count = tiles * -(-groups.seg_len // groups.chunk)  # each group's items
    # a row of each group's fields, repeated for each of its items (cheaper than a gather per field)
    fields = np.zeros((rows.size, len(ITEM_FIELDS)), dtype=np.int64)
    fields[:, COLUMN["tok_base"]] = groups.count.cumsum() - groups.count
    for name in GROUP_FIELDS:
        fields[:, COLUMN[name]] = getattr(groups, name)
    items = fields.repeat(count, axis=0)
    local = np.arange(items.shape[0]) - (count.cumsum() - count).repeat(count)  # its index among its group's items
    tiles_of, chunk_of = tiles.repeat(count), groups.chunk.repeat(count)
    c = local // tiles_of
    row0 = local % tiles_of * tile
    key_start = c * chunk_of
    items[:, COLUMN["row0"]] = row0
    items[:, COLUMN["num_rows"]] = np.minimum(tile, rows.repeat(count) - row0)
    items[:, COLUMN["key_start"]] = key_start
    items[:, COLUMN["key_end"]] = np.minimum(groups.seg_len.repeat(count), key_start + chunk_of)
    items[:, COLUMN["chunk"]] = c
    return items


class LaunchWork(NamedTuple):
    """One launch of a planned batch on the host (``plan_work``): a ``Launch`` before its lists
    go to the device, without its ``regular`` (``_regular``).

    Attributes:
        level, block_m, single_pass, reads_prefix, fold_rows: as ``Launch``.
        items: int64 ``[num_items, NUM_ITEM_FIELDS]`` in launch order (``longest_first``).
        tokens: int64 ``[n]``: the token lists the items index.
            Both read-only at a prefix level (cached: ``_prefix_launches``).
        slots: int64 ``[n]``: each listed token's slot for chunk 0 of the segment.
    """

    level: int
    block_m: int
    single_pass: bool
    reads_prefix: bool
    fold_rows: int
    items: np.ndarray
    tokens: np.ndarray
    slots: np.ndarray


class Work(NamedTuple):
    """A batch's work on the host (``plan_work``).

    Attributes:
        slot_offsets: int64 ``[total_q + 1]``: token ``t`` owns slots
            ``slot_offsets[t] : slot_offsets[t + 1]``.
        launches: one ``LaunchWork`` per KV source and tile kind that has work, levels first.
        fold_steps: the serial steps of the longest fold a fused merge would run (``fold_steps``).
    """

    slot_offsets: np.ndarray
    launches: Tuple[LaunchWork, ...]
    fold_steps: int

    @property
    def num_slots(self) -> int:
        return int(self.slot_offsets[-1])


def plan_work(meta: BatchMeta, config: Config, *, relay: bool, unshared_single_pass: bool = True,
              queries: Optional[Queries] = None) -> Work:
    """The work lists of a batch, on the host: what ``plan`` sends to the device, and what a
    ``GraphPlan`` copies into its fixed buffers (``relaycore.fast.triton.graph``). A prefix
    level's items and tokens come from a cache where an earlier batch had the same prefixes,
    users and query counts (``_prefix_launches``: a serving engine's steps, whose own KV grows).

    Args:
        meta: from ``relaycore.validation.validate``.
        config: the launch configuration.
        relay: group prefix rows across requests (``relay_grouping``).
        unshared_single_pass: see ``plan``.
        queries: ``query_layout(meta, config)``, where the caller has it (a ``GraphPlan``).
    """
    return _plan_work(meta, config, relay, unshared_single_pass, queries, regular=False)[0]


def _plan_work(meta: BatchMeta, config: Config, relay: bool, unshared_single_pass: bool, queries: Optional[Queries],
               *, regular: bool) -> Tuple[Work, Tuple[Tuple[int, ...], ...]]:
    """``plan_work``, and with ``regular`` each launch's ``regular_items`` (``_regular``), else
    ``()`` each."""
    g = meta.group_size
    q = query_layout(meta, config) if queries is None else queries
    seg = request_segments(meta, config, q)
    single = single_pass_requests(meta, config, unshared=unshared_single_pass, segments=seg)
    # chunks and first slot of each segment, per request ([levels..., own] x B); a single-pass
    # request has no chunk states (its own tiles write its result)
    seg_chunks = np.where(single, 0, -(-seg.lens // seg.sizes))
    seg_ends = seg_chunks.cumsum(axis=0)
    seg_base = seg_ends - seg_chunks
    per_request = seg_ends[-1]  # [B]

    token_request = q.token_request
    slots_per_token = per_request[token_request]
    slot_offsets = np.zeros(slots_per_token.size + 1, dtype=np.int64)
    slots_per_token.cumsum(out=slot_offsets[1:])

    launches, regulars = [], []
    fold_tiles = []  # (tallest item's rows, fold height) of each launch that writes states
    for s, level in enumerate([*range(meta.num_levels), -1]):
        if level >= 0:
            listed = _prefix_launches(meta, level, single, seg.sizes[level], relay, q, config, regular)
        else:
            listed = _source_launches(*_own_groups(meta, single, seg), g, meta.causal, regular)
        for launch in listed:
            regulars.append(launch.regular)
            if not launch.single_pass:
                fold_tiles.append((launch.tallest, launch.fold_rows))
            launches.append(LaunchWork(
                level=level,
                block_m=launch.block_m,
                single_pass=launch.single_pass,
                reads_prefix=launch.reads_prefix,
                fold_rows=launch.fold_rows,
                items=launch.items,
                tokens=launch.tokens,
                slots=slot_offsets[launch.tokens] + seg_base[s][token_request[launch.tokens]],
            ))

    slots = largest(slots_per_token) if slots_per_token.size else 0
    steps = max((fold_steps(rows, height, slots) for rows, height in fold_tiles), default=0)
    return Work(slot_offsets=slot_offsets, launches=tuple(launches), fold_steps=steps), tuple(regulars)


class _Listed(NamedTuple):
    """A launch of one KV source before its slots (``_source_launches``): ``LaunchWork``'s
    fields but ``level`` and ``slots``, its ``_regular`` (or ``()``) and its tallest item's rows."""

    block_m: int
    single_pass: bool
    reads_prefix: bool
    fold_rows: int
    items: np.ndarray
    tokens: np.ndarray
    regular: Tuple[int, ...]
    tallest: int


def _source_launches(groups: _Groups, tokens: np.ndarray, token_group: np.ndarray, group_size: int, causal: bool,
                     regular: bool) -> Tuple[_Listed, ...]:
    """The launches of one KV source's row groups (``_prefix_groups``, ``_own_groups``: ``groups``,
    ``tokens``, ``token_group``), the tallest tiles first: one per tile height and kind (single
    pass or not) that has work, its items in launch order (``longest_first``). ``causal``: the
    source is read under the causal mask (the own KV of a causal call); ``regular``: each
    launch's ``_regular``, else ``()``."""
    g = group_size
    has_work = (groups.count > 0) & (groups.seg_len > 0)
    launch_of = np.where(has_work, 2 * groups.tile + groups.one_pass, -1)  # (tile height, single pass)
    # one launch of every group (a decode batch's levels), seen without sorting the kinds (every
    # group the first's kind, which has work)
    every = launch_of.size and launch_of[0] >= 0 and not np.count_nonzero(launch_of != launch_of[0])
    kinds = launch_of[:1] if every else np.unique(launch_of[has_work])
    launches = []
    for key in kinds[::-1]:  # the tallest tiles first
        height, one_pass = int(key) // 2, bool(key % 2)
        if every:
            members, listed = groups, tokens
        else:
            members, listed = groups.take((launch_of == key).nonzero()[0]), tokens[launch_of[token_group] == key]
        items = _tile_items(members, g, height)
        in_order = _in_plan_order(members, height, g, causal)
        if not in_order:
            items = longest_first(items, g, causal)
        tallest = largest(items[:, COLUMN["num_rows"]])
        launches.append(_Listed(
            block_m=height,
            single_pass=one_pass,
            reads_prefix=one_pass and bool(items[:, COLUMN["prefix_len"]].any()),
            fold_rows=fold_height(tallest, height),
            items=items,
            tokens=listed,
            regular=_regular(members, items, height, g, in_order) if regular else (),
            tallest=tallest,
        ))
    return tuple(launches)


def _prefix_launches(meta: BatchMeta, level: int, single: np.ndarray, sizes: np.ndarray, relay: bool,
                     queries: Queries, config: Config, regular: bool) -> Tuple[_Listed, ...]:
    """``_source_launches`` of prefix level ``level`` (``_prefix_groups``), cached by what decides
    them: the level's prefix ids and lengths, the requests that read it in its launches and
    their chunk sizes (``sizes``, int64 ``[B]``), the query counts, ``relay``, ``config`` and
    ``regular``. The steps of a serving engine repeat them while its requests keep their
    prefixes (the own KV grows). Their arrays are read-only."""
    ids = meta.prefix_ids[level].astype(np.int64, copy=False)
    user = (ids >= 0) & ~single
    return _cached_prefix_launches(ids.tobytes(), meta.prefix_lens[level].astype(np.int64, copy=False).tobytes(),
                                   user.tobytes(), sizes.tobytes(), queries.q_lens.tobytes(), meta.group_size, relay,
                                   config, regular)


@functools.lru_cache(maxsize=32)
def _cached_prefix_launches(ids: bytes, lens: bytes, user: bytes, sizes: bytes, q_lens: bytes, group_size: int,
                            relay: bool, config: Config, regular: bool) -> Tuple[_Listed, ...]:
    """``_prefix_launches`` of a level with these int64 ``ids [B]``, ``lens [P]``, ``sizes [B]``,
    ``q_lens [B]`` and bool ``user [B]`` (``_prefix_groups``), each as bytes."""
    q_lens = np.frombuffer(q_lens, dtype=np.int64)
    token_request = np.arange(q_lens.size).repeat(q_lens)
    groups = _prefix_groups(np.frombuffer(ids, dtype=np.int64), np.frombuffer(lens, dtype=np.int64),
                            np.frombuffer(user, dtype=bool), np.frombuffer(sizes, dtype=np.int64), relay,
                            token_request, group_size, config)
    launches = _source_launches(*groups, group_size, False, regular)
    for x in launches:
        x.items.flags.writeable = x.tokens.flags.writeable = False
    return launches


def _in_plan_order(groups: _Groups, block_m: int, group_size: int, causal: bool) -> bool:
    """Whether ``longest_first`` (with ``causal``) keeps the order in which ``_tile_items`` lists
    the items of ``groups`` in tiles of ``block_m`` rows: those of one group, without the causal
    mask or of one tile, so that the caller need not sort them. ``_tile_items`` lists the
    group's chunks in order, each chunk's tiles in order, and the keys an item of chunk ``c``
    reads, ``max(min(chunk, L - c * chunk), 0)`` (plus the group's prefix length, the same in
    each), do not grow along that order (ties keep it: the sort is stable). ``L`` is the
    segment's keys, or under the causal mask those before the tile's last row's stop: the same
    for every item where the group has one tile; several tiles of one chunk may differ."""
    return groups.count.size == 1 and not (causal and int(groups.count[0]) * group_size > block_m)


def _regular(groups: _Groups, items: np.ndarray, block_m: int, group_size: int, in_order: bool) -> Tuple[int, ...]:
    """``regular_items(items, block_m)`` of a launch's ``items``, made of ``groups`` as
    ``_plan_work`` makes them (``_tile_items``, then ``longest_first`` unless ``in_order``:
    ``_in_plan_order``), read from the groups where they decide it:

    * several groups: ``()``. Every group of a launch has tokens, so a later group's items index
      the token list past 0 (``tok_base``).
    * one group whose tokens are not consecutive (``tok_first < 0``): ``()``.
    * one group of consecutive tokens, in plan order: item ``i`` is tile ``i % tiles`` of chunk
      ``i // tiles``, the order ``regular_items`` asks for, with the fields it reads from the
      items: ``rows``, ``tiles``, the chunk size (the one chunk's keys where there is one
      chunk), the segment's keys and the group's fields.
    * one group that ``longest_first`` may have reordered (a causal launch of several tiles):
      ``regular_items`` checks the items.
    """
    if groups.count.size > 1 or groups.tok_first[0] < 0:
        return ()
    if not in_order:
        return regular_items(items, block_m)
    rows = int(groups.count[0]) * group_size
    tiles = -(-rows // block_m)
    length, chunk = int(groups.seg_len[0]), int(groups.chunk[0])
    if items.shape[0] == tiles:
        chunk = min(chunk, length)
    return (rows, tiles, max(chunk, 1), length, *(int(getattr(groups, name)[0]) for name in GROUP_FIELDS))


def pages_read(meta: BatchMeta, device: torch.device) -> Optional[torch.Tensor]:
    """``Plan.pages_read``: int64 ``[B]``, ``ceil(kv_len / block_size)``, where the plan is for
    CPU tensors and its kernels read the call's block table; else ``None``."""
    if meta.paged and meta.host_block_table is None and device.type == "cpu":
        return torch.from_numpy(-(-meta.kv_lens // meta.block_size))
    return None


def check_int32(a: np.ndarray) -> None:
    """Refuse values that the kernels' int32 work lists cannot hold.

    Args:
        a: int64 or int32 values (an int32 array is in range by its type: ``GraphPlan.fill``'s).

    Raises:
        ValueError: an offset past int32.
    """
    if a.dtype != np.int32 and a.size and (largest(a) >= 2**31 or smallest(a) < -(2**31)):
        raise ValueError(f"q, kv, prefixes: the batch needs offsets up to {largest(a)}, past the int32 "
                         f"work lists of the Triton kernels (at most {2**31 - 1}); split the batch")


def staged(values: np.ndarray, device: torch.device) -> torch.Tensor:
    """``values`` (int64 or int32, in the range of int32: ``check_int32``) in an int32 host tensor
    to copy to ``device`` with ``non_blocking=True``: pinned where ``device`` is a GPU, so that
    the copy is queued on the stream without a synchronization (torch keeps the pinned memory
    until the copy is done).

    Raises:
        ValueError: inside a CUDA graph capture, which would record the copy and repeat it at
            every replay from host memory that is no longer the plan's; or an offset past int32.
    """
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        raise ValueError("plan: expected a plan made before the CUDA graph capture (prepare, or a graph plan's "
                         "update, then pass plan=), got a call that plans inside it")
    check_int32(values)
    host = torch.empty(values.shape, dtype=torch.int32, pin_memory=device.type == "cuda")
    host.numpy()[...] = values  # cast to int32 in the copy
    return host


#: Where each list of a shared buffer starts, in int32s: 128 bytes, so that every list is as
#: aligned as a tensor of its own (Triton compiles a kernel per alignment of its pointers).
LIST_ALIGN = 32


def list_starts(sizes: Sequence[int]) -> List[int]:
    """``len(sizes) + 1`` ints: where lists of these sizes start in one buffer, each at a
    multiple of ``LIST_ALIGN``, and (last) the buffer's size (in Python: a few lists)."""
    starts = [0]
    for size in sizes:
        starts.append(starts[-1] + -(-int(size) // LIST_ALIGN) * LIST_ALIGN)
    return starts


def uploaded(device: torch.device) -> Optional[torch.cuda.Event]:
    """An event recorded on ``device``'s current stream after the copies queued there (a GPU's;
    ``None`` elsewhere): ``Plan.ready``."""
    if device.type != "cuda":
        return None
    event = torch.cuda.Event()
    event.record(torch.cuda.current_stream(device))
    return event


def upload(arrays: Sequence[np.ndarray], device: torch.device) -> List[torch.Tensor]:
    """int32 copies of ``arrays`` on ``device``, made by one copy on the current stream that
    does not synchronize (``staged``; ``uploaded`` marks its end): views of one buffer
    (``list_starts``), in the arrays' shapes."""
    starts = list_starts([a.size for a in arrays])
    flat = np.zeros(starts[-1], dtype=np.int64)
    for start, a in zip(starts, arrays):
        flat[start : start + a.size] = a.ravel()
    buffer = staged(flat, device).to(device, non_blocking=True)
    # a slice of the buffer is a list already; only the tables take their shape (a view less each)
    views = [buffer[start : start + a.size] for start, a in zip(starts, arrays)]
    return [v if a.ndim == 1 else v.view(a.shape) for v, a in zip(views, arrays)]


def merge_tokens(merged: np.ndarray) -> Optional[np.ndarray]:
    """The tokens the merge launch runs over (``Plan.merge_tokens``): int64 ``[n]``, those
    ``merged`` marks (bool ``[total_q]``: the tokens that can have slots), or ``None`` (every
    token) where it marks them all, or none. A token's program folds the same slots either
    way: the bits do not depend on the list."""
    listed = np.flatnonzero(merged)
    return listed if 0 < listed.size < merged.size else None


def merge_grid(plan: Plan) -> int:
    """The merge launch's programs per query head (``kernels.merge_kernel``): one per token of
    the batch, or per listed token (``Plan.merge_tokens``); over a counted list
    (``Plan.merge_count``), ``config.merge_programs // Hq`` at most, each folding every so
    many of this step's tokens, so that the grid is the same at every step."""
    if plan.merge_tokens is None:
        return plan.total_q
    room = plan.merge_tokens.shape[0]
    if plan.merge_count is None:
        return room
    return max(1, min(room, plan.config.merge_programs // plan.num_q_heads))


def plan(meta: BatchMeta, *, device=None, config: Optional[Config] = None, relay: Optional[bool] = None,
         fused_merge: Optional[bool] = None, regular: bool = True, unshared_single_pass: bool = True) -> Plan:
    """Plan a batch for the Triton kernels.

    Args:
        meta: from ``relaycore.validation.validate`` (host copies of every length and id).
        device: where the work lists go; default ``meta.device``.
        config: launch configuration; default ``default_config(head_dim, dtype, num_kv_heads)``.
        relay: group prefix rows across requests; default ``relay_grouping(meta)``.
        fused_merge: fold the states in the partial programs; default
            ``merge_in_partials``. The bits are the same either way.
        regular: let the kernel compute the items of a launch that ``regular_items`` describes
            (the default); ``False`` reads every list. The bits are the same either way.
        unshared_single_pass: a request that sees no prefix and whose own KV is one chunk
            writes its result from its own tiles (the default); ``False`` gives it a state and
            the merge (``single_pass_requests``). The bits are the same either way.

    Returns:
        A ``Plan``, reusable for every call with the same metadata (every layer of a step). Its
        lists (and its copy of a block table on the host, ``meta.host_block_table``) reach the
        device in one copy on the current stream that does not synchronize. The kernels read
        that copy in place of the call's ``kv.block_table``: a plan made here, from metadata
        alone, trusts the call to hold the planned block table as it trusts its lengths
        (``prepare``'s plans compare them at every call).
    """
    return _plan(meta, device=device, config=config, relay=relay, fused_merge=fused_merge, regular=regular,
                 unshared_single_pass=unshared_single_pass)


def _plan(meta: BatchMeta, *, device=None, config: Optional[Config] = None, relay: Optional[bool] = None,
          fused_merge: Optional[bool] = None, regular: bool = True, unshared_single_pass: bool = True,
          signature: Tuple[Tuple[str, tuple, Any, Any], ...] = (), stamps: Tuple[Stamp, ...] = ()) -> Plan:
    """``plan``, whose ``Plan`` also holds ``signature`` and ``stamps`` (``backend.prepare``'s):
    given to it here, since a copy by ``dataclasses.replace`` would build the ``Plan`` twice."""
    device = torch.device(meta.device if device is None else device)
    config = default_config(meta.head_dim, meta.dtype, meta.num_kv_heads) if config is None else config
    relay = relay_grouping(meta) if relay is None else bool(relay)
    work, regulars = _plan_work(meta, config, relay, unshared_single_pass, None, regular=regular)
    if fused_merge is None:
        fused_merge = merge_in_partials(meta.total_q, work.fold_steps, config)
    fused_merge = bool(fused_merge)
    lists = [work.slot_offsets] + [a for w in work.launches for a in (w.items, w.tokens, w.slots)]
    merged = None if fused_merge else merge_tokens(np.diff(work.slot_offsets) > 0)  # a fused merge has no launch
    table = meta.host_block_table
    slot_offsets, *lists = upload(lists + ([] if merged is None else [merged]) + ([] if table is None else [table]),
                                  device)
    merged = None if merged is None else lists[3 * len(work.launches)]
    launches = tuple(
        Launch(level=w.level, block_m=w.block_m, single_pass=w.single_pass, reads_prefix=w.reads_prefix,
               fold_rows=w.fold_rows, regular=regulars[i], items=lists[3 * i], tokens=lists[3 * i + 1],
               slots=lists[3 * i + 2])
        for i, w in enumerate(work.launches)
    )
    arrivals = torch.zeros((meta.total_q, meta.num_q_heads) if fused_merge else (0,), dtype=torch.int32, device=device)

    return Plan(
        total_q=meta.total_q,
        num_q_heads=meta.num_q_heads,
        num_kv_heads=meta.num_kv_heads,
        head_dim=meta.head_dim,
        dtype=meta.dtype,
        paged=meta.paged,
        causal=meta.causal,
        softmax_scale=meta.softmax_scale,
        config=config,
        num_slots=work.num_slots,
        slot_offsets=slot_offsets,
        launches=launches,
        fused_merge=fused_merge,
        arrivals=arrivals,
        relay=relay,
        device=str(device),
        num_levels=meta.num_levels,
        block_table=None if table is None else lists[-1],
        merge_tokens=merged,
        ready=uploaded(device),
        signature=signature,
        stamps=stamps,
        known_shapes=known_shapes(meta),
        pages_read=pages_read(meta, device),
    )
