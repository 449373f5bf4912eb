"""The portable PyTorch backend: the relay split in plain torch ops, on any device.

Each prefix's part is one batched matrix product over every query that shares it; the
requests' own part is one padded, masked batched product; the parts are merged with
``relaycore.state.merge``. It is the CPU path and the baseline the benchmarks compare with, not
a fast path: scores and weights are materialised in the accumulation dtype.

Precision policy: inputs of any float dtype; products and sums in float32 (float64 for float64
inputs); the output rounded once to q's dtype; lse float32 (float64 for float64 inputs).
"""

from __future__ import annotations

import numpy as np
import torch

from relaycore import state
from relaycore.buffers import store
from relaycore.types import AttentionState, PagedKV
from relaycore.validation import BatchMeta, to_host_ints

#: Upper bound on the elements of one materialised array (a score matrix; the own part's gathered
#: keys and values); larger problems are cut into row blocks (prefix part) or request groups
#: (own part) so that memory stays bounded (256 Mi float32 = 1 GiB); a single request whose own
#: part is larger still runs in one piece.
MAX_SCORE_ELEMENTS = 1 << 28


def supports(meta: BatchMeta) -> str | None:
    """``None`` when the batch holds torch tensors (any device, any float dtype)."""
    if meta.array_kind != "torch":
        return "needs torch tensors, got NumPy arrays (use backend='reference', or torch.from_numpy)"
    return None


def run(q, cu_seqlens_q, kv, prefixes, meta: BatchMeta, *, out=None, lse=None) -> AttentionState:
    """Relay attention on validated torch inputs (see ``relaycore.relay_attention``), written
    into ``out``/``lse`` where given (``relaycore.buffers.store``).

    Returns:
        ``out [total_q, Hq, D]`` in q's dtype, ``lse [total_q, Hq]`` float32 (float64 for
        float64 q).
    """
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    total = _own_part(q, kv, meta, acc)
    for level, lens, ids in zip(prefixes, meta.prefix_lens, meta.prefix_ids):
        total = state.merge(_prefix_part(q, level, lens, ids, meta, acc), total)
    return store(AttentionState(total.out.to(q.dtype), total.lse), out, lse)


