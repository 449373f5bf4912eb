"""``relaycore verify``: check a backend, or any function, against the float64 oracle.

Case ``i`` of a run with ``--seed S`` is the batch ``relaycore.testing.random_batch(
np.random.default_rng(S + i), dtypes=(dtype,), **space)``, ``space`` being ``SPACES[device]``
with the ``--space`` fields (below) and ``dtype`` the case's, so every case is reproducible on
its own with ``--seed S+i --cases 1``; the report prints that command for each failure, and the
``make_batch(...)`` call that rebuilds its batch in Python (``rebuild:``). Each result is checked with
``relaycore.testing.check``: every element within the a-priori bound of ``relaycore.bounds`` for
the case's dtype, rows that see no key exactly ``(0, -inf)``, no NaN.

Inputs: for ``--dtype float16|bfloat16|float32`` the backend or function receives torch tensors
in that dtype on ``--device`` (int32 metadata); for ``--dtype float64`` it receives NumPy float64
arrays (int32 metadata), which needs no torch. Without ``--dtype`` each case's dtype is float32,
float16 or bfloat16 by its seed (``seed % 3``). A ``--function`` has ``relay_attention``'s
signature ``fn(q, cu_seqlens_q, kv, prefixes, *, causal, softmax_scale)`` and returns
``(out, lse)`` with ``lse`` in natural log; it is imported as ``module:function`` with the current
directory on the import path.

Narrower batches: ``--space FIELD=VALUE`` (repeatable) sets a field of
``relaycore.testing.BatchSpace`` over the device's defaults (``SPACES``), the value a Python
literal: ``--space "head_dims=(128,)" --space "layouts=('paged',)" --space "block_sizes=(16,)"
--space min_q_len=1 --space max_q_len=1`` draws decode batches of a paged cache with pages of 16
at D = 128. A tighter bound: ``--block-n N`` (with ``--chunk C``, ``--merge pairwise`` or
``--single-pass``) checks every case with the steps of that blocking
(``relaycore.testing.blocked_steps``) instead of the default count for any blocking.

Exit status: 0 when every case passes, 1 when one fails, 2 when the run cannot start.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import os
import shlex
import sys
import traceback
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

import relaycore
from relaycore import dispatch
from relaycore.testing import MERGES, BatchSpace, blocked_steps, check, random_batch

#: Dtypes a case without ``--dtype`` takes, by ``seed % 3``.
CYCLE = ("float32", "float16", "bfloat16")

#: The batches drawn on each device: small on the CPU (the default run stays well under a
#: minute), longer sequences and realistic head sizes on a GPU. Scores stay of order 1 to 100:
#: at |scores| ~ 1e4 the a-priori bound of fp16/bf16/fp32 is vacuous (it allows any convex
#: combination of the values), so such cases would check nothing but the absence of NaN.
SPACES = {
    "cpu": dict(max_batch=4, max_q_len=8, max_kv_len=24, max_prefix_len=24, head_dims=(8, 16, 24, 32, 64),
                score_magnitudes=(None, None, 100.0)),
    "cuda": dict(max_batch=8, max_q_len=64, max_kv_len=300, max_prefix_len=300, head_dims=(16, 32, 64, 96, 128),
                 score_magnitudes=(None, None, 100.0)),
}

#: Full failure reports printed before the rest are only counted.
MAX_REPORTS = 3


class UsageError(Exception):
    """The run cannot start (missing torch, no CUDA, a function that does not import)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``relaycore verify``."""
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--backend", default="auto", choices=["auto", "reference", "torch", "triton"],
                      help="the backend to check (default: auto, the best available for the inputs)")
    what.add_argument("--function", metavar="MODULE:FUNCTION",
                      help="check a function with relay_attention's signature instead of a backend")
    parser.add_argument("--cases", type=int, default=200, help="number of drawn batches (default: 200)")
    parser.add_argument("--seed", type=int, default=0, help="case i uses seed SEED + i (default: 0)")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16", "float64"],
                        help="input dtype (default: float32/float16/bfloat16 by case seed); "
                             "float64 passes NumPy arrays")
    parser.add_argument("--device", choices=["cpu", "cuda"],
                        help="where torch inputs live (default: cuda when available, else cpu)")
    parser.add_argument("--space", action="append", default=[], metavar="FIELD=VALUE",
                        help="a relaycore.testing.BatchSpace field over the device's defaults, the value a Python "
                             "literal, e.g. --space \"head_dims=(128,)\" --space max_q_len=1 (repeatable)")
    parser.add_argument("--block-n", type=int, metavar="N",
                        help="check with the steps of a kernel that walks N keys a block "
                             "(relaycore.testing.blocked_steps) instead of the default count for any blocking")
    parser.add_argument("--chunk", type=int, metavar="C", help="with --block-n: segments cut into parts of C keys")
    parser.add_argument("--merge", choices=list(MERGES), default="fold",
                        help="with --block-n: how the parts' states are merged (default: fold, all at once)")
    parser.add_argument("--single-pass", action="store_true",
                        help="with --block-n: one running state over the whole context, no merge")


def _load_function(spec: str) -> Callable[..., Any]:
    module_name, sep, name = spec.partition(":")
    if not sep or not module_name or not name:
        raise UsageError(f"--function: expected MODULE:FUNCTION, got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        fn = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as exc:
        raise UsageError(f"--function: cannot load {spec!r}: {exc}") from exc
    if not callable(fn):
        raise UsageError(f"--function: {spec!r} is not callable")
    return fn


def _default_device(dtype: Optional[str]) -> str:
    if dtype == "float64":
        return "cpu"
    try:
        import torch
    except ImportError:
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


def _check_setup(args: argparse.Namespace, device: str) -> None:
    if args.cases < 1:
        raise UsageError(f"--cases: expected at least 1, got {args.cases}")
    if args.block_n is None and (args.chunk is not None or args.merge != "fold" or args.single_pass):
        raise UsageError("--chunk, --merge, --single-pass: expected with --block-n (they describe its blocking), "
                         "got them without it")
    if args.block_n is not None and args.function is None:
        raise UsageError(f"--block-n: expected with --function (a blocking you know), got it with --backend "
                         f"{args.backend}, whose blocking varies per request: its tests count it "
                         f"(relaycore.fast.triton.rounding.steps_per_token)")
    for name, value in (("--block-n", args.block_n), ("--chunk", args.chunk)):
        if value is not None and value < 1:
            raise UsageError(f"{name}: expected a positive number of keys, got {value}")
    if args.single_pass and (args.chunk is not None or args.merge != "fold"):
        raise UsageError("--single-pass: expected without --chunk and --merge (one running state has no parts to "
                         "cut or merge), got them together")
    if args.dtype == "float64":
        if args.device == "cuda":
            raise UsageError("--dtype float64 passes NumPy arrays, which live on the CPU; drop --device cuda")
        if args.backend not in ("auto", "reference") and args.function is None:
            raise UsageError(f"--dtype float64 passes NumPy arrays, which only the reference backend takes, not {args.backend!r}")
        return
    try:
        import torch
    except ImportError as exc:
        raise UsageError("torch is not installed: use --dtype float64 (NumPy inputs) or install torch") from exc
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: torch sees no CUDA device here")
    if args.function is None and args.backend == "triton":
        try:
            triton_backend = dispatch.load("triton")
        except RuntimeError as exc:
            raise UsageError(str(exc)) from exc
        if device == "cpu" and not triton_backend.interpreting():
            raise UsageError("--backend triton on the CPU runs only under Triton's interpreter: set TRITON_INTERPRET=1, "
                             "or use --device cuda on a GPU")


def _space(args: argparse.Namespace, device: str) -> dict:
    """The batches to draw: ``SPACES[device]`` (every head dim in them runs on every backend),
    then the ``--space`` fields.

    Raises:
        UsageError: a ``--space`` that is not ``FIELD=LITERAL`` of a ``BatchSpace`` field, or
            values ``BatchSpace`` refuses.
    """
    space = dict(SPACES[device])
    fields = BatchSpace.__dataclass_fields__
    for item in args.space:
        name, sep, text = item.partition("=")
        name = name.strip()
        if name == "dtypes":
            raise UsageError("--space: expected a field other than dtypes (a case's dtype is --dtype's, or its "
                             "seed's), got dtypes")
        if not sep or name not in fields:
            raise UsageError(f"--space: expected FIELD=VALUE with FIELD one of {sorted(set(fields) - {'dtypes'})}, "
                             f"got {item!r}")
        try:
            value = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError) as exc:
            raise UsageError(f"--space {name}: expected a Python literal, got {text!r}") from exc
        choices = isinstance(fields[name].default, tuple)
        bound = not choices and isinstance(value, int) and not isinstance(value, bool)
        if choices != isinstance(value, (tuple, list)) or not (choices or bound):
            want = "a tuple of choices, e.g. (128,)" if choices else "an int"
            raise UsageError(f"--space {name}: expected {want}, got {text!r}")
        space[name] = tuple(value) if choices else value
    try:
        BatchSpace(**space)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"--space: {exc}") from exc
    return space


def _steps(args: argparse.Namespace, batch) -> Optional[np.ndarray]:
    """The ``steps`` of ``--block-n`` for ``batch``, or ``None`` (the default count)."""
    if args.block_n is None:
        return None
    return blocked_steps(batch, args.block_n, split=not args.single_pass, chunk=args.chunk, merge=args.merge)


def _reproduce(args: argparse.Namespace, seed: int, dtype: str, device: str) -> str:
    what = f"--function {shlex.quote(args.function)}" if args.function else f"--backend {args.backend}"
    where = "" if dtype == "float64" else f" --device {device}"
    space = "".join(f" --space {shlex.quote(item)}" for item in args.space)
    steps = ""
    if args.block_n is not None:
        steps = f" --block-n {args.block_n}" + (f" --chunk {args.chunk}" if args.chunk is not None else "")
        steps += (" --single-pass" if args.single_pass else "") + (f" --merge {args.merge}" if args.merge != "fold" else "")
    return f"relaycore verify {what} --seed {seed} --cases 1 --dtype {dtype}{where}{space}{steps}"


def _run_case(args: argparse.Namespace, fn: Optional[Callable[..., Any]], batch, device: str) -> Tuple[Any, str]:
    """The result of one case and the name of what computed it."""
    call_args, kwargs = batch.arguments() if batch.dtype == "float64" else batch.to_torch(device)
    if fn is not None:
        return fn(*call_args, **kwargs), args.function
    chosen = relaycore.select_backend(*call_args, **kwargs, backend=args.backend).name
    return relaycore.relay_attention(*call_args, **kwargs, backend=args.backend), chosen


def main(args: argparse.Namespace) -> int:
    """Run ``relaycore verify``; returns the exit status."""
    device = args.device or _default_device(args.dtype)
    try:
        _check_setup(args, device)
        space = _space(args, device)
        fn = _load_function(args.function) if args.function else None
    except UsageError as exc:
        print(f"relaycore verify: {exc}", file=sys.stderr)
        return 2
    subject = f"function {args.function}" if fn else f"backend {args.backend}"
    dtypes = args.dtype or "/".join(CYCLE) + " by seed"
    last = args.seed + args.cases - 1
    print(f"relaycore verify: {subject}, {args.cases} cases (seeds {args.seed}..{last}), dtype {dtypes}, device {device}")
    box = BatchSpace(**space)
    print(f"  batches: B <= {box.max_batch}, q_len {box.min_q_len}..{box.max_q_len}, kv_len <= {box.max_kv_len}, "
          f"{box.max_levels} prefix levels of {box.max_prefixes} prefixes of length <= {box.max_prefix_len} at most, "
          f"D in {box.head_dims}, "
          f"|scores| up to ~{max(m or 1 for m in box.score_magnitudes):g}, {' and '.join(box.layouts)}")
    if args.block_n is not None:
        form = "one pass" if args.single_pass else (f"parts of {args.chunk} keys" if args.chunk else "a part per segment")
        print(f"  bound: the steps of blocks of {args.block_n} keys, {form}"
              + ("" if args.single_pass else f", merged {'all at once' if args.merge == 'fold' else 'pairwise'}"))

    ran_on: Dict[str, int] = {}
    failures: List[int] = []
    worst = {"out": (0.0, None), "lse": (0.0, None)}
    for seed in range(args.seed, args.seed + args.cases):
        dtype = args.dtype or CYCLE[seed % len(CYCLE)]
        batch = random_batch(np.random.default_rng(seed), dtypes=(dtype,), **space)
        try:
            result, name = _run_case(args, fn, batch, device)
            report = check(result, batch, steps=_steps(args, batch))
            ran_on[name] = ran_on.get(name, 0) + 1
            text = str(report)
        except Exception as exc:  # a crashing implementation is a failing case, reported as such
            report = None
            text = f"FAIL: raised {type(exc).__name__}: {exc}\n{traceback.format_exc(limit=-3)}{batch.describe()}"
        if report is not None:
            for part, ratio in (("out", report.out_ratio), ("lse", report.lse_ratio)):
                if ratio > worst[part][0] or worst[part][1] is None:
                    worst[part] = (ratio, f"seed {seed}, {dtype}")
        if report is None or not report.passed:
            failures.append(seed)
            if len(failures) <= MAX_REPORTS:
                print(f"\ncase seed {seed} ({dtype}):")
                print("  " + text.replace("\n", "\n  "))
                print(f"  reproduce: {_reproduce(args, seed, dtype, device)}\n")

    print(f"  ran on: {', '.join(f'{k} ({v} cases)' for k, v in sorted(ran_on.items())) or 'nothing (every case raised)'}")
    for part, (ratio, where) in worst.items():
        print(f"  worst {part} error: {ratio:.3g} of the bound" + (f" ({where})" if where else ""))
    if failures:
        shown = ", ".join(str(s) for s in failures[:10]) + (", ..." if len(failures) > 10 else "")
        print(f"FAIL: {len(failures)} of {args.cases} cases failed (seeds {shown})")
        return 1
    print(f"PASS: {args.cases} of {args.cases} cases within the bounds of relaycore.bounds")
    return 0
