"""A drawn relay-attention problem, and the builder for hand-written ones.

A ``Batch`` holds NumPy float64 arrays whose values are exact in its ``dtype``: the same numbers
reach the oracle (in float64) and the implementation under test (in ``dtype``), so any
difference is the implementation's error alone.
"""

from __future__ import annotations

import math
from collections import abc
from dataclasses import dataclass, field
from typing import Any, Dict, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

from relaycore.bounds import LARGEST_FINITE
from relaycore.reference.problem import load
from relaycore.reference.relay import relay_from_problem
from relaycore.reference.statistics import ContextStatistics, statistics_from_problem
from relaycore.testing.rounding import DTYPES, round_to
from relaycore.types import AttentionState, PagedKV, PrefixLevel, RaggedKV
from relaycore.validation import array_kind, resolve_scale, to_host_ints, validate

Arguments = Tuple[Tuple[Any, ...], Dict[str, Any]]

#: For each format, the formats that hold every one of its values unchanged (float16 and
#: bfloat16 hold neither each other's range nor each other's precision).
CARRIERS = {
    "float16": ("float16", "float32", "float64"),
    "bfloat16": ("bfloat16", "float32", "float64"),
    "float32": ("float32", "float64"),
    "float64": ("float64",),
}


class Oracle(NamedTuple):
    """The float64 reference result of a batch and the statistics its error bounds need.

    Attributes:
        state: ``AttentionState(out float64 [total_q, Hq, D], lse float64 [total_q, Hq])`` from
            ``relaycore.reference`` (the relay form).
        stats: ``relaycore.reference.ContextStatistics``.
    """

    state: AttentionState
    stats: ContextStatistics


