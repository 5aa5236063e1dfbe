"""Behavior-model training steps/s at small batches, fp32 against bf16 autocast, for a given thread count.

    python tools/perf/bench_behavior_threads.py --threads 1
    python tools/perf/bench_behavior_threads.py --threads 2
    python tools/perf/bench_behavior_threads.py --threads 1 --batches 256 --n-blocks 2 --block-expansion 1

This is how the bench presets' choice was made: on a 2-core CPU with AMX, bf16 on one thread is nearly as
fast as on two, so the behavior model trains in bf16 on one core while the critic trains on the other. On a
CPU without AVX512-BF16 or AMX, bf16 is emulated and many times slower (the stages then train in fp32).
"""

from __future__ import annotations

import argparse
import time

import torch

from srpo_cli.config import BehaviorConfig
from srpo_cli.nn.diffusion import ScoreNet, VPSchedule, eps_loss
from srpo_cli.train.device import tune_malloc


def steps_per_s(batch: int, bf16: bool, seconds: float, cfg: BehaviorConfig) -> float:
    tune_malloc()  # the allocator tuning every srpo stage runs with
    torch.manual_seed(0)
    net = ScoreNet.from_config(11, 3, cfg)  # Hopper's dims, the stage's network (fused Mish)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-4, weight_decay=0.01)
    schedule, gen = VPSchedule(0.1, 20.0), torch.Generator().manual_seed(0)
    s, a = torch.randn(batch, 11), torch.rand(batch, 3) * 2 - 1

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = eps_loss(net, schedule, a, s, 1e-3, 1.0, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(5):
        step()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        step()
        n += 1
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    ap.add_argument("--batches", default="256,1024")
    ap.add_argument("--seconds", type=float, default=4.0, help="timing window per measurement")
    ap.add_argument("--n-blocks", type=int, default=BehaviorConfig.n_blocks, help="behavior.n_blocks")
    ap.add_argument(
        "--block-expansion", type=int, default=BehaviorConfig.block_expansion, help="behavior.block_expansion"
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = BehaviorConfig(n_blocks=args.n_blocks, block_expansion=args.block_expansion)
    print(
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}"
    )
    for batch in (int(b) for b in args.batches.split(",")):
        fp32 = steps_per_s(batch, False, args.seconds, cfg)
        bf16 = steps_per_s(batch, True, args.seconds, cfg)
        print(f"batch {batch:5d}: fp32 {fp32:6.1f} steps/s, bf16 {bf16:6.1f} steps/s ({bf16 / fp32:.2f}x)")


if __name__ == "__main__":
    main()
