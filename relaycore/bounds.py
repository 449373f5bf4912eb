"""A-priori error bounds for attention computed under relaycore's precision policy.

Every tolerance in relaycore comes from here; ``proofs/error_bound.py`` states and proves the
bound and checks it in 60-digit arithmetic. The precision policy it covers:

* the inputs ``q, k, v`` are exact (they *are* the low-precision values; the oracle reads the same
  values in float64);
* scores ``q . k`` are accumulated in the accumulation format (fp32 for fp16/bf16/fp32 inputs,
  with unit roundoff ``u_acc``; never TF32), scaled, and exponentiated (relative error ``u_exp``
  at every argument) after subtracting a running maximum;
* the unnormalised softmax weights are rounded at most once, by at most ``u_p``, before the
  ``P @ V`` product, whose sums run in the accumulation format;
* partial states may be rescaled and merged any number of times, up to ``steps`` per key; the
  merges are pairwise in ``relaycore.state.merge``'s order of operations (Lemma 3), all at once
  in Lemma 4's (one maximum of the lses before any weight, one division at the end), or a
  running fold in Lemma 9's (sums rescaled whenever their maximum grows, FlashInfer's
  ``state_t::merge``); a part may be walked by groups of threads whose unnormalised states are
  folded before its division, a chain of rescales (FlashInfer's decode ``sync_state``, Lemma 11:
  ``relaycore.testing.blocked_steps(groups=...)`` counts its steps);
* elementwise operations (subtracting maxima, the merges' weights) round to nearest;
* the output is divided by the normaliser in fp32 and rounded once to the input dtype (``u_out``).

The backends follow it in two ways (``docs/math/errors.md``, "The precision policy"). The Triton
kernels (and the Gluon tile on sm_90) round ``P`` to the input dtype, walk blocks of keys, and
fold chunk states all at once in base 2. The PyTorch backend keeps ``P`` in fp32 (its products
``p v`` round in fp32 instead, by ``u_acc / 2 <= u_p``), takes each part in one block, and merges
the parts pairwise with ``relaycore.state.merge``: fewer steps than ``default_steps`` counts. On
CUDA it holds only while TF32 is off for fp32 matrix products (PyTorch's default; not after
``torch.backends.cuda.matmul.allow_tf32 = True`` or ``set_float32_matmul_precision("high")``).

For one query row that sees ``N >= 1`` keys, with ``A = max_j scale * sum_d |q_d k_jd|`` (not
``max_j |s_j|``: the sum of the absolute products bounds the dot product's rounding) and
``V_d = max_j |v_jd|``, the computed state is exactly the attention of *perturbed weights*
``exp(s_j + alpha_j)`` (numerator) and ``exp(s_j + beta_j)`` (normaliser) with
``|alpha_j|, |beta_j| <= rho``, where::

    rho = gamma(D + 6, u_acc) * A                       # scores
        + u_p + gamma(N, u_acc)                         # P rounded, sums
        + steps * (u_exp + 3 u_acc + u_acc * (A + log N + 1))   # rescales and merges
        + stored * u_p                                  # states stored in the input dtype

and ``gamma(n, u) = n u / (1 - n u)``. From that (``proofs/error_bound.py``)::

    |out_d - ref_d| <= (((exp(2 rho) - 1) + 2 eps) / (1 - eps) * V_d + 5 eps_acc + H) (1 + u_o)
                       + u_o |ref_d| + 2 tau
    |lse - ref|     <= rho + 3 u_acc (|ref| + 1)            # proved for rho <= 2 only

with ``eps = N tau exp(rho)``, ``tau`` the absolute rounding of a weight near underflow (in the
numerator's rounded weights and in the normaliser's fp32 ones), ``eps_acc = N tau_acc
exp(rho)``, ``tau_acc`` the absolute error of any rounding in the accumulation format below its
normal range, and ``u_o = (1 + u_out)(1 + u_acc) - 1``. ``5 eps_acc`` covers the fewer than
``5 N`` roundings on a numerator's way to the output (products ``p v``, sums, rescales, a part's
division, a merge's products and sum) where they underflow: their errors are absolute, not on
the scale of ``V_d`` (Lemma 6). The last ``2 tau`` covers an output that underflows (fp32
division, then the rounding to the input dtype, e.g. an fp16 subnormal). ``steps`` counts, per
key, its own exponential, each rescale that holds it and two per merge. A row that sees no key
must give out 0 and lse -inf exactly: its bound is 0.

``stored`` (0 unless given) covers kernels that store a partial state's output in the input
dtype and merge it later, as cascade kernels that run each level into an output tensor do: per
row, the most pairwise merges a key passes whose incoming outputs were read from such storage.
Each rounds those outputs once more (``u_p`` on the numerator, Lemma 8 of the proof) and, where
they fall below the input format's normal range, absolutely: ``H = stored tau exp(stored (u_p
+ 4 u_acc))``. The lse never reads a stored output, so ``lse_bound`` takes no ``stored``.
``stored_merge="running"`` prices running folds (Lemma 9's order, FlashInfer's ``state_t::merge``)
that read stored outputs instead, trees of them included (FlashInfer's two-level merge kernels):
``stored`` is then the most folds a key passes (each counted, whether it reads stored outputs or
fp32 ones: a tree of folds over fp32 intermediates is priced this way too, since Lemma 9
covers one fold only, and there the ``tau`` and ``u_p`` charged per fold are conservative), the
same ``stored u_p`` in ``rho``, and ``H = stored (tau + tau_acc) exp(stored (u_p + 5/2 u_acc) +
3 u_acc (N - 1))`` (Lemma 10 of the proof: a fold's weights are summed over its ``K' <= N``
states, so the factor grows with ``N``). The same term prices pairwise merges whose coefficients
are divided within 2 ulp (``-use_fast_math``; Lemma 8's last part), ``stored`` the merges a key
passes, one step more per merge in ``steps``.

Where a bound does not exist the functions raise ``NoBound`` (a ``ValueError``) naming the
argument: ``n u >= 1`` in a ``gamma`` (``N >= 2^23`` keys with fp32 sums); ``eps >= 1``;
a value so large that a computed output or accumulator may overflow (Lemma 5 of the proof:
``exp(rho_Delta) (1 + eps) V_d + 2 eps rho`` must not pass the input format's largest finite
value, nor ``N exp(rho + rho_Delta) (1 + eps) V_d + 2 eps rho`` the accumulation format's, with
``rho_Delta = output_growth(...)``); scores whose dot products may overflow the accumulation
format (checked where the softmax ``scale`` is given, see ``MIN_SCALE``); for the out bound,
``rho`` past ``out_rho_limit`` (where the merge lemmas are not proved); and, for the lse only,
``rho > LSE_RHO_MAX`` = 2. ``out_bound_refused`` names the rows ``out_bound`` refuses.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np

#: Unit roundoff (half an ulp at 1) of each format, round to nearest.
UNIT_ROUNDOFF = {
    "float16": 2.0**-11,
    "bfloat16": 2.0**-8,
    "float32": 2.0**-24,
    "float64": 2.0**-53,
}

#: Largest finite value of each format: ``(2 - 2^(1 - p)) 2^emax``. Rounded to nearest, a result
#: beyond it becomes infinite, and the bound does not model that (``out_bound`` refuses it).
LARGEST_FINITE = {
    "float16": 65504.0,
    "bfloat16": (2 - 2.0**-7) * 2.0**127,
    "float32": (2 - 2.0**-23) * 2.0**127,
    "float64": sys.float_info.max,
}

#: The accumulation format of each policy (scores, sums, states).
ACCUMULATION = {"float16": "float32", "bfloat16": "float32", "float32": "float32", "float64": "float64"}

#: The least softmax scale for which the scores' dot products cannot overflow the accumulation
#: format once ``eps < 1`` (``proofs/error_bound.py``, Lemma 5: ``eps < 1`` keeps ``A`` below
#: ``2^27`` with fp32 accumulation, ``2^59`` with float64, so ``sum_d |q_d k_jd| = A / scale``
#: stays below the largest finite value). ``out_bound`` and ``lse_bound`` check the dot products
#: themselves where they are given the ``scale``; without it they assume at least this scale,
#: except for fp16 inputs, whose products cannot overflow fp32 at any scale.
MIN_SCALE = {"float32": 2.0**-100, "float64": 2.0**-964}

#: Largest absolute error of a rounding to the format below its normal range (a weight in
#: [0, 1] rounded to the input format; any product, sum or quotient of the accumulation format):
#: half the smallest subnormal, or the smallest normal where hardware flushes subnormals to zero.
UNDERFLOW_ABS = {
    "float16": 2.0**-25,
    "bfloat16": 2.0**-126,  # bf16 shares fp32's exponent range; FTZ flushes below 2^-126
    "float32": 2.0**-126,
    "float64": 2.0**-1022,
}

#: The roundings in the accumulation format that an output's numerator passes, and that may
#: underflow, per key of the row (``proofs/error_bound.py``, Lemma 6): the products ``p v``, the
#: additions, the rescales, the parts' divisions and the merges' products and sums are fewer
#: than ``5 N`` for ``N`` keys.
UNDERFLOW_ROUNDINGS = 5

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
        u_exp: relative error of ``exp``/``exp2`` in the accumulation format, at every argument
            the kernel passes it (an ``exp(x)`` computed as ``exp2(fl(x * log2 e))``, as
            Triton's ``tl.exp`` and CUDA's ``__expf`` do, errs by up to about ``0.6 u_acc |x|`` more and
            is not covered; relaycore's kernels fold ``log2 e`` into the softmax scale once).
        u_p: rounding of the softmax weights before ``P @ V``.
        u_out: rounding of the output to the input dtype.
        tau: absolute rounding of a weight near underflow.
        tau_acc: absolute error of a rounding in the accumulation format below its normal
            range (``UNDERFLOW_ABS`` of that format).
        largest: the input (and output) format's largest finite value.
        largest_acc: the accumulation format's largest finite value.
    """

    dtype: str
    u_acc: float
    u_exp: float
    u_p: float
    u_out: float
    tau: float
    tau_acc: float
    largest: float
    largest_acc: float


