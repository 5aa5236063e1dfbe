"""Configuration commands: the presets, and srpo.yaml."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from srpo_cli.cli.common import (
    JsonOpt,
    PresetOpt,
    app,
    guarded,
    out,
    print_uncut,
)
from srpo_cli.errors import UsageError


@app.command("presets")
@guarded
def presets_cmd(as_json: JsonOpt = False) -> None:
    """List the shipped presets."""
    from srpo_cli.config import flatten, load_preset, preset_names

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
    from srpo_cli import config

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
