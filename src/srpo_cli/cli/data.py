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


datasets_app = typer.Typer(
    help="List datasets (local, or --remote), or 'srpo datasets show ID' for one dataset's statistics.",
    invoke_without_command=True,
    no_args_is_help=False,
)
app.add_typer(datasets_app, name="datasets")


@datasets_app.callback(invoke_without_command=True)
@guarded
def datasets_cmd(
    ctx: typer.Context,
    remote: Annotated[bool, typer.Option("--remote", help="List Minari's remote datasets instead.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """List local datasets (MINARI_DATASETS_PATH), or Minari's remote ones with --remote."""
    if ctx.invoked_subcommand is not None:
        return
    if remote:
        from srpo_cli.data.fetch import remote_ids

        ids = remote_ids()
        if as_json:
            out.print_json(json.dumps(ids))
        else:
            for dataset_id in ids:
                out.print(dataset_id, highlight=False)
        return
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


@datasets_app.command("show")
@guarded
def datasets_show(
    dataset_id: Annotated[str, typer.Argument(help="A local dataset's id, e.g. srpo/pendulum/scripted-medium-v0.")],
    as_json: JsonOpt = False,
) -> None:
    """One dataset's statistics: episodes, lengths, how they end, returns, action ranges and spread."""
    from srpo_cli.data.fetch import ensure_local
    from srpo_cli.data.transitions import dataset_report, load_transitions

    ensure_local(dataset_id, err)
    r = dataset_report(load_transitions(dataset_id))
    if as_json:
        out.print_json(json.dumps(r))
        return
    t = Table(title=f"dataset {dataset_id}", show_header=False, box=box.SIMPLE)
    t.add_row("episodes / steps", f"{r['episodes']:,} / {r['steps']:,} (obs {r['obs_dim']}, action {r['action_dim']})")
    if r["episode_length"]:
        el = r["episode_length"]
        t.add_row("episode length", f"min {el['min']:.0f}, median {el['median']:.0f}, max {el['max']:.0f}")
    t.add_row("episodes ending in", f"termination {r['terminated']:,}, time-limit truncation {r['truncated']:,}")
    for key, label in (("return", "return"), ("score", "score (0-100)")):
        if key in r:
            q = r[key]
            t.add_row(
                label,
                f"mean {q['mean']:.1f}; min {q['min']:.1f}, quartiles {q['q25']:.1f} / {q['median']:.1f} / "
                f"{q['q75']:.1f}, max {q['max']:.1f}",
            )
    t.add_row(
        "action range", " ".join(f"[{lo:g}, {hi:g}]" for lo, hi in zip(r["action_min"], r["action_max"], strict=True))
    )
    t.add_row("actions on a bound", f"{100 * r['actions_on_bound']:.1f}% of components")
    if "action_spread" in r:
        sp = r["action_spread"]
        t.add_row(
            "action spread",
            f"{sp['nearest_state']:.3f} between nearest states, {sp['random_pair']:.3f} between random pairs "
            f"(ratio {sp['ratio']:.2f}: near 1, several behaviors or much noise; near 0, one action per state)",
        )
    print_uncut(t)


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
