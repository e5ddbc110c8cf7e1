#!/usr/bin/env bash
# Create .venv (if missing) and install act-diagnostics with its test extras.
# torch is pinned by .ci/constraints.txt to the CPU build (no multi-GB CUDA download).
# The install is editable, so code changes need none: it runs again only when pyproject.toml,
# .ci/constraints.txt or the checkout's location changed (a stamp in .venv holds their hash).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
STAMP=.venv/.act-diagnostics-setup
want=$({ cat pyproject.toml .ci/constraints.txt; pwd; } | "$PY" -c 'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())')
if [ -x .venv/bin/python ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
    exit 0
fi
if [ ! -x .venv/bin/python ]; then
    echo "setting up .venv (first run only: a few minutes) ..." >&2
    "$PY" -m venv .venv
else
    echo "updating .venv to match pyproject.toml and .ci/constraints.txt ..." >&2
fi
. .venv/bin/activate

# pip --quiet still prints warnings; drop only one kind, which names an index location that a pip
# configuration outside this project lists but that does not exist. Errors and other warnings stay.
pip_install() {
    python -m pip install --quiet "$@" 2> >(grep -v -E "^WARNING: Location '.*' is ignored: it is neither a file nor a directory\.$" >&2)
}
pip_install --upgrade pip
pip_install -c .ci/constraints.txt torch
# setuptools' note on editable installs ("folders in your working directory with the same name as
# your package may take precedence") is for packages that write such a folder; the report folder is
# named act-diagnostics, which cannot be imported.
PYTHONWARNINGS="ignore:Editable installation" pip_install -c .ci/constraints.txt -e ".[dev]"
echo "$want" > "$STAMP"
