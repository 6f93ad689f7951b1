#!/usr/bin/env bash
# The GPU benchmark of issue 12, from the repository root on a machine with a CUDA GPU and the project's venv:
#   benchmarks/gpu.sh [--slices 300] [--classes 8] [--skip-oom] [--check]
# Prints encoder slices/s (fp32, bf16, fp16), a 512 x 512 x 300 CT with 8 classes from its file (target < 10 s),
# peak GPU memory and the out-of-memory fallback under a forced cap. Exits 2 with one line when something is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}   # PYTHON=... picks another interpreter
[ -x "$PYTHON" ] || PYTHON=$(command -v python3 || true)
if [ -z "$PYTHON" ]; then
    echo "gpu.sh: no Python found (.venv/bin/python or python3)" >&2
    exit 2
fi
export PYTHONPATH="Logic${PYTHONPATH:+:$PYTHONPATH}"
exec timeout 600 "$PYTHON" benchmarks/bench_gpu.py "$@"
