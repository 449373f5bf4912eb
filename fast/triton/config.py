"""Block sizes and chunk length: one fixed configuration per (head_dim, dtype, KV heads).

Nothing here depends on the batch. That is what makes the kernels batch-invariant: a row's
bits depend on the kernel configuration (tile shapes, warps, the chunk boundaries of its
keys), so the configuration may depend only on what every request of a given model shares.
No autotuning for the same reason (an autotuner could pick a different tile for a larger
batch, and with it different bits).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

#: The largest head_dim the kernels run (a tile's head axis is at most 256 wide).
MAX_HEAD_DIM = 256
#: q dtypes the kernels run (fp32 with IEEE dot products, not TF32, so the error bound holds).
DTYPES = ("float16", "bfloat16", "float32")


@dataclass(frozen=True)
class Config:
    """Launch configuration.

    Attributes:
        block_m: the tallest tile (rows = query token x query head of a KV group).
        prefix_block_m: the shortest prefix tile. Prefix tiles mix requests, so a row's bits
            must not depend on the tile's height: 64 and 128 both run on Hopper's warpgroup
            matrix instruction and give the same bits, 16 and 32 run on the older one and do
            not (measured; ``tests/gpu`` checks it bit for bit, ``fast/triton/NOTES.md``).
        min_block_m: the shortest own tile. An own tile holds one request's rows, so its
            height may follow the request.
        block_n: keys per inner-loop step of the prefix tiles and of the own tiles taller than
            ``min_block_m`` (fixes where the running max is taken: the same for every prefix
            tile, or a row's bits would change with the tile its batch puts it in).
        short_block_n: keys per step of the own tiles of ``min_block_m`` rows (``block_n_for``).
            An own tile holds one request's rows, and its height follows from them, so its
            step may differ from the prefix tiles' without a row's bits depending on the
            batch. These are the decode tiles, bound by the latency of their walk: without
            carried pages (``carries_pages``) each step waits for its page-table read and
            then for its keys, so fewer, longer steps wait less.
            Measured on an H200 (``fast/triton/NOTES.md``, session 12), 128 against 64 keys,
            us: Hkv 8, B 32, prefix 8192 40.3 -> 34.8; B 128, Hkv 32, prefix 2048 117.8 ->
            110.7; B 1, Hkv 32, prefix 512 14.5 -> 13.2; slower where a small batch's fused
            merge is then folded by the prefix tiles instead of the own tiles (Hkv 8, B 8,
            prefix 2048 17.2 -> 20.4; B 16, prefix 512 16.8 -> 19.2).
        min_chunk, target_chunks: see ``chunk_size``.
        num_warps, num_stages: for the partial kernel's tiles of up to 64 rows; taller tiles
            take ``2 * num_warps``.
        fused_merge_max_tokens: the largest batch, in query tokens, whose partial programs
            fold the states themselves (``plan.merge_in_partials``); 0 never.
        fused_merge_max_fold_steps: and the most serial steps of the longest fold a program may
            run (``plan.fold_steps``: its slices times the reads of a slice, each an L2 round
            trip at the end of the call), else the merge launch. Measured on an H200
            (``fast/triton/NOTES.md``, session 12, own tiles at 128 keys a step), Hkv 8, fused
            against the merge launch, us: 17 slots a row (prefix 8192): batch 2 (5 steps) 22.7 /
            25.5, batch 4 (5) 26.0 / 26.1, batch 8 (9) 31.7 / 26.8, batch 16 (9) 42.1 / 28.6;
            9 slots (prefix 2048): batch 4 (5) 16.6 / 17.9, batch 8 (5) 19.9 / 19.0, batch 12
            (9) 24.6 / 20.4; 3 slots (prefix 512): fused faster up to batch 16. Steps predict
            the fold's tail, not who folds (a prefix tile folds at 0.5 us a slot, an own tile at
            0.19); the bound gives away 1 us at batch 8, prefix 2048. Over 48 decode points
            (session 16: Hkv 8, batch 4-16, prefix 1024-8192; Hkv 32 at GQA 4) it picks within
            0.6% of the faster way on geometric mean, 8% at worst (batch 8, prefix 2048:
            20.4 against 18.9 us); counting only prefix launches whose chunks are longer than
            twice the own chunk's picked the fused fold where it was up to 1.56x slower.
        unmasked_min_block_m: the shortest tile that walks the key blocks all its rows see
            in full without masks (the selects are arithmetic a tall tile pays on every score);
            shorter tiles, bound by their loads, keep one masked loop and fewer registers.
            The bits are the same either way. Measured on an H200 (``fast/triton/NOTES.md``,
            session 4): splitting 128-row tiles made append 4-8% faster; splitting 64-row
            tiles made batch-8 decode slower (Hkv = 8, prefix 2048: 17.0 -> 22.5 us).
        carry_pages_min_block_m: the shortest tile that reads each next block's pages of a
            paged KV one step ahead (``kernels.attend_range``), so that its paged walk is
            pipelined ``num_stages`` deep; shorter tiles read each block's pages in its own
            step and keep one stage of keys in shared memory, so more of them fit on an SM.
            The bits are the same either way. Measured on an H200 (``fast/triton/NOTES.md``,
            session 8): append 4 x 512, prefix 2048, Hkv 32 229.5 -> 213.2 us with 128-row
            tiles carrying; 16-row decode tiles carrying made batch-32 decode slower
            (Hkv 8, prefix 512: 21.2 -> 22.9 us). Carrying at batch 1-2 whatever the height
            helped while the own tiles walked 64 keys a step (session 9); at 128
            (``short_block_n``) a decode request's own keys are one step and the carrying tile
            spilled for the same times (session 12), so only tall tiles carry.
        merge_programs: the most programs (a query head's rows of one token each) of a merge
            launch over a graph plan's list of this step's tokens with slots
            (``Plan.merge_count``): ``min(list, merge_programs // Hq)`` per head, each folding
            every so many listed tokens. A graph plan of two levels keeps room for every token
            of its tall requests, which a step may run single-pass, with no states: a program
            per room exits (on an H200, ``fast/triton/NOTES.md``, session 35: 65536 of them took
            40.5 us). The bits are the same at any count. Measured on an H200 (session 36, Hq 32,
            two levels, graph replay, us), 1024 / 4096 / 8192 / 32768 against a program per
            token and head: 4 x 512 new tokens, split step 432.4 / 374.4 / 373.4 / 368.8 against
            374.8 (fewer programs fold more tokens each, in turn), single-pass step 202.3 /
            209.6 / 212.0 / 227.5 against 243.9; 32 decode + 2 x 160, split 144.9 / 134.5 /
            137.2 / 134.2 against 134.9, single pass 100.5 / 100.9 / 102.4 / 103.9 against 104.0.
    """

    block_m: int
    prefix_block_m: int
    min_block_m: int
    block_n: int
    short_block_n: int
    min_chunk: int
    target_chunks: int
    num_warps: int
    num_stages: int
    fused_merge_max_tokens: int = 16
    fused_merge_max_fold_steps: int = 5
    unmasked_min_block_m: int = 128
    carry_pages_min_block_m: int = 128
    merge_programs: int = 8192

    def __post_init__(self) -> None:
        for name in ("block_m", "prefix_block_m", "min_block_m", "block_n", "short_block_n", "min_chunk",
                     "unmasked_min_block_m", "carry_pages_min_block_m"):
            value = getattr(self, name)
            if value < 1 or value & (value - 1):
                raise ValueError(f"Config.{name}: expected a power of two, got {value}")
        if min(self.block_n, self.short_block_n, self.min_block_m) < 16:
            raise ValueError(f"Config: expected block_n, short_block_n and min_block_m >= 16, got {self.block_n}, "
                             f"{self.short_block_n}, {self.min_block_m}")
        if not self.min_block_m <= self.prefix_block_m <= self.block_m:
            raise ValueError(
                f"Config: expected min_block_m <= prefix_block_m <= block_m, got "
                f"{self.min_block_m}, {self.prefix_block_m}, {self.block_m}"
            )
        if self.min_chunk < self.block_n:
            raise ValueError(f"Config.min_chunk: expected at least block_n={self.block_n}, got {self.min_chunk}")
        for name in ("fused_merge_max_tokens", "fused_merge_max_fold_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"Config.{name}: expected >= 0, got {getattr(self, name)}")
        if self.merge_programs < 1:
            raise ValueError(f"Config.merge_programs: expected >= 1, got {self.merge_programs}")
        if self.target_chunks < 1:
            raise ValueError(f"Config.target_chunks: expected >= 1, got {self.target_chunks}")

    def carries_pages(self, tile: int) -> bool:
        """Whether a tile of ``tile`` rows over a paged KV reads each next block's pages one step
        ahead (``kernels.attend_range``)."""
        return tile >= self.carry_pages_min_block_m

    def block_n_for(self, tile: int, *, own: bool) -> int:
        """Keys per step of a tile of ``tile`` rows over the requests' own KV (``own``) or a
        prefix: ``short_block_n`` for the own tiles of ``min_block_m`` rows, else ``block_n``."""
        if own and tile <= self.min_block_m:
            return self.short_block_n
        return self.block_n

    def warps(self, tile: int) -> int:
        """``num_warps`` for a tile of ``tile`` rows."""
        return self.num_warps if tile <= 64 else 2 * self.num_warps


#: Programs a decode request's segment is cut into, over all KV heads: about one per SM of an
#: H100 or H200 (``decode_chunks``).
DECODE_PROGRAMS = 128
#: The most chunks of a decode segment: each costs every row a state to write and fold.
MAX_DECODE_CHUNKS = 16


def decode_chunks(num_kv_heads: int) -> int:
    """Chunks per decode segment (``Config.target_chunks``) for a model with ``num_kv_heads``.

    A decode request alone must fill the GPU: its segment is cut into ``DECODE_PROGRAMS /
    Hkv`` chunks (4 at Hkv = 32, 16 at Hkv = 8), at most ``MAX_DECODE_CHUNKS``. Measured on an
    H200 (2026-11-27, ``fast/triton/NOTES.md``), batch 1: Hkv = 32, prefix 2048: 4 chunks
    24.3 us, 8 chunks 31.1; Hkv = 8, prefix 16384: 16 chunks 39.2, 8 chunks 46.5, 32 chunks
    46.7. Large batches pay for chunks in states (Hkv = 8, B = 128, prefix 16384: 118 / 130 /
    148 us at 4 / 8 / 16): the number depends on the model alone, never on the batch, so it is
    a trade and batch 1 is the side it takes.
    """
    return max(1, min(MAX_DECODE_CHUNKS, DECODE_PROGRAMS // max(1, int(num_kv_heads))))


def block_d(head_dim: int) -> int:
    """The width of the kernels' head axis for ``head_dim`` (``D``, 1 to ``MAX_HEAD_DIM``): the
    smallest power of two from 16 that holds it (``tl.dot`` needs an inner size of at least 16,
    ``tl.arange`` a power of two). The columns from ``D`` on are masked: loaded as 0, never
    stored."""
    return max(16, 1 << (int(head_dim) - 1).bit_length())


@functools.lru_cache(maxsize=None)
def default_config(head_dim: int, dtype: str, num_kv_heads: int) -> Config:
    """The configuration for ``head_dim``, q's ``dtype`` (canonical name) and the model's
    ``num_kv_heads``: properties of the model, never of the batch.

    Measured on an H200 (``fast/triton/NOTES.md``): own tiles of 16 rows for decode requests
    (a 64-row tile there is 63 rows of padding), prefix tiles of 64 or 128; ``decode_chunks``
    chunks per segment of at least 256 keys at decode; a 3-stage load pipeline, which keeps a 64-row
    tile at 112 KiB of shared memory, two programs per SM (4 stages take 144 KiB: one; read
    from the kernel compiled for sm_90, ``fast/triton/NOTES.md``); the 16-row own tiles walk 128
    keys a step (``Config.short_block_n``). fp32 and a head axis 256 wide (``block_d``: a
    ``head_dim`` above 128) halve ``block_n``, keep it for the short own tiles, and stay at
    64-row tiles and 2 stages to keep the score and value tiles in registers and the stages in
    shared memory.

    Cached: a ``Config`` is immutable, and a model asks for its own at every step (``plan``).
    """
    wide = block_d(head_dim) >= 256 or dtype == "float32"
    return Config(block_m=64 if wide else 128, prefix_block_m=64, min_block_m=16, block_n=32 if wide else 64,
                  short_block_n=32 if wide else 128, min_chunk=256, target_chunks=decode_chunks(num_kv_heads),
                  num_warps=4, num_stages=2 if wide else 3)


def chunk_size(length, rows, config: Config, *, wanted=None):
    """Keys per chunk of a segment of ``length`` keys read by a request with ``rows`` rows per
    KV head (its query tokens x the group's query heads); elementwise over int arrays.

    Decode (``rows`` up to ``min_block_m``) cuts the segment into about ``target_chunks``
    chunks, so that few requests still fill the GPU; each doubling of ``rows`` halves the
    count, since the rows' own tiles bring the parallelism and every chunk costs every row a
    partial state (fp32 ``D`` + 1 words written and read back): at ``8 * min_block_m`` rows
    and beyond the segment is one chunk. The size is rounded up to a power of two and is at
    least ``min_chunk``. It is a function of the request alone, so its chunks, and their bits,
    are the same in any batch.

    ``wanted``: ``wanted_chunks(rows, config)``, where the caller has it (a plan's query layout).
    """
    wanted = wanted_chunks(rows, config) if wanted is None else wanted
    want = -(-np.maximum(length, 1) // wanted)
    return _doubled_to(config.min_chunk, want)


def wanted_chunks(rows, config: Config):
    """``chunk_size``'s target chunk count for a request with ``rows`` rows per KV head; a
    segment is cut into at most that many chunks."""
    tiles = -(-np.maximum(rows, 1) // config.min_block_m)
    return np.maximum(1, config.target_chunks // tiles)


def max_chunks(length, rows, config: Config):
    """The most chunks ``chunk_size`` cuts a segment of at most ``length`` keys into, for a
    request with ``rows`` rows per KV head; elementwise over int arrays.

    A segment of ``L`` keys has ``ceil(L / size)`` chunks with ``size >= min_chunk`` and
    ``size >= L / wanted_chunks``: at most ``ceil(length / min_chunk)`` and at most
    ``wanted_chunks``, and a segment of ``min(length, min_chunk * wanted_chunks)`` keys has
    that many (``tests`` check it against every length).
    """
    return np.minimum(wanted_chunks(rows, config), -(-np.maximum(length, 0) // config.min_chunk))


def _doubled_to(start: int, need):
    """The least ``start * 2^k`` (``k >= 0``) that is at least ``need`` (at most ``2^61``),
    elementwise: an int for a scalar ``need``, else an int64 array. A binary search of the
    powers (``_powers``): one call, where computing ``k`` took ten."""
    powers = _powers(start)
    size = powers[np.searchsorted(powers, need)]
    return int(size) if size.ndim == 0 else size


@functools.lru_cache(maxsize=None)
def _powers(start: int) -> np.ndarray:
    """int64: ``start * 2^k`` for every ``k >= 0`` that keeps it below ``2^62`` (read-only: cached)."""
    powers = np.left_shift(np.int64(start), np.arange(63 - int(start).bit_length(), dtype=np.int64))
    powers.flags.writeable = False
    return powers


def single_pass(rows, config: Config):
    """Whether a request with ``rows`` rows per KV head (query tokens x the group's query
    heads) reads its prefix and its own KV in one pass of its own tiles, which write its
    result: no partial states, no merge; elementwise over int arrays.

    That is the request whose rows fill the tallest tiles (``rows >= block_m``) and whose
    segments are one chunk each (``chunk_size``): sharing prefix tiles with other requests
    would not read the prefix fewer times per row (a prefix tile holds ``block_m`` rows at
    most), while the split would cost its rows two states each and the merge. A function of the
    request alone: its bits are the same in any batch. (An append request, measured on an H200:
    ``fast/triton/NOTES.md``, session 4.)
    """
    one = (np.asarray(rows) >= config.block_m) & (wanted_chunks(rows, config) == 1)
    return bool(one) if one.ndim == 0 else one


def tile_height(rows, config: Config, *, prefix: bool):
    """The tile height for a group of ``rows`` rows: the smallest power of two from
    ``prefix_block_m`` (prefix tiles) or ``min_block_m`` (own tiles) to ``block_m`` that holds
    them, ``block_m`` beyond; elementwise over int arrays."""
    start = config.prefix_block_m if prefix else config.min_block_m
    return _doubled_to(start, np.minimum(rows, config.block_m))
