"""Observation and action spaces: flattening Dict observations in the order training used, the layout of the
flat vector, and checking a policy's sizes against an environment's."""

from __future__ import annotations

from typing import Any

import numpy as np

from srpo_cli.errors import RuntimeFailure, UsageError


def flatten_observations(obs: Any, space: Any) -> np.ndarray:
    """A batch of observations [T, ...] of ``space`` -> [T, flatdim] float32, in the order in which gymnasium's
    ``spaces.flatten`` lays out one observation (evaluation flattens the environment's by it, with the dataset's
    space: ``evaluate.flat_observation_env``): a Box's values row-major, a Dict's entries in the space's key
    order, a Tuple's in its order. That is how goal-conditioned datasets (Minari's antmaze and pointmaze:
    observation, achieved_goal, desired_goal) reach the networks as one vector, the same at training and at
    evaluation."""
    from gymnasium import spaces

    if isinstance(space, spaces.Box):
        o = np.asarray(obs, dtype=np.float32)
        return o.reshape(len(o), -1)
    if isinstance(space, spaces.Dict):
        missing = [k for k in space.spaces if k not in obs]
        if missing:
            raise RuntimeFailure(f"Episode observations lack the entries {missing} of the dataset's observation space.")
        parts = [flatten_observations(obs[k], sub) for k, sub in space.spaces.items()]
    elif isinstance(space, spaces.Tuple):
        parts = [flatten_observations(o, sub) for o, sub in zip(obs, space.spaces, strict=True)]
    else:
        raise UsageError(
            f"srpo handles Box observations, and Dict or Tuple spaces of them; this dataset's are {space}.",
            "Convert the observations to vectors of numbers before importing the dataset.",
        )
    if len({len(p) for p in parts}) != 1:
        raise RuntimeFailure("The entries of an episode's observations have different lengths.")
    return np.concatenate(parts, axis=1)


def observation_layout(space: Any, prefix: str = "") -> list[tuple[str, int, int]]:
    """Where each entry of a Dict or Tuple observation lands in the flat vector of ``flatten_observations``:
    (name, start, end) with nested names joined by dots, e.g. [("achieved_goal", 0, 2), ("desired_goal", 2, 4),
    ("observation", 4, 31)] for Minari's antmaze. A Box is one entry."""
    from gymnasium import spaces

    if isinstance(space, spaces.Dict):
        items = [(f"{prefix}{k}", sub) for k, sub in space.spaces.items()]
    elif isinstance(space, spaces.Tuple):
        items = [(f"{prefix}{i}", sub) for i, sub in enumerate(space.spaces)]
    else:
        return [(prefix or "observation", 0, spaces.flatdim(space))]
    layout, start = [], 0
    for name, sub in items:
        for n, a, b in observation_layout(sub, name + "."):
            layout.append((n.rstrip("."), start + a, start + b))
        start += spaces.flatdim(sub)
    return layout


def trained_observation_space(extra: dict[str, Any]) -> Any:
    """The Dict or Tuple observation space a checkpoint's networks were trained on, flattened
    (``flatten_observations``), from its metadata's ``extra``; None where the observations were a Box."""
    space_json = extra.get("observation_space")
    if not space_json:
        return None
    from minari.serialization import deserialize_space

    return deserialize_space(space_json)


def _serialized_unless_box(space: Any) -> str | None:
    """The observation space as Minari serializes it, for evaluation to flatten the environment's observations
    the same way (``evaluate.make_env_fn``); None for a Box, whose observations need no flattening."""
    from gymnasium import spaces
    from minari.serialization import serialize_space

    return None if isinstance(space, spaces.Box) else serialize_space(space)


def make_env(env_id: str):
    import gymnasium as gym

    try:
        return gym.make(env_id)
    except Exception as e:
        raise RuntimeFailure(
            f"Cannot create environment '{env_id}' ({str(e).splitlines()[0] if str(e) else type(e).__name__}).",
            "Check the id (e.g. 'Hopper-v5') and that its package is installed (gymnasium[mujoco] for MuJoCo).",
        ) from None


def check_env_dims(env_id: str, obs_dim: int, action_dim: int, what: str) -> None:
    """The data's observation and action sizes must be the environment's: a dataset recorded against the wrong
    --env would train 1-dim actions broadcast to 3, or evaluate on an environment it does not describe."""

    env = make_env(env_id)
    try:
        check_env_matches(env, obs_dim, action_dim, what)
    except RuntimeFailure as e:
        raise UsageError(
            e.message, "Pass the --env the data was recorded in (e.g. Hopper-v5 for hopper files)."
        ) from None
    finally:
        env.close()


def check_env_matches(env: Any, obs_dim: int, action_dim: int, what: str) -> None:
    """Refuse a policy whose input or output size is not the environment's (``env``: an environment or a
    factory of one). Unchecked, a policy reads past the end of a shorter observation, or one action component
    is broadcast to all."""
    import gymnasium as gym

    made = callable(env) and not isinstance(env, gym.Env)
    e = env() if made else env
    try:
        env_obs = int(gym.spaces.flatdim(e.observation_space))
        shape = e.action_space.shape
        env_act = int(np.prod(shape)) if shape is not None else None
        name = e.spec.id if e.spec is not None else type(e.unwrapped).__name__
    finally:
        if made:
            e.close()
    problems = []
    if env_obs != obs_dim:
        problems.append(f"observations of {env_obs} numbers where it expects {obs_dim}")
    if env_act is not None and env_act != action_dim:
        problems.append(f"actions of {env_act} numbers where it gives {action_dim}")
    if problems:
        raise RuntimeFailure(
            f"{what} does not fit environment {name}: {' and '.join(problems)}.",
            "Use a policy trained on a dataset of this environment (or the environment its dataset records).",
        )