@dataclass(eq=False)
class Batch:
    """One relay-attention problem.

    Attributes:
        q: float64 ``[total_q, Hq, D]``, values exact in ``dtype``.
        cu_seqlens_q: int32 or int64 ``[B + 1]`` (``make_batch``'s ``metadata_dtype``, as all
            the metadata).
        kv: ``RaggedKV`` or ``PagedKV`` of float64 values (exact in ``dtype``) and the metadata.
        prefixes: tuple of ``PrefixLevel`` (float64 values, the metadata).
        causal: causal masking of own tokens.
        softmax_scale: the scale, or ``None`` for ``1/sqrt(D)``.
        dtype: the format the implementation under test computes in (``"float16"``,
            ``"bfloat16"``, ``"float32"`` or ``"float64"``); it selects the error bound.
        recipe: the ``make_batch`` keyword arguments that rebuild this batch, when it was built
            by ``make_batch`` (``describe`` and ``repr`` print them while they still describe
            it; a batch changed with ``dataclasses.replace`` should set ``recipe=None``), or
            the batch it holds requests of (``picked``).
        picked: ``None``, or the requests of ``recipe``'s batch that this one holds, in its
            order (``requests``): it is ``make_batch(**recipe).requests(picked)``.
    """

    q: np.ndarray
    cu_seqlens_q: np.ndarray
    kv: Union[RaggedKV, PagedKV]
    prefixes: Tuple[PrefixLevel, ...]
    causal: bool
    softmax_scale: Optional[float]
    dtype: str
    recipe: Optional[Dict[str, Any]] = None
    picked: Optional[Tuple[int, ...]] = None
    _oracle: Optional[Oracle] = field(default=None, init=False, repr=False)

    # ---- sizes -----------------------------------------------------------------------------

    @property
    def batch_size(self) -> int:
        return int(self.cu_seqlens_q.shape[0]) - 1

    @property
    def num_q_heads(self) -> int:
        return int(self.q.shape[1])

    @property
    def num_kv_heads(self) -> int:
        return int((self.kv.k if isinstance(self.kv, RaggedKV) else self.kv.k_cache).shape[-2])

    @property
    def head_dim(self) -> int:
        return int(self.q.shape[2])

    @property
    def q_lens(self) -> np.ndarray:
        return np.diff(self.cu_seqlens_q).astype(np.int64)

    @property
    def kv_lens(self) -> np.ndarray:
        if isinstance(self.kv, PagedKV):
            return self.kv.kv_lens.astype(np.int64)
        return np.diff(self.kv.cu_seqlens).astype(np.int64)

    @property
    def paged(self) -> bool:
        return isinstance(self.kv, PagedKV)

    # ---- what implementations receive ------------------------------------------------------

    def arguments(self) -> Arguments:
        """``(args, kwargs)`` for ``relay_attention(*args, **kwargs)``: NumPy arrays (float64
        values, the batch's metadata) and ``causal``, ``softmax_scale``.

        The arrays are fresh copies at every call: what an implementation writes into them
        changes neither the batch nor its oracle (``relaycore.testing.compare`` fails an
        implementation that writes into its inputs)."""
        (q, cu, kv, prefixes), kwargs = self._own_arguments()
        return (np.array(q), np.array(cu), _copied(kv), tuple(_copied(level) for level in prefixes)), kwargs

    def _own_arguments(self) -> Arguments:
        """``arguments()`` without the copies: the batch's own arrays, for the oracle and for
        ``relaycore.testing.compare`` to see what an implementation changed."""
        return (self.q, self.cu_seqlens_q, self.kv, self.prefixes), {"causal": self.causal, "softmax_scale": self.softmax_scale}

    def to_torch(self, device: Any = "cpu", dtype: Any = None, *, host_metadata: bool = False) -> Arguments:
        """``(args, kwargs)`` as ``arguments()``, with torch tensors on ``device``.

        Args:
            device: a torch device or its name.
            dtype: a torch dtype or its name; default the batch's ``dtype``. The values are
                exact in the batch's dtype, so it and any format that holds all its values
                (``CARRIERS[batch.dtype]``: float32 and float64 for float16 and bfloat16,
                float64 for float32) carry them unchanged; any other would round them, and the
                implementation would not see the numbers the oracle saw.
            host_metadata: give the metadata (offsets, lengths, block table, prefix ids) as
                NumPy arrays, on the host (``relaycore.validation.on_host``), not on
                ``device``.

        Returns:
            float tensors in ``dtype`` on ``device``, metadata tensors on ``device`` (or NumPy
            arrays) in the batch's metadata dtype (int32 unless ``make_batch`` was given
            ``metadata_dtype="int64"``); every one a fresh copy, which shares no memory with
            the batch (as ``arguments()``).

        Raises:
            ValueError: ``dtype`` is not one of ``CARRIERS[batch.dtype]``; ``device`` is not a
                device name, or a CUDA device where torch has none.
        """
        import torch

        try:
            where = torch.device(device)
        except (RuntimeError, TypeError):
            raise ValueError(f"device: expected a torch device or its name ('cpu', 'cuda', 'cuda:1'), "
                             f"got {device!r}") from None
        if where.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device: expected a device this torch has, got {device!r} (torch.cuda.is_available() "
                             f"is False)")
        name = self.dtype if dtype is None else dtype if isinstance(dtype, str) else str(dtype).replace("torch.", "")
        carriers = CARRIERS[self.dtype]
        if name not in carriers:
            shown = name if name in DTYPES else repr(dtype)
            raise ValueError(
                f"dtype: expected one of {list(carriers)} (formats that hold every {self.dtype} value unchanged), "
                f"got {shown}"
            )
        dtype = getattr(torch, name)

        def floats(x):
            # np.array copies: .to() would hand out the batch's own memory for float64 on the CPU
            return torch.from_numpy(np.array(x)).to(device=device, dtype=dtype)

        def ints(x):
            x = np.array(x)  # a copy, in the batch's metadata dtype: the caller may write into it
            return x if host_metadata else torch.from_numpy(x).to(device=device)

        if isinstance(self.kv, PagedKV):
            kv = PagedKV(floats(self.kv.k_cache), floats(self.kv.v_cache), ints(self.kv.block_table), ints(self.kv.kv_lens))
        else:
            kv = RaggedKV(floats(self.kv.k), floats(self.kv.v), ints(self.kv.cu_seqlens))
        prefixes = tuple(PrefixLevel(floats(p.k), floats(p.v), ints(p.cu_seqlens), ints(p.prefix_ids)) for p in self.prefixes)
        return (floats(self.q), ints(self.cu_seqlens_q), kv, prefixes), {"causal": self.causal, "softmax_scale": self.softmax_scale}

    def oracle(self) -> Oracle:
        """The float64 reference result and the context statistics (computed once, cached)."""
        if self._oracle is None:
            args, kwargs = self._own_arguments()
            problem = load(*args, **kwargs)
            self._oracle = Oracle(relay_from_problem(problem), statistics_from_problem(problem))
        return self._oracle

    def requests(self, indices: Sequence[int]) -> "Batch":
        """The batch of these requests alone, in this order, each with its own values: its
        queries, its own KV (a paged cache is kept whole, its block table's rows picked) and
        its prefix ids (the prefix levels are kept whole). What a failure needs of a batch
        (``fewest_requests``); it prints as the call that rebuilds it,
        ``make_batch(...).requests([...])``, where the batch's ``recipe`` rebuilds it.

        Args:
            indices: request indices in ``[0, B)``, a sequence of ints (repeats allowed).

        Returns:
            A new ``Batch`` of ``len(indices)`` requests (its oracle computed anew when asked).

        Raises:
            TypeError: ``indices`` is not a sequence in its order (a set, a str) or an array
                not 1-D.
            ValueError: an entry that is not an int in ``[0, B)``, naming it.
        """
        picked = _as_list("indices", indices)
        past = [b for b in picked if b >= self.batch_size]
        if past:
            raise ValueError(f"indices: expected request indices in [0, {self.batch_size}), got {past[0]}")
        metadata_dtype = self.cu_seqlens_q.dtype
        if isinstance(self.kv, PagedKV):
            kv = PagedKV(self.kv.k_cache, self.kv.v_cache, self.kv.block_table[picked], self.kv.kv_lens[picked])
        else:
            rows = _segment_rows(self.kv.cu_seqlens, picked)
            kv = RaggedKV(self.kv.k[rows], self.kv.v[rows], _offsets(self.kv_lens[picked], metadata_dtype))
        prefixes = tuple(PrefixLevel(level.k, level.v, level.cu_seqlens, level.prefix_ids[picked])
                         for level in self.prefixes)
        of = tuple(picked if self.picked is None else [self.picked[b] for b in picked])
        return Batch(self.q[_segment_rows(self.cu_seqlens_q, picked)], _offsets(self.q_lens[picked], metadata_dtype),
                     kv, prefixes, self.causal, self.softmax_scale, self.dtype, self.recipe, of)

    # ---- reports ---------------------------------------------------------------------------

    def _rebuilds(self) -> bool:
        """Whether ``recipe`` (with ``picked``) still describes the batch (``dataclasses.replace``
        keeps it while changing a field): the sizes, lengths, flags and layout it names are the
        batch's."""
        r = self.recipe
        if r is None:
            return False
        if self.picked is not None:  # the recipe's lists of the picked requests
            r = {**r, "q_lens": [r["q_lens"][b] for b in self.picked], "kv_lens": [r["kv_lens"][b] for b in self.picked],
                 "prefix_ids": [[ids[b] for b in self.picked] for ids in r["prefix_ids"]]}
        block = int(self.kv.k_cache.shape[1]) if self.paged else None
        return (r["q_lens"] == self.q_lens.tolist() and r["kv_lens"] == self.kv_lens.tolist()
                and (r["num_q_heads"], r["num_kv_heads"], r["head_dim"]) == (self.num_q_heads, self.num_kv_heads,
                                                                             self.head_dim)
                and (r["dtype"], r["causal"], r["softmax_scale"], r["block_size"]) == (self.dtype, self.causal,
                                                                                       self.softmax_scale, block)
                and r.get("metadata_dtype", "int32") == self.cu_seqlens_q.dtype.name
                and len(r["prefix_lens"]) == len(self.prefixes)
                and all(list(ids) == level.prefix_ids.tolist() for ids, level in zip(r["prefix_ids"], self.prefixes)))

    def _repr_pretty_(self, printer, cycle: bool) -> None:
        """What Hypothesis (and IPython) print for a batch: ``repr``, not the fields' arrays."""
        printer.text(repr(self))

    def __repr__(self) -> str:
        """The ``make_batch`` call that rebuilds the batch, where its recipe still describes it
        (what Hypothesis prints for a falsifying example, through ``_repr_pretty_``); else its
        sizes."""
        if self._rebuilds():
            call = "make_batch(" + ", ".join(f"{k}={v!r}" for k, v in self.recipe.items()) + ")"
            return call if self.picked is None else f"{call}.requests({list(self.picked)})"
        return (f"Batch(B={self.batch_size}, q_lens={self.q_lens.tolist()}, kv_lens={self.kv_lens.tolist()}, "
                f"levels={len(self.prefixes)}, Hq={self.num_q_heads}, Hkv={self.num_kv_heads}, D={self.head_dim}, "
                f"dtype={self.dtype!r}, {'paged' if self.paged else 'ragged'})")

    def describe(self) -> str:
        """A readable summary (sizes, lengths, levels, layout, dtype), and the ``make_batch``
        call that rebuilds the batch when there is one."""
        hq, hkv = self.num_q_heads, self.num_kv_heads
        kind = "MHA" if hq == hkv else ("MQA" if hkv == 1 else f"GQA, {hq // hkv} query heads per KV head")
        scale = "1/sqrt(D)" if self.softmax_scale is None else repr(self.softmax_scale)
        if isinstance(self.kv, PagedKV):
            nb, bs = self.kv.k_cache.shape[:2]
            layout = f"paged KV: block_size {bs}, {nb} blocks, block_table {list(self.kv.block_table.shape)}"
        else:
            layout = "ragged KV"
        lines = [
            f"batch of B={self.batch_size}: Hq={hq}, Hkv={hkv} ({kind}), D={self.head_dim}, dtype {self.dtype}, "
            f"{'causal' if self.causal else 'non-causal'}, softmax_scale {scale}, {layout}",
            f"  q_lens  {self.q_lens.tolist()}",
            f"  kv_lens {self.kv_lens.tolist()}",
        ]
        for i, level in enumerate(self.prefixes):
            lens = np.diff(level.cu_seqlens).tolist()
            lines.append(f"  prefix level {i}: {len(lens)} prefixes of lengths {lens}; ids per request {level.prefix_ids.tolist()}")
        if not self.prefixes:
            lines.append("  no prefix levels")
        if self._rebuilds():
            lines.append(f"  rebuild: relaycore.testing.{self!r}")
        return "\n".join(lines)


