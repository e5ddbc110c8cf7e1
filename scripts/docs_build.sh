#!/usr/bin/env bash
# Build the documentation site into site/ with `mkdocs build --strict`: any broken link, missing
# page, nav entry or API reference fails the build. Needs the docs extra: pip install -e ".[docs]".
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -f .venv/bin/activate ]; then . .venv/bin/activate; fi
NO_MKDOCS_2_WARNING=1 python -m mkdocs build --strict --clean --site-dir "${1:-site}"
