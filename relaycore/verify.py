"""``relaycore verify``: check a backend, or any function, against the float64 oracle.

Case ``i`` of a run with ``--seed S`` is the batch ``relaycore.testing.random_batch(
np.random.default_rng(S + i), dtypes=(dtype,), **space)``, ``space`` being ``SPACES[device]``
with the ``--space`` fields (below) and ``dtype`` the case's, so every case is reproducible on
its own with ``--seed S+i --cases 1``; the report prints that command for each failure, the
``make_batch(...)`` call that rebuilds its batch in Python (``rebuild:``), and, where fewer of
its requests fail too, the call that builds those alone (``relaycore.testing.fewest_requests``).
Each case is run and checked with ``relaycore.testing.compare``: every element within the
a-priori bound of ``relaycore.bounds`` for the case's dtype, rows that see no key exactly
``(0, -inf)``, no NaN, and the inputs left as they were (the implementation receives copies of
the batch's arrays).

Inputs: for ``--dtype float16|bfloat16|float32`` the backend or function receives torch tensors
in that dtype on ``--device`` (int32 metadata); for ``--dtype float64`` it receives NumPy float64
arrays (int32 metadata), which needs no torch. ``--host-metadata`` hands the torch inputs' metadata
as NumPy arrays on the host instead (``Batch.to_torch(device, host_metadata=True)``). ``--dtype``
takes several formats (not float64 among others): case ``S + i`` takes the ``(S + i) % n``-th of
the ``n`` given; without it, float32, float16 or bfloat16 (``CYCLE``). A ``--function`` has
``relay_attention``'s signature ``fn(q, cu_seqlens_q, kv, prefixes, *, causal, softmax_scale)``
and returns ``(out, lse)`` with ``lse`` in natural log; it is imported as ``module:qualname`` with
the current directory on the import path.

Narrower batches: ``--space FIELD=VALUE`` (repeatable) sets a field of
``relaycore.testing.BatchSpace`` over the device's defaults (``SPACES``), the value a Python
literal: ``--space "head_dims=(128,)" --space "layouts=('paged',)" --space "block_sizes=(16,)"
--space min_q_len=1 --space max_q_len=1`` draws decode batches of a paged cache with pages of 16
at D = 128. A tighter bound: ``--block-n N`` (with ``--chunk C``, ``--merge pairwise``,
``--merge running`` or ``--single-pass``, and ``--fast-division`` where the kernel divides
within 2 ulp, as CUDA's ``__fdividef``) checks every case with the steps of that blocking
(``relaycore.testing.blocked_steps``) instead of the default count for any blocking. A cascade
that stores each segment's output in the input dtype and merges the stored outputs pairwise
(FlashInfer's cascade wrapper does): ``--stored`` widens the out bound by what those roundings
cost (``relaycore.testing.stored_merges``, Lemma 8 of ``proofs/error_bound.py``); with
``--merge pairwise --fast-division`` (its merges divide within 2 ulp, as FlashInfer's under
``-use_fast_math``) priced as Lemma 10's (``stored_merge="running"``, Lemma 8's last part). With
``--block-n`` and ``--merge running`` it prices the parts' outputs stored in the input dtype and
combined by running folds instead (Lemma 10): one fold (FlashInfer's ``merge_states`` on outputs
in the input dtype), or with ``--levels 2`` a fold of folds whose results are stored too (its
large and variable-length merge kernels); ``--levels`` also counts the tree's steps, and
``--levels`` above 1 prices the tree through Lemma 10 with or without ``--stored`` (a tree of
fp32 folds is not Lemma 9's: it is Lemma 10's with fp32 reads). ``--stored``
with ``--merge fold`` or ``--single-pass`` is refused: no lemma prices it. ``--groups Z`` (with
``--block-n``): each part is walked by Z groups of threads whose unnormalised states are folded
before its division, as FlashInfer's decode kernels (``sync_state``, Lemma 11). ``--chunk-from
request`` cuts a request's segments (its prefixes, then its own KV) as one sequence into chunks
from its first key, as FlashInfer does (Lemma 12); ``--chunk`` alone cuts each segment from its
own first key. FlashInfer's split-KV decode is ``--block-n T --chunk C --chunk-from request
--merge running --levels 2 --fast-division --stored --groups Z``; in FlashInfer 0.5.0 to 0.6.18rc7
Lemma 11 needs every score above about -34570 (its running maxima start at -5e4, base 2), from
its commit ``d7f2c64`` on (an IEEE -inf start) no condition (Lemma 13). ``--every-level`` (with
``--block-n N --merge pairwise`` and no ``--chunk``, or with ``--stored`` alone) counts a cascade
that merges every prefix level into every row, a level its request does not read as an empty
side (``blocked_steps`` and ``stored_merges`` with ``every_level=True``: two steps each with
``--fast-division``, a stored merge per level for every row): FlashInfer's cascade wrapper is
``--block-n N --merge pairwise --fast-division --stored --every-level``.

Rows without a bound: where ``relaycore.bounds`` gives no bound for a row (scores too large for
the dtype, or an lse whose ``rho`` passes 2 on long rows), the row is held to none, and the case
is counted apart ("no bound"), neither failed nor passed; the summary lists those seeds. A case
whose every request has ``q_len`` 0 has no row at all: it runs (and fails where the
implementation raises, returns what the check refuses or writes into its inputs), but has
nothing to hold to a bound, and is counted apart too ("no rows").

A failing case: the implementation raised, ``relaycore.testing.check`` refused its result (not
an ``(out, lse)`` pair, a masked array, a tensor on the meta device: its ``TypeError`` or
``ValueError``), or the check failed. Any other error of the check is relaycore's and is raised.

Exit status: 0 when no case fails, 1 when one fails or when no case was checked on every row
(each had rows without a bound, or no rows), 2 when the run cannot start (or a drawn batch is
one ``make_batch`` or the oracle refuses: a ``--space`` beyond what the dtype or the metadata
holds; or ``random_batch`` cannot draw a case).

From Python: ``relaycore.verify.run(fn_or_spec, cases=..., dtypes=..., space={...})`` runs the
same check, prints the same report and returns an ``Outcome``; its ``UsageError`` names the
keywords (``dtypes``), the command's the flags (``--dtype``). A failing case's reproduce line is
the command where the function has a ``module:qualname`` that imports it, else the ``run`` call
with the function to pass itself (a lambda, a closure, a function of ``__main__``).
"""

