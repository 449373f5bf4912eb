"""Kernels with the flaws a user review found the testing kit blind to, and a correct twin.

Each has ``relaycore.relay_attention``'s signature and returns ``(out in q's dtype, lse float32)``
(float64 for float64 q), for ``relaycore.testing.compare`` and ``relaycore verify --function``.
"""

from __future__ import annotations

import numpy as np
import torch

import relaycore
from relaycore.reference.problem import load

#: Keys per block of ``online_softmax`` (``relaycore verify --block-n 16 --single-pass``).
BLOCK_N = 16


def online_softmax(q, cu_seqlens_q, kv, prefixes, *, causal=True, softmax_scale=None, round_accumulator=False):
    """FlashAttention's loop in torch, within the precision policy: per request, one pass over
    the context (prefixes, then own tokens) in blocks of ``BLOCK_N`` keys, scores, exponentials,
    sums and the output accumulator in fp32, weights rounded to q's dtype before ``P @ V``.

    ``round_accumulator``: the flaw, the output accumulator rounded to q's dtype after every
    block (an accumulator kept in fp16/bf16).
    """
    problem = load(q, cu_seqlens_q, kv, prefixes, causal=causal, softmax_scale=softmax_scale)
    meta, dtype = problem.meta, q.dtype
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    total_q, hq, d = q.shape
    out = torch.zeros((total_q, hq, d), dtype=acc)
    lse = torch.full((total_q, hq), float("-inf"), dtype=acc)
    for b in range(meta.batch):
        lo, hi = int(meta.cu_seqlens_q[b]), int(meta.cu_seqlens_q[b + 1])
        if hi == lo:
            continue
        k, v = (torch.from_numpy(x).to(acc).repeat_interleave(meta.group_size, 1) for x in problem.context(b))
        seen = torch.from_numpy(problem.keys_seen(b))
        qb = q[lo:hi].to(acc)
        m = torch.full((hq, hi - lo), float("-inf"), dtype=acc)
        total = torch.zeros((hq, hi - lo), dtype=acc)
        o = torch.zeros((hq, hi - lo, d), dtype=acc)
        for start in range(0, k.shape[0], BLOCK_N):
            s = torch.einsum("nhd,khd->hnk", qb, k[start:start + BLOCK_N]) * meta.softmax_scale
            visible = torch.arange(start, start + s.shape[-1])[None, :] < seen[:, None]
            s = s.masked_fill(~visible[None], float("-inf"))
            m_new = torch.maximum(m, s.amax(-1))
            shift = torch.where(torch.isinf(m_new), torch.zeros_like(m_new), m_new)
            alpha, p = torch.exp(m - shift), torch.exp(s - shift[..., None])
            total = total * alpha + p.sum(-1)
            o = o * alpha[..., None] + torch.einsum("hnk,khd->hnd", p.to(dtype).to(acc), v[start:start + BLOCK_N])
            if round_accumulator:
                o = o.to(dtype).to(acc)
            m = m_new
        some = total > 0
        out[lo:hi] = torch.where(some[..., None], o / torch.where(some, total, 1.0)[..., None], 0.0).transpose(0, 1)
        lse[lo:hi] = torch.where(some, m + torch.log(total), float("-inf")).T
    return out.to(dtype), lse.to(torch.float64 if dtype == torch.float64 else torch.float32)


def accumulator_rounded(q, cu_seqlens_q, kv, prefixes, *, causal=True, softmax_scale=None):
    """``online_softmax`` with its output accumulator rounded to q's dtype after every block."""
    return online_softmax(q, cu_seqlens_q, kv, prefixes, causal=causal, softmax_scale=softmax_scale,
                          round_accumulator=True)


def _relay(q, cu_seqlens_q, kv, prefixes, *, causal, softmax_scale):
    """The best backend for the inputs: the reference for NumPy arrays, else torch's or Triton's."""
    return relaycore.relay_attention(q, cu_seqlens_q, kv, prefixes, causal=causal, softmax_scale=softmax_scale)


def doubles_q_in_place(q, cu_seqlens_q, kv, prefixes, *, causal=True, softmax_scale=None):
    """Writes a pre-scaled q back into the caller's buffer, then attends with it."""
    q *= 2
    return _relay(q, cu_seqlens_q, kv, prefixes, causal=causal, softmax_scale=softmax_scale)


def zeroes_values_in_place(q, cu_seqlens_q, kv, prefixes, *, causal=True, softmax_scale=None):
    """Clears the own values (a scratch buffer mistaken for its own), then attends with them."""
    (kv.v_cache if isinstance(kv, relaycore.PagedKV) else kv.v)[...] = 0
    return _relay(q, cu_seqlens_q, kv, prefixes, causal=causal, softmax_scale=softmax_scale)


