#!/usr/bin/env bash
# Create .venv (if missing) and install act-diagnostics with its test extras.
# torch is pinned by .ci/constraints.txt to the CPU build (no multi-GB CUDA download).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
python -m pip install --quiet -c .ci/constraints.txt torch
python -m pip install --quiet -c .ci/constraints.txt -e ".[dev]"
