"""SRPO's maths at a glance: a two-dimensional bandit, as in the paper's toy figure.

    python examples/bandit_figure.py                   # docs/bandit.png, about two minutes on 2 cores
    python examples/bandit_figure.py --fast --out x.png

One state, two-dimensional actions. The data come from four clusters of actions; the reward grows toward
the top right, beyond the data. SRPO's actor follows the critic's gradient (weighted by beta) and the behavior
model's score, which pulls it back toward the data. At a small beta the score term dominates, and a
deterministic actor regularized over every noise level settles between the clusters, near the data's mean (the
score of the heavily noised data points there); at a middle beta it sits on the best cluster, the policy SRPO
is after; at a large beta it leaves the data for the action bound, where the critic extrapolates highest. Each
dot is one actor (one seed); behind them, the data and the learned critic's contours.

Everything runs through srpo's Python API on an in-memory dataset: no Minari store, no files besides the
run directory and the PNG.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import srpo_cli as srpo  # noqa: E402
from srpo_cli.data.transitions import Transitions  # noqa: E402

CENTERS = np.array([[-0.6, -0.6], [-0.6, 0.6], [0.6, -0.6], [0.6, 0.6]], dtype=np.float32)


def reward(a: np.ndarray) -> np.ndarray:
    """Higher toward the top right, past the data's best cluster (0.6, 0.6)."""
    return a[..., 0] + a[..., 1]


def bandit_data(n: int, seed: int = 0) -> Transitions:
    rng = np.random.default_rng(seed)
    a = CENTERS[rng.integers(0, 4, n)] + 0.08 * rng.standard_normal((n, 2)).astype(np.float32)
    a = np.clip(a, -1, 1).astype(np.float32)
    r = reward(a).astype(np.float32)
    zeros = torch.zeros(n, 1)
    return Transitions(
        dataset_id="toy/bandit-v0",
        observations=zeros,
        actions=torch.from_numpy(a),
        rewards=torch.from_numpy(r),
        next_observations=zeros.clone(),
        terminals=torch.ones(n),  # one step: Q is the reward
        episode_returns=r.astype(np.float64),
        action_low=-np.ones(2, dtype=np.float32),
        action_high=np.ones(2, dtype=np.float32),
    )


def train(run: Path, betas: list[float], seeds: int, fast: bool) -> dict[float, np.ndarray]:
    data = bandit_data(4096 if fast else 20_000)
    cfg = srpo.RunConfig(dataset="toy/bandit-v0", run_dir=str(run))
    cfg.behavior.steps, cfg.critic.steps, cfg.extract.steps = (400, 400, 250) if fast else (3000, 2000, 1000)
    cfg.behavior.batch_size, cfg.behavior.hidden_dim, cfg.behavior.dropout = 256, 128, 0.0
    cfg.critic.reward_mode = "none"
    cfg.extract.lr_schedule = "constant"
    device = torch.device("cpu")
    srpo.train_stage("behavior", cfg, data, run, device, quiet=True)
    srpo.train_stage("critic", cfg, data, run, device, quiet=True)
    actions = {}
    for beta in betas:
        points = []
        for seed in range(seeds):
            sub = run / f"beta{beta:g}-seed{seed}"
            sub.mkdir(parents=True, exist_ok=True)
            for name in ("behavior.safetensors", "critic.safetensors"):
                if not (sub / name).exists():
                    os.link(run / name, sub / name)
            cfg.extract.beta, cfg.seed = beta, seed
            srpo.train_stage("extract", cfg, data, sub, device, quiet=True)
            policy = srpo.load_actor_policy(sub / "actor.safetensors")
            points.append(policy(np.zeros(1, dtype=np.float32)))
        actions[beta] = np.array(points)
    return actions, data


def draw(actions: dict[float, np.ndarray], data: Transitions, run: Path, out: Path) -> Path:
    from srpo_cli.algos.loading import load_critic

    q, _, _, _ = load_critic(run / "critic.safetensors", torch.device("cpu"))
    grid = np.linspace(-1, 1, 81, dtype=np.float32)
    gx, gy = np.meshgrid(grid, grid)
    a = torch.from_numpy(np.stack([gx.ravel(), gy.ravel()], 1))
    with torch.no_grad():
        qv = q(torch.zeros(len(a), 1), a).mean(0).view(81, 81).numpy()
    fig, axes = plt.subplots(1, len(actions), figsize=(4.2 * len(actions), 4.2), sharey=True)
    sample = data.actions[:: max(1, data.size // 2000)].numpy()
    for ax, (beta, pts) in zip(np.atleast_1d(axes), actions.items(), strict=True):
        cs = ax.contour(gx, gy, qv, levels=12, cmap="viridis", linewidths=0.8)
        ax.clabel(cs, fontsize=6)
        ax.scatter(sample[:, 0], sample[:, 1], s=2, c="0.6", alpha=0.4, label="data (behavior)")
        ax.scatter(pts[:, 0], pts[:, 1], s=60, c="crimson", edgecolors="k", zorder=3, label="SRPO actor (one per seed)")
        ax.set_title(f"beta = {beta:g}")
        ax.set_xlim(-1.05, 1.05)
        ax.set_ylim(-1.05, 1.05)
        ax.set_aspect("equal")
        ax.set_xlabel("action 1")
    np.atleast_1d(axes)[0].set_ylabel("action 2")
    np.atleast_1d(axes)[0].legend(loc="lower right", fontsize=7)
    fig.suptitle("SRPO on a 2-D bandit: Q contours (learned critic), data, and the extracted actor")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> dict[float, np.ndarray]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("docs/bandit.png"))
    ap.add_argument("--betas", default="0.01,0.1,2")
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--fast", action="store_true", help="test-sized training (a few seconds)")
    args = ap.parse_args(argv)
    betas = [float(b) for b in args.betas.split(",")]
    run = Path(tempfile.mkdtemp(prefix="srpo-bandit-"))
    try:
        actions, data = train(run, betas, args.seeds, args.fast)
        out = draw(actions, data, run, args.out)
    finally:
        shutil.rmtree(run, ignore_errors=True)
    for beta, pts in actions.items():
        print(f"beta {beta:g}: actor actions {np.round(pts, 2).tolist()}")
    print(f"wrote {out}")
    return actions


if __name__ == "__main__":
    main()
