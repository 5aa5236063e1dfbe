"""Every command through the CLI, as a user would run it, on tiny budgets; and every bad input."""

import json
import os
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from srpo_cli import __version__
from srpo_cli.cli import app

runner = CliRunner()

TINY = [
    "--set", "behavior.batch_size=64", "--set", "critic.batch_size=64", "--set", "extract.batch_size=64",
    "--set", "baseline.batch_size=64", "--set", "eval.num_envs=2", "--set", "eval.candidates=4",
    "--set", "eval.sampling_steps=3",
]  # fmt: skip


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    # --threads sets torch's process-wide count; the tests after one that passes it keep their own
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def srpo(*args, input=None):
    return runner.invoke(app, [str(a) for a in args], input=input)


def tree(path: Path) -> dict:
    return {str(p.relative_to(path)): p.stat().st_mtime_ns for p in sorted(path.rglob("*"))}


def test_version_and_help():
    r = srpo("--version")
    assert r.exit_code == 0 and __version__ in r.stdout
    r = srpo("--help")
    assert r.exit_code == 0
    commands = ["fetch", "datasets", "collect", "presets", "init", "pretrain-behavior", "pretrain-critic",
                "extract", "train-baseline", "eval", "bench", "export", "pipeline", "plot"]  # fmt: skip
    for cmd in commands:
        assert cmd in r.stdout
        h = srpo(cmd, "--help")
        assert h.exit_code == 0, cmd
        # every option is documented
        for line in h.stdout.splitlines():
            if re.match(r"^│\s+--[a-z]", line):
                assert len(line.split(None, 3)) >= 3, (cmd, line)


