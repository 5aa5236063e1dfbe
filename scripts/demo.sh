#!/usr/bin/env bash
# Set up (if needed) and run the main job: the whole SRPO pipeline on the built-in default dataset,
# in ./demo (a fresh run directory and a private Minari store), ending with the comparison table.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
mkdir -p demo
cd demo
export MINARI_DATASETS_PATH="$PWD/minari"
srpo fetch
srpo pretrain-behavior
srpo pretrain-critic
srpo extract --beta 0.05
srpo eval --episodes 10
srpo pipeline
