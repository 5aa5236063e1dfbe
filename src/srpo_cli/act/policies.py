"""Loading trained networks for acting: the SRPO actor's fast path, and the diffusion-policy baseline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from srpo_cli import artifacts
from srpo_cli.algos.loading import check_same_lineage, load_behavior, load_critic
from srpo_cli.config import RunConfig
from srpo_cli.errors import RuntimeFailure
from srpo_cli.nn.diffusion import ScoreNet, VPSchedule, sample_actions
from srpo_cli.nn.kernels import mlp_kernel, pack_layers
from srpo_cli.nn.networks import EnsembleQ, TanhActor
from srpo_cli.train.checkpoint import Checkpoint, load_checkpoint


class NumpyActor:
    """The SRPO actor (a tanh-MLP) acting on numpy observations, float32.

    At batch 1 a robot's control loop is dominated by call overhead, not arithmetic. One observation goes
    through ``kernels.mlp_kernel``: the whole forward compiled into one native call (numba), about half the
    time of the best numpy forward here. Where numba is unavailable, a numpy forward takes its place (same
    actions). Batches go through numpy matmuls. ``srpo eval`` and ``srpo bench`` act through this object.
    """

    def __init__(
        self,
        layers: list[tuple[np.ndarray, np.ndarray]],
        action_low: np.ndarray,
        action_high: np.ndarray,
        compiled: bool = True,
    ):
        # Weights stored transposed and contiguous so each layer is x @ W + b.
        self.layers = [(np.ascontiguousarray(w.T, dtype=np.float32), b.astype(np.float32)) for w, b in layers]
        self.obs_dim = self.layers[0][0].shape[0]
        self.action_dim = self.layers[-1][0].shape[1]
        self.low = action_low.astype(np.float32)
        self.half_range = ((action_high - action_low) * 0.5).astype(np.float32)
        self.identity_scale = bool(np.all(self.low == -1.0) and np.all(self.half_range == 1.0))
        self._kernel = mlp_kernel() if compiled else None
        self.backend = "numba" if self._kernel is not None else "numpy"
        if self._kernel is not None:
            self._params, self._dims = pack_layers(self.layers)
            self._scratch = np.empty((2, max([*self._dims[1:-1].tolist(), 1])), dtype=np.float32)
            return
        # The numpy fallback for one observation: each numpy call costs about a microsecond here, so the bias
        # rides in the matmul as an extra weight row against a constant 1 kept at the end of preallocated
        # input rows, and every result is written in place: 7 numpy calls instead of 10 and no allocation.
        self._aug = [np.vstack([w, b[None, :]]).astype(np.float32) for w, b in self.layers]
        self._rows = [np.ones(w.shape[0], dtype=np.float32) for w in self._aug]
        self._hidden = [row[:-1] for row in self._rows[1:]]
        self._out = np.empty(self._aug[-1].shape[1], dtype=np.float32)
        self._zero = np.float32(0.0)

    @classmethod
    def from_module(
        cls, actor: TanhActor, action_low: np.ndarray, action_high: np.ndarray, compiled: bool = True
    ) -> NumpyActor:
        linears = [m for m in actor.net if isinstance(m, torch.nn.Linear)]
        layers = [(m.weight.detach().cpu().numpy(), m.bias.detach().cpu().numpy()) for m in linears]
        return cls(layers, action_low, action_high, compiled)

    def act_vector(self, obs: np.ndarray) -> np.ndarray:
        """One observation [obs_dim] (float32, contiguous) -> a new action array [action_dim] in [-1, 1]."""
        if obs.shape != (self.obs_dim,):  # the compiled kernel trusts its input's length
            raise self._shape_error(obs.shape)
        out = np.empty(self.action_dim, dtype=np.float32)
        if self._kernel is not None:
            self._kernel(obs, self._params, self._dims, self._scratch, out)
            return out
        np.copyto(self._rows[0][:-1], obs)
        zero = self._zero
        for row, w, h in zip(self._rows, self._aug, self._hidden, strict=False):
            np.dot(row, w, out=h)
            np.maximum(h, zero, out=h)
        np.dot(self._rows[-1], self._aug[-1], out=self._out)
        return np.tanh(self._out, out=out)

    def act_one(self, obs: np.ndarray) -> np.ndarray:
        """One observation [1, obs_dim] -> [1, action_dim] in [-1, 1]. Not re-entrant (shared buffers)."""
        return self.act_vector(obs[0])[None]

    def _shape_error(self, shape: tuple[int, ...]) -> RuntimeFailure:
        return RuntimeFailure(
            f"The policy takes observations of {self.obs_dim} numbers, got an array of shape {tuple(shape)}.",
            "Give it observations of the environment (and dataset) it was trained on.",
        )

    def act_normalized(self, obs: np.ndarray) -> np.ndarray:
        if obs.ndim != 2 or obs.shape[1] != self.obs_dim:
            raise self._shape_error(obs.shape)
        if obs.shape[0] == 1:
            return self.act_one(obs)
        x = obs
        last = len(self.layers) - 1
        for i, (w, b) in enumerate(self.layers):
            x = x @ w
            x += b
            if i < last:
                np.maximum(x, 0.0, out=x)
        return np.tanh(x, out=x)

    def to_env(self, a: np.ndarray) -> np.ndarray:
        if self.identity_scale:
            return a
        return self.low + (a + 1.0) * self.half_range

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        obs = np.ascontiguousarray(obs, dtype=np.float32)  # the compiled kernel takes one memory layout
        if obs.ndim == 1:
            return self.to_env(self.act_vector(obs))
        return self.to_env(self.act_normalized(obs))


def actor_module(ckpt: Checkpoint, prefix: str = "actor") -> TanhActor:
    cfg = ckpt.config
    section = "extract" if ckpt.stage == "actor" else "baseline"
    c = cfg[section]
    net = TanhActor(ckpt.meta["obs_dim"], ckpt.meta["action_dim"], c["hidden_dim"], c["n_layers"])
    net.load_state_dict(ckpt.section(prefix))
    return net.eval()


def action_bounds(ckpt: Checkpoint) -> tuple[np.ndarray, np.ndarray]:
    return ckpt.tensors["action.low"].cpu().numpy(), ckpt.tensors["action.high"].cpu().numpy()


def actor_policy(ckpt: Checkpoint) -> NumpyActor:
    """An actor-like checkpoint (SRPO actor, AWR or BC policy) as a numpy policy acting in env units."""
    if ckpt.stage not in ("actor", "awr", "bc"):
        raise RuntimeFailure(f"{ckpt.path} is a '{ckpt.stage}' checkpoint; a policy (actor, awr or bc) was expected.")
    low, high = action_bounds(ckpt)
    return NumpyActor.from_module(actor_module(ckpt), low, high)


def load_actor_policy(path: Path, stage: str | None = None) -> NumpyActor:
    """``actor_policy`` of the checkpoint at ``path``."""
    return actor_policy(load_checkpoint(path, stage))


class DiffusionPolicy:
    """IDQL-style diffusion baseline: N candidates from the behavior model (K-step DPM-Solver-1 on the
    same VP-SDE), ranked by min of the target twin Q; act with the best."""

    def __init__(
        self,
        behavior: ScoreNet,
        schedule: VPSchedule,
        q_target: EnsembleQ,
        action_low: np.ndarray,
        action_high: np.ndarray,
        candidates: int,
        steps: int,
        device: torch.device,
        seed: int = 0,
    ):
        self.behavior, self.schedule, self.q = behavior, schedule, q_target
        self.candidates, self.steps, self.device = candidates, steps, device
        self.low = action_low.astype(np.float32)
        self.high = action_high.astype(np.float32)
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)

    @torch.inference_mode()
    def act_tensor(self, s: torch.Tensor) -> torch.Tensor:
        b, n = s.shape[0], self.candidates
        s_rep = s.repeat_interleave(n, dim=0)
        a = sample_actions(self.behavior, self.schedule, s_rep, self.steps, self.generator)
        q = self.q(s_rep, a).min(0).values.view(b, n)
        best = q.argmax(dim=1)
        return a.view(b, n, -1)[torch.arange(b, device=s.device), best]

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        s = torch.as_tensor(np.asarray(obs, dtype=np.float32), device=self.device)
        a = self.act_tensor(s).cpu().numpy()
        return self.low + (a + 1.0) * 0.5 * (self.high - self.low)


def diffusion_policy(cfg: RunConfig, run_dir: Path, device: torch.device):
    behavior, schedule, b_ckpt = load_behavior(run_dir / artifacts.BEHAVIOR, device)
    _, q_target, _, c_ckpt = load_critic(run_dir / artifacts.CRITIC, device)
    check_same_lineage(b_ckpt, c_ckpt)
    low, high = action_bounds(b_ckpt)
    pol = DiffusionPolicy(
        behavior,
        schedule,
        q_target,
        low,
        high,
        cfg.eval.candidates,
        cfg.eval.sampling_steps,
        device,
        seed=cfg.eval.seed,
    )
    return pol, b_ckpt
