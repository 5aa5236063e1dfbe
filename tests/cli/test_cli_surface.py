"""The CLI a user meets (issue 39): help, configuration display, `show`, dataset statistics, TensorBoard,
robust multi-seed summaries, plot options, the current export formats."""

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import tiny_cfg
from typer.testing import CliRunner

from srpo_cli.cli import app
from srpo_cli.data.transitions import load_transitions
from srpo_cli.pipeline import evaluate_run, train_stage

runner = CliRunner()


def srpo(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def run(tmp_path_factory, default_dataset):
    """A tiny trained run of the built-in default (behavior, critic, actor), evaluated once."""
    run_dir = tmp_path_factory.mktemp("surface") / "run"
    cfg = tiny_cfg(default_dataset, run_dir=str(run_dir))
    data = load_transitions(default_dataset)
    for stage in ("behavior", "critic", "extract"):
        train_stage(stage, cfg, data, run_dir, torch.device("cpu"), quiet=True)
    evaluate_run(cfg, run_dir)
    return run_dir


def test_help_shows_choices_flags_without_types_and_where_defaults_come_from(workdir):
    r = srpo("-h")
    assert r.exit_code == 0 and "pretrain-behavior" in r.output
    text = srpo("pretrain-critic", "--help").output
    assert "<bool>" not in text and "<auto|cpu|cuda|mps>" in text and "KEY=VALUE" in text
    assert "srpo init --show" in text  # --steps says where its default comes from
    assert "<awr|bc>" in srpo("train-baseline", "-h").output
    wide = runner.invoke(app, ["export", "-h"], env={"COLUMNS": "200"}).output
    assert "<torchscript|onnx|torch-export>" in wide
    assert "--install-completion" in r.output


def test_init_show_is_the_configuration_a_run_would_use_with_its_sources(workdir, monkeypatch):
    r = srpo("init", "--show", "--preset", "walker2d-medium-replay", "--set", "critic.q_lr=0.001", "--json")
    assert r.exit_code == 0, r.output
    rows = {row["key"]: row for row in json.loads(r.stdout)}
    assert (
        rows["extract.beta"]["value"] == 0.5 and rows["extract.beta"]["source"] == "the preset 'walker2d-medium-replay'"
    )
    assert rows["critic.q_lr"]["source"] == "the command line" and rows["critic.v_lr"]["source"] == "default"
    monkeypatch.setenv("SRPO_SEED", "3")
    rows = {row["key"]: row for row in json.loads(srpo("init", "--show", "--json").stdout)}
    assert rows["seed"]["value"] == 3 and "SRPO_" in rows["seed"]["source"]
    r = srpo("init", "--show", "--preset", "nosuch")
    assert r.exit_code == 2 and "Unknown preset" in r.output
    assert not (workdir / "srpo.yaml").exists()  # showing writes nothing


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_an_unavailable_device_is_a_usage_error_for_every_command(workdir, run):
    for args in (["eval", "--run", run], ["bench", "--run", run], ["pretrain-critic"]):
        r = srpo(*args, "--device", "cuda")
        assert r.exit_code == 2 and "no CUDA GPU" in r.output, args


def test_presets_say_how_to_get_each_dataset(workdir, default_dataset):
    rows = json.loads(srpo("presets", "--json").stdout)
    assert all(r["note"] for r in rows)
    own = next(r for r in rows if r["dataset"] == default_dataset)
    assert own["local"] and "built in" in own["note"]
    assert any("--d4rl-file" in r["note"] for r in rows if r["dataset"].startswith("d4rl/"))


def test_show_summarizes_a_run_and_notices_a_replaced_parent(workdir, run, tmp_path):
    r = srpo("show", run, "--json")
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    assert set(info["stages"]) == {"behavior", "critic", "extract"}
    assert info["stages"]["extract"]["step"] == 30 and info["stages"]["extract"]["steps"] == 30
    assert info["stages"]["extract"]["parents"] == {"behavior.safetensors": "same", "critic.safetensors": "same"}
    assert "loss" in info["stages"]["extract"]["last_metrics"] and "score_mean" in info["eval"]["srpo"]
    assert info["config"]["extract"]["beta"] == 0.05
    assert "eval srpo" in srpo("show", run).output
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    from safetensors import safe_open
    from safetensors.torch import save_file

    from srpo_cli.train.checkpoint import tensor_digest

    with safe_open(str(copy / "critic.safetensors"), "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    tensors["v.net.0.bias"] += 1.0  # another critic than the one the actor was extracted from
    save_file(tensors, str(copy / "critic.safetensors"), metadata={**meta, "tensors_sha256": tensor_digest(tensors)})
    info = json.loads(srpo("show", copy, "--json").stdout)
    assert info["stages"]["extract"]["parents"]["critic.safetensors"] == "replaced"
    assert srpo("show", tmp_path / "nothing").exit_code == 2


def test_datasets_show_reports_the_data(workdir, default_dataset):
    r = srpo("datasets", "show", default_dataset, "--json")
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert (rep["episodes"], rep["steps"], rep["terminated"], rep["truncated"]) == (200, 40_000, 0, 200)
    assert rep["episode_length"]["median"] == 200 and 40 < rep["score"]["mean"] < 70
    assert rep["action_min"] == [-2.0] and rep["action_max"] == [2.0] and 0 < rep["actions_on_bound"] < 1
    assert 0 < rep["action_spread"]["ratio"] <= 1.5
    text = srpo("datasets", "show", default_dataset).output
    assert "termination 0, time-limit truncation 200" in text
    assert srpo("datasets").exit_code == 0  # the listing still answers without a subcommand


def test_datasets_remote_offline_is_a_clear_error(workdir):
    r = srpo("datasets", "--remote")  # the tests run with HF_HUB_OFFLINE=1
    assert r.exit_code == 1 and "Could not list Minari's remote datasets" in r.output and "Traceback" not in r.output


def test_tensorboard_event_files_mirror_the_csv(tmp_path, default_dataset):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data = load_transitions(default_dataset)
    cfg = tiny_cfg(default_dataset)
    train_stage("critic", cfg, data, tmp_path / "tb", torch.device("cpu"), quiet=True)
    acc = EventAccumulator(str(tmp_path / "tb" / "metrics" / "tensorboard" / "critic"))
    acc.Reload()
    q_loss = [e.value for e in acc.Scalars("q_loss")]
    rows = (tmp_path / "tb" / "metrics" / "critic.csv").read_text().splitlines()
    col = rows[0].split(",").index("q_loss")
    assert len(q_loss) == len(rows) - 1
    np.testing.assert_allclose(q_loss, [float(r.split(",")[col]) for r in rows[1:]], rtol=1e-5)
    cfg.tensorboard = False
    train_stage("critic", cfg, data, tmp_path / "csv-only", torch.device("cpu"), quiet=True)
    assert not (tmp_path / "csv-only" / "metrics" / "tensorboard").exists()


def test_a_resumed_run_keeps_counting_its_wall_time(tmp_path, default_dataset):
    data = load_transitions(default_dataset)
    cfg = tiny_cfg(default_dataset)
    train_stage("critic", cfg, data, tmp_path, torch.device("cpu"), quiet=True, stop_at=20)
    train_stage("critic", cfg, data, tmp_path, torch.device("cpu"), quiet=True, resume=True)
    rows = (tmp_path / "metrics" / "critic.csv").read_text().splitlines()[1:]
    walls = [float(r.split(",")[1]) for r in rows]
    assert walls == sorted(walls) and walls[-1] > walls[0]


def test_many_seeds_get_an_interquartile_mean_with_a_bootstrap_interval(workdir, run, tmp_path):
    copies = []
    for i in range(5):
        shutil.copytree(run, tmp_path / f"s{i}")
        copies += ["--runs", tmp_path / f"s{i}"]
    r = srpo("eval", *copies, "--episodes", "2", "--set", "eval.num_envs=2", "--json", "--quiet")
    assert r.exit_code == 0, r.output
    agg = json.loads(r.stdout)["aggregate"]
    lo, hi = agg["score_iqm_ci95"]
    assert lo <= agg["score_iqm"] <= hi and agg["seeds"] == 5
    text = srpo("eval", *copies, "--episodes", "2", "--set", "eval.num_envs=2", "--quiet").output
    assert "interquartile mean" in text and "95% bootstrap CI" in text


def test_interquartile_mean_and_its_interval_by_hand():
    from srpo_cli.act.evaluate import bootstrap_ci, interquartile_mean

    assert interquartile_mean([1, 2, 3, 4, 100, 5, 6, 7]) == pytest.approx(np.mean([3, 4, 5, 6]))
    lo, hi = bootstrap_ci(np.array([10.0] * 6))
    assert lo == hi == 10.0


def test_plot_smooths_and_sets_axis_ranges(workdir, run, tmp_path):
    r = srpo("plot", run, "--window", "3", "--xlim", "0,30", "--ylim", "-5,5", "--out", tmp_path / "p")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "p" / "critic.png").exists()
    assert srpo("plot", run, "--xlim", "5,1").exit_code == 2
    assert srpo("plot", run, "--window", "0").exit_code == 2


@pytest.mark.parametrize("fmt", ["torch-export", "onnx"])
def test_export_in_the_current_formats_acts_as_eval_does(workdir, run, fmt):
    from srpo_cli.act.policies import load_actor_policy

    out_file = workdir / ("actor.pt2" if fmt == "torch-export" else "actor.onnx")
    r = srpo("export", "--run", run, "--format", fmt, "--out", out_file)
    assert r.exit_code == 0, r.output
    assert r.stdout.strip().startswith("wrote")  # the exporter's own progress lines stay off stdout
    obs = np.random.default_rng(0).standard_normal((9, 3)).astype(np.float32)
    expected = load_actor_policy(run / "actor.safetensors")(obs)
    if fmt == "torch-export":
        got = torch.export.load(str(out_file)).module()(torch.from_numpy(obs)).detach().numpy()
    else:
        import onnxruntime as ort

        got = ort.InferenceSession(str(out_file)).run(None, {"obs": obs})[0]
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_bench_measures_the_numpy_batch_itself_and_says_what_it_times(workdir, run):
    r = srpo(
        "bench",
        "--run",
        run,
        "--repeats",
        "20",
        "--threads",
        "1",
        "--json",
        "--set",
        "eval.candidates=2",
        "--set",
        "eval.sampling_steps=2",
    )
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)["policies"]
    fast = next(v for k, v in rows.items() if k.startswith("srpo actor (fast path"))
    if "srpo actor (numpy forward)" in rows:
        assert rows["srpo actor (numpy forward)"]["throughput_256"] != fast["throughput_256"]
    assert "bench: timing diffusion baseline" in r.output


