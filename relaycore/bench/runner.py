"""Run a list of points through every provider: draw, check against the oracle, then time.

"A speedup is never reported on a red gate": a provider whose output leaves the bound of
``relaycore.bounds`` at a point is reported ``failed`` there and not timed. A provider that
raises is reported ``error`` (or ``unsupported`` for a documented limit) with the exception,
and a provider whose library is missing is reported ``missing`` at every point.
"""

from __future__ import annotations

import gc
import sys
import time
from typing import Callable, List, Optional, TextIO

from relaycore.bench import floor, timing
from relaycore.bench.grids import Point
from relaycore.bench.problem import Oracle, Problem, check, compute_oracle, make_problem
from relaycore.bench.providers import Prepared, Provider, Unsupported
from relaycore.bench.results import SCHEMA, environment


class Progress:
    """A one-line progress bar on a terminal, one line per step elsewhere (logs)."""

    def __init__(self, total: int, stream: TextIO = sys.stderr, width: int = 30) -> None:
        self.total, self.stream, self.width, self.done = total, stream, width, 0
        self.tty = hasattr(stream, "isatty") and stream.isatty()

    def step(self, label: str) -> None:
        self.done += 1
        filled = self.width * self.done // max(self.total, 1)
        line = f"[{'#' * filled}{'.' * (self.width - filled)}] {self.done}/{self.total} {label}"
        if self.tty:
            self.stream.write("\r" + line[:160].ljust(160) + ("\n" if self.done == self.total else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def _error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:400]


def _run_variant(prepared: Prepared, oracle: Oracle, timer) -> dict:
    """Check a prepared call, then time it (graph-captured when allowed and still correct)."""
    raw = prepared.fn()
    verdict = check(oracle, *prepared.result(raw))
    if not verdict.passed:
        return {"status": "failed", "reason": f"output outside the error bound: {verdict.message}",
                "worst_error_ratio": verdict.worst}
    call, graphed, note = prepared.fn, False, "" if prepared.graphable else "not graph-capturable"
    if prepared.graphable:
        replay, output, note = timer.capture(prepared.fn)
        if replay is not None:
            replay()
            replayed = check(oracle, *prepared.result(output))
            if replayed.passed:
                call, graphed = replay, True
            else:
                note = f"graph replay failed the check ({replayed.message}); timed eagerly"
    t = timer.time(call, graphed, note)
    return {"status": "ok", "timing": t.to_dict(), "worst_error_ratio": verdict.worst}


def run_provider(provider: Provider, problem: Problem, oracle: Oracle, timer, sync: Callable[[], None]) -> dict:
    """Every variant of a provider at one point; the fastest correct one is its result."""
    variants: dict = {}
    best: Optional[dict] = None
    try:
        generated = list(provider.variants(problem))
    except Exception as exc:
        return {"status": "error", "reason": _error(exc), "variants": {}}
    for name, setup in generated:
        prepared = None
        started = time.perf_counter()
        try:
            prepared = setup()
            res = _run_variant(prepared, oracle, timer)
            res["detail"] = prepared.detail
        except Unsupported as exc:
            res = {"status": "unsupported", "reason": str(exc)}
        except Exception as exc:
            res = {"status": "error", "reason": _error(exc)}
        finally:
            del prepared
            gc.collect()
            sync()
        res["setup_and_timing_s"] = time.perf_counter() - started  # compilation included: first calls
        variants[name] = {k: res[k] for k in ("status", "reason", "worst_error_ratio", "setup_and_timing_s") if k in res}
        if res["status"] == "ok":
            variants[name]["median_s"] = res["timing"]["median_s"]
            if best is None or res["timing"]["median_s"] < best["timing"]["median_s"]:
                best = dict(res, variant=name)
    if best is not None:
        best["variants"] = variants
        return best
    for status in ("failed", "error", "unsupported"):
        reasons = [f"{n}: {v['reason']}" for n, v in variants.items() if v["status"] == status]
        if reasons:
            return {"status": status, "reason": "; ".join(reasons), "variants": variants}
    return {"status": "error", "reason": "no variant", "variants": variants}


def run_points(points: List[Point], providers: List[Provider], device: str, *, seed: int = 0,
               progress: Optional[Progress] = None, on_point: Optional[Callable[[dict], None]] = None) -> dict:
    """Measure every point with every provider on ``device`` (``"cuda"`` or ``"cpu"``).

    ``on_point(doc)`` is called after each point with the document so far (to save partial
    results of a long run).

    Returns:
        The results document (see ``relaycore.bench.results``).
    """
    import torch

    cuda = torch.device(device).type == "cuda"
    timer = timing.CudaTimer(device) if cuda else timing.CpuTimer()

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()

    ceil = timing.ceilings(device, timer)
    available = {}
    for prov in providers:
        reason = "needs a CUDA GPU" if prov.needs_cuda and not cuda else prov.probe()
        available[prov.name] = reason
    doc = {
        "schema": SCHEMA,
        "mode": "gpu" if cuda else "cpu",
        "environment": environment(device),
        "ceilings": ceil,
        "timing": {"warmup": timing.WARMUP, "warmup_s": timing.WARMUP_S, "min_reps": timing.MIN_REPS, "max_reps": timing.MAX_REPS,
                   "budget_s": timing.BUDGET_S, "cold_l2": cuda, "flush_bytes": timer.flush_bytes if cuda else None},
        "providers": [{"name": p.name, "title": p.title, "peer": p.peer, "available": available[p.name] is None,
                       "reason": available[p.name]} for p in providers],
        "points": [],
    }
    for point in points:
        problem = make_problem(point, device, seed)
        oracle = compute_oracle(problem)
        floor_s = floor.floor_seconds(point, ceil["copy_bytes_per_s"], ceil["matmul_flops_per_s"])
        entry = {"point": point.to_dict(), "bytes": floor.min_bytes(point), "flops": floor.flops(point),
                 "floor_s": floor_s, "oracle": f"float64 torch over the concatenated context; reference cross-check "
                                               f"{oracle.crosscheck}", "results": {}}
        for prov in providers:
            if available[prov.name] is not None:
                entry["results"][prov.name] = {"status": "missing", "reason": available[prov.name], "variants": {}}
                continue
            res = run_provider(prov, problem, oracle, timer, sync)
            if res["status"] == "ok":
                t = res["timing"]["median_s"]
                res["memory_floor_fraction"] = floor_s["memory"] / t
                res["matmul_floor_fraction"] = floor_s["matmul"] / t
            entry["results"][prov.name] = res
        doc["points"].append(entry)
        del problem, oracle
        sync()
        if progress is not None:
            progress.step(point.label)
        if on_point is not None:
            on_point(doc)
    return doc
