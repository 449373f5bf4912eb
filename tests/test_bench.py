"""``relaycore bench`` on the CPU: the CPU comparison, the results schema, the report, the
correctness gate, how failing providers are reported, and the floor arithmetic."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from relaycore import cli  # noqa: E402
from relaycore.bench import analysis, floor, grids, results, runner, timing  # noqa: E402
from relaycore.bench.grids import Point  # noqa: E402
from relaycore.bench.problem import check, compute_oracle, make_problem  # noqa: E402
from relaycore.bench.providers import REGISTRY, Prepared, Provider, by_name  # noqa: E402

TINY = Point("cpu", 3, 4, 2, 16, 24, 8, 1)
TINY_APPEND = Point("cpu", 2, 4, 1, 16, 20, 6, 6)


@pytest.fixture
def fast_timer(monkeypatch):
    """Few replays: these tests check plumbing, not speed."""
    monkeypatch.setattr(timing, "MIN_REPS", 2)
    monkeypatch.setattr(timing, "MAX_REPS", 3)
    monkeypatch.setattr(timing, "WARMUP", 1)


def test_cpu_mode_runs_and_writes_a_valid_report(tmp_path, fast_timer, capsys):
    out = tmp_path / "b.json"
    assert cli.main(["bench", "--device", "cpu", "--json", str(out), "--report-dir", str(tmp_path / "rep")]) == 0
    captured = capsys.readouterr()
    assert "no CUDA GPU" in captured.err
    doc = results.load(out)
    assert doc["mode"] == "cpu" and len(doc["points"]) == len(grids.cpu_grid())
    assert 0 < doc["ceilings"]["call_s"] < doc["ceilings"]["copy_timing"]["median_s"]
    for entry in doc["points"]:
        assert entry["results"]["relaycore_torch"]["status"] == "ok"
        assert entry["results"]["sdpa"]["status"] == "ok"
        for name in ("relaycore_triton", "flex", "flashinfer_paged", "flashinfer_cascade"):
            assert entry["results"][name] == {"status": "missing", "reason": "needs a CUDA GPU", "variants": {}}
    assert "relaycore_torch" in captured.out and "missing: flex: needs a CUDA GPU" in captured.out
    page = (tmp_path / "rep" / "index.md").read_text()
    assert "CPU comparison" in page and "latency_cpu.png" in page
    assert (tmp_path / "rep" / "latency_cpu.png").stat().st_size > 0


def test_custom_point_and_provider_subset_from_the_command_line(tmp_path, fast_timer, capsys):
    out = tmp_path / "c.json"
    argv = ["bench", "--device", "cpu", "--json", str(out), "--providers", "relaycore_torch,sdpa",
            "--point", "B=2,Hq=4,Hkv=2,D=16,prefix=24,own=8", "--point", "B=2,Hq=4,Hkv=4,D=16,prefix=0,own=6,q=own"]
    assert cli.main(argv) == 0
    doc = results.load(out)
    assert [p["name"] for p in doc["providers"]] == ["relaycore_torch", "sdpa"]
    assert [(e["point"]["grid"], e["point"]["q_len"]) for e in doc["points"]] == [("custom", 1), ("custom", 6)]
    assert all(r["status"] == "ok" for e in doc["points"] for r in e["results"].values())
    assert cli.main(["bench", "--device", "cpu", "--providers", "nope"]) == 2
    assert "unknown ['nope']" in capsys.readouterr().err


def _fake_doc() -> dict:
    """A GPU-shaped results document with made-up times: relaycore 3x faster than the cascade,
    FlashInfer's paged kernel fastest at B=1, one provider missing."""
    points = grids.select(("decode", "append"), quick_only=True)
    doc = {
        "schema": results.SCHEMA, "mode": "gpu",
        "environment": {"card": "FakeCard 80GB", "driver": "1.0", "cuda": "13.0", "torch": "2.11", "triton": "3.6",
                        "flashinfer": "0.5.0", "relaycore": "0.1.0", "python": "3.12", "commit": "abc1234",
                        "date": "2026-11-27 00:00 UTC"},
        "ceilings": {"copy_bytes_per_s": 3e12, "matmul_flops_per_s": 7e14, "call_s": 5e-6, "copy_bytes": 1 << 30,
                     "matmul_n": 8192, "matmul_dtype": "bfloat16"},
        "timing": {"warmup": 3, "min_reps": 10, "max_reps": 200, "budget_s": 0.2, "cold_l2": True, "flush_bytes": 1},
        "providers": [{"name": p.name, "title": p.title, "peer": p.peer, "available": p.name != "flex",
                       "reason": None if p.name != "flex" else "import failed"} for p in REGISTRY],
        "points": [],
    }
    for p in points:
        fl = floor.floor_seconds(p, 3e12, 7e14)
        relay = 1.25 * max(fl.values()) + 2e-6
        times = {"relaycore_triton": relay, "relaycore_torch": 20 * relay, "sdpa": 4 * relay,
                 "flashinfer_cascade": 3 * relay, "flashinfer_paged": 0.5 * relay if p.batch == 1 else 2 * relay}
        res = {}
        for prov in REGISTRY:
            if prov.name == "flex":
                res["flex"] = {"status": "missing", "reason": "import failed", "variants": {}}
                continue
            t = times[prov.name]
            res[prov.name] = {"status": "ok", "variant": "default", "detail": "", "variants": {},
                              "timing": {"median_s": t, "p10_s": t, "p90_s": t, "reps": 10, "graphed": True, "note": ""},
                              "worst_error_ratio": 0.01, "memory_floor_fraction": fl["memory"] / t,
                              "matmul_floor_fraction": fl["matmul"] / t}
        doc["points"].append({"point": p.to_dict(), "bytes": floor.min_bytes(p), "flops": floor.flops(p),
                              "floor_s": fl, "oracle": "fake", "results": res})
    return results.validate_results(doc)


