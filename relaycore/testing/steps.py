"""Steps per key for a kernel whose blocking you know: a bound as tight as the kernel allows.

``relaycore.bounds`` charges each key one step for its own exponential, one for each rescale of
an accumulator that holds it, and two for each merge it passes with keys on both sides
(``docs/math/errors.md``, Lemmas 2-4 of the proof). Without a count it assumes
the worst blocking, ``default_steps``: about two steps per key the row sees. A kernel that walks
blocks of ``b`` keys takes about ``N / b``, and the step term of the bound shrinks with it; on
long rows that is what lets a check see a dropped key (``docs/guide/testing.md``: one fp32 row
of 1536 keys).

A count that is too small is a claim the proof does not back: pass the blocking your kernel
really has.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from relaycore.testing.batch import Batch

#: How a split kernel combines its parts' states (``blocked_steps``'s ``merge``): ``"fold"``
#: all at once (the largest lse, one weighted sum, one division: 2 steps in all), ``"pairwise"``
#: two at a time in any order (2 for each merge a key passes with keys on both sides).
MERGES = ("fold", "pairwise")


def _cdiv(a, b):
    return -(-a // b)


def _segments(batch: Batch) -> list:
    """Per request, the keys of each segment its queries see: ``(prefix lengths, one per level
    it reads, in level order; own KV length)``."""
    per_request = []
    for b in range(batch.batch_size):
        prefix = []
        for level in batch.prefixes:
            pid = int(level.prefix_ids[b])
            if pid >= 0:
                prefix.append(int(level.cu_seqlens[pid + 1] - level.cu_seqlens[pid]))
        per_request.append((prefix, int(batch.kv_lens[b])))
    return per_request


def blocked_steps(batch: Batch, block_n: int, *, split: bool = True, chunk: Optional[int] = None,
                  merge: str = "fold") -> np.ndarray:
    """The most steps any key passes, per query row, in a kernel of the given blocking: the
    ``steps`` argument of ``check``, ``assert_close``, ``compare`` and ``bounds_for``.

    The kernel's model: every part is walked by an online softmax whose accumulators are
    rescaled once per block of ``block_n`` keys (a block in which the row sees no key changes
    nothing), weights and sums in the precision policy of ``relaycore.bounds``.

    Args:
        batch: the problem.
        block_n: keys per block (positive).
        split: ``True``: each segment a row sees (each prefix it reads, then its own KV) is a
            part of its own, and the parts' states are merged (``merge``); ``False``: the row
            walks its segments one after the other in one running state, with no merge (a
            single-pass kernel; its blocks may restart at each segment or run across them:
            the count covers both).
        chunk: with ``split``, cut every segment into chunks of this many keys from its first
            key (split-KV), each chunk a part of its own; ``None``: one part per segment. Chunks
            that run across segments (a split-KV over the concatenated context) are another
            blocking, which this count does not describe.
        merge: with ``split``, one of ``MERGES``.

    A kernel whose parts walk blocks of different sizes is described by its smallest block
    (more blocks, so more steps: the count stays an upper bound).

    Returns:
        int64 ``[total_q, 1]`` (it broadcasts over heads): for a row that sees ``n_i`` keys in
        part ``i`` and keys in ``K`` parts, ``max_i ceil(n_i / block_n)`` plus 2 (``"fold"``,
        ``K >= 2``) or ``2 (K - 1)`` (``"pairwise"``); without ``split``, the sum of
        ``ceil(n_s / block_n)`` over its segments. At least 1 (every query sees its own first
        key) and never above ``relaycore.bounds.default_steps`` of the keys it sees.

    Raises:
        ValueError: ``block_n`` or ``chunk`` not a positive int; ``merge`` not in ``MERGES``;
            ``chunk`` or a ``merge`` other than ``"fold"`` without ``split``.
        TypeError: ``batch`` is not a ``Batch``.

    Example:
        >>> from relaycore.testing import blocked_steps, make_batch
        >>> batch = make_batch([2], [40], prefix_lens=[[100]], prefix_ids=[[0]])
        >>> blocked_steps(batch, 16)[:, 0].tolist()   # prefix: 7 blocks; then the merge
        [9, 9]
        >>> blocked_steps(batch, 16, split=False)[:, 0].tolist()   # 7 prefix + 3 own blocks
        [10, 10]
    """
    if not isinstance(batch, Batch):
        raise TypeError(f"batch: expected a relaycore.testing.Batch, got {type(batch).__name__}")
    for name, value in (("block_n", block_n), ("chunk", chunk)):
        if name == "chunk" and value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name}: expected a positive int, got {value!r}")
    if merge not in MERGES:
        raise ValueError(f"merge: expected one of {MERGES}, got {merge!r}")
    if not split and (chunk is not None or merge != "fold"):
        raise ValueError(f"chunk, merge: expected None and 'fold' with split=False (one running state has no parts), "
                         f"got {chunk!r} and {merge!r}")
    steps = np.ones((int(batch.cu_seqlens_q[-1]), 1), dtype=np.int64)
    q_lens = batch.q_lens
    for b, (prefix, kv_len) in enumerate(_segments(batch)):
        q_len = int(q_lens[b])
        if q_len == 0:
            continue
        j = np.arange(q_len, dtype=np.int64)
        own = kv_len - q_len + j + 1 if batch.causal else np.full(q_len, kv_len, dtype=np.int64)
        # the keys each part holds for each row: [rows, parts]
        parts = [np.full(q_len, n, dtype=np.int64) for n in prefix] + [own]
        if split and chunk is not None:
            parts = [np.clip(seen - start, 0, chunk) for seen in parts for start in range(0, int(seen.max()), chunk)]
        held = np.stack(parts, axis=1)
        blocks = _cdiv(held, block_n)
        if not split:
            count = blocks.sum(axis=1)
        else:
            nonempty = (held > 0).sum(axis=1)
            merges = np.where(nonempty >= 2, 2, 0) if merge == "fold" else 2 * np.maximum(nonempty - 1, 0)
            count = blocks.max(axis=1, initial=0) + merges
        lo = int(batch.cu_seqlens_q[b])
        steps[lo : lo + q_len, 0] = count
    return steps


def stored_merges(batch: Batch) -> np.ndarray:
    """The ``stored`` argument of ``check``, ``assert_close``, ``compare`` and ``bounds_for`` for
    a cascade that stores each segment's output in the input dtype and folds the segments
    pairwise (each prefix level a request reads, then its own KV), as FlashInfer's
    ``MultiLevelCascadeAttentionWrapper`` does: per query row, the merges its keys pass, one per
    prefix level its request reads (``proofs/error_bound.py``, Lemma 8).

    Args:
        batch: the problem.

    Returns:
        int64 ``[total_q, 1]`` (it broadcasts over heads); 0 for a request that reads no prefix.

    Raises:
        TypeError: ``batch`` is not a ``Batch``.

    Example:
        >>> from relaycore.testing import make_batch, stored_merges
        >>> batch = make_batch([1, 2], [4, 4], prefix_lens=[[8], [3]], prefix_ids=[[0, 0], [0, -1]])
        >>> stored_merges(batch)[:, 0].tolist()   # request 0 reads both levels, request 1 one
        [2, 1, 1]
    """
    if not isinstance(batch, Batch):
        raise TypeError(f"batch: expected a relaycore.testing.Batch, got {type(batch).__name__}")
    levels = np.array([len(prefix) for prefix, _ in _segments(batch)], dtype=np.int64)
    return np.repeat(levels, batch.q_lens)[:, None]
