"""``relaycore.testing.blocked_steps``: hand counts, never above the default count, and the
tighter bound it gives holds for a kernel of that blocking and catches bugs the default misses.

``blocked_kernel`` below is a kernel of the counted blocking written in torch, following the
precision policy of ``relaycore.bounds``: fp32 scores, exponentials and sums, the weights
rounded to the input format before the products with the values, one running state per part
rescaled once per block, the parts' states folded at once, pairwise or one at a time into sums
rescaled as their maximum grows (FlashInfer's order), the output rounded once.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relaycore.bounds import default_steps
from relaycore.proofs.error_bound import request_chunk_steps, segment_chunk_steps
from relaycore.reference.problem import load
from relaycore.testing import MERGES, blocked_steps, check, make_batch
from relaycore.testing.steps import _segments
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
    assert blocked_steps(batch, 16, chunk=32, merge="running")[:, 0].tolist() == [2 + 6] * 2  # one per part
    assert blocked_steps(batch, 16, merge="running")[:, 0].tolist() == [7 + 2] * 2
    # divisions within 2 ulp (__fdividef): one step more, with or without a merge
    assert blocked_steps(batch, 16, chunk=32, merge="running", fast_division=True)[:, 0].tolist() == [2 + 6 + 1] * 2
    assert blocked_steps(batch, 16, split=False, fast_division=True)[:, 0].tolist() == [7 + 3 + 1] * 2
    # pairwise merges dividing within 2 ulp (Lemma 8's last part): one more per merge a key passes, at least one
    assert blocked_steps(batch, 16, chunk=32, merge="pairwise", fast_division=True)[:, 0].tolist() == [2 + 2 * 5 + 5] * 2
    assert blocked_steps(batch, 16, merge="pairwise", fast_division=True)[:, 0].tolist() == [7 + 2 + 1] * 2
    assert blocked_steps(make_batch([1], [9]), 4, merge="pairwise", fast_division=True)[:, 0].tolist() == [3 + 1]
    # a merge with an empty side is no longer exact: two more each (Lemma 8's last part). Causal, 40 queries over
    # 40 keys in chunks of 16: row 0 sees 1 key, its chunks 2 and 3 none; row 39 all three chunks
    diagonal = blocked_steps(make_batch([40], [40]), 16, chunk=16, merge="pairwise", fast_division=True)[:, 0]
    assert diagonal[[0, 16, 39]].tolist() == [1 + 2 * 2, 1 + 2 + 1 + 2, 1 + 2 * 2 + 2], diagonal
    # a tree of running folds two deep (Lemma 10): K - 1 + 2 over it, one more per fold with __fdividef
    assert blocked_steps(batch, 16, chunk=32, merge="running", levels=2)[:, 0].tolist() == [2 + 5 + 2] * 2
    assert blocked_steps(batch, 16, chunk=32, merge="running", levels=2, fast_division=True)[:, 0].tolist() == \
        [2 + 5 + 2 + 2] * 2
    # one part: no merge, whatever the merge form
    alone = make_batch([3], [70])  # causal: 68, 69, 70 keys
    for merge in MERGES:
        assert blocked_steps(alone, 16, merge=merge)[:, 0].tolist() == [5, 5, 5]
    assert blocked_steps(alone, 64, chunk=64)[:, 0].tolist() == [1 + 2, 1 + 2, 1 + 2]
    # an empty prefix is no part: one key of its own, one step, no merge
    empty = make_batch([1, 1], [1, 1], prefix_lens=[[0]], prefix_ids=[[0, -1]], causal=False)
    assert blocked_steps(empty, 16)[:, 0].tolist() == [1, 1]


def test_hand_counts_of_parts_walked_in_groups():
    """Lemma 11 (FlashInfer's decode): a part of n keys walked by Z groups of T-key blocks counts
    ceil(n / (T Z)) iterations plus the Z' = min(Z, ceil(n / T)) groups that hold a key, less one."""
    batch = make_batch([2], [40], prefix_lens=[[100]], prefix_ids=[[0]])
    # chunks of 32 in blocks of 4 slots, 4 groups: 2 iterations, 4 groups hold keys: 5 per chunk (8 in one state)
    assert blocked_steps(batch, 4, chunk=32, merge="running", groups=4)[:, 0].tolist() == [5 + 6] * 2
    assert blocked_steps(batch, 4, chunk=32, merge="running", levels=2, fast_division=True, groups=4)[:, 0].tolist() \
        == [5 + 5 + 2 + 2] * 2
    # no chunks, blocks of 16, 3 groups: the prefix's 100 keys in 3 iterations, 3 groups: 5, then the fold's 2
    assert blocked_steps(batch, 16, groups=3)[:, 0].tolist() == [3 + 3 - 1 + 2] * 2
    # a part shorter than the groups' first iteration: one iteration, one group per block that holds keys
    alone = make_batch([1], [9], causal=False)
    assert blocked_steps(alone, 4, groups=8)[:, 0].tolist() == [1 + 3 - 1]
    assert blocked_steps(alone, 1, groups=8)[:, 0].tolist() == [2 + 8 - 1]
    assert blocked_steps(alone, 4, groups=1)[:, 0].tolist() == blocked_steps(alone, 4)[:, 0].tolist() == [3]
    for n_keys in range(1, 40):  # never above one running state's count in blocks of T
        alone = make_batch([1], [n_keys], causal=False)
        for block_n in (1, 2, 3, 8):
            for groups in (1, 2, 3, 5, 16):
                assert blocked_steps(alone, block_n, groups=groups)[0, 0] <= -(-n_keys // block_n)



def test_chunks_from_the_request_are_those_of_its_keys_read_as_one_segment():
    """FlashInfer's split-KV decode cuts a request's whole KV (prefix pages, then its own) into
    chunks from its first key: ``chunk_from="request"`` (Lemma 12), whose count is that of the same
    keys read as one segment. ``chunk_from="segment"`` cuts each segment from its own first key: the
    two agree where every prefix is a whole number of chunks long; otherwise either may be larger."""
    kw = dict(chunk=128, merge="running", levels=2, fast_division=True, groups=4)
    for prefix, own, per_segment in ((128, 64, 16), (256, 100, 17), (96, 96, 14), (10, 10, 8)):
        relay = make_batch([1], [own], prefix_lens=[[prefix]], prefix_ids=[[0]], causal=False)
        whole = make_batch([1], [prefix + own], causal=False)
        assert blocked_steps(relay, 4, chunk_from="request", **kw)[0, 0] == blocked_steps(whole, 4, **kw)[0, 0]
        assert blocked_steps(relay, 4, **kw)[0, 0] == per_segment, (prefix, own)
    # 96 + 96 in chunks of 128: 128 and 64 across the prefix's end (11 + 3 + 2) against 96 and 96 (9 + 3 + 2)
    relay = make_batch([1], [96], prefix_lens=[[96]], prefix_ids=[[0]], causal=False)
    assert blocked_steps(relay, 4, chunk_from="request", **kw)[0, 0] == 16
    # 10 + 10: one chunk of 20 (3 + 0 + 2, no fold) against two of 10 (2 + 3 + 2)
    relay = make_batch([1], [10], prefix_lens=[[10]], prefix_ids=[[0]], causal=False)
    assert blocked_steps(relay, 4, chunk_from="request", **kw)[0, 0] == 7
    # two levels (30, then 20 keys) and causal rows of 5 and 6 own keys, chunks of 16 walked in blocks of 4:
    # 55 and 56 keys, chunks 16, 16, 16, 7 or 8 across both prefixes' ends: 4 blocks and four parts
    two = make_batch([2], [6], prefix_lens=[[30], [20]], prefix_ids=[[0], [0]])
    assert blocked_steps(two, 4, chunk=16, chunk_from="request")[:, 0].tolist() == [4 + 2] * 2
    assert blocked_steps(two, 4, chunk=16, chunk_from="request", merge="pairwise")[:, 0].tolist() == [4 + 2 * 3] * 2
    # per segment: 16 + 14, 16 + 4, 5 or 6: five parts
    assert blocked_steps(two, 4, chunk=16, merge="pairwise")[:, 0].tolist() == [4 + 2 * 4] * 2


def test_the_counts_of_chunks_from_the_request_and_per_segment_are_lemma_12s():
    """``blocked_steps`` with FlashInfer's decode (groups, running folds) counts what Lemma 12's
    ``request_chunk_steps`` and ``segment_chunk_steps`` count (``proofs/error_bound.py``)."""
    for first, second, own in ((96, 0, 96), (30, 20, 6), (0, 0, 40), (128, 64, 1), (7, 9, 3)):
        batch = make_batch([1], [own], prefix_lens=[[first], [second]], prefix_ids=[[0], [0]], causal=False)
        shapes = itertools.product((5, 16, 128), (1, 4), (1, 4), (1, 2), (False, True))
        for chunk, block, groups, levels, fast in shapes:
            kw = dict(chunk=chunk, merge="running", levels=levels, fast_division=fast, groups=groups)
            assert blocked_steps(batch, block, chunk_from="request", **kw)[0, 0] == request_chunk_steps(
                first + second + own, chunk, block, groups, levels, fast)
            assert blocked_steps(batch, block, **kw)[0, 0] == segment_chunk_steps([first, second, own], chunk, block,
                                                                                  groups, levels, fast)


def test_every_level_counts_the_merges_of_levels_a_request_does_not_read():
    """``every_level`` (FlashInfer's cascade wrapper merges every level into every row): a level a
    request does not read is a part that holds none of its keys, two steps under 2-ulp
    divisions (an empty-side merge, Lemma 8's last part) and one with divisions rounded to
    nearest (its lse takes a logarithm of 1, Lemma 3); ``stored_merges`` counts a stored merge per level for every row. A request that
    reads no level gains one step less than two per level: the step its lone part's division
    costs without them (at least one) is among them."""
    from relaycore.testing import stored_merges

    # request 0 reads both levels, request 1 the first only (its 2 rows), request 2 neither
    batch = make_batch([1, 2, 1], [4, 4, 4], prefix_lens=[[8], [3]], prefix_ids=[[0, 0, -1], [0, -1, -1]])
    fast = dict(merge="pairwise", fast_division=True)
    read, every = blocked_steps(batch, 16, **fast), blocked_steps(batch, 16, **fast, every_level=True)
    # one block each; request 0: 3 parts, 2 (K - 1) + (K - 1); request 1: 2 parts + 1 empty, 2 + 1 + 2;
    # request 2: its own part + 2 empty, max(1, 0 + 2 * 2)
    assert read[:, 0].tolist() == [1 + 4 + 2, 1 + 2 + 1, 1 + 2 + 1, 1 + 1]
    assert every[:, 0].tolist() == [1 + 4 + 2, 1 + 2 + 3, 1 + 2 + 3, 1 + 4]
    # to nearest: 2 (K - 1) + E; request 1 reads an empty side's level 1, request 2 two
    assert blocked_steps(batch, 16, merge="pairwise")[:, 0].tolist() == [1 + 4, 1 + 2, 1 + 2, 1]
    assert blocked_steps(batch, 16, merge="pairwise", every_level=True)[:, 0].tolist() == [1 + 4, 1 + 2 + 1,
                                                                                           1 + 2 + 1, 1 + 2]
    assert stored_merges(batch)[:, 0].tolist() == [2, 1, 1, 0]
    assert stored_merges(batch, every_level=True)[:, 0].tolist() == [2, 2, 2, 2]
    for kwargs in (dict(merge="running"), dict(merge="pairwise", chunk=4)):
        with pytest.raises(ValueError, match=r"^every_level: expected with merge='pairwise' and no chunk"):
            blocked_steps(batch, 16, **kwargs, every_level=True)
    with pytest.raises(ValueError, match=r"^every_level: expected a bool, got 'yes'"):
        blocked_steps(batch, 16, merge="pairwise", every_level="yes")
    with pytest.raises(ValueError, match=r"^every_level: expected with merge='pairwise'"):
        stored_merges(batch, merge="running", every_level=True)
    with pytest.raises(ValueError, match=r"^every_level: expected a bool, got 'yes'"):
        stored_merges(batch, every_level="yes")


def _unread_as_empty_prefixes(batch):
    """``batch``'s metadata with an empty prefix added to every level and read by every request that
    read none there: what FlashInfer's cascade wrapper computes for an unread level, an empty output."""
    lens = [np.diff(level.cu_seqlens).tolist() for level in batch.prefixes]
    ids = [[i if i >= 0 else len(level_lens) for i in level.prefix_ids.tolist()]
           for level, level_lens in zip(batch.prefixes, lens)]
    return make_batch(batch.q_lens.tolist(), batch.kv_lens.tolist(), [x + [0] for x in lens], ids,
                      causal=batch.causal)


@settings(max_examples=60, deadline=None)
@given(batch=batches(), block_n=st.sampled_from([1, 4, 16]), fast=st.booleans(), groups=st.sampled_from([1, 2]))
def test_every_level_counts_a_level_not_read_as_an_empty_prefix_read(batch, block_n, fast, groups):
    """``every_level=True`` (drawn batches: causal or not, several prefixes per level, ids -1,
    prefixes of 0 keys, GQA) counts each level a request does not read as that request reading an
    empty prefix there, its merge an empty side's; ``stored_merges`` likewise."""
    from relaycore.testing import stored_merges

    read_empty = _unread_as_empty_prefixes(batch)
    kwargs = dict(merge="pairwise", fast_division=fast, groups=groups)
    assert np.array_equal(blocked_steps(batch, block_n, **kwargs, every_level=True),
                          blocked_steps(read_empty, block_n, **kwargs))
    assert np.array_equal(stored_merges(batch, every_level=True), stored_merges(read_empty))


@pytest.mark.parametrize("bad", [0, -16, 1.5, True, "64"])
def test_refuses_a_block_that_is_not_a_positive_int(bad):
    batch = make_batch([1], [4])
    with pytest.raises(ValueError, match=r"block_n: expected a positive int, got"):
        blocked_steps(batch, bad)
    with pytest.raises(ValueError, match=r"chunk: expected a positive int, got"):
        blocked_steps(batch, 16, chunk=bad)


def test_refuses_an_unknown_merge_a_non_batch_and_parts_without_a_split():
    batch = make_batch([1], [4])
    with pytest.raises(ValueError, match=r"chunk, merge: expected None and 'fold' with split=False .*, got 8 and 'fold'"):
        blocked_steps(batch, 16, split=False, chunk=8)
    with pytest.raises(ValueError, match=r"chunk, merge: expected None and 'fold' with split=False .*, got None and "):
        blocked_steps(batch, 16, split=False, merge="pairwise")
    with pytest.raises(ValueError, match=r"merge: expected one of \('fold', 'pairwise', 'running'\), got 'tree'"):
        blocked_steps(batch, 16, merge="tree")
    with pytest.raises(ValueError, match=r"fast_division: expected a bool, got 1"):
        blocked_steps(batch, 16, fast_division=1)
    with pytest.raises(TypeError, match=r"batch: expected a relaycore.testing.Batch, got tuple"):
        blocked_steps(batch.arguments(), 16)
    with pytest.raises(ValueError, match=r"levels: expected 1 without merge='running' .*, got 2 with merge='fold'"):
        blocked_steps(batch, 16, levels=2)
    with pytest.raises(ValueError, match=r"levels: expected a positive int, got 0"):
        blocked_steps(batch, 16, merge="running", levels=0)
    with pytest.raises(ValueError, match=r"groups: expected a positive int, got 0"):
        blocked_steps(batch, 16, groups=0)
    with pytest.raises(ValueError, match=r"groups: expected 1 with split=False .*, got 2"):
        blocked_steps(batch, 16, split=False, groups=2)
    with pytest.raises(ValueError, match=r"chunk_from: expected one of \('segment', 'request'\), got 'row'"):
        blocked_steps(batch, 16, chunk=8, chunk_from="row")
    with pytest.raises(ValueError, match=r"chunk_from: expected 'segment' without chunk .*, got 'request'"):
        blocked_steps(batch, 16, chunk_from="request")


@settings(max_examples=60, deadline=None)
@given(batch=batches(), block_n=st.sampled_from([1, 16, 64]), chunk=st.sampled_from([None, 8, 64]),
       merge=st.sampled_from(MERGES))
def test_never_above_the_default_count(batch, block_n, chunk, merge):
    """At most ``default_steps``, except for pairwise merges of a row with more than ``N - K' + 1``
    empty parts (each costs a step, its lse taking a logarithm of 1: ``N + K' - 1 + E`` at most)."""
    keys = batch.oracle().stats.num_keys[:, 0]
    held = _held(batch, chunk)
    empty, nonempty = (held == 0).sum(axis=1), (held > 0).sum(axis=1)
    within = (merge != "pairwise") | (empty <= keys - nonempty + 1)
    for steps in (blocked_steps(batch, block_n, chunk=chunk, merge=merge), blocked_steps(batch, block_n, split=False)):
        assert steps.shape == (keys.shape[0], 1)
        assert np.all(steps[:, 0] >= 1) and np.all(steps[within, 0] <= default_steps(keys[within]))
        assert np.all(steps[:, 0] <= keys + nonempty - 1 + empty)


def _held(batch, chunk) -> np.ndarray:
    """The keys each part holds for each row, ``[total_q, parts]`` (0-padded), as ``blocked_steps``
    cuts them (segments, chunks cut from each segment's first key)."""
    rows = []
    for b, (prefix, kv_len) in enumerate(_segments(batch)):
        q_len = int(batch.q_lens[b])
        sizes = [list(prefix) + [kv_len - q_len + j + 1 if batch.causal else kv_len] for j in range(q_len)]
        if chunk is not None and sizes:
            most = [max(r[seg] for r in sizes) for seg in range(len(sizes[0]))]
            sizes = [[min(max(n - start, 0), chunk) for n, m in zip(r, most) for start in range(0, m, chunk)]
                     for r in sizes]
        rows += sizes
    width = max((len(r) for r in rows), default=0)
    return np.array([r + [0] * (width - len(r)) for r in rows], dtype=np.int64).reshape(len(rows), width)


def test_empty_parts_may_take_a_pairwise_count_past_the_default():
    """A causal row's first query over 64 own keys in chunks of 8 sees 1 key and 7 empty chunks: merged
    pairwise, each costs a step (its lse takes a logarithm of 1, Lemma 3), 8 against ``default_steps``' 2."""
    batch = make_batch([64], [64], num_q_heads=1, num_kv_heads=1, head_dim=8, dtype="float32", seed=0)
    steps = blocked_steps(batch, 16, chunk=8, merge="pairwise")[:, 0]
    assert steps[0] == 1 + 7 > default_steps(1) == 2
    assert blocked_steps(batch, 16, chunk=8, merge="fold")[0, 0] == 1  # an all-at-once fold takes no log of 1


# ---- a kernel of that blocking ------------------------------------------------------------------


class Walked:
    """A state ``(o, lse)`` in fp32 and the most steps any of its keys has passed: its
    exponential, each later block of its running state, 2 for each merge with keys on both sides
    (Lemmas 2-4 of ``proofs/error_bound.py``), counted as the kernel below runs."""

    def __init__(self, o, lse, steps):
        self.o, self.lse, self.steps = o, lse, steps


def _walk(q, segments, dtype, block_n):
    """One running state over ``segments`` (``[(k, v)]``, ``[n, D]`` each) walked one after the
    other, blocks of ``block_n`` keys restarting at each segment's first key; ``q [1, D]``
    already scaled. A key pays 1 for the block it arrives in and 1 for each later one."""
    dim = q.shape[1]
    m, l, acc = torch.full((1,), -math.inf), torch.zeros(1), torch.zeros(1, dim)
    blocks = 0
    for k, v in segments:
        for lo in range(0, k.shape[0], block_n):
            s = q @ k[lo : lo + block_n].T
            m_new = torch.maximum(m, s.max(dim=1).values)
            alpha = torch.exp(m - m_new)
            p = torch.exp(s - m_new[:, None])
            l = l * alpha + p.sum(dim=1)
            acc = acc * alpha[:, None] + p.to(TORCH[dtype]).float() @ v[lo : lo + block_n]
            m = m_new
            blocks += 1
    if blocks == 0:
        return None
    return Walked(acc / l[:, None], m + torch.log(l), blocks)


def _walk_groups(q, k, v, dtype, block_n, groups):
    """FlashInfer's decode walk of one part (Lemma 11): ``groups`` running states, group ``z``
    taking the part's keys ``t block_n groups + z block_n ..`` in iteration ``t``, their
    unnormalised ``(m, l, acc)`` folded in group order. A key pays 1 for its exponential, 1 for
    each later block of its group that holds keys, 1 for its group's factor in the fold unless the
    group is the first with keys, and 1 for each later group with keys (a factor that may be a
    rescale): counted as the kernel runs."""
    width, n = block_n * groups, k.shape[0]
    states, taken = [], np.zeros(n, dtype=np.int64)
    for z in range(groups):
        m, l, acc, held = torch.full((1,), -math.inf), torch.zeros(1), torch.zeros(1, q.shape[1]), []
        for lo in range(z * block_n, n, width):
            idx = list(range(lo, min(lo + block_n, n)))
            s = q @ k[idx].T
            m_new = torch.maximum(m, s.max(dim=1).values)
            alpha = torch.exp(m - m_new)
            p = torch.exp(s - m_new[:, None])
            l = l * alpha + p.sum(dim=1)
            acc = acc * alpha[:, None] + p.to(TORCH[dtype]).float() @ v[idx]
            taken[held] += 1
            taken[idx] = 1
            m, held = m_new, held + idx
        if held:
            states.append((m, l, acc, held))
    top, total, out, inside = states[0][0], states[0][1], states[0][2], list(states[0][3])
    for m, l, acc, held in states[1:]:
        m_new = torch.maximum(top, m)
        f1, f2 = torch.exp(top - m_new), torch.exp(m - m_new)
        total, out = total * f1 + l * f2, out * f1[:, None] + acc * f2[:, None]
        taken[inside + held] += 1
        top, inside = m_new, inside + held
    return Walked(out / total[:, None], top + torch.log(total), int(taken.max()))


def _merge(states, merge):
    """Fold the states all at once (the largest lse, one weighted sum, one division), merge
    them two at a time, in the order that costs a key the most steps (``blocked_steps`` counts
    any order): the state whose keys have passed the most steps first, then the rest; or fold
    them in order into running sums, in base 2, rescaled whenever their maximum grows (Lemma 9:
    ``K`` steps for ``K`` states, whatever their lses)."""
    states = [x for x in states if x is not None]
    if len(states) <= 1:
        return states[0] if states else None
    if merge == "running":
        m, d, o = torch.full_like(states[0].lse, -math.inf), torch.ones_like(states[0].lse), torch.zeros_like(states[0].o)
        for x in states:
            lse2 = x.lse / math.log(2)
            m_new = torch.maximum(m, lse2)
            g, f = torch.exp2(m - m_new), torch.exp2(lse2 - m_new)
            d, o, m = d * g + f, o * g[:, None] + x.o * f[:, None], m_new
        return Walked(o / d[:, None], (m + torch.log2(d)) * math.log(2), max(x.steps for x in states) + len(states))
    if merge == "pairwise":
        states = sorted(states, key=lambda x: -x.steps)
        total = states[0]
        for x in states[1:]:
            top = torch.maximum(total.lse, x.lse)
            wa, wb = torch.exp(total.lse - top), torch.exp(x.lse - top)
            total = Walked((wa[:, None] * total.o + wb[:, None] * x.o) / (wa + wb)[:, None], top + torch.log(wa + wb),
                           max(total.steps, x.steps) + 2)
        return total
    top = torch.stack([x.lse for x in states]).max(dim=0).values
    w = [torch.exp(x.lse - top) for x in states]
    total = sum(w)
    return Walked(sum(wi[:, None] * x.o for wi, x in zip(w, states)) / total[:, None], top + torch.log(total),
                  max(x.steps for x in states) + 2)


def blocked_kernel(batch, block_n, *, split=True, chunk=None, chunk_from="segment", merge="fold", groups=1,
                   across=False, drop_last_key=False):
    """``(out, lse)`` of ``batch`` computed with ``blocked_steps``'s blocking (module doc), and
    int64 ``[total_q]``: the most steps a key of each row passed, as counted while computing.
    ``across``: without ``split``, blocks run across segments instead of restarting at each.
    ``chunk_from="request"``: chunks cut from the row's first key, across segments.
    ``drop_last_key``: a bug, each row ignores the last key it should see. ``groups``: each part
    walked by that many groups of threads (``_walk_groups``, FlashInfer's decode)."""
    dtype = batch.dtype
    problem = load(*batch.arguments()[0], **batch.arguments()[1])
    meta = problem.meta
    group = meta.num_q_heads // meta.num_kv_heads
    q_all = torch.from_numpy(problem.q).float()
    out = torch.zeros(q_all.shape)
    lse = torch.full(q_all.shape[:2], -math.inf)
    steps = np.zeros(q_all.shape[0], dtype=np.int64)
    for b in range(meta.batch):
        lo = int(batch.cu_seqlens_q[b])
        k, v = (torch.from_numpy(x).float() for x in problem.context(b))
        # where each segment of the context starts and ends: the prefixes read, then the own KV
        lengths = [int(lens[ids[b]]) for lens, ids in zip(meta.prefix_lens, meta.prefix_ids) if ids[b] >= 0]
        ends = np.cumsum([0] + lengths + [problem.own_k[b].shape[0]])
        for j, n in enumerate(problem.keys_seen(b)):
            n = int(n) - int(drop_last_key)
            # the parts: [start, stop) ranges of the context this row sees
            segments = [(int(s0), min(int(s1), n)) for s0, s1 in zip(ends[:-1], ends[1:]) if s0 < n]
            if split and chunk and chunk_from == "request":
                parts = [(c, min(c + chunk, n)) for c in range(0, n, chunk)]
            elif split and chunk:
                parts = [(c, min(c + chunk, s1)) for s0, s1 in segments for c in range(s0, s1, chunk)]
            else:
                parts = segments
            for h in range(meta.num_q_heads):
                q = (q_all[lo + j, h] * meta.softmax_scale)[None]
                kh, vh = k[:, h // group], v[:, h // group]
                if split:
                    walked = [_walk_groups(q, kh[a:z], vh[a:z], dtype, block_n, groups) if groups > 1 and z > a
                              else _walk(q, [(kh[a:z], vh[a:z])], dtype, block_n) for a, z in parts]
                    result = _merge(walked, merge)
                elif across:
                    result = _walk(q, [(kh[:n], vh[:n])], dtype, block_n)
                else:
                    result = _walk(q, [(kh[a:z], vh[a:z]) for a, z in segments], dtype, block_n)
                out[lo + j, h], lse[lo + j, h] = result.o[0], result.lse[0]
                steps[lo + j] = result.steps
    return (out.to(TORCH[dtype]), lse), steps


BLOCKINGS = st.sampled_from([dict(split=True), dict(split=True, merge="pairwise"), dict(split=True, chunk=5),
                             dict(split=True, chunk=5, merge="pairwise"), dict(split=True, merge="running"),
                             dict(split=True, chunk=5, merge="running"), dict(split=False),
                             dict(split=True, groups=3), dict(split=True, chunk=9, merge="running", groups=2),
                             dict(split=True, chunk=7, merge="pairwise", groups=4),
                             dict(split=True, chunk=5, chunk_from="request"),
                             dict(split=True, chunk=9, chunk_from="request", merge="running", groups=2)])


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
@settings(max_examples=25, deadline=None)
@given(data=st.data(), block_n=st.sampled_from([2, 16]), blocking=BLOCKINGS)
def test_the_count_is_the_steps_a_kernel_of_that_blocking_takes_and_it_stays_within_its_bound(dtype, data, block_n,
                                                                                              blocking):
    batch = data.draw(batches(dtypes=(dtype,), max_batch=3, max_q_len=3, max_kv_len=24, max_prefix_len=24,
                              head_dims=(8,), score_magnitudes=(None, 30.0)))
    result, taken = blocked_kernel(batch, block_n, **blocking)
    steps = blocked_steps(batch, block_n, **blocking)
    assert steps[:, 0].tolist() == taken.tolist()
    report = check(result, batch, steps=steps)
    assert report.passed, str(report)
    if not blocking["split"]:  # blocks running across segments take no more
        assert np.all(blocked_kernel(batch, block_n, split=False, across=True)[1] <= steps[:, 0])


@pytest.mark.parametrize("split", [True, False])
def test_the_counted_bound_catches_a_dropped_key_that_the_default_bound_misses(split):
    # one long row in fp32 (the bound's step term dominates there): 512 prefix + 1024 own keys
    batch = make_batch([1], [1024], prefix_lens=[[512]], prefix_ids=[[0]], num_q_heads=1, num_kv_heads=1,
                       head_dim=32, dtype="float32", seed=5)
    steps = blocked_steps(batch, 64, split=split)
    result, taken = blocked_kernel(batch, 64, split=split)
    assert steps[:, 0].tolist() == taken.tolist() and check(result, batch, steps=steps).passed
    buggy, _ = blocked_kernel(batch, 64, split=split, drop_last_key=True)
    loose = check(buggy, batch)
    tight = check(buggy, batch, steps=steps)
    assert loose.passed, "the default count, for any blocking, leaves room for this bug"
    assert not tight.passed and tight.out_ratio > 3 * loose.out_ratio, str(tight)
