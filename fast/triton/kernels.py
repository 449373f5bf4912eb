"""The Triton kernels: one partial-attention kernel and one merge kernel.

Both work in base 2 (``exp2``/``log2`` are the GPU's fast instructions): scores are scaled by
``softmax_scale * LOG2E`` once, states carry ``lse2 = lse * LOG2E``, and the merge kernel converts
back to natural log with ``LN2`` when it writes the result. Nothing else crosses a boundary in
base 2. The divisions (``finish_state``'s ``acc / l``, ``fold_slots``' and ``fold_row``'s
``acc / sum``) are Triton's fp32 ``/``, PTX ``div.full.f32``: within 2 ulp, not rounded to
nearest, which ``rounding.DIVISION_STEPS`` prices (``tl.math.div_rn`` would round them).

Notation (fla's habit): ``i_`` program ids, ``o_`` offsets, ``m_`` masks, ``b_`` block values,
``p_`` pointers.

``partial_kernel``
    One program = one *work item* (a tile of up to ``BLOCK_M`` rows over one chunk of one KV
    segment) x one KV head. A row is (query token, query head of the KV head's group); the
    tile's rows come from a host-planned token list, so a prefix tile holds the queries of every
    request that shares the prefix (the relay split) and an own tile the queries of one
    request. It runs the online softmax over the chunk with ``tl.dot`` and writes the chunk's
    state ``(out, lse2)`` in fp32 to the row's scratch slot.
``merge_kernel``
    One program = one (query token, query head) row. It folds every slot of the token (prefix
    levels in order, chunks in order, then the own chunks) in that fixed order, normalizes, and
    writes ``out`` in q's dtype and ``lse`` in natural log: ``fold_slots``'s arithmetic for one
    row, with the row's values as scalars. Where some tokens have no slots (single-pass
    requests'), its programs run over a list of the others (``TOKENS_LISTED``).
``partial_kernel`` with ``SINGLE_PASS``
    An own tile of a request that reads its whole context in one pass
    (``plan.single_pass_requests``): the program walks the request's prefix, if any, then its
    own chunk, in one running state and writes the rows' results; those tokens have no slots
    and the merge leaves them alone.
``partial_kernel`` with ``PADDED``
    A graph plan's launch (``relaycore.fast.triton.graph``): its grid is fixed, and the programs
    past the step's item count, which they read from the device, exit.
``partial_kernel`` with ``FUSED_MERGE``
    The merge without its launch: after writing its states, a program counts one arrival per
    row (an atomic add on the row's counter, ordered after every store of the tile), and the
    program that brings a row's count to its slot count folds that row's slots, exactly as the
    merge kernel does (``fold_slots``: the merge kernel's operations per row, so the same bits),
    then resets the counter.
    Which program that is depends on timing; what it computes does not.
"""

from __future__ import annotations

import triton
import triton.language as tl

#: Fields of one work item (int32 each), in order. See ``relaycore.fast.triton.plan``.
ITEM_FIELDS = ("tok_base", "row0", "num_rows", "kv_base", "key_start", "key_end", "causal_shift", "chunk", "tok_first",
               "prefix_start", "prefix_len")
NUM_ITEM_FIELDS = tl.constexpr(len(ITEM_FIELDS))


@triton.jit
def online_softmax_step(b_acc, b_m, b_l, b_s, b_v, m_seen, qk_scale, P_DTYPE: tl.constexpr,
                        DOT_PRECISION: tl.constexpr, MASKED: tl.constexpr):
    """One block of keys folded into a running state (base 2).

    Args:
        b_acc: fp32 ``[M, D]`` unnormalized output so far.
        b_m: fp32 ``[M]`` running max of the base-2 scores (``-inf`` before any key is seen).
        b_l: fp32 ``[M]`` running sum of ``exp2(score - b_m)``.
        b_s: fp32 ``[M, N]`` raw scores ``q . k`` of this block.
        b_v: ``[N, D]`` values of this block.
        m_seen: bool ``[M, N]``: which scores are seen (``MASKED`` only).
        qk_scale: ``softmax_scale * LOG2E`` (positive, so the max of the scaled scores is the
            scaled max).
        P_DTYPE: the dtype the weights are rounded to before the ``P @ V`` product.
        MASKED: whether some score of the block is unseen. Unmasked blocks skip the selects:
            where every score is seen they are the identity, so both forms give the same bits.

    Returns:
        The updated ``(b_acc, b_m, b_l)``. Rows that have seen no key stay ``(0, -inf, 0)``.
    """
    if MASKED:
        b_s = tl.where(m_seen, b_s, float("-inf"))
    m_new = tl.maximum(b_m, tl.max(b_s, 1) * qk_scale)
    m_safe = m_new
    if MASKED:
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # nothing seen yet: weights all 0
    alpha = tl.exp2(b_m - m_safe)
    b_p = tl.exp2(b_s * qk_scale - m_safe[:, None])
    b_l = b_l * alpha + tl.sum(b_p, 1)
    b_acc = tl.dot(b_p.to(P_DTYPE), b_v, b_acc * alpha[:, None], input_precision=DOT_PRECISION)
    return b_acc, m_new, b_l


