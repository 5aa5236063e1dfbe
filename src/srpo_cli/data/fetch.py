"""Making a dataset local: Minari's remote (failing fast when it is unreachable) or the built-in default."""

from __future__ import annotations

import os

from srpo_cli.config import DEFAULT_DATASET
from srpo_cli.data.builders import build_default_dataset
from srpo_cli.data.store import check_dataset_id, local_ids, missing_dataset_error, recover_store, staged_dataset
from srpo_cli.errors import RuntimeFailure, UsageError


def _remote_unreachable() -> str | None:
    """Why Minari's remote (Hugging Face) cannot be reached, in a few milliseconds, or None. Offline, its
    download retries for about 25 s before failing; this answers at once."""
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return None  # Minari fails at once by itself, with its own message
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError as e:
        return f"{host} is unreachable: {e.strerror or e}"
    return None


def fetch(dataset_id: str | None, force: bool = False) -> tuple[str, str]:
    """Make ``dataset_id`` available locally. Returns (id, what happened)."""
    import minari

    dataset_id = dataset_id or DEFAULT_DATASET
    check_dataset_id(dataset_id)
    recover_store()
    if dataset_id == DEFAULT_DATASET:
        if dataset_id in local_ids() and not force:
            return dataset_id, "already local"
        build_default_dataset(force=force)
        return dataset_id, "built locally"
    if dataset_id in local_ids() and not force:
        return dataset_id, "already local"
    local = local_ids()
    why = _remote_unreachable()
    try:
        if why is not None:
            raise OSError(why)
        with staged_dataset(dataset_id, force):
            minari.download_dataset(dataset_id)
    except (UsageError, KeyboardInterrupt):
        raise
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise RuntimeFailure(
            f"Could not download '{dataset_id}' from Minari's remote ({first})"
            + ("; the local copy is unchanged." if dataset_id in local else "."),
            f"Local datasets: {', '.join(local) or 'none'}. Offline? Import a D4RL file with "
            "'srpo fetch --d4rl-file FILE --env ENV --id ID', roll out a policy with 'srpo collect', or "
            f"build the built-in default with 'srpo fetch {DEFAULT_DATASET}'.",
        ) from None
    return dataset_id, "downloaded"


def ensure_local(dataset_id: str, log=None) -> None:
    """The built-in default builds itself when missing; anything else must have been fetched first."""
    check_dataset_id(dataset_id)
    if dataset_id in local_ids():
        return
    if dataset_id == DEFAULT_DATASET:
        if log is not None:
            log.print(f"building the built-in default dataset {dataset_id} ...", style="dim")
        fetch(dataset_id)
        return
    raise missing_dataset_error(dataset_id)


def remote_ids() -> list[str]:
    """Minari's remote dataset ids; a clear error at once when the remote cannot be reached."""
    import minari

    why = _remote_unreachable()
    try:
        if why is not None:
            raise OSError(why)
        return sorted(minari.list_remote_datasets())
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise RuntimeFailure(
            f"Could not list Minari's remote datasets ({first}).",
            "Offline? 'srpo datasets' lists the local ones; 'srpo fetch --d4rl-file' imports a file.",
        ) from None


def how_to_get(dataset_id: str) -> str:
    """Where a dataset comes from, in the words of the command that gets it (``srpo presets`` shows it)."""
    if dataset_id == DEFAULT_DATASET:
        return "built in: 'srpo fetch' builds it offline in seconds"
    if dataset_id.startswith("d4rl/"):
        return "import D4RL's HDF5 file: 'srpo fetch --d4rl-file FILE --env ENV --id " + dataset_id + "'"
    if dataset_id.startswith("bench/"):
        return (
            "D4RL-style data made by the generator in the project's steering repository (make_datasets.py), "
            "not downloadable; see BENCHMARKS.md"
        )
    return f"Minari's remote: 'srpo fetch {dataset_id}' (needs internet)"
