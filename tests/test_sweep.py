"""`srpo sweep` on a real local Ray instance: the graph of stages, failures reported while the rest goes on,
'preset' as a beta, the balance of each extraction, and a second run that reuses every finished stage (and
refuses one trained with other settings)."""

import json
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from srpo_cli.cli import app
from srpo_cli.train.checkpoint import load_checkpoint

pytest.importorskip("ray")

TINY = [
    f"--set={k}" for k in (
        "behavior.steps=20", "critic.steps=20", "extract.steps=20", "baseline.steps=20", "eval.episodes=2",
        "eval.num_envs=2", "behavior.batch_size=64", "critic.batch_size=64", "extract.batch_size=64",
        "baseline.batch_size=64", "extract.beta=0.1",
    )
]  # fmt: skip


def test_a_sweep_on_local_ray_reports_failures_and_resumes(workdir, default_dataset, monkeypatch):
    # what the sweep measures comes from its command line alone, not from a srpo.yaml or SRPO_* left around
    (workdir / "srpo.yaml").write_text("preset: antmaze-umaze\n")
    monkeypatch.setenv("SRPO_PRESET", "antmaze-umaze")
    out = workdir / "sweep"
    args = ["sweep", "--datasets", f"{default_dataset},nope/missing-v0", "--seeds", "0", "--betas", "preset,0.01,0.1,auto",
            "--out", str(out), "--threads", "2", "--quiet", "--json", *TINY]  # fmt: skip
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 1, r.output  # the missing dataset's stages failed, and said so
    summary = json.loads((out / "sweep.json").read_text())
    own = next(row for row in summary["rows"] if row["dataset"] == default_dataset)
    assert own["betas"]["0.01"]["n"] == 1 and own["betas"]["0.1"]["n"] == 1 and own["bc"]["n"] == 1
    # 'preset' is the configured beta (0.1 here), extracted once and reported under both names
    assert own["beta_values"]["preset"] == 0.1 and own["betas"]["preset"] == own["betas"]["0.1"]
    assert own["best_beta"] in ("preset", "0.01", "0.1", "auto") and own["data"] == pytest.approx(54.4, abs=0.1)
    assert "diffusion" not in own and "latency_p50_us" not in own  # only when asked
    assert summary["failures"] and all("nope/missing-v0" in f["task"] for f in summary["failures"])
    assert "not in the local Minari store" in summary["failures"][0]["error"]
    assert summary["ray_startup_s"] > 0 and set(summary["wall_s_per_stage"]) >= {"behavior", "critic", "extract"}
    assert set(own["train_s"]) == {"behavior", "critic", "extract", "awr", "bc"}
    assert (out / "sweep.png").stat().st_size > 5_000 and "**" in (out / "sweep.md").read_text()
    run = out / "runs" / "srpo-pendulum-scripted-medium-v0" / "seed0"
    assert sorted(p.name for p in run.glob("beta-*")) == ["beta-0.01", "beta-0.1", "beta-auto"]
    # 'auto': each run's probe chose its beta (recorded in the actor), reported beside the score
    chosen = own["beta_values"]["auto"]
    assert isinstance(chosen, float) and chosen >= 0 and own["betas"]["auto"]["n"] == 1
    assert load_checkpoint(run / "beta-auto" / "actor.safetensors").config["extract"]["beta"] == chosen
    assert f"at {own['beta_values']['auto']:.3g}" in (out / "sweep.md").read_text()
    assert (run / "beta-0.01" / "actor.safetensors").exists() and (run / "awr.safetensors").exists()
    # each extraction's balance is the one srpo extract measures for that beta (a distance, or none)
    from srpo_cli import config
    from srpo_cli.algos.extract import run_balance
    from srpo_cli.data.transitions import load_transitions

    for beta, value in (("0.01", 0.01), ("0.1", 0.1), ("auto", chosen)):
        flags = {"dataset": default_dataset, **config.parse_set([a.split("=", 1)[1] for a in TINY])}
        cfg = config.resolve({**flags, "extract.beta": value}, config_path=workdir / "none.yaml", environ={})
        expected = run_balance(cfg, load_transitions(default_dataset), run / f"beta-{beta}", torch.device("cpu"))
        assert own["balance"][beta] == [expected.balance_step]
    stamps = {p: p.stat().st_mtime_ns for p in run.rglob("*.safetensors")}
    # again, only the dataset that exists, while another Ray instance runs on this machine (the sweep starts its
    # own instead of joining that one): every stage is reused, nothing retrained; training times are kept.
    # With extract.auto_beta set, 'preset' is the probe's beta: the same extraction as 'auto', reused
    args[2] = default_dataset
    args.append("--set=extract.auto_beta=true")
    other = subprocess.Popen(
        [sys.executable, "-c", "import ray, time; ray.init(num_cpus=1, include_dashboard=False); print('up', flush=True); "
         "time.sleep(600)"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        assert other.stdout.readline().strip() == "up"
        r = CliRunner().invoke(app, args)
    finally:
        other.terminate()
        other.wait(timeout=60)
    assert r.exit_code == 0, r.output
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*.safetensors")} == stamps
    again = json.loads((out / "sweep.json").read_text())
    assert again["wall_s_per_stage"] == {}  # no stage trained
    # the same stages' times (summed in another order: 'preset' is now the auto extraction)
    assert again["rows"][0]["train_s"] == pytest.approx(own["train_s"], rel=1e-9)
    assert again["rows"][0]["beta_values"]["preset"] == chosen == again["rows"][0]["beta_values"]["auto"]
    assert again["rows"][0]["betas"]["preset"] == own["betas"]["auto"]
    table = (out / "sweep.md").read_text()
    assert "SRPO beta=preset (auto)" in table and table.count(f"at {chosen:.3g}") == 2
    # a finished stage trained with other settings is refused, not silently reused
    r = CliRunner().invoke(app, [*args, "--set", "critic.expectile=0.8"])
    assert r.exit_code == 1
    failed = json.loads((out / "sweep.json").read_text())["failures"]
    critic = next(f for f in failed if f["task"].endswith(" critic"))
    assert "another configuration" in critic["error"] and "expectile" in critic["error"]
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*.safetensors")} == stamps


def test_sweep_rejects_bad_betas_and_seeds(workdir):
    for flags, needle in ((["--betas", "0.1,x"], "--betas"), (["--betas", "0.1,0.1"], "twice"),
                          (["--betas", "-1"], "not a beta"), (["--seeds", "0-x"], "--seeds")):  # fmt: skip
        r = CliRunner().invoke(app, ["sweep", "--datasets", "a/b-v0", *flags])
        assert r.exit_code == 2 and needle in r.output, r.output


def test_sigterm_stops_a_sweep_with_a_checkpoint_of_every_running_stage(workdir, default_dataset):
    # Without the driver's cancel, Ray kills the workers and a stage loses everything since its last periodic
    # checkpoint: here there is none before step 100000, so any checkpoint on disk is the stop's own.
    import os
    import signal
    import time

    out = workdir / "sweep"
    long = ["--set=behavior.steps=200000", "--set=critic.steps=200000", "--set=behavior.ckpt_every=100000",
            "--set=critic.ckpt_every=100000", "--set=behavior.log_every=100", "--set=critic.log_every=100"]  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "srpo_cli", "sweep", "--datasets", default_dataset, "--seeds", "0", "--betas", "0.1",
         "--out", str(out), "--threads", "2", "--quiet", *long],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy(),
    )  # fmt: skip
    run = out / "runs" / "srpo-pendulum-scripted-medium-v0" / "seed0"
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not all(
            (run / "metrics" / f"{s}.csv").exists() and len((run / "metrics" / f"{s}.csv").read_text().splitlines()) > 2
            for s in ("behavior", "critic")
        ):
            time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=180)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "Sweep stopped" in err and "Traceback" not in err
    for stage in ("behavior", "critic"):
        step = int(load_checkpoint(run / f"{stage}.safetensors").meta["step"])
        assert 0 < step < 100_000 and (run / f"{stage}.state.pt").exists()
