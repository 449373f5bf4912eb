"""Compare any implementation's ``(out, lse)`` with the oracle, under ``relaycore.bounds``.

The tolerance of every element is the a-priori error bound of the precision policy for the
batch's dtype (``relaycore.bounds.out_bound``/``lse_bound``), evaluated on the oracle's value
and the row's context statistics; nothing is hand-picked. A row that sees no key has bound 0:
it must be exactly ``(0, -inf)``. Any NaN fails, and so do result dtypes outside the contract
(``out`` in q's dtype, ``lse`` float32, float64 for float64 q). A row for which the analysis
gives no bound (scores too large for the precision) is held to none, and the report says so
(``Report.unchecked``): it is neither failed nor passed in silence. ``compare`` also fails an
implementation that writes into its inputs.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, List, NamedTuple, Optional, Tuple

import numpy as np

from relaycore import bounds
from relaycore.buffers import lse_dtype
from relaycore.constants import LOG2E
from relaycore.testing.batch import Batch, host64
from relaycore.testing.rounding import DTYPES
from relaycore.validation import array_kind, check_dense, device_name, dtype_name, resolve_scale


class Tolerance(NamedTuple):
    """Elementwise error bounds for a batch's result.

    Attributes:
        out: float64 ``[total_q, Hq, D]``.
        lse: float64 ``[total_q, Hq]`` (natural log).
    """

    out: np.ndarray
    lse: np.ndarray


def bounds_for(batch: Batch, dtype: Optional[str] = None, *, steps=None, stored=None,
               stored_merge: str = "pairwise") -> Tolerance:
    """The error bounds of ``relaycore.bounds`` for the batch's oracle result.

    Args:
        batch: the problem.
        dtype: the precision policy; default the batch's ``dtype``.
        steps: rescale/merge steps per key (see ``relaycore.bounds``): a number, or an array
            of 2 axes that broadcasts to the rows ``[total_q, Hq]`` (``blocked_steps`` gives a
            column ``[total_q, 1]``), at least 1; default: any blocking.
        stored: for a kernel that stores partial outputs in the input dtype and merges them
            pairwise afterwards (a cascade that runs each level into an output tensor, as
            FlashInfer's ``MultiLevelCascadeAttentionWrapper``): the most such merges a key
            passes, shaped as ``steps`` (``relaycore.bounds``, Lemma 8 of
            ``proofs/error_bound.py``); widens the out bound only. Default 0: states merged
            in fp32. For running folds of stored outputs (``stored_merge="running"``), the
            folds a key passes (``stored_merges(batch, merge="running", levels=...)``).
        stored_merge: ``"pairwise"`` (default; Lemma 8) or ``"running"``: running folds in
            FlashInfer's order over stored outputs, one or a tree of them (Lemma 10), or pairwise
            merges that divide within 2 ulp (``stored_merges(batch)``; Lemma 8's last part), as
            ``relaycore.bounds.out_bound`` takes it.

    Returns:
        ``Tolerance``; 0 on rows that see no key.

    Raises:
        relaycore.bounds.NoBound: (a ``ValueError``) the bound does not exist on some row: its
            scores are too large for the precision (``relaycore.bounds.out_bound`` needs
            ``N tau exp(rho) < 1``), or its ``rho`` passes 2, where no lse bound is proved
            (``relaycore.bounds.lse_bound``); the message says which rows, why, and whether
            the kernel's counted ``steps`` would give one. ``check`` checks the other rows.
        ValueError: ``steps`` or ``stored`` that is not a count per row
            (``relaycore.bounds.weight_perturbation``); ``stored_merge`` not one of
            ``relaycore.bounds.STORED_MERGES``.
        TypeError: ``batch`` is not a ``Batch``.
    """
    if not isinstance(batch, Batch):
        raise TypeError(f"batch: expected a relaycore.testing.Batch, got {type(batch).__name__}")
    tol, unchecked = _bounds(batch, dtype, steps, stored, stored_merge)
    if unchecked:
        raise bounds.NoBound(f"batch: expected an error bound on every row, got rows without one: "
                             f"{'; '.join(unchecked)}")
    return tol


def _bounds(batch: Batch, dtype: Optional[str], steps, stored=None,
            stored_merge: str = "pairwise") -> Tuple[Tolerance, Tuple[str, ...]]:
    """The bounds of ``bounds_for``, ``inf`` on the rows where ``relaycore.bounds`` gives none,
    and a sentence for ``out`` and for ``lse`` where some row has none.

    Which rows have a bound is ``relaycore.bounds``' own answer: the rows it names as refused
    (``out_bound_refused``; for the lse, ``rho > LSE_RHO_MAX``) are set aside in one call, and
    its functions run on the others, split in halves wherever they still raise ``NoBound``
    (a refusal those do not name, such as the lse's dot products), down to the rows that have
    none.

    Raises:
        TypeError, ValueError: ``steps`` or ``stored`` that is not a count per row.
        relaycore.bounds.NoBound: a row of ``2^23`` keys or more (its sums have no bound).
    """
    oracle = batch.oracle()
    prec = bounds.precision(batch.dtype if dtype is None else dtype)
    stats, ref = oracle.stats, oracle.state
    n, a, d = stats.num_keys.ravel(), stats.score_abs.ravel(), batch.head_dim
    scale = resolve_scale(batch.softmax_scale, d)  # the scores' dot products are checked for overflow
    rows = stats.num_keys.shape
    rho = {  # checks ``steps`` and ``stored``; only the out bound carries the stored merges (Lemma 8)
        "out": bounds.weight_perturbation(stats.num_keys, stats.score_abs, d, prec, steps, stored=stored).ravel(),
        "lse": bounds.weight_perturbation(stats.num_keys, stats.score_abs, d, prec, steps).ravel(),
    }
    counted = np.broadcast_to(bounds.default_steps(stats.num_keys) if steps is None
                              else np.asarray(steps, dtype=np.float64), rows).ravel()
    merges = np.broadcast_to(np.asarray(0.0 if stored is None else stored, dtype=np.float64), rows).ravel()
    flat_out, flat_value = ref.out.reshape(n.size, d), stats.value_abs.reshape(n.size, d)
    flat_lse = ref.lse.ravel()
    refused = {  # the rows relaycore.bounds names as refused: no need to ask them one by one
        "out": (n > 0) & np.broadcast_to(bounds.out_bound_refused(stats.value_abs, stats.num_keys, stats.score_abs, d,
                                                                  prec, steps, scale=scale, stored=stored,
                                                                  stored_merge=stored_merge),
                                         rows).ravel(),
        "lse": (n > 0) & (rho["lse"] > bounds.LSE_RHO_MAX),
    }
    parts = {
        "out": lambda i, s: bounds.out_bound(flat_out[i], flat_value[i], n[i], a[i], d, prec, s, scale=scale,
                                             stored=merges[i], stored_merge=stored_merge),
        "lse": lambda i, s: bounds.lse_bound(flat_lse[i], n[i], a[i], d, prec, s, scale=scale),
    }
    tolerance, unchecked = {}, []
    for name, bound in parts.items():
        values = np.full((n.size,) + ((d,) if name == "out" else ()), np.inf)
        missing: List[int] = np.flatnonzero(refused[name]).tolist()
        asked = np.flatnonzero(~refused[name])
        for index, part in _bounded(lambda i: bound(i, None if steps is None else counted[i]), asked, missing):
            values[index] = part
        tolerance[name] = values.reshape(rows + values.shape[1:])
        if missing:
            worst = max(missing, key=lambda i: rho[name][i])
            unchecked.append(_no_bound(batch, name, len(missing), worst, lambda s, w=worst, f=bound: f([w], s),
                                       rho[name], counted, steps is None, prec,
                                       float(merges[worst]) if name == "out" else 0.0))
    return Tolerance(tolerance["out"], tolerance["lse"]), tuple(unchecked)


def _bounded(bound: Callable[[np.ndarray], np.ndarray], index: np.ndarray,
             missing: List[int]) -> List[Tuple[np.ndarray, np.ndarray]]:
    """``bound`` of the flat rows ``index``, as ``(rows, values)`` pieces: on all of them at once,
    else on each half, and so on; a single row it raises ``NoBound`` for goes to ``missing``."""
    try:
        return [(index, bound(index))]
    except bounds.NoBound:
        if index.size == 1:
            missing.append(int(index[0]))
            return []
        half = index.size // 2
        return _bounded(bound, index[:half], missing) + _bounded(bound, index[half:], missing)


def _no_bound(batch: Batch, name: str, count: int, row: int, bound: Callable[[float], Any], rho: np.ndarray,
              counted: np.ndarray, default: bool, prec: bounds.Precision, stored: float) -> str:
    """A sentence for the ``count`` rows where ``name``'s bound does not exist: why, on the one
    of them with the largest ``rho`` (flat index ``row``), and what would give one there. For
    that row ``bound(steps)`` raises ``NoBound`` where no bound exists at ``steps`` per key:
    where fewer steps give one, the kernel's counted steps would help, and the sentence says up
    to how many; else no count would (only smaller scores or shorter rows, where ``rho`` at 1
    step, with the row's ``stored`` merges, is past the limit)."""
    stats = batch.oracle().stats
    token_row, head = divmod(row, batch.num_q_heads)
    request, token = _request_token(batch, token_row)
    n, a, r = float(stats.num_keys.flat[row]), float(stats.score_abs.flat[row]), float(rho[row])
    limit = -math.log(n * prec.tau) if name == "out" else bounds.LSE_RHO_MAX

    def refusal(steps: float) -> Optional[str]:
        """Why ``relaycore.bounds`` gives that row no bound at ``steps`` (``None``: it gives one)."""
        try:
            bound(steps)
        except bounds.NoBound as exc:
            return str(exc)
        return None

    if r >= limit:
        why = "it needs N tau exp(rho) < 1" if name == "out" else f"it is proved for rho <= {bounds.LSE_RHO_MAX:g} only"
        past = f", rho = {r:.3g} > {limit:.3g}"
    else:  # another of relaycore.bounds' conditions: in its words
        why, past = f"relaycore.bounds: {refusal(float(counted[row]))}", f", rho = {r:.3g}"
    one, at_one = float(bounds.weight_perturbation(n, a, batch.head_dim, prec, 1, stored=stored)), refusal(1.0)
    if at_one is not None and one >= limit:
        remedy = (f"no count of steps gives one (rho = {one:.3g} at 1 step per key, "
                  f"{float(bounds.gamma(batch.head_dim + 6, prec.u_acc)) * a:.3g} of it from the scores alone): "
                  f"smaller scores or shorter rows would")
    elif at_one is not None:
        remedy = f"no count of steps gives one (at 1 step per key, relaycore.bounds: {at_one})"
    else:
        low, high = 1, int(counted[row])  # a bound at low steps per key, none at high
        while high - low > 1:
            mid = (low + high) // 2
            low, high = (mid, high) if refusal(float(mid)) is None else (low, mid)
        fewer = "the kernel's counted steps (steps=, blocked_steps)" if default else "fewer steps per key"
        remedy = f"{fewer} would: on that row a bound exists up to {low} steps per key"
    return (f"{name}: no {prec.dtype} error bound on {count} of {rho.size} (query row, head) pairs ({why}); the "
            f"worst: request {request}, token {token}, head {head}: N = {n:g} keys, A = {a:.3g}, "
            f"{float(counted[row]):g} steps per key{' (default_steps)' if default else ''}{past}; {remedy}")


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
    """The outcome of ``check`` (and ``compare``). It has no truth value (``bool(report)``
    raises ``TypeError``): test ``report.passed``, and show ``str(report)``, the readable report.

    Attributes:
        passed: every element that has a bound within it, no NaN, shapes and dtypes right (and,
            from ``compare``, the inputs unchanged).
        out_ratio: worst ``|out - ref| / bound`` (0 for an empty batch; inf for a NaN or an
            error where the bound is 0).
        lse_ratio: the same for ``lse``.
        out_worst: where ``out_ratio`` is reached (``None`` for an empty batch).
        lse_worst: where ``lse_ratio`` is reached.
        problems: structural failures (shape, dtype, NaN counts, inputs written), one sentence
            each.
        description: ``batch.describe()``.
        hints: likely causes read off a failing result (an lse in base 2; NaN only in requests
            that read an empty segment; NaN where a paged batch planted them; ``(lse, out)`` for
            ``(out, lse)``), one sentence each.
        unchecked: for ``out`` and for ``lse``, a sentence where some rows have no error bound
            (``relaycore.bounds`` gives none: scores too large for the precision, or, for the
            lse, a ``rho`` past 2), so that only NaN and infinities are caught there: which
            rows, why, and what would give a bound. Empty when every row was checked; a
            ``passed`` report with rows unchecked is a pass of the other rows only.
    """

    passed: bool
    out_ratio: float
    lse_ratio: float
    out_worst: Optional[Location]
    lse_worst: Optional[Location]
    problems: Tuple[str, ...]
    description: str
    hints: Tuple[str, ...] = ()
    unchecked: Tuple[str, ...] = ()

    def __bool__(self) -> bool:
        """Refused (``TypeError``), as NumPy refuses an array's: ``assert report`` would pass a failed check."""
        raise TypeError("a Report has no truth value (`assert report` would pass a failed check): use report.passed, "
                        "as in `assert report.passed, str(report)`, or relaycore.testing.assert_close")

    def __str__(self) -> str:
        errors = f"worst error {self.out_ratio:.3g} of the bound in out, {self.lse_ratio:.3g} in lse"
        if self.passed:
            lines = [f"PASS{' where a bound exists' if self.unchecked else ''}: {errors}"]
        elif self.problems:  # the reason first: the errors may be within the bounds
            others = len(self.problems) - 1
            more = f" (and {others} more problem{'s' if others > 1 else ''} below)" if others else ""
            lines = [f"FAIL: {self.problems[0]}{more}", f"  {errors}"]
        else:
            lines = [f"FAIL: {errors}"]
        lines.extend(f"  unchecked: {u}" for u in self.unchecked)
        lines.extend(f"  hint: {h}" for h in self.hints)
        if self.out_worst is not None:
            lines.append(f"  worst out: {self.out_worst}")
        if self.lse_worst is not None:
            lines.append(f"  worst lse: {self.lse_worst}")
        lines.extend(f"  problem: {p}" for p in self.problems[0 if self.passed else 1:])
        lines.append(self.description)
        return "\n".join(lines)


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


def _is_pair(result: Any) -> bool:
    """Whether ``result`` is a pair of arrays or tensors (an ``(out, lse)``)."""
    return not (hasattr(result, "shape") or isinstance(result, (str, bytes, dict)) or not hasattr(result, "__len__")
                or len(result) != 2 or not all(hasattr(x, "shape") for x in result))


def _kind_of(result: Any) -> str:
    """What ``result`` is, in a few words, for the refusal of a result that is not a pair."""
    if hasattr(result, "shape"):
        return f"one {type(result).__name__} of shape {tuple(result.shape)}"
    if isinstance(result, (tuple, list)):
        return f"a {type(result).__name__} of {len(result)}: " + ", ".join(type(x).__name__ for x in result[:4])
    return type(result).__name__


def _result_pair(result: Any) -> Tuple[Any, Any]:
    """``(out, lse)`` of a result ``check`` can read, else its refusal (what ``check`` refuses of
    the result itself, before any comparison; ``relaycore verify`` counts it as a failing case).

    Raises:
        TypeError: ``result`` is not a pair of arrays or tensors; ``out`` or ``lse`` is not
            dense (``relaycore.validation.check_dense``).
        ValueError: ``out`` or ``lse`` is a tensor on the meta device.
    """
    if not _is_pair(result):
        raise TypeError(f"result: expected a pair (out, lse) of arrays or tensors, got {_kind_of(result)}")
    out, lse = result
    for name, x in (("out", out), ("lse", lse)):
        check_dense(name, x)
        if array_kind(x) == "torch" and device_name(x) == "meta":
            raise ValueError(f"{name}: expected a tensor that holds values, got a tensor on the meta device")
    return out, lse


def check(result: Any, batch: Batch, *, q_dtype: Any = None, steps=None, stored=None,
          stored_merge: str = "pairwise") -> Report:
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
        stored: merges of outputs stored in the input dtype (see ``bounds_for``; default 0).
        stored_merge: how they merge, ``"pairwise"`` or ``"running"`` (see ``bounds_for``).

    Returns:
        ``Report``: pass/fail, the worst errors in units of the bound and where they are. Rows
        where the bound does not exist are not held to one; ``Report.unchecked`` says which and
        why (NaN and infinities fail there too).

    Raises:
        TypeError: ``result`` is not a pair of arrays or tensors; ``out`` or ``lse`` is not
            dense (a sparse tensor, a NumPy masked array or ``np.matrix``:
            ``relaycore.validation.check_dense``); ``batch`` is not a ``Batch``.
        ValueError: ``out`` or ``lse`` is a tensor on the meta device (it holds no values);
            ``q_dtype`` is not a float format of ``DTYPES``; ``steps`` or ``stored`` is not a
            count per row (see ``bounds_for``).
    """
    if not isinstance(batch, Batch):
        raise TypeError(f"batch: expected a relaycore.testing.Batch, got {type(batch).__name__}")
    out, lse = _result_pair(result)
    ref = batch.oracle().state
    problems = []
    shapes = {"out": (tuple(out.shape), ref.out.shape), "lse": (tuple(lse.shape), ref.lse.shape)}
    for name, (got_shape, want_shape) in shapes.items():
        if got_shape != want_shape:
            transposed = " (its transpose: relaycore's lse is [total_q, Hq])" if (
                name == "lse" and got_shape == want_shape[::-1]) else ""
            problems.append(f"{name}: expected shape {want_shape}, got {got_shape}{transposed}")
    if problems:
        swapped = (shapes["out"][0] == ref.lse.shape and shapes["lse"][0] == ref.out.shape)
        return Report(False, np.inf, np.inf, None, None, tuple(problems), batch.describe(),
                      (SWAPPED_HINT,) if swapped else ())
    problems = _dtype_problems(out, lse, batch, q_dtype)
    out, lse = host64(out), host64(lse)
    tol, unchecked = _bounds(batch, None, steps, stored, stored_merge)
    out_ratio, out_worst = _worst(batch, out, ref.out, tol.out)
    lse_ratio, lse_worst = _worst(batch, lse, ref.lse, tol.lse)
    hints = () if lse_ratio <= 1.0 else _lse_hints(lse, ref.lse, tol.lse)
    nan_rows = set()
    for name, x in (("out", out), ("lse", lse)):
        nan = np.isnan(x)
        if nan.any():
            first = np.unravel_index(int(np.argmax(nan)), nan.shape)
            request, token = _request_token(batch, int(first[0]))
            problems.append(f"{name}: {int(nan.sum())} NaN, the first at request {request}, token {token}, head {int(first[1])}")
            nan_rows.update(np.nonzero(nan.reshape(nan.shape[0], -1).any(axis=1))[0].tolist())
    if nan_rows:
        hints += _empty_segment_hint(batch, nan_rows)
        if batch.paged:
            hints += (PLANTED_NAN_HINT,)
    passed = not problems and out_ratio <= 1.0 and lse_ratio <= 1.0
    return Report(passed, out_ratio, lse_ratio, out_worst, lse_worst, tuple(problems), batch.describe(), hints,
                  unchecked)


#: The hint of a paged batch's result with NaN: ``make_batch`` fills every slot of the cache that
#: no request reads with NaN, so that what a kernel reads past ``kv_len`` cannot hide.
PLANTED_NAN_HINT = ("this batch is paged, and its unused cache slots hold NaN on purpose (make_batch plants them, as "
                    "an engine's free pages may hold anything): whatever the kernel reads past a request's kv_len "
                    "must not reach the result, even multiplied by 0")

#: The hint of a result whose shapes are the contract's in the other order.
SWAPPED_HINT = "the result looks like (lse, out): relaycore's result is (out, lse), out first"


def _empty_segment_hint(batch: Batch, nan_rows) -> Tuple[str, ...]:
    """A sentence when every query row with NaN belongs to a request that reads an empty segment
    (a level it reads no prefix of, id -1, or a prefix of length 0): the usual NaN of a split
    kernel, a softmax over no key (0 / 0) where the empty state ``(0, -inf)`` belongs."""
    empty = {}
    for level, p in enumerate(batch.prefixes):
        lengths = np.diff(p.cu_seqlens)
        for b, pid in enumerate(p.prefix_ids.tolist()):
            if pid < 0 or lengths[pid] == 0:
                empty.setdefault(b, f"level {level} " + ("id -1" if pid < 0 else f"prefix {pid} of length 0"))
    requests = sorted({_request_token(batch, row)[0] for row in nan_rows})
    if not requests or any(b not in empty for b in requests):
        return ()
    shown = "; ".join(f"request {b}: {empty[b]}" for b in requests[:3]) + ("; ..." if len(requests) > 3 else "")
    return (f"every row with NaN is in a request that reads an empty segment ({shown}): a segment with no key is "
            f"the state (out = 0, lse = -inf), which a merge leaves unchanged; a softmax over no key gives 0/0 = NaN",)


#: How closely ``got / ref`` must match the factor of a change of base on every row where the
#: rows alone cannot tell it from a constant offset (one row, or rows of about equal lse). An
#: lse in the other base, computed in fp32, matches it to a few fp32 roundings (2^-24 each) and
#: the kernel's error: within 2e-7 for the torch backend on one row, on rows of 2000 keys and
#: on scores of standard deviation 100 (``tests/test_testing_kit.py``). An offset ``c`` matches
#: it so closely only where ``ref`` lies within about ``3e-6 |ref|`` of ``c / (factor - 1)``.
HINT_RATIO_RTOL = 1e-6


def _lse_hints(lse: np.ndarray, ref_lse: np.ndarray, bound: np.ndarray) -> Tuple[str, ...]:
    """A sentence when a failing lse is the reference's times ``log2 e`` (an lse in base 2) or
    times ``ln 2``: the usual reason an lse is off everywhere.

    It needs, on every row where both lses are finite and a bound exists, the lse read in the
    other base (``lse / factor``) within the row's bound (the result, converted, would pass),
    some row failing as it is, and a constant offset (a key counted twice adds ``ln 2``) ruled
    out: either no single offset puts every row within its bound, or, where one does (a single
    row, rows of about equal lse), ``lse / ref`` matches the factor to ``HINT_RATIO_RTOL``."""
    rows = np.isfinite(ref_lse) & np.isfinite(lse) & np.isfinite(bound)
    ref, got, tol = ref_lse[rows], lse[rows], bound[rows]
    if not np.any(np.abs(got - ref) > tol):
        return ()
    offset = got - ref
    one_offset_fits = np.max(offset - tol) <= np.min(offset + tol)
    for factor, form in ((LOG2E, "in base 2 (log2 of the sum of exp)"), (1 / LOG2E, "in base 2 read as natural log")):
        if not np.all(np.abs(got / factor - ref) <= tol):
            continue
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio_matches = np.all(np.abs(got / (factor * ref) - 1) <= HINT_RATIO_RTOL)
        if not one_offset_fits or ratio_matches:
            return (f"lse looks to be {form}: relaycore's lse is natural log; convert with ln 2 = {1 / LOG2E:.6f}",)
    return ()


def assert_close(result: Any, batch: Batch, *, q_dtype: Any = None, steps=None, stored=None,
                 stored_merge: str = "pairwise") -> Report:
    """``check``, raising ``AssertionError`` with the report when it fails (under pytest the
    traceback ends at the caller's line: this function's frame is hidden).

    Raises:
        AssertionError: the check fails.
        relaycore.bounds.NoBound: (a ``ValueError``) the result passed on every row that has
            a bound, but some rows have none (``Report.unchecked``): this batch cannot be
            checked as a whole at this precision; the message says why and what would help
            (``check`` accepts such a partial check, and says so in its report).
        TypeError, ValueError: see ``check``.

    Example:
        >>> import relaycore
        >>> from relaycore.testing import assert_close, make_batch
        >>> batch = make_batch([2, 1], [5, 1], prefix_lens=[[3]], prefix_ids=[[0, -1]])
        >>> args, kwargs = batch.arguments()
        >>> assert_close(relaycore.relay_attention(*args, **kwargs), batch).passed
        True
    """
    __tracebackhide__ = True  # pytest shows the caller's line, not this one
    report = check(result, batch, q_dtype=q_dtype, steps=steps, stored=stored, stored_merge=stored_merge)
    if not report.passed:
        raise AssertionError(str(report))
    if report.unchecked:
        raise bounds.NoBound(f"batch: expected an error bound on every row, got rows without one (the rest passed):\n"
                             f"{report}")
    return report


def compare(fn: Callable[..., Any], batch: Batch, *, device: Any = None, steps=None, stored=None,
            host_metadata: bool = False, stored_merge: str = "pairwise") -> Report:
    """Run ``fn(*args, **kwargs)`` on the batch and ``check`` its result and its inputs.

    ``fn`` receives fresh copies of the batch's arrays, so the oracle never sees what it does
    to them; an ``fn`` that writes into any of its inputs fails, the report naming the argument
    (``kv.v``, ``prefixes[0].k``, ...): attention must leave its inputs as they were.

    Args:
        fn: any function with ``relaycore.relay_attention``'s signature returning ``(out, lse)``.
        batch: the problem.
        device: ``None`` passes NumPy float64 arrays (``batch.arguments()``); the result, NumPy
            arrays or torch tensors, may then be in float64 (``out`` float64, ``lse`` float64) or
            in the batch's dtype (``out`` in it, ``lse`` float32; float64 for float64 batches). A
            torch device passes tensors in the batch's dtype there (``batch.to_torch(device)``;
            the result must be in the contract's dtypes for q in the batch's dtype).
        steps, stored, stored_merge: see ``check``.
        host_metadata: with a torch ``device``, pass the metadata (offsets, lengths, block
            table, prefix ids) as NumPy arrays on the host beside the tensors on ``device``
            (``batch.to_torch(device, host_metadata=True)``), for a kernel that takes its
            metadata on the host.

    Returns:
        ``Report`` (see ``check``).

    Raises:
        TypeError: ``fn`` is not callable; ``fn``'s result is not a pair; ``batch`` is not a
            ``Batch``; ``host_metadata`` is not a bool.
        ValueError: ``host_metadata`` without a ``device`` (NumPy arguments hold their metadata
            on the host already); a batch the oracle refuses (raised before ``fn`` runs); see
            ``check`` and ``Batch.to_torch``.
        Exception: whatever ``fn`` raises.
    """
    if not callable(fn):
        raise TypeError(f"fn: expected a callable with relaycore.relay_attention's signature, got {type(fn).__name__}")
    if not isinstance(batch, Batch):
        raise TypeError(f"batch: expected a relaycore.testing.Batch, got {type(batch).__name__}")
    if not isinstance(host_metadata, (bool, np.bool_)):
        raise TypeError(f"host_metadata: expected a bool, got {host_metadata!r}")
    if host_metadata and device is None:
        raise ValueError("host_metadata: expected with a torch device (device=None passes NumPy arrays, whose "
                         "metadata is on the host already), got host_metadata=True with device=None")
    batch.oracle()  # first: a batch the oracle refuses raises before fn runs, not as fn's fault
    args, kwargs = batch.arguments() if device is None else batch.to_torch(device, host_metadata=host_metadata)
    result = fn(*args, **kwargs)
    q_dtype = batch.dtype
    if device is None and _is_pair(result) and dtype_name(result[0]) == "float64":
        q_dtype = "float64"  # a result in the format of the arguments fn received
    report = check(result, batch, q_dtype=q_dtype, steps=steps, stored=stored, stored_merge=stored_merge)
    written = _written_inputs(args, batch)
    if not written:
        return report
    return dataclasses.replace(report, passed=False, problems=tuple(written) + report.problems)


def _named_inputs(args: Tuple[Any, ...]) -> List[Tuple[str, Any]]:
    """The arrays of ``(q, cu_seqlens_q, kv, prefixes)`` with the names a caller writes them by."""
    q, cu_seqlens_q, kv, prefixes = args
    named = [("q", q), ("cu_seqlens_q", cu_seqlens_q)]
    named.extend((f"kv.{field}", x) for field, x in zip(kv._fields, kv))
    for i, level in enumerate(prefixes):
        named.extend((f"prefixes[{i}].{field}", x) for field, x in zip(level._fields, level))
    return named


def _written_inputs(args: Tuple[Any, ...], batch: Batch) -> List[str]:
    """A sentence for each argument handed to an implementation (``args``, copies of the
    batch's arrays) that no longer equals the batch's own (NaN equal to NaN: a paged cache's
    unread slots)."""
    problems = []
    own, _ = batch._own_arguments()
    for (name, given), (_, original) in zip(_named_inputs(args), _named_inputs(own)):
        now = host64(given)
        if now.shape != original.shape:
            problems.append(f"{name}: expected unchanged by the call (attention must not write into its inputs), got "
                            f"its shape changed from {original.shape} to {now.shape}")
            continue
        with np.errstate(invalid="ignore"):
            changed = ~((now == original) | (np.isnan(now) & np.isnan(original)))
        if changed.any():
            first = np.unravel_index(int(np.argmax(changed)), changed.shape)
            problems.append(
                f"{name}: expected unchanged by the call (attention must not write into its inputs), got "
                f"{int(changed.sum())} of {changed.size} elements changed, the first at index "
                f"{tuple(int(i) for i in first)}: {float(original[first])!r} became {float(now[first])!r}")
    return problems
