"""Data-parallel training under torchrun, with real ranks (2 CPU processes, gloo): a step on each rank's half
of the batch with averaged gradients equals one process's step on the whole batch, and a 2-rank run stopped
and resumed ends where an uninterrupted 2-rank run ends."""

import os
import subprocess
import sys

import torch
from conftest import tiny_cfg

from srpo_cli.data.transitions import load_transitions
from srpo_cli.pipeline import train_stage
from srpo_cli.train.checkpoint import load_checkpoint


def torchrun(cwd, *args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SRPO_")}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "srpo_cli", *map(str, args)]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_two_ranks_train_the_critic_one_process_trains(tmp_path, default_dataset):
    proc = torchrun(tmp_path, "pretrain-critic", "--run-dir", "two", "--steps", 20, "--batch-size", 64,
                    "--threads", 1, "--set", "critic.log_every=5", "-q", "--json")  # fmt: skip
    assert proc.stdout.count('"checkpoint"') == 1  # one summary: rank 0's
    cfg = tiny_cfg(default_dataset)
    cfg.critic.steps, cfg.critic.batch_size, cfg.critic.log_every = 20, 64, 5
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_stage("critic", cfg, load_transitions(default_dataset), tmp_path / "one", torch.device("cpu"), quiet=True)
    finally:
        torch.set_num_threads(before)
    two = load_checkpoint(tmp_path / "two" / "critic.safetensors").tensors
    one = load_checkpoint(tmp_path / "one" / "critic.safetensors").tensors
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=1e-5, atol=1e-6)
    # rank 0 alone wrote the metrics, the ranks' average: the whole batch's losses
    rows_two = (tmp_path / "two" / "metrics" / "critic.csv").read_text().splitlines()
    rows_one = (tmp_path / "one" / "metrics" / "critic.csv").read_text().splitlines()
    assert len(rows_two) == len(rows_one) == 5
    q_two = [float(r.split(",")[3]) for r in rows_two[1:]]
    q_one = [float(r.split(",")[3]) for r in rows_one[1:]]
    torch.testing.assert_close(torch.tensor(q_two), torch.tensor(q_one), rtol=1e-4, atol=1e-5)


def test_a_two_rank_run_stopped_and_resumed_ends_where_an_uninterrupted_one_ends(tmp_path, default_dataset):
    """The behavior model draws noise and dropout per rank: each rank's streams are saved and restored."""
    common = ["--batch-size", 64, "--threads", 1, "--set", "behavior.log_every=5", "-q"]
    torchrun(tmp_path, "pretrain-behavior", "--run-dir", "whole", "--steps", 20, *common)
    torchrun(tmp_path, "pretrain-behavior", "--run-dir", "split", "--steps", 10, *common)
    torchrun(tmp_path, "pretrain-behavior", "--run-dir", "split", "--steps", 20, "--resume", *common)
    whole = load_checkpoint(tmp_path / "whole" / "behavior.safetensors").tensors
    split = load_checkpoint(tmp_path / "split" / "behavior.safetensors").tensors
    assert all(torch.equal(whole[k], split[k]) for k in whole)
    state = torch.load(tmp_path / "split" / "behavior.state.pt", weights_only=True)
    assert len(state["ranks"]) == 2 and not torch.equal(state["ranks"][0]["noise"], state["ranks"][1]["noise"])


def test_sigterm_to_torchrun_stops_every_rank_with_one_checkpoint(tmp_path, default_dataset):
    import signal
    import time

    env = {k: v for k, v in os.environ.items() if not k.startswith("SRPO_")}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "srpo_cli", "pretrain-critic",
           "--run-dir", "sig", "--steps", "1000000", "--batch-size", "64", "--threads", "1", "-q",
           "--set", "critic.log_every=10"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = tmp_path / "sig" / "metrics" / "critic.csv"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") > 3):
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    step = load_checkpoint(tmp_path / "sig" / "critic.safetensors").meta["step"]
    assert 30 <= step < 1_000_000
    # both ranks stopped at that step and it resumes
    torchrun(tmp_path, "pretrain-critic", "--run-dir", "sig", "--steps", step + 10, "--batch-size", 64, "--threads", 1,
             "--resume", "-q")  # fmt: skip
    assert load_checkpoint(tmp_path / "sig" / "critic.safetensors").meta["step"] == step + 10