def _segment_rows(offsets: np.ndarray, segments: Sequence[int]) -> np.ndarray:
    """int64 indices of the rows of these segments of ``offsets`` (``[n + 1]``), in their order."""
    cu = offsets.astype(np.int64)
    return np.concatenate([np.arange(cu[s], cu[s + 1]) for s in segments] + [np.zeros(0, dtype=np.int64)])


def _offsets(lens: Sequence[int], dtype) -> np.ndarray:
    """``[len(lens) + 1]`` offsets in ``dtype``: 0, then the running sums of ``lens``."""
    return np.concatenate([[0], np.cumsum(lens, dtype=np.int64)]).astype(dtype)


def _copied(arrays: Union[RaggedKV, PagedKV, PrefixLevel]) -> Union[RaggedKV, PagedKV, PrefixLevel]:
    """The same NamedTuple of arrays, each array copied."""
    return type(arrays)(*(np.array(x) for x in arrays))


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _count(name: str, value, minimum: int) -> int:
    """``value`` as an int of at least ``minimum``, else an error naming ``name``."""
    if not _is_int(value) or value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value!r}")
    return int(value)


def _in_order(values) -> bool:
    """Whether ``values`` is a sequence in its order: a NumPy array of at least one axis, or any
    ``collections.abc.Sequence`` (a list, tuple, range, ...) but text or bytes; not a set, whose
    order is arbitrary, nor a dict, whose keys would be read."""
    if isinstance(values, np.ndarray):
        return values.ndim >= 1
    return isinstance(values, abc.Sequence) and not isinstance(values, (str, bytes, bytearray))


