"""Input validation: every bad input becomes a ``ValueError``/``TypeError`` naming the argument,
what was expected and what was received, before any backend runs.

``validate`` checks shapes, dtypes and devices, then reads the integer metadata (sequence
offsets, block tables, prefix ids) to the host and checks its values. It returns a ``BatchMeta``
with what it learned, so that backends never re-derive it.

Metadata on the host
    Beside torch q and KV, every metadata array (the offsets and lengths, the block table, the
    prefix ids) may be *on the host*: a NumPy array, or a CPU tensor beside tensors on a GPU.
    Its values are then read without a synchronization, so a batch whose metadata is all on the
    host is validated and planned without waiting for the GPU (``on_host``).
"""

from __future__ import annotations

import functools
import math
import sys
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Tuple

import numpy as np

from relaycore.constants import FLOAT_DTYPES, LOG2E
from relaycore.types import PagedKV, PrefixLevel, RaggedKV

INT_DTYPES = ("int32", "int64")



@dataclass(frozen=True)
class BatchMeta:
    """What validation learned about a batch (host-side NumPy copies of the metadata).

    Attributes:
        batch: ``B``.
        num_q_heads, num_kv_heads, head_dim: ``Hq``, ``Hkv``, ``D``.
        dtype: canonical name of q's dtype (``"float16"``, ``"bfloat16"``, ``"float32"``,
            ``"float64"``).
        array_kind: ``"numpy"`` or ``"torch"``.
        device: ``"cpu"`` for NumPy, else the torch device string (``"cuda:0"``).
        paged: whether the request KV is a ``PagedKV``.
        block_size: page size when paged, else 0.
        causal: causal masking of the request's own tokens.
        softmax_scale: the resolved scale.
        q_lens, kv_lens: int64 ``[B]``; ``kv_lens`` counts own tokens only.
        cu_seqlens_q: int64 ``[B + 1]``.
        prefix_lens: per level, int64 ``[P_l]``.
        prefix_ids: per level, int64 ``[B]`` (-1 = none).
        needs_grad: torch's grad mode is on and q, k or v (of the own KV or a prefix level)
            requires grad: the call is to be differentiated.
        host_block_table: int64 ``[B, max_blocks]``, the block table's values where it is not a
            tensor on q's device (``on_host``), 0 past each request's last block (entries never
            read): a backend that reads it on the device copies it there; ``None`` otherwise.
    """

    batch: int
    num_q_heads: int
    num_kv_heads: int
    head_dim: int
    dtype: str
    array_kind: str
    device: str
    paged: bool
    block_size: int
    causal: bool
    softmax_scale: float
    q_lens: np.ndarray
    kv_lens: np.ndarray
    cu_seqlens_q: np.ndarray
    prefix_lens: Tuple[np.ndarray, ...]
    prefix_ids: Tuple[np.ndarray, ...]
    needs_grad: bool = False
    host_block_table: Optional[np.ndarray] = None

    @property
    def group_size(self) -> int:
        """``Hq // Hkv``: query heads per KV head."""
        return self.num_q_heads // self.num_kv_heads

    @property
    def num_levels(self) -> int:
        return len(self.prefix_lens)

    @property
    def total_q(self) -> int:
        return int(self.cu_seqlens_q[-1])

    def context_lens(self) -> np.ndarray:
        """int64 ``[B]``: prefix tokens of every level plus own tokens, per request."""
        total = self.kv_lens.copy()
        for lens, ids in zip(self.prefix_lens, self.prefix_ids):
            total += np.where(ids >= 0, lens[np.maximum(ids, 0)] if len(lens) else 0, 0)
        return total


# ---------------------------------------------------------------------------------------------
# array-library neutral accessors


def array_kind(x: Any) -> Optional[str]:
    """``"numpy"``, ``"torch"`` (a ``torch.Tensor``, its subclasses included) or ``None`` for
    anything else. torch is not imported here: an object is a tensor only once torch is."""
    if isinstance(x, np.ndarray):
        return "numpy"
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        return "torch"
    return None