def precision(dtype: str) -> Precision:
    """The precision policy for inputs of ``dtype`` (a canonical name, see ``FLOAT_DTYPES``).

    Raises:
        TypeError: ``dtype`` is not a str (a torch or NumPy dtype, a list...).
        ValueError: ``dtype`` names no format of ``UNIT_ROUNDOFF``.
    """
    if not isinstance(dtype, str):
        raise TypeError(f"dtype: expected a format's name, one of {sorted(UNIT_ROUNDOFF)}, got {type(dtype).__name__} "
                        f"{dtype!r}")
    if dtype not in UNIT_ROUNDOFF:
        raise ValueError(f"dtype: expected one of {sorted(UNIT_ROUNDOFF)}, got {dtype!r}")
    acc = ACCUMULATION[dtype]
    formats = dict(tau_acc=UNDERFLOW_ABS[acc], largest=LARGEST_FINITE[dtype], largest_acc=LARGEST_FINITE[acc])
    if dtype == "float64":
        u = UNIT_ROUNDOFF["float64"]
        return Precision(dtype, u_acc=2 * u, u_exp=EXP_REL_FP64, u_p=u, u_out=u, tau=UNDERFLOW_ABS["float64"],
                         **formats)
    u_acc = 2 * UNIT_ROUNDOFF["float32"]
    tau = max(UNDERFLOW_ABS[dtype], UNDERFLOW_ABS["float32"])
    return Precision(dtype, u_acc=u_acc, u_exp=EXP_REL_FP32, u_p=UNIT_ROUNDOFF[dtype], u_out=UNIT_ROUNDOFF[dtype], tau=tau,
                     **formats)