from __future__ import annotations

import argparse
import ast
import functools
import importlib
import inspect
import os
import shlex
import sys
import traceback
from collections.abc import Iterable, Mapping
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

import relaycore
from relaycore import dispatch
from relaycore.testing import (CHUNK_FROM, DTYPES, MERGES, Batch, BatchSpace, Report, blocked_steps, compare,
                               fewest_requests, make_batch, random_batch, stored_merges)
from relaycore.testing.check import _result_pair

#: Dtypes a case without ``--dtype`` takes, by ``seed % 3``.
CYCLE = ("float32", "float16", "bfloat16")

#: The batches drawn on each device: small on the CPU (the default run stays well under a
#: minute), longer sequences and realistic head sizes on a GPU. Scores of standard deviation up
#: to 100 (``BatchSpace.score_magnitudes``): every row has a bound in every dtype. Values are
#: offset in one case in three (``BatchSpace.value_offsets``).
SPACES = {
    "cpu": dict(max_batch=4, max_q_len=8, max_kv_len=24, max_prefix_len=24, head_dims=(8, 16, 24, 32, 64),
                score_magnitudes=(None, None, 100.0)),
    "cuda": dict(max_batch=8, max_q_len=64, max_kv_len=300, max_prefix_len=300, head_dims=(16, 32, 64, 96, 128),
                 score_magnitudes=(None, None, 100.0)),
}

#: Full reports printed for the first failing cases (and for the first cases without a bound on
#: some rows); the rest are listed by seed in the summary.
MAX_REPORTS = 3


class UsageError(ValueError):
    """The run cannot start (missing torch, no CUDA, a function that does not import, an option
    out of its domain), a drawn batch is one ``make_batch`` or the oracle refuses, or a case
    cannot be drawn."""


class Outcome(NamedTuple):
    """What a run found (``run``'s result; the command prints it). It has no truth value
    (``bool(outcome)`` raises ``TypeError``): test ``outcome.passed``.

    Attributes:
        cases: the number of cases run.
        failed: the seeds of the failing cases (a check failed, the check refused the result, or
            the implementation raised).
        no_bound: the seeds of the cases with rows where no error bound exists, which passed on
            every other row (neither failed nor passed).
        ran_on: per backend or function name, the cases it computed.
        worst_out: ``(ratio, "seed S, dtype")``, the worst ``out`` error in units of the bound
            over the cases with rows (``(0.0, None)`` when none ran).
        worst_lse: the same for ``lse``.
        no_rows: the seeds of the cases without a query row (every ``q_len`` 0) that did not
            fail: nothing in them was held to a bound (neither failed nor passed).
    """

    cases: int
    failed: Tuple[int, ...]
    no_bound: Tuple[int, ...]
    ran_on: Dict[str, int]
    worst_out: Tuple[float, Optional[str]]
    worst_lse: Tuple[float, Optional[str]]
    no_rows: Tuple[int, ...]

    @property
    def passed(self) -> bool:
        """No case failed, and some case was checked on every row (the exit status is 0): a run
        in which every case had rows without a bound or no rows at all checked too little to
        pass."""
        return not self.failed and (self.cases == 0 or len(self.no_bound) + len(self.no_rows) < self.cases)

    def __bool__(self) -> bool:
        """Refused (``TypeError``): a non-empty tuple is true, and ``assert outcome`` would pass a failed run."""
        raise TypeError("an Outcome has no truth value (`assert outcome` would pass a failed run): use outcome.passed "
                        "(the command's exit status 0), or outcome.failed == () for no failing case")


#: Each of ``run``'s keywords as the command spells it.
_FLAGS = {"function": "--function", "backend": "--backend", "cases": "--cases", "seed": "--seed", "dtypes": "--dtype",
          "device": "--device", "space": "--space", "block_n": "--block-n", "chunk": "--chunk", "merge": "--merge",
          "single_pass": "--single-pass", "host_metadata": "--host-metadata", "stored": "--stored",
          "fast_division": "--fast-division", "levels": "--levels", "groups": "--groups", "chunk_from": "--chunk-from",
          "every_level": "--every-level"}