def dtype_name(x: Any) -> str:
    """Canonical dtype name of a NumPy array or torch tensor (``"bfloat16"``, ``"int32"``...;
    a NumPy array's in either byte order: ``>f8`` is ``"float64"``)."""
    if isinstance(x, np.ndarray):
        return _numpy_dtype_name(x.dtype)
    return str(x.dtype).replace("torch.", "")


@functools.lru_cache(maxsize=64)
def _numpy_dtype_name(dtype: np.dtype) -> str:
    """``dtype.name``, which NumPy builds in Python at every read (about 1.5 us: validation asks
    it of every array)."""
    return dtype.name


@functools.lru_cache(maxsize=64)
def _torch_dtype_name(dtype: Any) -> str:
    """``dtype_name`` of a tensor of this torch dtype (a ``str`` and a ``replace`` saved per read)."""
    return str(dtype).replace("torch.", "")


@functools.lru_cache(maxsize=64)
def _torch_device_name(device: Any) -> str:
    """``str(device)`` of a ``torch.device`` (about 0.4 us, asked of every tensor)."""
    return str(device)


def device_name(x: Any) -> str:
    return "cpu" if isinstance(x, np.ndarray) else str(x.device)


def on_host(x: Any, device: str) -> bool:
    """Whether metadata ``x`` of a call whose q is a tensor on ``device`` is on the host: a NumPy
    array, or a CPU tensor beside tensors on another device. Its values are read without a
    synchronization; a backend that needs them on ``device`` copies them there."""
    return isinstance(x, np.ndarray) or (device != "cpu" and str(x.device) == "cpu")


def to_host_ints(x: Any) -> np.ndarray:
    """Copy an integer array to a host int64 NumPy array (a device sync for GPU tensors)."""
    return _host_values(x).astype(np.int64, copy=False)


def _host_values(x: Any) -> np.ndarray:
    """The values of a NumPy array or tensor in a host NumPy array of its dtype: the array
    itself, or the tensor's (a device sync for GPU tensors; a view of a CPU tensor's memory)."""
    if isinstance(x, np.ndarray):
        return x
    torch = sys.modules.get("torch")
    if torch is not None and type(x) is torch.Tensor and x.is_cpu and not (x.requires_grad or x.is_neg()):
        return x.numpy()  # what the general form below gives such a tensor, in a third of its time
    return x.detach().resolve_neg().to("cpu").numpy()


def largest(a: np.ndarray) -> int:
    """The greatest value of a non-empty integer array, as a Python int: ``int(a.max())``, read
    at ``a.argmax()`` (``smallest``: ``argmin``). On a batch's few values a quarter of the time
    of ``max``, whose reduction machinery costs about 0.6 us; never slower on many."""
    return a.item(a.argmax())


def smallest(a: np.ndarray) -> int:
    """The least value of a non-empty integer array, as a Python int: ``int(a.min())`` (``largest``)."""
    return a.item(a.argmin())


def describe(x: Any) -> str:
    kind = array_kind(x)
    if kind is None:
        return f"{type(x).__name__}"
    return f"{kind} array of shape {tuple(x.shape)}, dtype {dtype_name(x)}, device {device_name(x)}"


# ---------------------------------------------------------------------------------------------
# checks


class _Checker:
    """Collects the array kind and device of the first array, and checks every other against it."""

    def __init__(self) -> None:
        self.kind: Optional[str] = None
        self.device: Optional[str] = None
        self.first: Optional[str] = None

    def array(self, name: str, x: Any, *, rank: int, dtypes: Sequence[str]) -> str:
        """Check a floating array; returns its ``dtype_name``."""
        kind, device, dtype = _facts(name, x)
        if self.kind is None:
            self.kind, self.device, self.first = kind, device, name
        elif kind != self.kind:
            raise TypeError(f"{name}: expected a {self.kind} array like {self.first}, got a {kind} array")
        elif device != self.device:
            raise ValueError(f"{name}: expected device {self.device} (the device of {self.first}), got {device}")
        _check_rank_dtype(name, x, rank, dtype, dtypes)
        return dtype

    def metadata(self, name: str, x: Any, *, rank: int) -> None:
        """An integer metadata array: on the first array's device, or beside torch tensors on
        the host (a NumPy array or a CPU tensor: ``on_host``)."""
        kind, device, dtype = _facts(name, x)
        host = self.kind == "torch" and (kind == "numpy" or device == "cpu")
        if not host and kind != self.kind:
            raise TypeError(f"{name}: expected a {self.kind} array like {self.first}, got a {kind} array")
        if not host and device != self.device:
            raise ValueError(f"{name}: expected device {self.device} (the device of {self.first}) or the host (a NumPy "
                             f"array or a CPU tensor), got {device}")
        _check_rank_dtype(name, x, rank, dtype, INT_DTYPES)