class NoBound(ValueError):
    """The bound does not exist for these sizes: ``n u >= 1`` in a ``gamma``; ``N tau exp(rho)
    >= 1`` (scores far too large for the precision); for the out bound, ``rho`` past
    ``out_rho_limit`` (the merge lemmas are not proved there); values so large that a computed
    output or accumulator may overflow; dot products that may overflow (where the scale is
    given); or, for the lse only, ``rho > LSE_RHO_MAX`` (no lse bound is proved there)."""


def _numbers(name: str, x) -> np.ndarray:
    """``x`` as a float64 array, else a ``TypeError`` naming ``name``."""
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected a number or an array of numbers, got {type(x).__name__}") from None


def _refuse(name: str, x: np.ndarray, bad: np.ndarray, want: str) -> None:
    """A ``ValueError`` naming ``name``, with the first of ``x``'s values where ``bad`` holds."""
    if np.any(bad):
        raise ValueError(f"{name}: expected {want}, got {float(np.broadcast_to(x, bad.shape)[bad][0])!r}")


def _num_keys(num_keys) -> np.ndarray:
    """``num_keys`` as float64: whole counts of at least 0."""
    n = _numbers("num_keys", num_keys)
    _refuse("num_keys", n, ~(np.isfinite(n) & (n >= 0) & (n == np.floor(n))), "whole counts >= 0")
    return n


def _per_row(name: str, x, seen: np.ndarray, want: str, ok) -> np.ndarray:
    """``x`` as float64, of a shape that broadcasts with ``seen`` (a row's or an element's
    ``N > 0``), refused where ``ok(x)`` fails on a row that sees a key (``want`` says what it
    holds); the other rows are not read, as their bound is 0."""
    x = _numbers(name, x)
    try:
        np.broadcast_shapes(x.shape, seen.shape)
    except ValueError:
        raise ValueError(f"{name}: expected a shape that broadcasts with the rows' shape {seen.shape}, got "
                         f"{x.shape}") from None
    with np.errstate(invalid="ignore"):
        _refuse(name, x, seen & ~ok(x), f"{want} on every row that sees a key")
    return x


def _is_magnitude(x: np.ndarray) -> np.ndarray:
    """Where ``x`` holds a magnitude (``A``, ``V_d``): a value of at least 0. ``inf`` is one,
    for which ``out_bound`` and ``lse_bound`` raise ``NoBound``; NaN is none."""
    return x >= 0


def _check_precision(prec) -> None:
    """Refuse a ``prec`` that is not a ``Precision``."""
    if not isinstance(prec, Precision):
        raise TypeError(f"prec: expected a relaycore.bounds.Precision (bounds.precision(dtype)), got "
                        f"{type(prec).__name__}")


def _rows(num_keys, score_abs, head_dim, prec) -> tuple:
    """The arguments every bound takes, checked: ``N`` and ``A`` as float64 (``head_dim`` an
    int of at least 0, ``prec`` a ``Precision``)."""
    if isinstance(head_dim, (bool, np.bool_)) or not isinstance(head_dim, (int, np.integer)) or head_dim < 0:
        raise ValueError(f"head_dim: expected an int >= 0, got {head_dim!r}")
    _check_precision(prec)
    n = _num_keys(num_keys)
    return n, _per_row("score_abs", score_abs, n > 0, "values >= 0", _is_magnitude)


def gamma(n, u: float):
    """Higham's ``gamma_n = n u / (1 - n u)``: the relative error of an ``n``-term sum or dot
    product in a format of unit roundoff ``u``, in any summation order.

    Raises:
        TypeError, ValueError: ``n`` that is not finite and at least 0, ``u`` that is not a
            finite unit roundoff of at least 0 (naming it).
        NoBound: ``n u >= 1``.
    """
    n, u = _numbers("n", n), _numbers("u", u)
    _refuse("n", n, ~(np.isfinite(n) & (n >= 0)), "finite counts >= 0")
    _refuse("u", u, ~(np.isfinite(u) & (u >= 0)), "a finite unit roundoff >= 0")
    return _gamma(n, u)


def _gamma(n, u):
    """``gamma`` of checked arguments."""
    nu = np.asarray(n, dtype=np.float64) * u
    if np.any(nu >= 1):
        raise NoBound(f"n: expected n * u below 1 (no bound past it), got n * u up to {float(np.max(nu))}")
    return nu / (1 - nu)


