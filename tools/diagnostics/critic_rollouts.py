"""Does the critic rank actions as the simulator does? Ground truth from rollouts out of dataset states.

    python tools/diagnostics/critic_rollouts.py --dataset bench/hopper/medium-v0 --run RUN --policy RUN/bc.safetensors \
        [--actors RUN/actor.safetensors ...] [--states 100] [--horizon 300]

For each of --states dataset states the simulator is put exactly in that state (MuJoCo locomotion whose
observation leaves out the x position: qpos = [0, obs[:nq-1]], qvel = obs[nq-1:]; x does not change the
reward), one action is taken, then --policy acts for the rest of --horizon steps. The discounted return
G(s, a) (raw rewards, gamma of the critic) estimates Q^policy(s, a) up to the horizon's tail (0.99^300 = 0.05).
Actions compared at each state: the dataset's, the dataset's + N(0, 0.3^2), a uniform random one, the best of
32 behavior samples by the critic (the diffusion baseline's pick), a step of --step (L2) up and down the
critic's action gradient from the dataset's action (what SRPO's Q term does), and each --actors policy's action.
Prints, per kind of action, the mean G and the critic's mean Q there; then the critic's pairwise ranking
accuracy against G: over all pairs of actions at the same state whose G differ by more than --min-gap, how
often the mean of the twin target Qs orders them as G does (50% is a coin); and, on its own, how often the
step up the gradient beats the step down in G (with --smooth, also for the gradient of the critic smoothed
over Gaussian perturbations of the action).
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np
import torch

from srpo_cli.act.policies import load_actor_policy
from srpo_cli.algos.extract import q_gradient
from srpo_cli.algos.loading import load_behavior, load_critic
from srpo_cli.data.store import open_local
from srpo_cli.data.transitions import denormalize_action, load_transitions
from srpo_cli.nn.diffusion import sample_actions


def set_state_from_obs(env, obs: np.ndarray) -> None:
    """Put a MuJoCo locomotion env in the state an observation describes (x position set to 0)."""
    u = env.unwrapped
    nq, nv = u.model.nq, u.model.nv
    if obs.shape[0] != nq - 1 + nv:
        raise SystemExit(
            f"This probe needs a MuJoCo env whose observation is qpos[1:] + qvel ({nq - 1 + nv} values); "
            f"this one has {obs.shape[0]}."
        )
    u.set_state(np.concatenate([[0.0], obs[: nq - 1]]), obs[nq - 1 :])


def rollout_return(env, obs: np.ndarray, first_action: np.ndarray, policy, horizon: int, gamma: float) -> float:
    set_state_from_obs(env, obs)
    g, discount, a = 0.0, 1.0, first_action
    for _ in range(horizon):
        o, r, terminated, _, _ = env.step(a)
        g += discount * float(r)
        discount *= gamma
        if terminated:
            break
        a = policy(o)
    return g


def q_gradient_direction(
    q_target, s: torch.Tensor, a: torch.Tensor, sigma: float = 0.0, samples: int = 1
) -> torch.Tensor:
    """Unit direction of dQ/da (mean of the twin target Qs) at each (s, a); with sigma > 0, of the gradient of
    the Gaussian-smoothed critic E[Q(s, a + sigma xi)], by Monte Carlo over ``samples`` draws of xi per state:
    whether a smoother critic's slope points uphill more often than its raw one does."""
    k = samples if sigma > 0 else 1
    a_k = a.repeat_interleave(k, 0)
    if sigma > 0:
        a_k = a_k + sigma * torch.randn_like(a_k)
    grad, _ = q_gradient(q_target, s.repeat_interleave(k, 0), a_k, "mean", False)
    grad = grad.view(len(s), k, -1).mean(1)
    return grad / grad.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--run", type=Path, required=True, help="run directory with behavior and critic checkpoints")
    ap.add_argument("--policy", type=Path, required=True, help="policy that acts after the first action (e.g. BC)")
    ap.add_argument("--actors", type=Path, nargs="*", default=[], help="policies whose actions are also ranked")
    ap.add_argument("--states", type=int, default=100)
    ap.add_argument("--horizon", type=int, default=300)
    ap.add_argument("--min-gap", type=float, default=0.5, help="pairs with |G1 - G2| below this are ties")
    ap.add_argument("--step", type=float, default=0.2, help="L2 length of the steps along the Q gradient")
    ap.add_argument(
        "--smooth",
        type=float,
        nargs="*",
        default=[],
        help="also step along the critic's gradient averaged over N(0, sigma^2) perturbations of the action, per sigma",
    )
    ap.add_argument("--smooth-samples", type=int, default=32, help="perturbations per state for --smooth")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    dev = torch.device("cpu")
    data = load_transitions(args.dataset)
    behavior, schedule, _ = load_behavior(args.run / "behavior.safetensors", dev)
    _, q_target, _, c_ckpt = load_critic(args.run / "critic.safetensors", dev)
    gamma = float(c_ckpt.config["critic"]["discount"])
    follow = load_actor_policy(args.policy)
    env = open_local(args.dataset).recover_environment(eval_env=True)
    env.reset(seed=args.seed)

    idx = torch.from_numpy(rng.choice(data.size, size=args.states, replace=False))
    s, a_data = data.observations[idx], data.actions[idx]
    with torch.no_grad():
        n = 32
        cand = sample_actions(behavior, schedule, s.repeat_interleave(n, 0), 15)
        q_cand = q_target(s.repeat_interleave(n, 0), cand).mean(0).view(-1, n)
        best = cand.view(-1, n, cand.shape[-1])[torch.arange(len(s)), q_cand.argmax(1)]
    unit = q_gradient_direction(q_target, s, a_data)
    actions = {
        "dataset": a_data,
        "dataset + step up dQ/da": (a_data + args.step * unit).clamp(-1, 1),
        "dataset - step up dQ/da": (a_data - args.step * unit).clamp(-1, 1),
        "dataset + N(0, 0.3^2)": (a_data + 0.3 * torch.randn_like(a_data)).clamp(-1, 1),
        "uniform random": torch.rand_like(a_data) * 2 - 1,
        "best of 32 behavior samples by Q": best,
    }
    suffixes = [""]
    for sigma in args.smooth:
        suffix = f" (smoothed {sigma})"
        direction = q_gradient_direction(q_target, s, a_data, sigma, args.smooth_samples)
        actions[f"dataset + step up dQ/da{suffix}"] = (a_data + args.step * direction).clamp(-1, 1)
        actions[f"dataset - step up dQ/da{suffix}"] = (a_data - args.step * direction).clamp(-1, 1)
        suffixes.append(suffix)
    names = [path.name for path in args.actors]
    for path in args.actors:
        pol = load_actor_policy(path)
        # runs name every actor actor.safetensors: label by the path as given when names repeat, or one would
        # silently replace the other
        label = path.name if names.count(path.name) == 1 else str(path)
        if label in actions:
            raise SystemExit(f"--actors names {path} twice")
        actions[label] = torch.from_numpy(pol.act_normalized(s.numpy().copy()))
    with torch.no_grad():
        q = {k: q_target(s, a).mean(0).numpy() for k, a in actions.items()}

    set_state_from_obs(env, s[0].numpy().astype(np.float64))
    err = np.abs(env.unwrapped._get_obs() - s[0].numpy()).max()
    print(f"state reconstruction: max |obs(set_state(s)) - s| = {err:.2e}", file=sys.stderr)
    g = {}
    for k, a in actions.items():
        env_a = denormalize_action(a.numpy(), data.action_low, data.action_high)
        obs = s.numpy().astype(np.float64)
        g[k] = np.array([rollout_return(env, obs[i], env_a[i], follow, args.horizon, gamma) for i in range(len(s))])
    env.close()

    print(f"{args.states} dataset states, then {args.policy.name} for {args.horizon} steps (gamma {gamma})")
    print(f"  {'action':<36} {'mean G (raw reward)':>20} {'mean Q (critic)':>16}")
    for k in actions:
        print(f"  {k:<36} {g[k].mean():20.2f} {q[k].mean():16.3f}")
    agree = total = 0
    data_agree = data_total = 0
    # the smoothed steps are a question about the gradient, not more actions to rank: keep the ranking comparable
    ranked = [k for k in actions if "(smoothed" not in k]
    for k1, k2 in itertools.combinations(ranked, 2):
        dg, dq = g[k1] - g[k2], q[k1] - q[k2]
        sel = np.abs(dg) > args.min_gap
        hits = int((np.sign(dg[sel]) == np.sign(dq[sel])).sum())
        agree, total = agree + hits, total + int(sel.sum())
        if k1 == "dataset":
            data_agree, data_total = data_agree + hits, data_total + int(sel.sum())
    print(
        f"critic's ranking accuracy against rollouts (|dG| > {args.min_gap}): {100 * agree / max(total, 1):.1f}% "
        f"of {total} pairs; pairs with the dataset's action: {100 * data_agree / max(data_total, 1):.1f}% "
        f"of {data_total}"
    )
    for suffix, sigma in zip(suffixes, [None, *args.smooth], strict=True):
        up, down = g[f"dataset + step up dQ/da{suffix}"], g[f"dataset - step up dQ/da{suffix}"]
        what = "the critic's gradient" + (f", smoothed over N(0, {sigma}^2)," if sigma is not None else "")
        print(
            f"step of {args.step} up {what} beats the step down in G: {100 * (up > down).mean():.1f}% of "
            f"states (mean G difference {np.mean(up - down):+.3f})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
