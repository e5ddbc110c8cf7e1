#!/usr/bin/env bash
# Install what the model zoo (tests/zoo) needs into .venv (or $VENV), idempotently, with the
# project's CPU build of torch. Run scripts/setup.sh first (it creates .venv with torch and [dev]).
#
# - pip resolves the `zoo` extra: scikit-learn, transformers and timm's own dependencies.
# - timm goes in with --no-deps: it requires torchvision, and the torchvision wheels on the package
#   index are built against the CUDA torch (with the CPU torch their C++ ops do not load and
#   `import torchvision` fails). The zoo never needs torchvision: tests/zoo/conftest.py gives timm
#   a stand-in (tests/zoo/torchvision_stand_in.py) when the real one does not import.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
# The versions the zoo was written and checked against: it builds models by name and keyword, so a
# new release may change what it builds. The `zoo` extra itself accepts ranges.
TIMM_VERSION=1.0.31
ZOO_PINS=("transformers==5.25.0" "scikit-learn==1.9.1")
if [ ! -x "$VENV/bin/python" ]; then
    echo "zoo_setup: $VENV/bin/python not found; run scripts/setup.sh first (or set VENV)" >&2
    exit 1
fi
PIP=("$VENV/bin/python" -m pip install --quiet -c .ci/constraints.txt)
# Fast path on a second run: everything is there already.
if ! "$VENV/bin/python" -c "import sklearn, transformers, yaml, huggingface_hub, safetensors" >/dev/null 2>&1; then
    "${PIP[@]}" -e ".[zoo]" "${ZOO_PINS[@]}"
fi
if [ "$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("timm"))' 2>/dev/null)" != "$TIMM_VERSION" ]; then
    "${PIP[@]}" --no-deps "timm==$TIMM_VERSION"
fi
"$VENV/bin/python" - <<'PY'
import sys
sys.path.insert(0, "tests/zoo")
import torchvision_stand_in
how = torchvision_stand_in.install()
import sklearn, timm, torch, transformers
print(f"zoo ready: torch {torch.__version__}, timm {timm.__version__} (torchvision: {how}), transformers {transformers.__version__}, scikit-learn {sklearn.__version__}")
PY
