"""``relaycore.testing.blocked_steps``: hand counts, never above the default count, and the
tighter bound it gives holds for a kernel of that blocking and catches bugs the default misses.

``blocked_kernel`` below is a kernel of the counted blocking written in torch, following the
precision policy of ``relaycore.bounds``: fp32 scores, exponentials and sums, the weights
rounded to the input format before the products with the values, one running state per part
rescaled once per block, the parts' states folded at once or pairwise, the output rounded once.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relaycore.bounds import default_steps
from relaycore.reference.problem import load
from relaycore.testing import MERGES, blocked_steps, check, make_batch
from relaycore.testing.strategies import batches

torch = pytest.importorskip("torch")

TORCH = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


# ---- the count ----------------------------------------------------------------------------------


def test_hand_counts():
    # 2 queries over 40 own keys (causal: 39 and 40 seen) after a prefix of 100, blocks of 16
    batch = make_batch([2], [40], prefix_lens=[[100]], prefix_ids=[[0]])
    assert blocked_steps(batch, 16)[:, 0].tolist() == [7 + 2] * 2  # the prefix's 7 blocks, one fold
    assert blocked_steps(batch, 16, merge="pairwise")[:, 0].tolist() == [9, 9]  # two parts: one merge
    assert blocked_steps(batch, 16, split=False)[:, 0].tolist() == [7 + 3] * 2
    # chunks of 32: the prefix 32 + 32 + 32 + 4, the own keys 32 + 7 (or 8): 2 blocks at most, 6 parts
    assert blocked_steps(batch, 16, chunk=32)[:, 0].tolist() == [2 + 2] * 2
    assert blocked_steps(batch, 16, chunk=32, merge="pairwise")[:, 0].tolist() == [2 + 2 * 5] * 2
    # one part: no merge, whatever the merge form
    alone = make_batch([3], [70])  # causal: 68, 69, 70 keys
    for merge in MERGES:
        assert blocked_steps(alone, 16, merge=merge)[:, 0].tolist() == [5, 5, 5]
    assert blocked_steps(alone, 64, chunk=64)[:, 0].tolist() == [1 + 2, 1 + 2, 1 + 2]
    # a row that sees no key takes no step
    empty = make_batch([1, 1], [1, 1], prefix_lens=[[0]], prefix_ids=[[0, -1]], causal=False)
    assert blocked_steps(empty, 16)[:, 0].tolist() == [1, 1]


@pytest.mark.parametrize("bad", [0, -16, 1.5, True, "64"])
def test_refuses_a_block_that_is_not_a_positive_int(bad):
    batch = make_batch([1], [4])
    with pytest.raises(ValueError, match=r"block_n: expected a positive int, got"):
        blocked_steps(batch, bad)
    with pytest.raises(ValueError, match=r"chunk: expected a positive int, got"):
        blocked_steps(batch, 16, chunk=bad)


def test_refuses_an_unknown_merge_and_a_non_batch():
    batch = make_batch([1], [4])
    with pytest.raises(ValueError, match=r"merge: expected one of \('fold', 'pairwise'\), got 'tree'"):
        blocked_steps(batch, 16, merge="tree")
    with pytest.raises(TypeError, match=r"batch: expected a relaycore.testing.Batch, got tuple"):
        blocked_steps(batch.arguments(), 16)


@settings(max_examples=60, deadline=None)
@given(batch=batches(), block_n=st.sampled_from([1, 16, 64]), split=st.booleans(),
       chunk=st.sampled_from([None, 8, 64]), merge=st.sampled_from(MERGES))
def test_never_above_the_default_count(batch, block_n, split, chunk, merge):
    steps = blocked_steps(batch, block_n, split=split, chunk=chunk, merge=merge)[:, 0]
    keys = batch.oracle().stats.num_keys[:, 0]
    assert steps.shape == keys.shape
    assert np.all((steps == 0) == (keys == 0))
    assert np.all(steps <= default_steps(keys))


# ---- a kernel of that blocking ------------------------------------------------------------------


def _state(q, k, v, dtype, block_n):
    """One part's running state over blocks of ``block_n`` keys: ``(o, lse)`` in fp32, rows of
    ``q [R, D]`` over ``k, v [n, D]`` (``q`` already scaled); ``(0, -inf)`` for no key."""
    rows, dim = q.shape
    m = torch.full((rows,), -math.inf)
    l = torch.zeros(rows)
    acc = torch.zeros(rows, dim)
    for lo in range(0, k.shape[0], block_n):
        s = q @ k[lo : lo + block_n].T
        m_new = torch.maximum(m, s.max(dim=1).values)
        alpha = torch.exp(m - m_new)
        p = torch.exp(s - m_new[:, None])
        l = l * alpha + p.sum(dim=1)
        acc = acc * alpha[:, None] + p.to(TORCH[dtype]).float() @ v[lo : lo + block_n]
        m = m_new
    if k.shape[0] == 0:
        return acc, m
    return acc / l[:, None], m + torch.log(l)


def _fold(states, merge):
    states = [(o, lse) for o, lse in states if torch.isfinite(lse).all()]
    if not states:
        return None
    if merge == "pairwise":
        out, lse = states[0]
        for o, l2 in states[1:]:
            top = torch.maximum(lse, l2)
            wa, wb = torch.exp(lse - top), torch.exp(l2 - top)
            out, lse = (wa[:, None] * out + wb[:, None] * o) / (wa + wb)[:, None], top + torch.log(wa + wb)
        return out, lse
    top = torch.stack([lse for _, lse in states]).max(dim=0).values
    w = [torch.exp(lse - top) for _, lse in states]
    total = sum(w)
    return sum(wi[:, None] * o for wi, (o, _) in zip(w, states)) / total[:, None], top + torch.log(total)


def blocked_kernel(batch, block_n, *, split=True, chunk=None, merge="fold", drop_last_key=False):
    """``(out, lse)`` of ``batch`` computed with ``blocked_steps``'s blocking (module doc).
    ``drop_last_key``: a bug, each row ignores the last key it should see."""
    dtype = batch.dtype
    problem = load(*batch.arguments()[0], **batch.arguments()[1])
    meta = problem.meta
    scale = meta.softmax_scale
    group = meta.num_q_heads // meta.num_kv_heads
    q_all = torch.from_numpy(problem.q).float()
    out = torch.zeros(q_all.shape)
    lse = torch.full(q_all.shape[:2], -math.inf)
    for b in range(meta.batch):
        lo = int(batch.cu_seqlens_q[b])
        seen = problem.keys_seen(b)
        k, v = (torch.from_numpy(x).float() for x in problem.context(b))
        own = problem.own_k[b].shape[0]
        # where each segment of the context starts and ends: the prefixes read, then the own KV
        lengths = [int(lens[ids[b]]) for lens, ids in zip(meta.prefix_lens, meta.prefix_ids) if ids[b] >= 0]
        bounds = np.cumsum([0] + lengths + [own])
        for j, n in enumerate(seen):
            n = int(n) - int(drop_last_key and n > 0)
            for h in range(meta.num_q_heads):
                q = (q_all[lo + j, h] * scale)[None]
                kh, vh = k[:n, h // group], v[:n, h // group]
                if not split:
                    o, l2 = _state(q, kh, vh, dtype, block_n)
                    result = (o, l2) if n else None
                else:
                    parts = []
                    for s0, s1 in zip(bounds[:-1], bounds[1:]):
                        s1 = min(int(s1), n)
                        step = chunk or max(s1 - int(s0), 1)
                        parts += [_state(q, kh[c:min(c + step, s1)], vh[c:min(c + step, s1)], dtype, block_n)
                                  for c in range(int(s0), s1, step)]
                    result = _fold(parts, merge)
                if result is not None:
                    out[lo + j, h], lse[lo + j, h] = result[0][0], result[1][0]
    return out.to(TORCH[dtype]), lse


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
@settings(max_examples=25, deadline=None)
@given(data=st.data(), block_n=st.sampled_from([2, 16]), split=st.booleans(), chunk=st.sampled_from([None, 5]),
       merge=st.sampled_from(MERGES))
def test_a_kernel_of_that_blocking_stays_within_its_bound(dtype, data, block_n, split, chunk, merge):
    batch = data.draw(batches(dtypes=(dtype,), max_batch=3, max_q_len=3, max_kv_len=24, max_prefix_len=24,
                              head_dims=(8,), score_magnitudes=(None, 30.0)))
    result = blocked_kernel(batch, block_n, split=split, chunk=chunk, merge=merge)
    report = check(result, batch, steps=blocked_steps(batch, block_n, split=split, chunk=chunk, merge=merge))
    assert report.passed, str(report)


@pytest.mark.parametrize("split", [True, False])
def test_the_counted_bound_catches_a_dropped_key_that_the_default_bound_misses(split):
    # one long row in fp32 (the bound's step term dominates there): 512 prefix + 1024 own keys
    batch = make_batch([1], [1024], prefix_lens=[[512]], prefix_ids=[[0]], num_q_heads=1, num_kv_heads=1,
                       head_dim=32, dtype="float32", seed=5)
    steps = blocked_steps(batch, 64, split=split)
    assert check(blocked_kernel(batch, 64, split=split), batch, steps=steps).passed
    buggy = blocked_kernel(batch, 64, split=split, drop_last_key=True)
    loose = check(buggy, batch)
    tight = check(buggy, batch, steps=steps)
    assert loose.passed, "the default count, for any blocking, leaves room for this bug"
    assert not tight.passed and tight.out_ratio > 3 * loose.out_ratio, str(tight)
