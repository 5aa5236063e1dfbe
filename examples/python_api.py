"""SRPO end to end from Python, on the built-in default dataset (Pendulum-v1, a noisy scripted controller).

    python examples/python_api.py                  # the default preset's budget: a few minutes on 2 cores
    python examples/python_api.py --steps 200      # a quick look

Trains the behavior model, the critic and the SRPO actor, evaluates the actor against the data, and then acts
with it one observation at a time, as a robot's control loop would.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import gymnasium as gym
import torch

import srpo_cli as srpo


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=Path("runs/python-api"), help="run directory")
    ap.add_argument("--steps", type=int, default=None, help="steps of every stage (default: the preset's)")
    ap.add_argument("--episodes", type=int, default=10)
    args = ap.parse_args(argv)

    # Flags override SRPO_* variables, srpo.yaml and the dataset's preset, as on the command line.
    flags = {"run_dir": str(args.run), "eval.episodes": args.episodes}
    if args.steps:
        flags.update({"behavior.steps": args.steps, "critic.steps": args.steps, "extract.steps": args.steps})
    cfg = srpo.resolve_config(flags)
    srpo.fetch(cfg.dataset)  # the built-in default builds itself offline; a Minari id downloads
    data = srpo.load_transitions(cfg.dataset)
    device = torch.device("cpu")
    run = cfg.resolved_run_dir()
    for stage in ("behavior", "critic", "extract"):
        summary = srpo.train_stage(stage, cfg, data, run, device, quiet=True)
        print(f"{stage}: {summary['step']} steps in {summary['wall_s']:.0f} s -> {summary['checkpoint']}")

    result = srpo.evaluate_run(cfg, run)
    data_score = result.normalized(data.episode_returns.mean())
    print(f"SRPO actor: score {result.normalized(result.returns.mean()):.1f} (data {data_score:.1f}, 0-100 scale)")

    policy = srpo.load_actor_policy(run / "actor.safetensors")
    env = gym.make("Pendulum-v1")
    obs, _ = env.reset(seed=0)
    total, done = 0.0, False
    while not done:
        obs, reward, terminated, truncated, _ = env.step(policy(obs))  # one observation, one native call
        total += float(reward)
        done = terminated or truncated
    print(f"one more episode, acting step by step: return {total:.1f}")
    return {"score": float(result.normalized(result.returns.mean())), "episode_return": total}


if __name__ == "__main__":
    main()
