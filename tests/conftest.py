"""Test-session fixtures: a private Minari store with tiny datasets built on the spot (no network)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent

# The tests never reach the network; in offline mode Minari's remote (Hugging Face) fails at once where it would
# retry for about 25 s before the "Could not download" error that test_cli checks.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pytest_addoption(parser):
    parser.addoption("--device", default="cpu", help="device for training tests: cpu|cuda|mps|auto")


@pytest.fixture(scope="session")
def device(request) -> str:
    return request.config.getoption("--device")


@pytest.fixture(scope="session", autouse=True)
def minari_store(tmp_path_factory) -> Path:
    """Every test sees the same private MINARI_DATASETS_PATH, never the user's."""
    path = tmp_path_factory.mktemp("minari")
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(path)
    yield path
    if old is None:
        os.environ.pop("MINARI_DATASETS_PATH", None)
    else:
        os.environ["MINARI_DATASETS_PATH"] = old


@pytest.fixture(scope="session")
def default_dataset(minari_store) -> str:
    """The built-in default dataset exactly as `srpo fetch` builds it (40,000 transitions, a few seconds)."""
    from srpo_cli.data.builders import build_default_dataset

    return build_default_dataset()


@pytest.fixture(scope="session")
def handmade_dataset(minari_store) -> dict:
    """Two Pendulum episodes with known contents: one terminated (3 steps), one truncated (2 steps)."""
    import minari
    from minari.data_collector import EpisodeBuffer

    obs0 = np.arange(12, dtype=np.float32).reshape(4, 3) / 10.0  # T+1 = 4 observations
    obs1 = 100 + np.arange(9, dtype=np.float32).reshape(3, 3) / 10.0  # T+1 = 3
    ep0 = EpisodeBuffer(
        id=0,
        observations=obs0,
        actions=np.array([[-2.0], [0.0], [2.0]], dtype=np.float32),
        rewards=np.array([1.0, 2.0, 3.0]),
        terminations=np.array([False, False, True]),
        truncations=np.array([False, False, False]),
    )
    ep1 = EpisodeBuffer(
        id=1,
        observations=obs1,
        actions=np.array([[1.0], [-1.0]], dtype=np.float32),
        rewards=np.array([10.0, 20.0]),
        terminations=np.array([False, False]),
        truncations=np.array([False, True]),
    )
    dataset_id = "test/hand/made-v0"
    minari.create_dataset_from_buffers(
        dataset_id=dataset_id,
        buffer=[ep0, ep1],
        env="Pendulum-v1",
        algorithm_name="hand",
        ref_min_score=0.0,
        ref_max_score=100.0,
    )
    return {"id": dataset_id, "obs": (obs0, obs1)}


@pytest.fixture()
def workdir(tmp_path, monkeypatch) -> Path:
    """Each CLI test runs in an empty directory (srpo.yaml and runs/ land there)."""
    monkeypatch.chdir(tmp_path)
    for k in list(os.environ):
        if k.startswith("SRPO_"):
            monkeypatch.delenv(k)
    return tmp_path


def tiny_cfg(dataset: str, **overrides):
    """A RunConfig with budgets of a few steps and small networks."""
    from srpo_cli import config

    cfg = config.resolve({"dataset": dataset}, config_path=Path("/nonexistent.yaml"), environ={})
    cfg.behavior.steps, cfg.behavior.batch_size, cfg.behavior.log_every = 30, 64, 10
    cfg.critic.steps, cfg.critic.batch_size, cfg.critic.log_every = 60, 64, 20
    cfg.extract.steps, cfg.extract.batch_size, cfg.extract.log_every = 30, 64, 10
    cfg.baseline.steps, cfg.baseline.batch_size, cfg.baseline.log_every = 30, 64, 10
    cfg.eval.episodes, cfg.eval.num_envs, cfg.eval.candidates, cfg.eval.sampling_steps = 2, 2, 4, 3
    config.apply(cfg, overrides)
    return cfg


def copy_tree(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst)