class _Options(NamedTuple):
    """A run's options, as ``run`` takes them; ``space_text`` is ``space`` as ``--space`` items;
    ``command``: given on the command line (messages name its flags), not to ``run`` (its
    keywords)."""

    function: Union[None, str, Callable[..., Any]]
    backend: str
    cases: int
    seed: int
    dtypes: Optional[Tuple[str, ...]]
    device: Optional[str]
    space: Dict[str, Any]
    space_text: Tuple[str, ...]
    block_n: Optional[int]
    chunk: Optional[int]
    merge: str
    single_pass: bool
    host_metadata: bool
    stored: bool
    fast_division: bool
    levels: int
    groups: int
    chunk_from: str
    every_level: bool
    command: bool

    def name(self, option: str) -> str:
        """``option``, ``run``'s keyword, as the caller wrote it: the command's flag or the keyword."""
        return _FLAGS[option] if self.command else option

    def setting(self, option: str, value: Any) -> str:
        """``option`` set to ``value`` as the caller writes it: ``--dtype float64``, ``--single-pass``;
        ``dtypes=('float64',)``, ``single_pass=True``."""
        if not self.command:
            return f"{option}={value!r}"
        if value is True:
            return _FLAGS[option]
        return " ".join([_FLAGS[option], *(str(x) for x in (value if isinstance(value, tuple) else (value,)))])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``relaycore verify``."""
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--backend", default="auto", choices=["auto", "reference", "torch", "triton"],
                      help="the backend to check (default: auto, the best available for the inputs)")
    what.add_argument("--function", metavar="MODULE:FUNCTION",
                      help="check a function with relay_attention's signature instead of a backend")
    parser.add_argument("--cases", type=int, default=200, help="number of drawn batches (default: 200)")
    parser.add_argument("--seed", type=int, default=0, help="case i uses seed SEED + i, SEED >= 0 (default: 0)")
    parser.add_argument("--dtype", nargs="+", action="extend", choices=list(DTYPES), metavar="DTYPE",
                        help="input dtype, or several (case seed S takes the (S %% n)-th of n): float16, bfloat16, "
                             "float32, or float64 alone (NumPy inputs) (default: float32 float16 bfloat16)")
    parser.add_argument("--device", choices=["cpu", "cuda"],
                        help="where torch inputs live (default: cuda when available, else cpu)")
    parser.add_argument("--host-metadata", action="store_true",
                        help="the metadata (offsets, lengths, block table, prefix ids) as NumPy arrays on the host, "
                             "beside the torch tensors on --device")
    parser.add_argument("--space", action="append", default=[], metavar="FIELD=VALUE",
                        help="a relaycore.testing.BatchSpace field over the device's defaults, the value a Python "
                             "literal, e.g. --space \"head_dims=(128,)\" --space max_q_len=1 (repeatable)")
    parser.add_argument("--block-n", type=int, metavar="N",
                        help="check with the steps of a kernel that walks N keys a block "
                             "(relaycore.testing.blocked_steps) instead of the default count for any blocking")
    parser.add_argument("--chunk", type=int, metavar="C", help="with --block-n: segments cut into parts of C keys")
    parser.add_argument("--chunk-from", choices=list(CHUNK_FROM), default="segment",
                        help="with --chunk: cut each segment from its own first key, or a request's segments (its "
                             "prefixes, then its own KV) as one sequence from its first key, a chunk then running "
                             "across a prefix's end, as FlashInfer's split-KV decode cuts a request's page list; "
                             "as blocked_steps(chunk_from=...), Lemma 12 (default: segment)")
    parser.add_argument("--merge", choices=list(MERGES), default="fold",
                        help="with --block-n: how the parts' states are merged (default: fold, all at once)")
    parser.add_argument("--single-pass", action="store_true",
                        help="with --block-n: one running state over the whole context, no merge")
    parser.add_argument("--fast-division", action="store_true",
                        help="with --block-n: the kernel's divisions err by up to 2 ulp (CUDA's __fdividef, "
                             "-use_fast_math), one step more per fold or pairwise merge a key passes; with --merge "
                             "pairwise and --stored, a cascade's stored merges priced as Lemma 10's "
                             "(stored_merge='running', Lemma 8)")
    parser.add_argument("--stored", action="store_true",
                        help="the function stores each segment's output in the input dtype and merges the stored "
                             "outputs pairwise, as a cascade does, or (with --block-n and --merge running) stores its "
                             "parts' outputs and folds them: the bound prices those roundings "
                             "(relaycore.testing.stored_merges)")
    parser.add_argument("--levels", type=int, default=1, metavar="L",
                        help="with --block-n and --merge running: a tree of running folds that a key passes L of "
                             "(2: FlashInfer's two-level merge kernels), as blocked_steps(levels=L); above 1, priced "
                             "through Lemma 10 (stored_merges(merge='running')) with or without --stored (default: 1)")
    parser.add_argument("--groups", type=int, default=1, metavar="Z",
                        help="with --block-n: each part walked by Z groups of threads, N keys a block each, their "
                             "unnormalised states folded before the part's division (FlashInfer's decode: N = bdy * "
                             "tile_size_per_bdx, Z = bdz, sync_state), as blocked_steps(groups=Z), Lemma 11, "
                             "where every score is above about -34570 (FlashInfer 0.5.0 to 0.6.18rc7; any from its "
                             "commit d7f2c64 on, Lemma 13); FlashInfer's chunks: --chunk-from request "
                             "(default: 1)")
    parser.add_argument("--every-level", action="store_true",
                        help="with --block-n N --merge pairwise (no --chunk), or with --stored: every prefix level "
                             "merged into every row, a level its request does not read as an empty side (FlashInfer's "
                             "MultiLevelCascadeAttentionWrapper), as blocked_steps and stored_merges with "
                             "every_level=True: two steps per such level with --fast-division (one without), a stored "
                             "merge per level for every row")


def _attribute(owner: Any, qualname: str) -> Any:
    """``owner.a.b`` for the qualified name ``"a.b"``.

    Raises:
        AttributeError: a part of ``qualname`` that is not there.
    """
    return functools.reduce(getattr, qualname.split("."), owner)


def _load_function(spec: str, option: str) -> Callable[..., Any]:
    """The function ``spec``, ``"module:qualname"``, imported with the current directory on the
    import path.

    Raises:
        UsageError: ``spec`` is not ``module:qualname``, does not import, or is not callable;
            the message begins with ``option``, the flag or keyword that gave it.
    """
    module_name, sep, name = spec.partition(":")
    if not sep or not module_name or not name:
        raise UsageError(f"{option}: expected MODULE:FUNCTION, got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        fn = _attribute(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as exc:
        raise UsageError(f"{option}: cannot load {spec!r}: {exc}") from exc
    if not callable(fn):
        raise UsageError(f"{option}: {spec!r} is not callable")
    return fn


def _importable_name(fn: Callable[..., Any]) -> Optional[str]:
    """``fn``'s ``"module:qualname"`` where that name finds ``fn`` itself in its module, as
    ``--function`` would import it; ``None`` for a function that cannot be named from outside (a
    lambda, a closure, a bound method, a ``functools.partial``, a function of ``__main__``)."""
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str) or module == "__main__" or module not in sys.modules:
        return None
    try:
        found = _attribute(sys.modules[module], qualname)
    except AttributeError:
        return None
    return f"{module}:{qualname}" if found is fn else None


def _default_device(dtypes: Optional[Tuple[str, ...]]) -> str:
    if dtypes == ("float64",):
        return "cpu"
    try:
        import torch
    except ImportError:
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


def _check_setup(options: _Options, device: str) -> None:
    """Refuse options that cannot run, each named as the caller gave it (``options.name``).

    Raises:
        UsageError: an option out of its domain, options that do not go together, torch or
            CUDA missing, Triton on the CPU without its interpreter.
    """
    name, setting = options.name, options.setting
    for option in ("cases", "seed", "levels", "groups"):
        value = getattr(options, option)
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise UsageError(f"{name(option)}: expected an int, got {value!r}")
    for option in ("single_pass", "host_metadata", "stored", "fast_division", "every_level"):
        value = getattr(options, option)
        if not isinstance(value, bool):
            raise UsageError(f"{name(option)}: expected a bool, got {value!r}")
    if options.levels < 1:
        raise UsageError(f"{name('levels')}: expected a positive int, got {options.levels}")
    if options.levels != 1 and (options.block_n is None or options.merge != "running"):
        raise UsageError(f"{name('levels')}: expected {setting('merge', 'running')} with {name('block_n')} (a tree "
                         f"of running folds, Lemma 10), got {setting('levels', options.levels)} with "
                         f"{setting('merge', options.merge)}" + ("" if options.block_n is not None else
                                                                 f" and no {name('block_n')}"))
    if options.groups < 1:
        raise UsageError(f"{name('groups')}: expected a positive int, got {options.groups}")
    if options.groups != 1 and (options.block_n is None or options.single_pass):
        raise UsageError(f"{name('groups')}: expected with {name('block_n')} and without {name('single_pass')} (groups "
                         f"walk a part each, Lemma 11), got {setting('groups', options.groups)}"
                         + (f" without {name('block_n')}" if options.block_n is None else
                            f" with {name('single_pass')}"))
    if options.cases < 1:
        raise UsageError(f"{name('cases')}: expected at least 1, got {options.cases}")
    if options.seed < 0:
        raise UsageError(f"{name('seed')}: expected an int >= 0 (NumPy seeds are non-negative), got {options.seed}")
    if options.function is None and options.backend not in ("auto", "reference", "torch", "triton"):
        raise UsageError(f"{name('backend')}: expected one of auto, reference, torch, triton, got {options.backend!r}")
    if options.merge not in MERGES:
        raise UsageError(f"{name('merge')}: expected one of {list(MERGES)}, got {options.merge!r}")
    dtypes = options.dtypes
    if dtypes is not None and (not dtypes or any(d not in DTYPES for d in dtypes)):
        raise UsageError(f"{name('dtypes')}: expected one or more of {list(DTYPES)}, got {list(dtypes)}")
    if dtypes is not None and "float64" in dtypes and len(dtypes) > 1:
        raise UsageError(f"{name('dtypes')}: expected float64 alone (it passes NumPy arrays, the others torch tensors), "
                         f"got {setting('dtypes', dtypes)}")
    blocking = f"{name('chunk')}, {name('merge')}, {name('single_pass')}, {name('fast_division')}"
    if options.block_n is None and (options.chunk is not None or options.merge != "fold" or options.single_pass
                                    or options.fast_division):
        raise UsageError(f"{blocking}: expected with {name('block_n')} (they describe its blocking), got them "
                         f"without it")
    if options.block_n is not None and options.function is None:
        raise UsageError(f"{name('block_n')}: expected with {name('function')} (a blocking you know), got it with "
                         f"{setting('backend', options.backend)}, whose blocking varies per request: its tests count "
                         f"it (relaycore.fast.triton.rounding.steps_per_token)")
    if options.device is not None and options.device not in SPACES:
        raise UsageError(f"{name('device')}: expected one of {list(SPACES)}, got {options.device!r}")
    for option in ("block_n", "chunk"):
        value = getattr(options, option)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer))):
            raise UsageError(f"{name(option)}: expected a positive int (a number of keys), got {value!r}")
        if value is not None and value < 1:
            raise UsageError(f"{name(option)}: expected a positive number of keys, got {value}")
    if not isinstance(options.chunk_from, str) or options.chunk_from not in CHUNK_FROM:
        raise UsageError(f"{name('chunk_from')}: expected one of {list(CHUNK_FROM)}, got {options.chunk_from!r}")
    if options.chunk_from != "segment" and options.chunk is None:
        raise UsageError(f"{name('chunk_from')}: expected with {name('chunk')} (only chunks are cut from a request's "
                         f"first key), got {setting('chunk_from', options.chunk_from)} without it")
    if options.single_pass and (options.chunk is not None or options.merge != "fold"):
        raise UsageError(f"{name('single_pass')}: expected without {name('chunk')} and {name('merge')} (one running "
                         f"state has no parts to cut or merge), got them together")
    if options.stored and options.function is None:
        raise UsageError(f"{name('stored')}: expected with {name('function')} (a cascade of yours), got it with "
                         f"{setting('backend', options.backend)}, whose states are merged in fp32")
    if options.stored and options.block_n is not None and (options.single_pass
                                                           or options.merge not in ("pairwise", "running")):
        got = setting("single_pass", True) if options.single_pass else setting("merge", options.merge)
        raise UsageError(f"{name('stored')}: expected {setting('merge', 'pairwise')} or {setting('merge', 'running')} "
                         f"with {name('block_n')} (stored outputs are merged two at a time, Lemma 8, or by running "
                         f"folds, Lemma 10; an all-at-once fold of them, or one pass, is not what the bound prices), "
                         f"got {got}")
    if options.every_level:
        _check_every_level(options)
    float64 = setting("dtypes", ("float64",))
    if dtypes == ("float64",):
        if device == "cuda":
            raise UsageError(f"{float64} passes NumPy arrays, which live on the CPU; drop {setting('device', 'cuda')}")
        if options.backend not in ("auto", "reference") and options.function is None:
            raise UsageError(f"{float64} passes NumPy arrays, which only the reference backend takes, not "
                             f"{options.backend!r}")
        if options.host_metadata:
            raise UsageError(f"{name('host_metadata')}: expected with torch inputs, got it with {float64}, whose NumPy "
                             f"arrays hold the metadata on the host already")
        return
    try:
        import torch
    except ImportError as exc:
        raise UsageError(f"torch is not installed: use {float64} (NumPy inputs) or install torch") from exc
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"{setting('device', 'cuda')}: torch sees no CUDA device here")
    if options.function is None and options.backend == "triton":
        try:
            triton_backend = dispatch.load("triton")
        except RuntimeError as exc:
            raise UsageError(str(exc)) from exc
        if device == "cpu" and not triton_backend.runs_on_the_cpu():
            raise UsageError(f"{setting('backend', 'triton')} on the CPU runs only under Triton's interpreter: set "
                             f"TRITON_INTERPRET=1 before triton is imported, or use {setting('device', 'cuda')} on a "
                             f"GPU")


def _check_every_level(options: _Options) -> None:
    """Refuse ``every_level`` where ``blocked_steps`` or ``stored_merges`` does, and where it
    would count nothing (neither ``block_n`` nor ``stored``).

    Raises:
        UsageError: ``every_level`` with ``block_n`` and a merge other than pairwise (running
            folds, one fold, one pass) or with ``chunk``, or with neither ``block_n`` nor
            ``stored``.
    """
    name, setting = options.name, options.setting
    wanted = (f"with {name('block_n')}, {setting('merge', 'pairwise')} and no {name('chunk')}, or with "
              f"{name('stored')} (a cascade's pairwise merges of every level into every row, blocked_steps and "
              f"stored_merges with every_level=True)")
    if options.block_n is None and not options.stored:
        raise UsageError(f"{name('every_level')}: expected {wanted}, got it with neither {name('block_n')} nor "
                         f"{name('stored')}")
    if options.block_n is not None and (options.single_pass or options.merge != "pairwise"
                                        or options.chunk is not None):
        if options.single_pass:
            got = setting("single_pass", True)
        elif options.merge != "pairwise":
            got = setting("merge", options.merge)
        else:
            got = setting("chunk", options.chunk)
        raise UsageError(f"{name('every_level')}: expected {wanted}, got {got}")


def _parse_space(items: Sequence[str]) -> Dict[str, Any]:
    """``--space FIELD=VALUE`` items as ``BatchSpace`` fields.

    Raises:
        UsageError: an item that is not ``FIELD=LITERAL`` of a ``BatchSpace`` field, or whose
            literal is not of the field's kind (a tuple of choices, an int, or a bool).
    """
    fields = BatchSpace.__dataclass_fields__
    space = {}
    for item in items:
        name, sep, text = item.partition("=")
        name = name.strip()
        if name == "dtypes":
            raise UsageError("--space: expected a field other than dtypes (a case's dtype is --dtype's, which takes "
                             "several: --dtype float16 bfloat16), got dtypes")
        if not sep or name not in fields:
            raise UsageError(f"--space: expected FIELD=VALUE with FIELD one of {sorted(set(fields) - {'dtypes'})}, "
                             f"got {item!r}")
        try:
            value = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError) as exc:
            raise UsageError(f"--space {name}: expected a Python literal, got {text!r}") from exc
        kind = type(fields[name].default)  # tuple: choices; int: a bound; bool: a switch
        if not (isinstance(value, (tuple, list)) if kind is tuple else type(value) is kind):
            want = {tuple: "a tuple of choices, e.g. (128,)", int: "an int", bool: "True or False"}[kind]
            raise UsageError(f"--space {name}: expected {want}, got {text!r}")
        space[name] = tuple(value) if kind is tuple else value
    return space


def _space(options: _Options, device: str) -> dict:
    """The batches to draw: ``SPACES[device]`` (every head dim in them runs on every backend),
    then the run's own fields.

    Raises:
        UsageError: a field other than ``BatchSpace``'s (or ``dtypes``), or values
            ``BatchSpace`` refuses.
    """
    fields = set(BatchSpace.__dataclass_fields__) - {"dtypes"}
    unknown = sorted(set(options.space) - fields)
    if unknown:
        raise UsageError(f"{options.name('space')}: expected fields among {sorted(fields)} (a case's dtype is "
                         f"set by {options.name('dtypes')}), got {unknown[0]!r}")
    space = {**SPACES[device], **options.space}
    try:
        BatchSpace(**space)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{options.name('space')}: {exc}") from exc
    return space


def _steps(options: _Options, batch) -> Optional[np.ndarray]:
    """The ``steps`` of ``--block-n`` for ``batch``, or ``None`` (the default count)."""
    if options.block_n is None:
        return None
    return blocked_steps(batch, options.block_n, split=not options.single_pass, chunk=options.chunk,
                         chunk_from=options.chunk_from, merge=options.merge, fast_division=options.fast_division,
                         levels=options.levels, groups=options.groups, every_level=options.every_level)


def _stored(options: _Options, batch) -> dict:
    """The ``stored`` and ``stored_merge`` keywords of ``--stored`` for ``batch`` (none without it):
    pairwise merges of a cascade's stored segments (Lemma 8), priced as Lemma 10's where their
    divisions err by up to 2 ulp (``--fast-division``), or with ``--merge running`` the
    ``--levels`` running folds of stored outputs every key passes (Lemma 10); with ``--levels``
    above 1, those of Lemma 10 with or without ``--stored``. With ``--every-level`` the pairwise
    merges are one per prefix level for every row, read or not."""
    # a tree of folds, fp32 intermediates included, is Lemma 10's, not Lemma 9's
    running = options.stored and options.block_n is not None and options.merge == "running"
    if options.levels > 1 or running:
        return dict(stored=stored_merges(batch, merge="running", levels=options.levels), stored_merge="running")
    if not options.stored:
        return {}
    fast = options.block_n is not None and options.merge == "pairwise" and options.fast_division
    return dict(stored=stored_merges(batch, every_level=options.every_level),
                **({"stored_merge": "running"} if fast else {}))


def _function_name(function: Union[str, Callable[..., Any]]) -> str:
    """A function as the report names it: its ``module:function``, or its qualified name."""
    return function if isinstance(function, str) else getattr(function, "__qualname__", repr(function))


def _name(options: _Options) -> str:
    """What the run checks, as its report names it."""
    if options.function is None:
        return f"backend {options.backend}"
    return f"function {_function_name(options.function)}"


def _reproduce(options: _Options, seed: int, dtype: str, device: str) -> str:
    """The command that reruns one case alone; for a function that cannot be named from outside
    (``_importable_name``), the ``run`` call to pass it to, and why."""
    inputs = [("seed", seed), ("cases", 1), ("dtypes", (dtype,))] + ([] if dtype == "float64" else [("device", device)])
    rest = [(option, getattr(options, option)) for option, unset in (
        ("host_metadata", False), ("block_n", None), ("chunk", None), ("chunk_from", "segment"), ("single_pass", False),
        ("merge", "fold"), ("fast_division", False), ("levels", 1), ("groups", 1), ("stored", False),
        ("every_level", False))
        if getattr(options, option) != unset]
    function = options.function
    spec = _importable_name(function) if callable(function) else function
    if function is not None and spec is None:
        keywords = options._replace(command=False).setting
        space = [f"space={options.space!r}"] if options.space else []
        call = ", ".join(["fn", *(keywords(k, v) for k, v in inputs), *space, *(keywords(k, v) for k, v in rest)])
        return (f"relaycore.verify.run({call})\n      with fn the function checked, {_function_name(function)}, which "
                f"cannot be named from outside (no module:qualname imports it, as for a lambda, a closure, a method or "
                f"a function of __main__): pass it itself")
    flags = options._replace(command=True).setting
    what = f"--function {shlex.quote(spec)}" if spec else f"--backend {options.backend}"
    space = [f"--space {shlex.quote(item)}" for item in options.space_text]
    return " ".join(["relaycore verify", what, *(flags(k, v) for k, v in inputs), *space,
                     *(flags(k, v) for k, v in rest)])


class _Raised(Exception):
    """What the implementation under test raised (``__cause__``), told apart from the check's
    own errors."""


class _Refused(Exception):
    """The check's refusal of the implementation's result (``__cause__``: its ``TypeError`` or
    ``ValueError``), told apart from the check's own errors."""


