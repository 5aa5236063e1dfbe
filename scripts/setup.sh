#!/usr/bin/env bash
# Create .venv and install srpo with its test tools. torch is pinned to the release whose CPU wheel the
# project's machines hold locally (an unpinned torch pulls a multi-GB CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -d .venv ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q "torch==2.13.0" -e ".[dev]"
