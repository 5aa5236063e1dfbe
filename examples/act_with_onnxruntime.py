"""Deploy a trained actor without srpo or torch: export it to ONNX, then act with onnxruntime alone.

    srpo pipeline                                   # or any run with an actor.safetensors
    python examples/act_with_onnxruntime.py --run runs/srpo-pendulum-scripted-medium-v0/seed0

The exported file maps a batch of observations to actions in the environment's units (the [-1, 1] scaling
is inside it). On the robot only `onnxruntime` and `numpy` are needed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import gymnasium as gym
import numpy as np
import onnxruntime as ort

from srpo_cli import export_actor, load_checkpoint


def main(argv: list[str] | None = None) -> float:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True, help="run directory holding actor.safetensors")
    ap.add_argument("--out", type=Path, default=None, help="where to write the .onnx file (default: in --run)")
    ap.add_argument("--env", default=None, help="environment (default: the one the actor's dataset records)")
    args = ap.parse_args(argv)

    ckpt = args.run / "actor.safetensors"
    onnx_file = export_actor(ckpt, args.out or args.run / "actor.onnx", "onnx")

    # --- from here on, what runs on the robot: onnxruntime and numpy only ---
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])

    def act(obs: np.ndarray) -> np.ndarray:
        return session.run(["action"], {"obs": obs.astype(np.float32)[None]})[0][0]

    env_id = (
        args.env
        or load_checkpoint(ckpt).meta["dataset_id"]
        and gym.envs.registration.EnvSpec.from_json(load_checkpoint(ckpt).meta["extra"]["eval_env_spec"]).id
    )
    env = gym.make(env_id)
    obs, _ = env.reset(seed=0)
    total, done = 0.0, False
    while not done:
        obs, reward, terminated, truncated, _ = env.step(act(obs))
        total += float(reward)
        done = terminated or truncated
    print(f"{onnx_file}: one episode of {env_id} acting through onnxruntime, return {total:.1f}")
    return total


if __name__ == "__main__":
    main()
