#!/usr/bin/env bash
# `relaycore bench` on a GPU machine: both issue-3 grids (decode, append), every provider, the
# card's ceilings; writes bench.json, the figures and index.md (the page docs/benchmarks/index.md)
# into $OUT (default ./.bench-out), plus log.txt. Copy them to docs/benchmarks/ and commit.
#
# Run from anywhere; extra arguments go to `relaycore bench` (e.g. --quick, --grid decode). The
# bench stops after $BENCH_TIMEOUT_S seconds (default 560) and still writes the report of the
# points it measured. On an H200 the quick corners (12 points) took 3 minutes, FlashInfer's JIT
# included.
# FlashInfer (the strongest peer) is installed from the wheels in .whl/ when present: fetch them
# with ../shared/gpu/peer_wheels.sh and carry .whl to the machine. It JIT-compiles its kernels
# the first time (about 90 s). Set RELAYCORE_COMMIT where the tree has no .git.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="$(mkdir -p "${OUT:-$root/.bench-out}" && cd "${OUT:-$root/.bench-out}" && pwd)"

if compgen -G "$root/.whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$root"/.whl/*.whl
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
if ! (cd /tmp && python3 -c "import relaycore.fast, relaycore.reference") 2>/dev/null; then
  source "$root/scripts/mapped_site.sh" "$root"
fi
# the commit, marked "+changes" where tracked files differ from it (a copy of the tree whose
# .git is older than its files: pass RELAYCORE_COMMIT=<the commit you copied> instead)
head="$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [ "$head" != unknown ] && [ -n "$(git -C "$root" status --porcelain --untracked-files=no 2>/dev/null)" ]; then
  head="$head+changes"
fi
export RELAYCORE_COMMIT="${RELAYCORE_COMMIT:-$head}"
export PYTHONUNBUFFERED=1

cd /tmp  # not the repository root: there `relaycore` would be the bare contract directory
{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,temperature.gpu --format=csv || true
  status=0
  # results are saved after every point; if the run is cut short, report the points measured
  timeout "${BENCH_TIMEOUT_S:-560}" python3 -m relaycore bench --json "$out/bench.json" --report-dir "$out" "$@" \
    || status=$?
  if [ "$status" -ne 0 ] && [ -f "$out/bench.json" ]; then
    echo "relaycore bench stopped (exit $status): report from the points measured so far"
    python3 -m relaycore bench report "$out/bench.json" --report-dir "$out"
  fi
  exit "$status"
} 2>&1 | tee "$out/log.txt"