@triton.jit
def finish_state(b_acc, b_m, b_l):
    """Normalize a running state: ``(out, lse2)``, or ``(0, -inf)`` for rows that saw no key."""
    seen = b_l > 0
    b_l_safe = tl.where(seen, b_l, 1.0)
    b_out = b_acc / b_l_safe[:, None]
    b_lse2 = tl.where(seen, b_m + tl.log2(b_l_safe), float("-inf"))
    return b_out, b_lse2


#: Slots whose states ``fold_slots`` reads together in its weighted pass, for up to
#: ``FOLD_STATES // FOLD_DEPTH`` rows; taller folds read ``FOLD_STATES // rows`` (the states in
#: flight are held in registers).
FOLD_DEPTH = tl.constexpr(4)
FOLD_STATES = tl.constexpr(64)


@triton.jit
def fold_slots(part_out_ptr, part_lse_ptr, o_first, b_count, o_head,
               NUM_Q_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, LN2: tl.constexpr):
    """Fold rows' chunk states, in slot order, into their results.

    Two passes over the slots: the max of the ``lse2`` (so no weight overflows), then
    ``out = sum_i w_i out_i / sum_i w_i`` with ``w_i = exp2(lse2_i - max)``, summed in slot
    order. Each row's arithmetic is its own (no reduction crosses rows), so a row's bits do not
    depend on the rows folded beside it, nor on which kernel folds it. The passes are latency
    bound (a few slots, each a read from L2): the first reads ``SLOTS`` slots' ``lse2`` at once,
    the second is unrolled ``FOLD_DEPTH`` slots deep (fewer for more than 16 rows) so that their
    reads are in flight together; the sums stay in slot order, so neither changes a bit.

    Args:
        part_out_ptr: fp32 ``[num_slots, Hq, D]``.
        part_lse_ptr: fp32 ``[num_slots, Hq]`` (base 2).
        o_first: int64 ``[R]``: each row's first slot.
        b_count: int32 ``[R]``: each row's slot count (0 for a row not folded here).
        o_head: ``[R]``: each row's query head.
        LN2: ``ln 2``, to convert ``lse2`` at the boundary.

    Returns:
        ``(out fp32 [R, BLOCK_D], lse fp32 [R])`` (columns from ``D`` on are 0), natural log;
        ``(0, -inf)`` for a row with no slot
        or whose slots saw no key. States are read past L1 (``.cg``): other programs wrote
        them.
    """
    SLOTS: tl.constexpr = 16
    DEPTH: tl.constexpr = min(FOLD_DEPTH, max(1, FOLD_STATES // b_count.shape[0]))
    o_d = tl.arange(0, BLOCK_D)
    m_d = o_d < HEAD_DIM
    o_s = tl.arange(0, SLOTS)
    num_steps = tl.max(b_count, 0)
    b_max = tl.full(b_count.shape, float("-inf"), dtype=tl.float32)
    for i in range(0, num_steps, SLOTS):
        m_step = (i + o_s)[:, None] < b_count[None, :]
        o_state = (o_first[None, :] + i + o_s[:, None]) * NUM_Q_HEADS + o_head[None, :]
        b_lse2 = tl.load(part_lse_ptr + o_state, mask=m_step, other=float("-inf"), cache_modifier=".cg")
        b_max = tl.maximum(b_max, tl.max(b_lse2, 0))
    m_safe = tl.where(b_max == float("-inf"), 0.0, b_max)

    b_sum = tl.zeros(b_count.shape, dtype=tl.float32)
    b_acc = tl.zeros([b_count.shape[0], BLOCK_D], dtype=tl.float32)
    for i in range(0, num_steps, DEPTH):
        for k in tl.static_range(DEPTH):
            m_step = i + k < b_count
            o_state = (o_first + i + k) * NUM_Q_HEADS + o_head
            b_w = tl.exp2(tl.load(part_lse_ptr + o_state, mask=m_step, other=float("-inf"), cache_modifier=".cg") - m_safe)
            b_o = tl.load(part_out_ptr + o_state[:, None] * HEAD_DIM + o_d[None, :],
                          mask=m_step[:, None] & m_d[None, :], other=0.0, cache_modifier=".cg")
            b_sum += b_w
            b_acc += b_w[:, None] * b_o

    seen = b_sum > 0
    b_sum_safe = tl.where(seen, b_sum, 1.0)
    b_out = b_acc / b_sum_safe[:, None]
    b_lse = tl.where(seen, (m_safe + tl.log2(b_sum_safe)) * LN2, float("-inf"))
    return b_out, b_lse


@triton.jit
def fold_rows(part_out_ptr, part_lse_ptr, out_ptr, lse_ptr, o_first, b_count, o_head, o_result,
              NUM_Q_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, LN2: tl.constexpr):
    """``fold_slots`` of rows (``b_count`` 0: not folded here), written to ``out`` and ``lse``
    at ``o_result`` (token x Hq + head)."""
    o_d = tl.arange(0, BLOCK_D)
    m_d = o_d < HEAD_DIM
    b_out, b_lse = fold_slots(part_out_ptr, part_lse_ptr, o_first.to(tl.int64), b_count, o_head, NUM_Q_HEADS,
                              HEAD_DIM, BLOCK_D, LN2)
    m_fold = b_count > 0
    tl.store(out_ptr + o_result[:, None] * HEAD_DIM + o_d[None, :], b_out.to(out_ptr.dtype.element_ty),
             mask=m_fold[:, None] & m_d[None, :])
    tl.store(lse_ptr + o_result, b_lse, mask=m_fold)


@triton.jit
def fold_slice(sub, row0, num_rows, i_hk, tok_base, tok_first, tok_ptr, slot_offsets_ptr,
               GROUP: tl.constexpr, NUM_Q_HEADS: tl.constexpr, FOLD_M: tl.constexpr):
    """Rows ``sub * FOLD_M :`` of a tile, made anew from its item in a ``FOLD_M``-row layout
    (taken out of the tile's ``BLOCK_M``-row vectors they would change layout at every slot of
    the fold): each row's mask, query head, result offset (token x Hq + head), first slot and
    slot count."""
    o_fm = sub * FOLD_M + tl.arange(0, FOLD_M)
    m_frow = o_fm < num_rows
    f_row = row0 + o_fm
    f_j = f_row // GROUP
    f_head = i_hk * GROUP + f_row % GROUP
    if tok_first >= 0:
        f_tok = (tok_first + f_j).to(tl.int64)
    else:
        f_tok = tl.load(tok_ptr + tok_base + f_j, mask=m_frow, other=0).to(tl.int64)
    f_first = tl.load(slot_offsets_ptr + f_tok, mask=m_frow, other=0)
    f_count = tl.load(slot_offsets_ptr + f_tok + 1, mask=m_frow, other=0) - f_first
    return m_frow, f_head, f_tok * NUM_Q_HEADS + f_head, f_first, f_count


@triton.jit
def arrive_and_fold(arrivals_ptr, part_out_ptr, part_lse_ptr, out_ptr, lse_ptr, o_first, b_count, o_head, o_result,
                    m_row, NUM_Q_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                    LN2: tl.constexpr):
    """Count this program's arrival at each of its rows (``m_row``) and fold the rows it is the
    last to reach (``fold_rows``), resetting their counters for the next call."""
    b_before = tl.atomic_add(arrivals_ptr + o_result, 1, mask=m_row, sem="acq_rel", scope="gpu")
    m_last = m_row & (b_before == b_count - 1)
    if tl.sum(m_last.to(tl.int32), 0) > 0:
        tl.store(arrivals_ptr + o_result, 0, mask=m_last)
        tl.debug_barrier()  # the arrivals this program observed come before its threads' reads
        fold_rows(part_out_ptr, part_lse_ptr, out_ptr, lse_ptr, o_first, tl.where(m_last, b_count, 0), o_head,
                  o_result, NUM_Q_HEADS, HEAD_DIM, BLOCK_D, LN2)


@triton.jit
def key_pages(table_ptr, kv_base, stride_table, start, key_stop, BLOCK_N: tl.constexpr, PAGE_SIZE: tl.constexpr,
              MASKED: tl.constexpr):
    """int32 ``[BLOCK_N]``: the page of each key ``start : start + BLOCK_N`` of request
    ``kv_base`` (``table[kv_base, key // PAGE_SIZE]``); ``MASKED``: 0 for keys from ``key_stop``
    on, which are not read."""
    o_key = start + tl.arange(0, BLOCK_N)
    p_page = table_ptr + kv_base * stride_table + o_key // PAGE_SIZE
    if MASKED:
        o_page = tl.load(p_page, mask=o_key < key_stop, other=0)
    else:
        o_page = tl.load(p_page)
    return o_page


@triton.jit
def attend_block(b_acc, b_m, b_l, b_q, start, key_stop, k_ptr, v_ptr, o_page, kv_base, i_hk, causal_shift, o_j,
                 qk_scale, stride_ks, stride_kb, stride_kh, stride_vs, stride_vb, stride_vh,
                 HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, PAGED: tl.constexpr,
                 PAGE_SIZE: tl.constexpr, CAUSAL: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
                 MASKED: tl.constexpr):
    """Keys ``start : start + BLOCK_N`` of one KV head folded into a tile's running state.

    ``o_page``: the keys' pages (``key_pages``; ``PAGED`` only, ``None`` otherwise).
    ``MASKED``: keys from ``key_stop`` on are not loaded nor seen, and with ``CAUSAL`` the row
    whose token is ``j`` sees key ``t`` only if ``t <= causal_shift + j``. Unmasked, every key
    of the block is below ``key_stop`` and seen by every row. ``partial_kernel`` has the other
    arguments.
    """
    o_d = tl.arange(0, BLOCK_D)
    m_d = o_d < HEAD_DIM
    o_key = start + tl.arange(0, BLOCK_N)
    m_key = o_key < key_stop
    if PAGED:
        o_slot = (o_key % PAGE_SIZE).to(tl.int64)
        o_k = o_page.to(tl.int64) * stride_kb + o_slot * stride_ks
        o_v = o_page.to(tl.int64) * stride_vb + o_slot * stride_vs
    else:
        o_rowk = (kv_base + o_key).to(tl.int64)
        o_k = o_rowk * stride_ks
        o_v = o_rowk * stride_vs
    p_kt = k_ptr + o_k[None, :] + i_hk * stride_kh + o_d[:, None]
    p_v = v_ptr + o_v[:, None] + i_hk * stride_vh + o_d[None, :]
    if MASKED:
        b_kt = tl.load(p_kt, mask=m_d[:, None] & m_key[None, :], other=0.0)
        b_v = tl.load(p_v, mask=m_key[:, None] & m_d[None, :], other=0.0)
    else:
        b_kt = tl.load(p_kt, mask=m_d[:, None], other=0.0)
        b_v = tl.load(p_v, mask=m_d[None, :], other=0.0)
    if UPCAST:
        b_kt = b_kt.to(tl.float32)
        b_v = b_v.to(tl.float32)
    b_s = tl.dot(b_q, b_kt, input_precision=DOT_PRECISION)
    m_seen = m_key[None, :]
    if CAUSAL:
        m_seen = m_seen & (o_key[None, :] <= causal_shift + o_j[:, None])
    return online_softmax_step(b_acc, b_m, b_l, b_s, b_v, m_seen, qk_scale, b_q.dtype, DOT_PRECISION, MASKED)


@triton.jit
def attend_range(b_acc, b_m, b_l, b_q, lo, hi, key_stop, k_ptr, v_ptr, table_ptr, kv_base, i_hk, causal_shift, o_j,
                 qk_scale, stride_ks, stride_kb, stride_kh, stride_vs, stride_vb, stride_vh, stride_table,
                 HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, PAGED: tl.constexpr,
                 PAGE_SIZE: tl.constexpr, CAUSAL: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
                 MASKED: tl.constexpr, CARRY_PAGES: tl.constexpr):
    """The blocks from key ``lo`` (``BLOCK_N`` at a time, up to ``hi``) folded into a tile's
    running state, each by ``attend_block``.

    ``CARRY_PAGES`` (``PAGED`` only): each step reads the next block's pages and hands them on,
    so that no key load waits on a page-table read of its own step. Triton's pipeliner issues
    a page read and the key loads that use it as one asynchronous group each; read in the same
    step, the key loads could only be issued once every group before them had landed, and the
    paged walk ran one block ahead instead of ``num_stages - 1`` (sm_90 SASS:
    ``DEPBAR.LE SB0, 0x0`` at the top of the paged loop). Without it each step reads its own
    pages, which keeps a short tile's shared memory at one stage of keys. The same pages either
    way, so the same bits.
    """
    if PAGED and CARRY_PAGES:
        o_page = key_pages(table_ptr, kv_base, stride_table, lo, key_stop, BLOCK_N, PAGE_SIZE, True)
        for start in range(lo, hi, BLOCK_N):
            o_page_next = key_pages(table_ptr, kv_base, stride_table, start + BLOCK_N, key_stop, BLOCK_N, PAGE_SIZE,
                                    True)
            b_acc, b_m, b_l = attend_block(
                b_acc, b_m, b_l, b_q, start, key_stop, k_ptr, v_ptr, o_page, kv_base, i_hk, causal_shift, o_j,
                qk_scale, stride_ks, stride_kb, stride_kh, stride_vs, stride_vb, stride_vh,
                HEAD_DIM, BLOCK_D, BLOCK_N, PAGED, PAGE_SIZE, CAUSAL, UPCAST, DOT_PRECISION, MASKED)
            o_page = o_page_next
    else:
        for start in range(lo, hi, BLOCK_N):
            o_page = None
            if PAGED:
                o_page = key_pages(table_ptr, kv_base, stride_table, start, key_stop, BLOCK_N, PAGE_SIZE, MASKED)
            b_acc, b_m, b_l = attend_block(
                b_acc, b_m, b_l, b_q, start, key_stop, k_ptr, v_ptr, o_page, kv_base, i_hk, causal_shift, o_j,
                qk_scale, stride_ks, stride_kb, stride_kh, stride_vs, stride_vb, stride_vh,
                HEAD_DIM, BLOCK_D, BLOCK_N, PAGED, PAGE_SIZE, CAUSAL, UPCAST, DOT_PRECISION, MASKED)
    return b_acc, b_m, b_l


@triton.jit
def attend_keys(b_acc, b_m, b_l, b_q, key_start, full_stop, key_stop, k_ptr, v_ptr, table_ptr, kv_base, i_hk,
                causal_shift, o_j, qk_scale, stride_ks, stride_kb, stride_kh, stride_vs, stride_vb, stride_vh,
                stride_table, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, PAGED: tl.constexpr,
                PAGE_SIZE: tl.constexpr, CAUSAL: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
                SPLIT_UNMASKED: tl.constexpr, CARRY_PAGES: tl.constexpr):
    """Keys ``key_start : key_stop`` folded into a tile's running state, ``BLOCK_N`` at a time
    from ``key_start``: with ``SPLIT_UNMASKED`` the blocks up to ``full_stop`` (every row sees
    them in full) unmasked, the rest masked; without, every block masked. The same bits either
    way. ``attend_range`` has ``CARRY_PAGES``, ``partial_kernel`` the other arguments."""
    if SPLIT_UNMASKED:
        b_acc, b_m, b_l = attend_range(
            b_acc, b_m, b_l, b_q, key_start, full_stop, key_stop, k_ptr, v_ptr, table_ptr, kv_base, i_hk, causal_shift,
            o_j, qk_scale, stride_ks, stride_kb, stride_kh, stride_vs, stride_vb, stride_vh, stride_table,
            HEAD_DIM, BLOCK_D, BLOCK_N, PAGED, PAGE_SIZE, False, UPCAST, DOT_PRECISION, False, CARRY_PAGES)
    else:
        full_stop = key_start
    b_acc, b_m, b_l = attend_range(
        b_acc, b_m, b_l, b_q, full_stop, key_stop, key_stop, k_ptr, v_ptr, table_ptr, kv_base, i_hk, causal_shift, o_j,
        qk_scale, stride_ks, stride_kb, stride_kh, stride_vs, stride_vb, stride_vh, stride_table,
        HEAD_DIM, BLOCK_D, BLOCK_N, PAGED, PAGE_SIZE, CAUSAL, UPCAST, DOT_PRECISION, True, CARRY_PAGES)
    return b_acc, b_m, b_l


@triton.jit
def state_offsets(slot_ptr, tok_base, o_j, m_row, chunk, o_head, NUM_Q_HEADS: tl.constexpr):
    """Each row's offset in the ``[num_slots, Hq]`` state scratch for chunk ``chunk``."""
    o_slot = tl.load(slot_ptr + tok_base + o_j, mask=m_row, other=0) + chunk
    return o_slot.to(tl.int64) * NUM_Q_HEADS + o_head


@triton.jit
def partial_kernel(
    q_ptr, k_ptr, v_ptr, items_ptr, tok_ptr, slot_ptr, table_ptr, part_out_ptr, part_lse_ptr,
    slot_offsets_ptr, arrivals_ptr, out_ptr, lse_ptr,
    qk_scale,
    stride_qt, stride_qh,
    stride_kb, stride_ks, stride_kh,
    stride_vb, stride_vs, stride_vh,
    stride_table,
    pre_k_ptr, pre_v_ptr,
    stride_pks, stride_pkh, stride_pvs, stride_pvh,
    grid_rows, grid_tiles, grid_chunk, grid_len, grid_kv_base, grid_shift, grid_tok_first, grid_prefix_start,
    grid_prefix_len, count_ptr,
    NUM_Q_HEADS: tl.constexpr,
    GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PAGED: tl.constexpr,
    PAGE_SIZE: tl.constexpr,
    CAUSAL: tl.constexpr,
    UPCAST: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    FUSED_MERGE: tl.constexpr,
    SPLIT_UNMASKED: tl.constexpr,
    CARRY_PAGES: tl.constexpr,
    SINGLE_PASS: tl.constexpr,
    PREFIX: tl.constexpr,
    ITEMS_LISTED: tl.constexpr,
    FOLD_M: tl.constexpr,
    LN2: tl.constexpr,
    PADDED: tl.constexpr,
):
    """Chunk states of one tile of rows over one chunk of keys, for one KV head; with
    ``SINGLE_PASS``, the results of one request's tile over its prefix and its own KV.

    Grid: ``(num_items, Hkv)``.

    Args:
        q_ptr: ``[total_q, Hq, D]`` (last axis contiguous).
        HEAD_DIM, BLOCK_D: ``D``, and the width of every tile's head axis
            (``config.block_d``: the power of two from 16 that holds ``D``). The columns from
            ``D`` on are loaded as 0 and never stored: in a dot product over the head axis they
            add exact zeros, so it is a sum of the ``D`` products in some order (the error
            bound keeps ``D``). At ``D == BLOCK_D`` the compiler folds the column masks away.
        k_ptr, v_ptr: contiguous rows ``[rows, Hkv, D]`` (``PAGED`` false: ``stride_kb`` is
            unused and a key's row is ``kv_base + key``) or a paged cache
            ``[num_blocks, PAGE_SIZE, Hkv, D]`` (``PAGED``: a key's page is
            ``table[kv_base, key // PAGE_SIZE]``, ``kv_base`` being the request).
        items_ptr: int32 ``[num_items, NUM_ITEM_FIELDS]`` (see ``ITEM_FIELDS``; ``ITEMS_LISTED``
            only).
        grid_rows, grid_tiles, ...: without ``ITEMS_LISTED``, the one group whose items the
            launch enumerates (``plan.Launch.regular``): its rows, tiles per chunk, chunk
            length, segment length, ``kv_base``, ``causal_shift``, ``tok_first``,
            ``prefix_start``, ``prefix_len``.
        ITEMS_LISTED: read each item from ``items_ptr``; without, compute it from the program
            id and the ``grid_*`` scalars: the same item without the read (a batch-1 launch
            waits for it before its first key load).
        tok_ptr: int32 token list; row ``r`` of an item is token ``tok[tok_base + r // GROUP]``
            (``tok_first + r // GROUP`` where the item's ``tok_first >= 0``: its tokens are
            consecutive), query head ``i_hk * GROUP + r % GROUP``.
        slot_ptr: int32, beside ``tok_ptr``: the scratch slot of that token's chunk 0 in this
            segment (chunk ``c`` is slot ``+ c``).
        table_ptr: int32 or int64 block table ``[B, max_blocks]`` (``PAGED`` only).
        PAGE_SIZE: tokens per page (``PAGED``; 1 otherwise). A constant of the compiled kernel:
            a key's page and slot are then a shift and a mask (a power of two) or a multiply,
            not an integer division per key of every block.
        part_out_ptr: fp32 ``[num_slots, Hq, D]`` scratch.
        part_lse_ptr: fp32 ``[num_slots, Hq]`` scratch, base 2.
        slot_offsets_ptr, arrivals_ptr, out_ptr, lse_ptr: ``FUSED_MERGE`` only: the merge
            kernel's ``slot_offsets``, int32 ``[total_q, Hq]`` arrival counters (zero before
            the launches of a call, and again after them), and the results (contiguous
            ``[total_q, Hq, D]`` in q's dtype, fp32 ``[total_q, Hq]``).
        qk_scale: ``softmax_scale * LOG2E``.
        CAUSAL: key ``t`` is seen by the row's token ``j`` (its index in the item's token list)
            only if ``t <= causal_shift + j``.
        UPCAST: compute in fp32 from loads of any dtype (the interpreter's bf16 is wrong).
        FUSED_MERGE: fold the rows whose last chunk state this program wrote (module doc),
            ``FOLD_M`` rows at a time (``plan.fold_height``).
        SPLIT_UNMASKED: walk the blocks that every row sees in full without masks (tall tiles,
            where the selects cost arithmetic; one loop keeps a short tile's registers).
        CARRY_PAGES: ``PAGED`` walks read each next block's pages one step ahead
            (``attend_range``; tall tiles, ``Config.carries_pages``).
        pre_k_ptr, pre_v_ptr, stride_pks, ...: ``SINGLE_PASS`` only: prefix level 0's
            contiguous rows ``[rows, Hkv, D]``.
        SINGLE_PASS: walk the item's prefix (``prefix_len`` keys from row ``prefix_start``,
            every one seen) and then its own chunk in one running state, and write the rows'
            results to ``out`` and ``lse`` (natural log) instead of a state
            (``plan.single_pass_requests``).
        count_ptr: int32 ``[1]``: the step's items (``PADDED`` only).
        PADDED: a graph plan's launch, whose grid is its capacity: a program past the first
            ``count_ptr[0]`` items exits (``plan.Launch.count``).
        PREFIX: with ``SINGLE_PASS``, whether some item of the launch has a prefix; without,
            the prefix walk is not compiled (``prefix_len`` is 0 for every item: the walk
            would take no step and leave the running state as it starts, so the bits are the
            same).
    """
    tl.static_assert(BLOCK_D >= 16 and BLOCK_D <= 256 and (BLOCK_D & (BLOCK_D - 1)) == 0)
    tl.static_assert(HEAD_DIM >= 1 and HEAD_DIM <= BLOCK_D)
    tl.static_assert(BLOCK_M >= 16 and BLOCK_N >= 16)
    # the first fold slice's rows are read before the key loop, behind it, where the slice is the
    # tile's only one or the shortest; a taller one held across the loop slowed the 64-row prefix
    # tile (H200, batch 8, Hkv 8, prefix 2048: 17.3 -> 18.4 us, fast/triton/NOTES.md, session 11)
    EARLY_SLICE: tl.constexpr = BLOCK_M <= FOLD_M or FOLD_M * FOLD_DEPTH <= FOLD_STATES
    i_item = tl.program_id(0)
    i_hk = tl.program_id(1)

    if PADDED:  # read beside the item's fields, not before them: a real item waits for one read
        num_items = tl.load(count_ptr)
    p_item = items_ptr + i_item * NUM_ITEM_FIELDS
    if ITEMS_LISTED:
        tok_base = tl.load(p_item + 0)
        row0 = tl.load(p_item + 1)
        num_rows = tl.load(p_item + 2)
        kv_base = tl.load(p_item + 3)
        key_start = tl.load(p_item + 4)
        key_end = tl.load(p_item + 5)
        causal_shift = tl.load(p_item + 6)
        chunk = tl.load(p_item + 7)
        tok_first = tl.load(p_item + 8)
    else:  # item i is tile i % tiles of chunk i // tiles of one group (plan.regular_items)
        tok_base = 0
        chunk = i_item // grid_tiles
        row0 = (i_item % grid_tiles) * BLOCK_M
        num_rows = tl.minimum(grid_rows - row0, BLOCK_M)
        kv_base = grid_kv_base
        key_start = chunk * grid_chunk
        key_end = tl.minimum(key_start + grid_chunk, grid_len)
        causal_shift = grid_shift
        tok_first = grid_tok_first
    if PADDED:
        if i_item >= num_items:  # past the step's items
            return

    o_m = tl.arange(0, BLOCK_M)
    o_d = tl.arange(0, BLOCK_D)
    m_row = o_m < num_rows
    m_d = o_d < HEAD_DIM
    o_row = row0 + o_m
    o_j = o_row // GROUP  # the row's token, as an index into this item's token list
    o_head = i_hk * GROUP + o_row % GROUP
    if tok_first >= 0:  # the item's tokens are consecutive: q's rows without a read of the list
        o_tok = (tok_first + o_j).to(tl.int64)
    else:
        o_tok = tl.load(tok_ptr + tok_base + o_j, mask=m_row, other=0).to(tl.int64)
    if FUSED_MERGE:  # a small batch, bound by latency: read now what the epilogue needs, behind the key loop
        o_state = state_offsets(slot_ptr, tok_base, o_j, m_row, chunk, o_head, NUM_Q_HEADS)
        if EARLY_SLICE:
            f_mask, f_head, f_result, f_first, f_count = fold_slice(
                0, row0, num_rows, i_hk, tok_base, tok_first, tok_ptr, slot_offsets_ptr, GROUP, NUM_Q_HEADS, FOLD_M)

    p_q = q_ptr + o_tok[:, None] * stride_qt + o_head[:, None] * stride_qh + o_d[None, :]
    b_q = tl.load(p_q, mask=m_row[:, None] & m_d[None, :], other=0.0)
    if UPCAST:
        b_q = b_q.to(tl.float32)

    b_acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    b_m = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    b_l = tl.zeros([BLOCK_M], dtype=tl.float32)

    if SINGLE_PASS and PREFIX:  # the request's prefix first, into the same running state
        if ITEMS_LISTED:
            prefix_start = tl.load(p_item + 9)
            prefix_len = tl.load(p_item + 10)
        else:
            prefix_start = grid_prefix_start
            prefix_len = grid_prefix_len
        b_acc, b_m, b_l = attend_keys(
            b_acc, b_m, b_l, b_q, 0, prefix_len // BLOCK_N * BLOCK_N, prefix_len, pre_k_ptr, pre_v_ptr, table_ptr,
            prefix_start, i_hk, 0, o_j, qk_scale, stride_pks, 0, stride_pkh, stride_pvs, 0, stride_pvh, stride_table,
            HEAD_DIM, BLOCK_D, BLOCK_N, False, 1, False, UPCAST, DOT_PRECISION, SPLIT_UNMASKED, False)
    # blocks every row of the tile sees in full end at full_stop: the chunk's ragged end and the
    # causal diagonal come after
    key_stop = key_end
    full_stop = key_end
    if CAUSAL:
        key_stop = tl.minimum(key_end, causal_shift + (row0 + num_rows - 1) // GROUP + 1)
        full_stop = tl.minimum(key_end, causal_shift + row0 // GROUP + 1)
    full_stop = key_start + tl.maximum(full_stop - key_start, 0) // BLOCK_N * BLOCK_N
    b_acc, b_m, b_l = attend_keys(
        b_acc, b_m, b_l, b_q, key_start, full_stop, key_stop, k_ptr, v_ptr, table_ptr, kv_base, i_hk, causal_shift, o_j,
        qk_scale, stride_ks, stride_kb, stride_kh, stride_vs, stride_vb, stride_vh, stride_table, HEAD_DIM,
        BLOCK_D, BLOCK_N, PAGED, PAGE_SIZE, CAUSAL, UPCAST, DOT_PRECISION, SPLIT_UNMASKED, CARRY_PAGES)

    b_out, b_lse2 = finish_state(b_acc, b_m, b_l)
    if SINGLE_PASS:
        o_result = o_tok * NUM_Q_HEADS + o_head
        tl.store(out_ptr + o_result[:, None] * HEAD_DIM + o_d[None, :], b_out.to(out_ptr.dtype.element_ty),
                 mask=m_row[:, None] & m_d[None, :])
        tl.store(lse_ptr + o_result, b_lse2 * LN2, mask=m_row)
    else:
        if not FUSED_MERGE:  # read after the loop: held across it, they cost the tall tiles 25-45 registers
            o_state = state_offsets(slot_ptr, tok_base, o_j, m_row, chunk, o_head, NUM_Q_HEADS)
        tl.store(part_out_ptr + o_state[:, None] * HEAD_DIM + o_d[None, :], b_out, mask=m_row[:, None] & m_d[None, :])
        tl.store(part_lse_ptr + o_state, b_lse2, mask=m_row)

    if FUSED_MERGE:  # never with SINGLE_PASS (its rows have no states)
        tl.debug_barrier()  # every thread's stores of the tile come before any of its arrivals
        # FOLD_M rows at a time (plan.fold_height; the states in flight are a fixed budget of
        # registers, FOLD_STATES)
        num_slices = 1
        if BLOCK_M > FOLD_M:
            num_slices = tl.cdiv(num_rows, FOLD_M)
        for sub in range(0, num_slices):
            if EARLY_SLICE:
                if sub > 0:
                    f_mask, f_head, f_result, f_first, f_count = fold_slice(
                        sub, row0, num_rows, i_hk, tok_base, tok_first, tok_ptr, slot_offsets_ptr, GROUP, NUM_Q_HEADS,
                        FOLD_M)
            else:
                f_mask, f_head, f_result, f_first, f_count = fold_slice(
                    sub, row0, num_rows, i_hk, tok_base, tok_first, tok_ptr, slot_offsets_ptr, GROUP, NUM_Q_HEADS, FOLD_M)
            arrive_and_fold(arrivals_ptr, part_out_ptr, part_lse_ptr, out_ptr, lse_ptr, f_first, f_count, f_head,
                            f_result, f_mask, NUM_Q_HEADS, HEAD_DIM, BLOCK_D, LN2)


@triton.jit
def merge_kernel(
    part_out_ptr, part_lse_ptr, slot_offsets_ptr, tokens_ptr, count_ptr, out_ptr, lse_ptr,
    NUM_Q_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    TOKENS_LISTED: tl.constexpr,
    TOKENS_COUNTED: tl.constexpr,
    LN2: tl.constexpr,
):
    """Fold every chunk state of one (token, query head) row, in slot order, into its result.

    Grid: ``(total_q, Hq)``; ``(n, Hq)`` over a list of ``n`` tokens (``TOKENS_LISTED``); or
    ``(P, Hq)`` over a list whose first ``count_ptr[0]`` entries are this call's
    (``TOKENS_COUNTED``, with ``TOKENS_LISTED``: a graph plan's, ``GraphPlan``), program ``p``
    folding entries ``p, p + P, ...`` of its head, so that a step with few of them runs few
    programs. Which program folds a row changes none of its bits.

    ``fold_row``'s arithmetic for each row.

    Args:
        part_out_ptr: fp32 ``[num_slots, Hq, D]``.
        part_lse_ptr: fp32 ``[num_slots, Hq]`` (base 2).
        slot_offsets_ptr: int32 ``[total_q + 1]``: token ``t`` owns slots
            ``slot_offsets[t] : slot_offsets[t + 1]``; a token without slots (a single-pass
            request's) is left alone.
        tokens_ptr: int32 ``[n]``: with ``TOKENS_LISTED``, the tokens folded (those that can
            have slots: ``Plan.merge_tokens``); else unread.
        count_ptr: int32 ``[1]``: with ``TOKENS_COUNTED``, how many of ``tokens_ptr``'s
            entries this call folds (``Plan.merge_count``); else unread.
        out_ptr: contiguous ``[total_q, Hq, D]`` in q's dtype.
        lse_ptr: fp32 ``[total_q, Hq]``, natural log.
        HEAD_DIM, BLOCK_D: ``D`` and the head axis's width (``partial_kernel``).
        LN2: ``ln 2``, to convert ``lse2`` at the boundary.
    """
    i_h = tl.program_id(1)
    if TOKENS_COUNTED:
        for j in range(tl.program_id(0), tl.load(count_ptr), tl.num_programs(0)):
            i_t = tl.load(tokens_ptr + j).to(tl.int64)
            fold_row(part_out_ptr, part_lse_ptr, slot_offsets_ptr, out_ptr, lse_ptr, i_t, i_h, NUM_Q_HEADS, HEAD_DIM,
                     BLOCK_D, LN2)
    else:
        i_t = tl.program_id(0).to(tl.int64)
        if TOKENS_LISTED:
            i_t = tl.load(tokens_ptr + i_t).to(tl.int64)
        fold_row(part_out_ptr, part_lse_ptr, slot_offsets_ptr, out_ptr, lse_ptr, i_t, i_h, NUM_Q_HEADS, HEAD_DIM,
                 BLOCK_D, LN2)


@triton.jit
def fold_row(part_out_ptr, part_lse_ptr, slot_offsets_ptr, out_ptr, lse_ptr, i_t, i_h, NUM_Q_HEADS: tl.constexpr,
             HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, LN2: tl.constexpr):
    """Fold the states of row ``(i_t, i_h)`` (token, query head) into its result (``merge_kernel``;
    the arguments are its).

    ``fold_slots``'s arithmetic for one row, with the row's values as scalars: the weighted
    pass reads each slot's ``lse2`` as one scalar that every thread holds, so no value changes
    layout between a slot's reads and the next's, and ``FOLD_DEPTH`` slots' reads are in
    flight at once (``fold_slots`` over a vector of rows waits an L2 round trip per slot,
    ``fast/triton/NOTES.md``, session 6). The operations on each element, and their order, are
    ``fold_slots``'s, so the fused merge and the merge launch give the same bits
    (``tests/gpu/test_fused_merge.py``; the interpreter tests in CI).
    """
    SLOTS: tl.constexpr = 16
    first = tl.load(slot_offsets_ptr + i_t).to(tl.int64)
    count = tl.load(slot_offsets_ptr + i_t + 1) - first
    if count > 0:  # a token without slots is a single-pass request's, written by its own tile
        o_d = tl.arange(0, BLOCK_D)
        m_d = o_d < HEAD_DIM
        o_s = tl.arange(0, SLOTS)
        b_max = float("-inf")
        for i in range(0, count, SLOTS):
            b_lse2 = tl.load(part_lse_ptr + (first + i + o_s) * NUM_Q_HEADS + i_h, mask=i + o_s < count,
                             other=float("-inf"), cache_modifier=".cg")
            b_max = tl.maximum(b_max, tl.max(b_lse2, 0))
        m_safe = tl.where(b_max == float("-inf"), 0.0, b_max)

        b_sum = 0.0
        b_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
        for i in range(0, count, FOLD_DEPTH):
            for k in tl.static_range(FOLD_DEPTH):
                m_step = i + k < count
                o_state = (first + i + k) * NUM_Q_HEADS + i_h
                b_w = tl.exp2(tl.load(part_lse_ptr + o_state, mask=m_step, other=float("-inf"), cache_modifier=".cg") - m_safe)
                b_o = tl.load(part_out_ptr + o_state * HEAD_DIM + o_d, mask=m_step & m_d, other=0.0,
                              cache_modifier=".cg")
                b_sum += b_w
                b_acc += b_w * b_o

        seen = b_sum > 0
        b_sum_safe = tl.where(seen, b_sum, 1.0)
        o_result = i_t * NUM_Q_HEADS + i_h
        tl.store(out_ptr + o_result * HEAD_DIM + o_d, (b_acc / b_sum_safe).to(out_ptr.dtype.element_ty), mask=m_d)
        tl.store(lse_ptr + o_result, tl.where(seen, (m_safe + tl.log2(b_sum_safe)) * LN2, float("-inf")))