def default_steps(num_keys):
    """A safe count of steps per key for any blocking and any relay split whose merges are
    pairwise in ``relaycore.state.merge``'s order of operations (Lemma 3) or all at once in
    Lemma 4's: a key's own exponential (1), the rescales of its part's accumulators (at most
    ``N_i - 1`` in a part of ``N_i`` keys) and two per merge; with ``K'`` non-empty parts
    ``N_i <= N - K' + 1``, so at most ``1 + (N - K') + 2 (K' - 1) <= 2N - 1`` steps, and one more
    per pairwise merge with an empty part (its lse takes a logarithm of 1, which the policy lets
    err by ``u_exp``): safe with at most ``N - K' + 1`` empty parts merged pairwise (always with
    one), or with a logarithm exact at 1; past that count them with ``blocked_steps``
    (one key and five empty parts err in lse past the bound at this count, Lemma 3). One running
    fold of the parts (Lemma 9: at most ``K'`` steps,
    one more with divisions within 2 ulp) stays within it too: ``N_i + K' + 1 <= N + 2 <= 2N``
    for ``K' >= 2``. A tree of running folds (fp32 intermediates included) is not Lemma 9's but
    Lemma 10's: count it with ``relaycore.testing.blocked_steps(merge="running", levels=...)``
    and pass ``stored`` (the folds a key passes) with ``stored_merge="running"``. Pairwise merges
    in the sigmoid or logaddexp form cost Lemma 3's two steps too, under an assumption on
    ``sigmoid`` and ``logaddexp`` and without Lemma 5's no-overflow conditions ("Lemma 3, other
    pairwise orders"). A merge in any other order is not covered by the proof, at this count or
    any other.

    Raises:
        TypeError, ValueError: ``num_keys`` that is not whole counts of at least 0.
    """
    return _counted(None, _num_keys(num_keys))


def _counted(steps, n: np.ndarray) -> np.ndarray:
    """The steps per key of rows of checked ``N``: ``steps`` checked (``_steps``), or where it
    is ``None`` ``default_steps``: ``2 N``."""
    return 2 * n if steps is None else _steps(steps, n)


def weight_perturbation(num_keys, score_abs, head_dim: int, prec: Precision, steps=None, *, stored=None):
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
        stored: the most pairwise merges a key of the row passes whose incoming outputs were
            stored in the input dtype (each adds ``u_p``; ``proofs/error_bound.py``, Lemma 8),
            or, for running folds of stored outputs (``out_bound``'s ``stored_merge=
            "running"``, Lemma 10), the most running folds a key passes (each counted, whether
            it reads stored outputs or fp32 ones); a count of at least 0 shaped as ``steps``. Default 0: states
            merged in fp32.

    Returns:
        float64 array of ``rho`` (0 where ``N == 0``).

    Raises:
        TypeError, ValueError: an argument outside its contract, naming it: ``num_keys`` that
            is not whole counts of at least 0, ``score_abs`` below 0 or NaN on a row that sees
            a key (``inf`` is a magnitude: no bound exists for it), ``head_dim`` that is not an
            int of at least 0, ``prec`` that is not a ``Precision``, ``steps`` or ``stored``
            that is not such a count, or shapes that do not broadcast. Rows that see no key are
            not read.
        NoBound: no bound exists for these sizes (``gamma``).
    """
    n, a = _rows(num_keys, score_abs, head_dim, prec)
    return _rho(n, a, head_dim, prec, steps, stored)


def _rho(n: np.ndarray, a: np.ndarray, head_dim: int, prec: Precision, steps, stored=None) -> np.ndarray:
    """``weight_perturbation`` of checked ``N`` and ``A`` (``steps`` and ``stored`` are checked
    here)."""
    steps, stored = _counted(steps, n), _stored(stored, n)
    log_n = np.log(np.maximum(n, 1.0))
    with np.errstate(invalid="ignore"):  # a magnitude on a row that sees no key is not read
        rho = (
            _gamma(head_dim + 6, prec.u_acc) * a
            + prec.u_p
            + _gamma(n, prec.u_acc)
            + steps * (prec.u_exp + 3 * prec.u_acc + prec.u_acc * (a + log_n + 1))
            + stored * prec.u_p
        )
    return np.where(n > 0, rho, 0.0)


def _steps(steps, n: np.ndarray) -> np.ndarray:
    """``steps`` (see ``weight_perturbation``) as float64 of ``n``'s shape."""
    return _per_row_count("steps", steps, n, 1, "at least 1 (each key's own exponential)")


def _stored(stored, n: np.ndarray) -> np.ndarray:
    """``stored`` (see ``weight_perturbation``) as float64 of ``n``'s shape: 0 where ``None``."""
    if stored is None:
        return np.zeros(n.shape)
    return _per_row_count("stored", stored, n, 0, "at least 0")