def _guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn``, its exceptions raised as ``_Raised`` and a result the check refuses as
    ``_Refused``."""
    def call(*args, **kwargs):
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:
            raise _Raised() from exc
        try:
            _result_pair(result)
        except (TypeError, ValueError) as exc:
            raise _Refused() from exc
        return result

    return call


def _run_case(options: _Options, fn: Optional[Callable[..., Any]], batch, device: str) -> Tuple[Report, str]:
    """The report of one case and the name of what computed it.

    Raises:
        _Raised: the implementation raised (its exception is the cause).
        _Refused: the check refuses the implementation's result (its refusal is the cause).
    """
    where = None if batch.dtype == "float64" else device  # float64: NumPy arrays
    if fn is not None:
        report = compare(_guarded(fn), batch, device=where, steps=_steps(options, batch),
                         host_metadata=options.host_metadata, **_stored(options, batch))
        return report, _function_name(options.function)
    chosen = []

    def backend(*args, **kwargs):
        chosen.append(relaycore.select_backend(*args, **kwargs, backend=options.backend).name)
        return relaycore.relay_attention(*args, **kwargs, backend=options.backend)

    report = compare(_guarded(backend), batch, device=where, host_metadata=options.host_metadata)
    return report, chosen[0]


def _header(options: _Options, space: dict, device: str) -> None:
    dtypes = " ".join(options.dtypes) if options.dtypes else "/".join(CYCLE) + " by seed"
    last = options.seed + options.cases - 1
    print(f"relaycore verify: {_name(options)}, {options.cases} cases (seeds {options.seed}..{last}), dtype {dtypes}, "
          f"device {device}" + (", metadata on the host (NumPy arrays)" if options.host_metadata else ""))
    box = BatchSpace(**space)
    offsets = " or ".join(f"{x:g}" for x in sorted(set(box.value_offsets)))
    print(f"  batches: B <= {box.max_batch}, q_len {box.min_q_len}..{box.max_q_len}, kv_len <= {box.max_kv_len}, "
          f"{box.max_levels} prefix levels of {box.max_prefixes} prefixes of length {box.min_prefix_len}.."
          f"{box.max_prefix_len} at most{'' if box.unread_levels else ', every level read'}, "
          f"D in {box.head_dims}, scores of standard deviation up to {max(m or 1 for m in box.score_magnitudes):g}, "
          f"values offset by {offsets}{_scaled(box)}, {' and '.join(box.layouts)}")
    if options.block_n is not None:
        form = "one pass" if options.single_pass else (
            f"parts of {options.chunk} keys" + (", cut from each request's first key across its segments"
                                                 if options.chunk_from == "request" else "")
            if options.chunk else "a part per segment")
        merged = {"fold": "all at once", "pairwise": "pairwise", "running": "one at a time, rescaled as the maximum grows"}
        print(f"  bound: the steps of blocks of {options.block_n} keys, {form}"
              + ("" if options.single_pass else f", merged {merged[options.merge]}")
              + (f", {options.levels} levels of folds" if options.levels != 1 else "")
              + (f", each part walked by {options.groups} groups folded before its division"
                 if options.groups != 1 else "")
              + (", divisions within 2 ulp" if options.fast_division else "")
              + (", every prefix level merged into every row" if options.every_level else ""))
    if options.levels > 1 and not options.stored:
        print(f"  bound: a tree of {options.levels} running folds on every key's way, priced through Lemma 10 "
              "(its outputs stored in the input dtype or not)")
    elif options.stored and options.block_n is not None and options.merge == "running":
        print(f"  bound: outputs stored in the input dtype, {options.levels} running fold"
              f"{'s' if options.levels != 1 else ''} of them on every key's way")
    elif options.stored:
        print("  bound: outputs stored in the input dtype, one pairwise merge of them per prefix level "
              + ("for every row, read or not" if options.every_level else "a request reads"))


def _scaled(box: BatchSpace) -> str:
    """``" and scaled by ..."`` where the space scales its values (``value_scales``), else ``""``."""
    if set(box.value_scales) == {1.0}:
        return ""
    return " and scaled by " + " or ".join(f"{x:g}" for x in sorted(set(box.value_scales)))


#: What ``make_batch``'s refusals begin with: the name of the argument refused.
_MAKE_BATCH_ARGUMENTS = frozenset(inspect.signature(make_batch).parameters)


def _refuses_an_argument(exc: ValueError) -> bool:
    """Whether ``exc`` is ``make_batch`` refusing one of its arguments (``kv_lens: expected ...``,
    ``prefix_ids[0]: expected ...``), not another error raised while the batch was drawn."""
    return str(exc).split(":", 1)[0].split("[", 1)[0] in _MAKE_BATCH_ARGUMENTS


def _draw(options: _Options, seed: int, dtype: str, space: dict) -> Batch:
    """The batch of case ``seed``.

    Raises:
        UsageError: ``make_batch`` refuses an argument drawn from ``space`` (values the dtype
            cannot hold, lengths the metadata cannot: narrow ``--space``, named as the caller
            gave it), or the draw fails otherwise (the error as raised).
    """
    try:
        return random_batch(np.random.default_rng(seed), dtypes=(dtype,), **space)
    except ValueError as exc:
        if _refuses_an_argument(exc):
            raise UsageError(f"case seed {seed} ({dtype}): make_batch refuses the drawn batch ({exc}); narrow "
                             f"{options.name('space')}") from exc
        raise UsageError(f"case seed {seed} ({dtype}): random_batch cannot draw the batch ({type(exc).__name__}: "
                         f"{exc})") from exc


def _print_case(options: _Options, seed: int, dtype: str, device: str, text: str,
                fewest: Optional[Batch] = None) -> None:
    print(f"\ncase seed {seed} ({dtype}):")
    print("  " + text.replace("\n", "\n  "))
    if fewest is not None:
        print(f"  fewest requests that fail ({fewest.batch_size}): relaycore.testing.{fewest!r}")
    print(f"  reproduce: {_reproduce(options, seed, dtype, device)}\n")


def _fewest(options: _Options, fn: Optional[Callable[..., Any]], batch: Batch, device: str) -> Optional[Batch]:
    """A failing case's batch cut to the requests its failure needs (``fewest_requests``: the case
    run once more whole and at most once per request), where that drops any; ``None`` where it
    drops none, or where the whole batch passes when run again (an implementation whose result
    changes between runs)."""
    def fails(candidate: Batch) -> bool:
        try:
            return not _run_case(options, fn, candidate, device)[0].passed
        except (_Raised, _Refused):
            return True

    try:
        fewest = fewest_requests(batch, fails)
    except ValueError:  # fails(batch) no longer holds
        return None
    return fewest if fewest.batch_size < batch.batch_size else None


def _execute(options: _Options) -> Outcome:
    """Run the cases, print the report, return what was found.

    Raises:
        UsageError: the run cannot start, a drawn batch is one ``make_batch`` or the oracle
            refuses, or a case cannot be drawn.
    """
    device = options.device or _default_device(options.dtypes)
    _check_setup(options, device)
    space = _space(options, device)
    fn = (_load_function(options.function, options.name("function")) if isinstance(options.function, str)
          else options.function)
    _header(options, space, device)
    dtypes = options.dtypes or CYCLE
    ran_on: Dict[str, int] = {}
    failed: List[int] = []
    no_bound: List[int] = []
    no_rows: List[int] = []
    worst = {"out": (0.0, None), "lse": (0.0, None)}
    for seed in range(options.seed, options.seed + options.cases):
        dtype = dtypes[seed % len(dtypes)]
        batch = _draw(options, seed, dtype, space)
        try:
            batch.oracle()  # before the implementation runs: a batch the oracle refuses is no case of it
        except ValueError as exc:
            raise UsageError(f"case seed {seed} ({dtype}): the oracle refuses the drawn batch ({exc}); narrow "
                             f"{options.name('space')}\n{batch.describe()}") from exc
        try:
            report, name = _run_case(options, fn, batch, device)
        except (_Raised, _Refused) as caught:  # the implementation raised, or returned what the check refuses
            exc = caught.__cause__
            failed.append(seed)
            if len(failed) <= MAX_REPORTS:
                if isinstance(caught, _Refused):
                    text = f"FAIL: the check refuses the result ({type(exc).__name__}): {exc}\n"
                else:
                    trace = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__, limit=-3))
                    text = f"FAIL: raised {type(exc).__name__}: {exc}\n{trace}"
                _print_case(options, seed, dtype, device, text + batch.describe(), _fewest(options, fn, batch, device))
            continue
        ran_on[name] = ran_on.get(name, 0) + 1
        rows = batch.q.shape[0] > 0
        for part, ratio in (("out", report.out_ratio), ("lse", report.lse_ratio)):
            if rows and (ratio > worst[part][0] or worst[part][1] is None):
                worst[part] = (ratio, f"seed {seed}, {dtype}")
        kind = failed if not report.passed else no_rows if not rows else no_bound if report.unchecked else None
        if kind is not None:
            kind.append(seed)
            if kind is not no_rows and len(kind) <= MAX_REPORTS:  # a case without rows has nothing to show
                fewest = _fewest(options, fn, batch, device) if kind is failed else None
                _print_case(options, seed, dtype, device, str(report), fewest)
    outcome = Outcome(options.cases, tuple(failed), tuple(no_bound), ran_on, worst["out"], worst["lse"],
                      tuple(no_rows))
    _summary(outcome, options.name("space"))
    return outcome


def _seeds(seeds: Sequence[int]) -> str:
    return ", ".join(str(s) for s in seeds)


def _summary(outcome: Outcome, space: str) -> None:
    """Print the run's summary; ``space`` is ``--space`` or ``space``, as the caller names it."""
    ran = ", ".join(f"{k} ({v} cases)" for k, v in sorted(outcome.ran_on.items()))
    print(f"  ran on: {ran or 'nothing (every case raised)'}")
    for part, (ratio, where) in (("out", outcome.worst_out), ("lse", outcome.worst_lse)):
        print(f"  worst {part} error: {ratio:.3g} of the bound" + (f" ({where})" if where else ""))
    if outcome.no_bound:
        print(f"  no bound: {len(outcome.no_bound)} cases have rows where no error bound exists for their dtype, held "
              f"there to none and counted neither failed nor passed (seeds {_seeds(outcome.no_bound)})")
    if outcome.no_rows:
        count = len(outcome.no_rows)
        print(f"  no rows: {count} {'case has' if count == 1 else 'cases have'} no query row (every q_len is 0), "
              f"nothing to hold to a bound: counted neither failed nor passed (seeds {_seeds(outcome.no_rows)})")
    if outcome.failed:
        print(f"FAIL: {len(outcome.failed)} of {outcome.cases} cases failed (seeds {_seeds(outcome.failed)})")
        return
    if not outcome.passed and not outcome.no_rows:
        print(f"FAIL: every one of the {outcome.cases} cases has rows without a bound, held there to none: narrow "
              f"{space} (smaller score magnitudes, shorter rows)")
        return
    if not outcome.passed:
        unbounded = f", {len(outcome.no_bound)} had rows without a bound" if outcome.no_bound else ""
        print(f"FAIL: none of the {outcome.cases} cases was checked on every row: {len(outcome.no_rows)} had no query "
              f"row{unbounded}; widen {space} (min_q_len=1 gives every request a query)")
        return
    passed = outcome.cases - len(outcome.no_bound) - len(outcome.no_rows)
    print(f"PASS: {passed} of {outcome.cases} cases within the bounds of relaycore.bounds"
          + (f", {len(outcome.no_bound)} with no bound on some rows" if outcome.no_bound else "")
          + (f", {len(outcome.no_rows)} with no query row to check" if outcome.no_rows else ""))


