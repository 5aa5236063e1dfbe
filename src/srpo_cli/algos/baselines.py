"""Comparison policies trained on the same data: AWR (the reference's side policy, trained here after the
critic instead of inside its step, so it stays off the critic's hot path) and plain behavior cloning."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from srpo_cli import artifacts
from srpo_cli.algos.loading import check_inputs, load_critic
from srpo_cli.algos.losses import weighted_regression_loss
from srpo_cli.config import RunConfig
from srpo_cli.data.transitions import Transitions
from srpo_cli.nn.networks import TanhActor
from srpo_cli.train.checkpoint import sha256_file
from srpo_cli.train.loop import Stage, fit
from srpo_cli.train.optim import optim_kwargs, optimizer_step


class RegressionStage(Stage):
    """tanh-MLP regression to dataset actions with weights exp(temperature (min Q_target - V)) (AWR) or 1 (BC)."""

    name = "baseline"

    def __init__(self, kind: str, cfg: RunConfig, data: Transitions, device: torch.device, run_dir: Path):
        super().__init__(cfg, data, device, cfg.baseline.batch_size)
        data = self.data  # on the training device
        self.kind = kind
        self.name = kind  # metrics/<kind>.csv and the progress bar's label
        self.ckpt_stage = kind
        self.file_name = artifacts.STAGE_FILES[kind]
        c = cfg.baseline
        if kind == "awr":
            c_path = Path(run_dir) / artifacts.CRITIC
            _, self.q_target, self.v, c_ckpt = load_critic(c_path, device)
            check_inputs(c_ckpt, c_ckpt, data)
            self.parents = {artifacts.CRITIC: sha256_file(c_path)}
        torch.manual_seed(cfg.seed)
        self.policy = TanhActor(data.obs_dim, data.action_dim, c.hidden_dim, c.n_layers).to(device)
        self.modules = {"actor": self.policy}
        opt = torch.optim.Adam(self.policy.parameters(), **optim_kwargs(c.lr, device))
        self.optimizers = {"actor": opt}
        self.schedulers = {"actor": torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=c.steps, eta_min=0.0)}

    def step(self) -> dict[str, torch.Tensor]:
        c = self.cfg.baseline
        idx = self.batch_indices()
        s, a = self.data.observations[idx], self.data.actions[idx]
        if self.kind == "awr":
            with torch.no_grad():
                adv = self.q_target(s, a).min(0).values - self.v(s)
                w = torch.exp(c.temperature * adv).clamp(max=c.max_weight)
        else:
            w = torch.ones(s.shape[0], device=self.device)
        loss = weighted_regression_loss(self.policy(s), a, w)
        opt = self.optimizers["actor"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        optimizer_step(opt)
        self.schedulers["actor"].step()
        return {"loss": loss.detach(), "mean_weight": w.mean()}


def train_baseline(
    kind: str,
    cfg: RunConfig,
    data: Transitions,
    run_dir: Path,
    device: torch.device,
    *,
    resume: bool = False,
    quiet: bool = False,
    stop_at: int | None = None,
) -> dict[str, Any]:
    """Train the ``awr`` or ``bc`` policy; writes ``run_dir/<kind>.safetensors``."""
    stage = RegressionStage(kind, cfg, data, device, run_dir)
    c = cfg.baseline
    return fit(
        stage,
        c.steps,
        Path(run_dir) / stage.file_name,
        resume=resume,
        log_every=c.log_every,
        ckpt_every=c.ckpt_every,
        quiet=quiet,
        stop_at=stop_at,
        keep_every=c.keep_every,
    )
