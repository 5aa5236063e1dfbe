"""Dataset commands: fetch (a Minari id, a D4RL file, the built-in default), list, collect."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.table import Table

from srpo_cli.cli.common import (
    JsonOpt,
    app,
    err,
    guarded,
    out,
    print_uncut,
)
from srpo_cli.errors import UsageError


@app.command("fetch")
@guarded
def fetch_cmd(
    dataset_id: Annotated[str | None, typer.Argument(help="Minari id; omitted: the built-in default.")] = None,
    d4rl_file: Annotated[Path | None, typer.Option("--d4rl-file", help="Import this D4RL-format HDF5 file.")] = None,
    env: Annotated[str | None, typer.Option("--env", help="Gymnasium env id of the D4RL file, e.g. Hopper-v5.")] = None,
    new_id: Annotated[str | None, typer.Option("--id", help="Dataset id to create from the D4RL file.")] = None,
    ref_min: Annotated[float | None, typer.Option("--ref-min", help="Reference return of a random policy.")] = None,
    ref_max: Annotated[float | None, typer.Option("--ref-max", help="Reference return of an expert.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing local dataset.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Make a dataset available locally: a Minari id, a D4RL file, or the built-in default."""
    from srpo_cli.data.builders import import_d4rl
    from srpo_cli.data.fetch import fetch

    if d4rl_file is not None:
        if env is None or (new_id is None and dataset_id is None):
            raise UsageError(
                "--d4rl-file needs --env ENV_ID and --id DATASET_ID.",
                "Example: srpo fetch --d4rl-file hopper_medium-v2.hdf5 --env Hopper-v5 --id d4rl/hopper/medium-v2",
            )
        if (ref_min is None) != (ref_max is None):
            raise UsageError("--ref-min and --ref-max go together.")
        rep = import_d4rl(d4rl_file, env, new_id or dataset_id, ref_min, ref_max, force)
        result = {
            "dataset": rep.dataset_id,
            "action": "imported",
            "episodes": rep.episodes,
            "steps": rep.steps,
            "dropped_timeout_steps": rep.dropped,
            "next_observations": rep.has_next_observations,
            "ref_scores": list(rep.ref) if rep.ref else None,
        }
        if rep.dropped:
            err.print(
                f"dropped {rep.dropped} final steps of timed-out episodes (the file has no "
                "next_observations, so they have no true next state)"
            )
    else:
        if env or new_id or ref_min is not None or ref_max is not None:
            raise UsageError("--env, --id, --ref-min and --ref-max only apply with --d4rl-file.")
        ds_id, action = fetch(dataset_id, force)
        result = {"dataset": ds_id, "action": action}
    if as_json:
        out.print_json(json.dumps(result))
    else:
        out.print(" ".join(f"{k}={v}" for k, v in result.items()), highlight=False)


@app.command("datasets")
@guarded
def datasets_cmd(as_json: JsonOpt = False) -> None:
    """List local datasets (MINARI_DATASETS_PATH)."""
    from srpo_cli.data.store import describe_local

    rows = describe_local()
    if as_json:
        out.print_json(json.dumps(rows))
        return
    cells = [
        [r["id"], "-", "-", "-", "-", "-", f"[red]{r['error']}[/]"]
        if "error" in r
        else [
            r["id"],
            f"{r['episodes']:,}",
            f"{r['steps']:,}",
            str(r["obs_dim"]),
            str(r["action_dim"]),
            "yes" if r["ref_scores"] else "no",
            f"{r['mean_return']:.1f}",
        ]
        for r in rows
    ]
    # the id is what a user copies into the next command and the numbers are what they read: cut neither
    # short. One-word headers and no vertical rules fit the usual ids in a pipe's 80 columns; past that a pipe
    # or file gets the table at its full width (a terminal keeps Rich's fitting)
    t = Table(
        title="local datasets",
        box=box.SIMPLE_HEAD,
        caption="obs, act: dimensions; ref: has reference scores (0-100 scale); return: mean episode return",
    )
    t.add_column("id", no_wrap=True)
    for col in ("episodes", "steps", "obs", "act", "ref", "return"):
        t.add_column(col, justify="right", no_wrap=True)
    for c in cells:
        t.add_row(*c)
    print_uncut(t)
    if not rows:
        err.print("no local datasets; try 'srpo fetch' for the built-in default")


@app.command("collect")
@guarded
def collect_cmd(
    env_id: Annotated[str, typer.Argument(help="Gymnasium environment id, e.g. Pendulum-v1.")],
    dataset_id: Annotated[str, typer.Option("--id", help="Dataset id to create.")],
    policy: Annotated[str, typer.Option("--policy", help="'random' or a path to an actor checkpoint.")] = "random",
    steps: Annotated[int, typer.Option("--steps", help="Environment steps to record.")] = 10_000,
    noise: Annotated[float, typer.Option("--noise", help="Gaussian action noise std (on [-1,1] actions).")] = 0.0,
    seed: Annotated[int, typer.Option("--seed", help="Rollout seed.")] = 0,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing dataset.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Roll a policy out into a local Minari dataset."""
    from srpo_cli.collect import collect

    if policy != "random" and not Path(policy).exists():
        raise UsageError(f"--policy '{policy}' is neither 'random' nor an existing checkpoint file.")
    if noise < 0:
        raise UsageError(f"--noise must be >= 0, got {noise}.")
    ds_id, returns = collect(env_id, dataset_id, policy, steps, noise, seed, force)
    result = {"dataset": ds_id, "episodes": len(returns), "steps": steps, "mean_return": float(returns.mean())}
    if as_json:
        out.print_json(json.dumps(result))
    else:
        out.print(" ".join(f"{k}={v}" for k, v in result.items()), highlight=False)