def _per_row_count(name: str, x, n: np.ndarray, least: float, want_least: str) -> np.ndarray:
    """A count per row (``steps``, ``stored``) as float64 of ``n``'s shape: a number, or an array
    of ``n``'s axes that broadcasts to it, finite and at least ``least`` on every row that sees
    a key."""
    s = _numbers(name, x)
    want = f"a number, or an array of {n.ndim} axes that broadcasts to the rows' shape {n.shape}"
    if s.ndim not in (0, n.ndim):
        raise ValueError(f"{name}: expected {want} (one count per query token is a column [total_q, 1]), got shape "
                         f"{s.shape}")
    try:
        s = np.broadcast_to(s, n.shape)
    except ValueError:
        raise ValueError(f"{name}: expected {want}, got shape {s.shape}") from None
    bad = (n > 0) & ~(np.isfinite(s) & (s >= least))
    if bad.any():
        raise ValueError(f"{name}: expected a finite count of {want_least} on every row that sees a key, got "
                         f"{float(s[bad].flat[0])}")
    return s


def output_growth(num_keys, prec: Precision, steps=None, *, stored=None):
    """``rho_Delta`` per row (``proofs/error_bound.py``, Lemma 5): the most by which the computed
    numerator weights of a key can outgrow its computed normaliser weights, as a log,
    ``u_p + 2 gamma(N, u_acc) + 2 steps u_acc + stored u_p``. The roundings the two sides share
    (the score, the exponential, the rescale factor, a merge's weight) cancel in it, so it is far
    below ``2 rho``; it bounds how large a computed output can be (``out_bound``'s overflow
    check).

    Args:
        num_keys, steps, stored: see ``weight_perturbation``.
        prec: the precision policy.

    Returns:
        float64 array of ``rho_Delta`` (0 where ``N == 0``).

    Raises:
        TypeError, ValueError: ``num_keys``, ``prec``, ``steps`` or ``stored`` outside their
            contract (see ``weight_perturbation``), naming it.
        NoBound: ``gamma``.
    """
    _check_precision(prec)
    return _growth(_num_keys(num_keys), prec, steps, stored)


def _growth(n: np.ndarray, prec: Precision, steps, stored=None) -> np.ndarray:
    """``output_growth`` of checked ``N`` (``steps`` and ``stored`` are checked here)."""
    steps, stored = _counted(steps, n), _stored(stored, n)
    return np.where(n > 0, (1 + stored) * prec.u_p + 2 * _gamma(n, prec.u_acc) + 2 * steps * prec.u_acc, 0.0)


def _stored_underflow(n: np.ndarray, prec: Precision, stored, stored_merge: str = "pairwise") -> np.ndarray:
    """``H`` per row: what the roundings of stored outputs below the input format's normal range
    add to an output, absolutely. ``"pairwise"`` (Lemma 8): ``stored tau exp(stored (u_p + 4
    u_acc))``. ``"running"`` (Lemma 10): ``stored (tau + tau_acc) exp(stored (u_p + 5/2 u_acc) + 3
    u_acc (N - 1))``, the folds' divisions below fp32's normal range included (``tau_acc``) and
    ``3 u_acc (N - 1)`` for the sums of a fold of up to ``N`` states."""
    s = _stored(stored, n)
    if _stored_merge(stored_merge) == "pairwise":
        return np.where(n > 0, s * prec.tau * np.exp(s * (prec.u_p + 4 * prec.u_acc)), 0.0)
    folds = 3 * prec.u_acc * np.maximum(n - 1, 0.0)
    return np.where(n > 0, s * (prec.tau + prec.tau_acc) * np.exp(s * (prec.u_p + 2.5 * prec.u_acc) + folds), 0.0)


#: How merges that read stored outputs combine them (``out_bound``'s ``stored_merge``):
#: ``"pairwise"`` two at a time in Lemma 3's order (Lemma 8 of ``proofs/error_bound.py``), or
#: ``"running"`` running folds in Lemma 9's order, in a tree of any depth (Lemma 10), or pairwise
#: merges that divide within 2 ulp (Lemma 8's last part).
STORED_MERGES = ("pairwise", "running")


def _stored_merge(stored_merge) -> str:
    """``stored_merge`` checked: one of ``STORED_MERGES``."""
    if not isinstance(stored_merge, str) or stored_merge not in STORED_MERGES:
        raise ValueError(f"stored_merge: expected one of {STORED_MERGES}, got {stored_merge!r}")
    return stored_merge


#: Relative margin on the float64 evaluation of Lemma 5's magnitudes (a few roundings and an
#: ``exp``), so that what ``out_bound`` computes is never below what the lemma states.
_EVALUATION_MARGIN = 1 + 2.0**-45


#: The out bound is proved for ``rho <= OUT_RHO_MAX + min(A, OUT_RHO_SCORE_CAP) / 4``
#: (``proofs/error_bound.py``, Lemma 3: a pairwise merge costs two steps while its states'
#: ``rho`` stays there, with room left for the terms of the next order; Lemma 4 has more room).
OUT_RHO_MAX = 2.5
OUT_RHO_SCORE_CAP = 256.0


def out_rho_limit(score_abs):
    """The largest ``rho`` for which ``out_bound`` is proved, per row:
    ``OUT_RHO_MAX + min(A, OUT_RHO_SCORE_CAP) / 4`` (2.5 at ``A = 0``, 66.5 from ``A = 256``).

    Raises:
        TypeError, ValueError: ``score_abs`` that is not numbers of at least 0, naming it.
    """
    a = _numbers("score_abs", score_abs)
    _refuse("score_abs", a, ~_is_magnitude(a), "values >= 0")
    return _rho_limit(a)


def _rho_limit(a: np.ndarray) -> np.ndarray:
    """``out_rho_limit`` of a checked ``A``."""
    return OUT_RHO_MAX + np.minimum(a, OUT_RHO_SCORE_CAP) / 4