def _facts(name: str, x: Any) -> Tuple[str, str, str]:
    """``array_kind``, ``device_name`` and ``dtype_name`` of an array, which must be one
    (``check_dense``). A plain NumPy array or a strided ``torch.Tensor`` (the common case) is
    told at a glance; anything else goes through the general checks, which name what is wrong."""
    if type(x) is np.ndarray:  # neither a masked array nor an np.matrix
        return "numpy", "cpu", _numpy_dtype_name(x.dtype)
    torch = sys.modules.get("torch")
    if torch is not None and type(x) is torch.Tensor and x.layout is torch.strided:
        return "torch", _torch_device_name(x.device), _torch_dtype_name(x.dtype)
    kind = array_kind(x)
    if kind is None:
        raise TypeError(f"{name}: expected a NumPy array or torch tensor, got {describe(x)}")
    check_dense(name, x)
    return kind, device_name(x), dtype_name(x)


def _check_rank_dtype(name: str, x: Any, rank: int, dtype: str, dtypes: Sequence[str]) -> None:
    """Refuse an array ``x`` (of dtype name ``dtype``) not of this rank or not in ``dtypes``."""
    if x.ndim != rank:
        raise ValueError(f"{name}: expected rank {rank}, got shape {tuple(x.shape)} (rank {x.ndim})")
    if dtype not in dtypes:
        raise TypeError(f"{name}: expected dtype in {list(dtypes)}, got {dtype}")


def check_dense(name: str, x: Any) -> None:
    """Refuse arrays whose elements are not all their values, or whose arithmetic is not an
    array's: a NumPy masked array (its mask would be ignored), an ``np.matrix`` (``*`` is its
    matrix product), a sparse or otherwise non-strided torch tensor."""
    if isinstance(x, np.ma.MaskedArray):
        raise TypeError(f"{name}: expected a plain NumPy array, got a masked array (np.ma.MaskedArray); pass "
                        f"its .filled() values")
    if isinstance(x, np.matrix):
        raise TypeError(f"{name}: expected a plain NumPy array, got an np.matrix; pass np.asarray({name})")
    if array_kind(x) == "torch" and str(x.layout) != "torch.strided":
        raise TypeError(f"{name}: expected a dense (torch.strided) tensor, got layout {x.layout}; pass .to_dense()")


def _check_same(name: str, x: Any, dtype: str, ref_name: str, ref: Any, ref_dtype: str) -> None:
    """Refuse an array ``x`` (of dtype name ``dtype``) unlike ``ref`` in shape or dtype."""
    if x.shape != ref.shape and tuple(x.shape) != tuple(ref.shape):  # as tuples where the shapes' types differ
        raise ValueError(f"{name}: expected the shape of {ref_name} {tuple(ref.shape)}, got {tuple(x.shape)}")
    if dtype != ref_dtype:
        raise TypeError(f"{name}: expected the dtype of {ref_name} ({ref_dtype}), got {dtype}")


def _check_heads(name: str, x: Any, hq: int, d: int, head_axis: int) -> int:
    hkv, dx = int(x.shape[head_axis]), int(x.shape[head_axis + 1])
    if dx != d:
        raise ValueError(f"{name}: expected head_dim {d} (from q), got shape {tuple(x.shape)} with head_dim {dx}")
    if hkv == 0 or hq % hkv != 0:
        raise ValueError(
            f"{name}: expected a number of KV heads dividing the {hq} query heads, got {hkv} (shape {tuple(x.shape)})"
        )
    return hkv