def test_full_pipeline_through_the_cli(workdir, default_dataset):
    """The README's sequence, in an empty directory, with tiny budgets."""
    steps = ["--steps", "12"]
    r = srpo("fetch")
    assert r.exit_code == 0, r.output
    r = srpo("pretrain-behavior", *steps, *TINY)
    assert r.exit_code == 0, r.output
    assert not (workdir / "srpo.yaml").exists()  # only `srpo init` writes one (issue 39: never unasked)
    run = workdir / "runs" / "srpo-pendulum-scripted-medium-v0" / "seed0"
    assert (run / "behavior.safetensors").exists() and (run / "metrics" / "behavior.csv").exists()
    assert srpo("pretrain-critic", *steps, *TINY).exit_code == 0
    r = srpo("extract", "--beta", "0.05", *steps, "--keep-every", "6", *TINY, "--json")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["step"] == 12 and summary["balance"]["beta"] == 0.05
    assert "Q term against the behavior regularizer" in r.output  # measured and said before the long part
    r = srpo("eval", "--episodes", "2", *TINY)
    assert r.exit_code == 0, r.output
    assert f"{run.relative_to(workdir)}: return" in r.output  # the per-run progress line (stderr)
    assert "0-100" in r.stdout and "return" in r.stdout
    ev = json.loads((run / "eval.json").read_text())
    assert len(ev["srpo"]["returns"]) == 2
    r = srpo("eval", "--episodes", "2", "--threads", "1", "--json", *TINY)
    payload = json.loads(r.stdout)
    s = payload["runs"][0]
    assert s["episodes"] == 2 and "score_mean" in s and s["score_scale"].startswith("0-100")
    # the actors kept during extraction, evaluated afterwards: the last is the final actor, scored alike
    r = srpo("eval", "--curve", "--episodes", "2", "--threads", "1", "--json", "--quiet", *TINY)
    assert r.exit_code == 0, r.output
    assert "step 6: return" not in r.output  # --quiet: no progress lines
    points = json.loads(r.stdout)["curves"][0]["points"]
    assert [p["step"] for p in points] == [6, 12] and points[-1]["return_mean"] == s["return_mean"]
    assert (run / "metrics" / "eval-srpo.csv").read_text().splitlines()[0] == "step,eval_return,eval_score"
    r = srpo("eval", "--curve", "--policy", "awr", *TINY)
    assert r.exit_code == 2 and "--keep-every" in r.output and "Traceback" not in r.output
    r = srpo("eval", "--episodes", "2", "--policy", "diffusion", "--candidates", "2", "--sampling-steps", "2", *TINY)
    assert r.exit_code == 0, r.output
    for kind in ("awr", "bc"):
        assert srpo("train-baseline", kind, *steps, *TINY).exit_code == 0
        assert srpo("eval", "--episodes", "2", "--policy", kind, *TINY).exit_code == 0
    r = srpo("bench", "--repeats", "20", "--threads", "1", "--json", *TINY)
    assert r.exit_code == 0, r.output
    b = json.loads(r.stdout)
    assert b["ratio_p50"] > 1 and b["threads"] == 1
    assert b["policies"]["srpo actor (TorchScript frozen, cpu)"]["p50_us"] > 0
    assert b["srpo_p50_us"] == b["policies"]["srpo actor (fast path, numba)"]["p50_us"]
    assert b["policies"]["srpo actor (numpy forward)"]["p50_us"] > 0
    r = srpo("export", "--format", "torchscript", "--out", "actor.pt", *TINY)
    assert r.exit_code == 0 and (workdir / "actor.pt").exists()
    r = srpo("plot", str(run))
    assert r.exit_code == 0, r.output
    assert (run / "plots" / "extract.png").exists() and (run / "plots" / "eval-srpo.png").exists()
    # a second seed, then aggregation over seeds
    for cmd in ("pretrain-behavior", "pretrain-critic", "extract"):
        assert srpo(cmd, "--seed", "1", *steps, *TINY).exit_code == 0
    r = srpo("eval", "--seeds", "0,1", "--episodes", "2", "--json", *TINY)
    agg = json.loads(r.stdout)["aggregate"]
    assert agg["seeds"] == 2 and "score_std" in agg
    r = srpo("plot", str(run), str(run.parent / "seed1"), "--no-mean", "--out", "variants")
    assert r.exit_code == 0 and (workdir / "variants" / "extract.png").exists()

    # re-running a finished stage refuses and changes nothing
    before = tree(run)
    r = srpo("pretrain-critic", *steps, *TINY)
    assert r.exit_code == 2 and "already exists" in r.output and "--resume" in r.output
    assert tree(run) == before
    assert "Traceback" not in r.output
    r = srpo("pretrain-critic", "--steps", "20", "--resume", *TINY)
    assert r.exit_code == 0, r.output
    # resuming, or a pipeline reusing a finished stage, with another configuration is refused, not mixed
    before = tree(run)
    r = srpo("pretrain-critic", "--steps", "30", "--resume", "--set", "critic.expectile=0.9", *TINY)
    assert r.exit_code == 2 and "critic.expectile is 0.7 there, 0.9 here" in r.output, r.output
    r = srpo("pipeline", "--set", "extract.beta=0.3", *TINY)
    assert r.exit_code == 2 and "extract.beta is 0.05 there, 0.3 here" in r.output, r.output
    assert "Traceback" not in r.output and tree(run) == before


def test_datasets_presets_init(workdir, default_dataset):
    r = srpo("datasets", "--json")
    assert r.exit_code == 0
    ids = [row["id"] for row in json.loads(r.stdout)]
    assert default_dataset in ids
    r = srpo("datasets")  # the table, at a pipe's 80 columns: the ids whole, not cut to "srpo/pen…"
    assert r.exit_code == 0 and default_dataset in r.stdout
    r = srpo("presets")
    assert r.exit_code == 0 and "hopper-medium" in r.stdout
    r = srpo("init", "--preset", "hopper-medium")
    assert r.exit_code == 0 and "preset: hopper-medium" in (workdir / "srpo.yaml").read_text()
    before = (workdir / "srpo.yaml").read_text()
    r = srpo("init")
    assert r.exit_code == 2 and "already exists" in r.output
    assert (workdir / "srpo.yaml").read_text() == before
    assert srpo("init", "--show").exit_code == 0