def _scale(scale, n: np.ndarray):
    """``scale`` as float64, finite, positive and of a shape that broadcasts to ``n``'s (``None``
    stays ``None``)."""
    if scale is None:
        return None
    c = _numbers("scale", scale)
    if not np.all(np.isfinite(c) & (c > 0)):
        raise ValueError(f"scale: expected the finite positive softmax scale, got {scale!r}")
    try:
        np.broadcast_to(c, n.shape)
    except ValueError:
        raise ValueError(f"scale: expected a number or an array that broadcasts to num_keys' shape {n.shape}, got "
                         f"shape {c.shape}") from None
    return c


def _dot_products(a: np.ndarray, n: np.ndarray, head_dim: int, prec: Precision, c) -> np.ndarray:
    """Lemma 5's (R1): the largest partial sum of the dot products ``sum_d q_d k_jd``,
    ``(1 + gamma_D) A / scale`` per row (0 without a scale ``c``: assumed within range)."""
    if c is None:
        return np.zeros(n.shape)
    with np.errstate(over="ignore"):
        return np.where(n > 0, (1 + _gamma(head_dim, prec.u_acc)) * a / c, 0.0) * _EVALUATION_MARGIN


def _out_checked(value_abs, num_keys, score_abs, head_dim, prec, scale) -> tuple:
    """The arguments of ``out_bound_refused`` (and ``out_bound``), checked: ``V_d``, ``N``,
    ``A`` and the scale as float64."""
    n, a = _rows(num_keys, score_abs, head_dim, prec)
    v = _per_row("value_abs", value_abs, n[..., None] > 0, "values >= 0", _is_magnitude)
    return v, n, a, _scale(scale, n)


def _out_conditions(v: np.ndarray, n_rows: np.ndarray, a: np.ndarray, head_dim: int, prec: Precision, steps,
                    c, stored, stored_merge: str = "pairwise") -> dict:
    """Everything ``out_bound`` checks, per row or element, from checked arguments: ``rho``,
    ``eps``, ``H`` (``stored``, ``stored_merge``) and, for each condition (``"eps"``, ``"rho"``,
    ``"output"``, ``"accumulator"``, ``"scores"``), the quantity it compares and its limit. A
    running fold of stored outputs sums up to ``N`` of them, each up to the output's size, with
    factors within ``exp(rho)``: its accumulator is held to ``N exp(rho)`` times the output's
    (Lemma 10)."""
    rho = _rho(n_rows, a, head_dim, prec, steps, stored)[..., None]
    n = n_rows[..., None]
    with np.errstate(over="ignore", invalid="ignore"):
        eps = n * prec.tau * np.exp(rho)
        growth = _growth(n_rows, prec, steps, stored)[..., None]
        stored_h = _stored_underflow(n_rows, prec, stored, stored_merge)[..., None]
        seen = (n > 0) & (v > 0)
        # the roundings' underflows, absolute: the accumulation format's (Lemma 5), stored outputs' (Lemmas 8, 10)
        underflows = np.where(n > 0, 2 * eps * rho, 0.0) + stored_h
        out_peak = (np.where(seen, np.exp(growth) * (1 + eps) * v, 0.0) + underflows) * _EVALUATION_MARGIN
        acc_peak = (np.where(seen, n * np.exp(rho + growth) * (1 + eps) * v, 0.0) + underflows) * _EVALUATION_MARGIN
        if stored_merge == "running":  # a fold's partial sums of up to N stored outputs (Lemma 10)
            folded = _stored(stored, n_rows)[..., None] > 0
            acc_peak = np.where(folded, np.maximum(acc_peak, n * np.exp(rho) * out_peak * _EVALUATION_MARGIN),
                                acc_peak)
    return dict(
        rho=rho, n=n, eps=eps, stored_h=stored_h,
        eps_check=(eps, 1.0),
        rho_check=(np.where(n > 0, rho, 0.0), _rho_limit(a)[..., None]),
        output=(out_peak, prec.largest),
        accumulator=(acc_peak, prec.largest_acc),
        scores=(_dot_products(a, n_rows, head_dim, prec, c)[..., None], prec.largest_acc),
    )


def out_bound_refused(value_abs, num_keys, score_abs, head_dim: int, prec: Precision, steps=None, *, scale=None,
                      stored=None, stored_merge: str = "pairwise"):
    """The rows on which ``out_bound`` raises ``NoBound`` (``eps >= 1``, ``rho`` past
    ``out_rho_limit``, a value or a dot product that may overflow), so that a caller can check
    the other rows: bool ``[...]``, the shape of ``num_keys`` broadcast with ``value_abs[..., 0]``.

    Raises:
        TypeError, ValueError: an argument outside its contract, naming it (see ``out_bound``).
        NoBound: ``gamma`` (the sizes of every row); and see ``weight_perturbation``.
    """
    v, n, a, scale = _out_checked(value_abs, num_keys, score_abs, head_dim, prec, scale)
    c = _out_conditions(v, n, a, head_dim, prec, steps, scale, stored, _stored_merge(stored_merge))
    refused = c["eps_check"][0] >= 1
    for name in ("rho_check", "output", "accumulator", "scores"):
        got, limit = c[name]
        refused = refused | (got > limit)
    return np.any(np.broadcast_to(refused, np.broadcast_shapes(refused.shape, v.shape)), axis=-1)