def test_report_and_judgement_from_a_fake_results_file(tmp_path):
    src = tmp_path / "fake.json"
    src.write_text(json.dumps(_fake_doc()))
    assert cli.main(["bench", "report", str(src), "--report-dir", str(tmp_path / "docs")]) == 0
    files = {p.name for p in (tmp_path / "docs").iterdir()}
    assert files == {"bench.json", "latency_decode.png", "latency_append.png", "speedup.png", "floor.png", "index.md"}
    page = (tmp_path / "docs" / "index.md").read_text()
    assert "FakeCard 80GB" in page and "flashinfer 0.5.0".lower() in page.lower()
    verdicts = {j.target.split(":")[1].strip()[:20]: j.verdict for j in analysis.judge(_fake_doc())}
    assert verdicts == {
        "geometric-mean speed": "met",          # 3x over the cascade everywhere
        "never under 0.9x the": "not met",       # FlashInfer paged is 2x faster at B=1
        ">= 50% of the HBM fl": "met",           # relay = 1.25 x floor + 2 µs is >= 50% at large points
        ">= 0.8x the best pee": "met",
    }
    assert "**not met**" in page and "The paper's model" in page


def test_the_floor_target_also_reports_the_larger_of_the_two_floors():
    doc = _fake_doc()
    (hbm,) = [j for j in analysis.judge(doc) if "HBM floor" in j.target]
    large = [e for e in doc["points"] if e["point"]["grid"] == "decode" and e["point"]["batch"] >= 32
             and e["point"]["prefix_len"] >= 8192]
    relay = [e["results"]["relaycore_triton"]["timing"]["median_s"] for e in large]
    lowest = min(max(e["floor_s"].values()) / t for e, t in zip(large, relay))
    by_matmul = sum(e["floor_s"]["matmul"] > e["floor_s"]["memory"] for e in large)
    assert (f"against the larger of the memory and matmul floors, lowest {100 * lowest:.0f}%" in hbm.detail
            and f"larger at {by_matmul} of {len(large)} points" in hbm.detail), hbm.detail


