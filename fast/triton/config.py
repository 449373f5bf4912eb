"""Block sizes and chunk length: one fixed configuration per (head_dim, dtype).

Nothing here depends on the batch. That is what makes the kernels batch-invariant: a row's
bits depend on the kernel configuration (tile shapes, warps, the chunk boundaries of its
keys), so the configuration may depend only on what every request of a given model shares.
No autotuning for the same reason (an autotuner could pick a different tile for a larger
batch, and with it different bits).
"""

from __future__ import annotations

from dataclasses import dataclass

#: head_dim values the kernels compile for (tl.dot and tl.arange need powers of two).
HEAD_DIMS = (16, 32, 64, 128, 256)
#: q dtypes the kernels run (fp32 with IEEE dot products, not TF32, so the error bound holds).
DTYPES = ("float16", "bfloat16", "float32")


@dataclass(frozen=True)
class Config:
    """Launch configuration.

    Attributes:
        block_m: rows (query token x query head of a group) per tile.
        block_n: keys per inner-loop step.
        chunk: keys per chunk; a KV segment of ``L`` keys is cut at multiples of ``chunk`` and
            each chunk is one program's work. A multiple of ``block_n``.
        num_warps, num_stages: for the partial kernel.
        block_h: query heads per program of the merge kernel.
    """

    block_m: int
    block_n: int
    chunk: int
    num_warps: int
    num_stages: int
    block_h: int = 8

    def __post_init__(self) -> None:
        for name in ("block_m", "block_n"):
            value = getattr(self, name)
            if value < 16 or value & (value - 1):
                raise ValueError(f"Config.{name}: expected a power of two >= 16, got {value}")
        if self.chunk <= 0 or self.chunk % self.block_n:
            raise ValueError(f"Config.chunk: expected a positive multiple of block_n={self.block_n}, got {self.chunk}")
        if self.block_h < 1 or self.block_h & (self.block_h - 1):
            raise ValueError(f"Config.block_h: expected a power of two >= 1, got {self.block_h}")


def default_config(head_dim: int, dtype: str) -> Config:
    """The configuration for ``head_dim`` and q's ``dtype`` (canonical name).

    Tiles of 64 rows fill one Hopper warpgroup's matrix instruction; 1024-key chunks give a
    16k-token prefix 16 programs per (tile, KV head) while the fp32 partial states they write
    stay a fraction of the KV they read. fp32 and ``head_dim`` 256 halve ``block_n`` to keep
    the score and value tiles in registers.
    """
    wide = head_dim >= 256 or dtype == "float32"
    block_n = 32 if wide else 64
    return Config(block_m=64, block_n=block_n, chunk=1024, num_warps=4, num_stages=2 if wide else 3)
