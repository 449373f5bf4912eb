"""Steps per key for a kernel whose blocking you know: a bound as tight as the kernel allows.

``relaycore.bounds`` charges each key one step for its own exponential, one for each rescale of
an accumulator that holds it, and what its merges cost: two for each pairwise merge it passes
with keys on both sides, two for an all-at-once fold, up to one per state for a running fold
(``docs/math/errors.md``, Lemmas 2-4 and 9-11 of the proof). Without a count it assumes
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
#: two at a time in any order (2 for each merge a key passes with keys on both sides),
#: ``"running"`` one at a time into sums rescaled whenever their maximum grows, as FlashInfer's
#: ``state_t::merge`` (``K`` steps for ``K >= 2`` parts that hold keys, one fold over fp32
#: states, Lemma 9; a tree of ``levels`` such folds, as FlashInfer's two-level merge kernels,
#: ``K - 1 + levels``, priced through Lemma 10 only: with ``stored``, ``stored_merge="running"``).
#: Each part may itself be walked by groups of threads whose states are folded before its
#: division (``blocked_steps``' ``groups``, FlashInfer's decode, Lemma 11).
MERGES = ("fold", "pairwise", "running")

#: Where ``blocked_steps``' chunks start: ``"segment"``, each segment a request reads (each prefix,
#: then its own KV) cut from its own first key; ``"request"``, the request's segments read as one
#: sequence and cut from its first key, as FlashInfer's split-KV decode cuts a request's page list
#: (Lemma 12).
CHUNK_FROM = ("segment", "request")


def _cdiv(a, b):
    return -(-a // b)


def _segments(batch: Batch, every_level: bool = False) -> list:
    """Per request, the keys of each segment its queries see: ``(prefix lengths, one per level
    it reads, in level order; own KV length)``; ``every_level``: one per level, 0 for a level it
    does not read."""
    per_request = []
    for b in range(batch.batch_size):
        prefix = []
        for level in batch.prefixes:
            pid = int(level.prefix_ids[b])
            if pid >= 0:
                prefix.append(int(level.cu_seqlens[pid + 1] - level.cu_seqlens[pid]))
            elif every_level:
                prefix.append(0)
        per_request.append((prefix, int(batch.kv_lens[b])))
    return per_request


def blocked_steps(batch: Batch, block_n: int, *, split: bool = True, chunk: Optional[int] = None,
                  chunk_from: str = "segment", merge: str = "fold", fast_division: bool = False, levels: int = 1,
                  groups: int = 1, every_level: bool = False) -> np.ndarray:
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
            key (split-KV), each chunk a part of its own (``chunk_from`` for chunks that run
            across segments); ``None``: one part per segment.
        chunk_from: with ``chunk``, one of ``CHUNK_FROM``. ``"segment"``: every segment from its
            own first key. ``"request"``: the segments a request reads (the prefixes in level
            order, then its own KV) as one sequence, cut from its first key, so that a chunk may
            hold a prefix's last keys and the next segment's first ones, as FlashInfer's split-KV
            decode cuts a request's page list (prefix pages, then its own; Lemma 12). The two cut
            alike where every prefix a request reads is a whole number of chunks long; otherwise
            either count may be the larger (a prefix of 96 keys and 96 own in chunks of 128,
            ``block_n = groups = 4``: 16 from the request, 14 per segment).
        merge: with ``split``, one of ``MERGES``. A ``"running"`` fold from ``M = -inf`` must
            start from a part that holds a key of the row (``exp2(-inf - (-inf))`` is NaN;
            FlashInfer 0.5.0 to 0.6.18rc7's starts from ``M = -5e4``, Lemma 9; from its commit
            ``d7f2c64`` on, from ``-inf`` with its exponents clamped, which takes empty parts
            anywhere, Lemma 13).
        fast_division: the kernel's divisions (a part's output by its normaliser, a fold's by
            its sum) err by up to 2 ulp instead of rounding to nearest, as CUDA's ``__fdividef``
            and ``-use_fast_math``: one step more per fold a key passes (Lemma 9). With
            ``"pairwise"`` (the merges' coefficients divided within 2 ulp too, as FlashInfer's
            ``merge_state_in_place``): one step more per merge a key passes with keys on both
            sides, two per merge with an empty side (a chunk past a causal row's last key), at
            least one (Lemma 8, divisions within 2 ulp); with ``stored``, price such merges with
            ``stored_merge="running"`` (Lemma 10's term). Merges of a row with the empty states of
            levels its request does not read: ``every_level``.
        levels: with ``"running"``, the most folds a key passes in a tree of running folds
            (FlashInfer's large and variable-length merge kernels fold each thread's share of
            the parts, then the threads' results: 2). Its keys pass at each fold Lemma 9's count,
            at most ``K - 1 + levels`` over the tree (Lemma 10; ``levels - 1`` where one part holds its keys, without
            ``fast_division``: a fold over that part's state that another fold reads costs one, its lse taking a
            logarithm of 1, which the precision policy lets err). That count is proved only with
            Lemma 10's term, even where the intermediate outputs stay fp32 (Lemma 9 covers one
            fold): pass ``stored=stored_merges(batch, merge="running", levels=levels)`` and
            ``stored_merge="running"`` with it. 1 for the other merges.
        groups: with ``split``, each part is walked by this many groups of threads, each its own
            running state: in iteration ``t`` group ``z`` takes the part's keys ``t block_n groups
            + z block_n`` to ``... + block_n - 1``, and the groups' unnormalised states are folded
            in order before the part's division and lse, as FlashInfer's decode kernels do
            (``block_n = bdy * tile_size_per_bdx``, ``groups = bdz``; ``sync_state``, Lemma 11).
            A part of ``n`` keys then counts ``ceil(n / (block_n groups)) + min(groups, ceil(n /
            block_n)) - 1`` instead of ``ceil(n / block_n)`` (never more). Lemma 11 proves it where
            every score is above about -34570 (FlashInfer 0.5.0 to 0.6.18rc7's ``-5e4`` start,
            base 2), its weights' ``exp2`` flushing below ``2^-126`` as FlashInfer's
            ``ex2.approx.ftz`` does; from FlashInfer's commit ``d7f2c64`` on (an IEEE ``-inf``
            start), for any scores (Lemma 13). FlashInfer's split-KV decode: ``chunk=`` its chunk,
            ``chunk_from="request"`` (it chunks a request's whole KV from its first key),
            ``merge="running", levels=2, fast_division=True`` and ``stored_merges(batch,
            merge="running", levels=2)`` (its chunks are stored in the output dtype, then merged
            by its two-level kernel; Lemma 12).
            1: one running state per part.
        every_level: with ``merge="pairwise"`` and no ``chunk``, every prefix level is merged
            into every row, a level its request does not read as a part that holds none of its
            keys (merged with an empty side: two steps with ``fast_division``, one without):
            FlashInfer's ``MultiLevelCascadeAttentionWrapper`` merges each level's output into
            every row (in 0.5.0 an empty one is ``(0, -5e4)``, base 2, which merges as an empty
            side, bit for bit, where every level that holds a key of the row has an lse above about -34570:
            Lemma 8's paragraph on FlashInfer's empty levels), with ``stored_merges(batch,
            every_level=True)``. ``False``: the levels a request reads.

    A kernel whose parts walk blocks of different sizes is described by its smallest block
    (more blocks, so more steps: the count stays an upper bound).

    Returns:
        int64 ``[total_q, 1]`` (it broadcasts over heads): for a row that sees ``n_i`` keys in
        part ``i`` and keys in ``K`` parts, ``max_i ceil(n_i / block_n)`` plus 2 (``"fold"``,
        ``K >= 2``), ``2 (K - 1) + E`` (``"pairwise"``, ``E`` the parts that hold no key of the row,
        each merged into it with an empty side: its lse takes a logarithm of 1, which may err, Lemma 3) or
        ``K - 1 + levels`` (``"running"``, ``K >= 2``; ``levels - 1`` for ``K = 1`` without
        ``fast_division``), with ``groups`` the parts' count above in place of ``ceil(n_i / block_n)``;
        without ``split``, the sum of ``ceil(n_s / block_n)`` over its segments; plus 1 with ``fast_division`` (``levels`` with ``"running"``, ``max(1, K - 1 + 2 E)`` with
        ``"pairwise"`` in place of its ``E``). At least 1 (every query sees its
        own first key) and, without ``fast_division``, with ``levels`` at most 2 and with no part that holds
        none of the row's keys, never above ``relaycore.bounds.default_steps`` of the keys it sees.

    Raises:
        ValueError: ``block_n`` or ``chunk`` not a positive int; ``merge`` not in ``MERGES``;
            ``chunk`` or a ``merge`` other than ``"fold"`` without ``split``; ``chunk_from`` not
            in ``CHUNK_FROM``, or other than ``"segment"`` without ``chunk``;
            ``fast_division`` or ``every_level`` not a bool, or ``every_level`` without
            ``"pairwise"`` or with ``chunk``; ``levels`` not a positive int,
            or other than 1 without ``"running"``; ``groups`` not a positive int, or other than
            1 without ``split``.
        TypeError: ``batch`` is not a ``Batch``.

    Example:
        >>> from relaycore.testing import blocked_steps, make_batch
        >>> batch = make_batch([2], [40], prefix_lens=[[100]], prefix_ids=[[0]])
        >>> blocked_steps(batch, 16)[:, 0].tolist()   # prefix: 7 blocks; then the merge
        [9, 9]
        >>> blocked_steps(batch, 16, split=False)[:, 0].tolist()   # 7 prefix + 3 own blocks
        [10, 10]
        >>> blocked_steps(batch, 16, chunk=32, merge="running", fast_division=True)[:, 0].tolist()
        [9, 9]
        >>> blocked_steps(batch, 4, chunk=32, merge="running", levels=2, fast_division=True, groups=4)[:, 0].tolist()
        [14, 14]
        >>> # FlashInfer's chunks of the whole request: 32, 32, 32, 32, then 11 or 12 keys
        >>> blocked_steps(batch, 4, chunk=32, chunk_from="request", merge="running", levels=2, fast_division=True,
        ...               groups=4)[:, 0].tolist()
        [13, 13]
    """
    if not isinstance(batch, Batch):
        raise TypeError(f"batch: expected a relaycore.testing.Batch, got {type(batch).__name__}")
    _check_positive("block_n", block_n)
    if chunk is not None:
        _check_positive("chunk", chunk)
    if merge not in MERGES:
        raise ValueError(f"merge: expected one of {MERGES}, got {merge!r}")
    if not isinstance(chunk_from, str) or chunk_from not in CHUNK_FROM:
        raise ValueError(f"chunk_from: expected one of {CHUNK_FROM}, got {chunk_from!r}")
    if chunk_from != "segment" and chunk is None:
        raise ValueError(f"chunk_from: expected 'segment' without chunk (only chunks are cut from a request's first "
                         f"key), got {chunk_from!r}")
    if not split and (chunk is not None or merge != "fold"):
        raise ValueError(f"chunk, merge: expected None and 'fold' with split=False (one running state has no parts), "
                         f"got {chunk!r} and {merge!r}")
    if not isinstance(fast_division, (bool, np.bool_)):
        raise ValueError(f"fast_division: expected a bool, got {fast_division!r}")
    _check_positive("levels", levels)
    if levels != 1 and (merge != "running" or not split):
        raise ValueError(f"levels: expected 1 without merge='running' (only running folds are counted in trees, "
                         f"Lemma 10), got {levels!r} with merge={merge!r}")
    _check_positive("groups", groups)
    if groups != 1 and not split:
        raise ValueError(f"groups: expected 1 with split=False (groups walk a part each, Lemma 11), got {groups!r}")
    _check_every_level(every_level)
    if every_level and (merge != "pairwise" or chunk is not None):
        raise ValueError(f"every_level: expected with merge='pairwise' and no chunk (a cascade's merge of every level "
                         f"into every row), got merge={merge!r}, chunk={chunk!r}")
    steps = np.ones((int(batch.cu_seqlens_q[-1]), 1), dtype=np.int64)
    q_lens = batch.q_lens
    for b, (prefix, kv_len) in enumerate(_segments(batch, every_level)):
        q_len = int(q_lens[b])
        if q_len == 0:
            continue
        j = np.arange(q_len, dtype=np.int64)
        own = kv_len - q_len + j + 1 if batch.causal else np.full(q_len, kv_len, dtype=np.int64)
        # the keys each part holds for each row: [rows, parts]
        parts = [np.full(q_len, n, dtype=np.int64) for n in prefix] + [own]
        if split and chunk is not None:
            if chunk_from == "request":  # one sequence: the prefixes in level order, then the own KV
                parts = [sum(parts)]
            parts = [np.clip(seen - start, 0, chunk) for seen in parts for start in range(0, int(seen.max()), chunk)]
        held = np.stack(parts, axis=1)
        blocks = _cdiv(held, block_n)
        if groups != 1:  # iterations, plus the groups that hold a key less one (sync_state, Lemma 11)
            blocks = np.where(held > 0, _cdiv(held, block_n * groups) + np.minimum(groups, blocks) - 1, 0)
        if not split:
            count = blocks.sum(axis=1)
        else:
            nonempty = (held > 0).sum(axis=1)
            if merge == "fold":
                merges = np.where(nonempty >= 2, 2, 0)
            elif merge == "running":  # with one part that holds keys, each fold over it that another fold reads
                # costs one: its lse takes a logarithm of 1, which may err (Lemma 10; fast_division's steps hold it)
                merges = np.where(nonempty >= 2, nonempty - 1 + levels, 0 if fast_division else levels - 1)
            else:  # one per merge with an empty side, whose lse takes a logarithm of 1 (Lemma 3; two with
                # fast_division, below)
                merges = 2 * np.maximum(nonempty - 1, 0) + (0 if fast_division else held.shape[1] - nonempty)
            count = blocks.max(axis=1, initial=0) + merges
        if fast_division:  # one step per fold, or per pairwise merge a key passes, at least one (Lemmas 8, 9, 10);
            # a pairwise merge with an empty side (a part that holds no key of the row) is no longer exact: two
            count = count + (np.maximum(nonempty - 1 + 2 * (held.shape[1] - nonempty), 1)
                             if split and merge == "pairwise" else levels if merge == "running" else 1)
        lo = int(batch.cu_seqlens_q[b])
        steps[lo : lo + q_len, 0] = count
    return steps