def test_the_floor_target_reports_what_one_launch_could_reach_after_the_call_cost():
    doc = _fake_doc()
    large = [e for e in doc["points"] if e["point"]["grid"] == "decode" and e["point"]["batch"] >= 32
             and e["point"]["prefix_len"] >= 8192]
    # by hand: memory / (larger floor + call), the call cost measured with the ceilings
    reach = [e["floor_s"]["memory"] / (max(e["floor_s"].values()) + 5e-6) for e in large]
    assert all(0 < r < 1 for r in reach)
    assert [analysis.attainable(e, 5e-6) for e in large] == reach
    (hbm,) = [j for j in analysis.judge(doc) if "HBM floor" in j.target]
    under = sum(r < 0.5 for r in reach)
    assert (f"one call costs 5.0 µs here before it moves data, so one launch at the copy and matmul rates would "
            f"reach at most {100 * min(reach):.0f}%" in hbm.detail
            and f"under 50% at {under} of {len(large)} points" in hbm.detail), hbm.detail
    # half the memory floor, less the call, is the time left for the bytes and the FLOPs
    mem = max(e["floor_s"]["memory"] / (2 * e["floor_s"]["memory"] - 5e-6) for e in large)
    mma = max(e["floor_s"]["matmul"] / (2 * e["floor_s"]["memory"] - 5e-6) for e in large)
    assert f"50% asks for up to {100 * mem:.0f}% of the copy rate" in hbm.detail, hbm.detail
    assert f"and {100 * mma:.0f}% of the matmul rate" in hbm.detail, hbm.detail
    del doc["ceilings"]["call_s"]  # a results file from before the call cost was measured
    (hbm,) = [j for j in analysis.judge(doc) if "HBM floor" in j.target]
    assert "one call costs" not in hbm.detail


def test_schema_requires_every_provider_at_every_point():
    doc = _fake_doc()
    del doc["points"][0]["results"]["sdpa"]
    with pytest.raises(ValueError, match=r"points\[0\].results: every provider must be reported, missing \['sdpa'\]"):
        results.validate_results(doc)
    doc = _fake_doc()
    doc["points"][1]["results"]["sdpa"]["status"] = "fast"
    with pytest.raises(ValueError, match="status: expected one of"):
        results.validate_results(doc)
    doc = _fake_doc()
    del doc["environment"]["card"]
    with pytest.raises(ValueError, match=r"environment: missing keys \['card'\]"):
        results.validate_results(doc)


def _raising(problem):
    def setup():
        raise RuntimeError("kernel exploded")

    yield "only", setup


def _wrong(problem):
    def setup():
        out = problem.q.to(torch.float32) * 0 + 1  # not attention: fails the gate
        return Prepared(lambda: out, lambda o: (o, None), False)

    yield "only", setup


def test_providers_that_raise_fail_or_are_missing_are_reported_not_dropped(fast_timer):
    torch_backend = by_name(["relaycore_torch"])
    broken = [
        Provider("raises", "raises", True, False, lambda: None, _raising),
        Provider("wrong", "wrong", True, False, lambda: None, _wrong),
        Provider("absent", "absent", True, False, lambda: "import absentlib failed: ModuleNotFoundError", _raising),
    ]
    doc = runner.run_points([TINY, TINY_APPEND], torch_backend + broken, "cpu")
    results.validate_results(doc)
    assert [p["available"] for p in doc["providers"]] == [True, True, True, False]
    for entry in doc["points"]:
        r = entry["results"]
        assert r["relaycore_torch"]["status"] == "ok"
        assert r["raises"]["status"] == "error" and "RuntimeError: kernel exploded" in r["raises"]["reason"]
        assert r["wrong"]["status"] == "failed" and "outside the error bound" in r["wrong"]["reason"]
        assert "timing" not in r["wrong"]
        assert r["absent"] == {"status": "missing", "reason": "import absentlib failed: ModuleNotFoundError",
                               "variants": {}}
    table = analysis.table(doc)
    assert "FAILED" in table and "error" in table and "missing: absent" in table


