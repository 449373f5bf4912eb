"""Numbers derived from a results document: ratios, the issue-3 targets, the paper's model.

Everything here reads the JSON alone, so the terminal table, the report and the plots all say
the same thing about the same file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from relaycore.bench.floor import BYTES_PER_ELEMENT, paper_speedup
from relaycore.bench.providers import CASCADE, PER_REQUEST, RELAY


def seconds(entry: dict, name: str) -> Optional[float]:
    """Median time of provider ``name`` at a point, or ``None`` when it has none."""
    res = entry["results"].get(name)
    return res["timing"]["median_s"] if res and res["status"] == "ok" else None


def peers(doc: dict) -> List[str]:
    """Names of the peer providers (not relaycore's own)."""
    return [p["name"] for p in doc["providers"] if p["peer"]]


def best_peer(doc: dict, entry: dict) -> Tuple[Optional[str], Optional[float]]:
    """The fastest peer that passed the gate at this point, and its time."""
    timed = [(seconds(entry, n), n) for n in peers(doc) if seconds(entry, n) is not None]
    if not timed:
        return None, None
    t, n = min(timed)
    return n, t


def speedup(entry: dict, over: str, of: str = RELAY) -> Optional[float]:
    """``time(over) / time(of)``: how many times faster ``of`` is than ``over``."""
    a, b = seconds(entry, over), seconds(entry, of)
    return a / b if a is not None and b is not None else None


def geomean(xs: List[float]) -> float:
    return math.exp(sum(math.log(x) for x in xs) / len(xs))


@dataclass
class Judgement:
    """One issue-3 speed target and whether the results meet it.

    Attributes:
        target: the target in words.
        verdict: ``"met"``, ``"not met"`` or ``"not judged"`` (the points or providers it
            needs were not measured).
        detail: the numbers behind the verdict.
    """

    target: str
    verdict: str
    detail: str


def _grid(doc: dict, name: str) -> List[dict]:
    return [e for e in doc["points"] if e["point"]["grid"] == name]


def _where(entry: dict) -> str:
    p = entry["point"]
    new = f" new={p['q_len']}" if p["q_len"] > 1 else ""
    return f"B={p['batch']} Hkv={p['num_kv_heads']} prefix={p['prefix_len']}{new}"


def _no_worse_than(doc: dict, points: List[dict], factor: float, target: str) -> Judgement:
    ratios, missing = [], []
    for e in points:
        _, t_peer = best_peer(doc, e)
        t = seconds(e, RELAY)
        if t is None or t_peer is None:
            missing.append(_where(e))
        else:
            ratios.append((t_peer / t, e))
    if not ratios:
        return Judgement(target, "not judged", "no point where relaycore and a peer were both timed")
    worst, e = min(ratios, key=lambda r: r[0])
    below = [f"{_where(x)}: {r:.2f}x" for r, x in ratios if r < factor]
    detail = f"worst {worst:.2f}x the best peer at {_where(e)} ({len(ratios)} points)"
    if below:
        detail += "; below target at " + ", ".join(below)
    if missing:
        detail += f"; {len(missing)} points not comparable ({', '.join(missing[:4])}{'...' if len(missing) > 4 else ''})"
    verdict = "met" if not below and not missing else ("not met" if below else "not judged")
    return Judgement(target, verdict, detail)


def _larger_floor(points: List[dict]) -> str:
    """What the HBM-floor target's points reach of the larger of their two floors (memory or
    matmul): with grouped-query attention the matmul floor can be the larger, and then even a
    kernel at the matmul rate reaches only ``memory floor / matmul floor`` of the memory floor.
    Reported beside the target, which stays as the issue states it."""
    pairs = [(e["results"][RELAY].get("memory_floor_fraction"), e["results"][RELAY].get("matmul_floor_fraction"), e)
             for e in points]
    pairs = [(m, k, e) for m, k, e in pairs if m is not None and k is not None]
    if not pairs:
        return ""
    f, e = min(((max(m, k), e) for m, k, e in pairs), key=lambda x: x[0])
    by_matmul = sum(k > m for m, k, _ in pairs)
    return (f"; against the larger of the memory and matmul floors, lowest {100 * f:.0f}% at {_where(e)} (the "
            f"matmul floor is the larger at {by_matmul} of {len(pairs)} points)")


def attainable(entry: dict, call_s: float) -> float:
    """The most of a point's memory floor that any provider can reach in a benchmark whose calls
    cost ``call_s`` before they move data (``timing.ceilings``): one launch that moves the bytes
    at the copy rate and multiplies at the matmul rate, ``memory / (max(memory, matmul) +
    call_s)``."""
    fl = entry["floor_s"]
    return fl["memory"] / (max(fl["memory"], fl["matmul"]) + call_s)


def _share(entry: dict, kind: str, call_s: float) -> float:
    """The share of the ``kind`` rate (copy or matmul) a call needs to reach 50% of the memory
    floor after paying ``call_s`` (``inf`` when the call's cost alone is twice the floor)."""
    budget = 2 * entry["floor_s"]["memory"] - call_s
    return entry["floor_s"][kind] / budget if budget > 0 else math.inf


def _within_reach(points: List[dict], call_s: Optional[float]) -> str:
    """Beside the HBM-floor target: the call's cost, what ``attainable`` is at worst, and the
    rates 50% asks for: a call at half the memory floor that still pays ``call_s`` must move
    its bytes at ``memory / (2 memory - call_s)`` of the copy rate and multiply at ``matmul /
    (2 memory - call_s)`` of the matmul rate (older results documents carry no ``call_s``)."""
    if call_s is None or not points:
        return ""
    reach = [(attainable(e, call_s), e) for e in points]
    f, e = min(reach, key=lambda x: x[0])
    under = sum(r < 0.5 for r, _ in reach)
    mem, at_mem = max(((_share(x, "memory", call_s), x) for x in points), key=lambda y: y[0])
    mm, at_mm = max(((_share(x, "matmul", call_s), x) for x in points), key=lambda y: y[0])
    return (f"; one call costs {call_s * 1e6:.1f} µs here before it moves data, so one launch at the copy and "
            f"matmul rates would reach at most {100 * f:.0f}% at {_where(e)}, and under 50% at {under} of "
            f"{len(reach)} points; 50% asks for up to {100 * mem:.0f}% of the copy rate (at {_where(at_mem)}) "
            f"and {100 * mm:.0f}% of the matmul rate (at {_where(at_mm)})")


def judge(doc: dict) -> List[Judgement]:
    """The issue-3 speed targets, judged from a results document."""
    decode, append = _grid(doc, "decode"), _grid(doc, "append")
    out = []

    t1 = "decode: geometric-mean speedup >= 2x over FlashInfer's cascade wrapper for B >= 8"
    pts = [e for e in decode if e["point"]["batch"] >= 8]
    ups = [speedup(e, CASCADE) for e in pts]
    if not pts or any(u is None for u in ups):
        out.append(Judgement(t1, "not judged", f"{sum(u is not None for u in ups)} of {len(pts)} points have both timings"))
    else:
        g = geomean(ups)
        out.append(Judgement(t1, "met" if g >= 2 else "not met",
                             f"geometric mean {g:.2f}x over {len(ups)} points (min {min(ups):.2f}x, max {max(ups):.2f}x)"))

    out.append(_no_worse_than(doc, decode, 0.9, "decode: never under 0.9x the best peer at any point, B = 1 included")
               if decode else Judgement("decode: never under 0.9x the best peer", "not judged", "no decode points"))

    t3 = "decode: >= 50% of the HBM floor for B >= 32 and prefix >= 8192"
    pts = [e for e in decode if e["point"]["batch"] >= 32 and e["point"]["prefix_len"] >= 8192]
    fr = [(e["results"][RELAY].get("memory_floor_fraction"), e) for e in pts if RELAY in e["results"]]
    fr = [(f, e) for f, e in fr if f is not None]
    if not pts or len(fr) < len(pts):
        out.append(Judgement(t3, "not judged", f"{len(fr)} of {len(pts)} points timed"))
    else:
        f, e = min(fr, key=lambda x: x[0])
        detail = (f"lowest {100 * f:.0f}% at {_where(e)}; mean {100 * sum(x for x, _ in fr) / len(fr):.0f}% "
                  f"over {len(fr)} points")
        detail += _larger_floor(pts) + _within_reach(pts, doc["ceilings"].get("call_s"))
        out.append(Judgement(t3, "met" if f >= 0.5 else "not met", detail))

    j = _no_worse_than(doc, append, 0.8, "append: >= 0.8x the best peer at every point") if append \
        else Judgement("append: >= 0.8x the best peer at every point", "not judged", "no append points")
    mm = [e["results"][RELAY]["matmul_floor_fraction"] for e in append
          if e["results"].get(RELAY, {}).get("status") == "ok"]
    if mm:
        j.detail += f"; relaycore reaches {100 * min(mm):.0f}-{100 * max(mm):.0f}% of the measured matmul rate"
    out.append(j)
    return out


def paper_rows(doc: dict) -> List[Dict]:
    """The paper's predicted speedup of relay over a per-request kernel beside the measured
    ``time(FlashInfer paged) / time(relaycore)`` at every decode point."""
    rows = []
    for e in _grid(doc, "decode"):
        p = e["point"]
        t_per_request = seconds(e, PER_REQUEST)
        # what the per-request kernel would read with no cache: every request its whole context
        unshared = 2 * p["batch"] * (p["prefix_len"] + p["own_len"]) * p["num_kv_heads"] * p["head_dim"] \
            * BYTES_PER_ELEMENT[p["dtype"]]
        rows.append({
            "where": _where(e),
            "batch": p["batch"], "num_kv_heads": p["num_kv_heads"], "prefix_len": p["prefix_len"],
            "predicted": paper_speedup(p["prefix_len"], p["own_len"], p["batch"]),
            "measured": speedup(e, PER_REQUEST),
            "per_request_apparent_bw": None if t_per_request is None else unshared / t_per_request,
        })
    return rows


def fmt_us(t: Optional[float]) -> str:
    return "—" if t is None else (f"{t * 1e6:.0f}" if t >= 1e-4 else f"{t * 1e6:.1f}")


def cell(entry: dict, name: str) -> str:
    """A provider's table cell: microseconds, or what happened instead."""
    res = entry["results"].get(name)
    if res is None:
        return "—"
    if res["status"] == "ok":
        return fmt_us(res["timing"]["median_s"]) + ("" if res["timing"]["graphed"] else "*")
    return {"failed": "FAILED", "error": "error", "unsupported": "n/a", "missing": "missing"}[res["status"]]


def subject(doc: dict) -> str:
    """The relaycore provider a run is about: Triton on a GPU, the PyTorch backend on the CPU."""
    return RELAY if doc["mode"] == "gpu" else "relaycore_torch"


def rate(x: float, unit: str) -> str:
    """``3.1 TB/s``, ``250 GFLOP/s``: a rate with a readable prefix."""
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M")):
        if x >= scale:
            return f"{x / scale:.3g} {prefix}{unit}/s"
    return f"{x:.3g} {unit}/s"


def table(doc: dict) -> str:
    """A plain-text table: one row per point, µs per provider, relaycore's ratios and floor."""
    names = [p["name"] for p in doc["providers"]]
    relay = subject(doc)
    head = ["point"] + names + ["x cascade", "x best peer", "mem floor", "mma floor"]
    rows = []
    for e in doc["points"]:
        p = e["point"]
        label = f"{p['grid'][:3]} B={p['batch']} {p['num_q_heads']}/{p['num_kv_heads']} s={p['prefix_len']} " \
                f"{'n' if p['q_len'] > 1 else 'c'}={p['q_len'] if p['q_len'] > 1 else p['own_len']}"
        up = speedup(e, CASCADE, relay)
        _, t_peer = best_peer(doc, e)
        t = seconds(e, relay)
        res = e["results"].get(relay, {})
        rows.append([label] + [cell(e, n) for n in names] + [
            "—" if up is None else f"{up:.2f}",
            "—" if t is None or t_peer is None else f"{t_peer / t:.2f}",
            "—" if res.get("status") != "ok" else f"{100 * res['memory_floor_fraction']:.0f}%",
            "—" if res.get("status") != "ok" else f"{100 * res['matmul_floor_fraction']:.0f}%",
        ])
    widths = [max(len(str(r[i])) for r in [head] + rows) for i in range(len(head))]
    lines = ["  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in [head] + rows]
    env, ceil = doc["environment"], doc["ceilings"]
    lines.insert(1, "-" * len(lines[0]))
    lines.append(f"µs, median; * = not in a CUDA graph; ratios and floors are {relay}'s. {env['card']}; copy "
                 f"{rate(ceil['copy_bytes_per_s'], 'B')}, {ceil['matmul_dtype']} matmul "
                 f"{rate(ceil['matmul_flops_per_s'], 'FLOP')} (measured in this run).")
    for p in doc["providers"]:
        if not p["available"]:
            lines.append(f"missing: {p['name']}: {p['reason']}")
    return "\n".join(lines)
