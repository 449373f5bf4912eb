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
from relaycore.types import AttentionState, PagedKV
from relaycore.validation import BatchMeta

#: Upper bound on the elements of one materialised score matrix; larger problems are cut into
#: row blocks so that memory stays bounded (256 Mi float32 = 1 GiB).
MAX_SCORE_ELEMENTS = 1 << 28


def supports(meta: BatchMeta) -> str | None:
    """``None`` when the batch holds torch tensors (any device, any float dtype)."""
    if meta.array_kind != "torch":
        return "needs torch tensors, got NumPy arrays (use backend='reference', or torch.from_numpy)"
    return None


def run(q, cu_seqlens_q, kv, prefixes, meta: BatchMeta) -> AttentionState:
    """Relay attention on validated torch inputs (see ``relaycore.relay_attention``).

    Returns:
        ``out [total_q, Hq, D]`` in q's dtype, ``lse [total_q, Hq]`` float32 (float64 for
        float64 q).
    """
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    total = _own_part(q, kv, meta, acc)
    for level, lens, ids in zip(prefixes, meta.prefix_lens, meta.prefix_ids):
        total = state.merge(_prefix_part(q, level, lens, ids, meta, acc), total)
    return AttentionState(total.out.to(q.dtype), total.lse)


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


def _own_token_index(kv, meta: BatchMeta, max_kv: int) -> np.ndarray:
    """int64 ``[B, max_kv]``: row of each request's own token ``t`` in the flat KV storage
    (``[total_kv]`` ragged, ``[num_blocks * block_size]`` paged); 0 past ``kv_len``."""
    t = np.arange(max_kv)[None, :]
    valid = t < meta.kv_lens[:, None]
    if isinstance(kv, PagedKV):
        table = kv.block_table.detach().cpu().numpy().astype(np.int64)
        columns = np.minimum(t[0] // meta.block_size, max(table.shape[1] - 1, 0))  # clamp: masked anyway
        index = table[:, columns] * meta.block_size + t % meta.block_size
    else:
        starts = np.concatenate([[0], np.cumsum(meta.kv_lens)])[:-1]
        index = starts[:, None] + t
    return np.where(valid, index, 0)


def _own_part(q, kv, meta: BatchMeta, acc) -> AttentionState:
    """The state of every query over its request's own tokens: one padded, masked product."""
    total_q, hq, d = q.shape
    hkv, g, batch = meta.num_kv_heads, meta.group_size, meta.batch
    if batch == 0 or total_q == 0:
        return AttentionState(q.new_zeros((total_q, hq, d), dtype=acc), q.new_full((total_q, hq), float("-inf"), dtype=acc))
    max_q, max_kv = int(meta.q_lens.max()), int(meta.kv_lens.max())
    if isinstance(kv, PagedKV):
        k_flat, v_flat = (c.reshape(-1, hkv, d) for c in (kv.k_cache, kv.v_cache))
    else:
        k_flat, v_flat = kv.k, kv.v
    index = torch.from_numpy(_own_token_index(kv, meta, max_kv)).to(q.device)
    k = k_flat[index].to(acc).permute(0, 2, 1, 3)  # [B, Hkv, max_kv, D]
    v = v_flat[index].to(acc).permute(0, 2, 1, 3)

    j = np.arange(max_q)[None, :]
    q_valid = j < meta.q_lens[:, None]
    q_index = torch.from_numpy(np.where(q_valid, meta.cu_seqlens_q[:-1, None] + j, 0)).to(q.device)
    qb = q[q_index].to(acc).view(batch, max_q, hkv, g, d).permute(0, 2, 1, 3, 4).reshape(batch, hkv, max_q * g, d)

    # key t is seen by query j when t < kv_len and, causally, t <= kv_len - q_len + j
    t = np.arange(max_kv)[None, None, :]
    seen = t < meta.kv_lens[:, None, None]
    if meta.causal:
        seen = seen & (t <= (meta.kv_lens - meta.q_lens)[:, None, None] + j[:, :, None])
    seen = np.broadcast_to(seen, (batch, max_q, max_kv))
    mask = torch.from_numpy(np.repeat(seen, g, axis=1)).to(q.device)[:, None]  # [B, 1, max_q*G, max_kv]

    part = attend(qb, k, v, meta.softmax_scale, mask)
    out = part.out.view(batch, hkv, max_q, g, d).permute(0, 2, 1, 3, 4).reshape(batch, max_q, hq, d)
    lse = part.lse.view(batch, hkv, max_q, g).permute(0, 2, 1, 3).reshape(batch, max_q, hq)
    valid = torch.from_numpy(q_valid).to(q.device)
    return AttentionState(out[valid], lse[valid])
