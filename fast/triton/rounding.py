"""How many rounding steps the Triton kernels take per key: the ``steps`` of ``relaycore.bounds``.

``relaycore.bounds`` bounds the error of attention through ``steps``, the rounding steps a key's
weight passes: its own exponential, each rescale of an accumulator that holds it, and the
merges. Its default, ``2 N``, holds for any blocking. The kernels of this package have a known
blocking, and ``steps_per_token`` counts it (``proofs/error_bound.py``, "Counting the Triton
kernels' steps"):

* every KV segment a token reads (the prefix of each level, then its own KV) is cut into chunks
  of ``chunk_size(L, rows, config)`` keys counted from the segment's first key;
* the partial kernel walks a chunk ``b`` keys per step, from the chunk's first key
  (``config.block_n_for``: ``block_n`` for prefix chunks and tall own tiles, ``short_block_n``
  for the own tiles of ``min_block_m`` rows), so that a key is rescaled at most once per later
  step of its chunk in which the token sees a key (a step in which it sees none leaves its
  state bit for bit: the max stays, the rescale is by ``exp2(0) = 1``, the weights are
  ``exp2(-inf) = 0``);
* the merge kernel folds all of a token's chunk states at once, which costs every key
  ``MERGE_STEPS`` when two or more chunks hold a key the token sees, and no step of its own
  when only one does (its weight is ``exp2(0) = 1`` and the others' ``0``);
* every division is within 2 ulp, not rounded to nearest: Triton lowers an fp32 ``/`` to PTX
  ``div.full.f32`` (``finish_state``'s ``acc / l``, the fold's ``acc / sum``, the Gluon tile's
  ``acc / l``), which costs every key ``DIVISION_STEPS`` more.

So a token whose chunk ``i`` holds ``n_i`` of the keys it sees, walked ``b_i`` keys a step, in
``k`` non-empty chunks, has ``max_i ceil(n_i / b_i) + (MERGE_STEPS if k >= 2 else 0) +
DIVISION_STEPS`` steps. The prefix chunks hold every key of the prefix; the own chunks hold the
token's own keys up to its causal limit.

A single-pass request's token (``plan.single_pass_requests``) is one walk, ``b`` keys per step
(its own tile's), over its prefix of ``n_pre`` keys and then the ``n`` own keys it sees, and no
merge: ``ceil(n_pre / b) + ceil(n / b) + DIVISION_STEPS`` steps. On sm_90 that walk is
``hopper.single_pass_tile``'s, 128 keys a step: fewer steps than the count at the Triton tile's
64, which therefore bounds it (its division is ``div.full.f32`` too).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from relaycore.validation import BatchMeta

from relaycore.fast.triton.config import Config, chunk_size, default_config, tile_height
from relaycore.fast.triton.plan import single_pass_requests

#: Steps per key of the merge kernel's all-at-once fold of two or more non-empty states
#: (``proofs/error_bound.py``, Lemma 4): one for the state's weight ``exp2(lse2_i - max)``
#: with its product and the final division, one for the rounding of the incoming ``lse2_i``.
#: Lemma 4 takes the divisions rounded to nearest; ``DIVISION_STEPS`` prices what they are.
MERGE_STEPS = 2

#: Steps per key, every token, for the kernels' divisions being within 2 ulp instead of rounded
#: to nearest (``proofs/error_bound.py``, "Counting the Triton kernels' steps", after Lemma 8's
#: and Lemma 9's "Divisions within 2 ulp"; ``TRITON_DIVISION_STEPS`` there must equal it).
#: Triton 3.6 and 3.7 lower an fp32 ``/`` to PTX ``div.full.f32`` (``FDivOpConversion`` in its
#: NVIDIA backend; the kernels compiled for sm_90 hold no other division), which the PTX ISA
#: documents as within 2 ulp over the full range, not correctly rounded, and with no exact
#: quotient promised at a divisor of 1
#: (https://docs.nvidia.com/cuda/parallel-thread-execution/#floating-point-instructions-div).
#: A quotient within 2 ulp errs relatively by up to ``2 u_acc`` where the policy charges
#: ``u_acc / 2`` (a chunk state's ``acc / l``) or ``u_acc`` (the row's output's): a token of a
#: single pass gains ``u_acc``, of one non-empty chunk ``3 u_acc`` (its chunk's division, then
#: the fold's division by a sum of 1), of two or more ``5/2 u_acc`` (its chunk's, then the
#: fold's), on the numerator weights. One step, ``u_exp + 4 u_acc`` at least, holds each; the
#: merge's two steps alone do not (they leave about ``2 u_acc`` at the out bound's limit on
#: ``rho``). ``tl.math.div_rn`` (``div.rn.f32``) in the kernels would make it 0.
DIVISION_STEPS = 1


def _cdiv(a, b):
    return -(-a // b)


def steps_per_token(meta: BatchMeta, config: Optional[Config] = None) -> np.ndarray:
    """The rounding steps per key of every query token under the Triton kernels.

    Args:
        meta: from ``relaycore.validation.validate`` (host copies of the lengths and ids).
        config: the launch configuration the batch runs with; default
            ``default_config(meta.head_dim, meta.dtype, meta.num_kv_heads)``, the one
            ``relay_attention`` uses.

    Returns:
        int64 ``[total_q]``: ``steps`` for ``relaycore.bounds`` (the same for every query head of
        a token; ``[:, None]`` broadcasts it over heads). Never above ``default_steps`` of the
        keys the token sees, and at least ``1 + DIVISION_STEPS`` (every token sees its own
        first key).
    """
    config = default_config(meta.head_dim, meta.dtype, meta.num_kv_heads) if config is None else config
    steps = np.zeros(meta.total_q, dtype=np.int64)
    single = single_pass_requests(meta, config)
    for b in range(meta.batch):
        q_len, kv_len = int(meta.q_lens[b]), int(meta.kv_lens[b])
        if q_len == 0:
            continue
        j = np.arange(q_len, dtype=np.int64)
        seen = kv_len - q_len + j + 1 if meta.causal else np.full(q_len, kv_len, dtype=np.int64)
        lo = int(meta.cu_seqlens_q[b])
        rows = q_len * meta.group_size
        own_step = config.block_n_for(tile_height(rows, config, prefix=False), own=True)
        if single[b]:  # one walk: the prefix's blocks, then the own blocks with a key it sees
            prefix = int(meta.prefix_lens[0][meta.prefix_ids[0][b]]) if meta.num_levels and meta.prefix_ids[0][b] >= 0 else 0
            steps[lo : lo + q_len] = _cdiv(prefix, own_step) + _cdiv(seen, own_step) + DIVISION_STEPS
            continue
        most = 0  # the most steps one prefix chunk takes
        chunks = 0  # non-empty prefix chunks
        for lens, ids in zip(meta.prefix_lens, meta.prefix_ids):
            length = int(lens[ids[b]]) if ids[b] >= 0 else 0
            if length:
                size = chunk_size(length, rows, config)
                most = max(most, _cdiv(min(size, length), config.block_n))
                chunks += _cdiv(length, size)
        # own keys the token sees: causal token j of the request sees kv_len - q_len + j + 1
        size = chunk_size(kv_len, rows, config)
        most_own = np.maximum(_cdiv(np.minimum(seen, size), own_step), most)
        chunks_own = chunks + _cdiv(seen, size)
        steps[lo : lo + q_len] = most_own + np.where(chunks_own >= 2, MERGE_STEPS, 0) + DIVISION_STEPS
    return steps
