#!/usr/bin/env bash
# The GPU test suite of the Triton fast path, in one command on the GPU machine:
#   bash scripts/gpu_suite.sh [OUT_DIR]     (default $OUT, else ./gpu-logs)
# 1. pytest -m gpu tests/gpu  (the property suite at real sizes, fp16/bf16/fp32, NaN-poisoned
#    outputs, 100 bitwise reruns, batch invariance 1..256, paged = ragged, CUDA graphs)
# 2. compute-sanitizer memcheck on a sample of shapes (tests/gpu/sanitize_sample.py)
# 3. decode and append timings against SDPA (tests/gpu/perf_decode.py)
# Logs and JSON lines go to OUT_DIR. Exit status: non-zero if 1 or 2 failed.
# Narrower runs: PYTEST_K=<expr> selects tests (pytest -k), SKIP_SANITIZER=1, SKIP_PERF=1,
# PERF_GRID=decode|append|all. The whole suite takes longer than one device call allows:
# scripts/gpu_parts.sh runs it in three parts that each fit one.
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
LOGS="${1:-${OUT:-$ROOT/gpu-logs}}"
mkdir -p "$LOGS"
export PYTHONUNBUFFERED=1

source "$ROOT/scripts/mapped_site.sh" "$ROOT"
export PYTHONPATH="$PYTHONPATH:$ROOT/tests"
cd "$RELAYCORE_SITE"  # so that the repository's relaycore/ is not imported in place of the mapped one

{
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
  date -u
} 2>&1 | tee "$LOGS/environment.txt"

status=0
python3 -m pytest -m gpu -q -p no:cacheprovider -c "$ROOT/pyproject.toml" --rootdir "$ROOT" "$ROOT/tests/gpu" \
  ${PYTEST_K:+-k "$PYTEST_K"} 2>&1 | tee "$LOGS/pytest_gpu.txt" || status=1
if [ "${SKIP_SANITIZER:-0}" != 1 ]; then
  # without torch's caching allocator, so that a tensor ends where its allocation does: a store or
  # load a few bytes past it is then outside every allocation, and memcheck reports it
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 \
  compute-sanitizer --tool memcheck --error-exitcode 1 python3 "$ROOT/tests/gpu/sanitize_sample.py" 2>&1 \
    | tee "$LOGS/sanitizer.txt" || status=1
fi
if [ "${SKIP_PERF:-0}" != 1 ]; then
  python3 "$ROOT/tests/gpu/perf_decode.py" "$LOGS" "${PERF_GRID:-all}" 2>&1 | tee "$LOGS/perf.txt"
fi
echo "gpu suite status: $status" | tee -a "$LOGS/environment.txt"
exit $status