def _as_list(name: str, values: Sequence[int], length: Optional[int] = None, minimum: int = 0) -> list:
    """``values`` as a list of ints of at least ``minimum`` (of ``length`` entries when given).

    Raises:
        TypeError: ``values`` is no sequence in its order (``_in_order``) or an array not 1-D.
        ValueError: an entry that is no int of at least ``minimum``; not ``length`` entries.
    """
    array = isinstance(values, np.ndarray)
    if not _in_order(values) or (array and values.ndim != 1):
        got = f"an array of shape {values.shape}" if array else type(values).__name__
        raise TypeError(f"{name}: expected a sequence of ints (a list, tuple, range or other sequence, or a 1-D NumPy "
                        f"array), got {got}")
    bad = [v for v in values if not _is_int(v) or v < minimum]
    if bad:
        raise ValueError(f"{name}: expected ints >= {minimum}, got {bad[0]!r}")
    if length is not None and len(values) != length:
        raise ValueError(f"{name}: expected {length} entries, got {len(values)}")
    return [int(v) for v in values]


def batch_from(q, cu_seqlens_q, kv, prefixes=(), *, causal: bool = True, softmax_scale: Optional[float] = None,
               dtype: Optional[str] = None) -> Batch:
    """The ``Batch`` of a call's own arguments: to check what your kernel computed from your
    engine's tensors (``check(result, batch_from(q, ...))``) against the oracle.

    Every array is copied to the host, the floating ones in float64 (exactly: every format a
    call takes fits float64), so a serving-size KV cache costs its size times 64 over its
    bits in host memory: give the tensors of a test batch.

    Args:
        q, cu_seqlens_q, kv, prefixes, causal, softmax_scale: as
            ``relaycore.relay_attention``'s (torch tensors on any device, or NumPy arrays).
        dtype: the format your kernel computed in, which selects the error bound; default
            q's. Every floating value must be exact in it.

    Raises:
        TypeError, ValueError: what ``relay_attention`` refuses (``relaycore.validation``), a
            ``dtype`` not in ``DTYPES``, or a value that ``dtype`` does not hold, naming the
            argument.
    """
    meta = validate(q, cu_seqlens_q, kv, prefixes, causal=causal, softmax_scale=softmax_scale)
    name = meta.dtype if dtype is None else dtype
    if name not in DTYPES:
        raise ValueError(f"dtype: expected one of {list(DTYPES)}, got {name!r}")

    def floats(argument: str, x) -> np.ndarray:
        values = np.array(host64(x))  # a copy: host64 hands a float64 array back as it is
        if not np.array_equal(round_to(values, name), values, equal_nan=True):
            raise ValueError(f"{argument}: expected values exact in {name} (the format that selects the bound), got "
                             f"values it rounds")
        return values

    def ints(x) -> np.ndarray:  # a copy: the engine may write into its metadata afterwards
        return np.array(to_host_ints(x))

    values = floats("q", q)
    if isinstance(kv, PagedKV):
        own = PagedKV(floats("kv.k_cache", kv.k_cache), floats("kv.v_cache", kv.v_cache), ints(kv.block_table),
                      ints(kv.kv_lens))
    else:
        own = RaggedKV(floats("kv.k", kv.k), floats("kv.v", kv.v), ints(kv.cu_seqlens))
    levels = tuple(PrefixLevel(floats(f"prefixes[{i}].k", p.k), floats(f"prefixes[{i}].v", p.v), ints(p.cu_seqlens),
                               ints(p.prefix_ids)) for i, p in enumerate(prefixes))
    return Batch(values, ints(cu_seqlens_q), own, levels, bool(causal), softmax_scale, name)


