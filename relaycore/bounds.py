"""A-priori error bounds for attention computed under relaycore's precision policy.

Every tolerance in relaycore comes from here; ``proofs/error_bound.py`` states and proves the
bound and checks it in 60-digit arithmetic. The precision policy it covers is the one every
backend follows:

* the inputs ``q, k, v`` are exact (they *are* the low-precision values; the oracle reads the same
  values in float64);
* scores ``q . k`` are accumulated in the accumulation format (fp32 for fp16/bf16/fp32 inputs,
  with unit roundoff ``u_acc``), scaled, and exponentiated (relative error ``u_exp``) after
  subtracting a running maximum;
* the unnormalised softmax weights are rounded once to the input dtype (``u_p``) before the
  ``P @ V`` product, whose sums run in the accumulation format;
* partial states may be rescaled and merged any number of times, up to ``steps`` per key;
* the output is divided by the normaliser in fp32 and rounded once to the input dtype (``u_out``).

For one query row that sees ``N >= 1`` keys, with ``A = max_j scale * sum_d |q_d k_jd|`` and
``V_d = max_j |v_jd|``, the computed state is exactly the attention of *perturbed weights*
``exp(s_j + alpha_j)`` (numerator) and ``exp(s_j + beta_j)`` (normaliser) with
``|alpha_j|, |beta_j| <= rho``, where::

    rho = gamma(D + 6, u_acc) * A                       # scores
        + u_p + gamma(N, u_acc)                         # P rounded, sums
        + steps * (u_exp + 3 u_acc + u_acc * (A + log N + 1))   # rescales and merges

and ``gamma(n, u) = n u / (1 - n u)``. From that (``proofs/error_bound.py``)::

    |out_d - ref_d| <= ((exp(2 rho) - 1) + 2 eps) / (1 - eps) * V_d (1 + u_o) + u_o |ref_d| + 2 tau
    |lse - ref|     <= rho + 3 u_acc (|ref| + 1)            # proved for rho <= 2 only

with ``eps = N tau exp(rho)``, ``tau`` the absolute rounding of a weight near underflow (in the
numerator's rounded weights and in the normaliser's fp32 ones), and ``u_o = (1 + u_out)(1 +
u_acc) - 1``; the last ``2 tau`` covers an output that underflows (fp32 division, then the
rounding to the input dtype, e.g. an fp16 subnormal). ``steps`` counts, per key, its own exponential, each rescale that holds it and two
per merge. A row that sees no key must give out 0 and lse -inf exactly: its bound is 0. The lse
bound is proved for ``rho <= 2`` only; ``lse_bound`` raises ``NoBound`` on a row beyond it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: Unit roundoff (half an ulp at 1) of each format, round to nearest.
UNIT_ROUNDOFF = {
    "float16": 2.0**-11,
    "bfloat16": 2.0**-8,
    "float32": 2.0**-24,
    "float64": 2.0**-53,
}

#: Largest absolute error of rounding a value in [0, 1] to the format near underflow: half the
#: smallest subnormal, or the smallest normal where hardware flushes subnormals to zero.
UNDERFLOW_ABS = {
    "float16": 2.0**-25,
    "bfloat16": 2.0**-126,  # bf16 shares fp32's exponent range; FTZ flushes below 2^-126
    "float32": 2.0**-126,
    "float64": 2.0**-1022,
}

#: Relative error of the hardware exponential: ``ex2.approx.ftz.f32`` on NVIDIA GPUs is
#: documented at 2 ulp for fp32; 2^-21 leaves margin and also covers libm's float32 ``expf``.
EXP_REL_FP32 = 2.0**-21
#: float64 libm ``exp`` is correctly rounded to within an ulp.
EXP_REL_FP64 = 2.0**-52


@dataclass(frozen=True)
class Precision:
    """The unit roundoffs of one precision policy.

    Attributes:
        dtype: the input/output dtype name.
        u_acc: accumulation format (fp32 sums, tensor-core accumulators; taken as 2u_fp32 so
            that round-toward-zero accumulation is covered). Elementwise operations
            (subtracting maxima, the merge's weights) are assumed to round to nearest, error
            ``u_acc / 2``: the proofs rely on it (``proofs/error_bound.py`` Lemmas 2-4,
            ``proofs/merge_monoid.py``); truncating ones would double their per-step term.
        u_exp: relative error of ``exp``/``exp2`` in the accumulation format.
        u_p: rounding of the softmax weights before ``P @ V``.
        u_out: rounding of the output to the input dtype.
        tau: absolute rounding of a weight near underflow.
    """

    dtype: str
    u_acc: float
    u_exp: float
    u_p: float
    u_out: float
    tau: float


def precision(dtype: str) -> Precision:
    """The precision policy for inputs of ``dtype`` (a canonical name, see ``FLOAT_DTYPES``)."""
    if dtype not in UNIT_ROUNDOFF:
        raise ValueError(f"dtype: expected one of {sorted(UNIT_ROUNDOFF)}, got {dtype!r}")
    if dtype == "float64":
        u = UNIT_ROUNDOFF["float64"]
        return Precision(dtype, u_acc=2 * u, u_exp=EXP_REL_FP64, u_p=u, u_out=u, tau=UNDERFLOW_ABS["float64"])
    u_acc = 2 * UNIT_ROUNDOFF["float32"]
    tau = max(UNDERFLOW_ABS[dtype], UNDERFLOW_ABS["float32"])
    return Precision(dtype, u_acc=u_acc, u_exp=EXP_REL_FP32, u_p=UNIT_ROUNDOFF[dtype], u_out=UNIT_ROUNDOFF[dtype], tau=tau)


class NoBound(ValueError):
    """The bound does not exist for these sizes: ``n u >= 1`` in a ``gamma``, or
    ``N tau exp(rho) >= 1`` (scores far too large for the precision), or, for the lse only,
    ``rho > LSE_RHO_MAX`` (no lse bound is proved there)."""


def gamma(n, u: float):
    """Higham's ``gamma_n = n u / (1 - n u)``: the relative error of an ``n``-term sum or dot
    product in a format of unit roundoff ``u``, in any summation order."""
    n = np.asarray(n, dtype=np.float64)
    nu = n * u
    if np.any(nu >= 1):
        raise NoBound(f"n: expected n * u below 1 (no bound past it), got n * u up to {float(np.max(nu))}")
    return nu / (1 - nu)


def default_steps(num_keys):
    """A safe count of steps per key for any blocking and relay split: a key's own exponential
    (1), the rescales of its part's accumulators (at most ``N_i - 1`` in a part of ``N_i`` keys)
    and two per merge; with ``P`` non-empty parts ``N_i <= N - P + 1``, so at most
    ``1 + (N - P) + 2 (P - 1) <= 2N - 1`` steps (merging an empty part is exact and free)."""
    return 2 * np.asarray(num_keys, dtype=np.float64)


def weight_perturbation(num_keys, score_abs, head_dim: int, prec: Precision, steps=None):
    """``rho`` per query row: the largest relative perturbation (as a log) of any softmax weight.

    Args:
        num_keys: ``N`` per row (any shape), keys the row sees.
        score_abs: ``A`` per row, ``max_j scale * sum_d |q_d k_jd|`` (same shape).
        head_dim: ``D``.
        prec: the precision policy.
        steps: steps per key: its exponential, each rescale that holds it, two per merge; a
            number, or an array with as many axes as ``num_keys`` that broadcasts to it (so
            that a count per row is never taken for a count per head); at least 1 on every
            row that sees a key, and finite. Default ``default_steps``.

    Returns:
        float64 array of ``rho`` (0 where ``N == 0``).

    Raises:
        TypeError, ValueError: ``steps`` that is not such a count (naming it).
        NoBound: no bound exists for these sizes (``gamma``).
    """
    n = np.asarray(num_keys, dtype=np.float64)
    a = np.asarray(score_abs, dtype=np.float64)
    steps = default_steps(n) if steps is None else _steps(steps, n)
    log_n = np.log(np.maximum(n, 1.0))
    rho = (
        gamma(head_dim + 6, prec.u_acc) * a
        + prec.u_p
        + gamma(n, prec.u_acc)
        + steps * (prec.u_exp + 3 * prec.u_acc + prec.u_acc * (a + log_n + 1))
    )
    return np.where(n > 0, rho, 0.0)


def _steps(steps, n: np.ndarray) -> np.ndarray:
    """``steps`` (see ``weight_perturbation``) as float64 of ``n``'s shape."""
    try:
        s = np.asarray(steps, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"steps: expected a number or an array of numbers, got {type(steps).__name__}") from None
    want = f"a number, or an array of {n.ndim} axes that broadcasts to the rows' shape {n.shape}"
    if s.ndim not in (0, n.ndim):
        raise ValueError(f"steps: expected {want} (one count per query token is a column [total_q, 1]), got shape "
                         f"{s.shape}")
    try:
        s = np.broadcast_to(s, n.shape)
    except ValueError:
        raise ValueError(f"steps: expected {want}, got shape {s.shape}") from None
    bad = (n > 0) & ~(np.isfinite(s) & (s >= 1))
    if bad.any():
        raise ValueError(f"steps: expected a finite count of at least 1 (each key's own exponential) on every row "
                         f"that sees a key, got {float(s[bad].flat[0])}")
    return s


def out_bound(ref_out, value_abs, num_keys, score_abs, head_dim: int, prec: Precision, steps=None):
    """Elementwise bound on ``|out - ref_out|``.

    Args:
        ref_out: ``[..., D]`` the exact output (float64 oracle).
        value_abs: ``[..., D]`` ``V_d = max_j |v_jd|`` over the keys the row sees.
        num_keys, score_abs: ``[...]`` per row, see ``weight_perturbation``.
        head_dim: ``D``.
        prec: the precision policy.
        steps: see ``weight_perturbation``.

    Returns:
        float64 ``[..., D]``; exactly 0 on rows that see no key.

    Raises:
        NoBound: ``N tau exp(rho) >= 1``, or see ``weight_perturbation``.
    """
    rho = weight_perturbation(num_keys, score_abs, head_dim, prec, steps)[..., None]
    n = np.asarray(num_keys, dtype=np.float64)[..., None]
    v = np.asarray(value_abs, dtype=np.float64)
    u_o = (1 + prec.u_out) * (1 + prec.u_acc) - 1
    eps = n * prec.tau * np.exp(rho)
    if np.any(eps >= 1):
        raise NoBound(f"num_keys: expected N * tau * exp(rho) below 1 (no bound past it), "
                         f"got up to {float(np.max(eps))}")
    weights = (np.expm1(2 * rho) + 2 * eps) / (1 - eps) * v
    bound = weights * (1 + u_o) + u_o * np.abs(np.asarray(ref_out, dtype=np.float64)) + 2 * prec.tau
    return np.where(n > 0, bound, 0.0)


#: The largest ``rho`` for which the lse bound is proved (``proofs/error_bound.py``, "The lse":
#: Lemma 3's merge and the lse's accounting hold only up to it).
LSE_RHO_MAX = 2.0


def lse_bound(ref_lse, num_keys, score_abs, head_dim: int, prec: Precision, steps=None):
    """Bound on ``|lse - ref_lse|`` per row (natural log): ``rho + 3 u_acc (|ref_lse| + 1)``.

    Args:
        ref_lse: ``[...]`` the exact lse (float64 oracle).
        num_keys, score_abs: ``[...]`` per row, see ``weight_perturbation``.
        head_dim: ``D``.
        prec: the precision policy.
        steps: see ``weight_perturbation``.

    Returns:
        float64 ``[...]``; exactly 0 on rows that see no key.

    Raises:
        NoBound: a row's ``rho`` exceeds ``LSE_RHO_MAX`` = 2, where no lse bound is proved (at
            ``default_steps`` that is from about 2e5 keys with ``|q . k|`` up to 20; a kernel's
            counted ``steps`` keep ``rho`` far lower), or see ``weight_perturbation``.
    """
    rho = weight_perturbation(num_keys, score_abs, head_dim, prec, steps)
    ref = np.asarray(ref_lse, dtype=np.float64)
    n = np.asarray(num_keys)
    over = rho > LSE_RHO_MAX
    if np.any(over):
        i = int(np.argmax(over))  # the first such row, in the rows' (broadcast) order
        n64 = np.asarray(num_keys, dtype=np.float64)
        counted = np.broadcast_to(default_steps(n64) if steps is None else _steps(steps, n64), rho.shape)
        n64 = np.broadcast_to(n64, rho.shape)
        raise NoBound(
            f"num_keys, steps: expected rho <= {LSE_RHO_MAX:g} for the lse bound (it is proved only there), got "
            f"rho = {float(rho.flat[i]):.4g} on a row of num_keys = {float(n64.flat[i]):g}, score_abs = "
            f"{float(np.broadcast_to(np.asarray(score_abs, dtype=np.float64), rho.shape).flat[i]):g}, steps = "
            f"{float(counted.flat[i]):g}{' (default_steps)' if steps is None else ''}; "
            f"pass the kernel's counted steps (steps=), which keep rho far lower"
        )
    finite_ref = np.where(n > 0, np.abs(ref), 0.0)
    return np.where(n > 0, rho + 3 * prec.u_acc * (finite_ref + 1), 0.0)