def _lengths(name: str, offsets: np.ndarray, length: int, total: int, total_name: str) -> np.ndarray:
    """Check int64 offsets and return the lengths they delimit, ``offsets[1:] - offsets[:-1]``."""
    if offsets.shape != (length,):
        raise ValueError(f"{name}: expected shape ({length},), got {offsets.shape}")
    if offsets.item(0) != 0:
        raise ValueError(f"{name}: expected {name}[0] == 0, got {int(offsets[0])}")
    lengths = offsets[1:] - offsets[:-1]  # np.diff, without its Python-level dispatch
    # a difference of int64s can wrap around, but not between offsets >= 0: then a negative
    # length is a fall, and a negative offset after offsets[0] == 0 is one too
    if lengths.size and (smallest(offsets) < 0 or smallest(lengths) < 0):
        falls = offsets[1:] < offsets[:-1]
        i = int(np.argmax(falls))
        raise ValueError(
            f"{name}: expected non-decreasing offsets, got {name}[{i}] = {int(offsets[i])} > {name}[{i + 1}] = {int(offsets[i + 1])}"
        )
    if offsets.item(-1) != total:
        raise ValueError(f"{name}: expected the last offset to equal {total_name} = {total}, got {int(offsets[-1])}")
    return lengths


def check_block_ids(table: np.ndarray, blocks_needed: np.ndarray, num_blocks: int) -> np.ndarray:
    """Refuse a block table whose entries that a request reads are not blocks of the cache.

    Args:
        table: int32 or int64 ``[B, max_blocks]``, the block table's values.
        blocks_needed: int64 ``[B]``, the blocks each request reads (``ceil(kv_len / block_size)``,
            at most ``max_blocks``); the entries past them are never read, whatever they hold.
        num_blocks: the cache's block count.

    Returns:
        bool ``[B, max_blocks]``: the entries read.

    Raises:
        ValueError: naming the first entry read that is not in ``[0, num_blocks)``.
    """
    used = np.arange(table.shape[1])[None, :] < blocks_needed[:, None]
    if _all_blocks(table, num_blocks):
        return used
    bad = used & ((table < 0) | (table >= num_blocks))
    if np.count_nonzero(bad):
        b, j = (int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"kv.block_table: expected block ids in [0, {num_blocks}) (num_blocks of kv.k_cache), "
                         f"got block_table[{b}, {j}] = {int(table[b, j])}")
    return used


def _all_blocks(table: np.ndarray, num_blocks: int) -> bool:
    """Whether every entry of ``table``, read or not, is a block id in ``[0, num_blocks)`` (the
    common case, which two reductions tell)."""
    return not table.size or (smallest(table) >= 0 and largest(table) < num_blocks)


def _entries_read(table: np.ndarray, kv_lens: np.ndarray, block_size: int) -> np.ndarray:
    """int64 ``[B, max_blocks]``: ``table``'s values, 0 past each request's last block (the
    ``ceil(kv_len / block_size)`` blocks it reads, each count in ``[0, max_blocks]``)."""
    columns = table.shape[1]
    # check_block_ids's mask, its rows picked from _ramps: columns - ceil(k / s) == columns + k // -s
    used = _ramps(columns)[columns + kv_lens // -block_size]
    entries = np.zeros(table.shape, dtype=np.int64)
    np.copyto(entries, table, where=used)  # (np.where(used, table, 0), in half the time)
    return entries


@functools.lru_cache(maxsize=16)
def _ramps(columns: int) -> np.ndarray:
    """Read-only bool ``[columns + 1, columns]`` whose row ``columns - n`` is ``n`` True then
    False: windows onto one ``2 * columns`` pattern (no memory per row)."""
    pattern = np.arange(2 * columns) < columns
    return np.lib.stride_tricks.as_strided(pattern, (columns + 1, columns), (1, 1), writeable=False)


#: The range of ``softmax_scale``: ``softmax_scale * log2(e)``, which the Triton kernels take
#: as a float32, must be a normal float32 (a scale below it rounds to 0 or loses precision,
#: one above it to inf). One contract for every backend.
SCALE_RANGE = (float(np.finfo(np.float32).tiny) / LOG2E, float(np.finfo(np.float32).max) / LOG2E)


def resolve_scale(softmax_scale: Optional[float], head_dim: int) -> float:
    """``softmax_scale``, or ``1/sqrt(head_dim)`` when ``None``; must be finite, positive and
    within ``SCALE_RANGE``."""
    if softmax_scale is None:
        return 1.0 / math.sqrt(head_dim)
    if isinstance(softmax_scale, bool) or not isinstance(softmax_scale, (int, float, np.floating, np.integer)):
        raise TypeError(f"softmax_scale: expected a float or None, got {type(softmax_scale).__name__}")
    try:
        scale = float(softmax_scale)
    except OverflowError:
        raise ValueError("softmax_scale: expected a finite positive float, got an integer too large for a float") from None
    if not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"softmax_scale: expected a finite positive float, got {scale}")
    if not SCALE_RANGE[0] <= scale <= SCALE_RANGE[1]:
        raise ValueError(f"softmax_scale: expected a scale in [{SCALE_RANGE[0]:.3g}, {SCALE_RANGE[1]:.3g}], where "
                         f"softmax_scale * log2(e) is a normal float32, got {scale}")
    return scale


