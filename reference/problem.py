"""The oracle's one input path: a relay-attention call read onto the host in float64.

Every public function of the reference converts its arguments with ``load`` (NumPy arrays,
torch tensors, or anything ``np.asarray`` makes an array of numbers of: nested lists...),
validates them with ``relaycore.validation.validate``, and computes on the ``Problem`` it
returns. The reference backend, which receives inputs that ``relaycore.relay_attention``
already validated, builds the ``Problem`` with ``from_validated``.

Both paths end in ``from_validated``, which reads the values on the host and refuses a
non-finite one among those a query attends (``ValueError`` naming the argument as the caller
wrote it, ``q``, ``kv.k``, ``prefixes[1].v``..., and the first bad value's index in it). The
shared ``relaycore.validation`` does not read values: on a GPU that would synchronize.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence, Tuple

import numpy as np

from relaycore.types import PagedKV, PrefixLevel, RaggedKV
from relaycore.validation import BatchMeta, array_kind, validate


def host_array(x: Any) -> np.ndarray:
    """A NumPy view or copy of a NumPy array or torch tensor on the host, keeping its dtype
    where NumPy has it.

    torch tensors are detached and copied to the CPU, with their values (``resolve_neg``;
    ``bfloat16``, which NumPy lacks, becomes ``float32``, exactly).
    """
    if array_kind(x) == "numpy":
        return x
    x = x.detach().resolve_neg().to("cpu")
    if str(x.dtype) == "torch.bfloat16":
        x = x.float()
    return x.numpy()


def _as_array(name: str, x: Any) -> Any:
    """``x`` itself if it is a NumPy array or torch tensor, else ``np.asarray(x)``.

    Raises:
        ValueError: nested lists of unequal lengths (NumPy makes no array of them), naming
            ``name``.
        TypeError: anything NumPy makes no array of numbers of (``None``, a string), naming
            ``name``.
    """
    if array_kind(x) is not None:
        return x
    try:
        array = np.asarray(x)
    except ValueError:  # NumPy refuses nested sequences of unequal lengths
        raise ValueError(f"{name}: expected an array, or nested lists of equal lengths, got a ragged "
                         f"{type(x).__name__}") from None
    if array.dtype.kind not in "biufc":  # bool, ints, floats, complex: validation checks which
        raise TypeError(f"{name}: expected an array of numbers (a NumPy array, a torch tensor or nested lists), got "
                        f"{type(x).__name__}, which NumPy reads as dtype {array.dtype}")
    return array


def _map_arrays(convert, cu_seqlens_q: Any, kv: Any, prefixes: Any) -> Tuple[Any, Any, Any]:
    """``convert(name, x)`` of every metadata and KV array of a call, by the names the caller
    writes them by (``kv.k``, ``prefixes[1].cu_seqlens``); a ``kv`` or ``prefixes`` of the
    wrong type is left for validation to name."""
    cu_seqlens_q = convert("cu_seqlens_q", cu_seqlens_q)
    if isinstance(kv, (RaggedKV, PagedKV)):
        kv = type(kv)(*(convert(f"kv.{field}", x) for field, x in zip(kv._fields, kv)))
    if isinstance(prefixes, (list, tuple)) and not isinstance(prefixes, PrefixLevel):
        prefixes = tuple(
            PrefixLevel(*(convert(f"prefixes[{i}].{field}", x) for field, x in zip(level._fields, level)))
            if isinstance(level, PrefixLevel) else level for i, level in enumerate(prefixes))
    return cu_seqlens_q, kv, prefixes


@dataclass(frozen=True)
class Problem:
    """A validated call on the host, every float in float64.

    Attributes:
        meta: what validation learned (sizes, lengths, prefix ids, resolved scale).
        q: float64 ``[total_q, Hq, D]``.
        own_k, own_v: per request ``b``, float64 ``[kv_len[b], Hkv, D]`` (paged KV gathered
            through the block table).
        prefix_k, prefix_v: per level, per prefix ``p``, float64 ``[len_p, Hkv, D]``.
    """

    meta: BatchMeta
    q: np.ndarray
    own_k: Tuple[np.ndarray, ...]
    own_v: Tuple[np.ndarray, ...]
    prefix_k: Tuple[Tuple[np.ndarray, ...], ...]
    prefix_v: Tuple[Tuple[np.ndarray, ...], ...]

    def context(self, b: int) -> Tuple[np.ndarray, np.ndarray]:
        """Request ``b``'s whole context: its prefixes level by level, then its own tokens.

        Returns:
            ``k, v`` float64 ``[context_len, Hkv, D]``.
        """
        ks, vs = [], []
        for level, ids in enumerate(self.meta.prefix_ids):
            if ids[b] >= 0:
                ks.append(self.prefix_k[level][ids[b]])
                vs.append(self.prefix_v[level][ids[b]])
        ks.append(self.own_k[b])
        vs.append(self.own_v[b])
        return np.concatenate(ks), np.concatenate(vs)

    def keys_seen(self, b: int) -> np.ndarray:
        """int64 ``[q_len[b]]``: how many context tokens each query of request ``b`` sees.

        The context is ordered prefixes-then-own and a query sees every prefix token and a
        leading run of its own tokens, so query ``j`` sees exactly the first ``keys_seen[j]``
        context tokens: ``prefix_len + kv_len - q_len + j + 1`` (causal) or
        ``prefix_len + kv_len``.
        """
        meta = self.meta
        prefix_len = sum(int(lens[ids[b]]) for lens, ids in zip(meta.prefix_lens, meta.prefix_ids) if ids[b] >= 0)
        q_len, kv_len = int(meta.q_lens[b]), int(meta.kv_lens[b])
        if meta.causal:
            return prefix_len + kv_len - q_len + 1 + np.arange(q_len, dtype=np.int64)
        return np.full(q_len, prefix_len + kv_len, dtype=np.int64)


def f64(x: Any) -> np.ndarray:
    """``host_array(x)`` as float64."""
    return host_array(x).astype(np.float64)


def require_finite(name: str, x: np.ndarray, read: Optional[np.ndarray] = None) -> None:
    """Refuse a non-finite value among those of ``x`` that a query attends.

    Args:
        name: the argument as the caller wrote it, e.g. ``"prefixes[1].v"``.
        x: float host array.
        read: bool over ``x``'s leading axes (rows ``[n]``, or ``[num_blocks, block_size]`` slots
            of a paged cache), ``True`` where some query attends that row; ``None``: every row.

    Raises:
        ValueError: naming ``name``, finite values expected, the first bad value and its index.
    """
    bad = ~np.isfinite(x)
    if read is not None:
        bad &= read.reshape(read.shape + (1,) * (x.ndim - read.ndim))
    if bad.any():
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        count = int(bad.sum())
        others = f" ({count - 1} more)" if count > 1 else ""
        raise ValueError(f"{name}: expected finite values, got {x[index]} at index {index}{others}")


def _split(x: np.ndarray, lens: np.ndarray) -> Tuple[np.ndarray, ...]:
    return tuple(np.split(x, np.cumsum(lens)[:-1])) if len(lens) else ()


def _attended_slots(table: np.ndarray, kv_lens: np.ndarray, attended: np.ndarray, num_blocks: int,
                    block_size: int) -> np.ndarray:
    """bool ``[num_blocks, block_size]``: the cache slots holding a token of an attended request."""
    read = np.zeros((num_blocks, block_size), dtype=bool)
    for b in np.flatnonzero(attended):
        n = int(kv_lens[b])
        blocks = table[b, : -(-n // block_size)]
        read[blocks] |= (np.arange(blocks.size * block_size) < n).reshape(blocks.size, block_size)
    return read


def _attended_prefix_rows(ids: np.ndarray, lens: np.ndarray, attended: np.ndarray) -> np.ndarray:
    """bool ``[total_prefix]``: the rows of one level's prefixes that an attended request uses."""
    used = np.zeros(len(lens), dtype=bool)
    used[ids[attended & (ids >= 0)]] = True
    return np.repeat(used, lens)


