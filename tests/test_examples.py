"""The benchmark runner in examples/ on a few steps: its table is what BENCHMARKS.md publishes."""

import importlib.util
import json
from pathlib import Path

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
