"""Building datasets into the local store: the built-in default (a scripted Pendulum controller), rollouts
of a policy, and D4RL HDF5 files."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from srpo_cli.config import DEFAULT_DATASET
from srpo_cli.data.spaces import check_env_dims
from srpo_cli.data.store import check_dataset_id, create_dataset, staged_dataset
from srpo_cli.errors import RuntimeFailure, UsageError

# D4RL's reference returns (random, expert), as D4RL's own normalization uses them (docs/algorithm.md).
D4RL_REF = {
    "hopper": (-20.272305, 3234.3),
    "halfcheetah": (-280.178953, 12135.0),
    "walker2d": (1.629008, 4592.3),
    "antmaze": (0.0, 1.0),
}


# The built-in default: Pendulum-v1 rolled out by a scripted energy-pumping swing-up + PD balance controller,
# half the time replaced by a uniformly random torque and always perturbed by Gaussian noise, so the data sit
# near the middle of the random..controller range: a "medium" dataset that SRPO should beat.
DEFAULT_ENV = "Pendulum-v1"


DEFAULT_EPISODES = 200


DEFAULT_NOISE = 0.8


DEFAULT_RANDOM_PROB = 0.5


def pendulum_controller(obs: np.ndarray) -> np.ndarray:
    """Energy-pumping swing-up, PD balance near the top. obs = [cos th, sin th, thdot]; returns torque."""
    c, s, w = obs[..., 0], obs[..., 1], obs[..., 2]
    th = np.arctan2(s, c)
    # Pendulum-v1: thddot = 15 sin(th) + 3 u, so H = w^2/2 + 15 cos(th) is conserved and equals 15 upright.
    energy = 0.5 * w**2 + 15.0 * c
    pump = np.clip(0.5 * (15.0 - energy) * np.sign(w + 1e-6), -2.0, 2.0)
    pump = np.where(np.abs(w) < 1e-3, 1.0, pump)
    balance = np.clip(-(12.0 * th + 3.0 * w), -2.0, 2.0)
    return np.where(c > 0.85, balance, pump).astype(np.float32).reshape(-1)


def _stack_observations(obs: list) -> Any:
    """One episode's observations as Minari stores them: an array [T+1, ...], or for Dict (and Tuple)
    observations the same structure with an array per entry."""
    if isinstance(obs[0], dict):
        return {k: _stack_observations([o[k] for o in obs]) for k in obs[0]}
    if isinstance(obs[0], tuple):
        return tuple(_stack_observations([o[i] for o in obs]) for i in range(len(obs[0])))
    return np.asarray(obs)


def rollout_buffers(
    env_id: str,
    policy: Callable[[np.ndarray, np.random.Generator], np.ndarray],
    steps: int | None,
    episodes: int | None,
    seed: int,
):
    """Roll ``policy`` out into Minari EpisodeBuffers; the last episode is cut as a truncation."""
    import gymnasium as gym
    from minari.data_collector import EpisodeBuffer

    try:
        env = gym.make(env_id)
    except Exception as e:
        raise RuntimeFailure(
            f"Cannot create environment '{env_id}' ({str(e).splitlines()[0]}).",
            "Check the id (e.g. 'Hopper-v5') and that its package is installed (gymnasium[mujoco] for MuJoCo).",
        ) from None
    rng = np.random.default_rng(seed)
    buffers, returns, total, ep = [], [], 0, 0
    while (steps is None or total < steps) and (episodes is None or ep < episodes):
        ep_seed = seed * 100_003 + ep
        obs, _ = env.reset(seed=ep_seed)
        ep_obs, ep_act, ep_rew, ep_term, ep_trunc = [obs], [], [], [], []
        done = False
        while not done:
            a = np.asarray(policy(obs, rng), dtype=env.action_space.dtype).reshape(env.action_space.shape)
            obs, r, term, trunc, _ = env.step(a)
            ep_obs.append(obs), ep_act.append(a), ep_rew.append(float(r))
            ep_term.append(bool(term)), ep_trunc.append(bool(trunc))
            total += 1
            done = term or trunc
            if steps is not None and total >= steps and not done:
                ep_trunc[-1], done = True, True
        buffers.append(
            EpisodeBuffer(
                id=ep,
                seed=ep_seed,
                observations=_stack_observations(ep_obs),
                actions=np.asarray(ep_act),
                rewards=np.asarray(ep_rew, dtype=np.float64),
                terminations=np.asarray(ep_term),
                truncations=np.asarray(ep_trunc),
            )
        )
        returns.append(float(np.sum(ep_rew)))
        ep += 1
    env.close()
    return buffers, np.asarray(returns)


def build_default_dataset(force: bool = False, episodes: int = DEFAULT_EPISODES, seed: int = 0) -> str:
    """Build the offline built-in default dataset with measured reference scores."""
    dataset_id = DEFAULT_DATASET

    def noisy(obs, rng):
        a = pendulum_controller(obs)
        if rng.random() < DEFAULT_RANDOM_PROB:
            a = rng.uniform(-2.0, 2.0, size=a.shape).astype(np.float32)
        return np.clip(a + DEFAULT_NOISE * rng.standard_normal(a.shape), -2.0, 2.0)

    # Reference scores measured with fixed seeds: uniform random torques (0) and the noiseless controller (100).
    _, random_returns = rollout_buffers(
        DEFAULT_ENV, lambda o, rng: rng.uniform(-2, 2, size=(1,)), None, 50, seed=10_000 + seed
    )
    _, expert_returns = rollout_buffers(
        DEFAULT_ENV, lambda o, rng: pendulum_controller(o), None, 50, seed=20_000 + seed
    )
    with staged_dataset(dataset_id, force):
        buffers, returns = rollout_buffers(DEFAULT_ENV, noisy, None, episodes, seed=seed)
        create_dataset(
            dataset_id,
            buffers,
            DEFAULT_ENV,
            (float(random_returns.mean()), float(expert_returns.mean())),
            "scripted swing-up controller, 50% random torque, Gaussian noise 0.8",
            "srpo's built-in default: Pendulum-v1, a noisy scripted controller ('medium' quality). Reference "
            "scores: mean return of uniform random torques (min) and of the noiseless controller (max).",
        )
    return dataset_id


@dataclass
class ImportReport:
    dataset_id: str
    episodes: int
    steps: int
    dropped: int
    has_next_observations: bool
    ref: tuple[float, float] | None


def _family(env_id: str, dataset_id: str) -> str | None:
    text = f"{env_id} {dataset_id}".lower()
    for fam in ("halfcheetah", "walker2d", "hopper", "antmaze"):
        if fam in text:
            return fam
    return None


def import_d4rl(
    file: Path,
    env_id: str,
    dataset_id: str,
    ref_min: float | None = None,
    ref_max: float | None = None,
    force: bool = False,
) -> ImportReport:
    """Import a D4RL-format HDF5 file as a local Minari dataset.

    Episodes end at ``terminals`` or ``timeouts``. Without ``next_observations`` the last step of a
    timed-out episode has no true next state, so it is dropped (as D4RL's ``qlearning_dataset`` does); a
    terminated episode keeps its last step, whose next state is never bootstrapped from.
    """
    import h5py

    check_dataset_id(dataset_id)
    file = Path(file)
    if not file.exists():
        raise UsageError(f"D4RL file {file} does not exist.", "Pass the path of a D4RL .hdf5 file.")
    try:
        with h5py.File(file, "r") as f:
            need = ["observations", "actions", "rewards", "terminals"]
            missing = [k for k in need if k not in f]
            if missing:
                raise UsageError(
                    f"{file} is not a D4RL dataset: missing {', '.join(missing)}.",
                    "A D4RL file holds observations, actions, rewards, terminals and timeouts.",
                )
            obs = np.asarray(f["observations"], dtype=np.float32)
            act = np.asarray(f["actions"], dtype=np.float32)
            rew = np.asarray(f["rewards"], dtype=np.float64).reshape(-1)
            term = np.asarray(f["terminals"], dtype=bool).reshape(-1)
            tout = np.asarray(f["timeouts"], dtype=bool).reshape(-1) if "timeouts" in f else np.zeros_like(term)
            nxt = np.asarray(f["next_observations"], dtype=np.float32) if "next_observations" in f else None
    except OSError as e:
        raise UsageError(f"{file} is not a readable HDF5 file ({e}).") from None
    n = len(rew)
    if not (len(obs) == len(act) == len(term) == len(tout) == n) or (nxt is not None and len(nxt) != n):
        raise UsageError(f"{file}: the arrays have different lengths; the file is damaged.")
    if n == 0:
        raise UsageError(f"{file} holds no transitions (its arrays have zero rows).", "Check the file.")
    if obs.ndim != 2 or act.ndim != 2:
        raise UsageError(
            f"{file}: observations and actions must be tables [rows, dims], got shapes {obs.shape} and {act.shape}."
        )
    check_env_dims(env_id, obs.shape[1], act.shape[1], f"{file}")
    fam = _family(env_id, dataset_id)
    if ref_min is not None and ref_max is not None:
        ref = (ref_min, ref_max)
    elif fam is not None:
        ref = D4RL_REF[fam]
    else:
        ref = None
    from minari.data_collector import EpisodeBuffer

    ends = np.flatnonzero(term | tout)
    if len(ends) == 0 or ends[-1] != n - 1:
        ends = np.append(ends, n - 1)  # data that stops mid-episode: a truncation
    buffers, start, dropped, steps = [], 0, 0, 0
    for end in ends:
        terminated = bool(term[end])
        sl = slice(start, end + 1)
        if nxt is not None:
            o = np.concatenate([obs[sl], nxt[end : end + 1]])
            a, r = act[sl], rew[sl]
        elif terminated:
            # The terminal step's next state is unknown but never used (d = 1): repeat the last state.
            o = np.concatenate([obs[sl], obs[end : end + 1]])
            a, r = act[sl], rew[sl]
        else:
            o, a, r = obs[sl], act[start:end], rew[start:end]
            dropped += 1
        start = end + 1
        if len(a) == 0:
            continue
        te = np.zeros(len(a), dtype=bool)
        tr = np.zeros(len(a), dtype=bool)
        te[-1] = terminated
        tr[-1] = not terminated
        buffers.append(
            EpisodeBuffer(id=len(buffers), observations=o, actions=a, rewards=r, terminations=te, truncations=tr)
        )
        steps += len(a)
    if not buffers:
        raise UsageError(f"{file} holds no complete transitions.")
    with staged_dataset(dataset_id, force):
        try:
            create_dataset(
                dataset_id,
                buffers,
                env_id,
                ref,
                f"imported from D4RL file {file.name}",
                f"Imported with srpo from {file.name} ({'with' if nxt is not None else 'without'} next_observations).",
            )
        except RuntimeFailure:
            raise
        except Exception as e:
            raise RuntimeFailure(
                f"Could not create dataset '{dataset_id}' for environment '{env_id}' ({str(e).splitlines()[0]}).",
                "Check --env (e.g. 'Hopper-v5') and that its package is installed.",
            ) from None
    return ImportReport(dataset_id, len(buffers), steps, dropped, nxt is not None, ref)
