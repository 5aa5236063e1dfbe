"""Nothing lost: faults, kills, concurrent writers and bad input (issue 35; the cases are listed in
docs/reliability.md)."""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from conftest import tiny_cfg
from typer.testing import CliRunner

from srpo_cli.algos.critic import CriticStage, train_critic
from srpo_cli.cli import app
from srpo_cli.data.transitions import load_transitions
from srpo_cli.errors import RuntimeFailure
from srpo_cli.train.checkpoint import (
    atomic_write,
    exclusive,
    load_checkpoint,
    lock_path,
    save_checkpoint,
    tensor_digest,
)
from srpo_cli.train.device import busy_cores_warning
from srpo_cli.train.loop import fit, next_state_path, state_path

runner = CliRunner()
SRC = str(Path(__file__).resolve().parents[1] / "src")


def srpo(*args):
    return runner.invoke(app, [str(a) for a in args])


def clean(r, code):
    """The CLI contract for a user's mistake: the expected code, a message, no traceback, no 'Unexpected'."""
    assert r.exit_code == code, r.output
    assert "Traceback" not in r.output and "Unexpected" not in r.output, r.output
    return r.output


@pytest.fixture(scope="module")
def data(default_dataset):
    return load_transitions(default_dataset)


def _child_env(minari_store) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SRPO_")}
    env.update(MINARI_DATASETS_PATH=str(minari_store), PYTHONPATH=SRC, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    return env


# -- 1. fetch --force never deletes the dataset before its replacement exists ------------------------------


def _d4rl_file(path: Path, rows: int, obs_dim: int = 3, act_dim: int = 1) -> Path:
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        f["observations"] = rng.standard_normal((rows, obs_dim)).astype(np.float32)
        f["actions"] = rng.uniform(-1, 1, (rows, act_dim)).astype(np.float32)
        f["rewards"] = rng.standard_normal(rows)
        f["terminals"] = np.zeros(rows, dtype=bool)
        f["timeouts"] = (np.arange(rows) % 50) == 49
    return path


def test_a_failed_forced_import_keeps_the_existing_dataset(workdir, minari_store):
    good = _d4rl_file(workdir / "good.hdf5", 200)
    clean(srpo("fetch", "--d4rl-file", good, "--env", "Pendulum-v1", "--id", "test/keep/import-v0"), 0)
    before = sorted(p.name for p in (minari_store / "test" / "keep" / "import-v0").rglob("*"))
    # the wrong environment, an empty file, a missing environment: each refused, the dataset still there
    out = clean(srpo("fetch", "--d4rl-file", good, "--env", "Nope-v9", "--id", "test/keep/import-v0", "--force"), 1)
    assert "Nope-v9" in out
    empty = _d4rl_file(workdir / "empty.hdf5", 0)
    assert "no transitions" in clean(
        srpo("fetch", "--d4rl-file", empty, "--env", "Pendulum-v1", "--id", "test/keep/import-v0", "--force"), 2
    )
    wrong = clean(
        srpo(
            "fetch", "--d4rl-file", good, "--env", "MountainCarContinuous-v0", "--id", "test/keep/import-v0", "--force"
        ),
        2,
    )
    assert "observations of 2 numbers where it expects 3" in wrong
    assert sorted(p.name for p in (minari_store / "test" / "keep" / "import-v0").rglob("*")) == before
    assert not list(minari_store.glob(".srpo-*"))  # no staging left behind
    r = srpo("datasets", "--json")
    assert "test/keep/import-v0" in r.output


def test_a_killed_forced_fetch_keeps_the_existing_dataset(workdir, minari_store, default_dataset):
    """SIGTERM a `srpo fetch --force` of the built-in default while it builds: the old dataset stays."""
    import minari

    path = minari_store / default_dataset
    marker = sorted(str(p.relative_to(path)) for p in path.rglob("*"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "srpo_cli", "fetch", "--force"],
        env=_child_env(minari_store),
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    time.sleep(3.0)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=60)[0].decode()
    assert proc.returncode != 0 or "built locally" in out, out  # killed mid-build (or, on a fast machine, done)
    assert sorted(str(p.relative_to(path)) for p in path.rglob("*")) == marker
    assert minari.load_dataset(default_dataset).total_steps == 40_000
    assert "Traceback" not in out


def test_a_swap_killed_between_its_two_renames_is_undone(minari_store, handmade_dataset):
    """The old dataset moved aside by a process that died before the new one took its place goes back."""
    import shutil

    from srpo_cli.data.store import local_ids

    src = minari_store / handmade_dataset["id"]
    copy_id = "test/hand/aside-v0"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a PID that no longer runs
    aside = minari_store / f".srpo-replaced-{dead.pid}"
    (aside / "dataset").parent.mkdir(parents=True)
    shutil.copytree(src, aside / "dataset")
    meta = aside / "dataset" / "data" / "metadata.json"
    meta.write_text(meta.read_text().replace(handmade_dataset["id"], copy_id))
    (aside / "dataset_id").write_text(copy_id)
    assert copy_id in local_ids()
    assert not aside.exists()


def test_offline_fetch_fails_fast_with_its_own_message(workdir, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://nonexistent.invalid")
    t0 = time.perf_counter()
    out = clean(srpo("fetch", "mujoco/hopper/medium-v0"), 1)
    assert time.perf_counter() - t0 < 15
    assert "unreachable" in out and "--d4rl-file" in out


# -- 2. one writer per stage ------------------------------------------------------------------------------


def test_a_second_writer_of_a_stage_is_refused_with_the_holders_pid(workdir, default_dataset):
    run = workdir / "r"
    ckpt = run / "critic.safetensors"
    with exclusive(lock_path(ckpt), str(ckpt)):
        proc = subprocess.run(
            [sys.executable, "-m", "srpo_cli", "pretrain-critic", "--run", run, "--steps", "20", "-q"],
            env=_child_env(os.environ["MINARI_DATASETS_PATH"]),
            cwd=workdir,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert proc.returncode == 1, proc.stderr
    assert f"PID {os.getpid()}" in proc.stderr and "Traceback" not in proc.stderr
    assert not ckpt.exists() and not (run / "metrics" / "critic.csv").exists()


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    lock = tmp_path / ".x.lock"
    code = f"from srpo_cli.train.checkpoint import exclusive\nimport time\nwith exclusive({str(lock)!r}, 'x'):\n"
    code += "    print('held', flush=True)\n    time.sleep(60)\n"
    proc = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": SRC}, stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"held"
    with pytest.raises(RuntimeFailure, match=f"PID {proc.pid}"):
        with exclusive(lock, "x"):
            pass
    proc.kill()
    proc.wait()
    with exclusive(lock, "x"):  # the OS released it with the process
        pass


# -- 3. killed anywhere, a run resumes ------------------------------------------------------------------------

_TRAIN = """
import sys, torch
torch.set_num_threads(1)
from pathlib import Path
sys.path.insert(0, {tests!r})
from conftest import tiny_cfg
from srpo_cli.algos.critic import train_critic
from srpo_cli.data.transitions import load_transitions
cfg = tiny_cfg({dataset!r})
cfg.critic.steps, cfg.critic.log_every, cfg.critic.ckpt_every = {steps}, 1, 1
run = Path({run!r})
print("go", flush=True)
train_critic(cfg, load_transitions({dataset!r}), run, torch.device("cpu"), quiet=True,
             resume=(run / "critic.safetensors").exists())
print("done", flush=True)
"""


def test_sigkill_at_random_points_always_resumes_to_the_uninterrupted_result(tmp_path, data, default_dataset):
    """SIGKILL a critic that checkpoints every step (so most kills land inside a checkpoint write) at random
    moments, over and over; every restart resumes, and the end equals an uninterrupted run."""
    steps, run = 80, tmp_path / "killed"
    script = _TRAIN.format(tests=str(Path(__file__).parent), dataset=default_dataset, steps=steps, run=str(run))
    env = _child_env(os.environ["MINARI_DATASETS_PATH"])
    rng = random.Random(1234)
    kills = 0
    for _ in range(8):
        proc = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdout.readline().strip() == b"go", proc.stderr.read().decode()
        time.sleep(rng.uniform(0.2, 1.2))
        proc.kill()
        out, err = proc.communicate()
        assert b"Error" not in err, err.decode()  # every restart resumed (or started) without a refusal
        kills += b"done" not in out
        if b"done" in out:
            break
    assert kills >= 3
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()
    assert not list(run.glob(".*.tmp")) and not next_state_path(run / "critic.safetensors").exists()
    torch.set_num_threads(1)
    try:
        cfg = tiny_cfg(default_dataset)
        cfg.critic.steps, cfg.critic.log_every = steps, 1
        train_critic(cfg, data, tmp_path / "whole", torch.device("cpu"), quiet=True)
    finally:
        torch.set_num_threads(2)
    a = load_checkpoint(run / "critic.safetensors").tensors
    b = load_checkpoint(tmp_path / "whole" / "critic.safetensors").tensors
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = (run / "metrics" / "critic.csv").read_text().strip().splitlines()
    assert [int(r.split(",")[0]) for r in rows[1:]] == list(range(1, steps + 1))


def test_killed_between_the_state_and_the_weights_resumes_from_the_pair_that_matches(tmp_path, data, default_dataset):
    cfg = tiny_cfg(default_dataset)
    ckpt = tmp_path / "critic.safetensors"
    train_critic(cfg, data, tmp_path, torch.device("cpu"), quiet=True, stop_at=10)
    # killed after writing the next state (step 11), before the weights: the current pair (10) is used
    nxt = torch.load(state_path(ckpt), weights_only=True)
    nxt["step"] = 11
    torch.save(nxt, next_state_path(ckpt))
    (tmp_path / ".critic.safetensors.abc123.tmp").write_bytes(b"half a file")
    stage = CriticStage(cfg, data, torch.device("cpu"))
    assert stage.load(ckpt) == 10 and not next_state_path(ckpt).exists()
    # killed after the weights, before the state file was replaced: the next state is the match
    state = torch.load(state_path(ckpt), weights_only=True)
    torch.save(state, next_state_path(ckpt))
    state["step"] = 9
    torch.save(state, state_path(ckpt))
    assert stage.load(ckpt) == 10
    summary = train_critic(cfg, data, tmp_path, torch.device("cpu"), quiet=True, resume=True)
    assert summary["start_step"] == 10 and summary["step"] == cfg.critic.steps
    assert not list(tmp_path.glob(".*.tmp"))


# -- 4. export never replaces what it must not -----------------------------------------------------------------


@pytest.fixture(scope="module")
def actor_run(tmp_path_factory, data, default_dataset):
    from srpo_cli.algos.baselines import train_baseline

    run = tmp_path_factory.mktemp("actor_run")
    cfg = tiny_cfg(default_dataset)
    train_baseline("bc", cfg, data, run, torch.device("cpu"), quiet=True)
    return run


def test_export_refuses_its_source_checkpoints_and_non_regular_files(workdir, actor_run):
    src = actor_run / "bc.safetensors"
    before = src.read_bytes()
    base = ["export", "--policy", "bc", "--run", actor_run, "--force", "--out"]
    assert "being exported" in clean(srpo(*base, src), 2)
    assert "training state" in clean(srpo(*base, actor_run / "bc.state.pt"), 2)
    fifo = workdir / "pipe"
    os.mkfifo(fifo)
    assert "not a regular file" in clean(srpo(*base, fifo), 2)
    assert "not a regular file" in clean(srpo(*base, "/dev/full"), 2)
    assert Path("/dev/full").is_char_device()
    assert "is a folder" in clean(srpo(*base, workdir), 2)
    assert "does not exist" in clean(srpo(*base, workdir / "missing" / "a.pt"), 2)
    assert src.read_bytes() == before
    clean(srpo(*base, workdir / "a.pt"), 0)


# -- 5. a --force run that dies before its first checkpoint leaves the old run whole ------------------------------


def test_a_forced_run_killed_before_its_first_checkpoint_keeps_the_old_history(tmp_path, data, default_dataset):
    cfg = tiny_cfg(default_dataset)
    train_critic(cfg, data, tmp_path, torch.device("cpu"), quiet=True)
    metrics = tmp_path / "metrics" / "critic.csv"
    old_rows, old_weights = metrics.read_text(), (tmp_path / "critic.safetensors").read_bytes()
    stage = CriticStage(cfg, data, torch.device("cpu"))
    real, calls = stage.step, []

    def dies_at_7():
        calls.append(1)
        if len(calls) == 7:
            raise RuntimeError("power cut")
        return real()

    stage.step = dies_at_7
    with pytest.raises(RuntimeError, match="power cut"):
        fit(stage, cfg.critic.steps, tmp_path / "critic.safetensors", log_every=2, ckpt_every=20, quiet=True)
    assert metrics.read_text() == old_rows
    assert (tmp_path / "critic.safetensors").read_bytes() == old_weights
    # the next forced run replaces both at its first checkpoint
    train_critic(cfg, data, tmp_path, torch.device("cpu"), quiet=True)
    assert not list((tmp_path / "metrics").glob(".*"))


# -- 6. damaged or non-finite tensors are refused ------------------------------------------------------------------


def test_corrupt_tensor_bytes_are_caught_on_load(workdir, actor_run):
    path = workdir / "bc.safetensors"
    raw = bytearray((actor_run / "bc.safetensors").read_bytes())
    header = int.from_bytes(raw[:8], "little")
    rng = np.random.default_rng(0)
    at = 8 + header + 100
    raw[at : at + 1000] = rng.integers(0, 256, 1000, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(raw))
    with pytest.raises(RuntimeFailure, match="checksum"):
        load_checkpoint(path)
    run = workdir / "run"
    run.mkdir()
    (run / "bc.safetensors").write_bytes(bytes(raw))
    assert "corrupt" in clean(srpo("eval", "--policy", "bc", "--run", run, "--episodes", "1"), 1)
    assert "corrupt" in clean(srpo("export", "--policy", "bc", "--run", run, "--out", workdir / "x.pt"), 1)
    assert not (run / "eval.json").exists() and not (workdir / "x.pt").exists()


def test_non_finite_weights_are_refused_and_the_digest_covers_every_byte(tmp_path):
    t = {"w": torch.ones(3, 2)}
    common = dict(config={}, dataset_id="d", obs_dim=2, action_dim=1, step=1, seed=0)
    assert tensor_digest(t) != tensor_digest({"w": torch.ones(3, 2).reshape(2, 3)})  # shape counts
    t["w"][1, 1] = float("nan")
    save_checkpoint(tmp_path / "a.safetensors", "actor", {"actor": t}, **common)
    with pytest.raises(RuntimeFailure, match="non-finite"):
        load_checkpoint(tmp_path / "a.safetensors")


# -- 7. shapes are checked at every boundary ---------------------------------------------------------------------


def test_a_policy_never_reads_past_an_observation(actor_run):
    from srpo_cli.act.policies import load_actor_policy

    pol = load_actor_policy(actor_run / "bc.safetensors")
    assert pol(np.zeros(3, dtype=np.float32)).shape == (1,)
    for bad in (np.zeros(2, dtype=np.float32), np.zeros((4, 2), dtype=np.float32), np.zeros((1, 5), np.float32)):
        with pytest.raises(RuntimeFailure, match="observations of 3 numbers"):
            pol(bad)


def test_collect_and_eval_refuse_a_policy_of_another_environment(workdir, actor_run, default_dataset):
    out = clean(
        srpo(
            "collect",
            "MountainCarContinuous-v0",
            "--id",
            "test/mc/x-v0",
            "--policy",
            actor_run / "bc.safetensors",
            "--steps",
            "10",
        ),
        1,
    )
    assert "observations of 2 numbers where it expects 3" in out
    out = clean(
        srpo("eval", "--policy", "bc", "--run", actor_run, "--dataset", "test/hand/made-v0", "--episodes", "1"), 2
    )
    assert f"trained on '{default_dataset}'" in out


# -- 8, 9 and the user mistakes that once ended in "Unexpected ..." -------------------------------------------


@pytest.mark.parametrize(
    "args,yaml_text,message",
    [
        (["eval", "--seeds", "0,1,2", "--run", "runs/x"], None, "same run directory"),
        (["eval", "--seeds", ",,,"], None, "no seed"),
        (["eval", "--seeds", "1,1"], None, "twice"),
        (["pretrain-critic", "--set", "critic.steps=true"], None, "expected int"),
        (["pretrain-critic"], "critic:\n  steps: true\n", "expected int"),
        (["pretrain-critic"], "critic:\n  steps: .inf\n", "expected int"),
        (["pretrain-critic", "--set", "critic.steps=1e400"], None, "expected int"),
        (["pretrain-behavior", "--set", "behavior.lr=.nan"], None, "finite"),
        (["pretrain-critic", "--set", "critic.q_lr=-0.1"], None, "positive"),
        (["pretrain-critic", "--set", "critic.ckpt_every=0"], None, "positive integer"),
        (["pretrain-behavior", "--set", "behavior.hidden_dim=-4"], None, "positive integer"),
        (["pretrain-behavior", "--set", "behavior.dropout=5"], None, "in [0, 1)"),
        (["pretrain-critic", "--run", "runs/{bogus}"], None, "placeholders"),
        (["extract", "--set", "extract.beta=[1,2"], None, "not valid YAML"),
        (["extract", "--set", "extract.beta=!!python/object/apply:os.system [echo]"], None, "not valid YAML"),
        (["pretrain-critic"], "\x00\x01\xff\xfe binary", "not a text file"),
        (["pretrain-critic", "--run", "afile"], None, "is a file, not a folder"),
    ],
)
def test_user_mistakes_get_a_clear_usage_error(workdir, args, yaml_text, message):
    (workdir / "afile").write_text("x")
    if yaml_text is not None:
        (workdir / "srpo.yaml").write_bytes(yaml_text.encode("latin-1"))
    out = clean(srpo(*args), 2)
    assert message in out, out


def test_a_config_file_that_is_a_folder_is_a_usage_error(workdir):
    (workdir / "srpo.yaml").mkdir()
    assert "Cannot read srpo.yaml" in clean(srpo("pretrain-critic"), 2)


def test_the_documented_malloc_opt_out_is_not_a_config_key(workdir, monkeypatch):
    monkeypatch.setenv("SRPO_NO_MALLOPT", "1")
    clean(srpo("init"), 0)  # resolves the configuration, environment variables included


def test_os_errors_become_one_line_messages(tmp_path):
    def full(tmp):
        raise OSError(errno.ENOSPC, "No space left on device")

    (tmp_path / "keep.json").write_text("old")
    with pytest.raises(RuntimeFailure, match="disk is full") as e:
        atomic_write(tmp_path / "keep.json", full)
    assert "unchanged" in str(e.value)
    assert (tmp_path / "keep.json").read_text() == "old" and not list(tmp_path.glob(".*.tmp"))

    def torch_full(tmp):
        raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 64 vs 0")

    with pytest.raises(RuntimeFailure, match="disk is full"):
        atomic_write(tmp_path / "keep.json", torch_full)
    with pytest.raises(RuntimeFailure, match="not a folder"):
        atomic_write(tmp_path / "keep.json" / "x", lambda tmp: None)


def test_a_busy_machine_is_warned_about_with_the_threads_advice():
    assert busy_cores_warning(2, load=1.9, cores=2) is not None
    assert "--threads 1" in busy_cores_warning(2, load=1.2, cores=2)
    assert busy_cores_warning(1, load=5.0, cores=2) is None
    assert busy_cores_warning(2, load=0.1, cores=2) is None
