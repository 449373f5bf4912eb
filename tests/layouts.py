"""Input layouts that validation takes and that the Gluon tile's copies cannot read in place,
for the tests of what the tile gets (``tests/test_hopper_host.py``, on the CPU) and of its
results (``tests/gpu/test_triton_gpu.py``); rows whose columns past ``D`` are NaN, for the tests
of a head_dim that is not a power of two."""

from __future__ import annotations

import torch

from relaycore import PagedKV, PrefixLevel
from relaycore.testing import Batch, make_batch

#: Each layout's name; ``with_layout`` makes it.
TILE_LAYOUTS = ("int64 block table", "level 0 misaligned", "level 0 head stride 1", "own KV misaligned")


def misaligned(x: torch.Tensor) -> torch.Tensor:
    """``x``'s values in a tensor that starts 2 bytes past a 16-byte boundary."""
    flat = torch.zeros(x.numel() + 8, dtype=x.dtype, device=x.device)
    view = flat[1:1 + x.numel()].view(x.shape)
    view.copy_(x)
    return view


def head_stride_one(x: torch.Tensor) -> torch.Tensor:
    """``x`` (``[rows, 1, D]``) with a stride of 1 on its axis of size 1: contiguous to torch."""
    y = torch.empty(x.shape[0], x.shape[2], 1, dtype=x.dtype, device=x.device).transpose(1, 2)
    y.copy_(x)
    return y


def tile_batch(layout: str) -> Batch:
    """One append request of 200 tokens over a 256-token prefix, pages of 16, GQA 4, D 128: its
    launch is a single pass that reads the prefix (a 128-row tile). Hkv 1 for a head stride of 1."""
    hkv = 1 if layout == "level 0 head stride 1" else 2
    return make_batch([200], [300], [[256]], [[0]], num_q_heads=4 * hkv, num_kv_heads=hkv, head_dim=128,
                      dtype="float16", block_size=16, seed=1)


def with_layout(layout: str, kv: PagedKV, level: PrefixLevel):
    """``(kv, level)`` holding the same values, ``layout`` applied."""
    if layout == "int64 block table":
        return PagedKV(kv.k_cache, kv.v_cache, kv.block_table.to(torch.int64), kv.kv_lens), level
    if layout == "own KV misaligned":
        return PagedKV(misaligned(kv.k_cache), misaligned(kv.v_cache), kv.block_table, kv.kv_lens), level
    odd = misaligned if layout == "level 0 misaligned" else head_stride_one
    return kv, PrefixLevel(odd(level.k), odd(level.v), level.cu_seqlens, level.prefix_ids)


def in_nan_padded_rows(args):
    """The arguments ``(q, cu_seqlens_q, kv, prefixes)`` of ``Batch.to_torch`` with q, every key
    and every value a view of the first ``D`` columns of rows 16 columns wider, whose other
    columns are NaN: a kernel that reads a column past ``D`` makes its result NaN."""

    def widened(x: torch.Tensor) -> torch.Tensor:
        rows = torch.full((*x.shape[:-1], x.shape[-1] + 16), float("nan"), dtype=x.dtype, device=x.device)
        rows[..., :x.shape[-1]] = x
        return rows[..., :x.shape[-1]]

    q, cu_seqlens_q, kv, prefixes = args
    if isinstance(kv, PagedKV):
        kv = kv._replace(k_cache=widened(kv.k_cache), v_cache=widened(kv.v_cache))
    else:
        kv = kv._replace(k=widened(kv.k), v=widened(kv.v))
    return widened(q), cu_seqlens_q, kv, [level._replace(k=widened(level.k), v=widened(level.v)) for level in prefixes]


def with_guarded_tail(shape, dtype, device="cpu") -> tuple:
    """``(out, tail_intact)``: a NaN-filled contiguous tensor of ``shape`` followed in memory by
    64 elements of a sentinel, and a function that says whether they still hold it."""
    count = 1
    for size in shape:
        count *= size
    room = torch.full((count + 64,), float("nan"), dtype=dtype, device=device)
    room[count:] = 7.0
    tail = room[count:]
    return room[:count].view(shape), lambda: bool((tail == 7.0).all())
