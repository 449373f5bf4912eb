"""The results file: its schema, the environment it records, and its checker.

One JSON document per run::

    {"schema": "relaycore-bench/1", "mode": "gpu" | "cpu",
     "environment": {"card", "driver", "cuda", "torch", "triton", "flashinfer", "relaycore",
                     "python", "commit", "date"},
     "ceilings": {"copy_bytes_per_s", "matmul_flops_per_s", "call_s" (absent before 2026-11-28), ...},
     "timing": {"warmup", "min_reps", "max_reps", "budget_s", "cold_l2", "flush_bytes"},
     "providers": [{"name", "title", "peer", "available", "reason"}],
     "points": [{"point": {Point fields}, "bytes", "flops", "floor_s": {"memory", "matmul"},
                 "oracle", "results": {provider: RESULT}}]}

RESULT is ``{"status": "ok", "variant", "detail", "timing": {"median_s", "p10_s", "p90_s",
"reps", "graphed", "note"}, "worst_error_ratio", "memory_floor_fraction",
"matmul_floor_fraction", "variants"}`` or ``{"status": "failed" | "error" | "unsupported" |
"missing", "reason", "variants"}``. Every registered provider has a RESULT at every point.
"""

from __future__ import annotations

import datetime
import importlib
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Optional

SCHEMA = "relaycore-bench/1"
STATUSES = ("ok", "failed", "error", "unsupported", "missing")
_TOP = ("schema", "mode", "environment", "ceilings", "timing", "providers", "points")
_ENV = ("card", "driver", "cuda", "torch", "triton", "flashinfer", "relaycore", "python", "commit", "date")
_POINT = ("point", "bytes", "flops", "floor_s", "oracle", "results")
_OK = ("variant", "detail", "timing", "worst_error_ratio", "memory_floor_fraction", "matmul_floor_fraction", "variants")
_TIMING = ("median_s", "p10_s", "p90_s", "reps", "graphed", "note")


def _version(module: str) -> str:
    try:
        return str(importlib.import_module(module).__version__)
    except Exception as exc:  # missing or broken: say which
        return f"missing ({type(exc).__name__})"


def _command(*argv: str) -> Optional[str]:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip().splitlines()[0] if done.stdout.strip() else None


def environment(device) -> dict:
    """The card, driver and library versions of this run, and the date (UTC). The commit is
    ``$RELAYCORE_COMMIT`` where set (a copy of the tree without ``.git``), else git's."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        card = torch.cuda.get_device_name(dev)
        driver = _command("nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader") or "unknown"
    else:
        card = f"CPU ({platform.processor() or platform.machine()}), no CUDA GPU"
        driver = "none"
    return {
        "card": card,
        "driver": driver,
        "cuda": str(torch.version.cuda),
        "torch": torch.__version__,
        "triton": _version("triton"),
        "flashinfer": _version("flashinfer"),
        "relaycore": _version("relaycore"),
        "python": platform.python_version(),
        "commit": os.environ.get("RELAYCORE_COMMIT")
        or _command("git", "-C", str(Path(__file__).resolve().parent), "rev-parse", "--short", "HEAD") or "unknown",
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def _require(obj: dict, keys, where: str) -> None:
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected an object, got {type(obj).__name__}")
    missing = [k for k in keys if k not in obj]
    if missing:
        raise ValueError(f"{where}: missing keys {missing}")


def validate_results(doc: dict) -> dict:
    """Check a results document against the schema above; returns it unchanged.

    Raises:
        ValueError: naming the first place that does not match.
    """
    _require(doc, _TOP, "results")
    if doc["schema"] != SCHEMA:
        raise ValueError(f"results.schema: expected {SCHEMA!r}, got {doc['schema']!r}")
    _require(doc["environment"], _ENV, "results.environment")
    _require(doc["ceilings"], ("copy_bytes_per_s", "matmul_flops_per_s"), "results.ceilings")
    names = []
    for i, prov in enumerate(doc["providers"]):
        _require(prov, ("name", "title", "peer", "available", "reason"), f"results.providers[{i}]")
        names.append(prov["name"])
    for i, entry in enumerate(doc["points"]):
        where = f"results.points[{i}]"
        _require(entry, _POINT, where)
        _require(entry["floor_s"], ("memory", "matmul"), f"{where}.floor_s")
        absent = [n for n in names if n not in entry["results"]]
        if absent:
            raise ValueError(f"{where}.results: every provider must be reported, missing {absent}")
        for name, res in entry["results"].items():
            rw = f"{where}.results.{name}"
            _require(res, ("status",), rw)
            if res["status"] not in STATUSES:
                raise ValueError(f"{rw}.status: expected one of {list(STATUSES)}, got {res['status']!r}")
            if res["status"] == "ok":
                _require(res, _OK, rw)
                _require(res["timing"], _TIMING, f"{rw}.timing")
            else:
                _require(res, ("reason",), rw)
    return doc


def save(doc: dict, path) -> Path:
    """Validate and write ``doc`` as indented JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(validate_results(doc), indent=1) + "\n")
    return path


def load(path) -> dict:
    """Read and validate a results file."""
    return validate_results(json.loads(Path(path).read_text()))
