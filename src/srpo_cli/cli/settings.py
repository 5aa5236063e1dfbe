"""Configuration commands: the presets, and srpo.yaml."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from srpo_cli.cli.common import (
    DatasetOpt,
    JsonOpt,
    PresetOpt,
    SetOpt,
    app,
    guarded,
    out,
    print_uncut,
    resolve_config,
)
from srpo_cli.errors import UsageError


@app.command("presets")
@guarded
def presets_cmd(as_json: JsonOpt = False) -> None:
    """List the shipped presets."""
    from srpo_cli.config import flatten, load_preset, preset_names
    from srpo_cli.data.fetch import how_to_get
    from srpo_cli.data.store import local_ids

    local = set(local_ids())
    rows = []
    for name in preset_names():
        flat = flatten(load_preset(name), name)
        dataset = flat.get("dataset", "")
        rows.append(
            {
                "name": name,
                "dataset": dataset,
                "beta": flat.get("extract.beta", ""),
                "local": dataset in local,
                "note": how_to_get(dataset),
            }
        )
    if as_json:
        out.print_json(json.dumps(rows))
        return
    t = Table(title="presets (srpo --preset NAME)", caption="local: the dataset is in the local Minari store")
    for col in ("name", "dataset", "beta", "local", "how to get the dataset"):
        t.add_column(col, overflow="fold")
    for r in rows:
        t.add_row(r["name"], str(r["dataset"]), str(r["beta"]), "yes" if r["local"] else "no", r["note"])
    print_uncut(t)


@app.command("init")
@guarded
def init_cmd(
    preset: PresetOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing srpo.yaml.")] = False,
    show: Annotated[
        bool,
        typer.Option(
            "--show",
            help="Print the configuration a run here would use: every key, its value and where it comes from.",
        ),
    ] = False,
    dataset: DatasetOpt = None,
    set_: SetOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Write srpo.yaml (the run configuration) in the current directory, or --show the configuration in force."""
    from srpo_cli import config

    if show:
        origins: dict[str, str] = {}
        cfg = resolve_config(preset, {"dataset": dataset}, set_, origins=origins)
        rows = []
        for key in config.all_keys():
            sec, _, name = key.rpartition(".")
            value = getattr(getattr(cfg, sec) if sec else cfg, name)
            help_text = config.field_info(key).metadata.get("help", "")
            rows.append({"key": key, "value": value, "source": origins.get(key, "default"), "help": help_text})
        if as_json:
            out.print_json(json.dumps(rows))
            return
        t = Table(title=f"configuration for {cfg.dataset} (precedence: flag > SRPO_* > srpo.yaml > preset > default)")
        for col in ("key", "value", "from", "meaning"):
            t.add_column(col, overflow="fold")
        for r in rows:
            t.add_row(r["key"], str(r["value"]), r["source"], r["help"])
        print_uncut(t)
        return
    path = Path(config.CONFIG_FILE)
    if path.exists() and not force:
        raise UsageError(f"{path} already exists.", "Pass --force to overwrite it.")
    cfg = config.resolve(
        {"dataset": dataset} if dataset else {}, preset=preset, config_path=Path("/nonexistent/srpo.yaml")
    )
    config.write_yaml(cfg, path, preset=preset)
    out.print(f"wrote {path}")