def host64(x: Any) -> np.ndarray:
    """float64 NumPy copy of an array or torch tensor (any device, any float dtype)."""
    if array_kind(x) == "torch":
        return x.detach().resolve_neg().to("cpu").double().numpy()
    return np.asarray(x, dtype=np.float64)


def make_batch(
    q_lens: Sequence[int],
    kv_lens: Sequence[int],
    prefix_lens: Sequence[Sequence[int]] = (),
    prefix_ids: Sequence[Sequence[int]] = (),
    *,
    num_q_heads: int = 2,
    num_kv_heads: int = 1,
    head_dim: int = 8,
    dtype: str = "float32",
    causal: bool = True,
    softmax_scale: Optional[float] = None,
    block_size: Optional[int] = None,
    score_magnitude: Optional[float] = None,
    value_offset: float = 0.0,
    seed: int = 0,
    metadata_dtype: str = "int32",
    value_scale: float = 1.0,
) -> Batch:
    """Build a batch from explicit lengths, with seeded random values exact in ``dtype``.

    Args:
        q_lens: per request, query tokens (a list, tuple, range or other sequence of ints, or a
            1-D NumPy array, as every list of lengths or ids here).
        kv_lens: per request, own KV tokens (``>= q_lens``).
        prefix_lens: per level, the lengths of its prefixes.
        prefix_ids: per level, each request's prefix id (``-1``: none).
        num_q_heads, num_kv_heads, head_dim: ``Hq`` (a multiple of ``Hkv``), ``Hkv``, ``D``.
        dtype: the format under test; values are rounded to it.
        causal, softmax_scale: as ``relay_attention``.
        block_size: ``None`` for ragged KV, else a paged cache of this block size (blocks in
            shuffled order, at least one spare block, unused table entries pointing at random
            blocks); every slot no request reads is NaN, so an implementation that reads past
            ``kv_len`` and lets what it read into a result, even times a weight of 0, fails.
        score_magnitude: the standard deviation of the scores ``softmax_scale * q . k`` (whatever
            the scale and ``D``: ``q`` and ``k`` are normal with standard deviation
            ``sqrt(score_magnitude / (scale sqrt(D)))``); a row of ``N`` keys then reaches
            ``|score|`` of about ``score_magnitude * sqrt(2 ln N)``. ``None``: standard normal
            ``q`` and ``k``, scores of standard deviation ``scale * sqrt(D)`` (1 at the default
            scale). Every ``q`` and ``k`` drawn must round to a finite value in ``dtype``.
        value_offset: added to every value ``v`` (standard normal without it). Outputs are then
            near ``value_offset``, not near 0, so errors relative to the output (a normaliser
            off by a key, an accumulator rounded to a low precision) stand out against the
            bound, which scales with ``max |v|``. Every ``v`` drawn must round to a finite value
            in ``dtype``.
        seed: seeds the values (and the paged layout).
        metadata_dtype: ``"int32"`` or ``"int64"``, the dtype of every offset, length, id and
            block table entry (the contract takes both).
        value_scale: multiplies every value (offset included) before its rounding to ``dtype``;
            ``q``, ``k`` and the scores are left as they are. Small scales reach the format's
            subnormals (``2.0**-20`` in fp16: values of a few ``2^-24``, outputs that round
            absolutely), where a kernel that flushes them, or that rounds a stored output
            again (``check``'s ``stored``), errs by more than its relative error.

    Returns:
        ``Batch``; its ``recipe`` holds these arguments (``value_offset``, ``metadata_dtype``
        and ``value_scale`` where they are not the default).

    Raises:
        TypeError: a list of lengths or ids that is not a sequence in its order (a str or
            bytes; a set, whose order is arbitrary; a dict, whose keys would be read) or an
            array that is not 1-D; ``causal`` or ``softmax_scale`` of the wrong type.
        ValueError: an argument out of its range, naming it: lengths, ids or sizes (lists that
            do not line up, ``q_len > kv_len``, lengths whose sum, the last offset, does not
            fit in ``metadata_dtype``); a ``score_magnitude``, ``value_offset`` or
            ``value_scale`` whose draws round to infinity in ``dtype`` (the first such draw is
            named); a ``value_scale`` that is not a finite positive float.

    Example:
        >>> from relaycore.testing import make_batch
        >>> batch = make_batch([1, 3], [4, 3], prefix_lens=[[5]], prefix_ids=[[0, 0]], block_size=2)
        >>> batch.q.shape, batch.kv.block_table.shape[0]
        ((4, 2, 8), 2)
    """
    q_lens = _as_list("q_lens", q_lens)
    batch = len(q_lens)
    kv_lens = _as_list("kv_lens", kv_lens, batch)
    for name, levels in (("prefix_lens", prefix_lens), ("prefix_ids", prefix_ids)):
        if not _in_order(levels):
            raise TypeError(f"{name}: expected one list per prefix level (in a sequence or NumPy array), got "
                            f"{type(levels).__name__}")
    if len(prefix_lens) != len(prefix_ids):
        raise ValueError(f"prefix_ids: expected one list per level ({len(prefix_lens)} levels), got {len(prefix_ids)}")
    prefix_lens = [_as_list(f"prefix_lens[{i}]", lens) for i, lens in enumerate(prefix_lens)]
    prefix_ids = [_as_list(f"prefix_ids[{i}]", ids, batch, minimum=-1) for i, ids in enumerate(prefix_ids)]
    for i, (lens, ids) in enumerate(zip(prefix_lens, prefix_ids)):
        past = [p for p in ids if p >= len(lens)]
        if past:
            raise ValueError(f"prefix_ids[{i}]: expected ids in [-1, {len(lens)}) (level {i} has {len(lens)} "
                             f"prefixes), got {past[0]}")
    num_q_heads, num_kv_heads = _count("num_q_heads", num_q_heads, 1), _count("num_kv_heads", num_kv_heads, 1)
    if num_q_heads % num_kv_heads:
        raise ValueError(f"num_q_heads: expected a multiple of num_kv_heads ({num_kv_heads}), got {num_q_heads}")
    head_dim, seed = _count("head_dim", head_dim, 1), _count("seed", seed, 0)
    if not isinstance(causal, (bool, np.bool_)):
        raise TypeError(f"causal: expected a bool, got {type(causal).__name__}")
    if softmax_scale is not None:
        resolve_scale(softmax_scale, head_dim)  # a finite positive float, else an error naming it
    if score_magnitude is not None and (isinstance(score_magnitude, (bool, np.bool_))
                                        or not isinstance(score_magnitude, (int, float, np.integer, np.floating))
                                        or not 0 < score_magnitude < math.inf):
        raise ValueError(f"score_magnitude: expected None or a finite positive float, got {score_magnitude!r}")
    if (isinstance(value_offset, (bool, np.bool_))
            or not isinstance(value_offset, (int, float, np.integer, np.floating)) or not math.isfinite(value_offset)):
        raise ValueError(f"value_offset: expected a finite float, got {value_offset!r}")
    if (isinstance(value_scale, (bool, np.bool_)) or not isinstance(value_scale, (int, float, np.integer, np.floating))
            or not 0 < value_scale < math.inf):
        raise ValueError(f"value_scale: expected a finite positive float, got {value_scale!r}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype: expected one of {list(DTYPES)}, got {dtype!r}")
    if metadata_dtype not in ("int32", "int64"):
        raise ValueError(f"metadata_dtype: expected 'int32' or 'int64', got {metadata_dtype!r}")
    largest_offset = int(np.iinfo(metadata_dtype).max)
    for name, lens in (("q_lens", q_lens), ("kv_lens", kv_lens), *(
            (f"prefix_lens[{i}]", lens) for i, lens in enumerate(prefix_lens))):
        if sum(lens) > largest_offset:
            raise ValueError(f"{name}: expected lengths whose sum, the last offset, fits in metadata_dtype "
                             f"{metadata_dtype} (at most {largest_offset}), got a sum of {sum(lens)}")
    longer = [b for b in range(batch) if q_lens[b] > kv_lens[b]]
    if longer:
        b = longer[0]
        raise ValueError(f"q_lens: expected q_len <= kv_len for every request (queries are the last own tokens), "
                         f"got request {b} with q_len {q_lens[b]} > kv_len {kv_lens[b]}")
    if block_size is not None and (isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer))
                                   or block_size < 1):
        raise ValueError(f"block_size: expected None (ragged) or a positive int, got {block_size!r}")
    as_float = lambda x: None if x is None else float(x)  # noqa: E731  (NumPy scalars print as np.float64(...))
    recipe = dict(
        q_lens=q_lens, kv_lens=kv_lens, prefix_lens=prefix_lens, prefix_ids=prefix_ids, num_q_heads=int(num_q_heads),
        num_kv_heads=int(num_kv_heads), head_dim=int(head_dim), dtype=dtype, causal=bool(causal),
        softmax_scale=as_float(softmax_scale), block_size=None if block_size is None else int(block_size),
        score_magnitude=as_float(score_magnitude), seed=int(seed),
    )
    if value_offset != 0:
        recipe["value_offset"] = float(value_offset)
    if metadata_dtype != "int32":
        recipe["metadata_dtype"] = metadata_dtype
    if value_scale != 1:
        recipe["value_scale"] = float(value_scale)
    rng = np.random.default_rng(seed)
    hq, hkv, d = num_q_heads, num_kv_heads, head_dim
    # q . k of two normal vectors of standard deviation s has standard deviation s^2 sqrt(D)
    spread = 1.0 if score_magnitude is None else math.sqrt(score_magnitude / (resolve_scale(softmax_scale, d)
                                                                              * math.sqrt(d)))
    # the draws, by the argument that sets their size: standard deviation, offset, the rule
    draws = {
        "score_magnitude": (spread, 0.0, f"q and k (normal, of standard deviation sqrt(score_magnitude / (scale "
                                         f"sqrt(D))) = {spread:.4g})"),
        "value_offset": (1.0, value_offset, "v (value_offset plus a standard normal)"),
        "value_scale": (value_scale, value_offset * value_scale,
                        "v (value_offset plus a standard normal, times value_scale)"),
    }
    value_rule = "value_offset" if value_scale == 1 else "value_scale"  # the argument a value's size comes from

    def values(n: int, heads: int, argument: str) -> np.ndarray:
        std, offset, rule = draws[argument]
        drawn = rng.standard_normal((n, heads, d)) * std + offset
        rounded = round_to(drawn, dtype)
        overflow = ~np.isfinite(rounded)
        if overflow.any():  # refused here, not as an infinite q or kv.v by the oracle
            raise ValueError(f"{argument}: expected {rule} to round to finite {dtype} values (at most "
                             f"{LARGEST_FINITE[dtype]:.8g}), got {argument} = {recipe[argument]!r}, which draws "
                             f"{float(drawn[overflow][0]):.8g}")
        return rounded

    q = values(sum(q_lens), hq, "score_magnitude")
    cu_q = _offsets(q_lens, metadata_dtype)
    k, v = values(sum(kv_lens), hkv, "score_magnitude"), values(sum(kv_lens), hkv, value_rule)
    prefixes = []
    for lens, ids in zip(prefix_lens, prefix_ids):
        pk, pv = values(sum(lens), hkv, "score_magnitude"), values(sum(lens), hkv, value_rule)
        cu_p = _offsets(lens, metadata_dtype)
        prefixes.append(PrefixLevel(pk, pv, cu_p, np.asarray(ids, dtype=metadata_dtype)))
    # the layout comes last: the same recipe with another block_size holds the same values
    if block_size is None:
        kv = RaggedKV(k, v, _offsets(kv_lens, metadata_dtype))
    else:
        kv = _paged(k, v, np.asarray(kv_lens, dtype=np.int64), block_size, rng, metadata_dtype)
    return Batch(q, cu_q, kv, tuple(prefixes), bool(causal), softmax_scale, dtype, recipe)


