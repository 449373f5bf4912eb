"""Benchmark points and the named grids of the fast-path issue.

A point is one shared-prefix batch: ``batch`` requests that all read one prefix of
``prefix_len`` tokens, each with ``own_len`` tokens of its own whose last ``q_len`` are the
queries (``q_len = 1``: decode; ``q_len = own_len``: append of that many new tokens, causal).
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass
from typing import Dict, List, Tuple

DTYPES = ("float16", "bfloat16", "float32")


@dataclass(frozen=True)
class Point:
    """One benchmark problem (every request has the same lengths).

    Attributes:
        grid: the grid it belongs to (``"decode"``, ``"append"``, ``"custom"``, ``"cpu"``).
        batch: ``B`` requests.
        num_q_heads, num_kv_heads, head_dim: ``Hq``, ``Hkv``, ``D``.
        prefix_len: tokens of the shared prefix (one prefix, read by every request).
        own_len: own KV tokens per request.
        q_len: query tokens per request (the last ``q_len`` own tokens), ``1 <= q_len <= own_len``.
        dtype: ``"float16"``, ``"bfloat16"`` or ``"float32"``.
    """

    grid: str
    batch: int
    num_q_heads: int
    num_kv_heads: int
    head_dim: int
    prefix_len: int
    own_len: int
    q_len: int
    dtype: str = "float16"

    def __post_init__(self) -> None:
        for name in ("batch", "num_q_heads", "num_kv_heads", "head_dim", "own_len", "q_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected >= 1, got {getattr(self, name)}")
        if self.prefix_len < 0:
            raise ValueError(f"prefix_len: expected >= 0, got {self.prefix_len}")
        if self.num_q_heads % self.num_kv_heads:
            raise ValueError(f"num_kv_heads: expected a divisor of num_q_heads={self.num_q_heads}, got {self.num_kv_heads}")
        if self.q_len > self.own_len:
            raise ValueError(f"q_len: expected <= own_len={self.own_len}, got {self.q_len}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype: expected one of {list(DTYPES)}, got {self.dtype!r}")

    @property
    def label(self) -> str:
        """Short human name, e.g. ``decode B=8 Hq/Hkv=32/8 prefix=2048 own=128``."""
        kind = "new" if self.q_len > 1 else "own"
        n = self.q_len if self.q_len > 1 else self.own_len
        return (f"{self.grid} B={self.batch} Hq/Hkv={self.num_q_heads}/{self.num_kv_heads} "
                f"prefix={self.prefix_len} {kind}={n}")

    def to_dict(self) -> Dict:
        return asdict(self)


def decode_grid() -> List[Point]:
    """The decode grid of issue 3: fp16, D=128, 128 own tokens, one query per request;
    (Hq, Hkv) in {(32, 32), (32, 8)}, B in {1, 8, 32, 64, 128}, prefix in {512 .. 16384}."""
    return [
        Point("decode", b, 32, hkv, 128, s, 128, 1)
        for hkv, b, s in itertools.product((32, 8), (1, 8, 32, 64, 128), (512, 2048, 8192, 16384))
    ]


def append_grid() -> List[Point]:
    """The append grid of issue 3: fp16, D=128, Hq=32, Hkv in {32, 8}; B in {4, 16}; 128 or
    512 new tokens per request (all of them queries, causal); prefix 2048 or 8192."""
    return [
        Point("append", b, 32, hkv, 128, s, n, n)
        for b, n, s, hkv in itertools.product((4, 16), (128, 512), (2048, 8192), (32, 8))
    ]


def cpu_grid() -> List[Point]:
    """Tiny shapes for the CPU comparison (no GPU): decode with and without GQA, one append."""
    return [
        Point("cpu", 4, 8, 2, 64, 256, 32, 1),
        Point("cpu", 16, 8, 8, 64, 1024, 32, 1),
        Point("cpu", 4, 8, 2, 64, 512, 32, 32),
    ]


#: The ``--quick`` subsets: the corners of each grid (decode: 8 of 40 points; append: 4 of 16).
QUICK = {
    "decode": lambda p: p.batch in (1, 128) and p.prefix_len in (512, 16384),
    "append": lambda p: p.batch == 16 and p.num_kv_heads == 8,
}


GRIDS = {"decode": decode_grid, "append": append_grid}

_KEYS = {"B": "batch", "Hq": "num_q_heads", "Hkv": "num_kv_heads", "D": "head_dim",
         "prefix": "prefix_len", "own": "own_len", "q": "q_len", "dtype": "dtype"}


def parse_point(text: str) -> Point:
    """A custom point from ``key=value`` pairs separated by commas.

    Keys: ``B``, ``Hq``, ``Hkv``, ``D``, ``prefix``, ``own``, ``q`` (default 1: decode),
    ``dtype`` (default float16). Example: ``B=8,Hq=32,Hkv=8,D=128,prefix=2048,own=128``;
    ``q=own`` makes it an append of ``own`` new tokens.

    Raises:
        ValueError: an unknown or missing key, or a value out of range.
    """
    values: Dict[str, str] = {}
    for item in text.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep or key not in _KEYS:
            raise ValueError(f"--point: expected comma-separated key=value with keys {list(_KEYS)}, got {item!r} in {text!r}")
        values[_KEYS[key]] = value.strip()
    missing = [k for k, f in _KEYS.items() if f not in values and k not in ("q", "dtype")]
    if missing:
        raise ValueError(f"--point: expected keys {missing} too, got {text!r}")
    if values.get("q_len") == "own":
        values["q_len"] = values["own_len"]
    ints: Dict[str, int] = {}
    for field in ("batch", "num_q_heads", "num_kv_heads", "head_dim", "prefix_len", "own_len", "q_len"):
        raw = values.get(field, "1")
        try:
            ints[field] = int(raw)
        except ValueError:
            raise ValueError(f"--point: expected an integer for {field}, got {raw!r}") from None
    return Point("custom", dtype=values.get("dtype", "float16"), **ints)


def select(grids: Tuple[str, ...], quick_only: bool) -> List[Point]:
    """The points of the named grids, or their ``quick`` subsets."""
    points: List[Point] = []
    for name in grids:
        if name not in GRIDS:
            raise ValueError(f"--grid: expected one of {list(GRIDS)}, got {name!r}")
        grid = GRIDS[name]()
        points += [p for p in grid if QUICK[name](p)] if quick_only else grid
    return points
