"""Does the critic know what the data's own returns say? V and Q against the dataset's Monte Carlo returns.

    python tools/diagnostics/value_vs_returns.py --dataset bench/hopper/medium-v0 --critics RUN/critic.safetensors [...]

For every transition of an episode that ends in a termination, the discounted return-to-go G_t (the critic's
reward transform and discount, read from each checkpoint) is exact: nothing is bootstrapped. Episodes cut by a
time limit are left out, since their tail is unknown. Prints, per critic:

1. V(s) against G by how many steps are left before the termination: the mean of each and their correlation.
   A critic that has learned the value of the data's states tracks G closely, falls included.
2. Whether the action carries what V misses: the correlation of the advantage A = Q(s, a) - V(s) (mean of the
   twin target Qs at the dataset's own action) with the residual G - V(s). G also holds the noise of every
   later action, so this cannot reach 1; near 0 means that, for this data, the action taken at a state tells
   the critic almost nothing about the return beyond what the state already says.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from srpo_cli.algos.loading import load_critic
from srpo_cli.data.store import open_local
from srpo_cli.data.transitions import action_space_bounds as action_bounds
from srpo_cli.data.transitions import episodes_to_arrays, normalize_action, scale_rewards

BINS = [(0, 0), (1, 3), (4, 10), (11, 30), (31, 100), (101, 300), (301, None)]


def returns_to_go(rewards: np.ndarray, lengths: np.ndarray, discount: float) -> tuple[np.ndarray, np.ndarray]:
    """(G_t, steps left in the episode after t) for every transition, episode by episode."""
    g = np.zeros(len(rewards))
    left = np.zeros(len(rewards), dtype=np.int64)
    end = 0
    for n in lengths:
        start, end = end, end + int(n)
        acc = 0.0
        for i in range(end - 1, start - 1, -1):
            acc = rewards[i] + discount * acc
            g[i] = acc
        left[start:end] = np.arange(n - 1, -1, -1)
    return g, left


def corr(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.corrcoef(x, y)[0, 1]) if len(x) > 2 else float("nan")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--critics", type=Path, nargs="+", required=True, help="critic.safetensors files")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    ds = open_local(args.dataset)
    arr = episodes_to_arrays(ds.iterate_episodes())
    lengths = arr["episode_lengths"]
    ends = np.cumsum(lengths) - 1
    terminated_episode = arr["terminals"][ends] > 0
    in_terminated = np.repeat(terminated_episode, lengths)  # transitions whose G is exact
    obs = torch.from_numpy(arr["observations"][in_terminated])
    print(
        f"{args.dataset}: {len(lengths):,} episodes, {int(terminated_episode.sum()):,} end in a termination "
        f"({int(in_terminated.sum()):,} transitions used)"
    )

    report = []
    for path in args.critics:
        _, q_target, v_net, ckpt = load_critic(path, torch.device("cpu"))
        full_cfg = ckpt.config
        cfg = full_cfg["critic"]
        # the actions as this critic saw them in training
        normalize = full_cfg.get("data", {}).get("normalize_actions", True)
        bounds = action_bounds(ds.action_space, arr["actions"].shape[1], normalize)
        act = torch.from_numpy(normalize_action(arr["actions"][in_terminated], *bounds))
        rewards = scale_rewards(
            torch.from_numpy(arr["rewards"]),
            arr["episode_returns"],
            cfg["reward_mode"],
            cfg["reward_scale"],
            cfg["antmaze_shift"],
        ).numpy()
        g_all, left_all = returns_to_go(rewards, lengths, cfg["discount"])
        g, left = g_all[in_terminated], left_all[in_terminated]
        v_parts, q_parts = [], []
        with torch.no_grad():
            for s, a in zip(obs.split(65536), act.split(65536), strict=True):
                v_parts.append(v_net(s))
                q_parts.append(q_target(s, a).mean(0))
        v, q = torch.cat(v_parts).numpy(), torch.cat(q_parts).numpy()
        rows = []
        for lo, hi in BINS:
            m = (left >= lo) & (left <= (hi if hi is not None else left.max()))
            if not m.any():
                continue
            rows.append(
                {
                    "steps_left": f"{lo}-{hi}" if hi is not None else f"{lo}+",
                    "n": int(m.sum()),
                    "v_mean": float(v[m].mean()),
                    "g_mean": float(g[m].mean()),
                    "corr_v_g": corr(v[m], g[m]),
                }
            )
        entry = {
            "critic": str(path),
            "step": ckpt.meta.get("step"),
            "corr_v_g": corr(v, g),
            "corr_advantage_residual": corr(q - v, g - v),
            "advantage_std": float((q - v).std()),
            "residual_std": float((g - v).std()),
            "bins": rows,
        }
        report.append(entry)
        if args.json:
            continue
        print(f"\n{path} (step {entry['step']})")
        print(f"  {'steps to termination':>20} {'n':>9} {'V mean':>8} {'G mean':>8} {'corr(V, G)':>10}")
        for r in rows:
            print(
                f"  {r['steps_left']:>20} {r['n']:>9,} {r['v_mean']:>8.2f} {r['g_mean']:>8.2f} {r['corr_v_g']:>10.3f}"
            )
        print(f"  corr(V, G) over all {len(g):,} transitions: {entry['corr_v_g']:.3f}")
        print(
            f"  corr(Q - V, G - V): {entry['corr_advantage_residual']:.3f} "
            f"(std of Q - V {entry['advantage_std']:.3f}, of G - V {entry['residual_std']:.3f})"
        )
    if args.json:
        print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