@pytest.mark.parametrize(
    "args,code,message",
    [
        (["fetch", "not a valid id!"], 2, "not a Minari dataset id"),
        (["fetch", "nowhere/nothing-v0"], 1, "Could not download"),
        (["pretrain-critic", "--set", "critic.expectle=0.8"], 2, "Did you mean 'critic.expectile'"),
        (["pretrain-critic", "--set", "critic.steps=lots"], 2, "expected int"),
        (["pretrain-critic", "--dataset", "nowhere/nothing-v0"], 1, "srpo fetch nowhere/nothing-v0"),
        (["pretrain-critic", "--preset", "hoper-medium"], 2, "hopper-medium"),
        (["pretrain-critic", "--device", "tpu"], 2, "is not one of"),
        (["extract"], 1, "behavior.safetensors is missing"),
        (["eval"], 1, "does not exist"),
        (["eval", "--policy", "magic"], 2, "is not one of"),
        (["eval", "--seeds", "a,b"], 2, "comma-separated"),
        (["export", "--out", "x.pt", "--format", "zip"], 2, "is not one of"),
        (["fetch", "--d4rl-file", "missing.hdf5"], 2, "needs --env"),
        (["fetch", "--d4rl-file", "missing.hdf5", "--env", "Hopper-v5", "--id", "d4rl/h/m-v2"], 2, "does not exist"),
        (["collect", "Pendulum-v1", "--id", "bad id"], 2, "not a Minari dataset id"),
        (["collect", "Pendulum-v1", "--id", "x/y-v0", "--policy", "nope.safetensors"], 2, "neither 'random'"),
        (["train-baseline", "ppo"], 2, "is not one of"),
    ],
)
def test_bad_inputs(workdir, minari_store, args, code, message):
    store_before = tree(minari_store)
    r = srpo(*args)
    assert r.exit_code == code, r.output
    assert message in " ".join(r.output.split()), r.output
    assert "Traceback" not in r.output
    assert tree(minari_store) == store_before  # no half-written dataset folder


def test_a_preset_pinned_for_another_dataset_warns(workdir, default_dataset):
    (workdir / "srpo.yaml").write_text("preset: bench-hopper-medium\n")
    r = srpo("pretrain-critic", "--dataset", default_dataset, "--steps", 3, *TINY)
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert "warning: preset 'bench-hopper-medium' comes from srpo.yaml" in text and default_dataset in text


def test_env_var_config(workdir, default_dataset, monkeypatch):
    monkeypatch.setenv("SRPO_CRITIC__STEPS", "7")
    monkeypatch.setenv("SRPO_RUN_DIR", "envrun")
    r = srpo("pretrain-critic", "--json", *TINY)
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["step"] == 7 and (workdir / "envrun" / "critic.safetensors").exists()
    monkeypatch.setenv("SRPO_CRITIC__STEPZ", "7")
    r = srpo("pretrain-critic", "--force", *TINY)
    assert r.exit_code == 2 and "critic.steps" in r.output


def test_corrupt_checkpoint_is_a_clear_error(workdir, default_dataset):
    run = workdir / "r"
    run.mkdir()
    (run / "actor.safetensors").write_bytes(b"\x00" * 10)
    r = srpo("eval", "--run", str(run))
    assert r.exit_code == 1 and "truncated or corrupt" in r.output and "Traceback" not in r.output


def test_collect_random_and_from_an_actor(workdir, default_dataset):
    r = srpo("collect", "Pendulum-v1", "--id", "test/collected/random-v0", "--steps", "250", "--json")
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    assert info["episodes"] == 2  # 200 + a cut 50-step episode
    r = srpo("collect", "Pendulum-v1", "--id", "test/collected/random-v0", "--steps", "10")
    assert r.exit_code == 2 and "--force" in r.output
    # an actor trained on the fly
    for cmd in ("pretrain-behavior", "pretrain-critic", "extract"):
        assert srpo(cmd, "--steps", "5", *TINY).exit_code == 0
    actor = workdir / "runs" / "srpo-pendulum-scripted-medium-v0" / "seed0" / "actor.safetensors"
    r = srpo("collect", "Pendulum-v1", "--id", "test/collected/actor-v0", "--policy", actor, "--steps", "200",
             "--noise", "0.1")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert os.path.isdir(workdir) and "test/collected/actor-v0" in srpo("datasets", "--json").stdout
