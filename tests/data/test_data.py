import h5py
import numpy as np
import pytest
import torch

from srpo_cli.data.builders import D4RL_REF, import_d4rl
from srpo_cli.data.transitions import BatchSampler, episodes_to_arrays, load_transitions, scale_rewards
from srpo_cli.errors import RuntimeFailure, UsageError


def test_every_field_of_every_transition(handmade_dataset):
    """T+1 observations aligned; only the termination sets d = 1; the truncated last step keeps its s'."""
    t = load_transitions(handmade_dataset["id"])
    obs0, obs1 = handmade_dataset["obs"]
    assert t.size == 5 and t.obs_dim == 3 and t.action_dim == 1
    np.testing.assert_allclose(t.observations.numpy(), np.concatenate([obs0[:-1], obs1[:-1]]))
    np.testing.assert_allclose(t.next_observations.numpy(), np.concatenate([obs0[1:], obs1[1:]]))
    # Pendulum's action space is [-2, 2]: actions are mapped to [-1, 1] for training.
    np.testing.assert_allclose(t.actions.numpy().ravel(), [-1.0, 0.0, 1.0, 0.5, -0.5])
    np.testing.assert_allclose(t.rewards.numpy(), [1, 2, 3, 10, 20])
    # Episode 0 terminated at its last step; episode 1 was truncated (a time limit): not a terminal.
    np.testing.assert_array_equal(t.terminals.numpy(), [0, 0, 1, 0, 0])
    np.testing.assert_allclose(t.episode_returns, [6.0, 30.0])
    assert (t.ref_min_score, t.ref_max_score) == (0.0, 100.0)
    np.testing.assert_allclose(t.action_low, [-2.0])


def test_transitions_move_to_another_device_whole(handmade_dataset):
    """Stages move the data to their device (indices drawn on a GPU cannot index CPU tensors); every
    tensor moves, the rest is kept, and moving to where it already is costs nothing."""
    data = load_transitions(handmade_dataset["id"])
    assert data.to("cpu") is data and data.to(torch.device("cpu")) is data
    moved = data.to("meta")  # a second device every machine has
    for name in ("observations", "actions", "rewards", "next_observations", "terminals"):
        assert getattr(moved, name).device.type == "meta" and getattr(data, name).device.type == "cpu"
        assert getattr(moved, name).shape == getattr(data, name).shape
    assert moved.dataset_id == data.dataset_id and moved.episode_returns is data.episode_returns
    assert moved.device.type == "meta"


def test_actions_kept_raw_when_asked(handmade_dataset):
    t = load_transitions(handmade_dataset["id"], normalize_actions=False)
    np.testing.assert_allclose(t.actions.numpy().ravel(), [-2.0, 0.0, 2.0, 1.0, -1.0])


def test_non_finite_values_are_refused_with_field_and_count(monkeypatch):
    class Ep:
        id = 0
        observations = np.zeros((3, 2), dtype=np.float32)
        actions = np.zeros((2, 1), dtype=np.float32)
        rewards = np.array([np.nan, np.inf])
        terminations = np.array([False, False])

    arrays = episodes_to_arrays([Ep()])
    from srpo_cli.data import transitions as data

    with pytest.raises(RuntimeFailure, match="2 non-finite values .* 'rewards'"):
        data._check_finite(arrays, "x/y-v0")


def test_misaligned_episode_is_refused():
    class Ep:
        id = 3
        observations = np.zeros((2, 2), dtype=np.float32)  # should be T+1 = 3
        actions = np.zeros((2, 1), dtype=np.float32)
        rewards = np.zeros(2)
        terminations = np.zeros(2, dtype=bool)

    with pytest.raises(RuntimeFailure, match="T\\+1"):
        episodes_to_arrays([Ep()])


def test_reward_scaling_modes():
    r = torch.tensor([1.0, 2.0, -1.0])
    returns = np.array([100.0, 300.0, 50.0])
    torch.testing.assert_close(scale_rewards(r, returns, "locomotion"), r * 1000.0 / 250.0)
    torch.testing.assert_close(scale_rewards(r, returns, "antmaze"), r - 1.0)  # the antmaze shift
    torch.testing.assert_close(scale_rewards(r, returns, "none"), r)
    with pytest.raises(RuntimeFailure, match="different returns"):
        scale_rewards(r, np.array([5.0, 5.0]), "locomotion")


def test_epoch_sampler_is_without_replacement_and_resumable():
    g = torch.Generator().manual_seed(0)
    s = BatchSampler(10, 3, g, "epoch")
    first_epoch = torch.cat([s.next() for _ in range(3)])
    assert len(set(first_epoch.tolist())) == 9  # no repeats, remainder dropped
    state, gstate = s.state_dict(), g.get_state()
    a = [s.next() for _ in range(5)]
    s.load_state_dict(state)
    g.set_state(gstate)
    b = [s.next() for _ in range(5)]
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    with pytest.raises(UsageError, match="larger than the dataset"):
        BatchSampler(5, 8, g, "epoch")


