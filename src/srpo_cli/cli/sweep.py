"""``srpo sweep``: datasets x seeds x betas on Ray (a local instance by default, or a cluster)."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.live import Live
from rich.table import Table

from srpo_cli.cli.common import JsonOpt, PresetOpt, SetOpt, app, err, guarded, out, print_uncut
from srpo_cli.errors import UsageError


def _table(tasks) -> Table:
    t = Table(title="srpo sweep", show_lines=False)
    for col in ("task", "state", "wall s", "note"):
        t.add_column(col, overflow="fold")
    colors = {"waiting": "dim", "done": "green", "failed": "red"}
    for task in tasks:
        note = task.error or (task.result.get("plan", "") if task.result else "")
        wall = f"{task.wall_s:.0f}" if task.wall_s is not None else ""
        t.add_row(task.name, f"[{colors[task.state]}]{task.state}[/]", wall, note)
    return t


@app.command("sweep")
@guarded
def sweep_cmd(
    datasets: Annotated[str, typer.Option("--datasets", help="Comma-separated local dataset ids.")],
    seeds: Annotated[
        str, typer.Option("--seeds", metavar="0-4", help="Seeds: ranges and lists, e.g. 0-4 or 0,2,5.")
    ] = "0",
    betas: Annotated[
        str,
        typer.Option(
            "--betas",
            metavar="B,B,...",
            help="One SRPO extraction per beta; 'preset' is each dataset's configured beta (e.g. preset,0,0.01).",
        ),
    ] = "preset",
    preset: PresetOpt = None,
    set_: SetOpt = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Folder of the runs and the results.")] = Path("sweeps/sweep"),
    address: Annotated[
        str | None,
        typer.Option("--address", help="Join a Ray cluster: 'auto' or ray://HOST:PORT (default: a private local Ray)."),
    ] = None,
    threads: Annotated[int | None, typer.Option("--threads", help="CPUs the local Ray may use (default: all).")] = None,
    cpus_per_trial: Annotated[float, typer.Option("--cpus-per-trial", help="CPUs (and torch threads) per stage.")] = 1,
    gpus_per_trial: Annotated[float, typer.Option("--gpus-per-trial", help="GPU share per stage (e.g. 0.25).")] = 0,
    diffusion: Annotated[
        bool, typer.Option("--diffusion", help="Also evaluate the diffusion-policy baseline (behavior model + critic).")
    ] = False,
    latency: Annotated[
        bool, typer.Option("--latency", help="Also time the SRPO actor against the diffusion baseline (srpo bench).")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No live table.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Train behavior models and critics per (dataset, seed), one SRPO actor per beta from them, AWR and BC,
    and evaluate all; writes OUT/sweep.md, sweep.json and sweep.png (score against beta, best beta marked).
    The published benchmark tables are sweeps: see reproductions/bench_tables.sh."""
    from srpo_cli import config
    from srpo_cli.sweep import chosen_betas, parse_betas, parse_seeds, run_sweep, write_results

    ids = [d.strip() for d in datasets.split(",") if d.strip()]
    if not ids:
        raise UsageError("--datasets names no dataset.", "Example: --datasets srpo/pendulum/scripted-medium-v0")
    beta_keys = parse_betas(betas)
    if cpus_per_trial <= 0 or gpus_per_trial < 0:
        raise UsageError("--cpus-per-trial must be above 0 and --gpus-per-trial at least 0.")
    overrides = dict(config.parse_set(set_ or []))
    live = Live(console=err, refresh_per_second=2, transient=False) if not quiet else None

    def update(tasks) -> None:
        if live is not None:
            live.update(_table(tasks))

    if live is not None:
        live.start()
    try:
        summary = run_sweep(
            ids,
            parse_seeds(seeds),
            beta_keys,
            out_dir,
            preset=preset,
            overrides=overrides,
            address=address,
            num_cpus=threads,
            cpus_per_trial=cpus_per_trial,
            gpus_per_trial=gpus_per_trial,
            diffusion=diffusion,
            latency=latency,
            on_update=update,
        )
    finally:
        if live is not None:
            live.stop()
    command = "srpo " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    files = write_results(summary, out_dir, command)
    if as_json:
        out.print_json(json.dumps(summary))
        if summary["failures"]:
            raise typer.Exit(1)
        return
    t = Table(title=f"sweep ({summary['score_scale']}); best beta per dataset in bold")
    t.add_column("dataset")
    t.add_column("data", justify="right")
    rows = summary["rows"]
    for b in summary["betas"]:
        t.add_column(f"beta {b}", justify="right")
    has_diffusion = any("diffusion" in r for r in rows)
    if has_diffusion:
        t.add_column("diffusion", justify="right")
    t.add_column("AWR", justify="right")
    t.add_column("BC", justify="right")

    def cell(v):
        return "-" if not v["n"] else f"{v['mean']:.1f} ± {v['std']:.1f}"

    for row in rows:
        cells = []
        for b in summary["betas"]:
            text = cell(row["betas"][b]) + chosen_betas(row, b)
            cells.append(f"[bold]{text}[/]" if b == row["best_beta"] else text)
        data = "-" if row["data"] is None else f"{row['data']:.1f}"
        if has_diffusion:
            cells.append(cell(row["diffusion"]) if "diffusion" in row else "-")
        t.add_row(row["dataset"], data, *cells, cell(row["awr"]), cell(row["bc"]))
    print_uncut(t)
    for f in summary["failures"]:
        err.print(f"[red]failed:[/] {f['task']}: {f['error']}", highlight=False)
    out.print(f"wrote {files['md']}, {files['json']}, {files['png']}", highlight=False)
    if summary["failures"]:
        raise typer.Exit(1)
