"""Rollouts in a Gymnasium vector environment, normalized scores, and action-latency measurement."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from srpo_cli.errors import RuntimeFailure


def flat_observation_env(env: Any, observation_space_json: str) -> Any:
    """``env`` with its (Dict or Tuple) observations flattened as the dataset's were for training: by the
    dataset's own observation space, deserialized as Minari deserializes it, so the entries come in the
    order the networks were trained on (``data.flatten_observations``)."""
    import gymnasium as gym
    from minari.serialization import deserialize_space

    space = deserialize_space(observation_space_json)
    flat = gym.spaces.Box(-np.inf, np.inf, (gym.spaces.flatdim(space),), np.float32)
    return gym.wrappers.TransformObservation(env, lambda obs: gym.spaces.flatten(space, obs).astype(np.float32), flat)


def make_env_fn(
    env_spec_json: str | None, dataset_id: str, observation_space_json: str | None = None
) -> Callable[[], Any]:
    """A factory for the dataset's evaluation environment, from the spec stored in the checkpoint (so no
    dataset is needed to evaluate) or, failing that, from the local dataset. ``observation_space_json``: the
    dataset's observation space (Minari's serialization) where it is not a Box; the environment's
    observations are then flattened the same way as the data's."""
    import gymnasium as gym
    from gymnasium.envs.registration import EnvSpec

    def from_spec():
        return gym.make(EnvSpec.from_json(env_spec_json))

    def from_dataset():
        from srpo_cli.data.store import open_local

        return open_local(dataset_id).recover_environment(eval_env=True)

    raw = from_spec if env_spec_json else from_dataset

    def flattened():
        return flat_observation_env(raw(), observation_space_json)

    factory = flattened if observation_space_json else raw
    try:
        factory().close()
    except Exception as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise RuntimeFailure(
            f"Cannot create the evaluation environment of '{dataset_id}' ({msg}).",
            "Install its simulator (pip install 'gymnasium[mujoco]' for MuJoCo tasks, 'gymnasium-robotics' for "
            "Minari's D4RL antmaze, pointmaze, adroit and kitchen datasets) and check that the environment id in "
            "the dataset exists in this Gymnasium version.",
        ) from None
    return factory


@dataclass
class EvalResult:
    returns: np.ndarray
    lengths: np.ndarray
    wall_s: float
    ref_min: float | None = None
    ref_max: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def has_ref(self) -> bool:
        return self.ref_min is not None and self.ref_max is not None and self.ref_max != self.ref_min

    def normalized(self, r: np.ndarray | float) -> np.ndarray:
        """0-100 scale: 100 (R - R_random) / (R_expert - R_random)."""
        return 100.0 * (np.asarray(r) - self.ref_min) / (self.ref_max - self.ref_min)

    def summary(self) -> dict[str, Any]:
        out = {
            "episodes": int(len(self.returns)),
            "return_mean": float(self.returns.mean()),
            "return_std": float(self.returns.std()),
            "length_mean": float(self.lengths.mean()),
            "wall_s": round(self.wall_s, 3),
        }
        if self.has_ref:
            out["score_mean"] = float(self.normalized(self.returns.mean()))
            out["score_std"] = float(100.0 * self.returns.std() / (self.ref_max - self.ref_min))
            out["score_scale"] = "0-100 normalized: 100 (R - ref_min) / (ref_max - ref_min)"
        out.update(self.extra)
        return out