def writes_a_prefix_id(q, cu_seqlens_q, kv, prefixes, *, causal=True, softmax_scale=None):
    """Attends correctly, then marks every request of the first prefix level as reading no
    prefix in the caller's metadata (a planner that edits its inputs)."""
    result = _relay(q, cu_seqlens_q, kv, prefixes, causal=causal, softmax_scale=softmax_scale)
    if prefixes:
        prefixes[0].prefix_ids[...] = -1
    return result


def torch_on_numpy(q, cu_seqlens_q, kv, prefixes, *, causal=True, softmax_scale=None):
    """A torch kernel that takes the NumPy float64 arrays of ``compare(fn, batch)`` as they come
    and so computes, and returns, float64 tensors."""
    tensors = lambda arrays: type(arrays)(*(torch.from_numpy(np.asarray(x)) for x in arrays))  # noqa: E731
    return _relay(torch.from_numpy(q), torch.from_numpy(cu_seqlens_q), tensors(kv),
                          tuple(tensors(level) for level in prefixes), causal=causal, softmax_scale=softmax_scale)


def stored_cascade(q, cu_seqlens_q, kv, prefixes, *, causal=True, softmax_scale=None):
    """A cascade that stores each segment's output in q's dtype before merging, as a kernel that
    runs each prefix level and the own KV into an output tensor does (FlashInfer's
    ``MultiLevelCascadeAttentionWrapper``): per request, each segment (its prefix of each level,
    then its own tokens) in one softmax in fp32 (weights rounded to q's dtype before ``P @ V``),
    its output rounded to q's dtype, its lse kept in fp32, the segments merged left to right in
    ``relaycore.state.merge``'s order from the stored outputs. Within the precision policy with
    ``stored`` = the merges a row's keys pass (``proofs/error_bound.py``, Lemma 8)."""
    problem = load(q, cu_seqlens_q, kv, prefixes, causal=causal, softmax_scale=softmax_scale)
    meta, dtype = problem.meta, q.dtype
    total_q, hq, d = q.shape
    out = torch.zeros((total_q, hq, d), dtype=torch.float32)
    lse = torch.full((total_q, hq), float("-inf"), dtype=torch.float32)
    for b in range(meta.batch):
        lo, hi = int(meta.cu_seqlens_q[b]), int(meta.cu_seqlens_q[b + 1])
        if hi == lo:
            continue
        k, v = (torch.from_numpy(x).float().repeat_interleave(meta.group_size, 1) for x in problem.context(b))
        seen = torch.from_numpy(problem.keys_seen(b))
        lens = [int(lens[ids[b]]) for lens, ids in zip(meta.prefix_lens, meta.prefix_ids) if ids[b] >= 0]
        starts = np.cumsum([0] + lens + [int(meta.kv_lens[b])])
        qb = q[lo:hi].float()
        o_run, l_run = None, None
        for start, stop in zip(starts[:-1], starts[1:]):
            s = torch.einsum("nhd,khd->hnk", qb, k[start:stop]) * meta.softmax_scale
            visible = torch.arange(start, stop)[None, :] < seen[:, None]
            s = s.masked_fill(~visible[None], float("-inf"))
            m = s.amax(-1) if stop > start else torch.full(s.shape[:-1], float("-inf"))  # a prefix may be empty
            shift = torch.where(torch.isinf(m), torch.zeros_like(m), m)
            p = torch.exp(s - shift[..., None])
            total = p.sum(-1)
            some = total > 0
            o = torch.einsum("hnk,khd->hnd", p.to(dtype).float(), v[start:stop])
            o = o / torch.where(some, total, 1.0)[..., None]
            o = torch.where(some[..., None], o, 0.0).to(dtype).float()  # stored in q's dtype
            seg_lse = torch.where(some, m + torch.log(total), float("-inf"))
            if o_run is None:
                o_run, l_run = o, seg_lse
                continue
            top = torch.maximum(l_run, seg_lse)
            top = torch.where(torch.isinf(top), torch.zeros_like(top), top)
            w_run, w_seg = torch.exp(l_run - top), torch.exp(seg_lse - top)
            t = w_run + w_seg
            t_safe = torch.where(t > 0, t, 1.0)
            o_run = ((w_run / t_safe)[..., None] * o_run.to(dtype).float() + (w_seg / t_safe)[..., None] * o)
            l_run = torch.where(t > 0, top + torch.log(t_safe), float("-inf"))
        out[lo:hi], lse[lo:hi] = o_run.transpose(0, 1), l_run.T
    return out.to(dtype), lse