def test_evaluation_reports_progress_episode_by_episode(run, default_dataset):
    calls = []
    cfg = tiny_cfg(default_dataset, run_dir=str(run))
    cfg.eval.episodes, cfg.eval.num_envs = 4, 2
    evaluate_run(cfg, run, "diffusion", progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (4, 4) and [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_extract_beta_auto_chooses_records_and_resumes_with_its_beta(workdir, default_dataset):
    """`srpo extract --beta auto`: beta from the balance probe (printed with its figures), recorded in the
    checkpoint; a resumed run keeps it; a bad --beta is a usage error."""
    from srpo_cli.train.checkpoint import load_checkpoint

    tiny = ["--steps", "10", "--set", "behavior.batch_size=64", "--set", "critic.batch_size=64",
            "--set", "extract.batch_size=64"]  # fmt: skip
    assert srpo("fetch").exit_code == 0
    assert srpo("pretrain-behavior", *tiny).exit_code == 0 and srpo("pretrain-critic", *tiny).exit_code == 0
    r = srpo("extract", "--beta", "auto", "--set", "extract.auto_beta_distance=0.5", *tiny, "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    chosen = out["auto_beta"]["beta"]
    said = " ".join(r.output.split())  # the console wraps lines
    assert "beta auto:" in said and "within 0.5 of the data" in said
    assert out["balance"]["beta"] == chosen and out["auto_beta"]["distance"] == 0.5
    assert out["balance"]["balance_step"] is not None and out["balance"]["balance_step"] <= 0.5 + 1e-9
    run = workdir / "runs" / "srpo-pendulum-scripted-medium-v0" / "seed0"
    stored = load_checkpoint(run / "actor.safetensors").config["extract"]
    assert stored["beta"] == chosen and stored["auto_beta"] is True and chosen != 0.05
    # resumed to more steps: the run keeps its beta, and the configuration check does not refuse it
    more = [*tiny[2:], "--steps", "20", "--set", "extract.auto_beta_distance=0.5"]
    r = srpo("extract", "--beta", "auto", *more, "--resume", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["auto_beta"]["beta"] == chosen
    assert load_checkpoint(run / "actor.safetensors").meta["step"] == 20
    # a number instead is another configuration than the run's: refused without --force
    assert srpo("extract", "--beta", "0.05", *more, "--resume").exit_code == 2
    r = srpo("extract", "--beta", "lots")
    assert r.exit_code == 2 and "--beta expects a number or 'auto'" in r.output
