"""Probes of a run directory's behavior model and critic: what BENCHMARKS.md reports for hopper-medium.

    python tools/diagnostics/diagnose_run.py --dataset bench/hopper/medium-v0 --run runs/s0 [--bc runs/s0/bc.safetensors]

Prints (1) how much the critic's Q depends on the action: Q at the dataset's actions, at behavior samples, at
noisy and at uniformly random actions; (2) whether the behavior model uses the state: its eps loss with the
true states and with shuffled ones, at several t; (3) with --bc, where the SRPO score term alone (beta = 0,
noise baseline, w = sigma^2) wants the action: gradient descent on the action to the term's fixed point,
and its distance to the BC policy's action; (4) with --actors, where each policy acts: the critic's Q at its
actions, their distance to the dataset's, saturation and |dQ/da|. Everything on --samples dataset states, seeded.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from srpo_cli.act.policies import actor_module
from srpo_cli.algos.loading import load_behavior, load_critic
from srpo_cli.data.transitions import load_transitions
from srpo_cli.nn.diffusion import sample_actions
from srpo_cli.train.checkpoint import load_checkpoint


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--bc", type=Path, help="a bc.safetensors to compare the score term's fixed point with")
    ap.add_argument(
        "--actors",
        type=Path,
        nargs="*",
        default=[],
        help="policy checkpoints (actor, awr, bc) to place against the data",
    )
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)
    dev = torch.device("cpu")
    data = load_transitions(args.dataset)
    behavior, schedule, _ = load_behavior(args.run / "behavior.safetensors", dev)
    _, q_target, _, _ = load_critic(args.run / "critic.safetensors", dev)
    idx = torch.randint(0, data.size, (args.samples,))
    s, a = data.observations[idx], data.actions[idx]

    with torch.no_grad():
        drawn = sample_actions(behavior, schedule, s, 15)
        q = {
            "dataset actions": q_target(s, a).mean(0),
            "behavior samples (15 steps)": q_target(s, drawn).mean(0),
            "dataset actions + N(0, 0.3^2)": q_target(s, (a + 0.3 * torch.randn_like(a)).clamp(-1, 1)).mean(0),
            "uniform random actions": q_target(s, torch.rand_like(a) * 2 - 1).mean(0),
        }
    print("critic: mean target Q (mean of the twins)")
    for name, v in q.items():
        above = (v > q["dataset actions"]).float().mean()
        print(f"  {name:<32} {v.mean():9.3f}   rated above the dataset action in {100 * above:5.1f}% of states")

    print("behavior model: eps loss with the true states vs shuffled states")
    shuffled = s[torch.randperm(len(s))]
    with torch.no_grad():
        for tv in (0.02, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9):
            t = torch.full((len(s),), tv)
            alpha, sigma = schedule.alpha_sigma(t)
            z = torch.randn_like(a)
            x = alpha[:, None] * a + sigma[:, None] * z
            true = ((behavior(x, s, t) - z) ** 2).sum(-1).mean()
            shuf = ((behavior(x, shuffled, t) - z) ** 2).sum(-1).mean()
            print(f"  t={tv:.2f}: {true:8.4f} (true)  {shuf:8.4f} (shuffled)")

    if args.actors:
        # Where each policy acts relative to the data and the critic: a policy the critic rates above the
        # data's actions but that scores far below them in the environment is exploiting the critic's errors.
        def q_and_grad(actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            actions = actions.detach().requires_grad_(True)
            qv = q_target(s, actions).mean(0)
            (g,) = torch.autograd.grad(qv.sum(), actions)
            return qv.detach(), g

        print("policies on the same states: mean target Q, L2 distance to the dataset action, share of action")
        print("components beyond |0.99|, mean |dQ/da|")
        # the behavior model's own draws: does it reproduce the data's share of actions on the bounds?
        for name, acts in [("dataset actions", a), ("behavior samples (15 steps)", drawn)] + [
            (str(p), actor_module(load_checkpoint(p))(s).detach()) for p in args.actors
        ]:
            qv, g = q_and_grad(acts)
            sat = (acts.abs() > 0.99).float().mean()
            dist = (acts - a).norm(dim=-1).mean()
            print(
                f"  {name:<48} Q {qv.mean():8.3f}  dist {dist:.3f}  saturated {sat:.3f}  |dQ/da| {g.norm(dim=-1).mean():.2f}"
            )

    if args.bc:
        bc = actor_module(load_checkpoint(args.bc))
        s64, k = s[:64], 256
        with torch.no_grad():
            a_bc = bc(s64)
            act = a_bc.clone()
            for _ in range(200):
                sr, ar = s64.repeat_interleave(k, 0), act.repeat_interleave(k, 0)
                t = torch.rand(len(sr)) * 0.96 + 0.02
                alpha, sigma = schedule.alpha_sigma(t)
                z = torch.randn_like(ar)
                eps = behavior(alpha[:, None] * ar + sigma[:, None] * z, sr, t) - z
                force = (sigma[:, None] ** 2 * eps).view(len(s64), k, -1).mean(1)
                act = (act - 0.5 * force).clamp(-0.999, 0.999)
        dist = (act - a_bc).norm(dim=-1).mean()
        print(
            f"score term's fixed point vs BC: mean L2 distance {dist:.3f} (residual force {force.norm(dim=-1).mean():.4f})"
        )


if __name__ == "__main__":
    main()
