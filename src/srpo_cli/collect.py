"""Rolling a policy (random, or a trained actor checkpoint) out into a new local dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from srpo_cli.data.builders import rollout_buffers
from srpo_cli.data.spaces import make_env
from srpo_cli.data.store import check_dataset_id, create_dataset, recover_store, staged_dataset, store_root
from srpo_cli.errors import UsageError


def collect(
    env_id: str,
    dataset_id: str,
    policy: str,
    steps: int,
    noise: float = 0.0,
    seed: int = 0,
    force: bool = False,
    ref_min: float | None = None,
    ref_max: float | None = None,
) -> tuple[str, np.ndarray]:
    """Roll a random policy or an srpo actor checkpoint out into a local dataset."""
    import gymnasium as gym

    check_dataset_id(dataset_id)
    if steps <= 0:
        raise UsageError(f"--steps must be positive, got {steps}.")
    recover_store()
    if (store_root() / dataset_id).exists() and not force:
        raise UsageError(
            f"Dataset '{dataset_id}' already exists at {store_root() / dataset_id}.", "Pass --force to replace it."
        )
    if policy == "random":
        space = None

        def act(obs, rng):
            nonlocal space
            if space is None:
                space = gym.make(env_id).action_space
                space.seed(int(rng.integers(1 << 31)))
            return space.sample()

    else:
        from srpo_cli.act.policies import actor_policy
        from srpo_cli.data.spaces import trained_observation_space
        from srpo_cli.train.checkpoint import load_checkpoint

        ckpt = load_checkpoint(Path(policy))
        actor = actor_policy(ckpt)
        # a policy trained on Dict observations (goal-conditioned tasks) gets them flattened as in training
        trained_space = trained_observation_space(ckpt.meta["extra"])
        env = make_env(env_id)
        try:
            if trained_space is None and isinstance(env.observation_space, gym.spaces.Dict | gym.spaces.Tuple):
                raise UsageError(
                    f"{env_id} observes {type(env.observation_space).__name__} spaces, but {policy} was trained on "
                    "vector observations.",
                    "Roll out a policy trained on this environment's datasets.",
                )
            from srpo_cli.data.spaces import check_env_matches

            check_env_matches(env, ckpt.meta["obs_dim"], ckpt.meta["action_dim"], policy)
        finally:
            env.close()

        def act(obs, rng):
            if isinstance(obs, dict | tuple) and trained_space is None:
                raise UsageError(
                    f"{env_id} observes {type(obs).__name__}s, but {policy} was trained on vector observations.",
                    "Roll out a policy trained on this environment's datasets.",
                )
            flat = obs if trained_space is None else gym.spaces.flatten(trained_space, obs)
            a = actor.act_normalized(np.asarray(flat, dtype=np.float32)[None])[0]
            if noise > 0:
                a = np.clip(a + noise * rng.standard_normal(a.shape), -1.0, 1.0)
            return actor.to_env(a[None])[0]

    with staged_dataset(dataset_id, force):
        buffers, returns = rollout_buffers(env_id, act, steps, None, seed)
        ref = (ref_min, ref_max) if ref_min is not None and ref_max is not None else None
        create_dataset(dataset_id, buffers, env_id, ref, f"srpo collect --policy {policy}", f"Rollouts of {policy}.")
    return dataset_id, returns
