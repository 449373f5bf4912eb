"""Rounding to fp16, bf16 and fp32, done explicitly on 60-digit numbers.

The error-bound proof is checked by running the kernel's arithmetic in mpmath with every
rounding written out: ``round_to(x, "float16")`` is the value IEEE round-to-nearest-even gives
when ``x`` is stored in that format (subnormals included; overflow is not modelled because the
computations it checks never reach it). Each arithmetic helper rounds the exact result of one
operation once, as hardware does.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import mpmath

from relaycore.proofs import exact  # noqa: F401  (sets the working precision)


class Format(NamedTuple):
    """A binary floating-point format: ``precision`` significand bits (hidden bit included) and
    the exponent of its smallest normal number."""

    precision: int
    min_exponent: int


FORMATS = {
    "float16": Format(11, -14),
    "bfloat16": Format(8, -126),
    "float32": Format(24, -126),
}


def round_to(x, fmt: str) -> mpmath.mpf:
    """``x`` rounded to nearest (ties to even) in ``fmt`` (a key of ``FORMATS``)."""
    x = mpmath.mpf(x)
    if x == 0 or mpmath.isinf(x):
        return x
    p, emin = FORMATS[fmt]
    _, e = mpmath.frexp(x)  # |x| = m 2^e with 1/2 <= m < 1: the leading bit has exponent e - 1
    quantum = max(int(e) - 1, emin) - (p - 1)
    scaled = mpmath.ldexp(x, -quantum)
    low = mpmath.floor(scaled)
    frac = scaled - low
    if frac > 0.5 or (frac == 0.5 and int(low) % 2 == 1):
        low += 1
    return mpmath.ldexp(low, quantum)


def r32(x) -> mpmath.mpf:
    """``round_to(x, "float32")``."""
    return round_to(x, "float32")


def add(a, b):
    """fp32 ``a + b``."""
    return r32(a + b)


def mul(a, b):
    """fp32 ``a * b``."""
    return r32(a * b)


def div(a, b):
    """fp32 ``a / b``."""
    return r32(a / b)


def dot(x: Sequence, y: Sequence):
    """fp32 dot product, summed left to right with a rounding after every product and sum."""
    acc = mpmath.mpf(0)
    for a, b in zip(x, y):
        acc = add(acc, mul(a, b))
    return acc


def total(xs: Sequence):
    """fp32 sum, left to right."""
    acc = mpmath.mpf(0)
    for x in xs:
        acc = add(acc, x)
    return acc


def exp(x, wobble=0):
    """fp32 ``exp(x)`` with an extra relative error ``wobble`` (a hardware ``ex2.approx`` is not
    correctly rounded; the proofs pass ``wobble`` up to ``2^-22`` to play the adversary)."""
    return r32(mpmath.exp(x) * (1 + mpmath.mpf(wobble)))


def log(x):
    """fp32 ``log(x)``, correctly rounded."""
    return r32(mpmath.log(x))
