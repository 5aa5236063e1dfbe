"""The ``srpo`` command line: option parsing, configuration resolution, output and exit codes only.

Results go to stdout (tables or ``--json``), progress and logs to stderr. Exit codes: 0 success,
1 runtime failure, 2 usage error, 130 interrupted.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

from . import __version__
from .errors import RuntimeFailure, SrpoError, UsageError

app = typer.Typer(
    name="srpo",
    help="Score Regularized Policy Optimization (SRPO, ICLR 2024) for offline RL: "
    "fetch -> pretrain-behavior -> pretrain-critic -> extract -> eval.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)


def print_uncut(table: Table) -> None:
    """Print a table to stdout; into a pipe or file at its full width, where Rich would fit it to 80 columns
    and cut ids and numbers short with an ellipsis (a terminal keeps Rich's fitting to its own width)."""
    if out.is_terminal:
        out.print(table)
        return
    need = Measurement.get(out, out.options.update_width(100_000), table).maximum
    Console(file=out.file, width=max(out.width, need), color_system=out.color_system).print(table)


def _fail(e: SrpoError) -> None:
    err.print(f"[bold red]Error:[/] {e}", highlight=False, soft_wrap=True)
    raise typer.Exit(e.exit_code)


def guarded(fn):
    """Turn SrpoError (and anything unexpected) into a one-paragraph message and an exit code."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except SrpoError as e:
            _fail(e)
        except KeyboardInterrupt:
            err.print("[bold red]Interrupted.[/]")
            raise typer.Exit(130) from None
        except typer.Exit:
            raise
        except OSError as e:  # a path or disk problem met outside the places that name it themselves
            if os.environ.get("SRPO_DEBUG"):
                raise
            from .checkpoint import write_error

            _fail(write_error(e.filename or "a file", e))
        except Exception as e:  # a bug or an unforeseen environment problem: still no traceback by default
            if os.environ.get("SRPO_DEBUG"):
                raise
            _fail(
                RuntimeFailure(
                    f"Unexpected {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                    "Re-run with SRPO_DEBUG=1 for the traceback and report it.",
                )
            )

    return wrapper


def _version(value: bool) -> None:
    if value:
        import torch

        out.print(f"srpo {__version__} (torch {torch.__version__})", highlight=False)
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """srpo: offline RL with SRPO."""


# ---------------------------------------------------------------------------------------------------------
# Shared options
DatasetOpt = Annotated[str | None, typer.Option("--dataset", "-d", help="Minari dataset id (default: built-in).")]
RunOpt = Annotated[str | None, typer.Option("--run", help="Run directory ({dataset} and {seed} are filled in).")]
PresetOpt = Annotated[str | None, typer.Option("--preset", help="Preset name (see 'srpo presets').")]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="auto|cpu|cuda|mps.")]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Training seed.")]
StepsOpt = Annotated[int | None, typer.Option("--steps", help="Gradient steps of this stage.")]
BatchOpt = Annotated[int | None, typer.Option("--batch-size", help="Batch size of this stage.")]
KeepOpt = Annotated[
    int | None,
    typer.Option("--keep-every", help="Keep a copy of the policy every N steps in actors/ (for eval --curve)."),
]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue from the last checkpoint of this stage.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Overwrite this stage's existing checkpoint.")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override any config key, e.g. --set extract.weighting=one (repeatable)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]
ThreadsOpt = Annotated[int | None, typer.Option("--threads", help="CPU threads for torch (0: torch's default).")]


def _config(
    preset: str | None = None,
    flags: dict[str, Any] | None = None,
    set_items: list[str] | None = None,
    write_default: bool = True,
):
    from . import config

    overrides = dict(config.parse_set(set_items or []))
    overrides.update({k: v for k, v in (flags or {}).items() if v is not None})
    for key, value in list(overrides.items()):
        if key != "dataset" and key in config.all_keys():
            overrides[key] = config._coerce(key, value, "the command line")
    warnings: list[str] = []
    cfg = config.resolve(overrides, preset=preset, warnings=warnings)
    for warning in warnings:
        err.print(f"warning: {warning}", style="yellow")
    if cfg.threads:
        from .training import set_threads

        set_threads(cfg.threads)
    path = Path(config.CONFIG_FILE)
    if write_default and not path.exists():
        # The first command that needs a configuration writes one the user can edit: the dataset it runs on,
        # and the hyperparameters in force for it, commented out so that presets keep applying.
        base = config.resolve({"dataset": cfg.dataset}, preset=preset)
        try:
            config.write_yaml(base, path, preset=preset)
            err.print(f"wrote {path} (edit it to change defaults)", style="dim")
        except OSError as e:  # a read-only working folder: the file is a convenience, the run goes on
            err.print(f"warning: could not write {path} ({e.strerror}); continuing without it", style="yellow")
    if overrides.get("dataset"):
        from .data import check_dataset_id

        check_dataset_id(cfg.dataset)
    return cfg


def _ensure_dataset(dataset_id: str) -> None:
    """The built-in default builds itself when missing; anything else must be fetched first."""
    from .config import DEFAULT_DATASET
    from .data import check_dataset_id
    from .datasets import fetch, local_ids, missing_dataset_error

    check_dataset_id(dataset_id)
    if dataset_id in local_ids():
        return
    if dataset_id == DEFAULT_DATASET:
        err.print(f"building the built-in default dataset {dataset_id} ...", style="dim")
        fetch(dataset_id)
        return
    raise missing_dataset_error(dataset_id)


def _load_data(cfg, device):
    from .data import load_transitions

    _ensure_dataset(cfg.dataset)
    return load_transitions(cfg.dataset, device, cfg.data.normalize_actions)


def _print_summary(summary: dict[str, Any], as_json: bool) -> None:
    if as_json:
        out.print_json(json.dumps(summary))
        return
    t = Table(title=f"{summary['stage']} finished", show_header=False)
    t.add_row("steps", f"{summary['start_step']:,} -> {summary['step']:,}")
    t.add_row("wall time", f"{summary['wall_s']:.1f} s ({summary['steps_per_s']:,.1f} steps/s)")
    for k, v in summary["losses"].items():
        t.add_row(k, f"{v:.5g}")
    if "balance" in summary:  # extract: where the Q term's push meets the score term's pull
        b = summary["balance"]
        where = b["balance_step"]
        t.add_row(
            "Q / score balance",
            f"{where:.2f} off the data" if where is not None else f"none within {b['steps'][-1]:g} (Q term dominates)",
        )
    t.add_row("checkpoint", summary["checkpoint"])
    print_uncut(t)


def _check_run_dir(run_dir: Path) -> None:
    """A run directory must be a folder (or not exist yet): found before any training time is spent."""
    for parent in [run_dir, *run_dir.parents]:
        if parent.exists() and not parent.is_dir():
            raise UsageError(
                f"--run {run_dir}: {parent} is a file, not a folder.", "Name a folder (new or existing) for the run."
            )


def _warn_if_cores_busy(threads: int) -> None:
    from .training import busy_cores_warning

    note = busy_cores_warning(threads)
    if note:
        err.print(f"warning: {note}", style="yellow", highlight=False)


def _run_stage(stage: str, cfg, resume: bool, force: bool, quiet: bool, as_json: bool, kind: str = "") -> None:
    from .checkpoint import exclusive, lock_path
    from .training import check_can_write, resolve_device

    device = resolve_device(cfg.device)
    run_dir = cfg.resolved_run_dir()
    _check_run_dir(run_dir)
    file_name = {"behavior": "behavior", "critic": "critic", "extract": "actor"}.get(stage, kind) + ".safetensors"
    ckpt = run_dir / file_name
    check_can_write(ckpt, resume, force)
    if resume:
        from .checkpoint import load_checkpoint
        from .runner import refuse_other_config

        refuse_other_config(
            load_checkpoint(ckpt),
            cfg,
            "--resume would continue",
            "Resume with the same settings (only steps and logging may change), or --force to start over.",
        )
    if stage in ("extract", "baseline"):
        needed = (["behavior.safetensors"] if stage == "extract" else []) + ["critic.safetensors"]
        if stage == "baseline" and kind == "bc":
            needed = []
        for name in needed:
            if not (run_dir / name).exists():
                raise RuntimeFailure(
                    f"{run_dir / name} is missing; '{stage}' needs it.",
                    "Run 'srpo pretrain-behavior' and 'srpo pretrain-critic' first (same --run/--dataset/--seed).",
                )
    # Taken before the data load, so that a second writer or a read-only folder is refused at once (training
    # takes it again; held for the whole stage).
    with exclusive(lock_path(ckpt), str(ckpt)):
        _train_stage(stage, cfg, device, run_dir, ckpt, resume, quiet, as_json, kind)


def _train_stage(stage, cfg, device, run_dir: Path, ckpt: Path, resume, quiet, as_json, kind) -> None:
    data = _load_data(cfg, device)
    err.print(
        f"{stage}{' ' + kind if kind else ''}: dataset {cfg.dataset} ({data.size:,} transitions, "
        f"obs {data.obs_dim}, action {data.action_dim}) -> {ckpt}",
        style="dim",
        highlight=False,
    )
    if stage == "behavior":
        from .behavior import train_behavior as fn
    elif stage == "critic":
        from .critic import train_critic as fn
    elif stage == "extract":
        from .extract import train_actor as fn
    else:
        from .baselines import train_baseline

        fn = functools.partial(train_baseline, kind)
    if device.type == "cpu":
        import torch

        _warn_if_cores_busy(torch.get_num_threads())
    summary = fn(cfg, data, run_dir, device, resume=resume, quiet=quiet)
    _print_summary(summary, as_json)


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
            help="bf16 autocast (faster on CPUs with AVX512-BF16/AMX; slower on an H200 at these sizes).",
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
    _run_stage("behavior", _config(preset, flags, set_), resume, force, quiet, as_json)


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
    _run_stage("critic", _config(preset, flags, set_), resume, force, quiet, as_json)


@app.command("extract")
@guarded
def extract(
    beta: Annotated[float | None, typer.Option("--beta", help="SRPO temperature (larger = greedier).")] = None,
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
    flags = {
        "dataset": dataset,
        "run_dir": run,
        "device": device,
        "threads": threads,
        "seed": seed,
        "extract.beta": beta,
        "extract.steps": steps,
        "extract.batch_size": batch_size,
        "extract.eval_every": eval_every,
        "extract.keep_every": keep_every,
        "extract.bf16_behavior": bf16,
    }
    _run_stage("extract", _config(preset, flags, set_), resume, force, quiet, as_json)


@app.command("train-baseline")
@guarded
def train_baseline_cmd(
    kind: Annotated[str, typer.Argument(help="awr (IQL's advantage-weighted policy) or bc (behavior cloning).")],
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
    if kind not in ("awr", "bc"):
        raise UsageError(f"Unknown baseline '{kind}'.", "Choose awr or bc.")
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
    _run_stage("baseline", _config(preset, flags, set_), resume, force, quiet, as_json, kind=kind)


# ---------------------------------------------------------------------------------------------------------
# Datasets


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
    from . import datasets

    if d4rl_file is not None:
        if env is None or (new_id is None and dataset_id is None):
            raise UsageError(
                "--d4rl-file needs --env ENV_ID and --id DATASET_ID.",
                "Example: srpo fetch --d4rl-file hopper_medium-v2.hdf5 --env Hopper-v5 --id d4rl/hopper/medium-v2",
            )
        if (ref_min is None) != (ref_max is None):
            raise UsageError("--ref-min and --ref-max go together.")
        rep = datasets.import_d4rl(d4rl_file, env, new_id or dataset_id, ref_min, ref_max, force)
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
        ds_id, action = datasets.fetch(dataset_id, force)
        result = {"dataset": ds_id, "action": action}
    if as_json:
        out.print_json(json.dumps(result))
    else:
        out.print(" ".join(f"{k}={v}" for k, v in result.items()), highlight=False)


@app.command("datasets")
@guarded
def datasets_cmd(as_json: JsonOpt = False) -> None:
    """List local datasets (MINARI_DATASETS_PATH)."""
    from .datasets import describe_local

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
    from .datasets import collect

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


# ---------------------------------------------------------------------------------------------------------
# Configuration


@app.command("presets")
@guarded
def presets_cmd(as_json: JsonOpt = False) -> None:
    """List the shipped presets."""
    from .config import flatten, load_preset, preset_names

    rows = []
    for name in preset_names():
        tree = load_preset(name)
        flat = flatten(tree, name)
        rows.append(
            {
                "name": name,
                "dataset": flat.get("dataset", ""),
                "beta": flat.get("extract.beta", ""),
                "note": tree.get("note", "") if isinstance(tree, dict) else "",
            }
        )
    if as_json:
        out.print_json(json.dumps(rows))
        return
    t = Table(title="presets (srpo --preset NAME)")
    for col in ("name", "dataset", "beta"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["name"], str(r["dataset"]), str(r["beta"]))
    print_uncut(t)


@app.command("init")
@guarded
def init_cmd(
    preset: PresetOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing srpo.yaml.")] = False,
    show: Annotated[bool, typer.Option("--show", help="Print every configuration key with its help.")] = False,
) -> None:
    """Write srpo.yaml (the run configuration) in the current directory."""
    from . import config

    if show:
        t = Table(title="configuration keys")
        for col in ("key", "default", "help"):
            t.add_column(col)
        defaults = config.RunConfig()
        for key in config.all_keys():
            sec, _, name = key.rpartition(".")
            value = getattr(getattr(defaults, sec) if sec else defaults, name)
            t.add_row(key, str(value), config.field_info(key).metadata.get("help", ""))
        out.print(t)
        return
    path = Path(config.CONFIG_FILE)
    if path.exists() and not force:
        raise UsageError(f"{path} already exists.", "Pass --force to overwrite it.")
    cfg = config.resolve({}, preset=preset, config_path=Path("/nonexistent/srpo.yaml"))
    config.write_yaml(cfg, path, preset=preset)
    out.print(f"wrote {path}")


# ---------------------------------------------------------------------------------------------------------
# Evaluation, benchmark, export


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
    episodes: Annotated[int | None, typer.Option("--episodes", help="Evaluation episodes per run.")] = None,
    policy: Annotated[str, typer.Option("--policy", help="srpo | diffusion | awr | bc.")] = "srpo",
    seeds: Annotated[str | None, typer.Option("--seeds", help="Aggregate over training seeds, e.g. 0,1,2.")] = None,
    runs: Annotated[
        list[Path] | None, typer.Option("--runs", help="Run directories to aggregate (repeatable).")
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
    from .evaluate import aggregate_seeds
    from .runner import evaluate_run

    if policy not in ("srpo", "diffusion", "awr", "bc"):
        raise UsageError(f"Unknown --policy '{policy}'.", "Choose srpo, diffusion, awr or bc.")
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
    cfg = _config(preset, flags, set_)
    if curve:
        _eval_curves(cfg, _run_dirs(cfg, seeds, runs), policy, as_json, quiet)
        return
    results = []
    for run_dir in _run_dirs(cfg, seeds, runs):
        res = evaluate_run(cfg, Path(run_dir), policy, expect_dataset=dataset)
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
    from .runner import evaluate_curve

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
    from .runner import bench_run

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
    cfg = _config(preset, flags, set_)
    result = bench_run(cfg, cfg.resolved_run_dir(), repeats)
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
    fmt: Annotated[str, typer.Option("--format", help="torchscript or onnx.")] = "torchscript",
    policy: Annotated[str, typer.Option("--policy", help="srpo | awr | bc.")] = "srpo",
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing output file.")] = False,
    dataset: DatasetOpt = None,
    run: RunOpt = None,
    preset: PresetOpt = None,
    seed: SeedOpt = None,
    set_: SetOpt = None,
) -> None:
    """Write a standalone actor (action scaling baked in) for plain torch or onnxruntime."""
    from .checkpoint import load_checkpoint
    from .export import export_actor, input_layout
    from .runner import policy_file

    if fmt not in ("torchscript", "onnx"):
        raise UsageError(f"Unknown --format '{fmt}'.", "Choose torchscript or onnx.")
    cfg = _config(preset, {"dataset": dataset, "run_dir": run, "seed": seed}, set_)
    src = cfg.resolved_run_dir() / policy_file(policy)
    check_export_target(out_file, src, force)
    export_actor(src, out_file, fmt)
    out.print(f"wrote {out_file} ({fmt}) from {src}")
    layout = input_layout(load_checkpoint(src))
    if layout is not None:
        parts = ", ".join(f"{name} [{a}:{b}]" for name, a, b in layout)
        out.print(f"input: one vector of {layout[-1][2]} numbers: {parts}", highlight=False)


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
    from .runner import run_pipeline

    flags = {"dataset": dataset, "run_dir": run, "device": device, "seed": seed, "threads": threads}
    cfg = _config(preset, flags, set_)
    _check_run_dir(cfg.resolved_run_dir())
    _ensure_dataset(cfg.dataset)
    if cfg.device in ("cpu", "auto"):
        import torch

        if cfg.device == "cpu" or not torch.cuda.is_available():
            _warn_if_cores_busy(cfg.threads or torch.get_num_threads())
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
) -> None:
    """Draw each stage's losses and the score over training as PNG files."""
    from .plots import plot_runs

    files = plot_runs(run_dirs, out_dir, mean=mean)
    for f in files:
        out.print(str(f))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
