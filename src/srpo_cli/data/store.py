"""The local Minari store: dataset ids, opening and listing datasets, and replacing one safely (built in a
staging store and swapped in only once complete; what a killed swap leaves is undone on the next access)."""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from srpo_cli.errors import RuntimeFailure, UsageError


def _is_id_shaped(dataset_id: str) -> bool:
    import re

    return re.fullmatch(r"[A-Za-z0-9_.\-]+(/[A-Za-z0-9_.\-]+)*-v\d+", dataset_id) is not None


def check_dataset_id(dataset_id: str) -> None:
    if not _is_id_shaped(dataset_id):
        raise UsageError(
            f"'{dataset_id}' is not a Minari dataset id.",
            "Ids look like 'namespace/name-vN', e.g. 'mujoco/hopper/medium-v0'.",
        )


def open_local(dataset_id: str):
    """Open a dataset from the local Minari store, or raise a RuntimeFailure that says what to do."""
    import minari

    check_dataset_id(dataset_id)
    local = minari.list_local_datasets()
    if dataset_id not in local:
        raise missing_dataset_error(dataset_id, local)
    try:
        return minari.load_dataset(dataset_id)
    except Exception as e:
        raise RuntimeFailure(
            f"Local dataset '{dataset_id}' could not be opened ({str(e).splitlines()[0]}).",
            "Re-create it with 'srpo fetch' (delete its folder under MINARI_DATASETS_PATH first).",
        ) from None


def local_ids() -> list[str]:
    import minari

    recover_store()
    return sorted(minari.list_local_datasets())


def missing_dataset_error(dataset_id: str, local: list[str] | None = None) -> RuntimeFailure:
    local = sorted(local if local is not None else local_ids())
    have = ", ".join(local) if local else "none"
    store = os.environ.get("MINARI_DATASETS_PATH", "~/.minari/datasets")
    return RuntimeFailure(
        f"Dataset '{dataset_id}' is not in the local Minari store ({store}); local datasets: {have}.",
        f"Run 'srpo fetch {dataset_id}' to download it, 'srpo fetch --d4rl-file FILE --env ENV --id {dataset_id}' "
        "to import a D4RL file, or 'srpo collect' to roll out a policy.",
    )


def store_root() -> Path:
    """The local Minari store (MINARI_DATASETS_PATH, else Minari's default)."""
    import minari

    return Path(minari.storage.get_dataset_path())


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover_store() -> None:
    """Finish or undo what a killed ``staged_dataset`` left in the store: a replaced dataset moved aside but
    not yet deleted goes back where it was if nothing took its place; staging folders of dead processes go.
    Both are hidden folders (``.srpo-*``), which Minari's listing skips."""
    root = store_root()
    for path in list(root.glob(".srpo-staging-*")) + list(root.glob(".srpo-replaced-*")):
        try:
            pid = int(path.name.rsplit("-", 1)[1])
        except ValueError:
            continue
        if pid == os.getpid() or _pid_alive(pid):
            continue
        id_file = path / "dataset_id"
        if path.name.startswith(".srpo-replaced-") and id_file.exists():
            target = root / id_file.read_text().strip()
            if not target.exists() and (path / "dataset").exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(path / "dataset", target)
        shutil.rmtree(path, ignore_errors=True)


@contextmanager
def _terminate_as_interrupt():
    """SIGTERM raises KeyboardInterrupt (in the main thread), so that cleanup code runs on a kill too."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def staged_dataset(dataset_id: str, force: bool):
    """Build ``dataset_id`` in a private staging store beside the real one (Minari writes wherever
    MINARI_DATASETS_PATH points), and put it in place only once complete: a failed or killed build, import or
    download leaves the existing dataset (replaced with ``force``) as it was.

    The swap is two renames on one file system: the old dataset moves aside, the new one takes its place, and
    the old one is deleted. A kill between the two renames leaves the old one aside, and ``recover_store``
    (run by every store access) puts it back."""
    root = store_root()
    recover_store()
    target = root / dataset_id
    if target.exists() and not force:
        raise UsageError(f"Dataset '{dataset_id}' already exists at {target}.", "Pass --force to replace it.")
    staging = root / f".srpo-staging-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    previous_env = os.environ.get("MINARI_DATASETS_PATH")
    try:
        staging.mkdir(parents=True)
        os.environ["MINARI_DATASETS_PATH"] = str(staging)
        with _terminate_as_interrupt():
            yield
            built = staging / dataset_id
            if not (built / "data").exists():
                raise RuntimeFailure(f"Building '{dataset_id}' produced no dataset; nothing was replaced.")
            aside = root / f".srpo-replaced-{os.getpid()}"
            shutil.rmtree(aside, ignore_errors=True)
            if target.exists():
                aside.mkdir()
                (aside / "dataset_id").write_text(dataset_id)
                os.replace(target, aside / "dataset")
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(built, target)
            shutil.rmtree(aside, ignore_errors=True)
    finally:
        if previous_env is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = previous_env
        shutil.rmtree(staging, ignore_errors=True)


def create_dataset(dataset_id: str, buffers, env_id: str, ref: tuple[float, float] | None, algorithm: str, desc: str):
    import minari

    kwargs = {}
    if ref is not None:
        kwargs = {"ref_min_score": float(ref[0]), "ref_max_score": float(ref[1])}
    minari.create_dataset_from_buffers(
        dataset_id=dataset_id,
        buffer=buffers,
        env=env_id,
        eval_env=env_id,
        algorithm_name=algorithm,
        author="srpo",
        author_email="srpo@localhost",
        code_permalink="https://pypi.org/project/srpo-cli/",
        description=desc,
        **kwargs,
    )


def describe_local() -> list[dict]:
    """One row per local dataset for ``srpo datasets``."""
    import gymnasium as gym
    import minari

    rows = []
    for dataset_id in local_ids():
        try:
            ds = minari.load_dataset(dataset_id)
            meta = ds.storage.metadata
            returns = [float(np.sum(ep.rewards)) for ep in ds.iterate_episodes()]
            rows.append(
                {
                    "id": dataset_id,
                    "episodes": ds.total_episodes,
                    "steps": ds.total_steps,
                    "obs_dim": int(gym.spaces.flatdim(ds.observation_space)),
                    "action_dim": int(np.prod(ds.action_space.shape)),
                    "ref_scores": meta.get("ref_min_score") is not None and meta.get("ref_max_score") is not None,
                    "mean_return": float(np.mean(returns)) if returns else float("nan"),
                }
            )
        except Exception as e:
            rows.append({"id": dataset_id, "error": str(e).splitlines()[0]})
    return rows