@pytest.mark.parametrize("point", [TINY, TINY_APPEND, Point("cpu", 2, 4, 4, 16, 0, 5, 3)])
def test_gate_passes_the_torch_backend_and_catches_wrong_outputs(point):
    import relaycore

    problem = make_problem(point, "cpu", seed=3)
    oracle = compute_oracle(problem)
    assert oracle.crosscheck.startswith("passed")
    got = relaycore.relay_attention(*problem.relay_arguments(), softmax_scale=problem.scale, backend="torch")
    assert check(oracle, got.out, got.lse).passed
    off = got.out.clone()
    off[-1, 0, 0] = oracle.out[-1, 0, 0] + 2 * oracle.out_bound[-1, 0, 0] + 1e-2  # outside the bound there
    verdict = check(oracle, off, got.lse)
    assert not verdict.passed and verdict.worst > 1 and f"out[{off.shape[0] - 1}, 0, 0]" in verdict.message
    assert not check(oracle, torch.full_like(got.out, float("nan"))).passed
    assert not check(oracle, got.out, (oracle.lse + 2 * oracle.lse_bound).float()).passed


def test_a_point_without_a_proved_lse_bound_is_checked_on_its_outputs(monkeypatch):
    """Past ``rho = 2`` (about 2e5 keys at ``default_steps``) ``bounds.lse_bound`` refuses: the
    oracle then has no lse bound, and the gate compares the outputs alone."""
    import relaycore
    from relaycore import bounds

    real = bounds.lse_bound

    def refused_past_float64(ref_lse, num_keys, score_abs, head_dim, prec, steps=None):
        if prec.dtype != "float64":  # the point's precision; the cross-check runs in float64
            raise bounds.NoBound("num_keys, steps: expected rho <= 2 for the lse bound")
        return real(ref_lse, num_keys, score_abs, head_dim, prec, steps)

    problem = make_problem(TINY, "cpu", seed=3)
    got = relaycore.relay_attention(*problem.relay_arguments(), softmax_scale=problem.scale, backend="torch")
    monkeypatch.setattr(bounds, "lse_bound", refused_past_float64)
    oracle = compute_oracle(problem)
    assert oracle.lse_bound is None and oracle.crosscheck.startswith("passed")
    assert check(oracle, got.out, got.lse + 1.0).passed  # the lse is not compared
    off = got.out.clone()
    off[0, 0, 0] += 1.0
    assert not check(oracle, off, got.lse).passed


def test_floor_counts_bytes_and_flops_by_hand():
    p = Point("append", 2, 4, 2, 8, 10, 5, 3)  # 2 requests, 10-token prefix, 5 own tokens, 3 queries
    e = 2
    kv = 2 * (10 + 2 * 5) * 2 * 8 * e  # K and V, prefix once, own once per request
    q_out = 2 * (2 * 3) * 4 * 8 * e
    assert floor.min_bytes(p) == kv + q_out
    # query j (0..2) sees 10 prefix keys and own keys 0..(5 - 3 + j): 3, 4, 5
    seen = sum(10 + (5 - 3 + j + 1) for j in range(3))
    assert floor.keys_seen(p) == 2 * seen
    assert floor.flops(p) == 4 * 8 * 4 * 2 * seen
    fl = floor.floor_seconds(p, bandwidth=1e3, matmul_rate=1e4)
    assert fl == {"memory": (kv + q_out) / 1e3, "matmul": 4 * 8 * 4 * 2 * seen / 1e4}
    for b, s, c in itertools.product((1, 8, 128), (512, 16384), (128,)):
        assert floor.paper_speedup(s, c, b) == pytest.approx((s + c + 2) / (s / b + c + 7))
    assert floor.paper_speedup(2048, 128, 1) < 1 < floor.paper_speedup(2048, 128, 8)


