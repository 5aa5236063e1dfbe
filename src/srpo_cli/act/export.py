"""Standalone actor files: TorchScript (plain torch) or ONNX (onnxruntime), action scaling baked in."""

from __future__ import annotations

import io
import json
from pathlib import Path

import torch
from torch import nn

from srpo_cli.act.policies import action_bounds, actor_module
from srpo_cli.errors import RuntimeFailure
from srpo_cli.train.checkpoint import Checkpoint, atomic_write, load_checkpoint


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


def exported_module(ckpt: Checkpoint) -> ExportedActor:
    if ckpt.stage not in ("actor", "awr", "bc"):
        raise RuntimeFailure(f"{ckpt.path} is a '{ckpt.stage}' checkpoint; export needs a policy checkpoint.")
    low, high = action_bounds(ckpt)
    return ExportedActor(actor_module(ckpt).net, torch.as_tensor(low), torch.as_tensor(high)).eval()


LAYOUT_KEY = "observation_layout"


def input_layout(ckpt: Checkpoint) -> list[tuple[str, int, int]] | None:
    """For a policy trained on Dict or Tuple observations: where each entry goes in the flat input vector
    (``data.observation_layout``); None for a Box, whose observations go in as they are."""
    from srpo_cli.data.spaces import observation_layout, trained_observation_space

    space = trained_observation_space(ckpt.meta["extra"])
    return None if space is None else observation_layout(space)


FORMATS = ("torchscript", "onnx", "torch-export")


def export_actor(ckpt_path: Path, out: Path, fmt: str = "torchscript") -> Path:
    """Write ``out``; atomic, so a failed export never leaves a half-written file. A policy of Dict
    observations carries its input layout in the file (TorchScript and torch.export: the extra file
    ``observation_layout``; ONNX: metadata of that name), JSON [[name, start, end], ...], so a robot's code can
    build the vector.

    ``torch-export``: a ``torch.export`` program (``torch.export.load(path).module()`` in plain torch), the
    format that replaces TorchScript, which torch deprecates. ``onnx``: through torch's current exporter (the
    dynamo-based one, which needs the ``onnxscript`` package). Both with a dynamic batch dimension."""
    ckpt = load_checkpoint(ckpt_path)
    module = exported_module(ckpt)
    obs_dim = module.net[0].in_features
    example = torch.zeros(2, obs_dim)
    layout = input_layout(ckpt)
    layout_json = json.dumps(layout) if layout is not None else None
    extra = {LAYOUT_KEY: layout_json} if layout_json else {}
    if fmt == "torchscript":
        scripted = torch.jit.script(module)
        atomic_write(out, lambda tmp: torch.jit.save(scripted, tmp, _extra_files=extra))
    elif fmt == "torch-export":
        batch = torch.export.Dim("batch")
        program = torch.export.export(module, (example,), dynamic_shapes=({0: batch},))
        buffer = io.BytesIO()  # torch.export.save wants a .pt2 name or a buffer; the atomic write's is neither
        torch.export.save(program, buffer, extra_files=extra)
        atomic_write(out, lambda tmp: Path(tmp).write_bytes(buffer.getvalue()))
    elif fmt == "onnx":
        try:
            import onnx
            import onnxscript  # noqa: F401  (what torch's current ONNX exporter builds on)
        except ImportError:
            raise RuntimeFailure(
                "ONNX export needs the 'onnx' and 'onnxscript' packages.",
                "Install them with: pip install 'srpo-cli[onnx]'",
            ) from None

        def write(tmp: str) -> None:
            program = torch.onnx.export(
                module,
                (example,),
                input_names=["obs"],
                output_names=["action"],
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                dynamo=True,
                verbose=False,  # its progress lines would land on stdout, where results go
            )
            model = program.model_proto
            if layout_json:
                onnx.helper.set_model_props(model, {LAYOUT_KEY: layout_json})
            onnx.save(model, tmp)

        atomic_write(out, write)
    else:
        raise RuntimeFailure(f"Unknown export format '{fmt}'.", f"Choose one of {', '.join(FORMATS)}.")
    return out
