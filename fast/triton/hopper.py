"""The single-pass tile on Hopper (sm_90), warp-specialized in Gluon.

The same work and results as ``partial_kernel`` with ``SINGLE_PASS`` (``kernels``): program
(item, KV head) walks one tile of an append request's rows over the request's prefix (level 0)
and then its own keys up to the tile's causal limit, in one running state, and writes the rows'
results. Plain Triton runs this loop at about 470 TFLOP/s on an H200, the rate of a minimal
Triton flash-attention forward; the loop is serial there (scores, softmax, ``P @ V``). Here it
overlaps, as FlashAttention-3 does (``fast/triton/NOTES.md``, sessions 13-14):

* one producer warp copies each block's keys and values into shared memory and arrives on the
  block's ``ready`` barrier: a block whose keys are all before its part's end by tensor-memory
  copies (TMA: one box of the level, or of ragged own KV, or a box per page of a paged cache);
  the own block that crosses the part's end takes its whole boxes by TMA and the rest a row per
  key (``cp.async``, keys past the end zero-filled, never read), as does any other block (a
  prefix's short last block, pages TMA cannot take). On an H200 the row copies alone ran the
  tile 1.7x slower than the Triton tile, the boxes 1.0-1.3x faster, and the crossing block's
  boxes 3-16% more at Hkv 8 (``fast/triton/NOTES.md``, sessions 14-15);
* two consumer warpgroups hold 64 rows each; each issues block ``j``'s scores and block
  ``j - 1``'s ``P @ V`` together and runs block ``j``'s softmax while they run, and the two take
  turns issuing (``turns``), so one's softmax runs beside the other's products;
* a consumer releases a buffer (``empty``) once its products that read it are done.

Numerics: the online softmax of ``kernels.online_softmax_step`` in base 2, ``BLOCK_N`` keys a
step, with one difference of order: a block's ``P @ V`` is added to the accumulator before the
next block's rescale instead of after its own (``acc = (acc + P_j V_j) * alpha_{j+1}``). A key's
contribution is rescaled once per later step either way, so ``rounding.steps_per_token`` (which
counts 64-key steps, at least as many) bounds it (``proofs/error_bound.py``); its result's
division ``acc / l`` compiles to PTX ``div.full.f32`` as the Triton tile's does, within 2 ulp
(``rounding.DIVISION_STEPS``). A row's bits depend
on its request alone (the tile, its blocks and its steps follow from the request), not on the
batch; they differ from the Triton tile's, and a GPU runs one or the other for every request
(``usable``, and the own KV's layout: ``readable``).

Not run by the CPU interpreter: ``tests/gpu`` checks it against the oracle, and CI compiles it
for sm_90 (``resources.hopper_tile``, ``tests/test_kernel_resources.py``).
"""

from __future__ import annotations

import functools
from typing import Tuple

import torch
import triton

from relaycore.constants import LN2

from relaycore.fast.triton.kernels import ITEM_FIELDS

#: Triton releases whose Gluon API this module is written against: the GPU machine's 3.6.0 ran
#: it, CI compiles it with 3.7.1. Gluon is experimental and its API moves between releases
#: (3.6 names the warpgroup barrier ``thread_barrier``, 3.7 ``barrier``), so any other release
#: runs the Triton tile.
GLUON_RELEASES = ("3.6.", "3.7.")

try:  # Gluon: Hopper's asynchronous copies, barriers and warpgroup products
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.ampere import async_copy
    from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma, warpgroup_mma,
                                                                  warpgroup_mma_wait)
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor
except ImportError:  # pragma: no cover - an older triton runs the Triton tile everywhere
    gluon = None
if not triton.__version__.startswith(GLUON_RELEASES):  # pragma: no cover - see GLUON_RELEASES
    gluon = None

#: Keys per step.
BLOCK_N = 128
#: Key/value buffers in flight (3 x 64 KiB at head_dim 128, beside q's 32 KiB: 224 KiB of the 227).
NUM_BUF = 3
#: Rows per consumer warpgroup (the warpgroup product's height) and per tile (two consumers).
CONSUMER_M = 64
TILE_M = 2 * CONSUMER_M
#: Rows per asynchronous copy of the producer warp (8 per thread at head_dim 128).
COPY_ROWS = 16
#: Registers per thread: each consumer warpgroup, the producer warp (its warpgroup's). The 12 warps
#: start at 168 (64 KiB of registers over 384 threads); 2 x 128 x 208 + 128 x 88 is the same
#: total. At 56 the paged producer's page reads spilled 60 bytes, at 88 none (ptxas, sm_90), and
#: paged append ran up to 6% faster on an H200 (16 x 512 over 2048, Hkv 8: 646 -> 609 us).
CONSUMER_REGS, PRODUCER_REGS = 208, 88

HEAD_DIMS = (64, 128)
DTYPES = (torch.float16, torch.bfloat16)