def run(function: Union[None, str, Callable[..., Any]] = None, *, backend: str = "auto", cases: int = 200,
        seed: int = 0, dtypes: Optional[Sequence[str]] = None, device: Optional[str] = None,
        space: Optional[Dict[str, Any]] = None, block_n: Optional[int] = None, chunk: Optional[int] = None,
        chunk_from: str = "segment", merge: str = "fold", single_pass: bool = False, host_metadata: bool = False,
        stored: bool = False, fast_division: bool = False, levels: int = 1, groups: int = 1,
        every_level: bool = False) -> Outcome:
    """``relaycore verify`` from Python: the same cases and checks, the same printed report.

    Args:
        function: the implementation, a callable with ``relay_attention``'s signature or its
            ``"module:function"``; ``None`` checks ``backend``.
        backend: with no ``function``: ``"auto"``, ``"reference"``, ``"torch"`` or ``"triton"``.
        cases, seed: cases ``seed .. seed + cases - 1`` (``seed >= 0``).
        dtypes: the formats the cases cycle through (by seed), or ``("float64",)`` alone (NumPy
            inputs); default ``CYCLE``.
        device: ``"cpu"`` or ``"cuda"`` for the torch inputs; default cuda when available.
        space: ``relaycore.testing.BatchSpace`` fields over ``SPACES[device]`` (not ``dtypes``).
        block_n, chunk, merge, single_pass, fast_division: the blocking whose steps the bound
            counts, as ``--block-n``, ``--chunk``, ``--merge``, ``--single-pass``,
            ``--fast-division``.
        chunk_from: where ``chunk``'s chunks start (``relaycore.testing.CHUNK_FROM``), as
            ``--chunk-from``.
        host_metadata: the torch inputs' metadata as NumPy arrays on the host, as
            ``--host-metadata`` (not with ``dtypes=("float64",)``, NumPy inputs).
        stored: the function merges outputs stored in the input dtype, as ``--stored``.
        levels: with ``merge="running"``, the folds of a tree of running folds a key passes,
            as ``--levels``.
        groups: groups of threads that walk each part, their states folded before its division
            (FlashInfer's decode, Lemma 11), as ``--groups``.
        every_level: every prefix level merged pairwise into every row, a level its request
            does not read as an empty side (FlashInfer's cascade wrapper), as ``--every-level``:
            with ``block_n`` and ``merge="pairwise"`` (no ``chunk``), or with ``stored``.

    Returns:
        ``Outcome``: ``outcome.passed`` is the command's exit status 0 (the outcome itself has
        no truth value); the failing seeds, the seeds without a bound on some rows or without
        rows, the worst errors.

    Raises:
        UsageError: (a ``ValueError``) the run cannot start, as the command's exit status 2;
            its message names the keyword at fault (``dtypes``, not ``--dtype``).

    Example:
        >>> import relaycore, relaycore.verify
        >>> def mine(q, cu_seqlens_q, kv, prefixes, *, causal, softmax_scale):
        ...     return relaycore.relay_attention(q, cu_seqlens_q, kv, prefixes, causal=causal,
        ...                                      softmax_scale=softmax_scale, backend="torch")
        >>> outcome = relaycore.verify.run(mine, cases=6, dtypes=("float16", "bfloat16"),
        ...                                device="cpu", space={"max_q_len": 1})  # doctest: +ELLIPSIS
        relaycore verify: function mine, 6 cases (seeds 0..5), dtype float16 bfloat16, device cpu
        ...
        PASS: 6 of 6 cases within the bounds of relaycore.bounds
        >>> outcome.passed, outcome.failed
        (True, ())
    """
    if function is not None and not isinstance(function, str) and not callable(function):
        raise UsageError(f"function: expected a callable with relay_attention's signature or its "
                         f"'module:function', got {type(function).__name__}")
    if dtypes is not None and (isinstance(dtypes, (str, bytes)) or not isinstance(dtypes, Iterable)):
        raise UsageError(f"dtypes: expected a tuple of format names, e.g. ('float16',), got {dtypes!r}")
    if space is not None and not isinstance(space, Mapping):
        raise UsageError(f"space: expected a dict of relaycore.testing.BatchSpace fields, e.g. {{'max_q_len': 1}}, "
                         f"got {type(space).__name__}")
    space = dict(space or {})
    options = _Options(function, backend, cases, seed, None if dtypes is None else tuple(dtypes), device, space,
                       tuple(f"{k}={v!r}" for k, v in space.items()), block_n, chunk, merge, single_pass, host_metadata,
                       stored, fast_division, levels, groups, chunk_from, every_level, command=False)
    return _execute(options)


def main(args: argparse.Namespace) -> int:
    """Run ``relaycore verify``; returns the exit status."""
    try:
        options = _Options(args.function, args.backend, args.cases, args.seed,
                           None if args.dtype is None else tuple(args.dtype), args.device, _parse_space(args.space),
                           tuple(args.space), args.block_n, args.chunk, args.merge, args.single_pass,
                           args.host_metadata, args.stored, args.fast_division, args.levels, args.groups,
                           args.chunk_from, args.every_level, command=True)
        outcome = _execute(options)
    except UsageError as exc:
        print(f"relaycore verify: {exc}", file=sys.stderr)
        return 2
    return 0 if outcome.passed else 1
