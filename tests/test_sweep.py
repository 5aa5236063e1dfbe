"""`srpo sweep` on a real local Ray instance: the graph of stages, failures reported while the rest goes on,
and a second run that reuses every finished stage."""

import json

import pytest
from typer.testing import CliRunner

from srpo_cli.cli import app

pytest.importorskip("ray")

TINY = [
    f"--set={k}" for k in (
        "behavior.steps=20", "critic.steps=20", "extract.steps=20", "baseline.steps=20", "eval.episodes=2",
        "eval.num_envs=2", "behavior.batch_size=64", "critic.batch_size=64", "extract.batch_size=64",
        "baseline.batch_size=64",
    )
]  # fmt: skip


def test_a_sweep_on_local_ray_reports_failures_and_resumes(workdir, default_dataset):
    out = workdir / "sweep"
    args = ["sweep", "--datasets", f"{default_dataset},nope/missing-v0", "--seeds", "0", "--betas", "0.01,0.1",
            "--out", str(out), "--threads", "2", "--quiet", "--json", *TINY]  # fmt: skip
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 1, r.output  # the missing dataset's stages failed, and said so
    summary = json.loads((out / "sweep.json").read_text())
    own = next(row for row in summary["rows"] if row["dataset"] == default_dataset)
    assert own["betas"]["0.01"]["n"] == 1 and own["betas"]["0.1"]["n"] == 1 and own["bc"]["n"] == 1
    assert own["best_beta"] in ("0.01", "0.1") and own["data"] == pytest.approx(54.4, abs=0.1)
    assert summary["failures"] and all("nope/missing-v0" in f["task"] for f in summary["failures"])
    assert "not in the local Minari store" in summary["failures"][0]["error"]
    assert summary["ray_startup_s"] > 0 and set(summary["wall_s_per_stage"]) >= {"behavior", "critic", "extract"}
    assert (out / "sweep.png").stat().st_size > 5_000 and "**" in (out / "sweep.md").read_text()
    run = out / "runs" / "srpo-pendulum-scripted-medium-v0" / "seed0"
    assert (run / "beta-0.01" / "actor.safetensors").exists() and (run / "awr.safetensors").exists()
    stamps = {p: p.stat().st_mtime_ns for p in run.rglob("*.safetensors")}
    # again, only the dataset that exists: every stage is reused, nothing retrained
    args[2] = default_dataset
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*.safetensors")} == stamps
    assert json.loads((out / "sweep.json").read_text())["wall_s_per_stage"] == {}  # no stage trained