def usable(q: torch.Tensor, head_dim: int, block_m: int) -> bool:
    """Whether the single-pass launches of a batch with q ``q`` run here: on an sm_90 GPU with a
    triton of ``GLUON_RELEASES``, for fp16/bf16 and head_dim 64 or 128, tiles of ``TILE_M``
    rows. Properties of the machine and the model only (and, in ``launch._sources``, of the own
    KV's layout: ``readable``, the same in every batch for a paged pool or ragged KV cut by
    rows), so a request's bits do not depend on its batch."""
    return (gluon is not None and q.is_cuda and q.dtype in DTYPES and head_dim in HEAD_DIMS and block_m == TILE_M
            and _capability(q.device.index) == (9, 0))


def readable(x: torch.Tensor) -> bool:
    """Whether the tile's copies read ``x`` (keys or values ``[..., Hkv, D]``) in place: its base
    16-byte aligned, its last axis contiguous and every other stride a multiple of 16 elements.
    Triton knows a pointer's alignment only from that specialization (16-byte pointers, integers
    divisible by 16; a stride of 1, even on an axis of size 1, is the constant 1), and the row
    copies (``cp.async``) need to know that each row is aligned to 4 bytes at least."""
    strides = x.stride()
    return x.data_ptr() % 16 == 0 and strides[-1] == 1 and all(s % 16 == 0 for s in strides[:-1])


@functools.lru_cache(maxsize=None)
def _capability(index: int) -> Tuple[int, int]:
    """A device's compute capability (asked once: every launch asks)."""
    return torch.cuda.get_device_capability(index)


def constexprs(num_q_heads: int, group: int, head_dim: int, paged: bool, page_size: int, causal: bool,
               items_listed: bool, own_box: int, padded: bool) -> dict:
    """``single_pass_tile``'s compile-time arguments, in signature order: the launch's (a paged
    own KV's ``page_size``, 1 for ragged; ``own_box`` from ``descriptors``; ``padded``: a graph
    plan's launch with a count, ``plan.Launch.count``) and this module's."""
    return dict(NUM_Q_HEADS=num_q_heads, GROUP=group, D=head_dim, PAGED=paged, PAGE_SIZE=page_size, CAUSAL=causal,
                ITEMS_LISTED=items_listed, PADDED=padded, NUM_ITEM_FIELDS=len(ITEM_FIELDS), LN2=LN2, BLOCK_N=BLOCK_N,
                NUM_BUF=NUM_BUF, CONSUMER_M=CONSUMER_M, COPY_ROWS=COPY_ROWS, OWN_BOX=own_box,
                BOX_ROWS=min(COPY_ROWS, own_box),
                CONSUMER_REGS=CONSUMER_REGS, PRODUCER_REGS=PRODUCER_REGS)