def run_episodes(
    policy: Callable[[np.ndarray], np.ndarray],
    env_fn: Callable[[], Any],
    episodes: int,
    num_envs: int,
    seed: int,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Roll ``policy`` (batch of observations -> batch of env actions) for exactly ``episodes`` episodes.
    ``progress(finished, episodes)`` is called as episodes finish (a progress bar's update).

    Episodes are split statically across the environments (env i runs a fixed quota) so that short
    episodes cannot crowd out long ones and bias the mean; the autoreset step that follows an episode's
    end is not counted. Env i is seeded with ``seed + i``.
    """
    import gymnasium as gym

    n = max(1, min(num_envs, episodes))
    quota = np.array([episodes // n + (i < episodes % n) for i in range(n)])
    envs = gym.vector.SyncVectorEnv([env_fn for _ in range(n)])
    try:
        obs, _ = envs.reset(seed=seed)
        done_count = np.zeros(n, dtype=int)
        ep_ret = np.zeros(n)
        ep_len = np.zeros(n, dtype=int)
        autoreset = np.zeros(n, dtype=bool)
        returns: list[list[float]] = [[] for _ in range(n)]
        lengths: list[list[int]] = [[] for _ in range(n)]
        while np.any(done_count < quota):
            actions = policy(obs.astype(np.float32, copy=False))
            obs, r, term, trunc, _ = envs.step(actions)
            active = (~autoreset) & (done_count < quota)
            ep_ret[active] += r[active]
            ep_len[active] += 1
            finished = active & (term | trunc)
            for i in np.flatnonzero(finished):
                returns[i].append(float(ep_ret[i]))
                lengths[i].append(int(ep_len[i]))
                done_count[i] += 1
            ep_ret[finished] = 0.0
            ep_len[finished] = 0
            autoreset = term | trunc
            if progress is not None and finished.any():
                progress(int(done_count.sum()), episodes)
    finally:
        envs.close()
    return np.array([x for env in returns for x in env]), np.array([x for env in lengths for x in env])


def evaluate(
    policy: Callable[[np.ndarray], np.ndarray],
    env_fn: Callable[[], Any],
    episodes: int,
    num_envs: int,
    seed: int,
    ref_min: float | None,
    ref_max: float | None,
    progress: Callable[[int, int], None] | None = None,
) -> EvalResult:
    t0 = time.perf_counter()
    returns, lengths = run_episodes(policy, env_fn, episodes, num_envs, seed, progress)
    return EvalResult(returns, lengths, time.perf_counter() - t0, ref_min, ref_max)


# From this many seeds on, summaries add the interquartile mean and its bootstrap confidence interval.
ROBUST_FROM_SEEDS = 5


def interquartile_mean(x: np.ndarray) -> float:
    """Mean of the middle half of the values (a quarter trimmed from each end, as scipy's trim_mean(x, 0.25)):
    robust to one lucky or failed seed, less noisy than the median (Agarwal et al., "Deep Reinforcement
    Learning at the Edge of the Statistical Precipice", NeurIPS 2021)."""
    x = np.sort(np.asarray(x, dtype=float))
    cut = int(0.25 * len(x))
    return float(x[cut : len(x) - cut].mean())


def bootstrap_ci(x: np.ndarray, stat=interquartile_mean, reps: int = 2000, level: float = 0.95, seed: int = 0):
    """Percentile bootstrap interval of ``stat`` over seeds, resampling seeds with replacement (for one task
    the stratified bootstrap of Agarwal et al. is this one); a fixed generator, so the interval is reproducible."""
    x = np.asarray(x, dtype=float)
    rng = np.random.default_rng(seed)
    draws = np.array([stat(x[rng.integers(0, len(x), len(x))]) for _ in range(reps)])
    lo, hi = np.quantile(draws, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def aggregate_seeds(results: list[EvalResult]) -> dict[str, Any]:
    """Mean +- std over training seeds of the per-seed mean (the field's convention); from
    ``ROBUST_FROM_SEEDS`` seeds, also the interquartile mean with a 95% bootstrap confidence interval."""
    means = np.array([r.returns.mean() for r in results])
    out: dict[str, Any] = {
        "seeds": len(results),
        "return_mean": float(means.mean()),
        "return_std": float(means.std()),
    }
    if all(r.has_ref for r in results):
        scores = np.array([float(r.normalized(r.returns.mean())) for r in results])
        out.update(
            score_mean=float(scores.mean()),
            score_std=float(scores.std()),
            score_scale="0-100 normalized, mean +- std over training seeds",
        )
    if len(results) >= ROBUST_FROM_SEEDS:
        key, values = ("score", scores) if "score_mean" in out else ("return", means)
        lo, hi = bootstrap_ci(values)
        out.update({f"{key}_iqm": interquartile_mean(values), f"{key}_iqm_ci95": [lo, hi]})
    return out


def periodic_eval_hook(actor, data, cfg) -> Callable[[int], dict[str, float]]:
    """For ``extract.eval_every``: evaluate the current actor through the same fast path as eval."""
    from srpo_cli.act.policies import NumpyActor

    env_fn = make_env_fn(data.info.get("eval_env_spec"), data.dataset_id, data.info.get("observation_space"))

    def hook(step: int) -> dict[str, float]:
        pol = NumpyActor.from_module(actor, data.action_low, data.action_high)
        res = evaluate(
            pol,
            env_fn,
            cfg.extract.eval_episodes,
            cfg.eval.num_envs,
            cfg.eval.seed,
            data.ref_min_score,
            data.ref_max_score,
        )
        out = {"eval_return": float(res.returns.mean())}
        if res.has_ref:
            out["eval_score"] = float(res.normalized(res.returns.mean()))
        return out

    return hook


def latency(fn: Callable[[], Any], repeats: int = 2000, warmup: int = 200) -> dict[str, float]:
    """Wall time of ``fn()`` per call in microseconds: p50, p95, mean over ``repeats`` timed calls."""
    for _ in range(warmup):
        fn()
    times = np.empty(repeats)
    clock = time.perf_counter_ns
    for i in range(repeats):
        t0 = clock()
        fn()
        times[i] = clock() - t0
    times /= 1000.0
    return {
        "p50_us": float(np.percentile(times, 50)),
        "p95_us": float(np.percentile(times, 95)),
        "mean_us": float(times.mean()),
        "repeats": repeats,
    }
