import importlib.util

import numpy as np
import pytest
import torch

from srpo_cli.act.export import export_actor
from srpo_cli.act.policies import load_actor_policy
from srpo_cli.errors import RuntimeFailure
from srpo_cli.nn.networks import TanhActor
from srpo_cli.train.checkpoint import save_checkpoint


def save_actor(path, obs_dim: int, low: list[float], high: list[float], extra: dict | None = None):
    """An actor checkpoint as the extraction writes one: a small random TanhActor and its action bounds."""
    actor = TanhActor(obs_dim, len(low), 32, 2)
    save_checkpoint(
        path,
        "actor",
        {"actor": actor.state_dict(), "action": {"low": torch.tensor(low), "high": torch.tensor(high)}},
        config={"extract": {"hidden_dim": 32, "n_layers": 2}},
        dataset_id="x/y-v0",
        obs_dim=obs_dim,
        action_dim=len(low),
        step=1,
        seed=0,
        extra=extra,
    )
    return path


@pytest.fixture()
def actor_ckpt(tmp_path):
    torch.manual_seed(0)
    return save_actor(tmp_path / "actor.safetensors", 3, [-2.0, 0.0], [2.0, 1.0])


def test_torchscript_round_trip_matches_eval_actions(actor_ckpt, tmp_path):
    out = export_actor(actor_ckpt, tmp_path / "actor.pt", "torchscript")
    loaded = torch.jit.load(str(out))  # plain torch, no srpo needed
    obs = np.random.default_rng(0).standard_normal((64, 3)).astype(np.float32) * 3
    expected = load_actor_policy(actor_ckpt)(obs)  # what `srpo eval` acts with
    got = loaded(torch.from_numpy(obs)).detach().numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert got[:, 0].min() >= -2.0 and got[:, 1].min() >= 0.0  # action bounds baked in


@pytest.mark.skipif(
    importlib.util.find_spec("onnx") is None or importlib.util.find_spec("onnxruntime") is None,
    reason="onnx extra not installed",
)
def test_onnx_round_trip(actor_ckpt, tmp_path):
    import onnxruntime as ort

    out = export_actor(actor_ckpt, tmp_path / "actor.onnx", "onnx")
    sess = ort.InferenceSession(str(out))
    obs = np.random.default_rng(1).standard_normal((5, 3)).astype(np.float32)
    got = sess.run(None, {"obs": obs})[0]
    np.testing.assert_allclose(got, load_actor_policy(actor_ckpt)(obs), atol=1e-5)


def test_export_refuses_a_non_policy_checkpoint(tmp_path):
    path = tmp_path / "critic.safetensors"
    save_checkpoint(path, "critic", {"q": {"w": torch.zeros(1)}}, config={}, dataset_id="x/y-v0", obs_dim=1,
                    action_dim=1, step=0, seed=0)  # fmt: skip
    with pytest.raises(RuntimeFailure, match="needs a policy checkpoint"):
        export_actor(path, tmp_path / "out.pt")


def test_export_of_a_dict_observation_policy_carries_its_input_layout(tmp_path):
    """A policy trained on Dict observations (antmaze's observation / achieved_goal / desired_goal) is exported
    with where each entry goes in its flat input, in the order training flattened them."""
    import json

    from gymnasium import spaces
    from minari.serialization import serialize_space

    space = spaces.Dict(
        {
            "observation": spaces.Box(-1, 1, (3,)),
            "desired_goal": spaces.Box(-1, 1, (2,)),
            "achieved_goal": spaces.Box(-1, 1, (2,)),
        }
    )
    path = save_actor(
        tmp_path / "actor.safetensors", 7, [-1.0, -1.0], [1.0, 1.0], {"observation_space": serialize_space(space)}
    )
    expected = [["achieved_goal", 0, 2], ["desired_goal", 2, 4], ["observation", 4, 7]]
    files = {"observation_layout": ""}
    torch.jit.load(str(export_actor(path, tmp_path / "a.pt", "torchscript")), _extra_files=files)
    assert json.loads(files["observation_layout"]) == expected
    if importlib.util.find_spec("onnx") is not None:
        import onnx

        model = onnx.load(str(export_actor(path, tmp_path / "a.onnx", "onnx")))
        props = {p.key: p.value for p in model.metadata_props}
        assert json.loads(props["observation_layout"]) == expected