def _remedy(n: float, a: float, head_dim: int, prec: Precision, limit: float, steps_given: bool,
            stored: float = 0.0) -> str:
    """What would give a bound on a row of ``n`` keys and score sum ``a`` (and ``stored``) whose
    ``rho`` passes ``limit``: fewer steps per key where ``rho`` at one step stays within it, else
    nothing but smaller scores or a shorter row."""
    one = float(_rho(np.float64(n), np.float64(a), head_dim, prec, 1, stored))
    if one > limit:
        return (f"no count of steps gives one (rho = {one:.4g} at 1 step per key): smaller scores or a shorter row "
                f"would")
    if steps_given:
        return f"fewer steps per key would (rho = {one:.4g} at 1 step per key)"
    return "pass the kernel's counted steps (steps=), which keep rho far lower"


def out_bound(ref_out, value_abs, num_keys, score_abs, head_dim: int, prec: Precision, steps=None, *, scale=None,
              stored=None, stored_merge: str = "pairwise"):
    """Elementwise bound on ``|out - ref_out|``.

    Args:
        ref_out: ``[..., D]`` the exact output (float64 oracle).
        value_abs: ``[..., D]`` ``V_d = max_j |v_jd|`` over the keys the row sees.
        num_keys, score_abs: ``[...]`` per row, see ``weight_perturbation`` (``score_abs`` is
            ``A = max_j scale * sum_d |q_d k_jd|``, not the largest ``|score|``).
        head_dim: ``D``.
        prec: the precision policy.
        steps: see ``weight_perturbation``.
        scale: the softmax scale (a number, or an array that broadcasts to ``num_keys``):
            where given, the scores' dot products are checked not to overflow; where not, the
            bound assumes a scale of at least ``MIN_SCALE`` (any scale for fp16 inputs).
        stored: see ``weight_perturbation``: merges that read outputs stored in the input
            dtype add ``stored u_p`` to ``rho`` and ``H`` to the bound.
        stored_merge: how those merges combine the stored outputs, one of ``STORED_MERGES``:
            ``"pairwise"`` (default; Lemma 8: ``stored`` counts the pairwise merges of stored
            outputs a key passes, ``H = stored tau exp(stored (u_p + 4 u_acc))``) or
            ``"running"`` (Lemma 10: running folds in Lemma 9's order, in a tree of any depth,
            as FlashInfer's ``merge_states`` over stored outputs and its two-level merge
            kernels; ``stored`` counts the folds a key passes, each whether it reads stored
            outputs or fp32 ones, ``H = stored (tau + tau_acc) exp(stored (u_p + 5/2 u_acc) + 3
            u_acc (N - 1))``, and the fold's accumulator is held to ``N exp(rho)`` times the
            output's size in the overflow check). Not read where ``stored`` is 0.

    Returns:
        float64 ``[..., D]``; exactly 0 on rows that see no key.

    Raises:
        NoBound: ``N tau exp(rho) >= 1``; ``rho`` past ``out_rho_limit(A)``, where the merge
            lemmas are not proved (at ``default_steps`` and ``A = 20``: bf16 and fp32 rows of
            about 7e5 keys, where the bound is above 10^6 V_d; fp16 meets ``eps >= 1`` first);
            a value so large that a computed output
            (``exp(rho_Delta) (1 + eps) V_d + 2 eps rho`` past ``prec.largest``) or accumulator
            (``N exp(rho + rho_Delta) (1 + eps) V_d + 2 eps rho`` past ``prec.largest_acc``) may
            overflow, ``rho_Delta = output_growth(...)``; dot products that may overflow (with
            ``scale``); or see ``weight_perturbation``. ``out_bound_refused`` names the rows.
        TypeError, ValueError: an argument outside its contract, naming it: ``ref_out`` not
            finite, or ``value_abs`` below 0 or NaN, on a row that sees a key; ``scale`` that is
            not finite and positive; ``stored_merge`` not one of ``STORED_MERGES``; shapes that
            do not broadcast; and see ``weight_perturbation``. Rows that see no key are not read.
    """
    v, n_rows, a, scale = _out_checked(value_abs, num_keys, score_abs, head_dim, prec, scale)
    seen = np.broadcast_to(n_rows[..., None] > 0, np.broadcast_shapes(n_rows[..., None].shape, v.shape))
    ref = _per_row("ref_out", ref_out, seen, "finite values", np.isfinite)
    c = _out_conditions(v, n_rows, a, head_dim, prec, steps, scale, stored, _stored_merge(stored_merge))
    rho, n, eps = c["rho"], c["n"], c["eps"]
    if np.any(eps >= 1):
        raise NoBound(f"num_keys: expected N * tau * exp(rho) below 1 (no bound past it), "
                      f"got up to {float(np.max(eps))}")
    got, limit = c["rho_check"]
    over = np.broadcast_to(got > limit, np.broadcast_shapes(got.shape, np.shape(limit)))
    if np.any(over):
        i = int(np.argmax(over))  # flat, over the rows with a head axis of length 1

        def at(x) -> float:
            return float(np.broadcast_to(x, over.shape).flat[i])

        row_a, row_limit = at(a[..., None]), at(limit)
        row_stored = at(_stored(stored, n_rows)[..., None])
        raise NoBound(f"num_keys, steps: expected rho <= 2.5 + min(A, 256) / 4 for the out bound (the merge lemmas are "
                      f"proved only there), got rho = {at(got):.4g} where the limit is {row_limit:.4g}; "
                      f"{_remedy(at(n), row_a, head_dim, prec, row_limit, steps is not None, row_stored)}")
    acc_name = ACCUMULATION.get(prec.dtype, "the accumulation format")
    got, limit = c["output"]
    if np.any(got > limit):
        raise NoBound(f"value_abs: expected exp(rho_Delta) (1 + eps) V_d + 2 eps rho <= {limit:.8g}, the largest "
                      f"finite {prec.dtype} (a computed output up to that size could round to inf: no bound), got up to "
                      f"{float(np.max(got)):.8g}")
    got, limit = c["accumulator"]
    if np.any(got > limit):
        raise NoBound(f"value_abs: expected N exp(rho + rho_Delta) (1 + eps) V_d + 2 eps rho <= {limit:.8g}, "
                      f"the largest finite {acc_name} (an accumulator up to that size could overflow: no bound), got up to "
                      f"{float(np.max(got)):.8g}")
    got, limit = c["scores"]
    if np.any(got > limit):
        raise NoBound(f"score_abs, scale: expected (1 + gamma_D) A / scale <= {limit:.8g}, the largest finite "
                      f"{acc_name} (the dot products q . k must not overflow), got up to {float(np.max(got)):.8g}")
    u_o = (1 + prec.u_out) * (1 + prec.u_acc) - 1
    weights = (np.expm1(2 * rho) + 2 * eps) / (1 - eps) * v
    eps_acc = n * prec.tau_acc * np.exp(rho)  # the accumulator's underflows, absolute (Lemma 6)
    with np.errstate(invalid="ignore"):  # a value on a row that sees no key is not read
        bound = (weights + UNDERFLOW_ROUNDINGS * eps_acc + c["stored_h"]) * (1 + u_o) + u_o * np.abs(ref) + 2 * prec.tau
    return np.where(n > 0, bound, 0.0)