def attend(q, k, v, scale: float, mask=None) -> AttentionState:
    """Attention state of a stack of query blocks over key blocks.

    Args:
        q: ``[*batch, M, D]`` in the accumulation dtype.
        k, v: ``[*batch, N, D]`` in the accumulation dtype.
        scale: softmax scale.
        mask: bool, broadcastable to ``[*batch, M, N]``; ``True`` where the key is seen.

    Returns:
        ``out [*batch, M, D]``, ``lse [*batch, M]``; rows that see no key are ``(0, -inf)``.
    """
    if k.shape[-2] == 0:
        return AttentionState(q.new_zeros(q.shape), q.new_full(q.shape[:-1], float("-inf")))
    s = torch.matmul(q, k.transpose(-1, -2)) * scale
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    m = s.amax(dim=-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    p = torch.exp(s - m)  # masked scores give exp(-inf) = 0
    denom = p.sum(dim=-1)
    seen = denom > 0
    out = torch.matmul(p, v) / torch.where(seen, denom, torch.ones_like(denom)).unsqueeze(-1)
    lse = torch.where(seen, m.squeeze(-1) + torch.log(denom), torch.full_like(denom, float("-inf")))
    return AttentionState(out, lse)


def _row_blocks(rows: int, cols: int, heads: int):
    """Row ranges whose score matrices stay under ``MAX_SCORE_ELEMENTS``."""
    step = max(1, MAX_SCORE_ELEMENTS // max(1, cols * heads))
    return [(r, min(rows, r + step)) for r in range(0, rows, step)] or [(0, 0)]


def _prefix_part(q, level, lens: np.ndarray, ids: np.ndarray, meta: BatchMeta, acc) -> AttentionState:
    """The state of every query over its prefix at one level: one matrix product per prefix."""
    total_q, hq, d = q.shape
    hkv, g = meta.num_kv_heads, meta.group_size
    out = q.new_zeros((total_q, hq, d), dtype=acc)
    lse = q.new_full((total_q, hq), float("-inf"), dtype=acc)
    starts = np.concatenate([[0], np.cumsum(lens)])
    cu = meta.cu_seqlens_q
    for p in np.unique(ids[ids >= 0]):
        users = np.flatnonzero(ids == p)
        tokens = np.concatenate([np.arange(cu[b], cu[b + 1]) for b in users])
        if tokens.size == 0 or lens[p] == 0:
            continue
        tokens = torch.from_numpy(tokens).to(q.device)
        k = level.k[starts[p] : starts[p + 1]].to(acc).permute(1, 0, 2)  # [Hkv, L, D]
        v = level.v[starts[p] : starts[p + 1]].to(acc).permute(1, 0, 2)
        for lo, hi in _row_blocks(tokens.numel(), int(lens[p]), hq):
            rows = tokens[lo:hi]
            # rows of the matrix: (token, query head of the group), per KV head
            qp = q[rows].to(acc).view(-1, hkv, g, d).permute(1, 0, 2, 3).reshape(hkv, -1, d)
            part = attend(qp, k, v, meta.softmax_scale)
            out[rows] = part.out.view(hkv, -1, g, d).permute(1, 0, 2, 3).reshape(-1, hq, d)
            lse[rows] = part.lse.view(hkv, -1, g).permute(1, 0, 2).reshape(-1, hq)
    return AttentionState(out, lse)


def group_elements(requests: int, max_q: int, max_kv: int, meta: BatchMeta) -> int:
    """The most elements one padded own-part array of a group of requests holds: its scores
    ``[requests, Hq, max q_len, max kv_len]`` or its gathered keys and values
    ``2 x [requests, Hkv, max kv_len, D]`` (the larger at decode with GQA)."""
    keys = 2 * meta.num_kv_heads * meta.head_dim
    return requests * max_kv * max(meta.num_q_heads * max_q, keys)


def _request_groups(meta: BatchMeta):
    """Consecutive request ranges whose padded own-part arrays (``group_elements``) stay under
    ``MAX_SCORE_ELEMENTS``; a request over it alone is a group of its own."""
    groups, lo, max_q, max_kv = [], 0, 0, 0
    for b in range(meta.batch):
        q_b, kv_b = max(max_q, int(meta.q_lens[b])), max(max_kv, int(meta.kv_lens[b]))
        if b > lo and group_elements(b - lo + 1, q_b, kv_b, meta) > MAX_SCORE_ELEMENTS:
            groups.append((lo, b))
            lo, q_b, kv_b = b, int(meta.q_lens[b]), int(meta.kv_lens[b])
        max_q, max_kv = q_b, kv_b
    return groups + [(lo, meta.batch)]


def _own_token_index(table, kv_starts: np.ndarray, kv_lens: np.ndarray, block_size: int, max_kv: int) -> np.ndarray:
    """int64 ``[n, max_kv]``: row of each request's own token ``t`` in the flat KV storage
    (``[total_kv]`` ragged, ``[num_blocks * block_size]`` paged); 0 past ``kv_len`` (a row that
    may hold anything: the caller masks what it gathers there).

    Args:
        table: int64 ``[n, max_blocks]`` block-table rows of the requests (paged), or ``None``.
        kv_starts: int64 ``[n]`` first row of each request (ragged).
        kv_lens: int64 ``[n]`` own tokens per request.
    """
    t = np.arange(max_kv)[None, :]
    valid = t < kv_lens[:, None]
    if table is not None:
        columns = np.minimum(t[0] // block_size, max(table.shape[1] - 1, 0))  # clamp: masked anyway
        index = table[:, columns] * block_size + t % block_size
    else:
        index = kv_starts[:, None] + t
    return np.where(valid, index, 0)


def _own_part(q, kv, meta: BatchMeta, acc) -> AttentionState:
    """The state of every query over its request's own tokens: one padded, masked product per
    group of requests (``_request_groups``)."""
    total_q, hq, d = q.shape
    out = q.new_zeros((total_q, hq, d), dtype=acc)
    lse = q.new_full((total_q, hq), float("-inf"), dtype=acc)
    if meta.batch == 0 or total_q == 0:
        return AttentionState(out, lse)
    if isinstance(kv, PagedKV):
        k_flat, v_flat = (c.reshape(-1, meta.num_kv_heads, d) for c in (kv.k_cache, kv.v_cache))
        table = to_host_ints(kv.block_table) if meta.host_block_table is None else meta.host_block_table
    else:
        k_flat, v_flat, table = kv.k, kv.v, None
    kv_starts = np.concatenate([[0], np.cumsum(meta.kv_lens)])[:-1]
    for lo, hi in _request_groups(meta):
        rows = slice(int(meta.cu_seqlens_q[lo]), int(meta.cu_seqlens_q[hi]))
        group_table = None if table is None else table[lo:hi]
        part = _own_group(q, k_flat, v_flat, group_table, kv_starts[lo:hi], meta, lo, hi, acc)
        out[rows], lse[rows] = part.out, part.lse
    return AttentionState(out, lse)


def _own_group(q, k_flat, v_flat, table, kv_starts, meta: BatchMeta, lo: int, hi: int, acc) -> AttentionState:
    """Own-part states of the queries of requests ``lo:hi`` (in token order)."""
    hq, d = q.shape[1:]
    hkv, g, n = meta.num_kv_heads, meta.group_size, hi - lo
    q_lens, kv_lens = meta.q_lens[lo:hi], meta.kv_lens[lo:hi]
    max_q, max_kv = int(q_lens.max()), int(kv_lens.max())
    index = torch.from_numpy(_own_token_index(table, kv_starts, kv_lens, meta.block_size, max_kv)).to(q.device)
    padding = torch.from_numpy(np.arange(max_kv)[None, :] >= kv_lens[:, None]).to(q.device)[:, None, :, None]
    k = k_flat[index].to(acc).permute(0, 2, 1, 3)  # [n, Hkv, max_kv, D]
    # the padding gathered row 0, which may hold anything (a NaN in a free block): its weight is
    # 0, but 0 * NaN is not, so its values are zeroed (its scores are masked below)
    v = v_flat[index].to(acc).permute(0, 2, 1, 3).masked_fill(padding, 0)

    j = np.arange(max_q)[None, :]
    q_valid = j < q_lens[:, None]
    q_index = torch.from_numpy(np.where(q_valid, meta.cu_seqlens_q[lo:hi, None] + j, 0)).to(q.device)
    qb = q[q_index].to(acc).view(n, max_q, hkv, g, d).permute(0, 2, 1, 3, 4).reshape(n, hkv, max_q * g, d)

    # key t is seen by query j when t < kv_len and, causally, t <= kv_len - q_len + j
    t = np.arange(max_kv)[None, None, :]
    seen = t < kv_lens[:, None, None]
    if meta.causal:
        seen = seen & (t <= (kv_lens - q_lens)[:, None, None] + j[:, :, None])
    seen = np.broadcast_to(seen, (n, max_q, max_kv))
    mask = torch.from_numpy(np.repeat(seen, g, axis=1)).to(q.device)[:, None]  # [n, 1, max_q*G, max_kv]

    part = attend(qb, k, v, meta.softmax_scale, mask)
    out = part.out.view(n, hkv, max_q, g, d).permute(0, 2, 1, 3, 4).reshape(n, max_q, hq, d)
    lse = part.lse.view(n, hkv, max_q, g).permute(0, 2, 1, 3).reshape(n, max_q, hq)
    valid = torch.from_numpy(q_valid).to(q.device)
    return AttentionState(out[valid], lse[valid])
