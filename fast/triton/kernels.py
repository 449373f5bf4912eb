"""The Triton kernels: one partial-attention kernel and one merge kernel.

Both work in base 2 (``exp2``/``log2`` are the GPU's fast instructions): scores are scaled by
``softmax_scale * LOG2E`` once, states carry ``lse2 = lse * LOG2E``, and the merge kernel converts
back to natural log with ``LN2`` when it writes the result. Nothing else crosses a boundary in
base 2.

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
    One program = one query token x a block of query heads. It folds every slot of the token
    (prefix levels in order, chunks in order, then the own chunks) in that fixed order,
    normalizes, and writes ``out`` in q's dtype and ``lse`` in natural log.
"""

from __future__ import annotations

import triton
import triton.language as tl

#: Fields of one work item (int32 each), in order. See ``relaycore.fast.triton.plan``.
ITEM_FIELDS = ("tok_base", "row0", "num_rows", "kv_base", "key_start", "key_end", "causal_shift", "chunk", "first_tok")
NUM_ITEM_FIELDS = len(ITEM_FIELDS)
ITEM_STRIDE = tl.constexpr(NUM_ITEM_FIELDS)


@triton.jit
def online_softmax_step(b_acc, b_m, b_l, b_d, qk_scale, b_v, m_seen, P_DTYPE: tl.constexpr,
                        DOT_PRECISION: tl.constexpr, MASKED: tl.constexpr):
    """One block of keys folded into a running state (base 2).

    Args:
        b_acc: fp32 ``[M, D]`` unnormalized output so far.
        b_m: fp32 ``[M]`` running max of the scores (``-inf`` before any key is seen).
        b_l: fp32 ``[M]`` running sum of ``exp2(score - b_m)``.
        b_d: fp32 ``[M, N]`` dot products ``q . k`` of this block; the base-2 score is
            ``b_d * qk_scale``, and ``qk_scale > 0``, so the block's max score is the max dot
            product times ``qk_scale`` and ``b_d * qk_scale - max`` is one fused multiply-add.
        qk_scale: ``softmax_scale * LOG2E``.
        b_v: ``[N, D]`` values of this block.
        m_seen: bool ``[M, N]``: which scores are seen (read only when ``MASKED``).
        P_DTYPE: the dtype the weights are rounded to before the ``P @ V`` product.
        MASKED: whether some score of the block is unseen; a block every row sees in full
            skips the select (the same values, so the same bits).

    Returns:
        The updated ``(b_acc, b_m, b_l)``. Rows that have seen no key stay ``(0, -inf, 0)``.
    """
    if MASKED:
        b_d = tl.where(m_seen, b_d, float("-inf"))
    m_new = tl.maximum(b_m, tl.max(b_d, 1) * qk_scale)
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # nothing seen yet: weights all 0
    alpha = tl.exp2(b_m - m_safe)
    b_p = tl.exp2(b_d * qk_scale - m_safe[:, None])
    b_l = b_l * alpha + tl.sum(b_p, 1)
    b_acc = b_acc * alpha[:, None] + tl.dot(b_p.to(P_DTYPE), b_v, input_precision=DOT_PRECISION)
    return b_acc, m_new, b_l


