#!/usr/bin/env bash
# Set up a fresh machine for relaycore's tests, verification and docs.
# GPU users: install torch and triton your own way first; this keeps them.
set -euo pipefail
cd "$(dirname "$0")/.."

# torch/triton: a CPU build where no CUDA torch is installed (a bare `pip install torch`
# would pull a multi-GB CUDA build onto a machine with no GPU).
python3 -c "import torch" 2>/dev/null || python3 -m pip install -q "torch==2.13.0+cpu"
python3 -c "import triton" 2>/dev/null || python3 -m pip install -q "triton==3.7.1"
python3 -m pip install -q -e ".[test]"

# Headless Chromium for the docs test (tests/test_docs.py), from Debian's packages.
if ! command -v chromium >/dev/null 2>&1; then
  apt-get update -qq && apt-get install -y -qq chromium
fi
