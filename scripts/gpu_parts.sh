#!/usr/bin/env bash
# The GPU test suite in parts that each fit one call of the device tool (under 600 s on an H200),
# and the host-time runs against FlashInfer:
#   bash scripts/gpu_parts.sh 1      graph/fused/streams tests, the rest, the Gluon-tile tests (~330 s)
#   bash scripts/gpu_parts.sh 2      the oracle's single-pass tests, then compute-sanitizer (~340 s)
#   bash scripts/gpu_parts.sh 3      the other oracle tests, then every head dim (~400 s)
#   bash scripts/gpu_parts.sh gluon  after a change to the Gluon tile alone: every test of it, the graph
#                                    plans' and the drawn single-pass batches (> 360 s on a cold machine:
#                                    56 of them passed in 360 s there); the sanitizer is part 2's
#   bash scripts/gpu_parts.sh host   perf_host_call.py and perf_planning.py beside FlashInfer (~175 s;
#                                    carry .whl, from ../shared/gpu/peer_wheels.sh; set RELAYCORE_COMMIT)
# Parts 1-3 together are `bash scripts/gpu_suite.sh` without its timings (135 tests at 89653a7,
# times of 2026-11-29). Logs, `--durations` and JSON go to $OUT (default ./gpu-logs); each part
# stops itself before the tool's limit. Exit status: non-zero if a test, the sanitizer or a run failed.
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${OUT:-$ROOT/gpu-logs}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 OUT
part="${1:?usage: gpu_parts.sh 1|2|3|gluon|host}"
if [ "$part" = host ] && compgen -G "$ROOT/.whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$ROOT"/.whl/*.whl
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
source "$ROOT/scripts/mapped_site.sh" "$ROOT"
export PYTHONPATH="$PYTHONPATH:$ROOT/tests"
cd "$RELAYCORE_SITE"  # so that the repository's relaycore/ is not imported in place of the mapped one

status=0
# the parts of `pytest -m gpu tests/gpu`, by keyword
HEAD_DIMS="not_a_power_of_two or every_head_dim"
GRAPHS="graph or fused or streams"
tests() {  # tests NAME LIMIT_S EXPR
  local start=$SECONDS
  timeout "$2" python3 -m pytest -m gpu -q -p no:cacheprovider -c "$ROOT/pyproject.toml" --rootdir "$ROOT" \
    "$ROOT/tests/gpu" -k "$3" --durations=40 > "$OUT/pytest_$1.txt" 2>&1 || status=1
  tail -n 45 "$OUT/pytest_$1.txt"
  echo "part $1: $((SECONDS - start)) s" | tee -a "$OUT/parts.txt"
}
sanitize() {  # the sample under compute-sanitizer's memcheck
  local start=$SECONDS
  # without torch's caching allocator, so that a store a few bytes past a tensor is outside
  # every allocation and memcheck reports it
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout 240 compute-sanitizer --tool memcheck --error-exitcode 1 \
    python3 "$ROOT/tests/gpu/sanitize_sample.py" > "$OUT/sanitizer.txt" 2>&1 || status=1
  tail -n 3 "$OUT/sanitizer.txt"
  echo "part sanitizer: $((SECONDS - start)) s" | tee -a "$OUT/parts.txt"
}
{
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
  date -u
} 2>&1 | tee -a "$OUT/environment.txt"
case "$part" in
  1)
    tests graphs 250 "$GRAPHS"
    tests rest 170 "not ($GRAPHS or oracle or hopper or $HEAD_DIMS)"
    tests hopper 90 "hopper and not ($GRAPHS or oracle or $HEAD_DIMS)" ;;
  2)
    tests oracle_single_pass 330 "oracle and single_pass and not ($GRAPHS or $HEAD_DIMS)"
    sanitize ;;
  3)
    tests oracle_rest 200 "oracle and not single_pass and not ($GRAPHS or $HEAD_DIMS)"
    tests head_dims 340 "$HEAD_DIMS" ;;
  gluon)
    tests gluon 560 "hopper or drawn_single_pass or $GRAPHS" ;;
  host)
    timeout 300 python3 "$ROOT/tests/gpu/perf_host_call.py" "$OUT" > "$OUT/perf_host_call.txt" 2>&1 || status=1
    grep -E 'per call|not timed|skipped' "$OUT/perf_host_call.txt"
    timeout 200 python3 "$ROOT/tests/gpu/perf_planning.py" "$OUT" 2>&1 | tee "$OUT/perf_planning.txt" || status=1 ;;
  *)
    echo "gpu_parts.sh: expected 1, 2, 3, gluon or host, got $part" >&2; exit 2 ;;
esac
echo "gpu parts $part status: $status" | tee -a "$OUT/environment.txt"
exit $status