def _check_every_level(every_level) -> None:
    """Raise ``ValueError`` unless ``every_level`` is a bool."""
    if not isinstance(every_level, (bool, np.bool_)):
        raise ValueError(f"every_level: expected a bool, got {every_level!r}")


def _check_positive(name: str, value) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is a positive int."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")


def stored_merges(batch: Batch, *, merge: str = "pairwise", levels: int = 1, every_level: bool = False) -> np.ndarray:
    """The ``stored`` argument of ``check``, ``assert_close``, ``compare`` and ``bounds_for`` for
    a kernel that stores partial outputs in the input dtype and merges them afterwards.

    ``merge="pairwise"``: a cascade that stores each segment's output and folds the segments
    pairwise (each prefix level a request reads, then its own KV), as FlashInfer's
    ``MultiLevelCascadeAttentionWrapper`` does: per query row, the merges its keys pass, one per
    prefix level its request reads (``proofs/error_bound.py``, Lemma 8). Pass
    ``stored_merge="pairwise"`` (the default) with it.

    ``merge="running"``: the parts' outputs (``blocked_steps``' parts) stored and combined by
    running folds in Lemma 9's order, in a tree of ``levels`` folds (``1``: one fold, as
    FlashInfer's ``merge_states`` on outputs in the input dtype; ``2``: its large and
    variable-length merge kernels, which store each thread's fold and fold the threads): per
    row, ``levels``, the folds every key passes (Lemma 10). Pass ``stored_merge="running"`` with
    it, and the steps of ``blocked_steps(..., merge="running", levels=levels)``. A tree of
    running folds whose intermediate outputs stay fp32 (``levels >= 2``) needs it too: Lemma 9
    covers one fold of fp32 states only, and Lemma 10 prices the tree (its stored roundings'
    share then conservatively).

    Args:
        batch: the problem.
        merge: ``"pairwise"`` or ``"running"``; an all-at-once fold of stored outputs (Lemma 4's
            order, ``"fold"``) has no proved bound.
        levels: with ``"running"``, the folds of the tree a key passes (a positive int); 1 with
            ``"pairwise"``.
        every_level: with ``"pairwise"``, every prefix level merged into every row, read or not
            (FlashInfer 0.5.0's ``MultiLevelCascadeAttentionWrapper``, ``blocked_steps``'
            ``every_level``): ``len(batch.prefixes)`` for every row.

    Returns:
        int64 ``[total_q, 1]`` (it broadcasts over heads); with ``"pairwise"``, 0 for a request
        that reads no prefix.

    Raises:
        TypeError: ``batch`` is not a ``Batch``.
        ValueError: ``merge`` not ``"pairwise"`` or ``"running"``; ``levels`` not a positive
            int, or other than 1 with ``"pairwise"``; ``every_level`` not a bool, or with
            ``"running"``.

    Example:
        >>> from relaycore.testing import make_batch, stored_merges
        >>> batch = make_batch([1, 2], [4, 4], prefix_lens=[[8], [3]], prefix_ids=[[0, 0], [0, -1]])
        >>> stored_merges(batch)[:, 0].tolist()   # request 0 reads both levels, request 1 one
        [2, 1, 1]
        >>> stored_merges(batch, every_level=True)[:, 0].tolist()   # a cascade that merges every level
        [2, 2, 2]
        >>> stored_merges(batch, merge="running", levels=2)[:, 0].tolist()
        [2, 2, 2]
    """
    if not isinstance(batch, Batch):
        raise TypeError(f"batch: expected a relaycore.testing.Batch, got {type(batch).__name__}")
    if merge not in ("pairwise", "running"):
        raise ValueError(f"merge: expected 'pairwise' or 'running' (merges of stored outputs with a proved bound, "
                         f"Lemmas 8 and 10), got {merge!r}")
    _check_positive("levels", levels)
    if merge == "pairwise" and levels != 1:
        raise ValueError(f"levels: expected 1 with merge='pairwise' (the cascade's merges are counted per prefix "
                         f"level), got {levels!r}")
    _check_every_level(every_level)
    if every_level and merge != "pairwise":
        raise ValueError(f"every_level: expected with merge='pairwise' (a cascade's merge of every level into every "
                         f"row), got merge={merge!r}")
    if merge == "running":
        return np.full((int(batch.cu_seqlens_q[-1]), 1), levels, dtype=np.int64)
    levels_read = np.array([len(prefix) for prefix, _ in _segments(batch, every_level)], dtype=np.int64)
    return np.repeat(levels_read, batch.q_lens)[:, None]
