"""The host's side of serving: what a call and a step's planning cost the CPU, against the peers.

Two results files, written on the GPU machine and committed beside the other benchmarks:

* ``host_call.json`` (``tests/gpu/perf_host_call.py``): the host wall time of one eager call
  with a plan made beforehand, per point and provider, every round kept (``rows[i]["rounds"]``:
  ``[wall_us, cpu_us]`` per round; ``host_us`` is the median wall time);
* ``planning.json`` (``tests/gpu/perf_planning.py``): the host wall time of planning a decode
  step, relaycore's ``prepare`` and ``GraphPlan.update`` beside FlashInfer's ``plan``, with the
  metadata on the GPU or the host and the GPU idle or busy (``rows[i]``: ``batch``,
  ``metadata``, ``gpu`` and one ``<call>_ms`` per call timed).

Each file is ``{"what", "environment", "rows"}``; ``environment`` names the card, the versions,
the commit and the date. ``figures(directory)`` draws ``host_call.png`` and ``planning.png``
from them (``python3 -m relaycore.bench.host docs/benchmarks``), which
``docs/guide/serving.md`` shows.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Dict, List

from relaycore.bench.report import STYLE, _pyplot

#: The providers of ``host_call.json`` drawn, in order, with their labels.
CALL_PROVIDERS = {
    ("relaycore_triton", "paged"): "relaycore (Triton)",
    ("flashinfer_cascade", "default"): "FlashInfer cascade",
    ("flashinfer_paged", "default"): "FlashInfer paged",
    ("sdpa", "flash_attention"): "SDPA (flash)",
}

#: The calls of ``planning.json`` drawn, in order: ``(key, label, colour)``.
PLANNING_CALLS = (
    ("prepare_ms", "relaycore prepare", STYLE["relaycore_triton"][0]),
    ("update_ms", "relaycore GraphPlan.update", "tab:pink"),
    ("flashinfer_cascade_plan_ms", "FlashInfer cascade plan", STYLE["flashinfer_cascade"][0]),
    ("flashinfer_paged_plan_ms", "FlashInfer paged plan", STYLE["flashinfer_paged"][0]),
)

#: The panels of ``planning.png``: ``(metadata, gpu, title)``.
PLANNING_PANELS = (
    ("host", "idle", "metadata on the host, GPU idle"),
    ("host", "busy", "metadata on the host, 3 ms queued on the GPU"),
    ("gpu", "busy", "metadata on the GPU, 3 ms queued on the GPU"),
)


def load(path: Path) -> dict:
    """A results file of this module.

    Raises:
        ValueError: naming the file and the first key missing.
    """
    doc = json.loads(Path(path).read_text())
    for key in ("what", "environment", "rows"):
        if key not in doc:
            raise ValueError(f"{path}: expected the key {key!r} (a results file of relaycore.bench.host)")
    return doc


def _title(doc: dict, what: str) -> str:
    env = doc["environment"]
    stack = [f"torch {env['torch']}", f"triton {env['triton']}",
             f"FlashInfer {env['flashinfer']}" if env.get("flashinfer") else None]
    return f"{what}\n" + " · ".join([env["card"], *filter(None, stack)]) + f"\n{env['date']} · commit {env['commit']}"


def call_label(point: dict) -> str:
    """A point of ``host_call.json`` as the figure and the docs name it."""
    size = f"B {point['batch']}" if point["q_len"] == 1 else f"B {point['batch']} × {point['q_len']}"
    return f"{point['grid']}, {size}, Hkv {point['num_kv_heads']}, prefix {point['prefix_len']}"


def call_figure(doc: dict, path: Path) -> Path:
    """Host µs per call at each point: a bar per provider at its median, a dot per round (the
    host's speed drifts within a run; the dots show how far)."""
    plt = _pyplot()
    points: List[dict] = []
    for row in doc["rows"]:
        if row["point"] not in points:
            points.append(row["point"])
    by_key: Dict = {(tuple(sorted(r["point"].items())), r["provider"], r["variant"]): r for r in doc["rows"]}
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.9 * len(points)))
    height = 0.8 / len(CALL_PROVIDERS)
    for i, point in enumerate(points):
        for j, ((provider, variant), label) in enumerate(CALL_PROVIDERS.items()):
            row = by_key.get((tuple(sorted(point.items())), provider, variant))
            if row is None:
                continue
            y = i + (j - (len(CALL_PROVIDERS) - 1) / 2) * height
            colour = STYLE[provider][0]
            ax.barh(y, row["host_us"], height=height * 0.9, color=colour, alpha=0.75, label=label if i == 0 else None)
            ax.plot([r[0] for r in row["rounds"]], [y] * len(row["rounds"]), "|", color="black", markersize=5)
    ax.set_yticks(range(len(points)), [call_label(p) for p in points])
    ax.invert_yaxis()
    ax.set_xlabel("host wall time per call (µs); bar: median of the rounds, ticks: each round")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(_title(doc, "Host time of one eager call with a plan (lower is better)"), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def planning_figure(doc: dict, path: Path) -> Path:
    """Host ms to plan a decode step, per batch, one panel per situation of ``PLANNING_PANELS``."""
    plt = _pyplot()
    batches = sorted({row["batch"] for row in doc["rows"]})
    fig, axes = plt.subplots(1, len(PLANNING_PANELS), figsize=(4.2 * len(PLANNING_PANELS), 3.6), sharey=True)
    width = 0.8 / len(PLANNING_CALLS)
    for ax, (metadata, gpu, title) in zip(axes, PLANNING_PANELS):
        rows = {row["batch"]: row for row in doc["rows"] if row["metadata"] == metadata and row["gpu"] == gpu}
        for j, (key, label, colour) in enumerate(PLANNING_CALLS):
            xs = [i + (j - (len(PLANNING_CALLS) - 1) / 2) * width for i, b in enumerate(batches) if key in rows.get(b, {})]
            ys = [rows[b][key] for b in batches if key in rows.get(b, {})]
            ax.bar(xs, ys, width=width * 0.9, color=colour, alpha=0.75, label=label)
        ax.set_xticks(range(len(batches)), [f"B {b}" for b in batches])
        ax.set_title(title, fontsize=9)
    axes[0].set_ylabel("host wall time (ms)")
    axes[0].legend(fontsize=7, loc="upper left")
    fig.suptitle(_title(doc, "Planning a decode step (lower is better)"), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def figures(directory: Path) -> List[Path]:
    """``host_call.png`` and ``planning.png`` in ``directory``, from the results files there."""
    directory = Path(directory)
    return [call_figure(load(directory / "host_call.json"), directory / "host_call.png"),
            planning_figure(load(directory / "planning.json"), directory / "planning.png")]


if __name__ == "__main__":
    for written in figures(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/benchmarks")):
        print(f"wrote {written}")