def _paged(k: np.ndarray, v: np.ndarray, kv_lens: np.ndarray, block_size: int, rng, metadata_dtype: str) -> PagedKV:
    """Scatter packed request KV into a shuffled paged cache with one or two spare blocks; every
    slot that no request reads (the spare blocks, the slots past ``kv_len`` in a request's last
    block) holds NaN, as an engine's free memory may."""
    hkv, d = k.shape[1:]
    blocks = -(-kv_lens // block_size)
    num_blocks = int(blocks.sum()) + int(rng.integers(1, 3))
    order = rng.permutation(num_blocks)
    k_cache = np.full((num_blocks, block_size, hkv, d), np.nan, dtype=k.dtype)
    v_cache = np.full((num_blocks, block_size, hkv, d), np.nan, dtype=v.dtype)
    width = int(blocks.max(initial=0)) + int(rng.integers(0, 2))
    table = rng.integers(0, num_blocks, size=(len(kv_lens), width))
    starts = np.concatenate([[0], np.cumsum(kv_lens)])
    next_block = 0
    for b, n in enumerate(kv_lens):
        for j in range(int(blocks[b])):
            block = order[next_block]
            next_block += 1
            table[b, j] = block
            lo, hi = starts[b] + j * block_size, min(starts[b] + (j + 1) * block_size, starts[b + 1])
            k_cache[block, : hi - lo] = k[lo:hi]
            v_cache[block, : hi - lo] = v[lo:hi]
    return PagedKV(k_cache, v_cache, table.astype(metadata_dtype), kv_lens.astype(metadata_dtype))
