"""Safetensors checkpoints with metadata, atomic writes and clear errors.

A checkpoint file holds only what is needed to *use* a network (weights, action bounds). Everything needed
to *resume* training (optimizer moments, LR schedule, RNG states, sampler position) lives in a sibling
``<name>.state.pt`` so that a shipped actor stays small. How the two stay consistent under kills, and the
other guarantees (locks, checksums), is told in docs/reliability.md.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from srpo_cli import __version__
from srpo_cli.errors import RuntimeFailure

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


# What the OS says, in a user's words, and what to do about it (write_error).
_OS_HINTS = {
    errno.ENOSPC: ("the disk is full", "Free some space (or point --run at another disk) and run it again."),
    errno.EDQUOT: ("the disk quota is exceeded", "Free some space (or point --run at another disk) and run it again."),
    errno.EACCES: ("permission denied", "Make the folder writable, or choose another with --run / --out."),
    errno.EPERM: ("permission denied", "Make the folder writable, or choose another with --run / --out."),
    errno.EROFS: ("the file system is read-only", "Choose a writable folder with --run / --out."),
    errno.ENOTDIR: ("a part of the path is a file, not a folder", "Check the path given to --run / --out."),
    errno.EISDIR: ("it is a folder", "Name a file instead."),
}


def write_error(path: Path | str, e: OSError) -> RuntimeFailure:
    """A one-paragraph error for an OSError met while writing ``path``."""
    what, hint = _OS_HINTS.get(e.errno, (e.strerror or type(e).__name__, "Check the path and the disk."))
    return RuntimeFailure(f"Could not write {path}: {what}. Any earlier version of it is unchanged.", hint)


def atomic_write(path: Path, write: Any) -> None:
    """Call ``write(tmp_path)`` then rename over ``path``: a crash never leaves a half-written file, and a
    failed write (a full disk, a read-only folder) leaves the earlier file as it was."""
    path = Path(path)
    tmp = None
    try:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except FileExistsError:  # a file where a folder of the path should be
            raise OSError(errno.ENOTDIR, "Not a directory") from None
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno in _OS_HINTS:
            raise write_error(path, e) from None
        if isinstance(e, (RuntimeError, SafetensorError)) and "unexpected pos" in str(e).lower():
            # torch.save reports a full disk this way (its zip writer), without an errno
            raise write_error(path, OSError(errno.ENOSPC, "No space left on device")) from None
        raise


def remove_stale_temps(path: Path) -> None:
    """Delete the temporary files ``atomic_write(path, ...)`` leaves when the process is killed mid-write.
    Only ``path``'s own: another process may be writing a sibling file in the same folder."""
    for tmp in Path(path).parent.glob(f".{Path(path).name}.*.tmp"):
        tmp.unlink(missing_ok=True)


# Locks held by this process, by path: flock conflicts between two opens of the same file even in one
# process, so a stage already holding its lock (the CLI takes it before loading data) takes it again freely.
_HELD: dict[str, int] = {}


@contextmanager
def exclusive(path: Path, what: str) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if needed) or refuse, naming the process that holds it.

    An flock belongs to the open file: the OS drops it when the process ends, however it ends, so a killed
    run never leaves a stale lock behind. The file itself stays, holding the last holder's PID."""
    path = Path(path)
    key = str(path.resolve())
    if key in _HELD:
        yield
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise write_error(path, e) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise RuntimeFailure(
            f"{what} is in use by another srpo process (PID {holder}); two writers would mix their checkpoints "
            "and metrics.",
            f"Wait for it to finish (or stop it: kill {holder}), or use another --run directory.",
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _HELD[key] = fd
    try:
        yield
    finally:
        del _HELD[key]
        os.close(fd)  # releases the lock


def lock_path(ckpt: Path) -> Path:
    """The lock of the stage writing ``ckpt``: one per checkpoint, so that the side-by-side pipeline's stages
    share a run directory while two writers of the same stage do not."""
    ckpt = Path(ckpt)
    return ckpt.parent / f".{ckpt.name}.lock"


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 of the tensors' names, dtypes, shapes and bytes, in name order: stored in a checkpoint's
    metadata and checked on load, so that damaged tensor bytes (which safetensors does not check) are caught
    instead of acting as NaN weights."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


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
        "tensors_sha256": tensor_digest(tensors),
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
    digest = raw_meta.get("tensors_sha256")  # checkpoints from before the field: not checked
    if digest is not None and tensor_digest(tensors) != digest:
        raise RuntimeFailure(
            f"Checkpoint {path} is corrupt: its tensor data do not match the checksum written with them.",
            "Delete it and re-run the stage that writes it (or --resume from an older copy).",
        )
    bad = [k for k, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise RuntimeFailure(
            f"Checkpoint {path} holds non-finite weights ({', '.join(sorted(bad)[:3])}"
            f"{' ...' if len(bad) > 3 else ''}); a policy from it would act with NaN.",
            "Re-run the stage that writes it (srpo stops training at the first non-finite loss, so such a file "
            "was not written by a finished srpo stage).",
        )
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
