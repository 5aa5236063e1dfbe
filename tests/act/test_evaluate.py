import gymnasium as gym
import numpy as np
import pytest

from srpo_cli.act.evaluate import EvalResult, aggregate_seeds, latency, run_episodes


class TaggedEnv(gym.Env):
    """Reward 1 per step plus 1000 * tag on the first, tag = the seed of the first reset; episode lengths vary from 2 to 4."""

    observation_space = gym.spaces.Box(-1, 1, (1,), np.float32)
    action_space = gym.spaces.Box(-1, 1, (1,), np.float32)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        if seed is not None:
            self.tag = seed - 100
        self.length = int(self.np_random.integers(2, 5))
        self.t = 0
        return np.zeros(1, np.float32), {}

    def step(self, action):
        self.t += 1
        reward = 1.0 + (1000.0 * self.tag if self.t == 1 else 0.0)
        return np.zeros(1, np.float32), reward, self.t >= self.length, False, {}


def test_static_split_and_autoreset_steps_not_counted():
    returns, lengths = run_episodes(lambda o: np.zeros((len(o), 1), np.float32), TaggedEnv, 5, 2, seed=100)
    assert len(returns) == 5
    tags = (returns // 1000).astype(int)
    assert list(tags) == [0, 0, 0, 1, 1]  # env 0 runs 3 episodes, env 1 runs 2: a fixed quota each
    # Each return is exactly its length (+ tag): the reset step after an episode is never counted.
    np.testing.assert_allclose(returns - 1000 * tags, lengths)
    assert set(lengths) <= {2, 3, 4}
    again, _ = run_episodes(lambda o: np.zeros((len(o), 1), np.float32), TaggedEnv, 5, 2, seed=100)
    np.testing.assert_array_equal(returns, again)  # fixed eval seeds: same episodes


def test_more_envs_than_episodes():
    returns, _ = run_episodes(lambda o: np.zeros((len(o), 1), np.float32), TaggedEnv, 2, 8, seed=100)
    assert len(returns) == 2


def test_normalized_score_is_on_the_0_100_scale():
    res = EvalResult(np.array([10.0, 30.0]), np.array([5, 5]), 1.0, ref_min=0.0, ref_max=40.0)
    s = res.summary()
    assert s["score_mean"] == pytest.approx(50.0)  # not 0.5: Minari's helper returns a fraction
    assert s["score_std"] == pytest.approx(100 * 10.0 / 40.0)
    assert "0-100" in s["score_scale"]
    no_ref = EvalResult(np.array([1.0]), np.array([1]), 1.0)
    assert "score_mean" not in no_ref.summary()


def test_aggregate_over_seeds_uses_per_seed_means():
    runs = [
        EvalResult(np.array([10.0, 20.0]), np.array([1, 1]), 1.0, 0.0, 100.0),
        EvalResult(np.array([30.0, 40.0]), np.array([1, 1]), 1.0, 0.0, 100.0),
    ]
    agg = aggregate_seeds(runs)
    assert agg["score_mean"] == pytest.approx(25.0) and agg["score_std"] == pytest.approx(10.0)


def test_latency_reports_percentiles():
    r = latency(lambda: sum(range(10)), repeats=50, warmup=5)
    assert 0 < r["p50_us"] <= r["p95_us"] and r["repeats"] == 50


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize(("n_layers", "hidden"), [(0, 64), (2, 64), (4, 64), (2, 8)])
def test_numpy_actor_matches_the_torch_actor_at_batch_one_and_n(n_layers, hidden, compiled):
    """eval and bench act through NumpyActor; its single-observation paths (the compiled kernel, with wide and
    narrow layers stored differently, and the numpy fallback with the bias folded into the matmul) must give
    the torch module's actions, and results must not alias its buffers."""
    import torch

    from srpo_cli.act.policies import NumpyActor
    from srpo_cli.nn.networks import TanhActor

    torch.manual_seed(0)
    net = TanhActor(11, 3, hidden, n_layers).eval()
    low, high = np.array([-2.0, -1.0, 0.0], np.float32), np.array([2.0, 1.0, 1.0], np.float32)
    actor = NumpyActor.from_module(net, low, high, compiled=compiled)
    assert actor.backend == ("numba" if compiled else "numpy")
    obs = np.random.default_rng(0).standard_normal((5, 11)).astype(np.float32)
    with torch.no_grad():
        ref = net(torch.from_numpy(obs)).numpy()
    ref_env = low + (ref + 1.0) * 0.5 * (high - low)
    np.testing.assert_allclose(actor(obs), ref_env, rtol=1e-5, atol=1e-6)
    first = actor(obs[0])  # 1-D observation -> 1-D action
    assert first.shape == (3,)
    np.testing.assert_allclose(first, ref_env[0], rtol=1e-5, atol=1e-6)
    second = actor(obs[1:2])
    np.testing.assert_allclose(second, ref_env[1:2], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(actor(np.asfortranarray(obs)[3]), ref_env[3], rtol=1e-5, atol=1e-6)  # strided
    np.testing.assert_allclose(first, ref_env[0], rtol=1e-5, atol=1e-6)  # not overwritten by the next call


@pytest.mark.parametrize("compiled", [True, False])
def test_actor_fast_path_propagates_nan_like_torch(compiled):
    """A NaN observation must give a NaN action (as torch does), never a finite action a robot would apply."""
    import torch

    from srpo_cli.act.policies import NumpyActor
    from srpo_cli.nn.networks import TanhActor

    net = TanhActor(4, 2, 32, 2)
    actor = NumpyActor.from_module(net, -np.ones(2, np.float32), np.ones(2, np.float32), compiled=compiled)
    obs = np.array([0.1, np.nan, 0.3, 0.4], np.float32)
    with torch.no_grad():
        assert torch.isnan(net(torch.from_numpy(obs))).all()
    assert np.isnan(actor(obs)).all()
