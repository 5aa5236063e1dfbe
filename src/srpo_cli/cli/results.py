"""Commands over a trained run: evaluation, latency, export, plots."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich import box
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from srpo_cli.cli.common import (
    DatasetOpt,
    DeviceOpt,
    JsonOpt,
    PresetOpt,
    RunOpt,
    SeedOpt,
    SetOpt,
    ThreadsOpt,
    app,
    err,
    guarded,
    out,
    print_uncut,
    resolve_config,
)
from srpo_cli.errors import UsageError


def _run_dirs(cfg, seeds: str | None, runs: list[Path] | None) -> list[Path]:
    if runs:
        if len({Path(r).resolve() for r in runs}) < len(runs):
            raise UsageError("--runs names the same run directory twice.", "Name each run directory once.")
        return list(runs)
    if seeds is not None:
        try:
            values = [int(x) for x in seeds.split(",") if x.strip()]
        except ValueError:
            raise UsageError(f"--seeds expects a comma-separated list of integers, got '{seeds}'.") from None
        if not values:
            raise UsageError(f"--seeds got no seed ('{seeds}').", "Example: --seeds 0,1,2")
        if len(set(values)) < len(values):
            raise UsageError(f"--seeds names a seed twice ('{seeds}').", "Name each seed once.")
        dirs = [cfg.resolved_run_dir(s) for s in values]
        if len(set(dirs)) < len(dirs):
            raise UsageError(
                f"--seeds {seeds}: every seed resolves to the same run directory {dirs[0]} (the run directory "
                f"'{cfg.run_dir}' has no {{seed}}), so one run would be counted {len(dirs)} times.",
                "Put {seed} in --run (e.g. --run runs/exp/seed{seed}), or list the directories with --runs.",
            )
        return dirs
    return [cfg.resolved_run_dir()]


@app.command("eval")
@guarded
def eval_cmd(
    episodes: Annotated[
        int | None,
        typer.Option(
            "--episodes",
            help="Evaluation episodes per run. (default: the preset's, srpo.yaml's or srpo's; 'srpo init --show' lists them)",
        ),
    ] = None,
    policy: Annotated[
        Literal["srpo", "diffusion", "awr", "bc"], typer.Option("--policy", help="Which policy of the run.")
    ] = "srpo",
    seeds: Annotated[
        str | None, typer.Option("--seeds", metavar="0,1,2", help="Aggregate over training seeds, e.g. 0,1,2.")
    ] = None,
    runs: Annotated[
        list[Path] | None, typer.Option("--runs", metavar="RUN", help="Run directories to aggregate (repeatable).")
    ] = None,
    candidates: Annotated[
        int | None, typer.Option("--candidates", help="Diffusion baseline: candidates per state.")
    ] = None,
    sampling_steps: Annotated[
        int | None, typer.Option("--sampling-steps", help="Diffusion baseline: ODE steps.")
    ] = None,
    num_envs: Annotated[int | None, typer.Option("--num-envs", help="Parallel environments.")] = None,
    eval_seed: Annotated[int | None, typer.Option("--eval-seed", help="Seed of the evaluation episodes.")] = None,
    curve: Annotated[
        bool,
        typer.Option(
            "--curve",
            help="Evaluate every policy kept during training (--keep-every) and write metrics/eval-POLICY.csv.",
        ),
    ] = False,
    dataset: DatasetOpt = None,
    run: RunOpt = None,
    preset: PresetOpt = None,
    device: DeviceOpt = None,
    seed: SeedOpt = None,
    threads: ThreadsOpt = None,
    set_: SetOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No per-run progress lines on stderr.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Evaluate a trained policy; prints return and the 0-100 normalized score, writes eval.json."""
    from srpo_cli.act.evaluate import aggregate_seeds
    from srpo_cli.pipeline import evaluate_run

    flags = {
        "dataset": dataset,
        "run_dir": run,
        "device": device,
        "seed": seed,
        "eval.episodes": episodes,
        "eval.candidates": candidates,
        "eval.sampling_steps": sampling_steps,
        "eval.num_envs": num_envs,
        "eval.seed": eval_seed,
        "threads": threads,
    }
    cfg = resolve_config(preset, flags, set_)
    if curve:
        _eval_curves(cfg, _run_dirs(cfg, seeds, runs), policy, as_json, quiet)
        return
    results = []
    bar = Progress(
        TextColumn("[bold]eval[/] {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("episodes"),
        TimeElapsedColumn(),
        console=err,
        disable=quiet,
        transient=True,
    )
    with bar:
        for run_dir in _run_dirs(cfg, seeds, runs):
            task = bar.add_task(f"{run_dir} ({policy})", total=cfg.eval.episodes)
            res = evaluate_run(
                cfg,
                Path(run_dir),
                policy,
                expect_dataset=dataset,
                progress=lambda done, total, task=task: bar.update(task, completed=done),
            )
            bar.remove_task(task)
            results.append((run_dir, res))
            if not quiet:
                err.print(f"{run_dir}: return {res.returns.mean():.1f}", style="dim", highlight=False)
    summaries = [dict(run=str(r), policy=policy, **res.summary()) for r, res in results]
    payload: dict[str, Any] = {"runs": summaries}
    if len(results) > 1:
        payload["aggregate"] = aggregate_seeds([res for _, res in results])
    if as_json:
        out.print_json(json.dumps(payload))
        return
    _eval_table(summaries, payload.get("aggregate"))


def _eval_curves(cfg, run_dirs: list[Path], policy: str, as_json: bool, quiet: bool = False) -> None:
    """``eval --curve``: each run's kept policies in step order, one table (or JSON) of them all."""
    from srpo_cli.pipeline import evaluate_curve

    curves = []
    for run_dir in run_dirs:

        def progress(step: int, res, run_dir=run_dir) -> None:
            if not quiet:
                err.print(f"{run_dir} step {step}: return {res.returns.mean():.1f}", style="dim", highlight=False)

        points = evaluate_curve(cfg, Path(run_dir), policy, on_point=progress)
        curves.append(
            {"run": str(run_dir), "policy": policy, "points": [dict(step=s, **r.summary()) for s, r in points]}
        )
        if not quiet:
            err.print(f"wrote {Path(run_dir) / 'metrics' / f'eval-{policy}.csv'}", style="dim", highlight=False)
    if as_json:
        out.print_json(json.dumps({"curves": curves}))
        return
    has_score = all("score_mean" in p for c in curves for p in c["points"])
    t = Table(title=f"{policy} over training", caption="score: normalized, 0-100 scale" if has_score else None)
    for col in ["run", "step", "return"] + (["score"] if has_score else []) + ["episodes"]:
        t.add_column(col, justify="left" if col == "run" else "right", no_wrap=True)
    for c in curves:
        for p in c["points"]:
            row = [c["run"], f"{p['step']:,}", f"{p['return_mean']:.1f} ± {p['return_std']:.1f}"]
            if has_score:
                row.append(f"{p['score_mean']:.1f} ± {p['score_std']:.1f}")
            t.add_row(*row, str(p["episodes"]))
    print_uncut(t)


def _eval_table(summaries: list[dict], aggregate: dict | None) -> None:
    has_score = all("score_mean" in s for s in summaries)
    multi = len(summaries) > 1
    title = "evaluation" if multi else f"evaluation of {summaries[0]['run']}"
    t = Table(title=title, caption="score: normalized, 0-100 scale" if has_score else None)
    cols = (["run"] if multi else []) + ["policy", "return"] + (["score"] if has_score else [])
    for col in cols + ["length", "episodes", "wall s"]:
        t.add_column(col, justify="left" if col in ("run", "policy") else "right", no_wrap=True)
    for s in summaries:
        row = ([Path(s["run"]).name] if multi else []) + [
            s["policy"],
            f"{s['return_mean']:.1f} ± {s['return_std']:.1f}",
        ]
        if has_score:
            row.append(f"{s['score_mean']:.1f} ± {s['score_std']:.1f}")
        row += [f"{s['length_mean']:.1f}", str(s["episodes"]), f"{s['wall_s']:.1f}"]
        t.add_row(*row)
    if aggregate:
        row = [
            f"{aggregate['seeds']} seeds",
            summaries[0]["policy"],
            f"{aggregate['return_mean']:.1f} ± {aggregate['return_std']:.1f}",
        ]
        if has_score:
            row.append(f"{aggregate['score_mean']:.1f} ± {aggregate['score_std']:.1f}")
        t.add_row(*row, "", "", "", style="bold")
    print_uncut(t)
    if aggregate:
        key = "score" if has_score else "return"
        if f"{key}_iqm" in aggregate:
            lo, hi = aggregate[f"{key}_iqm_ci95"]
            out.print(
                f"interquartile mean of the {aggregate['seeds']} seeds' {key}s: {aggregate[f'{key}_iqm']:.1f} "
                f"(95% bootstrap CI {lo:.1f} to {hi:.1f}; Agarwal et al. 2021)",
                highlight=False,
            )


@app.command("bench")
@guarded
def bench_cmd(
    repeats: Annotated[int, typer.Option("--repeats", help="Timed calls per measurement.")] = 2000,
    candidates: Annotated[
        int | None, typer.Option("--candidates", help="Diffusion baseline: candidates per state.")
    ] = None,
    sampling_steps: Annotated[
        int | None, typer.Option("--sampling-steps", help="Diffusion baseline: ODE steps.")
    ] = None,
    dataset: DatasetOpt = None,
    run: RunOpt = None,
    preset: PresetOpt = None,
    device: DeviceOpt = None,
    seed: SeedOpt = None,
    threads: ThreadsOpt = None,
    set_: SetOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Per-action latency of the SRPO actor vs the diffusion baseline (p50/p95 at batch 1, throughput at 256)."""
    from srpo_cli.act.bench import bench_run

    if repeats < 10:
        raise UsageError(f"--repeats must be at least 10, got {repeats}.")
    flags = {
        "dataset": dataset,
        "run_dir": run,
        "device": device,
        "seed": seed,
        "eval.candidates": candidates,
        "eval.sampling_steps": sampling_steps,
        "threads": threads,
    }
    cfg = resolve_config(preset, flags, set_)
    result = bench_run(
        cfg, cfg.resolved_run_dir(), repeats, on_row=lambda name: err.print(f"bench: timing {name} ...", style="dim")
    )
    if as_json:
        out.print_json(json.dumps(result))
        return
    t = Table(title=f"action latency on {result['device']} ({result['threads']} threads)")
    for col in ("policy", "p50 µs (batch 1)", "p95 µs (batch 1)", "actions/s (batch 256)"):
        t.add_column(col, justify="left" if col == "policy" else "right")
    for name, r in result["policies"].items():
        t.add_row(name, f"{r['p50_us']:,.1f}", f"{r['p95_us']:,.1f}", f"{r['throughput_256']:,.0f}")
    print_uncut(t)
    out.print(
        f"diffusion baseline / SRPO actor, p50 at batch 1: [bold]{result['ratio_p50']:,.0f}x[/] "
        f"(paper: more than 25x); throughput ratio at batch 256: {result['ratio_throughput']:,.0f}x"
    )


def check_export_target(out_file: Path, src: Path, force: bool) -> None:
    """``--out`` must be a new file or, with --force, a regular file that is not one of srpo's own: never the
    source, a checkpoint or training state (of this run or any), a folder or a device node."""
    if out_file.is_dir():
        raise UsageError(f"--out {out_file} is a folder.", "Name a file, e.g. --out actor.pt")
    if out_file.exists() or out_file.is_symlink():
        if not out_file.is_file():
            raise UsageError(
                f"--out {out_file} exists and is not a regular file (a device, pipe or socket); srpo never "
                "replaces one.",
                "Name a new file.",
            )
        if src.exists() and os.path.samefile(out_file, src):
            raise UsageError(f"--out {out_file} is the checkpoint being exported.", "Name another file.")
        if out_file.name.endswith((".safetensors", ".state.pt", ".state.next.pt")):
            raise UsageError(
                f"--out {out_file} is an srpo checkpoint or training state; export never replaces one.",
                "Name another file, e.g. --out actor.pt",
            )
        if not force:
            raise UsageError(f"{out_file} already exists.", "Pass --force to overwrite it or choose another --out.")
    parent = out_file.parent
    if not parent.is_dir():
        raise UsageError(f"--out {out_file}: the folder {parent} does not exist.", "Create it first, or name another.")
    if not os.access(parent, os.W_OK):
        raise UsageError(f"--out {out_file}: the folder {parent} is not writable.", "Name a file in a writable folder.")


@app.command("export")
@guarded
def export_cmd(
    out_file: Annotated[Path, typer.Option("--out", help="Output file.")],
    fmt: Annotated[
        Literal["torchscript", "onnx", "torch-export"], typer.Option("--format", help="File format.")
    ] = "torchscript",
    policy: Annotated[Literal["srpo", "awr", "bc"], typer.Option("--policy", help="Which policy of the run.")] = "srpo",
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing output file.")] = False,
    dataset: DatasetOpt = None,
    run: RunOpt = None,
    preset: PresetOpt = None,
    seed: SeedOpt = None,
    set_: SetOpt = None,
) -> None:
    """Write a standalone actor (action scaling baked in) for plain torch or onnxruntime."""
    from srpo_cli.act.export import export_actor, input_layout
    from srpo_cli.artifacts import policy_file
    from srpo_cli.train.checkpoint import load_checkpoint

    cfg = resolve_config(preset, {"dataset": dataset, "run_dir": run, "seed": seed}, set_)
    src = cfg.resolved_run_dir() / policy_file(policy)
    check_export_target(out_file, src, force)
    export_actor(src, out_file, fmt)
    out.print(f"wrote {out_file} ({fmt}) from {src}")
    layout = input_layout(load_checkpoint(src))
    if layout is not None:
        parts = ", ".join(f"{name} [{a}:{b}]" for name, a, b in layout)
        out.print(f"input: one vector of {layout[-1][2]} numbers: {parts}", highlight=False)


@app.command("show")
@guarded
def show_cmd(
    run_dir: Annotated[Path, typer.Argument(help="A run directory, e.g. runs/srpo-pendulum-scripted-medium-v0/seed0.")],
    as_json: JsonOpt = False,
) -> None:
    """Summarize a run: its stages and steps, last losses, scores, lineage, configuration and files."""
    from srpo_cli.pipeline import describe_run

    info = describe_run(run_dir)
    if as_json:
        out.print_json(json.dumps(info, default=str))
        return
    t = Table(title=f"run {info['run']}", box=box.SIMPLE_HEAD)
    for col in ("stage", "steps", "dataset", "seed", "from", "last logged", "resumable"):
        t.add_column(col, overflow="fold")
    for name, st in info["stages"].items():
        if "error" in st:
            t.add_row(name, "[red]unreadable[/]", st["error"], "", "", "", "")
            continue
        parents = ", ".join(f"{p} ({v})" for p, v in st["parents"].items()) or "-"
        losses = " ".join(
            f"{k}={v}" for k, v in st["last_metrics"].items() if k not in ("step", "wall_s", "steps_per_s")
        )
        done = f"{st['step']:,} / {st['steps']:,}" if st["steps"] else f"{st['step']:,}"
        t.add_row(
            name, done, st["dataset"], str(st["seed"]), parents, losses or "-", "yes" if st["resumable"] else "no"
        )
    print_uncut(t)
    for policy, r in info["eval"].items():
        score = f", score {r['score_mean']:.1f} ± {r['score_std']:.1f} (0-100)" if "score_mean" in r else ""
        out.print(
            f"eval {policy}: return {r.get('return_mean', float('nan')):.1f} ± {r.get('return_std', float('nan')):.1f}"
            f"{score} over {r.get('episodes', '?')} episodes",
            highlight=False,
        )
    if info["config"]:
        c = info["config"]
        out.print(
            f"configuration (from the checkpoints): dataset {c['dataset']}, seed {c['seed']}, beta "
            f"{c['extract']['beta']}, behavior {c['behavior']['steps']:,} steps, critic {c['critic']['steps']:,}, "
            f"extract {c['extract']['steps']:,}; all of it with --json",
            highlight=False,
        )
    out.print("files: " + ", ".join(f"{f['path']} ({f['bytes'] / 1e6:.2f} MB)" for f in info["files"]), highlight=False)


def _limits(text: str | None, flag: str) -> tuple[float, float] | None:
    if text is None:
        return None
    try:
        lo, hi = (float(x) for x in text.split(","))
    except ValueError:
        raise UsageError(f"{flag} expects two numbers LOW,HIGH, got '{text}'.", f"Example: {flag} 0,100") from None
    if not lo < hi:
        raise UsageError(f"{flag} {text}: LOW must be below HIGH.")
    return lo, hi


@app.command("plot")
@guarded
def plot_cmd(
    run_dirs: Annotated[list[Path], typer.Argument(help="Run directories (several seeds go on one figure).")],
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Folder for the PNGs (default: first run's plots/).")
    ] = None,
    mean: Annotated[
        bool, typer.Option("--mean/--no-mean", help="Draw the runs' mean and spread (seeds); off for variants.")
    ] = True,
    window: Annotated[int, typer.Option("--window", help="Moving average over this many logged points.")] = 1,
    xlim: Annotated[str | None, typer.Option("--xlim", metavar="LOW,HIGH", help="Range of the step axis.")] = None,
    ylim: Annotated[str | None, typer.Option("--ylim", metavar="LOW,HIGH", help="Range of the value axis.")] = None,
) -> None:
    """Draw each stage's losses and the score over training as PNG files."""
    from srpo_cli.plots import plot_runs

    files = plot_runs(
        run_dirs, out_dir, mean=mean, window=window, xlim=_limits(xlim, "--xlim"), ylim=_limits(ylim, "--ylim")
    )
    for f in files:
        out.print(str(f))
