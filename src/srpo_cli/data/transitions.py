"""Minari datasets -> transition tensors on the training device, and batch sampling without a DataLoader."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from srpo_cli.data.spaces import _serialized_unless_box, flatten_observations
from srpo_cli.data.store import open_local
from srpo_cli.errors import RuntimeFailure, UsageError


@dataclass
class Transitions:
    """(s, a, r, s', d) for every step of every episode, as tensors on one device.

    ``terminals`` is 1 only where the environment *terminated*; a time-limit truncation stays 0 so that the
    critic bootstraps through it. Actions are mapped to [-1, 1] when the action space is a finite Box that
    is not already [-1, 1]; ``action_low``/``action_high`` map them back for acting.
    """

    dataset_id: str
    observations: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    next_observations: torch.Tensor
    terminals: torch.Tensor
    episode_returns: np.ndarray
    action_low: np.ndarray
    action_high: np.ndarray
    ref_min_score: float | None = None
    ref_max_score: float | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return self.observations.shape[0]

    @property
    def obs_dim(self) -> int:
        return self.observations.shape[1]

    @property
    def action_dim(self) -> int:
        return self.actions.shape[1]

    @property
    def device(self) -> torch.device:
        return self.observations.device

    def to(self, device: str | torch.device) -> Transitions:
        """The same transitions with their tensors on ``device`` (self when they are there already)."""
        device = torch.device(device)
        if self.device.type == device.type and (device.index is None or self.device.index == device.index):
            return self
        moved = {k: getattr(self, k).to(device) for k in _TENSOR_FIELDS}
        return dataclasses.replace(self, **moved)


_TENSOR_FIELDS = ("observations", "actions", "rewards", "next_observations", "terminals")


def episodes_to_arrays(episodes, observation_space: Any = None) -> dict[str, np.ndarray]:
    """Align Minari's T+1 observations: obs = o[:-1], next_obs = o[1:], per episode, then concatenate.
    ``observation_space``: the dataset's; Dict and Tuple observations are flattened by it."""
    obs, nxt, act, rew, term, returns, lengths = [], [], [], [], [], [], []
    for ep in episodes:
        if isinstance(ep.observations, dict | tuple) and observation_space is not None:
            o = flatten_observations(ep.observations, observation_space)
        else:
            o = np.asarray(ep.observations)
        if o.dtype == object or o.ndim != 2:
            raise UsageError(
                "srpo handles Box observations (and Dict or Tuple spaces of them); this dataset's observations "
                f"are {type(ep.observations).__name__} of shape {getattr(o, 'shape', '?')}."
            )
        a = np.asarray(ep.actions, dtype=np.float32).reshape(len(ep.actions), -1)
        r = np.asarray(ep.rewards, dtype=np.float64)
        t = np.asarray(ep.terminations, dtype=bool)
        if len(o) != len(a) + 1:
            raise RuntimeFailure(
                f"Episode {ep.id} has {len(o)} observations for {len(a)} actions; Minari episodes must carry T+1."
            )
        obs.append(o[:-1])
        nxt.append(o[1:])
        act.append(a)
        rew.append(r)
        term.append(t)
        returns.append(float(r.sum()))
        lengths.append(len(a))
    if not obs:
        raise RuntimeFailure("The dataset has no episodes.")
    return {
        "observations": np.concatenate(obs).astype(np.float32),
        "next_observations": np.concatenate(nxt).astype(np.float32),
        "actions": np.concatenate(act),
        "rewards": np.concatenate(rew).astype(np.float32),
        "terminals": np.concatenate(term).astype(np.float32),
        "episode_returns": np.asarray(returns),
        "episode_lengths": np.asarray(lengths),
    }


def _check_finite(arrays: dict[str, np.ndarray], dataset_id: str) -> None:
    for name in ("observations", "next_observations", "actions", "rewards"):
        bad = int((~np.isfinite(arrays[name])).sum())
        if bad:
            raise RuntimeFailure(
                f"Dataset '{dataset_id}' has {bad} non-finite values (NaN or inf) in '{name}'.",
                "Clean the data (or re-import it) before training.",
            )


def load_transitions(
    dataset_id: str, device: str | torch.device = "cpu", normalize_actions: bool = True
) -> Transitions:
    """Read every episode of a local Minari dataset into tensors on ``device``."""
    ds = open_local(dataset_id)
    arrays = episodes_to_arrays(ds.iterate_episodes(), ds.observation_space)
    _check_finite(arrays, dataset_id)
    low, high = action_space_bounds(ds.action_space, arrays["actions"].shape[1], normalize_actions)
    actions = normalize_action(arrays["actions"], low, high)
    meta = ds.storage.metadata
    spec_json = meta.get("eval_env_spec") or meta.get("env_spec")
    return Transitions(
        dataset_id=dataset_id,
        observations=torch.from_numpy(arrays["observations"]).to(device),
        actions=torch.from_numpy(actions).to(device),
        rewards=torch.from_numpy(arrays["rewards"]).to(device),
        next_observations=torch.from_numpy(arrays["next_observations"]).to(device),
        terminals=torch.from_numpy(arrays["terminals"]).to(device),
        episode_returns=arrays["episode_returns"],
        action_low=low,
        action_high=high,
        ref_min_score=_float_or_none(meta.get("ref_min_score")),
        ref_max_score=_float_or_none(meta.get("ref_max_score")),
        info={
            "episodes": len(arrays["episode_returns"]),
            "episode_lengths": arrays["episode_lengths"],
            "eval_env_spec": spec_json,
            "observation_space": _serialized_unless_box(ds.observation_space),
        },
    )


def _float_or_none(x: Any) -> float | None:
    """Minari stores metadata as text."""
    try:
        return None if x is None else float(x)
    except (TypeError, ValueError):
        return None


def action_space_bounds(space: Any, action_dim: int, normalize: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) that ``normalize_action`` maps to [-1, 1]: the space's finite bounds, else (-1, 1), a no-op."""
    low = np.asarray(getattr(space, "low", -np.ones(action_dim)), dtype=np.float32).reshape(-1)
    high = np.asarray(getattr(space, "high", np.ones(action_dim)), dtype=np.float32).reshape(-1)
    if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high))) or not normalize:
        low, high = -np.ones_like(low), np.ones_like(high)
    return low, high