@triton.jit
def attend_keys(b_acc, b_m, b_l, b_q, k_ptr, v_ptr, table_ptr, lo, hi, key_stop, kv_base, causal_shift, o_j, qk_scale,
                stride_ks, stride_kb, stride_vs, stride_vb, stride_table, page_size,
                HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, PAGED: tl.constexpr, CAUSAL: tl.constexpr,
                MASKED: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Fold keys ``lo .. hi`` (``BLOCK_N`` per step, ``lo`` on the chunk's step grid) of one KV
    head into the running state; the KV pointers already point at the head.

    ``MASKED`` false: the caller guarantees every row sees every key of ``lo .. hi`` (``hi``
    at most ``key_stop``, below every row's causal limit), so no load or score is masked.
    """
    o_d = tl.arange(0, HEAD_DIM)
    for start in range(lo, hi, BLOCK_N):
        o_key = start + tl.arange(0, BLOCK_N)
        m_key = o_key < key_stop
        if PAGED:
            if MASKED:
                o_page = tl.load(table_ptr + kv_base * stride_table + o_key // page_size, mask=m_key, other=0)
            else:
                o_page = tl.load(table_ptr + kv_base * stride_table + o_key // page_size)
            o_slot = (o_key % page_size).to(tl.int64)
            o_k = o_page.to(tl.int64) * stride_kb + o_slot * stride_ks
            o_v = o_page.to(tl.int64) * stride_vb + o_slot * stride_vs
        else:
            o_rowk = (kv_base + o_key).to(tl.int64)
            o_k = o_rowk * stride_ks
            o_v = o_rowk * stride_vs
        if MASKED:
            b_kt = tl.load(k_ptr + o_k[None, :] + o_d[:, None], mask=m_key[None, :], other=0.0)
            b_v = tl.load(v_ptr + o_v[:, None] + o_d[None, :], mask=m_key[:, None], other=0.0)
        else:
            b_kt = tl.load(k_ptr + o_k[None, :] + o_d[:, None])
            b_v = tl.load(v_ptr + o_v[:, None] + o_d[None, :])
        if UPCAST:
            b_kt = b_kt.to(tl.float32)
            b_v = b_v.to(tl.float32)
        b_d = tl.dot(b_q, b_kt, input_precision=DOT_PRECISION)
        m_seen = m_key[None, :]
        if CAUSAL:
            m_seen = m_seen & (o_key[None, :] <= causal_shift + o_j[:, None])
        b_acc, b_m, b_l = online_softmax_step(b_acc, b_m, b_l, b_d, qk_scale, b_v, m_seen, b_q.dtype, DOT_PRECISION,
                                            MASKED)
    return b_acc, b_m, b_l


@triton.jit
def finish_state(b_acc, b_m, b_l):
    """Normalize a running state: ``(out, lse2)``, or ``(0, -inf)`` for rows that saw no key."""
    seen = b_l > 0
    b_l_safe = tl.where(seen, b_l, 1.0)
    b_out = b_acc / b_l_safe[:, None]
    b_lse2 = tl.where(seen, b_m + tl.log2(b_l_safe), float("-inf"))
    return b_out, b_lse2


@triton.jit
def partial_kernel(
    q_ptr, k_ptr, v_ptr, items_ptr, tok_ptr, slot_ptr, table_ptr, part_out_ptr, part_lse_ptr,
    qk_scale,
    stride_qt, stride_qh,
    stride_kb, stride_ks, stride_kh,
    stride_vb, stride_vs, stride_vh,
    stride_table,
    page_size,
    NUM_Q_HEADS: tl.constexpr,
    GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PAGED: tl.constexpr,
    CAUSAL: tl.constexpr,
    UPCAST: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """Chunk states of one tile of rows over one chunk of keys, for one KV head.

    Grid: ``(num_items, Hkv)``.

    Args:
        q_ptr: ``[total_q, Hq, D]`` (last axis contiguous).
        k_ptr, v_ptr: contiguous rows ``[rows, Hkv, D]`` (``PAGED`` false: ``stride_kb`` is
            unused and a key's row is ``kv_base + key``) or a paged cache
            ``[num_blocks, page_size, Hkv, D]`` (``PAGED``: a key's page is
            ``table[kv_base, key // page_size]``, ``kv_base`` being the request).
        items_ptr: int32 ``[num_items, NUM_ITEM_FIELDS]`` (see ``ITEM_FIELDS``).
        tok_ptr: int32 token list; row ``r`` of an item is token ``tok[tok_base + r // GROUP]``
            (``first_tok + r // GROUP`` when the item's ``first_tok >= 0``: its tokens are
            consecutive, and the list is not read), query head ``i_hk * GROUP + r % GROUP``.
        slot_ptr: int32, beside ``tok_ptr``: the scratch slot of that token's chunk 0 in this
            segment (chunk ``c`` is slot ``+ c``).
        table_ptr: int32 block table ``[B, max_blocks]`` (``PAGED`` only).
        part_out_ptr: fp32 ``[num_slots, Hq, D]`` scratch.
        part_lse_ptr: fp32 ``[num_slots, Hq]`` scratch, base 2.
        qk_scale: ``softmax_scale * LOG2E``.
        CAUSAL: key ``t`` is seen by the row's token ``j`` (its index in the item's token list)
            only if ``t <= causal_shift + j``.
        UPCAST: compute in fp32 from loads of any dtype (the interpreter's bf16 is wrong).
    """
    tl.static_assert(HEAD_DIM >= 16 and HEAD_DIM <= 256 and (HEAD_DIM & (HEAD_DIM - 1)) == 0)
    tl.static_assert(BLOCK_M >= 16 and BLOCK_N >= 16)
    i_item = tl.program_id(0)
    i_hk = tl.program_id(1)

    p_item = items_ptr + i_item * ITEM_STRIDE
    tok_base = tl.load(p_item + 0)
    row0 = tl.load(p_item + 1)
    num_rows = tl.load(p_item + 2)
    kv_base = tl.load(p_item + 3)
    key_start = tl.load(p_item + 4)
    key_end = tl.load(p_item + 5)
    causal_shift = tl.load(p_item + 6)
    chunk = tl.load(p_item + 7)
    first_tok = tl.load(p_item + 8)

    o_m = tl.arange(0, BLOCK_M)
    o_d = tl.arange(0, HEAD_DIM)
    m_row = o_m < num_rows
    o_row = row0 + o_m
    o_j = o_row // GROUP  # the row's token, as an index into this item's token list
    o_head = i_hk * GROUP + o_row % GROUP
    if first_tok >= 0:  # consecutive tokens: no list to read before q
        o_tok = (first_tok + o_j).to(tl.int64)
    else:
        o_tok = tl.load(tok_ptr + tok_base + o_j, mask=m_row, other=0).to(tl.int64)
    # where the state goes, read now so that its latency hides behind the loop
    o_slot_out = (tl.load(slot_ptr + tok_base + o_j, mask=m_row, other=0) + chunk).to(tl.int64)

    p_q = q_ptr + o_tok[:, None] * stride_qt + o_head[:, None] * stride_qh + o_d[None, :]
    b_q = tl.load(p_q, mask=m_row[:, None], other=0.0)
    if UPCAST:
        b_q = b_q.to(tl.float32)

    b_acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    b_m = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    b_l = tl.zeros([BLOCK_M], dtype=tl.float32)

    key_stop = key_end
    seen_by_all = key_end  # keys below this are seen by every row of the tile
    if CAUSAL:
        key_stop = tl.minimum(key_end, causal_shift + (row0 + num_rows - 1) // GROUP + 1)
        seen_by_all = tl.minimum(key_end, causal_shift + row0 // GROUP + 1)
    # full steps first (no masks), then the steps that cross key_stop or the diagonal; both
    # walk the same BLOCK_N grid from key_start, so a row's steps do not depend on its tile
    full_stop = key_start + tl.maximum(seen_by_all - key_start, 0) // BLOCK_N * BLOCK_N
    k_head = k_ptr + i_hk * stride_kh
    v_head = v_ptr + i_hk * stride_vh
    b_acc, b_m, b_l = attend_keys(
        b_acc, b_m, b_l, b_q, k_head, v_head, table_ptr, key_start, full_stop, key_stop, kv_base, causal_shift, o_j,
        qk_scale, stride_ks, stride_kb, stride_vs, stride_vb, stride_table, page_size,
        HEAD_DIM, BLOCK_N, PAGED, CAUSAL, False, UPCAST, DOT_PRECISION)
    b_acc, b_m, b_l = attend_keys(
        b_acc, b_m, b_l, b_q, k_head, v_head, table_ptr, full_stop, key_stop, key_stop, kv_base, causal_shift, o_j,
        qk_scale, stride_ks, stride_kb, stride_vs, stride_vb, stride_table, page_size,
        HEAD_DIM, BLOCK_N, PAGED, CAUSAL, True, UPCAST, DOT_PRECISION)

    b_out, b_lse2 = finish_state(b_acc, b_m, b_l)
    o_state = o_slot_out * NUM_Q_HEADS + o_head
    tl.store(part_out_ptr + o_state[:, None] * HEAD_DIM + o_d[None, :], b_out, mask=m_row[:, None])
    tl.store(part_lse_ptr + o_state, b_lse2, mask=m_row)


@triton.jit
def merge_kernel(
    part_out_ptr, part_lse_ptr, slot_offsets_ptr, out_ptr, lse_ptr,
    stride_ot, stride_oh,
    NUM_Q_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_S: tl.constexpr,
    LN2: tl.constexpr,
):
    """Fold every chunk state of a token, in slot order, into its result.

    Grid: ``(total_q, cdiv(Hq, BLOCK_H))``. Two passes over the token's slots: the max of the
    ``lse2`` (so no weight overflows; ``BLOCK_S`` slots per load), then
    ``out = sum_i w_i out_i / sum_i w_i`` with ``w_i = exp2(lse2_i - max)``, one slot at a time
    (its loads do not depend on the sums, so they pipeline). The order of the sums is the slot
    order, fixed by the plan.

    Args:
        part_out_ptr: fp32 ``[num_slots, Hq, D]``.
        part_lse_ptr: fp32 ``[num_slots, Hq]`` (base 2).
        slot_offsets_ptr: int32 ``[total_q + 1]``: token ``t`` owns slots
            ``slot_offsets[t] : slot_offsets[t + 1]``.
        out_ptr: ``[total_q, Hq, D]`` in q's dtype.
        lse_ptr: fp32 ``[total_q, Hq]``, natural log.
        LN2: ``ln 2``, to convert ``lse2`` at the boundary.
    """
    i_t = tl.program_id(0)
    i_hb = tl.program_id(1)
    o_h = i_hb * BLOCK_H + tl.arange(0, BLOCK_H)
    m_h = o_h < NUM_Q_HEADS
    o_d = tl.arange(0, HEAD_DIM)
    first = tl.load(slot_offsets_ptr + i_t).to(tl.int64)
    last = tl.load(slot_offsets_ptr + i_t + 1).to(tl.int64)

    b_max = tl.full([BLOCK_H], float("-inf"), dtype=tl.float32)
    o_s = tl.arange(0, BLOCK_S)
    for s0 in range(first, last, BLOCK_S):  # the max is exact in any order: BLOCK_S slots a load
        o_state = (s0 + o_s)[:, None] * NUM_Q_HEADS + o_h[None, :]
        m_state = ((s0 + o_s) < last)[:, None] & m_h[None, :]
        b_max = tl.maximum(b_max, tl.max(tl.load(part_lse_ptr + o_state, mask=m_state, other=float("-inf")), 0))
    m_safe = tl.where(b_max == float("-inf"), 0.0, b_max)

    b_sum = tl.zeros([BLOCK_H], dtype=tl.float32)
    b_acc = tl.zeros([BLOCK_H, HEAD_DIM], dtype=tl.float32)
    for s in range(first, last):
        o_state = s * NUM_Q_HEADS + o_h
        b_w = tl.exp2(tl.load(part_lse_ptr + o_state, mask=m_h, other=float("-inf")) - m_safe)
        b_o = tl.load(part_out_ptr + o_state[:, None] * HEAD_DIM + o_d[None, :], mask=m_h[:, None], other=0.0)
        b_sum += b_w
        b_acc += b_w[:, None] * b_o

    seen = b_sum > 0
    b_sum_safe = tl.where(seen, b_sum, 1.0)
    b_out = b_acc / b_sum_safe[:, None]
    b_lse = tl.where(seen, (m_safe + tl.log2(b_sum_safe)) * LN2, float("-inf"))
    o_out = i_t.to(tl.int64) * stride_ot + o_h[:, None] * stride_oh + o_d[None, :]
    tl.store(out_ptr + o_out, b_out.to(out_ptr.dtype.element_ty), mask=m_h[:, None])
    tl.store(lse_ptr + i_t.to(tl.int64) * NUM_Q_HEADS + o_h, b_lse, mask=m_h)