def validate(q, cu_seqlens_q, kv, prefixes=(), *, causal=True, softmax_scale=None) -> BatchMeta:
    """Check a relay-attention call and describe it.

    Args:
        q: ``[total_q, Hq, D]`` float16/bfloat16/float32/float64.
        cu_seqlens_q: int32/int64 ``[B + 1]``.
        kv: ``RaggedKV`` or ``PagedKV`` (see ``relaycore.types``).
        prefixes: a sequence of ``PrefixLevel``.
        causal: bool.
        softmax_scale: float or None.

    The metadata (``cu_seqlens_q``, the KV's offsets, lengths and block table, each level's
    ``cu_seqlens`` and ``prefix_ids``) is on q's device, or with torch q on the host (module
    doc); the floating arrays are on q's device.

    Returns:
        ``BatchMeta``.

    Raises:
        TypeError: wrong kind of object, dtype, or mixed array libraries.
        ValueError: wrong rank, shape, device, or metadata values.
    """
    c = _Checker()
    dtype = c.array("q", q, rank=3, dtypes=FLOAT_DTYPES)
    total_q, hq, d = map(int, q.shape)
    if hq == 0 or d == 0:
        raise ValueError(f"q: expected at least one head and head_dim >= 1, got shape {tuple(q.shape)}")
    c.metadata("cu_seqlens_q", cu_seqlens_q, rank=1)
    batch = int(cu_seqlens_q.shape[0]) - 1
    if batch < 0:
        raise ValueError("cu_seqlens_q: expected shape (B + 1,) with B >= 0, got shape (0,)")
    if not isinstance(causal, (bool, np.bool_)):
        raise TypeError(f"causal: expected a bool, got {type(causal).__name__}")
    scale = resolve_scale(softmax_scale, d)

    if isinstance(kv, RaggedKV):
        k_dtype = c.array("kv.k", kv.k, rank=3, dtypes=FLOAT_DTYPES)
        if k_dtype != dtype:
            raise TypeError(f"kv.k: expected q's dtype {dtype}, got {k_dtype}")
        v_dtype = c.array("kv.v", kv.v, rank=3, dtypes=FLOAT_DTYPES)
        _check_same("kv.v", kv.v, v_dtype, "kv.k", kv.k, k_dtype)
        hkv = _check_heads("kv.k", kv.k, hq, d, head_axis=1)
        c.metadata("kv.cu_seqlens", kv.cu_seqlens, rank=1)
        if tuple(kv.cu_seqlens.shape) != (batch + 1,):
            raise ValueError(f"kv.cu_seqlens: expected shape ({batch + 1},) (B + 1, B from cu_seqlens_q), got "
                             f"{tuple(kv.cu_seqlens.shape)}")
        block_size = 0
    elif isinstance(kv, PagedKV):
        k_dtype = c.array("kv.k_cache", kv.k_cache, rank=4, dtypes=FLOAT_DTYPES)
        if k_dtype != dtype:
            raise TypeError(f"kv.k_cache: expected q's dtype {dtype}, got {k_dtype}")
        v_dtype = c.array("kv.v_cache", kv.v_cache, rank=4, dtypes=FLOAT_DTYPES)
        _check_same("kv.v_cache", kv.v_cache, v_dtype, "kv.k_cache", kv.k_cache, k_dtype)
        hkv = _check_heads("kv.k_cache", kv.k_cache, hq, d, head_axis=2)
        block_size = int(kv.k_cache.shape[1])
        if block_size == 0:
            raise ValueError(f"kv.k_cache: expected block_size >= 1, got shape {tuple(kv.k_cache.shape)}")
        c.metadata("kv.block_table", kv.block_table, rank=2)
        if int(kv.block_table.shape[0]) != batch:
            raise ValueError(
                f"kv.block_table: expected {batch} rows (B from cu_seqlens_q), got shape {tuple(kv.block_table.shape)}"
            )
        c.metadata("kv.kv_lens", kv.kv_lens, rank=1)
        if tuple(kv.kv_lens.shape) != (batch,):
            raise ValueError(f"kv.kv_lens: expected shape ({batch},) (B from cu_seqlens_q), got {tuple(kv.kv_lens.shape)}")
    else:
        raise TypeError(f"kv: expected relaycore.RaggedKV or relaycore.PagedKV, got {type(kv).__name__}")

    check_prefix_levels(prefixes)
    for i, level in enumerate(prefixes):
        name = f"prefixes[{i}]"
        k_dtype = c.array(f"{name}.k", level.k, rank=3, dtypes=FLOAT_DTYPES)
        if k_dtype != dtype:
            raise TypeError(f"{name}.k: expected q's dtype {dtype}, got {k_dtype}")
        v_dtype = c.array(f"{name}.v", level.v, rank=3, dtypes=FLOAT_DTYPES)
        _check_same(f"{name}.v", level.v, v_dtype, f"{name}.k", level.k, k_dtype)
        h = _check_heads(f"{name}.k", level.k, hq, d, head_axis=1)
        if h != hkv:
            raise ValueError(f"{name}.k: expected {hkv} KV heads (as the request KV), got shape {tuple(level.k.shape)}")
        c.metadata(f"{name}.cu_seqlens", level.cu_seqlens, rank=1)
        if int(level.cu_seqlens.shape[0]) < 1:
            raise ValueError(f"{name}.cu_seqlens: expected shape (P + 1,) with P >= 0, got shape (0,)")
        c.metadata(f"{name}.prefix_ids", level.prefix_ids, rank=1)
        if tuple(level.prefix_ids.shape) != (batch,):
            raise ValueError(f"{name}.prefix_ids: expected shape ({batch},) (B from cu_seqlens_q), got "
                             f"{tuple(level.prefix_ids.shape)}")

    # ---- values (read to the host) ----
    host_block_table = None
    if c.device == "meta":
        raise ValueError(f"{c.first}: expected tensors that hold values, got tensors on the meta device")
    cu_q = to_host_ints(cu_seqlens_q)
    q_lens = _lengths("cu_seqlens_q", cu_q, batch + 1, total_q, "q.shape[0]")
    if isinstance(kv, RaggedKV):
        cu_k = to_host_ints(kv.cu_seqlens)
        kv_lens = _lengths("kv.cu_seqlens", cu_k, batch + 1, int(kv.k.shape[0]), "kv.k.shape[0]")
    else:
        kv_lens = to_host_ints(kv.kv_lens)
        if batch and smallest(kv_lens) < 0:
            b = int(np.argmax(kv_lens < 0))
            raise ValueError(f"kv.kv_lens: expected non-negative lengths, got kv_lens[{b}] = {int(kv_lens[b])}")
        max_blocks = int(kv.block_table.shape[1])
        if batch and -(-largest(kv_lens) // block_size) > max_blocks:  # the most blocks a request needs, from its length
            blocks_needed = -(-kv_lens // block_size)
            b = int(np.argmax(blocks_needed))
            raise ValueError(
                f"kv.block_table: expected at least {int(blocks_needed[b])} columns (request {b} needs them for "
                f"kv_lens {int(kv_lens[b])} at block_size {block_size}), got {max_blocks} columns"
            )
        table = _host_values(kv.block_table)  # int32 or int64: read as it is, never widened
        if not _all_blocks(table, int(kv.k_cache.shape[0])):  # the entries read may be blocks all the same
            check_block_ids(table, -(-kv_lens // block_size), int(kv.k_cache.shape[0]))
        if c.kind == "torch" and on_host(kv.block_table, c.device):  # a new array: the caller may write into its own
            host_block_table = _entries_read(table, kv_lens, block_size)  # 0 where never read
    if batch and largest(q_lens - kv_lens) > 0:  # both >= 0 here: their difference is exact
        b = int(np.argmax(q_lens > kv_lens))
        raise ValueError(
            f"cu_seqlens_q: expected q_len <= kv_len for every request (queries are the last own tokens), "
            f"got request {b} with q_len {int(q_lens[b])} > kv_len {int(kv_lens[b])}"
        )

    prefix_lens, prefix_ids = [], []
    for i, level in enumerate(prefixes):
        name = f"prefixes[{i}]"
        cu_p = to_host_ints(level.cu_seqlens)
        lengths = _lengths(f"{name}.cu_seqlens", cu_p, int(level.cu_seqlens.shape[0]), int(level.k.shape[0]),
                           f"{name}.k.shape[0]")
        num_prefixes = int(cu_p.shape[0]) - 1
        ids = to_host_ints(level.prefix_ids)
        if batch and (smallest(ids) < -1 or largest(ids) >= num_prefixes):  # two reductions tell the common case
            b = int(np.argmax((ids < -1) | (ids >= num_prefixes)))
            raise ValueError(
                f"{name}.prefix_ids: expected ids in [-1, {num_prefixes}) ({num_prefixes} prefixes at this level), "
                f"got prefix_ids[{b}] = {int(ids[b])}"
            )
        prefix_lens.append(lengths)
        prefix_ids.append(ids)

    return BatchMeta(
        batch=batch,
        num_q_heads=hq,
        num_kv_heads=hkv,
        head_dim=d,
        dtype=dtype,
        array_kind=c.kind,
        device=c.device,
        paged=isinstance(kv, PagedKV),
        block_size=block_size,
        causal=bool(causal),
        softmax_scale=scale,
        q_lens=q_lens,
        kv_lens=kv_lens,
        cu_seqlens_q=cu_q,
        prefix_lens=tuple(prefix_lens),
        prefix_ids=tuple(prefix_ids),
        needs_grad=c.kind == "torch" and needs_grad(q, kv, prefixes),
        host_block_table=host_block_table,
    )


def check_prefix_levels(prefixes) -> None:
    """Refuse ``prefixes`` that is not a list or tuple of ``PrefixLevel`` (a single level is
    one: a ``NamedTuple``).

    Raises:
        TypeError: naming ``prefixes`` or the level that is not a ``PrefixLevel``.
    """
    if isinstance(prefixes, PrefixLevel) or not isinstance(prefixes, (list, tuple)):
        raise TypeError(f"prefixes: expected a list or tuple of relaycore.PrefixLevel, got {type(prefixes).__name__}")
    for i, level in enumerate(prefixes):
        if not isinstance(level, PrefixLevel):
            raise TypeError(f"prefixes[{i}]: expected relaycore.PrefixLevel, got {type(level).__name__}")


def call_arrays(q, cu_seqlens_q, kv, prefixes) -> Tuple[Any, ...]:
    """Every array of a call, in one order (``call_array_names``): q, ``cu_seqlens_q``, the
    fields of ``kv``, then those of each prefix level."""
    return (q, cu_seqlens_q, *kv, *(x for level in prefixes for x in level))


@functools.lru_cache(maxsize=None)
def call_array_names(kv_fields: Tuple[str, ...], num_levels: int) -> Tuple[str, ...]:
    """The names of ``call_arrays`` as ``relay_attention`` names them (``kv_fields``: the KV
    type's ``_fields``)."""
    names = ["q", "cu_seqlens_q", *(f"kv.{field}" for field in kv_fields)]
    for i in range(num_levels):
        names += (f"prefixes[{i}].{field}" for field in PrefixLevel._fields)
    return tuple(names)


def needs_grad(q, kv, prefixes) -> bool:
    """Whether a torch call is to be differentiated: grad mode is on and q, k or v (of the own
    KV or a prefix level) requires grad."""
    import torch

    if not torch.is_grad_enabled():
        return False
    values = [q, kv[0], kv[1], *(x for level in prefixes for x in (level.k, level.v))]
    return any(getattr(x, "requires_grad", False) for x in values)
