"""Rounding to fp16, bf16 and fp32, done explicitly on 60-digit numbers.

The error-bound proof is checked by running the kernel's arithmetic in mpmath with every
rounding written out: ``round_to(x, "float16")`` is the value IEEE round-to-nearest-even gives
when ``x`` is stored in that format, to nearest or toward zero: subnormals included, and
overflow too (to nearest, a result beyond the largest finite value ``largest(fmt)`` becomes
``±inf``, as IEEE's default does; toward zero, it becomes ``±largest(fmt)``), so that a check
whose computation overflows sees the infinity a kernel would. ``Arithmetic`` rounds the exact
result of each fp32 operation once, as hardware does.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import mpmath

from relaycore.proofs import exact  # noqa: F401  (sets the working precision)


class Format(NamedTuple):
    """A binary floating-point format: ``precision`` significand bits (hidden bit included), the
    exponent of its smallest normal number and that of its largest finite one."""

    precision: int
    min_exponent: int
    max_exponent: int


FORMATS = {
    "float16": Format(11, -14, 15),
    "bfloat16": Format(8, -126, 127),
    "float32": Format(24, -126, 127),
}


#: fp32's smallest normal number.
SMALLEST_NORMAL = mpmath.ldexp(1, FORMATS["float32"].min_exponent)


def largest(fmt: str) -> mpmath.mpf:
    """The largest finite value of ``fmt``: ``(2 - 2^(1 - p)) 2^emax``."""
    p, _, emax = FORMATS[fmt]
    return mpmath.ldexp(2 - mpmath.ldexp(1, 1 - p), emax)


def round_to(x, fmt: str, mode: str = "nearest") -> mpmath.mpf:
    """``x`` rounded in ``fmt`` (a key of ``FORMATS``).

    Args:
        x: the exact value.
        fmt: ``"float16"``, ``"bfloat16"`` or ``"float32"``.
        mode: ``"nearest"`` (ties to even, IEEE's default) or ``"toward_zero"`` (truncation, as
            some tensor-core accumulators do).
    """
    x = mpmath.mpf(x)
    if x == 0 or mpmath.isinf(x):
        return x
    p, emin, _ = FORMATS[fmt]
    _, e = mpmath.frexp(x)  # |x| = m 2^e with 1/2 <= m < 1: the leading bit has exponent e - 1
    quantum = max(int(e) - 1, emin) - (p - 1)
    scaled = mpmath.ldexp(x, -quantum)
    if mode == "toward_zero":
        result = mpmath.ldexp(mpmath.floor(scaled) if x > 0 else mpmath.ceil(scaled), quantum)
        return result if abs(result) <= largest(fmt) else mpmath.sign(x) * largest(fmt)
    if mode != "nearest":
        raise ValueError(f"round_to: mode must be 'nearest' or 'toward_zero', got {mode!r}")
    low = mpmath.floor(scaled)
    frac = scaled - low
    if frac > 0.5 or (frac == 0.5 and int(low) % 2 == 1):
        low += 1
    result = mpmath.ldexp(low, quantum)  # rounded with an unbounded exponent, then overflow
    return result if abs(result) <= largest(fmt) else mpmath.sign(x) * mpmath.inf


def r32(x) -> mpmath.mpf:
    """``round_to(x, "float32")``."""
    return round_to(x, "float32")


class Arithmetic:
    """An fp32 accumulator's arithmetic, one rounding per operation.

    Only the additions of accumulations (``add``, ``dot``, ``total``) take ``accumulate``: a
    matrix unit's accumulator may truncate. Elementwise operations round to nearest: ``r32``.

    Args:
        accumulate: rounding of the additions (``"nearest"`` or ``"toward_zero"``); products,
            quotients round to nearest (the elementary functions are the adversary's, in
            ``relaycore.proofs.error_bound.Elementary``).
        flush: flush subnormals to zero, as the ``.ftz`` instructions of NVIDIA GPUs and x86's
            FTZ and DAZ modes do: an operand or a rounded result below fp32's smallest normal
            number counts as 0. Without it, subnormals are kept (gradual underflow, IEEE's
            default).
    """

    def __init__(self, accumulate: str = "nearest", flush: bool = False):
        self.accumulate, self.flush = accumulate, flush

    def _flushed(self, x):
        return mpmath.mpf(0) if self.flush and abs(x) < SMALLEST_NORMAL else x

    def add(self, a, b):
        """fp32 ``a + b``."""
        return self._flushed(round_to(self._flushed(a) + self._flushed(b), "float32", self.accumulate))

    def mul(self, a, b):
        """fp32 ``a * b``."""
        return self._flushed(r32(self._flushed(a) * self._flushed(b)))

    def div(self, a, b):
        """fp32 ``a / b``."""
        return self._flushed(r32(self._flushed(a) / self._flushed(b)))

    def dot(self, x: Sequence, y: Sequence):
        """fp32 dot product, left to right, a rounding after every product and every sum."""
        acc = mpmath.mpf(0)
        for a, b in zip(x, y):
            acc = self.add(acc, self.mul(a, b))
        return acc

    def total(self, xs: Sequence):
        """fp32 sum, left to right."""
        acc = mpmath.mpf(0)
        for x in xs:
            acc = self.add(acc, x)
        return acc


def exp(x, wobble=0, base=None):
    """fp32 ``exp(x)`` (or ``base ** x``) with an extra relative error ``wobble`` (a hardware
    ``ex2.approx`` is not correctly rounded; the proofs pass ``wobble`` up to ``2^-21 - 2^-23``,
    so that with this rounding the error stays below ``u_exp = 2^-21``, to play the adversary)."""
    value = mpmath.exp(x) if base is None else mpmath.power(base, x)
    return r32(value * (1 + mpmath.mpf(wobble)))
