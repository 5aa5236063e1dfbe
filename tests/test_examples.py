"""Each user example in examples/ runs as its docstring says (on test-sized budgets)."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_python_api_then_onnxruntime_act_like_srpo(workdir, default_dataset, capsys):
    """The whole pipeline from Python, then the same actor exported to ONNX and driven by onnxruntime alone."""
    ort = pytest.importorskip("onnxruntime")
    from srpo_cli import load_actor_policy

    run = workdir / "run"
    out = load("python_api").main(["--run", str(run), "--steps", "30", "--episodes", "2"])
    assert np.isfinite(out["score"]) and np.isfinite(out["episode_return"])
    printed = capsys.readouterr().out
    assert "SRPO actor: score" in printed and "acting step by step" in printed
    total = load("act_with_onnxruntime").main(["--run", str(run)])
    assert np.isfinite(total) and (run / "actor.onnx").exists()
    # the exported file acts as srpo's own fast path does
    session = ort.InferenceSession(str(run / "actor.onnx"), providers=["CPUExecutionProvider"])
    obs = np.random.default_rng(0).standard_normal((16, 3)).astype(np.float32)
    policy = load_actor_policy(run / "actor.safetensors")
    np.testing.assert_allclose(session.run(["action"], {"obs": obs})[0], policy(obs), atol=1e-5)


def test_bandit_figure_draws_srpo_moving_with_beta(tmp_path):
    """The bandit picture: the larger beta, the further up the critic's slope the actor goes."""
    actions = load("bandit_figure").main(["--fast", "--seeds", "2", "--out", str(tmp_path / "bandit.png")])
    assert (tmp_path / "bandit.png").stat().st_size > 10_000
    uphill = [float(actions[b].sum(-1).mean()) for b in sorted(actions)]
    assert uphill == sorted(uphill) and uphill[-1] > 1.8  # the largest beta reaches the action bound (1, 1)
