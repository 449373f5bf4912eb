"""Round-to-nearest-even into the low-precision formats, in NumPy (which has no bfloat16).

``round_to(x, dtype)`` returns float64 values that are exactly representable in ``dtype``, so a
batch can be drawn once in float64 and handed to any implementation in that dtype without a
further rounding. From float64 the rounding goes through float32 first, as torch's casts do.
"""

from __future__ import annotations

import numpy as np

#: The formats a batch can be drawn for.
DTYPES = ("float16", "bfloat16", "float32", "float64")


def round_to_bfloat16(x) -> np.ndarray:
    """Round to the nearest bfloat16, ties to even (via float32; NaN stays NaN, overflow -> inf).

    bfloat16 is the upper half of a float32: add ``0x7FFF`` plus the lowest kept bit, then clear
    the low 16 bits. A carry out of the significand moves into the exponent, which is the
    correct rounding up to the next binade (or to infinity).

    Args:
        x: array-like of floats.

    Returns:
        float32 array of bfloat16 values, ``x``'s shape.
    """
    with np.errstate(over="ignore"):  # too large for float32: inf, as the rounding demands
        x32 = np.asarray(x, dtype=np.float32)
    bits = x32.view(np.uint32)
    lowest_kept = (bits >> np.uint32(16)) & np.uint32(1)
    rounded = ((bits + np.uint32(0x7FFF) + lowest_kept) & np.uint32(0xFFFF0000)).view(np.float32)
    return np.where(np.isnan(x32), np.float32(np.nan), rounded)


def round_to(x, dtype: str) -> np.ndarray:
    """``x`` rounded to the nearest ``dtype`` value (ties to even), returned as float64.

    Args:
        x: array-like of floats.
        dtype: one of ``DTYPES``.

    Returns:
        float64 array whose values are exact in ``dtype``.
    """
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(over="ignore"):  # beyond the format's range: inf, as the rounding demands
        if dtype == "float64":
            return x.copy()
        if dtype == "float32":
            return x.astype(np.float32).astype(np.float64)
        if dtype == "float16":
            return x.astype(np.float32).astype(np.float16).astype(np.float64)
        if dtype == "bfloat16":
            return round_to_bfloat16(x).astype(np.float64)
    raise ValueError(f"dtype: expected one of {list(DTYPES)}, got {dtype!r}")
