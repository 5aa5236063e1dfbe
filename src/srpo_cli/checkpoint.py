"""Safetensors checkpoints with metadata, atomic writes and clear errors.

A checkpoint file holds only what is needed to *use* a network (weights, action bounds). Everything needed
to *resume* training (optimizer moments, LR schedule, RNG states, sampler position) lives in a sibling
``<name>.state.pt`` so that a shipped actor stays small.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from . import __version__
from .errors import RuntimeFailure

FORMAT = "srpo"
SCHEMA = "1"
STAGES = ("behavior", "critic", "actor", "awr", "bc")


@dataclass
class Checkpoint:
    """Tensors plus decoded metadata."""

    path: Path
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]

    @property
    def stage(self) -> str:
        return self.meta["stage"]

    @property
    def config(self) -> dict[str, Any]:
        return self.meta["config"]

    def section(self, prefix: str) -> dict[str, torch.Tensor]:
        """State dict of one module saved under ``prefix.``."""
        p = prefix + "."
        return {k[len(p) :]: v for k, v in self.tensors.items() if k.startswith(p)}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write(path: Path, write: Any) -> None:
    """Call ``write(tmp_path)`` then rename over ``path``: a crash never leaves a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_checkpoint(
    path: Path,
    stage: str,
    modules: dict[str, dict[str, torch.Tensor]],
    *,
    config: dict[str, Any],
    dataset_id: str,
    obs_dim: int,
    action_dim: int,
    step: int,
    seed: int,
    parents: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write ``{module.param: tensor}`` with the metadata schema of DESIGN.md, atomically."""
    assert stage in STAGES, stage
    tensors = {
        f"{name}.{k}": v.detach().to("cpu", copy=True).contiguous()
        for name, sd in modules.items()
        for k, v in sd.items()
    }
    meta = {
        "format": FORMAT,
        "schema": SCHEMA,
        "stage": stage,
        "config": json.dumps(config, sort_keys=True),
        "dataset_id": dataset_id,
        "obs_dim": str(obs_dim),
        "action_dim": str(action_dim),
        "step": str(step),
        "seed": str(seed),
        "srpo_version": __version__,
        "torch_version": torch.__version__,
        "parents": json.dumps(parents or {}, sort_keys=True),
        "extra": json.dumps(extra or {}, sort_keys=True),
    }
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def load_checkpoint(path: Path, expect_stage: str | None = None, device: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint; any problem becomes a RuntimeFailure naming the file and what was expected."""
    path = Path(path)
    what = f"an srpo {expect_stage} checkpoint" if expect_stage else "an srpo checkpoint"
    if not path.exists():
        raise RuntimeFailure(
            f"Checkpoint {path} does not exist (expected {what}).",
            "Run the stage that writes it first, or pass --run to point at the right run directory.",
        )
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            raw_meta = f.metadata() or {}
        tensors = load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise RuntimeFailure(
            f"Checkpoint {path} is truncated or corrupt ({str(e).splitlines()[0]}); expected {what}.",
            "Delete it and re-run the stage that writes it (or --resume from an older copy).",
        ) from None
    if raw_meta.get("format") != FORMAT:
        raise RuntimeFailure(
            f"{path} is a safetensors file but not {what} (no 'format=srpo' metadata).",
            "Point srpo at a file written by srpo.",
        )
    if raw_meta.get("schema") != SCHEMA:
        raise RuntimeFailure(f"{path} uses checkpoint schema {raw_meta.get('schema')}, this srpo reads {SCHEMA}.")
    try:
        meta: dict[str, Any] = dict(raw_meta)
        for k in ("config", "parents", "extra"):
            meta[k] = json.loads(raw_meta[k])
        for k in ("obs_dim", "action_dim", "step", "seed"):
            meta[k] = int(raw_meta[k])
    except (KeyError, ValueError) as e:
        raise RuntimeFailure(f"{path} has damaged srpo metadata ({e}); expected {what}.") from None
    if expect_stage and meta["stage"] != expect_stage:
        raise RuntimeFailure(
            f"{path} is an srpo '{meta['stage']}' checkpoint, expected a '{expect_stage}' checkpoint.",
            "Check the file name or --run directory.",
        )
    return Checkpoint(path=path, tensors=tensors, meta=meta)


def save_train_state(path: Path, state: dict[str, Any]) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_train_state(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise RuntimeFailure(
            f"Cannot resume: training state {path} is missing.",
            "Run the stage without --resume (add --force to start over).",
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for damaged pickles
        raise RuntimeFailure(
            f"Cannot resume: training state {path} is corrupt ({str(e).splitlines()[0]}).",
            "Start over with --force.",
        ) from None
