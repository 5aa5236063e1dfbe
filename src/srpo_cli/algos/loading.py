"""Trained networks back from their checkpoints (the frozen behavior model and critic), and the checks that
checkpoints and data belong together."""

from __future__ import annotations

from pathlib import Path

import torch

from srpo_cli.data.transitions import Transitions
from srpo_cli.errors import RuntimeFailure
from srpo_cli.nn.diffusion import ScoreNet, VPSchedule
from srpo_cli.nn.networks import AdvantageQ, EnsembleQ, ValueNet
from srpo_cli.train.checkpoint import Checkpoint, load_checkpoint


def check_inputs(behavior_ckpt, critic_ckpt, data: Transitions) -> None:
    check_same_lineage(behavior_ckpt, critic_ckpt)
    for ck in (behavior_ckpt, critic_ckpt):
        if (ck.meta["dataset_id"], ck.meta["obs_dim"], ck.meta["action_dim"]) != (
            data.dataset_id,
            data.obs_dim,
            data.action_dim,
        ):
            raise RuntimeFailure(
                f"{ck.path} was trained on '{ck.meta['dataset_id']}' (obs_dim {ck.meta['obs_dim']}, action_dim "
                f"{ck.meta['action_dim']}) but this stage runs on '{data.dataset_id}' (obs_dim {data.obs_dim}, "
                f"action_dim {data.action_dim}).",
                "Use the same --dataset as the earlier stages, or another --run directory.",
            )


def load_behavior(path: Path, device: torch.device) -> tuple[ScoreNet, VPSchedule, Checkpoint]:
    """The frozen behavior model, in eval mode (dropout off), and its noise schedule."""
    ckpt = load_checkpoint(path, "behavior", device=device)
    c = ckpt.config["behavior"]
    from srpo_cli.config import BehaviorConfig

    bc = BehaviorConfig(**c)
    net = ScoreNet.from_config(ckpt.meta["obs_dim"], ckpt.meta["action_dim"], bc).to(device)
    # With behavior.ema_decay the moving average is the model (as in IDQL); the raw weights stay for --resume.
    net.load_state_dict(ckpt.section("ema" if bc.ema_decay > 0 else "net"))
    net.eval().requires_grad_(False)
    return net, VPSchedule(bc.beta_0, bc.beta_1), ckpt


def load_critic(
    path: Path, device: torch.device
) -> tuple[EnsembleQ | AdvantageQ, EnsembleQ | AdvantageQ, ValueNet, Checkpoint]:
    """(Q, target Q, V), frozen; Q as V + A for an advantage-form critic."""
    ckpt = load_checkpoint(path, "critic", device=device)
    c = ckpt.config["critic"]
    o, a = ckpt.meta["obs_dim"], ckpt.meta["action_dim"]
    norm = bool(c.get("normalize_observations", False))  # checkpoints from before the field: off
    n_q = int(c.get("n_q", 2))  # checkpoints from before the field: the twin Q
    ln = bool(c.get("layer_norm", False))  # checkpoints from before the field: off
    q = EnsembleQ(o, a, c["hidden_dim"], c["n_layers"], n_q, normalize_obs=norm, layer_norm=ln).to(device)
    q_t = EnsembleQ(o, a, c["hidden_dim"], c["n_layers"], n_q, normalize_obs=norm, layer_norm=ln).to(device)
    v = ValueNet(o, c["hidden_dim"], c["n_layers"], normalize_obs=norm).to(device)
    q.load_state_dict(ckpt.section("q"))
    q_t.load_state_dict(ckpt.section("q_target"))
    v.load_state_dict(ckpt.section("v"))
    for m in (q, q_t, v):
        m.eval().requires_grad_(False)
    if c.get("q_form", "direct") == "advantage":  # the networks hold A(s, a); every caller reads Q = V + A
        q, q_t = AdvantageQ(q, v), AdvantageQ(q_t, v)
    return q, q_t, v, ckpt


def check_same_lineage(a: Checkpoint, b: Checkpoint) -> None:
    """Refuse to combine checkpoints trained on different datasets or dimensions."""
    for key in ("dataset_id", "obs_dim", "action_dim"):
        if a.meta[key] != b.meta[key]:
            raise RuntimeFailure(
                f"{a.path} and {b.path} do not belong together: {key} is {a.meta[key]!r} in the first and "
                f"{b.meta[key]!r} in the second.",
                "Train both stages on the same dataset (same --dataset and --run directory).",
            )
