"""Compare behavior models by their eps loss on the same draws: which training setting fits the data better.

    python tools/diagnostics/behavior_loss.py --dataset bench/hopper/medium-v0 --models A/behavior.safetensors B/behavior.safetensors

The training loss in ``metrics/behavior.csv`` is one batch per row, each with its own t and noise, so two runs'
curves differ by sampling noise as much as by fit. Here every model sees the same --samples dataset pairs
(s, a) and, for each diffusion time t on a grid, the same noise z: the difference between two models' losses
is then their difference in fit, not in luck. Each model is evaluated with the weights extraction would use
(the moving average where the checkpoint has one). The last column is the mean over t uniform in
[0.02, 0.98], the range SRPO's regularizer samples.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from srpo_cli.algos.loading import load_behavior
from srpo_cli.data.transitions import load_transitions

T_GRID = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.98)


@torch.no_grad()
def losses(path: Path, s: torch.Tensor, a: torch.Tensor, zs: torch.Tensor, t_uniform: torch.Tensor) -> list[float]:
    """eps loss at each t of T_GRID (same z for every model), then at the per-sample uniform t."""
    net, schedule, _ = load_behavior(path, torch.device("cpu"))
    out = []
    for i, tv in enumerate((*T_GRID, None)):
        t = t_uniform if tv is None else torch.full((len(s),), tv)
        alpha, sigma = schedule.alpha_sigma(t)
        z = zs[i]
        total = 0.0
        for lo in range(0, len(s), 8192):  # chunks keep the 1024-wide activations small
            sl = slice(lo, lo + 8192)
            x = alpha[sl, None] * a[sl] + sigma[sl, None] * z[sl]
            total += ((net(x, s[sl], t[sl]) - z[sl]) ** 2).sum(-1).sum().item()
        out.append(total / len(s))
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--models", type=Path, nargs="+", required=True, help="behavior.safetensors files")
    ap.add_argument("--samples", type=int, default=50_000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    data = load_transitions(args.dataset)
    g = torch.Generator().manual_seed(args.seed)
    idx = torch.randint(0, data.size, (args.samples,), generator=g)
    s, a = data.observations[idx], data.actions[idx]
    zs = torch.randn((len(T_GRID) + 1, *a.shape), generator=g)
    t_uniform = torch.rand(len(s), generator=g) * 0.96 + 0.02
    print(
        f"eps loss on {args.samples:,} dataset pairs of {args.dataset} (same draws for every model; lower fits better)"
    )
    header = "| model | " + " | ".join(f"t={t:g}" for t in T_GRID) + " | t ~ U(0.02, 0.98) |"
    print(header)
    print("|---" * (len(T_GRID) + 2) + "|")
    for path in args.models:
        row = losses(path, s, a, zs, t_uniform)
        print(f"| {path} | " + " | ".join(f"{v:.4f}" for v in row) + " |")


if __name__ == "__main__":
    main()
