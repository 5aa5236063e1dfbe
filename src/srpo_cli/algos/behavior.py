"""Stage 1: fit the diffusion behavior model mu(a|s) by eps-prediction."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from srpo_cli import artifacts
from srpo_cli.config import RunConfig
from srpo_cli.data.transitions import Transitions
from srpo_cli.nn.compile import CompiledOrEager
from srpo_cli.nn.diffusion import ScoreNet, VPSchedule, eps_loss
from srpo_cli.train.device import without_emulated_bf16
from srpo_cli.train.distributed import is_main
from srpo_cli.train.loop import Stage, fit, stderr
from srpo_cli.train.optim import optim_kwargs, optimizer_step


class BehaviorStage(Stage):
    name = "behavior"
    ckpt_stage = "behavior"
    file_name = artifacts.BEHAVIOR

    def __init__(self, cfg: RunConfig, data: Transitions, device: torch.device):
        super().__init__(cfg, data, device, cfg.behavior.batch_size)
        data = self.data  # on the training device
        c = cfg.behavior
        self.schedule = VPSchedule(c.beta_0, c.beta_1)
        self.net = ScoreNet.from_config(data.obs_dim, data.action_dim, c).to(device)
        self.modules = {"net": self.net}
        self.optimizers = {
            "net": torch.optim.AdamW(self.net.parameters(), **optim_kwargs(c.lr, device, weight_decay=c.weight_decay))
        }
        if c.lr_schedule == "cosine":
            opt = self.optimizers["net"]
            self.schedulers = {"net": torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=c.steps, eta_min=0.0)}
        self.forward = CompiledOrEager(self.net, "the behavior net") if c.compile else self.net
        self.autocast = c.bf16
        self.ema_params: list[torch.Tensor] = []
        if c.ema_decay > 0:
            # A separate module so that it is saved, resumed and loaded downstream like the net itself; the
            # training trajectory of the net is the same with or without it.
            self.ema = copy.deepcopy(self.net).requires_grad_(False)
            self.modules["ema"] = self.ema
            self.ema_params = list(self.ema.parameters())
            self.net_params = list(self.net.parameters())

    def step(self) -> dict[str, torch.Tensor]:
        c = self.cfg.behavior
        idx = self.batch_indices()
        s, a = self.data.observations[idx], self.data.actions[idx]
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            loss = eps_loss(self.forward, self.schedule, a, s, c.t_min, c.t_max, self.noise_generator)
        opt = self.optimizers["net"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        optimizer_step(opt)
        if self.schedulers:
            self.schedulers["net"].step()
        if self.ema_params:
            # ema <- decay * ema + (1 - decay) * net, all parameters in one foreach call. Without no_grad,
            # autograd records the in-place lerp (the net's weights require grad) and the average becomes the
            # head of a graph that grows every step: memory climbed by hundreds of MB a minute.
            with torch.no_grad():
                torch._foreach_lerp_(self.ema_params, self.net_params, 1.0 - c.ema_decay)
        return {"loss": loss.detach()}


def train_behavior(
    cfg: RunConfig,
    data: Transitions,
    run_dir: Path,
    device: torch.device,
    *,
    resume: bool = False,
    quiet: bool = False,
    stop_at: int | None = None,
) -> dict[str, Any]:
    """Train the behavior model; writes ``run_dir/behavior.safetensors``. Returns a summary."""
    cfg, note = without_emulated_bf16(cfg, device, "behavior.bf16")
    if note and not quiet and is_main():
        stderr.print(f"[yellow]warning:[/] {note}", highlight=False)
    stage = BehaviorStage(cfg, data, device)
    c = cfg.behavior
    return fit(
        stage,
        c.steps,
        Path(run_dir) / artifacts.BEHAVIOR,
        resume=resume,
        log_every=c.log_every,
        ckpt_every=c.ckpt_every,
        quiet=quiet,
        stop_at=stop_at,
    )
