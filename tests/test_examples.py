"""The benchmark runner in examples/ on a few steps: its table is what BENCHMARKS.md publishes."""

import importlib.util
import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_run_benchmarks_writes_the_table_and_reuses_finished_stages(default_dataset, tmp_path):
    runner = load_example("run_benchmarks")
    tiny = {
        "behavior.steps": 20, "critic.steps": 20, "extract.steps": 20, "baseline.steps": 20,
        "behavior.batch_size": 32, "critic.batch_size": 32, "extract.batch_size": 32, "baseline.batch_size": 32,
        "eval.episodes": 2, "eval.num_envs": 2, "eval.candidates": 2, "eval.sampling_steps": 2,
        "parallel_pretrain": "false", "device": "cpu",
    }  # fmt: skip
    sets = [a for k, v in tiny.items() for a in ("--set", f"{k}={v}")]
    runs = str(tmp_path / "runs" / "{dataset}" / "seed{seed}")
    out = tmp_path / "results.md"
    argv = ["--datasets", default_dataset, "--seeds", "0", "--runs", runs, "--out", str(out), "--quiet", *sets]
    assert runner.main(argv) == 0
    table = out.read_text()
    assert "Command: `python " in table and "run_benchmarks.py --datasets" in table and "--seeds 0" in table
    row = next(line for line in table.splitlines() if line.startswith(f"| {default_dataset} |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert len(cells) == 8
    for score in cells[1:6]:  # data avg, SRPO, diffusion, AWR, BC: "mean ± std"
        mean, std = (float(x) for x in score.split(" ± "))
        assert std == 0.0  # one seed
    walls = [float(x) for x in cells[6].split(" / ")]
    assert len(walls) == 5 and all(w >= 0 for w in walls)
    run_dir = next((tmp_path / "runs").glob("*/seed0"))
    for name in ("behavior", "critic", "actor", "awr", "bc"):
        assert (run_dir / f"{name}.safetensors").exists()
    recorded = json.loads((run_dir / "walls.json").read_text())
    # A second run reuses every finished stage: nothing is retrained, the recorded walls stay as they were.
    stamps = {p.name: p.stat().st_mtime_ns for p in run_dir.glob("*.safetensors")}
    assert runner.main(argv) == 0
    assert {p.name: p.stat().st_mtime_ns for p in run_dir.glob("*.safetensors")} == stamps
    assert json.loads((run_dir / "walls.json").read_text()) == recorded
    # A finished stage trained with other settings is refused (exit 2), not silently reused.
    changed = [*argv, "--set", "critic.expectile=0.8"]
    assert runner.main(changed) == 2
    assert {p.name: p.stat().st_mtime_ns for p in run_dir.glob("*.safetensors")} == stamps
    # ... and so is a policy whose critic was replaced since it was trained; --force retrains everything.
    critic = run_dir / "critic.safetensors"
    with safe_open(str(critic), "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    tensors["v.net.0.bias"] += 1.0  # another critic: another sha256 than its children recorded
    save_file(tensors, str(critic), metadata=meta)
    assert runner.main(argv) == 2
    assert runner.main([*argv, "--force"]) == 0
    assert all(p.stat().st_mtime_ns != stamps[p.name] for p in run_dir.glob("*.safetensors"))


def test_critic_rollouts_probe_on_a_tiny_hopper(tmp_path, capsys):
    """The rollout probe puts MuJoCo in dataset states exactly and ranks every kind of action."""
    from conftest import tiny_cfg

    from srpo_cli.baselines import train_baseline
    from srpo_cli.behavior import train_behavior
    from srpo_cli.critic import train_critic
    from srpo_cli.data import load_transitions
    from srpo_cli.datasets import collect

    collect("Hopper-v5", "test/hopper/random-v0", "random", 400, seed=0)
    data = load_transitions("test/hopper/random-v0")
    cfg = tiny_cfg("test/hopper/random-v0")
    run = tmp_path / "run"
    for fn in (train_behavior, train_critic):
        fn(cfg, data, run, torch.device("cpu"), quiet=True)
    train_baseline("bc", cfg, data, run, torch.device("cpu"), quiet=True)
    probe = load_example("critic_rollouts")
    argv = ["--dataset", "test/hopper/random-v0", "--run", str(run), "--policy", str(run / "bc.safetensors"),
            "--actors", str(run / "bc.safetensors"), "--states", "4", "--horizon", "5"]  # fmt: skip
    assert probe.main(argv) == 0
    out = capsys.readouterr()
    assert "max |obs(set_state(s)) - s| = 0.00e+00" in out.err
    for kind in ("dataset", "uniform random", "best of 32 behavior samples by Q", "bc.safetensors"):
        assert f"  {kind} " in out.out
    assert "ranking accuracy" in out.out and "up the critic's gradient" in out.out