def normalize_action(a: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Env action -> [-1, 1]."""
    return (2.0 * (a - low) / (high - low) - 1.0).astype(np.float32)


def denormalize_action(a: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """[-1, 1] -> env action."""
    return (low + (a + 1.0) * 0.5 * (high - low)).astype(np.float32)


def scale_rewards(
    rewards: torch.Tensor, episode_returns: np.ndarray, mode: str, scale: float = 1000.0, shift: float = -1.0
) -> torch.Tensor:
    """Reward transform of the spec: locomotion return-range scaling, antmaze shift, or none."""
    if mode == "locomotion":
        span = float(np.max(episode_returns) - np.min(episode_returns))
        if not math.isfinite(span) or span <= 0:
            raise RuntimeFailure(
                "Locomotion reward scaling needs episodes with different returns (max_return - min_return > 0).",
                "Use --set critic.reward_mode=none for this dataset.",
            )
        return rewards * (scale / span)
    if mode == "antmaze":
        return rewards + shift
    if mode == "none":
        return rewards
    raise UsageError(f"Unknown reward mode '{mode}'.")


def observation_statistics(observations: torch.Tensor, eps: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and std + eps over the dataset's states (eps keeps constant dimensions finite)."""
    return observations.mean(0), observations.std(0) + eps


class BatchSampler:
    """Indices into the transition tensors, drawn on the data's device.

    ``epoch`` mode shuffles once per epoch and walks the permutation without replacement, dropping the
    remainder, as the reference code does; ``uniform`` draws i.i.d. indices. All randomness comes from
    one ``torch.Generator`` whose state (and the permutation) is part of the resume state.
    """

    def __init__(self, n: int, batch_size: int, generator: torch.Generator, mode: str = "epoch"):
        if batch_size > n and mode == "epoch":
            raise UsageError(
                f"Batch size {batch_size} is larger than the dataset ({n} transitions).",
                "Lower --batch-size or use a larger dataset.",
            )
        self.n, self.batch_size, self.mode, self.gen = n, batch_size, mode, generator
        self.device = generator.device
        self.perm: torch.Tensor | None = None
        self.pos = 0

    def next(self) -> torch.Tensor:
        if self.mode == "uniform":
            return torch.randint(0, self.n, (self.batch_size,), generator=self.gen, device=self.device)
        if self.perm is None or self.pos + self.batch_size > self.n:
            self.perm = torch.randperm(self.n, generator=self.gen, device=self.device)
            self.pos = 0
        idx = self.perm[self.pos : self.pos + self.batch_size]
        self.pos += self.batch_size
        return idx

    def state_dict(self) -> dict[str, Any]:
        return {"perm": None if self.perm is None else self.perm.cpu(), "pos": self.pos}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.perm = None if sd["perm"] is None else sd["perm"].to(self.device)
        self.pos = int(sd["pos"])


def dataset_report(data: Transitions, sample: int = 2000, seed: int = 0) -> dict[str, Any]:
    """The statistics ``srpo datasets show`` prints: episodes and their lengths, how they end, returns (on the
    0-100 scale where the dataset has reference scores), action ranges and how many components sit on a bound,
    and how widely actions spread for similar states.

    The last is measured on a sample of states: the mean distance between the actions of each sampled state and
    of its nearest sampled neighbour, against the mean distance between the actions of random pairs. A ratio
    near 1 means the data act very differently in similar states (several behaviors mixed, or much noise);
    near 0, one action per state (one deterministic agent)."""
    lengths = np.asarray(data.info.get("episode_lengths", []))
    terminated = int(data.terminals.sum().item())
    returns = np.asarray(data.episode_returns, dtype=float)
    a = data.actions.detach().cpu().numpy()
    out: dict[str, Any] = {
        "dataset": data.dataset_id,
        "episodes": int(len(returns)),
        "steps": int(data.size),
        "obs_dim": data.obs_dim,
        "action_dim": data.action_dim,
        "episode_length": {k: float(f(lengths)) for k, f in (("min", np.min), ("median", np.median), ("max", np.max))}
        if len(lengths)
        else {},
        "terminated": terminated,
        "truncated": int(len(returns)) - terminated,
        "return": _quantiles(returns),
    }
    if data.ref_min_score is not None and data.ref_max_score is not None and data.ref_max_score != data.ref_min_score:
        scores = 100.0 * (returns - data.ref_min_score) / (data.ref_max_score - data.ref_min_score)
        out["score"] = _quantiles(scores)
    # actions are stored in [-1, 1] (the space's finite bounds mapped there); report them in the env's units
    env_a = denormalize_action(a, data.action_low, data.action_high)
    out["action_min"] = env_a.min(0).round(4).tolist()
    out["action_max"] = env_a.max(0).round(4).tolist()
    out["actions_on_bound"] = float((np.abs(a) >= 1.0 - 1e-6).mean())
    rng = np.random.default_rng(seed)
    idx = rng.choice(data.size, size=min(sample, data.size), replace=False)
    s = data.observations.detach().cpu().numpy()[idx]
    sa = a[idx]
    if len(idx) > 2:
        d = ((s[:, None, :] - s[None, :, :]) ** 2).sum(-1)
        np.fill_diagonal(d, np.inf)
        nearest = d.argmin(1)
        near = float(np.linalg.norm(sa - sa[nearest], axis=1).mean())
        pairs = float(np.linalg.norm(sa - sa[rng.permutation(len(idx))], axis=1).mean())
        out["action_spread"] = {"nearest_state": near, "random_pair": pairs, "ratio": near / pairs if pairs else 0.0}
    return out


def _quantiles(x: np.ndarray) -> dict[str, float]:
    q = np.quantile(x, [0.0, 0.25, 0.5, 0.75, 1.0]) if len(x) else [float("nan")] * 5
    return {
        "mean": float(np.mean(x)) if len(x) else float("nan"),
        **dict(zip(("min", "q25", "median", "q75", "max"), map(float, q), strict=True)),
    }


def report_line(report: dict[str, Any]) -> str:
    """One line of ``dataset_report`` for a stage's log."""
    score = report.get("score")
    ret = f"score {score['mean']:.1f} (0-100)" if score else f"return {report['return']['mean']:.1f}"
    spread = report.get("action_spread", {}).get("ratio")
    return (
        f"{report['episodes']:,} episodes ({report['terminated']:,} terminated), mean {ret}, "
        f"{100 * report['actions_on_bound']:.1f}% of action components on a bound"
        + (f", actions of similar states {spread:.2f} as far apart as random pairs" if spread is not None else "")
    )
