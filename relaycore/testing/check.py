"""Compare any implementation's ``(out, lse)`` with the oracle, under ``relaycore.bounds``.

The tolerance of every element is the a-priori error bound of the precision policy for the
batch's dtype (``relaycore.bounds.out_bound``/``lse_bound``), evaluated on the oracle's value
and the row's context statistics; nothing is hand-picked. A row that sees no key has bound 0:
it must be exactly ``(0, -inf)``. Any NaN fails, and so do result dtypes outside the contract
(``out`` in q's dtype, ``lse`` float32, float64 for float64 q).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Optional, Tuple

import numpy as np

from relaycore import bounds
from relaycore.buffers import lse_dtype
from relaycore.constants import LOG2E
from relaycore.testing.batch import Batch
from relaycore.testing.rounding import DTYPES
from relaycore.validation import array_kind, dtype_name


class Tolerance(NamedTuple):
    """Elementwise error bounds for a batch's result.

    Attributes:
        out: float64 ``[total_q, Hq, D]``.
        lse: float64 ``[total_q, Hq]`` (natural log).
    """

    out: np.ndarray
    lse: np.ndarray


def bounds_for(batch: Batch, dtype: Optional[str] = None, *, steps=None) -> Tolerance:
    """The error bounds of ``relaycore.bounds`` for the batch's oracle result.

    Args:
        batch: the problem.
        dtype: the precision policy; default the batch's ``dtype``.
        steps: rescale/merge steps per key (see ``relaycore.bounds``): a number, or an array
            of 2 axes that broadcasts to the rows ``[total_q, Hq]`` (``blocked_steps`` gives a
            column ``[total_q, 1]``), at least 1; default: any blocking.

    Returns:
        ``Tolerance``; 0 on rows that see no key.

    Raises:
        ValueError: the bound does not exist for this batch (scores far too large for the
            precision: ``relaycore.bounds.out_bound`` needs ``N tau exp(rho) < 1``, and the
            lse bound is proved for ``rho <= 2``: ``relaycore.bounds.lse_bound``), or
            ``steps`` that is not a count per row (``relaycore.bounds.weight_perturbation``).
        TypeError: ``batch`` is not a ``Batch``.
    """
    if not isinstance(batch, Batch):
        raise TypeError(f"batch: expected a relaycore.testing.Batch, got {type(batch).__name__}")
    oracle = batch.oracle()
    prec = bounds.precision(batch.dtype if dtype is None else dtype)
    stats, ref = oracle.stats, oracle.state
    try:
        out = bounds.out_bound(ref.out, stats.value_abs, stats.num_keys, stats.score_abs, batch.head_dim, prec, steps)
        lse = bounds.lse_bound(ref.lse, stats.num_keys, stats.score_abs, batch.head_dim, prec, steps)
    except bounds.NoBound as exc:
        raise ValueError(
            f"batch: expected scores small enough for the {prec.dtype} error bound to exist, got a batch where "
            f"it does not ({exc}); draw a smaller score magnitude or pass the implementation's steps"
        ) from exc
    return Tolerance(out, lse)


@dataclass(frozen=True)
class Location:
    """Where the worst error (in units of the bound) of ``out`` or ``lse`` sits.

    Attributes:
        row: the query row in ``[0, total_q)``.
        request: the request it belongs to.
        token: its index among the request's query tokens.
        head: the query head.
        dim: the head dimension (``None`` for lse).
        got: the implementation's value.
        expected: the oracle's value.
        error: ``|got - expected|`` (inf or NaN where they are).
        bound: the bound at that element.
        ratio: ``error / bound`` (inf where the bound is 0 and the error is not).
    """

    row: int
    request: int
    token: int
    head: int
    dim: Optional[int]
    got: float
    expected: float
    error: float
    bound: float
    ratio: float

    def __str__(self) -> str:
        dim = "" if self.dim is None else f", dim {self.dim}"
        return (
            f"request {self.request}, token {self.token} (row {self.row}), head {self.head}{dim}: "
            f"got {self.got!r}, reference {self.expected!r}, error {self.error:.3g}, bound {self.bound:.3g} "
            f"({self.ratio:.3g} of the bound)"
        )


@dataclass(frozen=True)
class Report:
    """The outcome of ``check``.

    Attributes:
        passed: every element within its bound, no NaN, shapes right.
        out_ratio: worst ``|out - ref| / bound`` (0 for an empty batch; inf for a NaN or an
            error where the bound is 0).
        lse_ratio: the same for ``lse``.
        out_worst: where ``out_ratio`` is reached (``None`` for an empty batch).
        lse_worst: where ``lse_ratio`` is reached.
        problems: structural failures (shape, dtype, NaN counts), one sentence each.
        description: ``batch.describe()``.
        hints: likely causes read off a failing result (an lse in base 2), one sentence each.
    """

    passed: bool
    out_ratio: float
    lse_ratio: float
    out_worst: Optional[Location]
    lse_worst: Optional[Location]
    problems: Tuple[str, ...]
    description: str
    hints: Tuple[str, ...] = ()

    def __str__(self) -> str:
        errors = f"worst error {self.out_ratio:.3g} of the bound in out, {self.lse_ratio:.3g} in lse"
        if self.passed:
            lines = [f"PASS: {errors}"]
        elif self.problems:  # the reason first: the errors may be within the bounds
            others = len(self.problems) - 1
            more = f" (and {others} more problem{'s' if others > 1 else ''} below)" if others else ""
            lines = [f"FAIL: {self.problems[0]}{more}", f"  {errors}"]
        else:
            lines = [f"FAIL: {errors}"]
        lines.extend(f"  hint: {h}" for h in self.hints)
        if self.out_worst is not None:
            lines.append(f"  worst out: {self.out_worst}")
        if self.lse_worst is not None:
            lines.append(f"  worst lse: {self.lse_worst}")
        lines.extend(f"  problem: {p}" for p in self.problems[0 if self.passed else 1:])
        lines.append(self.description)
        return "\n".join(lines)


def _host64(x: Any) -> np.ndarray:
    """float64 NumPy copy of an array or torch tensor (any device, any float dtype)."""
    if array_kind(x) == "torch":
        return x.detach().to("cpu").double().numpy()
    return np.asarray(x, dtype=np.float64)


def _ratio(error: np.ndarray, bound: np.ndarray) -> np.ndarray:
    """``error / bound`` with ``0/0 = 0``, ``x/0 = inf`` and NaN errors as inf."""
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(error == 0, 0.0, error / bound)
    return np.where(np.isnan(r), np.inf, r)


def _request_token(batch: Batch, row: int) -> Tuple[int, int]:
    """``(request, token within the request)`` of a query row."""
    request = int(np.searchsorted(batch.cu_seqlens_q, row, side="right")) - 1
    return request, row - int(batch.cu_seqlens_q[request])


def _locate(batch: Batch, index: Tuple[int, ...], got, expected, error, bound, ratio) -> Location:
    row = int(index[0])
    request, token = _request_token(batch, row)
    return Location(
        row=row,
        request=request,
        token=token,
        head=int(index[1]),
        dim=int(index[2]) if len(index) == 3 else None,
        got=float(got[index]),
        expected=float(expected[index]),
        error=float(error[index]),
        bound=float(bound[index]),
        ratio=float(ratio[index]),
    )


def _worst(batch: Batch, got, expected, bound) -> Tuple[float, Optional[Location]]:
    with np.errstate(invalid="ignore"):  # -inf - -inf: those are equal, hence exact
        error = np.where(got == expected, 0.0, np.abs(got - expected))
    ratio = _ratio(error, bound)
    if ratio.size == 0:
        return 0.0, None
    index = np.unravel_index(int(np.argmax(ratio)), ratio.shape)
    return float(ratio[index]), _locate(batch, index, got, expected, error, bound, ratio)


def _q_dtype_name(q_dtype: Any) -> str:
    """The name of a dtype given as a name in ``DTYPES`` or a torch dtype."""
    name = q_dtype if isinstance(q_dtype, str) else str(q_dtype).replace("torch.", "")
    if name not in DTYPES:
        raise ValueError(f"q_dtype: expected one of {list(DTYPES)} or the torch dtype, got {q_dtype!r}")
    return name


def _dtype_problems(out: Any, lse: Any, batch: Batch, q_dtype: Any) -> list:
    """Sentences for result dtypes outside the contract for q in ``q_dtype`` (default: see
    ``check``)."""
    if q_dtype is not None:
        q_name = _q_dtype_name(q_dtype)
    elif array_kind(out) != "torch" and dtype_name(out) == "float64":
        q_name = "float64"  # the float64 arguments of batch.arguments()
    else:
        q_name = batch.dtype
    lse_name = lse_dtype(q_name)
    problems = []
    if dtype_name(out) != q_name:
        problems.append(f"out: expected dtype {q_name} (q's dtype), got {dtype_name(out)}")
    if dtype_name(lse) != lse_name:
        problems.append(f"lse: expected dtype {lse_name} (for {q_name} q), got {dtype_name(lse)}")
    return problems


def _kind_of(result: Any) -> str:
    """What ``result`` is, in a few words, for the refusal of a result that is not a pair."""
    if hasattr(result, "shape"):
        return f"one {type(result).__name__} of shape {tuple(result.shape)}"
    if isinstance(result, (tuple, list)):
        return f"a {type(result).__name__} of {len(result)}: " + ", ".join(type(x).__name__ for x in result[:4])
    return type(result).__name__


def check(result: Any, batch: Batch, *, q_dtype: Any = None, steps=None) -> Report:
    """Compare an implementation's result with the oracle under the bounds of ``batch.dtype``.

    Args:
        result: ``(out [total_q, Hq, D], lse [total_q, Hq])``, NumPy arrays or torch tensors on
            any device; ``lse`` in natural log. The contract's dtypes: ``out`` in q's dtype,
            ``lse`` float32 (float64 when q is float64); other dtypes fail.
        batch: the problem the result answers.
        q_dtype: the dtype of the q the implementation received (a name in ``DTYPES`` or a torch
            dtype). Default: ``batch.dtype`` for torch results (what ``batch.to_torch(device)``
            hands out); for NumPy results float64 when ``out`` is float64 (the arguments of
            ``batch.arguments()``), else ``batch.dtype`` (a kernel computing in the batch's
            format). Pass it when the implementation received another dtype, such as a wider
            one from ``batch.to_torch(device, dtype)``.
        steps: rescale/merge steps per key assumed by the bound (see ``bounds_for``; default:
            any blocking).

    Returns:
        ``Report``: pass/fail, the worst errors in units of the bound and where they are.

    Raises:
        TypeError: ``result`` is not a pair of arrays or tensors; ``batch`` is not a ``Batch``.
        ValueError: ``q_dtype`` is not a float format of ``DTYPES``; the bound does not exist for
            the batch, or ``steps`` is not a count per row (see ``bounds_for``).
    """
    if not isinstance(batch, Batch):
        raise TypeError(f"batch: expected a relaycore.testing.Batch, got {type(batch).__name__}")
    if (hasattr(result, "shape") or isinstance(result, (str, bytes, dict)) or not hasattr(result, "__len__")
            or len(result) != 2 or not all(hasattr(x, "shape") for x in result)):
        raise TypeError(f"result: expected a pair (out, lse) of arrays or tensors, got {_kind_of(result)}")
    out, lse = result
    ref = batch.oracle().state
    problems = []
    shapes = {"out": (tuple(out.shape), ref.out.shape), "lse": (tuple(lse.shape), ref.lse.shape)}
    for name, (got_shape, want_shape) in shapes.items():
        if got_shape != want_shape:
            transposed = " (its transpose: relaycore's lse is [total_q, Hq])" if (
                name == "lse" and got_shape == want_shape[::-1]) else ""
            problems.append(f"{name}: expected shape {want_shape}, got {got_shape}{transposed}")
    if problems:
        return Report(False, np.inf, np.inf, None, None, tuple(problems), batch.describe())
    problems = _dtype_problems(out, lse, batch, q_dtype)
    out, lse = _host64(out), _host64(lse)
    tol = bounds_for(batch, steps=steps)
    out_ratio, out_worst = _worst(batch, out, ref.out, tol.out)
    lse_ratio, lse_worst = _worst(batch, lse, ref.lse, tol.lse)
    for name, x in (("out", out), ("lse", lse)):
        nan = np.isnan(x)
        if nan.any():
            first = np.unravel_index(int(np.argmax(nan)), nan.shape)
            request, token = _request_token(batch, int(first[0]))
            problems.append(f"{name}: {int(nan.sum())} NaN, the first at request {request}, token {token}, head {int(first[1])}")
    passed = not problems and out_ratio <= 1.0 and lse_ratio <= 1.0
    hints = () if lse_ratio <= 1.0 else _lse_hints(lse, ref.lse)
    return Report(passed, out_ratio, lse_ratio, out_worst, lse_worst, tuple(problems), batch.describe(), hints)


#: Rows whose reference lse is at least this far from 0 tell a change of base (a ratio) from an
#: offset; ``_lse_hints`` needs two of them, with distinct values.
HINT_MIN_ABS_LSE = 0.5


def _lse_hints(lse: np.ndarray, ref_lse: np.ndarray) -> Tuple[str, ...]:
    """A sentence when a failing lse is the reference's times ``log2 e`` (an lse in base 2) or
    times ``ln 2``, row by row: the usual reason an lse is off everywhere. Only rows far from 0
    count, and at least two of different values, so that a constant offset (a key counted
    twice adds ``ln 2``) is not mistaken for a change of base."""
    rows = np.isfinite(ref_lse) & np.isfinite(lse) & (np.abs(ref_lse) >= HINT_MIN_ABS_LSE)
    ref, got = ref_lse[rows], lse[rows]
    if ref.size < 2 or np.ptp(ref) < 0.1 * np.abs(ref).max():
        return ()
    for factor, form in ((LOG2E, "in base 2 (log2 of the sum of exp)"), (1 / LOG2E, "in base 2 read as natural log")):
        if np.allclose(got / ref, factor, rtol=1e-3, atol=0):
            return (f"lse looks to be {form}: relaycore's lse is natural log; convert with ln 2 = {1 / LOG2E:.6f}",)
    return ()


def assert_close(result: Any, batch: Batch, *, q_dtype: Any = None, steps=None) -> Report:
    """``check``, raising ``AssertionError`` with the report when it fails.

    Example:
        >>> import relaycore
        >>> from relaycore.testing import assert_close, make_batch
        >>> batch = make_batch([2, 1], [5, 1], prefix_lens=[[3]], prefix_ids=[[0, -1]])
        >>> args, kwargs = batch.arguments()
        >>> assert_close(relaycore.relay_attention(*args, **kwargs), batch).passed
        True
    """
    report = check(result, batch, q_dtype=q_dtype, steps=steps)
    if not report.passed:
        raise AssertionError(str(report))
    return report


def compare(fn: Callable[..., Any], batch: Batch, *, device: Any = None, steps=None) -> Report:
    """Run ``fn(*args, **kwargs)`` on the batch and ``check`` its result.

    Args:
        fn: any function with ``relaycore.relay_attention``'s signature returning ``(out, lse)``.
        batch: the problem.
        device: ``None`` passes NumPy float64 arrays (``batch.arguments()``; the result may be in
            float64 or in the batch's dtype, see ``check``); a torch device passes tensors in
            the batch's dtype there (``batch.to_torch(device)``; the result must be in the
            contract's dtypes for q in the batch's dtype).
        steps: see ``check``.
    """
    if device is None:
        args, kwargs = batch.arguments()
        return check(fn(*args, **kwargs), batch, steps=steps)
    args, kwargs = batch.to_torch(device)
    return check(fn(*args, **kwargs), batch, q_dtype=batch.dtype, steps=steps)