def _rows_descriptor(x: torch.Tensor, box_rows: int):
    """A tensor descriptor of ``x`` (``[..., Hkv, D]``, its rows packed: contiguous) as
    ``[rows, Hkv * D]`` with boxes of ``box_rows`` rows by one head, or ``None`` where the rows
    are not packed or not 16-byte aligned (the tensor-memory copy's requirements).

    A descriptor is its base and numbers that the base's dtype and shape fix: the first one of
    each kind is built (and checked) by ``TensorDescriptor``, the next ones are copies of it
    over their own base (``_descriptor_over``: building and checking a launch's four took about
    a sixth of an append call's host time on the H200 machine, ``fast/triton/NOTES.md``,
    session 29)."""
    hkv, d = x.shape[-2:]
    if not x.is_contiguous() or x.data_ptr() % 16 or (hkv * d * x.element_size()) % 16:
        return None
    return _descriptor_over(_rows_template(x.dtype, x.numel() // (hkv * d), hkv, d, box_rows), x)


@functools.lru_cache(maxsize=256)
def _rows_template(dtype: torch.dtype, rows: int, hkv: int, d: int, box_rows: int):
    """The ``TensorDescriptor`` of ``_rows_descriptor`` for a base of this dtype and shape, over
    no tensor (its ``base`` is ``None``: a template holds no memory)."""
    template = TensorDescriptor(torch.empty(0, dtype=dtype), [rows, hkv * d], [hkv * d, 1], [box_rows, d],
                                _box_layout(box_rows, d, dtype))
    template.base = None
    return template


def _descriptor_over(template, x: torch.Tensor):
    """``template`` (``_rows_template``) with ``x`` as its base: what ``TensorDescriptor`` would
    build from ``x`` and the template's numbers, without checking them again."""
    descriptor = object.__new__(type(template))
    descriptor.__dict__.update(template.__dict__)
    descriptor.base = x
    return descriptor


@functools.lru_cache(maxsize=None)
def _box_layout(box_rows: int, d: int, dtype: torch.dtype):
    """The shared-memory layout of a ``[box_rows, d]`` box (built once: every launch asks)."""
    return gl.NVMMASharedLayout.get_default_for([box_rows, d], _GL_DTYPES[dtype])


def descriptors(pre_k: torch.Tensor, pre_v: torch.Tensor, k: torch.Tensor, v: torch.Tensor, paged: bool):
    """The tensor descriptors ``single_pass_tile`` copies by, and its ``OWN_BOX``.

    Level 0's keys and values ``[rows, Hkv, D]``, contiguous and ``readable`` (the launches
    copy a level that is not, before they fork; a launch that does not read level 0 passes a
    stand-in that is): boxes of ``BLOCK_N`` rows. The own KV, ragged ``[rows, Hkv, D]`` or a paged cache
    ``[num_pages, page, Hkv, D]``: boxes of ``OWN_BOX`` rows, ``BLOCK_N`` (ragged, or pages of a
    multiple of ``BLOCK_N``) or one page (a divisor of ``BLOCK_N`` and a multiple of 8, the shared
    layout's swizzle period), or
    ``OWN_BOX = 0`` where neither applies: those keys are copied a row at a time. Either copy
    puts the same values in shared memory, so the choice changes no bit.

    Returns:
        ``(pre_k_desc, pre_v_desc, own_k_desc, own_v_desc, OWN_BOX)``; with ``OWN_BOX = 0`` the
        own descriptors are level 0's (not read).
    """
    pre = [_rows_descriptor(x, BLOCK_N) for x in (pre_k, pre_v)]
    box = BLOCK_N
    if paged:  # a box within one page, whole pages per block, rows a multiple of the swizzle period
        page = k.shape[1]
        box = page if page % 8 == 0 and BLOCK_N % page == 0 else BLOCK_N if page % BLOCK_N == 0 else 0
    own = [_rows_descriptor(x, box) for x in (k, v)] if box else [None, None]
    if None in own:
        return (*pre, *pre, 0)
    return (*pre, *own, box)


if gluon is not None:
    _GL_DTYPES = {torch.float16: gl.float16, torch.bfloat16: gl.bfloat16}
    _thread_barrier = getattr(gl, "thread_barrier", None) or gl.barrier  # triton 3.6 / 3.7

    @gluon.jit
    def _producer(pre_k_desc, pre_v_desc, own_k_desc, own_v_desc, pre_k_ptr, pre_v_ptr, k_ptr, v_ptr, table_ptr,
                  k_smem, v_smem, ready, empty, i_hk, kv_base, key_start, key_stop, prefix_start, prefix_len, n_pre,
                  num_blocks,
                  stride_pks, stride_pkh, stride_pvs, stride_pvh, stride_kb, stride_ks, stride_kh,
                  stride_vb, stride_vs, stride_vh, stride_table,
                  D: gl.constexpr, BLOCK_N: gl.constexpr, NUM_BUF: gl.constexpr, COPY_ROWS: gl.constexpr,
                  PAGED: gl.constexpr, PAGE_SIZE: gl.constexpr, OWN_BOX: gl.constexpr, BOX_ROWS: gl.constexpr):
        """Block ``j``: the prefix's keys ``j * BLOCK_N :`` for ``j < n_pre``, then the own keys
        from ``key_start``. A full block (every key before the part's end) is copied by tensor
        memory, ``BLOCK_N`` rows of the level or ``OWN_BOX``-row boxes of the own KV
        (``descriptors``); the own block that crosses the part's end takes its whole boxes by
        tensor memory and the rest a row per key; the others go a row per key. Keys past the
        part's end are zero-filled, never read."""
        layout: gl.constexpr = gl.BlockedLayout([1, 8], [32 * 8 // D, D // 8], [1, 1], [1, 0])
        o_r = gl.arange(0, COPY_ROWS, layout=gl.SliceLayout(1, layout))
        o_d = gl.expand_dims(gl.arange(0, D, layout=gl.SliceLayout(0, layout)), 0)
        full_pre = prefix_len // BLOCK_N
        for j in range(num_blocks):
            buf = j % NUM_BUF
            if j >= NUM_BUF:
                mbarrier.wait(empty.index(buf), ((j // NUM_BUF) - 1) & 1)
            own_key = key_start + (j - n_pre) * BLOCK_N
            if j < full_pre:
                _tma_block(pre_k_desc, pre_v_desc, k_smem.index(buf), v_smem.index(buf), ready.index(buf),
                           prefix_start + j * BLOCK_N, i_hk * D)
            elif OWN_BOX > 0 and j >= n_pre and own_key + BLOCK_N <= key_stop:
                _tma_own_block(own_k_desc, own_v_desc, table_ptr, k_smem.index(buf), v_smem.index(buf),
                               ready.index(buf), own_key, kv_base, stride_table, i_hk * D, BLOCK_N, OWN_BOX, PAGED,
                               PAGE_SIZE)
            elif OWN_BOX > 0 and j >= n_pre:
                _crossing_own_block(own_k_desc, own_v_desc, k_ptr, v_ptr, table_ptr, k_smem.index(buf),
                                    v_smem.index(buf), ready.index(buf), own_key, key_stop, kv_base, i_hk,
                                    stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh, stride_table,
                                    D, BLOCK_N, OWN_BOX, BOX_ROWS, PAGED, PAGE_SIZE)
            else:
                _copy_block(pre_k_ptr, pre_v_ptr, k_ptr, v_ptr, table_ptr, k_smem.index(buf), v_smem.index(buf),
                            ready.index(buf), j, o_r, o_d, i_hk, kv_base, key_start, key_stop, prefix_start,
                            prefix_len, n_pre, stride_pks, stride_pkh, stride_pvs, stride_pvh, stride_kb, stride_ks,
                            stride_kh, stride_vb, stride_vs, stride_vh, stride_table, BLOCK_N, COPY_ROWS, PAGED,
                            PAGE_SIZE)

    @gluon.jit
    def _tma_block(k_desc, v_desc, k_dst, v_dst, bar, row, col):
        """Rows ``row :`` of a level's keys and values, columns ``col :`` (one KV head), into a
        buffer: the barrier's one arrival, completed by the copies' bytes."""
        mbarrier.expect(bar, k_desc.block_type.nbytes + v_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(k_desc, [row, col], bar, k_dst)
        tma.async_copy_global_to_shared(v_desc, [row, col], bar, v_dst)

    @gluon.jit
    def _tma_own_block(k_desc, v_desc, table_ptr, k_dst, v_dst, bar, key0, kv_base, stride_table, col,
                       BLOCK_N: gl.constexpr, OWN_BOX: gl.constexpr, PAGED: gl.constexpr, PAGE_SIZE: gl.constexpr):
        """Own keys ``key0 : key0 + BLOCK_N`` of request ``kv_base`` (paged: a page table row;
        ragged: the first row), columns ``col :``, into a buffer in ``OWN_BOX``-row boxes: the
        barrier's one arrival, completed by the copies' bytes."""
        mbarrier.expect(bar, 2 * (BLOCK_N // OWN_BOX) * k_desc.block_type.nbytes)
        for b in gl.static_range(BLOCK_N // OWN_BOX):
            _tma_own_box(k_desc, v_desc, table_ptr, k_dst.slice(b * OWN_BOX, OWN_BOX),
                         v_dst.slice(b * OWN_BOX, OWN_BOX), bar, key0 + b * OWN_BOX, kv_base, stride_table, col,
                         PAGED, PAGE_SIZE)

    @gluon.jit
    def _tma_own_box(k_desc, v_desc, table_ptr, k_dst, v_dst, bar, key, kv_base, stride_table, col,
                     PAGED: gl.constexpr, PAGE_SIZE: gl.constexpr):
        """One box of own keys from ``key`` (within one page where paged), columns ``col :``, into
        ``k_dst``, ``v_dst``; the barrier expects its bytes already."""
        if PAGED:
            row = gl.load(table_ptr + kv_base * stride_table + key // PAGE_SIZE) * PAGE_SIZE + key % PAGE_SIZE
        else:
            row = kv_base + key
        tma.async_copy_global_to_shared(k_desc, [row, col], bar, k_dst)
        tma.async_copy_global_to_shared(v_desc, [row, col], bar, v_dst)

    @gluon.jit
    def _crossing_own_block(k_desc, v_desc, k_ptr, v_ptr, table_ptr, k_dst, v_dst, bar, key0, key_stop, kv_base, i_hk,
                            stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh, stride_table,
                            D: gl.constexpr, BLOCK_N: gl.constexpr, OWN_BOX: gl.constexpr, BOX_ROWS: gl.constexpr,
                            PAGED: gl.constexpr, PAGE_SIZE: gl.constexpr):
        """Own keys ``key0 : key0 + BLOCK_N`` of request ``kv_base`` where ``key_stop`` falls inside
        them: the ``OWN_BOX``-row boxes wholly before ``key_stop`` by tensor memory, the other rows
        ``BOX_ROWS`` at a time by ``cp.async``, zero-filled from ``key_stop``. One barrier: the
        rows' pending arrivals, then one arrival that expects the boxes' bytes."""
        layout: gl.constexpr = gl.BlockedLayout([1, 8], [32 * 8 // D, D // 8], [1, 1], [1, 0])
        o_r = gl.arange(0, BOX_ROWS, layout=gl.SliceLayout(1, layout))
        o_d = gl.expand_dims(gl.arange(0, D, layout=gl.SliceLayout(0, layout)), 0)
        n_boxes = (key_stop - key0) // OWN_BOX  # whole boxes, then the rows from box_end
        box_end = key0 + n_boxes * OWN_BOX
        for c in gl.static_range(BLOCK_N // BOX_ROWS):
            chunk = key0 + c * BOX_ROWS  # BOX_ROWS divides OWN_BOX: a chunk lies in one box, one page
            if chunk >= box_end:
                o_key = chunk + o_r
                page = 0
                if PAGED:  # one page table entry for the chunk
                    page = gl.load(table_ptr + kv_base * stride_table + chunk // PAGE_SIZE, mask=chunk < key_stop,
                                   other=0).to(gl.int64)
                p_k, p_v = _own_rows(k_ptr, v_ptr, page, o_key, kv_base, i_hk, stride_kb, stride_ks, stride_kh,
                                     stride_vb, stride_vs, stride_vh, PAGED, PAGE_SIZE)
                _copy_rows(k_dst.slice(c * BOX_ROWS, BOX_ROWS), v_dst.slice(c * BOX_ROWS, BOX_ROWS), p_k, p_v,
                           o_key < key_stop, o_d)
        async_copy.mbarrier_arrive(bar)  # each thread: a pending arrival, resolved when its copies land
        _thread_barrier()
        for b in gl.static_range(BLOCK_N // OWN_BOX):  # the one arrival: exactly one of these runs
            mbarrier.expect(bar, 2 * b * k_desc.block_type.nbytes, pred=n_boxes == b)
        for b in gl.static_range(BLOCK_N // OWN_BOX):
            if b < n_boxes:
                _tma_own_box(k_desc, v_desc, table_ptr, k_dst.slice(b * OWN_BOX, OWN_BOX),
                             v_dst.slice(b * OWN_BOX, OWN_BOX), bar, key0 + b * OWN_BOX, kv_base, stride_table,
                             i_hk * D, PAGED, PAGE_SIZE)

    @gluon.jit
    def _copy_block(pre_k_ptr, pre_v_ptr, k_ptr, v_ptr, table_ptr, k_dst, v_dst, bar, j, o_r, o_d, i_hk, kv_base,
                    key_start, key_stop, prefix_start, prefix_len, n_pre, stride_pks, stride_pkh, stride_pvs,
                    stride_pvh, stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh, stride_table,
                    BLOCK_N: gl.constexpr, COPY_ROWS: gl.constexpr, PAGED: gl.constexpr, PAGE_SIZE: gl.constexpr):
        """Block ``j``'s keys and values a row per key (``_producer``), then the barrier's one
        arrival, held open until every thread's copies have landed."""
        for c in gl.static_range(BLOCK_N // COPY_ROWS):
            if j < n_pre:
                o_key = j * BLOCK_N + c * COPY_ROWS + o_r
                m_key = o_key < prefix_len
                o_row = (prefix_start + o_key).to(gl.int64)
                p_k = pre_k_ptr + o_row * stride_pks + i_hk * stride_pkh
                p_v = pre_v_ptr + o_row * stride_pvs + i_hk * stride_pvh
            else:
                o_key = key_start + (j - n_pre) * BLOCK_N + c * COPY_ROWS + o_r
                m_key = o_key < key_stop
                o_page = 0
                if PAGED:  # a page table entry per row
                    o_page = gl.load(table_ptr + kv_base * stride_table + o_key // PAGE_SIZE, mask=m_key,
                                     other=0).to(gl.int64)
                p_k, p_v = _own_rows(k_ptr, v_ptr, o_page, o_key, kv_base, i_hk, stride_kb, stride_ks, stride_kh,
                                     stride_vb, stride_vs, stride_vh, PAGED, PAGE_SIZE)
            _copy_rows(k_dst.slice(c * COPY_ROWS, COPY_ROWS), v_dst.slice(c * COPY_ROWS, COPY_ROWS), p_k, p_v, m_key,
                       o_d)
        async_copy.mbarrier_arrive(bar)  # each thread: a pending arrival, resolved when its copies land
        _thread_barrier()
        mbarrier.arrive(bar, count=1)

    @gluon.jit
    def _own_rows(k_ptr, v_ptr, page, o_key, kv_base, i_hk, stride_kb, stride_ks, stride_kh, stride_vb, stride_vs,
                  stride_vh, PAGED: gl.constexpr, PAGE_SIZE: gl.constexpr):
        """Pointers to own keys ``o_key`` of request ``kv_base``, one KV head: in ``page`` (int64,
        one per key or one for all; paged) or at rows ``kv_base + o_key`` (ragged)."""
        if PAGED:
            o_slot = (o_key % PAGE_SIZE).to(gl.int64)
            p_k = k_ptr + page * stride_kb + o_slot * stride_ks + i_hk * stride_kh
            p_v = v_ptr + page * stride_vb + o_slot * stride_vs + i_hk * stride_vh
        else:
            o_row = (kv_base + o_key).to(gl.int64)
            p_k = k_ptr + o_row * stride_ks + i_hk * stride_kh
            p_v = v_ptr + o_row * stride_vs + i_hk * stride_vh
        return p_k, p_v

    @gluon.jit
    def _copy_rows(k_dst, v_dst, p_k, p_v, m_key, o_d):
        """``cp.async`` of the key and value rows at ``p_k``, ``p_v`` (columns ``o_d``) into
        ``k_dst``, ``v_dst``; rows where ``m_key`` is false are zero-filled, not read."""
        m_copy = gl.expand_dims(m_key, 1)
        async_copy.async_copy_global_to_shared(k_dst, gl.expand_dims(p_k, 1) + o_d, mask=m_copy)
        async_copy.async_copy_global_to_shared(v_dst, gl.expand_dims(p_v, 1) + o_d, mask=m_copy)

    @gluon.jit
    def _row_tokens(o_row, m_row, tok_first, tok_ptr, tok_base, GROUP: gl.constexpr):
        """int64: the token of each tile row ``o_row`` (``m_row``: real rows), consecutive from
        ``tok_first`` or, where that is negative, read from the item's token list."""
        if tok_first >= 0:
            o_tok = (tok_first + o_row // GROUP).to(gl.int64)
        else:
            o_tok = gl.load(tok_ptr + tok_base + o_row // GROUP, mask=m_row, other=0).to(gl.int64)
        return o_tok

    @gluon.jit
    def _consumer(q_ptr, out_ptr, lse_ptr, q_smem, k_smem, v_smem, ready, empty, turns, me, row0, num_rows, tok_base,
                  tok_first, tok_ptr, i_hk, key_start, key_stop, causal_shift, prefix_len, n_pre, num_blocks,
                  qk_scale, stride_qt, stride_qh,
                  GROUP: gl.constexpr, NUM_Q_HEADS: gl.constexpr, D: gl.constexpr, BLOCK_N: gl.constexpr,
                  NUM_BUF: gl.constexpr, CONSUMER_M: gl.constexpr, CAUSAL: gl.constexpr, LN2: gl.constexpr):
        """The tile's rows ``me * CONSUMER_M :`` over every block, then their results."""
        dtype: gl.constexpr = q_ptr.dtype.element_ty
        ld_layout: gl.constexpr = gl.BlockedLayout([1, 8], [32 * 8 // D, D // 8], [4, 1], [1, 0])
        s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                           instr_shape=[16, BLOCK_N, 16])
        o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                           instr_shape=[16, D, 16])
        p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
        row_s: gl.constexpr = gl.SliceLayout(1, s_layout)
        row_o: gl.constexpr = gl.SliceLayout(1, o_layout)

        # q's rows (token, query head of the group) into this consumer's buffer
        first = me * CONSUMER_M
        o_m = gl.arange(0, CONSUMER_M, layout=gl.SliceLayout(1, ld_layout))
        m_row = first + o_m < num_rows
        o_row = row0 + first + o_m
        o_tok = _row_tokens(o_row, m_row, tok_first, tok_ptr, tok_base, GROUP)
        o_head = i_hk * GROUP + o_row % GROUP
        o_d = gl.arange(0, D, layout=gl.SliceLayout(0, ld_layout))
        p_q = q_ptr + gl.expand_dims(o_tok * stride_qt + o_head * stride_qh, 1) + gl.expand_dims(o_d, 0)
        q_smem.store(gl.load(p_q, mask=gl.expand_dims(m_row, 1), other=0.0))
        fence_async_shared()
        _thread_barrier()  # every warp's rows stored before the warpgroup's products read them

        # the causal limit of each row: its token's index in the item, in the scores' layout
        o_j = (row0 + first + gl.arange(0, CONSUMER_M, layout=row_s)) // GROUP
        o_n = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, s_layout))
        # blocks every row of the tile sees in full need no mask: the prefix's but a short last
        # one, and the own blocks below the tile's first row's causal limit
        full_pre = prefix_len // BLOCK_N
        full_stop = key_stop
        if CAUSAL:
            full_stop = gl.minimum(key_stop, causal_shift + row0 // GROUP + 1)
        full_own = gl.maximum(full_stop - key_start, 0) // BLOCK_N

        m_i = gl.full([CONSUMER_M], float("-inf"), gl.float32, layout=row_s)
        l_i = gl.zeros([CONSUMER_M], gl.float32, layout=row_s)
        acc = gl.zeros([CONSUMER_M, D], gl.float32, layout=o_layout)
        zero_s = gl.zeros([CONSUMER_M, BLOCK_N], gl.float32, layout=s_layout)
        p = gl.zeros([CONSUMER_M, BLOCK_N], dtype, layout=p_layout)
        for j in range(num_blocks):
            buf = j % NUM_BUF
            prev = (j + NUM_BUF - 1) % NUM_BUF
            mbarrier.wait(ready.index(buf), (j // NUM_BUF) & 1)
            mbarrier.wait(turns.index(me), j & 1)
            s = warpgroup_mma(q_smem, k_smem.index(buf).permute((1, 0)), zero_s, use_acc=False, is_async=True)
            # block j - 1's P V (at j = 0, P is zero over block 0's values, zero-filled or finite)
            v_buf = prev + (buf - prev) * (j == 0).to(gl.int32)
            acc = warpgroup_mma(p, v_smem.index(v_buf), acc, is_async=True)
            mbarrier.arrive(turns.index(1 - me), count=1)
            s = warpgroup_mma_wait(num_outstanding=1, deps=(s, ))
            if j < n_pre:
                if j >= full_pre:  # the prefix's short last block
                    s = gl.where(gl.expand_dims(j * BLOCK_N + o_n < prefix_len, 0), s, float("-inf"))
            elif j - n_pre >= full_own:  # own keys past the end or the row's causal limit
                o_key = gl.expand_dims(key_start + (j - n_pre) * BLOCK_N + o_n, 0)
                seen = o_key < key_stop
                if CAUSAL:
                    seen = seen & (o_key <= causal_shift + gl.expand_dims(o_j, 1))
                s = gl.where(seen, s, float("-inf"))
            m_new = gl.maximum(m_i, gl.max(s, axis=1) * qk_scale)
            m_safe = gl.where(m_new == float("-inf"), 0.0, m_new)  # nothing seen yet: weights all 0
            w = gl.exp2(s * qk_scale - gl.expand_dims(m_safe, 1))
            alpha = gl.exp2(m_i - m_safe)
            l_i = l_i * alpha + gl.sum(w, axis=1)
            m_i = m_new
            acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc, ))
            if j > 0:
                mbarrier.arrive(empty.index(prev), count=1)
            acc = acc * gl.expand_dims(gl.convert_layout(alpha, row_o), 1)
            p = gl.convert_layout(w.to(dtype), p_layout)
        last = (num_blocks - 1) % NUM_BUF
        acc = warpgroup_mma(p, v_smem.index(last), acc, is_async=True)
        acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc, ))
        mbarrier.arrive(empty.index(last), count=1)

        # the results: out = acc / l in q's dtype, lse in natural log; (0, -inf) for a row that
        # saw no key
        l_o = gl.convert_layout(l_i, row_o)
        seen_any = l_o > 0
        l_safe = gl.where(seen_any, l_o, 1.0)
        b_out = acc / gl.expand_dims(l_safe, 1)
        b_lse = gl.where(seen_any, (gl.convert_layout(m_i, row_o) + gl.log2(l_safe)) * LN2, float("-inf"))
        o_mo = gl.arange(0, CONSUMER_M, layout=row_o)
        m_out = first + o_mo < num_rows
        r_out = row0 + first + o_mo
        t_out = _row_tokens(r_out, m_out, tok_first, tok_ptr, tok_base, GROUP)
        o_result = t_out * NUM_Q_HEADS + i_hk * GROUP + r_out % GROUP
        o_do = gl.arange(0, D, layout=gl.SliceLayout(0, o_layout))
        gl.store(out_ptr + gl.expand_dims(o_result * D, 1) + gl.expand_dims(o_do, 0), b_out.to(dtype),
                 mask=gl.expand_dims(m_out, 1))
        gl.store(lse_ptr + o_result, b_lse, mask=m_out)

    # An item's first token as a constant (Triton specializes an integer argument equal to 1)
    # does not compile with triton 3.6.0: its LLVM lowering fails an assertion (`idx < size()`
    # in ConvertTritonGPUToLLVM) at head_dim 64 and 128. A batch of one decode token, then one
    # append request, passes 1 (the request's tokens start at 1 and its launch's items are
    # computed, not listed), so the tile takes it as a value, as it takes any other.
    @gluon.jit(do_not_specialize=["grid_tok_first"])
    def single_pass_tile(
        q_ptr, pre_k_desc, pre_v_desc, own_k_desc, own_v_desc, pre_k_ptr, pre_v_ptr, k_ptr, v_ptr, items_ptr, tok_ptr,
        table_ptr, out_ptr, lse_ptr,
        qk_scale, stride_qt, stride_qh, stride_pks, stride_pkh, stride_pvs, stride_pvh,
        stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh, stride_table,
        grid_rows, grid_tiles, grid_chunk, grid_len, grid_kv_base, grid_shift, grid_tok_first, grid_prefix_start,
        grid_prefix_len, count_ptr,
        NUM_Q_HEADS: gl.constexpr, GROUP: gl.constexpr, D: gl.constexpr, PAGED: gl.constexpr,
        PAGE_SIZE: gl.constexpr, CAUSAL: gl.constexpr, ITEMS_LISTED: gl.constexpr, PADDED: gl.constexpr,
        NUM_ITEM_FIELDS: gl.constexpr,
        LN2: gl.constexpr, BLOCK_N: gl.constexpr, NUM_BUF: gl.constexpr, CONSUMER_M: gl.constexpr,
        COPY_ROWS: gl.constexpr, OWN_BOX: gl.constexpr, BOX_ROWS: gl.constexpr, CONSUMER_REGS: gl.constexpr,
        PRODUCER_REGS: gl.constexpr,
    ):
        """A single-pass request's tile of ``2 * CONSUMER_M`` rows, one KV head: its results.

        Grid ``(num_items, Hkv)``, 4 warps (the first consumer; the second and the producer
        are workers). The arguments are ``partial_kernel``'s of a single-pass launch (``q``,
        level 0's rows ``pre_k/pre_v``, the own KV ragged or paged, the items listed or
        ``grid_*``), level 0's and the own KV's rows also as tensor descriptors
        (``descriptors``, which gives ``OWN_BOX``), ``out`` contiguous ``[total_q, Hq, D]`` in q's dtype, ``lse`` fp32
        ``[total_q, Hq]`` in natural log; ``count_ptr`` int32 ``[1]``, the step's items where
        ``PADDED`` (a graph plan's launch: the programs past them exit).
        """
        i_item = gl.program_id(0)
        i_hk = gl.program_id(1)
        if PADDED:  # read beside the item's fields, not before them: a real item waits for one read
            num_items = gl.load(count_ptr)
        if ITEMS_LISTED:
            p_item = items_ptr + i_item * NUM_ITEM_FIELDS
            tok_base = gl.load(p_item + 0)
            row0 = gl.load(p_item + 1)
            num_rows = gl.load(p_item + 2)
            kv_base = gl.load(p_item + 3)
            key_start = gl.load(p_item + 4)
            key_end = gl.load(p_item + 5)
            causal_shift = gl.load(p_item + 6)
            tok_first = gl.load(p_item + 8)
            prefix_start = gl.load(p_item + 9)
            prefix_len = gl.load(p_item + 10)
        else:  # item i is tile i % tiles of chunk i // tiles of one request (plan.regular_items)
            tok_base = 0
            chunk = i_item // grid_tiles
            row0 = (i_item % grid_tiles) * (2 * CONSUMER_M)
            num_rows = gl.minimum(grid_rows - row0, 2 * CONSUMER_M)
            kv_base = grid_kv_base
            key_start = chunk * grid_chunk
            key_end = gl.minimum(key_start + grid_chunk, grid_len)
            causal_shift = grid_shift
            tok_first = grid_tok_first
            prefix_start = grid_prefix_start
            prefix_len = grid_prefix_len
        if PADDED:
            if i_item >= num_items:  # past the step's items
                return
        key_stop = key_end
        if CAUSAL:
            key_stop = gl.minimum(key_end, causal_shift + (row0 + num_rows - 1) // GROUP + 1)
        n_pre = gl.cdiv(prefix_len, BLOCK_N)
        num_blocks = n_pre + gl.cdiv(gl.maximum(key_stop - key_start, 0), BLOCK_N)

        dtype: gl.constexpr = q_ptr.dtype.element_ty
        q_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([CONSUMER_M, D], dtype)
        kv_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_N, D], dtype)
        q_smem = gl.allocate_shared_memory(dtype, [2, CONSUMER_M, D], q_layout)
        k_smem = gl.allocate_shared_memory(dtype, [NUM_BUF, BLOCK_N, D], kv_layout)
        v_smem = gl.allocate_shared_memory(dtype, [NUM_BUF, BLOCK_N, D], kv_layout)
        ready = gl.allocate_shared_memory(gl.int64, [NUM_BUF, 1], mbarrier.MBarrierLayout())
        empty = gl.allocate_shared_memory(gl.int64, [NUM_BUF, 1], mbarrier.MBarrierLayout())
        turns = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
        for i in gl.static_range(NUM_BUF):
            mbarrier.init(ready.index(i), count=1)  # the producer's
            mbarrier.init(empty.index(i), count=2)  # the consumers
        mbarrier.init(turns.index(0), count=1)
        mbarrier.init(turns.index(1), count=1)
        mbarrier.arrive(turns.index(0), count=1)  # consumer 0 issues first
        gl.warp_specialize([
            (_consumer, (q_ptr, out_ptr, lse_ptr, q_smem.index(0), k_smem, v_smem, ready, empty, turns, 0, row0,
                         num_rows, tok_base, tok_first, tok_ptr, i_hk, key_start, key_stop, causal_shift, prefix_len,
                         n_pre, num_blocks, qk_scale, stride_qt, stride_qh, GROUP, NUM_Q_HEADS, D, BLOCK_N, NUM_BUF,
                         CONSUMER_M, CAUSAL, LN2)),
            (_consumer, (q_ptr, out_ptr, lse_ptr, q_smem.index(1), k_smem, v_smem, ready, empty, turns, 1, row0,
                         num_rows, tok_base, tok_first, tok_ptr, i_hk, key_start, key_stop, causal_shift, prefix_len,
                         n_pre, num_blocks, qk_scale, stride_qt, stride_qh, GROUP, NUM_Q_HEADS, D, BLOCK_N, NUM_BUF,
                         CONSUMER_M, CAUSAL, LN2)),
            (_producer, (pre_k_desc, pre_v_desc, own_k_desc, own_v_desc, pre_k_ptr, pre_v_ptr, k_ptr, v_ptr, table_ptr,
                         k_smem, v_smem, ready, empty, i_hk, kv_base, key_start, key_stop, prefix_start, prefix_len,
                         n_pre, num_blocks,
                         stride_pks, stride_pkh, stride_pvs, stride_pvh, stride_kb, stride_ks, stride_kh,
                         stride_vb, stride_vs, stride_vh, stride_table, D, BLOCK_N, NUM_BUF, COPY_ROWS, PAGED,
                         PAGE_SIZE, OWN_BOX, BOX_ROWS)),
        ], [4, 1], [CONSUMER_REGS, PRODUCER_REGS])
