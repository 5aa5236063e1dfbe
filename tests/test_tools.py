"""The scripts under tools/ and reproductions/ run and keep their promises (the benchmark table's script rebuilds
what BENCHMARKS.md publishes; docs/reliability.md's cases keep the CLI contract)."""

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from srpo_cli.train.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def load_example(name: str):
    """A script of tools/*/ or reproductions/, by its name, imported as a module."""
    (path,) = [*ROOT.glob(f"tools/*/{name}.py"), *ROOT.glob(f"reproductions/{name}.py")]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_bench_tables_script_writes_the_published_columns(default_dataset, tmp_path):
    """reproductions/bench_tables.sh is one `srpo sweep` with the benchmark's columns: SRPO at the preset's beta
    and at others, the diffusion baseline, AWR, BC, each stage's training time, the latency and the balance."""
    pytest.importorskip("ray")
    tiny = [f"--set={k}" for k in (
        "behavior.steps=10", "critic.steps=10", "extract.steps=10", "baseline.steps=10", "eval.episodes=2",
        "eval.num_envs=2", "eval.candidates=2", "eval.sampling_steps=2", "behavior.batch_size=32",
        "critic.batch_size=32", "extract.batch_size=32", "baseline.batch_size=32",
    )]  # fmt: skip
    env = {
        **os.environ, "DATASETS": default_dataset, "SEEDS": "0", "BETAS": "preset,0", "THREADS": "2",
        "OUT": str(tmp_path / "bench"), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }  # fmt: skip
    r = subprocess.run(
        ["bash", str(ROOT / "reproductions" / "bench_tables.sh"), "--quiet", *tiny],
        env=env, capture_output=True, text=True, cwd=tmp_path, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    table = (tmp_path / "bench" / "sweep.md").read_text()
    header = next(line for line in table.splitlines() if line.startswith("| dataset | data |"))
    assert "SRPO beta=preset (0.05) | SRPO beta=0 | diffusion | AWR | BC | training s" in header
    assert "latency p50 SRPO / diffusion" in header
    row = next(line for line in table.splitlines() if line.startswith(f"| {default_dataset} | 54.4 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert all("(n=1)" in c for c in cells[2:7])  # SRPO x2, diffusion, AWR, BC: one seed each
    assert cells[2] != cells[3]  # two actors, not one score copied
    assert all(float(w) >= 0 for w in cells[7].split(" / ")) and len(cells[7].split(" / ")) == 5
    srpo_us, diffusion_us = (float(x.replace(",", "")) for x in cells[8].split(" / "))
    assert 0 < srpo_us < diffusion_us
    assert "| dataset | beta=preset | beta=0 |" in table  # the balance per beta


def test_critic_rollouts_probe_on_a_tiny_hopper(tmp_path, capsys):
    """The rollout probe puts MuJoCo in dataset states exactly and ranks every kind of action."""
    from conftest import tiny_cfg

    from srpo_cli.algos.baselines import train_baseline
    from srpo_cli.algos.behavior import train_behavior
    from srpo_cli.algos.critic import train_critic
    from srpo_cli.collect import collect
    from srpo_cli.data.transitions import load_transitions

    collect("Hopper-v5", "test/hopper/random-v0", "random", 400, seed=0)
    data = load_transitions("test/hopper/random-v0")
    cfg = tiny_cfg("test/hopper/random-v0")
    run = tmp_path / "run"
    for fn in (train_behavior, train_critic):
        fn(cfg, data, run, torch.device("cpu"), quiet=True)
    train_baseline("bc", cfg, data, run, torch.device("cpu"), quiet=True)
    # two policies of one file name (every run names its actor actor.safetensors): both must be ranked
    (run / "other").mkdir()
    shutil.copy(run / "bc.safetensors", run / "other" / "bc.safetensors")
    probe = load_example("critic_rollouts")
    argv = ["--dataset", "test/hopper/random-v0", "--run", str(run), "--policy", str(run / "bc.safetensors"),
            "--actors", str(run / "bc.safetensors"), str(run / "other" / "bc.safetensors"),
            "--states", "4", "--horizon", "5", "--smooth", "0.1"]  # fmt: skip
    assert probe.main(argv) == 0
    out = capsys.readouterr()
    assert "max |obs(set_state(s)) - s| = 0.00e+00" in out.err
    kinds = ("dataset", "uniform random", "best of 32 behavior samples by Q")
    for kind in (*kinds, str(run / "bc.safetensors"), str(run / "other" / "bc.safetensors")):
        assert f"  {kind} " in out.out
    assert "ranking accuracy" in out.out and "up the critic's gradient beats" in out.out
    assert "up the critic's gradient, smoothed over N(0, 0.1^2), beats" in out.out

    # the run probe on the same run: the critic, the behavior model, and where each policy acts (not its --bc
    # part, 200 passes of the behavior net over 16k rows: 20 s here for nothing the rest does not exercise)
    diagnose = load_example("diagnose_run")
    diagnose.main(["--dataset", "test/hopper/random-v0", "--run", str(run), "--samples", "32",
                   "--actors", str(run / "bc.safetensors")])  # fmt: skip
    out = capsys.readouterr().out
    for line in ("rated above the dataset action", "(true)"):
        assert line in out
    for name in ("dataset actions", "behavior samples (15 steps)", str(run / "bc.safetensors")):
        assert re.search(rf"  {re.escape(name)} +Q +-?[0-9.]+  dist [0-9.]+  saturated [0-9.]+", out), name

    # behavior models compared on the same draws: the same model twice gives the same row, to the digit
    compare = load_example("behavior_loss")
    behavior = str(run / "behavior.safetensors")
    compare.main(["--dataset", "test/hopper/random-v0", "--models", behavior, behavior, "--samples", "64"])
    rows = [r for r in capsys.readouterr().out.splitlines() if r.startswith(f"| {behavior} |")]
    assert len(rows) == 2 and rows[0] == rows[1]
    values = [float(v) for v in rows[0].split("|")[2:-1]]
    assert len(values) == len(compare.T_GRID) + 1 and all(0 < v < 100 for v in values)


def test_critic_rollouts_smoothed_gradient_direction():
    """The smoothed critic's slope: a unit vector per state, the raw gradient's as sigma -> 0 (a ReLU net is
    linear near a point), and a different one once the perturbations cross its kinks."""
    from srpo_cli.nn.networks import EnsembleQ

    torch.manual_seed(0)
    q = EnsembleQ(5, 3, 32, 2, 2)
    s, a = torch.randn(64, 5), torch.rand(64, 3) * 2 - 1
    probe = load_example("critic_rollouts")
    raw = probe.q_gradient_direction(q, s, a)
    torch.testing.assert_close(raw.norm(dim=-1), torch.ones(64))
    a_req = a.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(q(s, a_req).mean(0).sum(), a_req)
    torch.testing.assert_close(raw, grad / grad.norm(dim=-1, keepdim=True))
    torch.testing.assert_close(probe.q_gradient_direction(q, s, a, 1e-7, 8), raw)
    wide = probe.q_gradient_direction(q, s, a, 1.0, 64)
    torch.testing.assert_close(wide.norm(dim=-1), torch.ones(64))
    assert (wide - raw).norm(dim=-1).max() > 0.1


def test_value_probe_returns_to_go_by_hand():
    """Discounted returns-to-go restart at each episode; steps left count down to 0 at the episode's end."""
    import numpy as np

    probe = load_example("value_vs_returns")
    g, left = probe.returns_to_go(np.array([1.0, 2.0, 3.0, 4.0, 5.0]), np.array([3, 2]), 0.5)
    np.testing.assert_allclose(g, [1 + 0.5 * (2 + 0.5 * 3), 2 + 0.5 * 3, 3, 4 + 0.5 * 5, 5])
    assert left.tolist() == [2, 1, 0, 1, 0]


def test_value_probe_on_a_tiny_hopper(tmp_path, capsys):
    """The value probe reads a critic's reward transform and compares V and Q with the data's own returns."""
    from conftest import tiny_cfg

    from srpo_cli.algos.critic import train_critic
    from srpo_cli.collect import collect
    from srpo_cli.data.transitions import load_transitions

    collect("Hopper-v5", "test/hopper/value-probe-v0", "random", 400, seed=0)
    cfg = tiny_cfg("test/hopper/value-probe-v0")
    run = tmp_path / "run"
    train_critic(cfg, load_transitions("test/hopper/value-probe-v0"), run, torch.device("cpu"), quiet=True)
    probe = load_example("value_vs_returns")
    argv = ["--dataset", "test/hopper/value-probe-v0", "--critics", str(run / "critic.safetensors"), "--json"]
    assert probe.main(argv) == 0
    out = capsys.readouterr().out
    report = json.loads(out[out.index("[") :])
    (entry,) = report
    assert entry["step"] == cfg.critic.steps
    assert -1.0 <= entry["corr_v_g"] <= 1.0 and entry["advantage_std"] > 0
    assert sum(b["n"] for b in entry["bins"]) == int(out.split("(")[1].split(" transitions")[0].replace(",", ""))
    assert entry["bins"][0]["n"] > 0  # random hopper episodes end in terminations


# A stand-in for the authors' modules with the interface tools/reference/reference_critic.py uses (Q on [a, s]); each
# update moves every weight, so the online and target nets differ when the critic is copied.
FAKE_REFERENCE = """
import copy
import torch
from torch import nn


def mlp(i):
    return nn.Sequential(nn.Linear(i, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 1))


class TwinQ(nn.Module):
    def __init__(self, adim, sdim):
        super().__init__()
        self.q1, self.q2 = mlp(adim + sdim), mlp(adim + sdim)

    def both(self, a, s):
        x = torch.cat([a, s], -1)
        return self.q1(x), self.q2(x)


class Value(nn.Module):
    def __init__(self, sdim):
        super().__init__()
        self.v = mlp(sdim)

    def forward(self, s):
        return self.v(s)


class IQL_Critic(nn.Module):
    def __init__(self, adim, sdim, args):
        super().__init__()
        self.q0 = TwinQ(adim, sdim).to("cuda")
        self.q0_target = copy.deepcopy(self.q0)
        self.vf = Value(sdim)
        self.q_optimizer = torch.optim.Adam(self.q0.parameters(), lr=3e-4)
        self.v_optimizer = torch.optim.Adam(self.vf.parameters(), lr=3e-4)
        self.discount, self.tau = 0.99, 0.7

    def update_q0(self, data):
        with torch.no_grad():
            for p in [*self.q0.parameters(), *self.vf.parameters()]:
                p.add_(0.01 * torch.randn_like(p))
        self.q_loss = self.v_loss = self.q = torch.tensor(data["r"].mean().item())
"""


def test_reference_critic_is_copied_into_our_layout(default_dataset, tmp_path):
    ref = tmp_path / "reference"
    ref.mkdir()
    (ref / "SRPO.py").write_text(FAKE_REFERENCE)
    (ref / "model.py").write_text("")
    tool = load_example("reference_critic")
    run = tmp_path / "run"
    argv = ["--reference", str(ref), "--dataset", default_dataset, "--run", str(run), "--steps", "3",
            "--log-every", "1", "--set", "critic.q_lr=0.0003", "--set", "critic.v_lr=0.0003"]  # fmt: skip
    assert tool.main(argv) == 0  # main itself refuses to save a copy that computes other Q or V values
    from srpo_cli.algos.loading import load_critic

    critic = load_critic(run / "critic.safetensors", torch.device("cpu"))
    assert critic is not None
    assert len((run / "reference_critic.csv").read_text().splitlines()) == 4
    assert tool.main(argv) == 2  # never overwrites a critic
    # The preset's learning rate (1e-3 for this dataset) is not the reference's: refused, not run.
    assert tool.main([*argv[:-4], "--run", str(tmp_path / "other")]) == 2


def test_bench_speed_times_our_stages_in_bursts(capsys, monkeypatch):
    """The speed benchmark without a reference: a worker process per implementation, a burst per round."""
    bench = load_example("bench_speed")
    monkeypatch.setattr(bench, "STEPS", {**bench.STEPS, "critic": 5, "critic-qv": 5})  # the parent's table only
    assert bench.main(["--only", "critic fp32", "--rounds", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    row = out["stages"]["critic fp32"]
    assert out["rounds"] == 2 and len(row["rounds"]["ours"]) == 2 and not row["rounds"]["reference"]
    assert all(x > 0 for x in row["rounds"]["ours"]) and "speedup" not in row


# The authors' behavior net, actor and SRPO classes, in their layout (ScoreNet_IDQL: Fourier "embed", "cond_model",
# "main" with an unused "residual" Linear per block; Dirac_Policy: an MLP with a final Tanh), computing what the
# spec's nets compute; each update moves every trained weight, so a copy that misses one computes other values.
FAKE_SRPO = (
    FAKE_REFERENCE
    + """
import math


def nudge(module):
    with torch.no_grad():
        for p in module.parameters():
            if p.requires_grad:
                p.add_(0.01 * torch.randn_like(p))


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer_norm, self.residual = nn.LayerNorm(256), nn.Linear(256, 256)
        self.fc1, self.fc2 = nn.Linear(256, 1024), nn.Linear(1024, 256)

    def forward(self, x):
        return x + self.fc2(nn.functional.mish(self.fc1(self.layer_norm(x))))


class Main(nn.Module):
    def __init__(self, i, o):
        super().__init__()
        self.fc, self.out_fc = nn.Linear(i + 128, 256), nn.Linear(256, o)
        self.blocks = nn.ModuleList([Block() for _ in range(3)])

    def forward(self, x):
        x = self.fc(x)
        for block in self.blocks:
            x = block(x)
        return self.out_fc(nn.functional.mish(x))


class Fourier(nn.Module):
    def __init__(self):
        super().__init__()
        self.W = nn.Parameter(torch.randn(32) * 30.0, requires_grad=False)

    def forward(self, t):
        p = t[..., None] * self.W[None, :] * 2 * math.pi
        return torch.cat([torch.sin(p), torch.cos(p)], dim=-1)


class ScoreNet_IDQL(nn.Module):
    def __init__(self, i, o):
        super().__init__()
        self.embed = nn.Sequential(Fourier())
        self.cond_model = nn.Sequential(nn.Linear(64, 128), nn.Mish(), nn.Linear(128, 128))
        self.main = Main(i, o)

    def forward(self, x, t, condition):
        return self.main(torch.cat([x, condition, self.cond_model(self.embed(t))], dim=-1))


class Dirac_Policy(nn.Module):
    def __init__(self, adim, sdim):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(sdim, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                                 nn.Linear(256, adim), nn.Tanh())

    def forward(self, s):
        return self.net(s)


class SRPO_Behavior(nn.Module):
    def __init__(self, input_dim, output_dim, marginal_prob_std, args):
        super().__init__()
        self.diffusion_behavior = ScoreNet_IDQL(input_dim, output_dim)

    def update_behavior(self, data):
        nudge(self.diffusion_behavior)
        self.loss = data["a"].pow(2).sum(-1).mean()


class SRPO(nn.Module):
    def __init__(self, input_dim, output_dim, marginal_prob_std, args):
        super().__init__()
        assert args.WT in ("VDS", "VDS noise") and args.n_policy_epochs > 0
        self.diffusion_behavior = ScoreNet_IDQL(input_dim, output_dim)
        self.SRPO_policy = Dirac_Policy(output_dim, input_dim - output_dim)
        self.q = [IQL_Critic(output_dim, input_dim - output_dim, args)]

    def update_SRPO_policy(self, data):
        nudge(self.SRPO_policy)
        a = self.SRPO_policy(data["s"])
        self.SRPO_policy.q = torch.min(*self.q[0].q0_target.both(a, data["s"])).mean()
"""
)


def test_reference_behavior_and_extraction_are_copied_into_our_layout(default_dataset, tmp_path):
    import subprocess
    import sys

    def tool(name: str, *argv: str) -> int:
        # its own process: the tools set torch's thread count and build the fused Mish kernels for the process,
        # which the tests after this one must not inherit
        return subprocess.run([sys.executable, str(ROOT / "tools" / "reference" / f"{name}.py"), *argv]).returncode

    ref = tmp_path / "reference"
    ref.mkdir()
    (ref / "SRPO.py").write_text(FAKE_SRPO)
    (ref / "model.py").write_text("")
    run = tmp_path / "run"
    common = ["--reference", str(ref), "--dataset", default_dataset, "--run", str(run), "--log-every", "1"]
    lrs = ["--set", "critic.q_lr=0.0003", "--set", "critic.v_lr=0.0003"]
    assert tool("reference_critic", *common, "--steps", "2", *lrs) == 0
    # main itself refuses to save a copy that computes other eps, Q or actions than the reference's
    assert tool("reference_srpo", "behavior", *common, "--set", "behavior.steps=3") == 0
    assert len((run / "reference_behavior.csv").read_text().splitlines()) == 4
    extract = ["--set", "extract.steps=2", "--set", "extract.noise_baseline=true"]
    assert tool("reference_srpo", "extract", *common, *extract) == 0
    assert len((run / "reference_extract.csv").read_text().splitlines()) == 3
    from srpo_cli.algos.loading import load_behavior

    net, _, ckpt = load_behavior(run / "behavior.safetensors", torch.device("cpu"))
    assert ckpt.meta["step"] == 3 and not ckpt.config["behavior"]["bf16"]
    actor = load_checkpoint(run / "actor.safetensors", "actor")
    assert actor.meta["step"] == 2 and set(actor.meta["parents"]) == {"behavior.safetensors", "critic.safetensors"}
    for what in ("behavior", "extract"):  # never overwrites
        assert tool("reference_srpo", what, *common, "--set", f"{what}.steps=1") == 2
    # A behavior net the reference cannot express is refused before anything runs.
    other = ["--run", str(tmp_path / "other"), "--set", "behavior.hidden_dim=128"]
    assert tool("reference_srpo", "behavior", *common, *other) == 2
    assert not (tmp_path / "other" / "behavior.safetensors").exists()


def test_every_hostile_user_case_keeps_the_cli_contract(capsys):
    """docs/reliability.md's table: each case exits with its code and names the problem, never a traceback."""
    cases = load_example("reliability_cases")
    assert cases.main(["--check"]) == 0, capsys.readouterr().out
    table = capsys.readouterr().out
    assert table.count("\n| ") >= 60 and "contract broken" not in table
