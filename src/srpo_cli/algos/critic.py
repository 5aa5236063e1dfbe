"""Stage 2: the IQL critic: twin Q, Polyak target twin Q, and V by expectile regression."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from srpo_cli import artifacts
from srpo_cli.algos.losses import expectile_loss_and_grad, iql_q_target, twin_q_loss_and_grad
from srpo_cli.config import RunConfig
from srpo_cli.data.transitions import Transitions, observation_statistics, scale_rewards
from srpo_cli.nn.compile import CompiledOrEager
from srpo_cli.nn.networks import EnsembleQ, ValueNet, polyak_update
from srpo_cli.train.loop import Stage, fit
from srpo_cli.train.optim import optim_kwargs, optimizer_step


class CriticStage(Stage):
    name = "critic"
    ckpt_stage = "critic"
    file_name = artifacts.CRITIC

    def __init__(self, cfg: RunConfig, data: Transitions, device: torch.device):
        super().__init__(cfg, data, device, cfg.critic.batch_size)
        data = self.data  # on the training device
        c = cfg.critic
        norm = c.normalize_observations
        self.q = EnsembleQ(
            data.obs_dim, data.action_dim, c.hidden_dim, c.n_layers, c.n_q, normalize_obs=norm, layer_norm=c.layer_norm
        ).to(device)
        self.v = ValueNet(data.obs_dim, c.hidden_dim, c.n_layers, normalize_obs=norm).to(device)
        if norm:
            mean, std = observation_statistics(data.observations, c.obs_std_eps)
            self.q.obs_norm.set_statistics(mean, std)
            self.v.obs_norm.set_statistics(mean, std)
        self.q_target = copy.deepcopy(self.q).requires_grad_(False)
        self.modules = {"q": self.q, "q_target": self.q_target, "v": self.v}
        # advantage form (critic.q_form): the networks hold A and Q = V(s) + A(s, a), V a constant in the Q loss.
        # V can then no longer be fitted to the target Q (V + A_target - V leaves it no minimum: its mean ran
        # 84 -> 403 in 500 steps on bench/hopper); it is fitted to the expectile of r + gamma V_target(s') over
        # the data, V_target its Polyak copy. That is IQL's V where transitions are deterministic (MuJoCo), and
        # it no longer depends on A, so nothing feeds back.
        self.v_target = None
        if c.q_form == "advantage":
            self.v_target = copy.deepcopy(self.v).requires_grad_(False)
            self.modules["v_target"] = self.v_target
        # One Adam with a group per network is the same maths as two Adams (Adam is per-parameter) but one
        # fused kernel launch instead of two.
        groups = [{"params": self.q.parameters(), "lr": c.q_lr}, {"params": self.v.parameters(), "lr": c.v_lr}]
        self.optimizers = {"qv": torch.optim.Adam(groups, **optim_kwargs(c.q_lr, device))}
        self.rewards = scale_rewards(data.rewards, data.episode_returns, c.reward_mode, c.reward_scale, c.antmaze_shift)
        self._online = list(self.q.parameters())
        self._target = list(self.q_target.parameters())
        if self.v_target is not None:  # one Polyak update over both targets
            self._online += list(self.v.parameters())
            self._target += list(self.v_target.parameters())
        self._params = list(self.q.parameters()) + list(self.v.parameters())
        self._grads = (
            CompiledOrEager(self._losses_and_grads, "the critic step") if c.compile else self._losses_and_grads
        )

    @torch.no_grad()
    def _losses_and_grads(self, s, a, r, s2, d):
        """Both losses and their parameter gradients, by the networks' hand-written backward (the same
        gradients as autograd on v_loss + q_loss; the two losses share no parameters)."""
        c = self.cfg.critic
        # forward_cached: the ReLUs in place (no autograd here); the cached inputs are simply dropped
        if self.v_target is None:
            q_t = self.q_target.forward_cached(s, a)[0].min(0).values
        v_next = self.v.forward_cached(s2)[0]  # V(s') before this step's update, as in the reference
        v, v_inputs = self.v.forward_cached(s)
        q, q_inputs = self.q.forward_cached(s, a)
        if self.v_target is None:
            u = q_t - v
        else:  # A fits r + gamma V(s') - V(s); V the expectile of r + gamma V_target(s')
            u = iql_q_target(r, d, self.v_target.forward_cached(s2)[0], c.discount) - v
            q = q + v
        v_loss, d_u = expectile_loss_and_grad(u, c.expectile)  # u = Q_target - V: dV = -du
        q_loss, d_q = twin_q_loss_and_grad(q, iql_q_target(r, d, v_next, c.discount))
        grads = self.q.backward_cached(d_q, q_inputs) + self.v.backward_cached(d_u.neg_(), v_inputs)
        return v_loss, q_loss, v.mean(), grads

    def step(self) -> dict[str, torch.Tensor]:
        idx = self.batch_indices()
        d = self.data
        columns = (d.observations, d.actions, self.rewards, d.next_observations, d.terminals)
        # index_select, not advanced indexing: half the cost for 1-D indices on a CPU
        v_loss, q_loss, v_mean, grads = self._grads(*(x.index_select(0, idx) for x in columns))
        for p, g in zip(self._params, grads, strict=True):
            p.grad = g
        optimizer_step(self.optimizers["qv"])
        polyak_update(self._target, self._online, self.cfg.critic.tau)
        return {"q_loss": q_loss, "v_loss": v_loss, "v_mean": v_mean}


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
        Path(run_dir) / artifacts.CRITIC,
        resume=resume,
        log_every=c.log_every,
        ckpt_every=c.ckpt_every,
        quiet=quiet,
        stop_at=stop_at,
    )
