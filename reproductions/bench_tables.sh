#!/usr/bin/env bash
# Rebuild BENCHMARKS.md's D4RL-style table: every bench/* dataset at its preset, seeds 0-2, SRPO at the preset's
# beta and at 0 and 0.01 from the same pretraining, the diffusion, AWR and BC baselines, the Q / score balance,
# each stage's training time and the action latency. One `srpo sweep`: stages run as soon as a CPU and their
# inputs are free; an interrupted run continues where it stopped (finished stages are reused).
#
#   MINARI_DATASETS_PATH=.bench-data/minari bash reproductions/bench_tables.sh     # then OUT/sweep.md
#
# Variables: DATASETS (comma-separated), SEEDS (0-2), BETAS (preset,0,0.01), THREADS (all CPUs),
# OUT (.bench-data/sweeps/bench); further arguments go to `srpo sweep` (e.g. --set eval.episodes=20).
# The datasets come from the D4RL-style generator described in BENCHMARKS.md ("How to reproduce").
set -euo pipefail
DATASETS=${DATASETS:-bench/hopper/medium-v0,bench/halfcheetah/medium-v0,bench/hopper/medium-expert-v0,bench/halfcheetah/medium-expert-v0}
threads=()
if [ -n "${THREADS:-}" ]; then threads=(--threads "$THREADS"); fi
srpo sweep --datasets "$DATASETS" --seeds "${SEEDS:-0-2}" --betas "${BETAS:-preset,0,0.01}" \
    --diffusion --latency --out "${OUT:-.bench-data/sweeps/bench}" "${threads[@]}" "$@"
