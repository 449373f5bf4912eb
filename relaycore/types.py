"""The value types of the public contract.

All are ``NamedTuple`` s of arrays, neutral to the array library: NumPy arrays for the
reference, torch tensors for the fast paths. Shapes use ``B`` requests, ``Hq`` query heads,
``Hkv`` KV heads (``Hq % Hkv == 0``) and head dimension ``D``. Beside torch tensors, the
integer metadata (offsets, lengths, block tables, prefix ids) may be on the host, as NumPy
arrays or CPU tensors: it is then read without a synchronization
(``relaycore.validation.on_host``).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence, Union

Array = Any  # numpy.ndarray or torch.Tensor


class AttentionState(NamedTuple):
    """The state of an attention over some set of keys.

    Attributes:
        out: ``[..., D]`` softmax-weighted mean of the values (0 where no key is seen).
        lse: ``[...]`` natural-log log-sum-exp of the scaled scores (``-inf`` where no key is
            seen). float32 from the fast paths, float64 from the reference.
    """

    out: Array
    lse: Array


class RaggedKV(NamedTuple):
    """Request KV packed back to back (flash-attn varlen layout).

    Attributes:
        k: ``[total_kv, Hkv, D]``.
        v: ``[total_kv, Hkv, D]``.
        cu_seqlens: int32 or int64 ``[B + 1]``; request ``b`` owns rows
            ``cu_seqlens[b] : cu_seqlens[b + 1]``.
    """

    k: Array
    v: Array
    cu_seqlens: Array


class PagedKV(NamedTuple):
    """Request KV in a paged cache (vLLM / FlashInfer layout).

    Attributes:
        k_cache: ``[num_blocks, block_size, Hkv, D]``.
        v_cache: ``[num_blocks, block_size, Hkv, D]``.
        block_table: int32 or int64 ``[B, max_blocks]``; token ``t`` of request ``b`` lives in block
            ``block_table[b, t // block_size]`` at slot ``t % block_size``. Entries past a
            request's last block are never read.
        kv_lens: int32 or int64 ``[B]``, own KV tokens per request.
    """

    k_cache: Array
    v_cache: Array
    block_table: Array
    kv_lens: Array


class PrefixLevel(NamedTuple):
    """One level of shared prefixes: several distinct prefixes packed back to back.

    Attributes:
        k: ``[total_prefix, Hkv, D]``.
        v: ``[total_prefix, Hkv, D]``.
        cu_seqlens: int32 or int64 ``[P + 1]``; prefix ``p`` is rows ``cu_seqlens[p] : cu_seqlens[p + 1]``.
        prefix_ids: int32 or int64 ``[B]``; the prefix request ``b`` reads at this level, ``-1`` for none.
    """

    k: Array
    v: Array
    cu_seqlens: Array
    prefix_ids: Array


RequestKV = Union[RaggedKV, PagedKV]
Prefixes = Sequence[PrefixLevel]