def from_validated(q, kv, prefixes: Sequence[PrefixLevel], meta: BatchMeta) -> Problem:
    """The ``Problem`` of inputs that ``validate`` accepted (NumPy arrays or torch tensors on any
    device holding values; copied to the host).

    Every value a query attends must be finite: all of ``q``; the own KV of every request with
    queries (ragged rows, or the paged cache's slots its block table and ``kv_lens`` give); the
    prefixes that such a request uses. Values no query attends (a cache's free blocks, the
    slots past a request's last token, a prefix nobody with queries uses) are not read.

    Raises:
        ValueError: a non-finite value a query attends, naming the argument (``q``, ``kv.k``,
            ``kv.v_cache``, ``prefixes[i].k``...) and the value's index in it.
    """
    d, hkv = meta.head_dim, meta.num_kv_heads
    attended = meta.q_lens > 0  # requests whose own KV and prefixes some query reads
    q64 = f64(q)
    require_finite("q", q64)
    if isinstance(kv, PagedKV):
        k_cache, v_cache = f64(kv.k_cache), f64(kv.v_cache)
        table = host_array(kv.block_table).astype(np.int64)
        read = _attended_slots(table, meta.kv_lens, attended, k_cache.shape[0], meta.block_size)
        require_finite("kv.k_cache", k_cache, read)
        require_finite("kv.v_cache", v_cache, read)
        own_k, own_v = [], []
        for b, n in enumerate(meta.kv_lens):
            blocks = table[b, : -(-int(n) // meta.block_size)]
            own_k.append(k_cache[blocks].reshape(-1, hkv, d)[:n])
            own_v.append(v_cache[blocks].reshape(-1, hkv, d)[:n])
        own_k, own_v = tuple(own_k), tuple(own_v)
    else:
        k, v = f64(kv.k), f64(kv.v)
        read = np.repeat(attended, meta.kv_lens)
        require_finite("kv.k", k, read)
        require_finite("kv.v", v, read)
        own_k, own_v = _split(k, meta.kv_lens), _split(v, meta.kv_lens)
    prefix_k, prefix_v = [], []
    for i, (level, lens, ids) in enumerate(zip(prefixes, meta.prefix_lens, meta.prefix_ids)):
        k, v = f64(level.k), f64(level.v)
        read = _attended_prefix_rows(ids, lens, attended)
        require_finite(f"prefixes[{i}].k", k, read)
        require_finite(f"prefixes[{i}].v", v, read)
        prefix_k.append(_split(k, lens))
        prefix_v.append(_split(v, lens))
    return Problem(meta=meta, q=q64, own_k=own_k, own_v=own_v, prefix_k=tuple(prefix_k), prefix_v=tuple(prefix_v))


def load(q, cu_seqlens_q, kv, prefixes=(), *, causal=True, softmax_scale=None) -> Problem:
    """Convert a call's arguments to host arrays, validate them, and read them in float64.

    Args:
        q, cu_seqlens_q, kv, prefixes, causal, softmax_scale: as ``relaycore.relay_attention``;
            arrays may be NumPy arrays, torch tensors, or anything ``np.asarray`` makes an array
            of numbers of (nested lists), which is then a NumPy array: beside a torch q, a
            metadata array on the host (``relaycore.validation.on_host``).

    Raises:
        TypeError, ValueError: an argument NumPy makes no array of numbers of (``_as_array``);
            from ``relaycore.validation.validate``; each naming the argument.
        ValueError: a non-finite value that a query attends (``from_validated``).
    """
    q = _as_array("q", q)
    cu_seqlens_q, kv, prefixes = _map_arrays(_as_array, cu_seqlens_q, kv, prefixes)
    if array_kind(q) == "torch":
        # validate the tensors as given: the copy to the host widens bfloat16 to float32,
        # which would hide a dtype mismatch between q and the KV
        validate(q, cu_seqlens_q, kv, prefixes, causal=causal, softmax_scale=softmax_scale)
    q = host_array(q)
    cu_seqlens_q, kv, prefixes = _map_arrays(lambda name, x: host_array(x), cu_seqlens_q, kv, prefixes)
    meta = validate(q, cu_seqlens_q, kv, prefixes, causal=causal, softmax_scale=softmax_scale)
    return from_validated(q, kv, prefixes, meta)
