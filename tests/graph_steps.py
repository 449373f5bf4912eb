"""A serving engine's decode tensors for the graph-plan tests: allocated once, and each step
writes new queries, own KV lengths, prefix boundaries and prefix ids into the same tensors (what
an engine that replays one CUDA graph per batch shape does)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from relaycore import PagedKV, PrefixLevel, RaggedKV


class EngineTensors:
    """Fixed tensors for a batch of ``len(q_lens)`` requests.

    Args:
        q_lens: each request's query count (fixed, as a captured graph's).
        page_size: tokens per page of a paged own KV of ``max_blocks`` columns per request, or
            0 for a ragged own KV of ``own_rows`` rows in all.
        level_rows, level_prefixes: per prefix level, its rows and its number of prefixes.
        host_metadata: the lengths, ids and block table as NumPy arrays (metadata on the host,
            ``relaycore.validation.on_host``), written in place as the tensors are.
    """

    def __init__(self, q_lens: Sequence[int], *, num_q_heads: int, num_kv_heads: int, head_dim: int, dtype,
                 device: str, page_size: int = 0, max_blocks: int = 0, own_rows: int = 0,
                 level_rows: Sequence[int] = (), level_prefixes: Sequence[int] = (), causal: bool = True, seed: int = 0,
                 host_metadata: bool = False):
        self.q_lens = np.asarray(q_lens, dtype=np.int64)
        self.causal = causal
        self.page_size, self.max_blocks = page_size, max_blocks
        self.own_rows = own_rows
        gen = torch.Generator().manual_seed(seed)

        def rand(*shape):
            return torch.randn(*shape, generator=gen).to(dtype=dtype, device=device)

        def ints(n):
            return np.zeros(n, dtype=np.int32) if host_metadata else torch.zeros(n, dtype=torch.int32, device=device)

        batch, hkv, d = len(q_lens), num_kv_heads, head_dim
        self.q = rand(int(self.q_lens.sum()), num_q_heads, d)
        self.cu_seqlens_q = ints(batch + 1)
        write_metadata(self.cu_seqlens_q, np.concatenate([[0], np.cumsum(self.q_lens)]))
        if page_size:
            blocks = batch * max_blocks
            table = ints(blocks).reshape(batch, max_blocks)
            write_metadata(table, torch.randperm(blocks, generator=gen).view(batch, max_blocks).numpy())
            self.kv = PagedKV(rand(blocks, page_size, hkv, d), rand(blocks, page_size, hkv, d), table, ints(batch))
        else:
            self.kv = RaggedKV(rand(own_rows, hkv, d), rand(own_rows, hkv, d), ints(batch + 1))
        self.levels = [PrefixLevel(rand(rows, hkv, d), rand(rows, hkv, d), ints(count + 1), ints(batch))
                       for rows, count in zip(level_rows, level_prefixes)]

    def args(self):
        """``(q, cu_seqlens_q, kv, prefixes)`` for ``relay_attention``."""
        return self.q, self.cu_seqlens_q, self.kv, self.levels

    def step(self, rng: np.random.Generator) -> None:
        """Write a random step into the tensors: new queries, own KV lengths from each request's
        query count to its most, the pages shuffled among the requests, prefix boundaries
        anywhere in each level's rows, and ids."""
        self.q.copy_(torch.randn(self.q.shape, generator=torch.Generator().manual_seed(int(rng.integers(2**31)))))
        if isinstance(self.kv, PagedKV):
            most = self.max_blocks * self.page_size
            write_metadata(self.kv.kv_lens, [rng.integers(q, most + 1) for q in self.q_lens])
            table = self.kv.block_table
            write_metadata(table, rng.permutation(int(np.prod(table.shape))).reshape(tuple(table.shape)))
        else:  # the own rows are fixed: share the spare ones out
            spare = self.own_rows - int(self.q_lens.sum())
            cuts = np.sort(rng.integers(0, spare + 1, size=len(self.q_lens) - 1))
            extra = np.diff(np.concatenate([[0], cuts, [spare]]))
            write_metadata(self.kv.cu_seqlens, np.concatenate([[0], np.cumsum(self.q_lens + extra)]))
        for level in self.levels:
            rows, count = int(level.k.shape[0]), int(level.cu_seqlens.shape[0]) - 1
            cuts = np.sort(rng.integers(0, rows + 1, size=count - 1))
            write_metadata(level.cu_seqlens, np.concatenate([[0], cuts, [rows]]))
            write_metadata(level.prefix_ids, rng.integers(-1, count, size=len(self.q_lens)))


def write_metadata(x, values) -> None:
    """Write ``values`` into the metadata array ``x`` in place (a tensor, or a NumPy array)."""
    if isinstance(x, np.ndarray):
        x[...] = values
    else:
        x.copy_(torch.as_tensor(np.asarray(values)))
