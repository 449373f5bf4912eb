"""``relaycore bench``: time relaycore against its peers and the physical floor.

    relaycore bench                          # the decode and append grids on the GPU (CPU comparison without one)
    relaycore bench --grid decode --quick    # the corners of the decode grid
    relaycore bench --point B=8,Hq=32,Hkv=8,D=128,prefix=2048,own=128
    relaycore bench report results.json      # plots and docs/benchmarks/index.md from a results file

Without a CUDA GPU it says so and runs a small CPU comparison (relaycore's PyTorch backend
against attention over the concatenated context, tiny shapes, under a minute on two cores).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from relaycore.bench import grids, providers, results

DEFAULT_JSON = "bench.json"
DEFAULT_REPORT_DIR = "docs/benchmarks"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n\n", 1)[1]
    parser.add_argument("action", nargs="?", choices=("run", "report"), default="run",
                        help="run the benchmark (default) or rebuild the report from a results file")
    parser.add_argument("results", nargs="?", help="report: the results JSON to read")
    parser.add_argument("--grid", action="append", choices=sorted(grids.GRIDS),
                        help="a named grid (repeatable; default: decode and append)")
    parser.add_argument("--quick", action="store_true", help="only the corners of each grid")
    parser.add_argument("--point", action="append", default=[], metavar="B=..,Hq=..,Hkv=..,D=..,prefix=..,own=..[,q=..]",
                        help="a custom point (repeatable; replaces the grids); q=own makes it an append")
    parser.add_argument("--providers", help=f"comma-separated subset of {[p.name for p in providers.REGISTRY]}")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else the CPU comparison)")
    parser.add_argument("--json", default=DEFAULT_JSON, help=f"where to write the results (default {DEFAULT_JSON})")
    parser.add_argument("--report-dir", default=None,
                        help=f"also write plots and index.md there (report action default: {DEFAULT_REPORT_DIR})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the inputs")


def main(args: argparse.Namespace) -> int:
    if args.action == "report":
        return _report(args)
    import torch

    from relaycore.bench import analysis, runner

    names = [n.strip() for n in args.providers.split(",")] if args.providers else None
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = providers.by_name(names)
        points = [grids.parse_point(text) for text in args.point]
    except ValueError as exc:
        print(f"relaycore bench: {exc}", file=sys.stderr)
        return 2
    if not points and device == "cpu":
        asked = " (the named grids need one)" if args.grid or args.quick else ""
        print(f"relaycore bench: no CUDA GPU here{asked}, so no peer comparison or floor that means anything "
              "for serving. Running the small CPU comparison instead: relaycore's PyTorch backend against "
              "attention over the concatenated context (torch SDPA), tiny shapes.", file=sys.stderr)
        points = grids.cpu_grid()
    elif not points:
        points = grids.select(tuple(args.grid or ("decode", "append")), args.quick)
    doc = runner.run_points(points, chosen, device, seed=args.seed, progress=runner.Progress(len(points)),
                            on_point=lambda partial: results.save(partial, args.json))
    print(analysis.table(doc))
    path = results.save(doc, args.json)
    print(f"results: {path}")
    if args.report_dir:
        from relaycore.bench import report

        for written in report.write(doc, Path(args.report_dir)):
            print(f"report: {written}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from relaycore.bench import report

    if not args.results:
        print("relaycore bench report: expected the results JSON to read, e.g. "
              "`relaycore bench report docs/benchmarks/bench.json`", file=sys.stderr)
        return 2
    doc = results.load(args.results)
    for written in report.write(doc, Path(args.report_dir or DEFAULT_REPORT_DIR)):
        print(f"report: {written}")
    return 0
