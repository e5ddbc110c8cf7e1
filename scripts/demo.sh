#!/usr/bin/env bash
# Set up (idempotent) and run the demo: flawed models train, warnings print, TensorBoard logs are written.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
act-diagnostics demo "$@"