def _write_d4rl(path, with_next: bool):
    # Episode A: 3 steps, terminates. Episode B: 4 steps, times out. Episode C: 2 steps, file ends mid-episode.
    n = 9
    obs = np.arange(n * 3, dtype=np.float32).reshape(n, 3)  # Pendulum-v1's observation size
    with h5py.File(path, "w") as f:
        f["observations"] = obs
        f["actions"] = np.linspace(-1, 1, n, dtype=np.float32).reshape(n, 1)
        f["rewards"] = np.arange(n, dtype=np.float32)
        f["terminals"] = np.array([0, 0, 1, 0, 0, 0, 0, 0, 0], dtype=bool)
        f["timeouts"] = np.array([0, 0, 0, 0, 0, 0, 1, 0, 0], dtype=bool)
        if with_next:
            f["next_observations"] = obs + 1000.0
    return obs


@pytest.mark.parametrize("with_next", [True, False])
def test_d4rl_import(tmp_path, with_next):
    path = tmp_path / "hopper_medium-v2.hdf5"
    obs = _write_d4rl(path, with_next)
    ds_id = f"d4rl/hopper/medium-{'next' if with_next else 'nonext'}-v2"
    rep = import_d4rl(path, "Pendulum-v1", ds_id)
    assert rep.ref == D4RL_REF["hopper"]  # named after hopper: D4RL's reference scores attached
    t = load_transitions(ds_id, normalize_actions=False)
    if with_next:
        assert (rep.episodes, rep.steps, rep.dropped) == (3, 9, 0)
        # Inside an episode s' is the next row; at an episode's end it is the file's next_observations.
        expected = obs[[1, 2, 2, 4, 5, 6, 6, 8, 8]].copy()
        expected[[2, 6, 8]] += 1000.0
        np.testing.assert_allclose(t.next_observations.numpy(), expected)
        np.testing.assert_array_equal(t.terminals.numpy(), [0, 0, 1, 0, 0, 0, 0, 0, 0])
    else:
        # The timed-out episode B and the cut episode C lose their last step (no true next state).
        assert (rep.episodes, rep.steps, rep.dropped) == (3, 7, 2)
        np.testing.assert_allclose(t.observations.numpy(), obs[[0, 1, 2, 3, 4, 5, 7]])
        np.testing.assert_allclose(t.next_observations.numpy()[[0, 1, 3, 4, 5]], obs[[1, 2, 4, 5, 6]])
        np.testing.assert_array_equal(t.terminals.numpy(), [0, 0, 1, 0, 0, 0, 0])
        np.testing.assert_allclose(t.rewards.numpy(), [0, 1, 2, 3, 4, 5, 7])
    assert (t.ref_min_score, t.ref_max_score) == D4RL_REF["hopper"]


def test_d4rl_import_bad_inputs_leave_nothing(tmp_path, minari_store):
    before = sorted(p.name for p in minari_store.rglob("*"))
    with pytest.raises(UsageError, match="does not exist"):
        import_d4rl(tmp_path / "missing.hdf5", "Pendulum-v1", "d4rl/x/y-v0")
    bad = tmp_path / "bad.hdf5"
    with h5py.File(bad, "w") as f:
        f["observations"] = np.zeros((3, 2))
    with pytest.raises(UsageError, match="missing actions, rewards, terminals"):
        import_d4rl(bad, "Pendulum-v1", "d4rl/x/y-v0")
    good = tmp_path / "g.hdf5"
    _write_d4rl(good, True)
    with pytest.raises(RuntimeFailure, match="NoSuchEnv-v0"):
        import_d4rl(good, "NoSuchEnv-v0", "d4rl/x/z-v0")
    assert sorted(p.name for p in minari_store.rglob("*")) == before


def test_dict_observations_are_flattened_as_evaluation_flattens_them(tmp_path):
    """A goal-conditioned dataset (Dict observations, like Minari's antmaze): the networks see one vector per
    step, its entries in the observation space's key order, and the evaluation environment hands the policy
    the same vector for the same state. The entries sort the other way round from how the env builds them."""
    from goal_env import register

    from srpo_cli.act.evaluate import make_env_fn
    from srpo_cli.collect import collect

    env_id = register()
    dataset_id, _ = collect(env_id, "test/goal/random-v0", "random", steps=60, seed=0)
    data = load_transitions(dataset_id)
    assert data.obs_dim == 3 and data.size == 60
    raw = gym_env(env_id)
    first, _ = raw.reset(seed=0)  # collect's first episode starts from reset(seed=seed * 100003 + 0)
    expected = np.concatenate([first["a_velocity"], first["z_angle"]])  # the space's (sorted) key order
    np.testing.assert_allclose(data.observations[0].numpy(), expected, rtol=1e-6)
    # T+1 alignment holds for the flattened vectors too
    np.testing.assert_array_equal(data.next_observations[0].numpy(), data.observations[1].numpy())

    env = make_env_fn(data.info["eval_env_spec"], dataset_id, data.info["observation_space"])()
    obs, _ = env.reset(seed=0)
    assert env.observation_space.shape == (3,)
    np.testing.assert_allclose(obs, expected, rtol=1e-6)
    env.close()


def gym_env(env_id):
    import gymnasium as gym

    return gym.make(env_id)