def test_keys_seen_matches_the_masks_of_the_oracle():
    for p in (TINY, TINY_APPEND):
        t = np.arange(p.own_len)[None, :]
        j = np.arange(p.q_len)[:, None]
        own = int((t <= p.own_len - p.q_len + j).sum())
        assert floor.keys_seen(p) == p.batch * (p.q_len * p.prefix_len + own)


def test_grids_and_custom_points():
    assert len(grids.decode_grid()) == 40 and len(grids.append_grid()) == 16
    assert {(p.num_q_heads, p.num_kv_heads) for p in grids.decode_grid()} == {(32, 32), (32, 8)}
    assert all(p.q_len == p.own_len for p in grids.append_grid())
    quick = grids.select(("decode", "append"), quick_only=True)
    assert 0 < len(quick) < 20 and {p.grid for p in quick} == {"decode", "append"}
    p = grids.parse_point("B=8,Hq=32,Hkv=8,D=128,prefix=2048,own=128,q=own")
    assert (p.batch, p.num_kv_heads, p.prefix_len, p.q_len, p.dtype) == (8, 8, 2048, 128, "float16")
    with pytest.raises(ValueError, match="keys"):
        grids.parse_point("B=8,Hq=32")
    with pytest.raises(ValueError, match="num_kv_heads"):
        grids.parse_point("B=8,Hq=32,Hkv=5,D=128,prefix=2048,own=128")
    with pytest.raises(ValueError, match="expected an integer"):
        grids.parse_point("B=x,Hq=32,Hkv=8,D=128,prefix=2048,own=128")


def test_targets_are_not_judged_without_relaycore_timings():
    doc = _fake_doc()
    for entry in doc["points"]:
        entry["results"]["relaycore_triton"] = {"status": "failed", "reason": "out of bound", "variants": {}}
    assert {j.verdict for j in analysis.judge(doc)} == {"not judged"}
    assert all(r["measured"] is None for r in analysis.paper_rows(doc))


def test_timing_summary_and_progress_lines():
    t = timing.summarize([5.0, 1.0, 3.0, 2.0, 4.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0], graphed=True)
    assert (t.median_s, t.p10_s, t.p90_s, t.reps, t.graphed) == (6.0, 2.0, 10.0, 11, True)
    import io

    stream = io.StringIO()
    bar = runner.Progress(2, stream=stream, width=4)
    bar.step("first")
    bar.step("second")
    assert stream.getvalue() == "[##..] 1/2 first\n[####] 2/2 second\n"


TRITON_PROVIDER_SCRIPT = """
from relaycore.bench import providers
from relaycore.bench.grids import Point
from relaycore.bench.problem import check, compute_oracle, make_problem
for point in (Point("cpu", 2, 4, 2, 16, 40, 20, 1), Point("cpu", 2, 4, 4, 16, 32, 20, 20)):
    problem = make_problem(point, "cpu")
    oracle = compute_oracle(problem)
    for name, setup in providers.by_name(["relaycore_triton"])[0].variants(problem):
        prepared = setup()
        print("passed" if check(oracle, *prepared.result(prepared.fn())).passed else "failed")
"""


def test_the_triton_provider_call_path_runs_under_the_interpreter():
    """The bench calls the Triton backend the way a serving engine does (plan once, then
    ``relay_attention(plan=)``); on the CPU the interpreter runs that same path."""
    pytest.importorskip("triton")
    run = subprocess.run([sys.executable, "-c", TRITON_PROVIDER_SCRIPT], capture_output=True, text=True, timeout=600,
                         env=dict(os.environ, TRITON_INTERPRET="1"))
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.split() == ["passed", "passed"]


# ---------------------------------------------------------------------------------------------
# The host's side: the committed host_call.json and planning.json, their figures and the
# serving guide's tables of them (relaycore.bench.host)

