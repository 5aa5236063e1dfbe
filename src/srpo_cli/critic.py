"""Stage 2: the IQL critic: twin Q, Polyak target twin Q, and V by expectile regression."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from .behavior import optim_kwargs
from .config import RunConfig
from .data import Transitions, observation_statistics, scale_rewards
from .losses import expectile_loss, iql_q_target, twin_q_loss
from .networks import EnsembleQ, ValueNet, polyak_update
from .training import Stage, fit

FILE_NAME = "critic.safetensors"


class CriticStage(Stage):
    name = "critic"
    ckpt_stage = "critic"
    file_name = FILE_NAME

    def __init__(self, cfg: RunConfig, data: Transitions, device: torch.device):
        super().__init__(cfg, data, device, cfg.critic.batch_size)
        c = cfg.critic
        norm = c.normalize_observations
        self.q = EnsembleQ(data.obs_dim, data.action_dim, c.hidden_dim, c.n_layers, normalize_obs=norm).to(device)
        self.v = ValueNet(data.obs_dim, c.hidden_dim, c.n_layers, normalize_obs=norm).to(device)
        if norm:
            mean, std = observation_statistics(data.observations, c.obs_std_eps)
            self.q.obs_norm.set_statistics(mean, std)
            self.v.obs_norm.set_statistics(mean, std)
        self.q_target = copy.deepcopy(self.q).requires_grad_(False)
        self.modules = {"q": self.q, "q_target": self.q_target, "v": self.v}
        # One Adam with a group per network is the same maths as two Adams (Adam is per-parameter) but one
        # fused kernel launch instead of two.
        groups = [{"params": self.q.parameters(), "lr": c.q_lr}, {"params": self.v.parameters(), "lr": c.v_lr}]
        self.optimizers = {"qv": torch.optim.Adam(groups, **optim_kwargs(c.q_lr, device))}
        self.rewards = scale_rewards(data.rewards, data.episode_returns, c.reward_mode, c.reward_scale, c.antmaze_shift)
        self._online = list(self.q.parameters())
        self._target = list(self.q_target.parameters())
        self._step = torch.compile(self._loss) if c.compile else self._loss

    def _loss(self, s, a, r, s2, d):
        c = self.cfg.critic
        with torch.no_grad():
            q_t = self.q_target(s, a).min(0).values
            v_next = self.v(s2)  # V(s') before this step's update, as in the reference
        v = self.v(s)
        v_loss = expectile_loss(q_t - v, c.expectile)
        y = iql_q_target(r, d, v_next, c.discount)
        q_loss = twin_q_loss(self.q(s, a), y)
        return v_loss, q_loss, v.detach().mean()

    def step(self) -> dict[str, torch.Tensor]:
        idx = self.sampler.next()
        d = self.data
        v_loss, q_loss, v_mean = self._step(
            d.observations[idx], d.actions[idx], self.rewards[idx], d.next_observations[idx], d.terminals[idx]
        )
        opt = self.optimizers["qv"]
        opt.zero_grad(set_to_none=True)
        (v_loss + q_loss).backward()
        opt.step()
        polyak_update(self._target, self._online, self.cfg.critic.tau)
        return {"q_loss": q_loss.detach(), "v_loss": v_loss.detach(), "v_mean": v_mean}


def train_critic(
    cfg: RunConfig,
    data: Transitions,
    run_dir: Path,
    device: torch.device,
    *,
    resume: bool = False,
    quiet: bool = False,
    stop_at: int | None = None,
) -> dict[str, Any]:
    """Train the IQL critic; writes ``run_dir/critic.safetensors`` (q, q_target, v). Returns a summary."""
    stage = CriticStage(cfg, data, device)
    c = cfg.critic
    return fit(
        stage,
        c.steps,
        Path(run_dir) / FILE_NAME,
        resume=resume,
        log_every=c.log_every,
        ckpt_every=c.ckpt_every,
        quiet=quiet,
        stop_at=stop_at,
    )