#: The largest ``rho`` for which the lse bound is proved (``proofs/error_bound.py``, "The lse":
#: Lemma 3's merge and the lse's accounting hold only up to it).
LSE_RHO_MAX = 2.0


def lse_bound(ref_lse, num_keys, score_abs, head_dim: int, prec: Precision, steps=None, *, scale=None):
    """Bound on ``|lse - ref_lse|`` per row (natural log): ``rho + 3 u_acc (|ref_lse| + 1)``. It
    takes no ``stored``: a merge reads the lses in fp32, never a stored output (Lemma 8).

    Args:
        ref_lse: ``[...]`` the exact lse (float64 oracle).
        num_keys, score_abs: ``[...]`` per row, see ``weight_perturbation``.
        head_dim: ``D``.
        prec: the precision policy.
        steps: see ``weight_perturbation``.
        scale: see ``out_bound``.

    Returns:
        float64 ``[...]``; exactly 0 on rows that see no key.

    Raises:
        NoBound: a row's ``rho`` exceeds ``LSE_RHO_MAX`` = 2, where no lse bound is proved (at
            ``default_steps`` that is from about 2e5 keys with ``A = max_j scale * sum_d
            |q_d k_jd|`` up to 20; a kernel's counted ``steps`` keep ``rho`` far lower); dot
            products that may overflow (with ``scale``); or see ``weight_perturbation``.
        TypeError, ValueError: an argument outside its contract, naming it: ``ref_lse`` not
            finite on a row that sees a key (rows that see none, whose lse is ``-inf``, are
            not read); ``scale`` that is not finite and positive; shapes that do not
            broadcast; and see ``weight_perturbation``.
    """
    n, a = _rows(num_keys, score_abs, head_dim, prec)
    seen = np.broadcast_to(n > 0, np.broadcast_shapes(n.shape, a.shape))
    ref = _per_row("ref_lse", ref_lse, seen, "finite values", np.isfinite)
    scale = _scale(scale, n)
    rho = _rho(n, a, head_dim, prec, steps)
    over = rho > LSE_RHO_MAX
    if np.any(over):
        i = int(np.argmax(over))  # the first such row, in the rows' (broadcast) order

        def at(x) -> float:
            return float(np.broadcast_to(x, rho.shape).flat[i])

        counted = _counted(steps, n)
        row_n, row_a = at(n), at(a)
        raise NoBound(
            f"num_keys, steps: expected rho <= {LSE_RHO_MAX:g} for the lse bound (it is proved only there), got "
            f"rho = {at(rho):.4g} on a row of num_keys = {row_n:g}, score_abs = {row_a:g}, steps = "
            f"{at(counted):g}{' (default_steps)' if steps is None else ''}; "
            f"{_remedy(row_n, row_a, head_dim, prec, LSE_RHO_MAX, steps is not None)}"
        )
    dots = _dot_products(a, n, head_dim, prec, scale)
    if np.any(dots > prec.largest_acc):
        raise NoBound(f"score_abs, scale: expected (1 + gamma_D) A / scale <= {prec.largest_acc:.8g}, the largest finite "
                      f"{ACCUMULATION.get(prec.dtype, 'the accumulation format')} (the dot products q . k must not "
                      f"overflow), got up to {float(np.max(dots)):.8g}")
    finite_ref = np.where(n > 0, np.abs(ref), 0.0)  # -inf (or anything) on rows that see no key
    return np.where(n > 0, rho + 3 * prec.u_acc * (finite_ref + 1), 0.0)