BENCHMARKS = os.path.join(os.path.dirname(__file__), os.pardir, "docs", "benchmarks")
SERVING = os.path.join(os.path.dirname(__file__), os.pardir, "docs", "guide", "serving.md")


def _table_rows(text: str, header_start: str):
    """The body rows of the first markdown table whose header starts with ``header_start``,
    as lists of cells."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_host_figures_are_drawn_from_the_committed_results(tmp_path):
    from relaycore.bench import host

    for name in ("host_call.json", "planning.json"):
        (tmp_path / name).write_text(open(os.path.join(BENCHMARKS, name)).read())
    for path in host.figures(tmp_path):
        assert path.stat().st_size > 10_000, path


def test_results_files_name_their_card_versions_commit_and_date():
    from relaycore.bench import host

    for name in ("host_call.json", "planning.json"):
        env = host.load(os.path.join(BENCHMARKS, name))["environment"]
        for key in ("card", "driver", "torch", "triton", "flashinfer", "commit", "date"):
            assert env.get(key), (name, key)


def test_results_file_without_its_keys_is_refused(tmp_path):
    from relaycore.bench import host

    path = tmp_path / "host_call.json"
    path.write_text(json.dumps({"what": "", "rows": []}))
    with pytest.raises(ValueError, match="'environment'"):
        host.load(path)


def test_the_serving_guide_shows_the_committed_host_times():
    from relaycore.bench import host

    text = open(SERVING).read()
    doc = host.load(os.path.join(BENCHMARKS, "host_call.json"))
    medians = {(host.call_label(r["point"]), r["provider"], r["variant"]): r["host_us"] for r in doc["rows"]}
    rows = _table_rows(text, "| point | relaycore | FlashInfer cascade |")
    assert len(rows) == len({label for label, _, _ in medians})
    for cells in rows:
        for cell, key in zip(cells[1:5], host.CALL_PROVIDERS):
            assert cell == f"{medians[(cells[0], *key)]:.0f}", (cells[0], key)
        relay, cascade = ([r[0] for r in row["rounds"]] for key in list(host.CALL_PROVIDERS)[:2] for row in doc["rows"]
                          if host.call_label(row["point"]) == cells[0] and (row["provider"], row["variant"]) == key)
        ratios = [a / b for a, b in zip(relay, cascade)]
        assert cells[5] == f"{min(ratios):.2f}–{max(ratios):.2f}", cells[0]


def test_the_serving_guide_shows_the_committed_planning_times():
    from relaycore.bench import host

    text = open(SERVING).read()
    doc = host.load(os.path.join(BENCHMARKS, "planning.json"))
    rows = _table_rows(text, "| batch | metadata | `prepare` |")
    assert len(rows) == len(doc["rows"]) // 2  # one line per (batch, metadata): idle / busy in each cell
    where = {"on the GPU": "gpu", "on the host": "host"}
    for cells in rows:
        measured = {r["gpu"]: r for r in doc["rows"] if r["batch"] == int(cells[0]) and r["metadata"] == where[cells[1]]}
        for cell, (key, _, _) in zip(cells[2:], host.PLANNING_CALLS):
            assert cell == f"{measured['idle'][key]:.2f} / {measured['busy'][key]:.2f}", (cells[:2], key)


def test_the_committed_page_is_the_report_of_the_committed_results():
    """``docs/benchmarks/index.md`` is what ``report.markdown`` writes from ``bench.json``, so a
    change to the report's text (such as how it says FlashInfer's split-KV decode is priced: its
    chunks cut from each request's first key, Lemma 12) reaches the committed page too."""
    from relaycore.bench import report

    doc = json.loads(open(os.path.join(BENCHMARKS, "bench.json")).read())
    figures = [name for name in os.listdir(BENCHMARKS) if name.endswith(".png")]
    page = report.markdown(doc, figures)
    assert page == open(os.path.join(BENCHMARKS, "index.md")).read()
    assert 'blocked_steps(chunk=C, chunk_from="request", groups=...)' in page
