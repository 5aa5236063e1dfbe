#!/usr/bin/env bash
# The GPU checks, in one run on a machine with a CUDA GPU (BENCHMARKS.md, "On a GPU"):
#   1. the test suite with --device cuda (the training tests train, resume and load on the GPU);
#   2. each stage's steps/s at the paper's batch sizes (tools/perf/bench_speed.py --device cuda), beside the
#      authors' code when REFERENCE points at a copy of github.com/thu-ml/SRPO;
#   3. the README's five commands in a fresh folder, where `--device auto` picks the GPU, with their wall times;
#   4. data-parallel training under torchrun on the GPUs (nccl).
# Usage: OUT=folder [REFERENCE=path] [PYTHON=python3] bash scripts/gpu_check.sh
# The project's dependencies must be importable by $PYTHON (the package itself is taken from src/).
# Every part has its own time limit, so one that hangs cannot take the others' results with it.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-gpu-check}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
PY=${PYTHON:-python3}
export PYTHONPATH=$ROOT/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $PY -c "import sys, torch; print('torch', torch.__version__, '|', torch.cuda.get_device_name(0), '| python', sys.version.split()[0])"
  nproc; } > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"

echo "== 1. tests, --device cuda"
start=$SECONDS
# Each worker gets its share of the cores: 8 workers of torch's default 16 threads each ran the suite into
# the ground (2026-11-27, H200 machine: not finished in 330 s).
WORKERS=${WORKERS:-4}
extra=()
if $PY -c "import xdist" 2>/dev/null; then extra+=(-n "$WORKERS"); else WORKERS=1; fi
$PY -c "import pytest_timeout" 2>/dev/null && extra+=(--timeout 280)
# SIGINT at the limit, not SIGTERM: pytest then still prints the failures it has seen (2026-11-27's runs,
# cut by SIGTERM, came back with counts but no messages).
OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( $(nproc) / WORKERS ))} timeout -s INT -k 30 "${TEST_TIMEOUT:-300}" \
    $PY -m pytest tests --device cuda "${extra[@]}" -p no:cacheprovider -q -rfE --durations 10 \
    > "$OUT/tests.log" 2>&1
echo "tests rc=$? in $((SECONDS - start)) s"
tail -n 25 "$OUT/tests.log"

echo "== 2. steps/s, --device cuda"
start=$SECONDS
timeout "${BENCH_TIMEOUT:-240}" $PY tools/perf/bench_speed.py --device cuda ${REFERENCE:+--reference "$REFERENCE"} \
    --rounds "${ROUNDS:-2}" > "$OUT/bench.txt" 2> "$OUT/bench.err"
echo "bench rc=$? in $((SECONDS - start)) s"
cat "$OUT/bench.txt"
tail -n 5 "$OUT/bench.err"

echo "== 3. the README's commands, --device auto"
demo=$(mktemp -d)
export DEMO=$demo PY OUT
timeout "${DEMO_TIMEOUT:-150}" bash -c '
  cd "$DEMO" && export MINARI_DATASETS_PATH=$DEMO/minari
  srpo() { $PY -c "import sys; from srpo_cli.cli import app; sys.argv[0] = \"srpo\"; app()" "$@"; }
  for cmd in "fetch" "pretrain-behavior" "pretrain-critic" "extract --beta 0.05" "eval --episodes 10"; do
    t0=$SECONDS
    srpo $cmd 2>> "$OUT/demo.err" || { echo "srpo $cmd failed: rc=$?"; exit 1; }
    echo "srpo $cmd: $((SECONDS - t0)) s"
  done' > "$OUT/demo.txt" 2>&1
echo "demo rc=$?"
cat "$OUT/demo.txt"
tail -n 3 "$OUT/demo.err"

echo "== 4. data-parallel training under torchrun, --device cuda"
# One rank per visible GPU (nccl needs a GPU per rank); with one GPU this checks the nccl path and rank 0's
# writing (the 2-rank equality checks run on the CPU in tests/train/test_distributed.py).
ddp=$(mktemp -d)
GPUS=$($PY -c "import torch; print(torch.cuda.device_count())")
( cd "$ddp" && export MINARI_DATASETS_PATH=$ddp/minari
  timeout "${DDP_TIMEOUT:-150}" $PY -m torch.distributed.run --nproc-per-node "$GPUS" -m srpo_cli pretrain-critic \
      --device cuda --run-dir gpu --steps 2000 --batch-size 256 -q --json > "$OUT/ddp.json" 2> "$OUT/ddp.err"
  echo "torchrun on $GPUS GPU(s): rc=$?" ) | tee "$OUT/ddp.txt"
grep -E '"steps_per_s"|"step"' "$OUT/ddp.json"
