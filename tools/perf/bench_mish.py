"""The behavior net's Mish, eager against fused (``behavior.fused_mish``), alone and in the training step.

    python tools/perf/bench_mish.py [--rounds 5]

Prints, for fp32 and bf16: one Mish forward and backward on a 2048x1024 tensor (the shape of each block's
inner layer at the paper's batch of 2048), eager (our one-exp form, several element-wise passes) against the
two inductor-compiled kernels; then the behavior stage's training step at batch 2048 with ``fused_mish`` off
and on. Best of --rounds timings each, the variants alternating so that the machine's noise hits both.
The first fused call compiles the kernels (seconds; excluded from the timings).
"""

from __future__ import annotations

import argparse
import time

import torch
from bench_speed import random_transitions  # tools/perf/, beside this script

from srpo_cli import config
from srpo_cli.algos.behavior import BehaviorStage
from srpo_cli.nn import diffusion


def best_ms(fn, n: int, rounds: int) -> float:
    for _ in range(2):
        fn()
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t0) / n)
    return best * 1e3


def mish_ms(fused: bool, dtype: torch.dtype, rounds: int) -> float:
    x = (torch.randn(2048, 1024) * 3).to(dtype).requires_grad_()
    g = torch.randn(2048, 1024).to(dtype)

    def fwd_bwd() -> None:
        diffusion.mish(x, fused).backward(g)

    return best_ms(fwd_bwd, 20, rounds)


def behavior_stage(fused: bool, bf16: bool) -> BehaviorStage:
    data = random_transitions(torch.device("cpu"))  # bench_speed's random Hopper-sized data
    cfg = config.RunConfig()
    cfg.behavior.bf16, cfg.behavior.fused_mish = bf16, fused
    return BehaviorStage(cfg, data, torch.device("cpu"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    print(f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    for dtype in (torch.float32, torch.bfloat16):
        eager, fused = [], []
        for _ in range(args.rounds):  # alternate, one timing each, so that slow minutes hit both
            eager.append(mish_ms(False, dtype, 1))
            fused.append(mish_ms(True, dtype, 1))
        name = str(dtype).removeprefix("torch.")
        print(f"Mish 2048x1024 {name}, forward + backward: eager {min(eager):.2f} ms, fused {min(fused):.2f} ms")
    for bf16 in (False, True):
        stages = {fused: behavior_stage(fused, bf16) for fused in (False, True)}
        best = {False: 0.0, True: 0.0}
        for _ in range(args.rounds):
            for fused, stage in stages.items():
                best[fused] = max(best[fused], 1e3 / best_ms(stage.step, 4, 1))
        name = "bf16 autocast" if bf16 else "fp32"
        print(
            f"behavior step, batch 2048, {name}: fused_mish off {best[False]:.2f} steps/s, "
            f"on {best[True]:.2f} steps/s ({best[True] / best[False]:.2f}x)"
        )


if __name__ == "__main__":
    main()
