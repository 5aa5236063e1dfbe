#!/usr/bin/env bash
# Set up (if needed) and run the test suite. Extra arguments go to pytest, e.g. --device cuda.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
ruff check src tests tools reproductions examples
lint-imports  # the package's layers import only downward (pyproject.toml, docs/architecture.md)
python -m pytest "$@"
