"""Standalone actor files: TorchScript (plain torch) or ONNX (onnxruntime), action scaling baked in."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .checkpoint import atomic_write, load_checkpoint
from .errors import RuntimeFailure
from .policies import action_bounds, actor_module


class ExportedActor(nn.Module):
    """obs [B, obs_dim] -> env action [B, action_dim]. srpo trains on raw observations (as the reference
    does), so the only preprocessing to bake in is the [-1, 1] -> action-space rescaling."""

    def __init__(self, net: nn.Module, low: torch.Tensor, high: torch.Tensor):
        super().__init__()
        self.net = net
        self.register_buffer("low", low.float())
        self.register_buffer("half_range", ((high - low) * 0.5).float())

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.low + (torch.tanh(self.net(obs)) + 1.0) * self.half_range


def exported_module(ckpt_path: Path) -> ExportedActor:
    ckpt = load_checkpoint(ckpt_path)
    if ckpt.stage not in ("actor", "awr", "bc"):
        raise RuntimeFailure(f"{ckpt_path} is a '{ckpt.stage}' checkpoint; export needs a policy checkpoint.")
    low, high = action_bounds(ckpt)
    return ExportedActor(actor_module(ckpt).net, torch.as_tensor(low), torch.as_tensor(high)).eval()


def export_actor(ckpt_path: Path, out: Path, fmt: str = "torchscript") -> Path:
    """Write ``out``; atomic, so a failed export never leaves a half-written file."""
    module = exported_module(ckpt_path)
    obs_dim = module.net[0].in_features
    example = torch.zeros(1, obs_dim)
    if fmt == "torchscript":
        scripted = torch.jit.script(module)
        atomic_write(out, lambda tmp: torch.jit.save(scripted, tmp))
    elif fmt == "onnx":
        try:
            import onnx  # noqa: F401
        except ImportError:
            raise RuntimeFailure(
                "ONNX export needs the 'onnx' package.", "Install it with: pip install 'srpo-cli[onnx]'"
            ) from None

        def write(tmp: str) -> None:
            torch.onnx.export(
                module,
                (example,),
                tmp,
                input_names=["obs"],
                output_names=["action"],
                dynamic_axes={"obs": {0: "batch"}, "action": {0: "batch"}},
                dynamo=False,
            )

        atomic_write(out, write)
    else:
        raise RuntimeFailure(f"Unknown export format '{fmt}'.")
    return out
