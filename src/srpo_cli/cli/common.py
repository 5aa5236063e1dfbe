"""What every command shares: the Typer app, stdout and stderr consoles, the error contract, the shared
options and configuration resolution. Results go to stdout (tables or ``--json``), progress and logs to
stderr. Exit codes: 0 success, 1 runtime failure, 2 usage error, 130 interrupted."""

from __future__ import annotations

import functools
import json
import os
from typing import Annotated, Any, Literal

import typer
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

from srpo_cli import __version__
from srpo_cli.errors import RuntimeFailure, SrpoError


def _flag_display_type(display_type_rich):
    """Typer 0.29 prints every option's Python type in --help, flags included (``--force <bool>``); a flag
    takes no value, so it shows none."""

    @functools.wraps(display_type_rich)
    def wrapper(self, ctx):
        return None if getattr(self, "is_flag", False) else display_type_rich(self, ctx)

    return wrapper


typer.core.TyperOption.display_type_rich = _flag_display_type(typer.core.TyperOption.display_type_rich)

app = typer.Typer(
    name="srpo",
    help="Score Regularized Policy Optimization (SRPO, ICLR 2024) for offline RL: "
    "fetch -> pretrain-behavior -> pretrain-critic -> extract -> eval.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion for bash, zsh, fish, PowerShell
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
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
            from srpo_cli.train.checkpoint import write_error

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
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """srpo: offline RL with SRPO."""


# ---------------------------------------------------------------------------------------------------------
# Shared options
DatasetOpt = Annotated[str | None, typer.Option("--dataset", "-d", help="Minari dataset id (default: built-in).")]


RunOpt = Annotated[
    str | None,
    typer.Option(
        "--run",
        "--run-dir",
        help="Run directory ({dataset} and {seed} are filled in). Under torchrun, spell it --run-dir (torchrun "
        "takes --run for its own --run-path).",
    ),
]


PresetOpt = Annotated[str | None, typer.Option("--preset", help="Preset name (see 'srpo presets').")]


DeviceOpt = Annotated[
    Literal["auto", "cpu", "cuda", "mps"] | None,
    typer.Option("--device", help="Where to compute (auto: a GPU if one is visible)."),
]


SeedOpt = Annotated[
    int | None,
    typer.Option(
        "--seed", help="Training seed. (default: the preset's, srpo.yaml's or srpo's; 'srpo init --show' lists them)"
    ),
]


StepsOpt = Annotated[
    int | None,
    typer.Option(
        "--steps",
        help="Gradient steps of this stage. (default: the preset's, srpo.yaml's or srpo's; 'srpo init --show' lists them)",
    ),
]


BatchOpt = Annotated[
    int | None,
    typer.Option(
        "--batch-size",
        help="Batch size of this stage. (default: the preset's, srpo.yaml's or srpo's; 'srpo init --show' lists them)",
    ),
]


KeepOpt = Annotated[
    int | None,
    typer.Option("--keep-every", help="Keep a copy of the policy every N steps in actors/ (for eval --curve)."),
]


ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue from the last checkpoint of this stage.")]


ForceOpt = Annotated[bool, typer.Option("--force", help="Overwrite this stage's existing checkpoint.")]


SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set", metavar="KEY=VALUE", help="Override any config key, e.g. --set extract.weighting=one (repeatable)."
    ),
]


JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]


QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]


ThreadsOpt = Annotated[
    int | None,
    typer.Option(
        "--threads",
        help="CPU threads for torch (0: torch's default). (default: the preset's, srpo.yaml's or srpo's; 'srpo init --show' lists them)",
    ),
]


def resolve_config(
    preset: str | None = None,
    flags: dict[str, Any] | None = None,
    set_items: list[str] | None = None,
    origins: dict[str, str] | None = None,
):
    from srpo_cli import config

    overrides = dict(config.parse_set(set_items or []))
    overrides.update({k: v for k, v in (flags or {}).items() if v is not None})
    for key, value in list(overrides.items()):
        if key != "dataset" and key in config.all_keys():
            overrides[key] = config._coerce(key, value, "the command line")
    warnings: list[str] = []
    cfg = config.resolve(overrides, preset=preset, warnings=warnings, origins=origins)
    for warning in warnings:
        err.print(f"warning: {warning}", style="yellow")
    if cfg.threads:
        from srpo_cli.train.device import set_threads

        set_threads(cfg.threads)
    # --device cuda without a GPU is a usage error for every command alike, found before any work
    from srpo_cli.train.device import resolve_device

    resolve_device(cfg.device)
    if overrides.get("dataset"):
        from srpo_cli.data.store import check_dataset_id

        check_dataset_id(cfg.dataset)
    return cfg


def print_summary(summary: dict[str, Any], as_json: bool) -> None:
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
