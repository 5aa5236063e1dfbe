"""Training commands: one per stage, and the whole pipeline."""

from __future__ import annotations

import json
from typing import Annotated, Literal

import typer
from rich.table import Table

from srpo_cli.cli.common import (
    BatchOpt,
    DatasetOpt,
    DeviceOpt,
    ForceOpt,
    JsonOpt,
    KeepOpt,
    PresetOpt,
    QuietOpt,
    ResumeOpt,
    RunOpt,
    SeedOpt,
    SetOpt,
    StepsOpt,
    ThreadsOpt,
    app,
    err,
    guarded,
    out,
    print_summary,
    print_uncut,
    resolve_config,
)
from srpo_cli.errors import UsageError


def _train(name: str, cfg, resume: bool, force: bool, quiet: bool, as_json: bool) -> None:
    from srpo_cli.pipeline import run_stage

    summary = run_stage(name, cfg, resume=resume, force=force, quiet=quiet, log=err)
    if summary is not None:  # under torchrun the other ranks return None: one summary, rank 0's
        print_summary(summary, as_json)


@app.command("pretrain-behavior")
@guarded
def pretrain_behavior(
    dataset: DatasetOpt = None,
    run: RunOpt = None,
    preset: PresetOpt = None,
    device: DeviceOpt = None,
    seed: SeedOpt = None,
    steps: StepsOpt = None,
    batch_size: BatchOpt = None,
    bf16: Annotated[
        bool | None,
        typer.Option(
            "--bf16/--no-bf16",
            help="bf16 autocast (faster on CPUs with AVX512-BF16/AMX, fp32 on CPUs without; slower on an H200 "
            "at these sizes).",
        ),
    ] = None,
    threads: ThreadsOpt = None,
    resume: ResumeOpt = False,
    force: ForceOpt = False,
    set_: SetOpt = None,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Stage 1: train the diffusion behavior model (writes behavior.safetensors)."""
    flags = {
        "dataset": dataset,
        "run_dir": run,
        "device": device,
        "threads": threads,
        "seed": seed,
        "behavior.steps": steps,
        "behavior.batch_size": batch_size,
        "behavior.bf16": bf16,
    }
    _train("behavior", resolve_config(preset, flags, set_), resume, force, quiet, as_json)


@app.command("pretrain-critic")
@guarded
def pretrain_critic(
    dataset: DatasetOpt = None,
    run: RunOpt = None,
    preset: PresetOpt = None,
    device: DeviceOpt = None,
    seed: SeedOpt = None,
    steps: StepsOpt = None,
    batch_size: BatchOpt = None,
    threads: ThreadsOpt = None,
    resume: ResumeOpt = False,
    force: ForceOpt = False,
    set_: SetOpt = None,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Stage 2: train the IQL critic (writes critic.safetensors: twin Q, target twin Q, V)."""
    flags = {
        "dataset": dataset,
        "run_dir": run,
        "device": device,
        "threads": threads,
        "seed": seed,
        "critic.steps": steps,
        "critic.batch_size": batch_size,
    }
    _train("critic", resolve_config(preset, flags, set_), resume, force, quiet, as_json)


@app.command("extract")
@guarded
def extract(
    beta: Annotated[
        str | None,
        typer.Option(
            "--beta",
            metavar="B|auto",
            help="SRPO temperature (larger = greedier), or 'auto': the largest beta whose Q push the behavior "
            "model's pull matches within extract.auto_beta_distance of the data (a heuristic; see BENCHMARKS.md).",
        ),
    ] = None,
    dataset: DatasetOpt = None,
    run: RunOpt = None,
    preset: PresetOpt = None,
    device: DeviceOpt = None,
    seed: SeedOpt = None,
    steps: StepsOpt = None,
    batch_size: BatchOpt = None,
    eval_every: Annotated[int | None, typer.Option("--eval-every", help="Evaluate every N steps (0: never).")] = None,
    keep_every: KeepOpt = None,
    bf16: Annotated[
        bool | None, typer.Option("--bf16/--no-bf16", help="bf16 autocast on the frozen behavior net.")
    ] = None,
    threads: ThreadsOpt = None,
    resume: ResumeOpt = False,
    force: ForceOpt = False,
    set_: SetOpt = None,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Stage 3: extract the SRPO actor from the behavior model and critic (writes actor.safetensors)."""
    auto = beta is not None and beta.strip().lower() == "auto"
    if beta is not None and not auto:
        try:
            float(beta)
        except ValueError:
            raise UsageError(f"--beta expects a number or 'auto'; got '{beta}'.", "Example: --beta 0.05") from None
    flags = {
        "dataset": dataset,
        "run_dir": run,
        "device": device,
        "threads": threads,
        "seed": seed,
        # a number turns a configured auto_beta off; 'auto' turns it on and leaves beta to the probe
        "extract.beta": None if beta is None or auto else float(beta),
        "extract.auto_beta": None if beta is None else auto,
        "extract.steps": steps,
        "extract.batch_size": batch_size,
        "extract.eval_every": eval_every,
        "extract.keep_every": keep_every,
        "extract.bf16_behavior": bf16,
    }
    _train("extract", resolve_config(preset, flags, set_), resume, force, quiet, as_json)


@app.command("train-baseline")
@guarded
def train_baseline_cmd(
    kind: Annotated[
        Literal["awr", "bc"], typer.Argument(help="awr (IQL's advantage-weighted policy) or bc (behavior cloning).")
    ],
    dataset: DatasetOpt = None,
    run: RunOpt = None,
    preset: PresetOpt = None,
    device: DeviceOpt = None,
    seed: SeedOpt = None,
    steps: StepsOpt = None,
    batch_size: BatchOpt = None,
    keep_every: KeepOpt = None,
    threads: ThreadsOpt = None,
    resume: ResumeOpt = False,
    force: ForceOpt = False,
    set_: SetOpt = None,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Train a comparison policy (awr.safetensors or bc.safetensors) on the same data."""
    flags = {
        "dataset": dataset,
        "run_dir": run,
        "device": device,
        "threads": threads,
        "seed": seed,
        "baseline.steps": steps,
        "baseline.batch_size": batch_size,
        "baseline.keep_every": keep_every,
    }
    _train(kind, resolve_config(preset, flags, set_), resume, force, quiet, as_json)


@app.command("pipeline")
@guarded
def pipeline_cmd(
    dataset: DatasetOpt = None,
    run: RunOpt = None,
    preset: PresetOpt = None,
    device: DeviceOpt = None,
    seed: SeedOpt = None,
    threads: ThreadsOpt = None,
    set_: SetOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Retrain stages whose checkpoints exist.")] = False,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Run every stage (fetch, behavior, critic, extract, eval of SRPO and the diffusion baseline, bench)
    and print the comparison table. Finished stages are reused unless --force."""
    from srpo_cli.pipeline import run_pipeline

    flags = {"dataset": dataset, "run_dir": run, "device": device, "seed": seed, "threads": threads}
    cfg = resolve_config(preset, flags, set_)
    result = run_pipeline(cfg, force=force, quiet=quiet, log=err)
    if as_json:
        out.print_json(json.dumps(result))
        return
    t = Table(
        title=f"SRPO on {cfg.dataset} (seed {cfg.seed})"
        + (" — score: normalized 0-100" if "dataset_score" in result else "")
    )
    t.add_column("")
    t.add_column("return", justify="right")
    if "dataset_score" in result:
        t.add_column("score 0-100", justify="right")
    for label, key in (("dataset average", "dataset"), ("SRPO actor", "srpo"), ("diffusion baseline", "diffusion")):
        row = [label, f"{result[key + '_return']:.1f}"]
        if "dataset_score" in result:
            row.append(f"{result[key + '_score']:.1f}")
        t.add_row(*row)
    print_uncut(t)
    out.print(
        f"action latency p50 at batch 1: SRPO {result['srpo_p50_us']:.1f} µs, diffusion "
        f"{result['diffusion_p50_us']:,.0f} µs -> [bold]{result['latency_ratio']:,.0f}x faster[/]; "
        f"wall time {result['wall_s']:.0f} s"
    )
