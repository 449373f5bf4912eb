"""The space of batches the kit draws from, shared by ``random_batch`` (a seeded NumPy
generator) and ``strategies.batches`` (Hypothesis): one description of the distribution, two
sources of randomness.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, fields
from typing import Any, Dict, Optional, Protocol, Sequence, Tuple, Union

import numpy as np

from relaycore.testing.batch import Batch, make_batch
from relaycore.testing.rounding import DTYPES

#: Paged block sizes: 1, and one below / at / one above powers of two.
BLOCK_SIZES = (1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17)


class Pick(Protocol):
    """A source of choices: a seeded generator or a Hypothesis ``draw``."""

    def integer(self, lo: int, hi: int) -> int:
        """An integer in ``[lo, hi]``; simpler (for shrinking) towards ``lo``, or towards 0 where
        ``lo < 0 <= hi`` (Hypothesis's order: a prefix id shrinks to 0, not to -1)."""

    def choice(self, options: Sequence[Any]) -> Any:
        """One of ``options``; simpler towards the first."""


@dataclass(frozen=True)
class BatchSpace:
    """Bounds and choices for drawn batches.

    Attributes:
        max_batch: most requests (``B`` is drawn from ``[min_batch, max_batch]``).
        min_batch: fewest requests (0 draws empty batches too; rare cases, so they are left to
            explicit tests by default).
        max_q_len: most query tokens per request.
        min_q_len: fewest query tokens per request (0 draws requests without a query, an edge
            case, often; 1 with ``max_q_len=1`` draws decode batches).
        max_kv_len: most own KV tokens per request (at least ``max_q_len``).
        max_levels: most prefix levels (0 to 3 by default).
        max_prefixes: most prefixes per level.
        unread_levels: draw levels that no request reads (every id -1, or no prefix at all), an
            edge case, often (``True``); ``False`` gives every level a prefix that some request
            reads (and a batch without requests no level).
        max_prefix_len: longest prefix.
        min_prefix_len: shortest prefix (0 draws prefixes of length 0, an edge case, often; 1
            leaves them out).
        head_dims: choices of ``D`` (by default powers of two and 24, which is not one: a
            kernel that pads its head axis must not read or write past ``D``).
        kv_heads: choices of ``Hkv``.
        group_sizes: choices of ``Hq // Hkv`` (1 is MHA; ``Hkv = 1`` is MQA).
        dtypes: choices of the format under test.
        layouts: ``"ragged"`` and/or ``"paged"``.
        block_sizes: choices of the paged block size.
        causal: choices of causal masking.
        softmax_scales: choices of the scale (``None``: ``1/sqrt(D)``).
        score_magnitudes: choices of ``make_batch``'s ``score_magnitude``, the standard
            deviation of the scores ``softmax_scale * q . k`` whatever the scale and ``D``
            (``None``: standard normal ``q`` and ``k``, scores of standard deviation
            ``scale * sqrt(D)``). Up to about 100 the fp16/bf16/fp32 bounds exist on every row
            the default spaces draw. At ``1e4`` the float64 bound is still tight, but the
            fp16/bf16/fp32 bound with the default ``steps`` allows errors of the size of the
            values themselves, or does not exist: ``check`` then holds those rows to no bound
            (``Report.unchecked``; ``assert_close`` raises ``relaycore.bounds.NoBound``), so
            draw such magnitudes for float64, or to look for NaN and infinities with ``check``.
        value_offsets: choices of ``make_batch``'s ``value_offset``, added to every value. The
            default draws values offset by 8 in one case in three: outputs far from 0 show
            errors relative to the output (a normaliser off by a key, an accumulator kept in a
            low precision) that zero-mean values hide, while zero-mean values keep the bound
            (which scales with ``max |v|``) tightest for errors in the weights.
        metadata_dtypes: choices of the metadata's dtype, ``"int32"`` and/or ``"int64"``
            (drawn after every field but ``value_scales``, so that adding ``"int64"`` leaves
            every other draw of a seed as it was).
        value_scales: choices of ``make_batch``'s ``value_scale``, multiplying every value
            (drawn last, so that adding a scale leaves every other draw of a seed as it was).
            ``(2.0**-20,)`` draws fp16 values of a few ``2^-24``, subnormals whose outputs round
            absolutely: a kernel that flushes them, or rounds a stored output again (``check``'s
            ``stored``), errs there by more than its relative error allows.
    """

    max_batch: int = 4
    min_batch: int = 1
    max_q_len: int = 6
    min_q_len: int = 0
    max_kv_len: int = 12
    max_levels: int = 3
    max_prefixes: int = 3
    unread_levels: bool = True
    max_prefix_len: int = 12
    min_prefix_len: int = 0
    head_dims: Tuple[int, ...] = (8, 16, 24, 32)
    kv_heads: Tuple[int, ...] = (1, 2)
    group_sizes: Tuple[int, ...] = (1, 2, 3)
    dtypes: Tuple[str, ...] = ("float32",)
    layouts: Tuple[str, ...] = ("ragged", "paged")
    block_sizes: Tuple[int, ...] = BLOCK_SIZES
    causal: Tuple[bool, ...] = (True, False)
    softmax_scales: Tuple[Optional[float], ...] = (None, 0.5)
    score_magnitudes: Tuple[Optional[float], ...] = (None,)
    value_offsets: Tuple[float, ...] = (0.0, 0.0, 8.0)
    metadata_dtypes: Tuple[str, ...] = ("int32",)
    value_scales: Tuple[float, ...] = (1.0,)

    def __post_init__(self) -> None:
        for name in ("head_dims", "kv_heads", "group_sizes", "dtypes", "layouts", "block_sizes", "causal",
                     "softmax_scales", "score_magnitudes", "value_offsets", "metadata_dtypes", "value_scales"):
            value = getattr(self, name)
            if not isinstance(value, (tuple, list)):
                raise TypeError(f"{name}: expected a tuple of choices, e.g. {getattr(BatchSpace, name)!r}, got "
                                f"{value!r}")
        for name in ("max_batch", "min_batch", "max_q_len", "min_q_len", "max_kv_len", "max_levels", "max_prefixes",
                     "max_prefix_len", "min_prefix_len"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"{name}: expected an int >= 0, got {value!r}")
        for name in ("head_dims", "kv_heads", "group_sizes", "block_sizes"):
            bad = [x for x in getattr(self, name) if isinstance(x, bool) or not isinstance(x, (int, np.integer)) or x < 1]
            if bad:
                raise ValueError(f"{name}: expected positive ints, got {list(getattr(self, name))}")
        for name in ("softmax_scales", "score_magnitudes"):
            bad = [x for x in getattr(self, name) if x is not None and (isinstance(x, bool) or not isinstance(
                x, (int, float, np.integer, np.floating)) or not np.isfinite(x) or x <= 0)]
            if bad:
                raise ValueError(f"{name}: expected None or finite positive numbers, got {list(getattr(self, name))}")
        bad = [x for x in self.value_scales if isinstance(x, bool) or not isinstance(
            x, (int, float, np.integer, np.floating)) or not np.isfinite(x) or x <= 0]
        if bad:
            raise ValueError(f"value_scales: expected finite positive numbers, got {list(self.value_scales)}")
        bad = [x for x in self.value_offsets if isinstance(x, bool) or not isinstance(
            x, (int, float, np.integer, np.floating)) or not np.isfinite(x)]
        if bad:
            raise ValueError(f"value_offsets: expected finite numbers, got {list(self.value_offsets)}")
        if any(not isinstance(x, (bool, np.bool_)) for x in self.causal):
            raise ValueError(f"causal: expected bools, got {list(self.causal)}")
        if self.min_batch > self.max_batch:
            raise ValueError(f"min_batch, max_batch: expected min_batch <= max_batch, got {self.min_batch} > "
                             f"{self.max_batch}")
        if self.min_q_len > self.max_q_len:
            raise ValueError(f"min_q_len, max_q_len: expected min_q_len <= max_q_len, got {self.min_q_len} > "
                             f"{self.max_q_len}")
        if self.min_prefix_len > self.max_prefix_len:
            raise ValueError(f"min_prefix_len, max_prefix_len: expected min_prefix_len <= max_prefix_len, got "
                             f"{self.min_prefix_len} > {self.max_prefix_len}")
        if not isinstance(self.unread_levels, (bool, np.bool_)):
            raise TypeError(f"unread_levels: expected a bool, got {self.unread_levels!r}")
        if not self.unread_levels and self.max_levels > 0 and self.max_prefixes < 1:
            raise ValueError(f"max_prefixes: expected at least 1 with unread_levels=False (a level that a request "
                             f"reads has a prefix), got {self.max_prefixes}")
        if self.max_kv_len < self.max_q_len:
            raise ValueError(f"max_kv_len: expected at least max_q_len = {self.max_q_len}, got {self.max_kv_len}")
        unknown = [d for d in self.dtypes if d not in DTYPES]
        if unknown or not self.dtypes:
            raise ValueError(f"dtypes: expected a non-empty subset of {list(DTYPES)}, got {list(self.dtypes)}")
        if not self.metadata_dtypes or any(x not in ("int32", "int64") for x in self.metadata_dtypes):
            raise ValueError(f"metadata_dtypes: expected a non-empty subset of ['int32', 'int64'], got "
                             f"{list(self.metadata_dtypes)}")
        if not self.layouts or any(x not in ("ragged", "paged") for x in self.layouts):
            raise ValueError(f"layouts: expected a non-empty subset of ['ragged', 'paged'], got {list(self.layouts)}")
        for name in ("head_dims", "kv_heads", "group_sizes", "causal", "softmax_scales", "score_magnitudes",
                     "value_offsets", "value_scales"):
            if not getattr(self, name):
                raise ValueError(f"{name}: expected at least one choice, got none")
        if "paged" in self.layouts and not self.block_sizes:
            raise ValueError(f"block_sizes: expected positive sizes, got {list(self.block_sizes)}")

    def recipe(self, pick: Pick) -> Dict[str, Any]:
        """Draw the ``make_batch`` arguments of one batch."""

        def length(hi: int, lo: int = 0) -> int:
            # the shortest two lengths (0 and 1 unless ``lo`` says otherwise) are the edge cases;
            # draw them often
            return pick.choice((lo, lo + 1)) if hi >= lo + 1 and pick.integer(0, 2) == 0 else pick.integer(lo, hi)

        batch = pick.integer(self.min_batch, self.max_batch)
        hkv, group = pick.choice(self.kv_heads), pick.choice(self.group_sizes)
        q_lens = [length(self.max_q_len, self.min_q_len) for _ in range(batch)]
        kv_lens = [q + length(self.max_kv_len - q) for q in q_lens]
        prefix_lens, prefix_ids = [], []
        read = not self.unread_levels  # every level read by a request: none where there is no request
        for _ in range(pick.integer(0, self.max_levels if batch or not read else 0)):
            count = pick.integer(int(read), self.max_prefixes)
            prefix_lens.append([length(self.max_prefix_len, self.min_prefix_len) for _ in range(count)])
            ids = [pick.integer(-1, count - 1) for _ in range(batch)]
            if read and max(ids) < 0:  # no request reads the level: one does
                ids[pick.integer(0, batch - 1)] = pick.integer(0, count - 1)
            prefix_ids.append(ids)
        paged = pick.choice(self.layouts) == "paged"
        return dict(
            q_lens=q_lens,
            kv_lens=kv_lens,
            prefix_lens=prefix_lens,
            prefix_ids=prefix_ids,
            num_q_heads=hkv * group,
            num_kv_heads=hkv,
            head_dim=pick.choice(self.head_dims),
            dtype=pick.choice(self.dtypes),
            causal=pick.choice(self.causal),
            softmax_scale=pick.choice(self.softmax_scales),
            block_size=pick.choice(self.block_sizes) if paged else None,
            score_magnitude=pick.choice(self.score_magnitudes),
            seed=pick.integer(0, 2**31 - 1),
            value_offset=pick.choice(self.value_offsets),  # after the others, which draw as before it existed
            metadata_dtype=pick.choice(self.metadata_dtypes),  # see ``metadata_dtypes``
            value_scale=pick.choice(self.value_scales),  # last: see ``value_scales``
        )


def _batch_space(space: Dict[str, Any]) -> BatchSpace:
    """``BatchSpace(**space)``, with a name that is no field of it refused by name.

    Raises:
        TypeError: a name that is not a ``BatchSpace`` field (the valid ones listed, the
            nearest named); a field of the wrong type (``BatchSpace``).
        ValueError: a field out of its domain (``BatchSpace``).
    """
    names = sorted(field.name for field in fields(BatchSpace))
    for name in space:
        if name not in names:
            near = difflib.get_close_matches(name, names, n=1)
            raise TypeError(f"{name}: expected a relaycore.testing.BatchSpace field, one of {names}, got {name!r}"
                            + (f" (did you mean {near[0]}?)" if near else ""))
    return BatchSpace(**space)


class _GeneratorPick:
    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng

    def integer(self, lo: int, hi: int) -> int:
        return int(self.rng.integers(lo, hi + 1))

    def choice(self, options: Sequence[Any]) -> Any:
        return options[int(self.rng.integers(len(options)))]


def random_batch(rng: Union[np.random.Generator, int], **space: Any) -> Batch:
    """Draw one batch with a NumPy generator.

    Args:
        rng: ``np.random.default_rng(seed)``, or the seed itself; the same seed gives the same
            batch.
        **space: ``BatchSpace`` fields (bounds and choices).

    Returns:
        ``Batch`` (with its ``make_batch`` recipe).

    Raises:
        TypeError: ``rng`` is neither a ``numpy.random.Generator`` nor an int; a name in
            ``space`` that is no ``BatchSpace`` field, or a field of the wrong type.
        ValueError: a negative seed; a ``BatchSpace`` field out of its domain.

    Example:
        >>> import numpy as np
        >>> from relaycore.testing import random_batch
        >>> batch = random_batch(np.random.default_rng(7), dtypes=("bfloat16",), max_batch=3)
        >>> batch.dtype
        'bfloat16'
    """
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        if rng < 0:
            raise ValueError(f"rng: expected a seed >= 0, got {rng}")
        rng = np.random.default_rng(rng)
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng: expected a numpy.random.Generator or an int seed, got {type(rng).__name__}")
    return make_batch(**_batch_space(space).recipe(_GeneratorPick(rng)))
