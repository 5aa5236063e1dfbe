import copy

import pytest
import torch

from srpo_cli.algos.extract import q_gradient
from srpo_cli.algos.losses import expectile_loss, iql_q_target, srpo_loss, srpo_weight, twin_q_loss
from srpo_cli.nn.networks import EnsembleQ, polyak_update


def test_expectile_loss_by_hand():
    u = torch.tensor([1.0, -2.0, 0.5])  # target - prediction
    # tau = 0.7: positive residuals weigh 0.7, negative ones 0.3
    expected = (0.7 * 1.0 + 0.3 * 4.0 + 0.7 * 0.25) / 3
    assert float(expectile_loss(u, 0.7)) == pytest.approx(expected)
    assert float(expectile_loss(u, 0.5)) == pytest.approx(0.5 * float((u**2).mean()))


def test_q_target_bootstraps_only_through_non_terminals():
    r = torch.tensor([1.0, 2.0, 3.0])
    d = torch.tensor([0.0, 1.0, 0.0])  # the middle transition terminated; the others (incl. a truncation) did not
    v_next = torch.tensor([10.0, 20.0, 30.0])
    y = iql_q_target(r, d, v_next, 0.99)
    torch.testing.assert_close(y, torch.tensor([1.0 + 9.9, 2.0, 3.0 + 29.7]))


def test_twin_q_loss_by_hand():
    q = torch.tensor([[1.0, 2.0], [3.0, 5.0]])
    y = torch.tensor([1.0, 1.0])
    # 1/2 (MSE(Q1,y) + MSE(Q2,y)) = 1/2 ((0 + 1)/2 + (4 + 16)/2)
    assert float(twin_q_loss(q, y)) == pytest.approx(0.5 * (0.5 + 10.0))


def _member_by_member(ens: EnsembleQ, s: torch.Tensor, a: torch.Tensor, layer_norm: bool) -> torch.Tensor:
    """Each member of the ensemble as its own plain MLP: ReLU, then (with layer_norm) a LayerNorm without weights."""
    outs = []
    for k in range(ens.n):
        x = torch.cat([s, a], -1)
        for i, layer in enumerate(ens.layers):
            x = x @ layer.weight[k] + layer.bias[k]
            if i < len(ens.layers) - 1:
                x = torch.relu(x)
                if layer_norm:
                    x = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + 1e-5)
        outs.append(x.squeeze(-1))
    return torch.stack(outs)


@pytest.mark.parametrize("layer_norm", [False, True])
def test_ensemble_matches_independent_mlps(layer_norm):
    torch.manual_seed(0)
    ens = EnsembleQ(4, 2, 16, 2, layer_norm=layer_norm)
    s, a = torch.randn(5, 4), torch.randn(5, 2)
    out = ens(s, a)
    assert out.shape == (2, 5)
    torch.testing.assert_close(out, _member_by_member(ens, s, a, layer_norm))


def test_layer_norm_critic_bounds_q_off_the_data():
    """With layer_norm the head sees unit-variance rows, so |Q - b| <= |w| sqrt(hidden) for any input, however
    far off the data; the same weights without it grow with the input."""
    torch.manual_seed(0)
    ens = EnsembleQ(4, 2, 16, 2, layer_norm=True)
    s, a = torch.randn(5, 4) * 1e4, torch.randn(5, 2) * 1e4
    head = ens.layers[-1]
    bound = head.weight.norm(dim=(1, 2)) * 16**0.5
    assert ((ens(s, a) - head.bias.view(2, 1)).abs() <= bound.view(2, 1) + 1e-4).all()
    plain = EnsembleQ(4, 2, 16, 2)
    plain.load_state_dict(ens.state_dict())
    assert plain(s, a).abs().max() > 100 * bound.max()


def test_polyak_update_is_a_lerp():
    torch.manual_seed(0)
    q = EnsembleQ(3, 1, 8, 2)
    tq = copy.deepcopy(q)
    for p in q.parameters():
        p.data.add_(1.0)
    before = [p.clone() for p in tq.parameters()]
    polyak_update(list(tq.parameters()), list(q.parameters()), 0.005)
    for b, t, o in zip(before, tq.parameters(), q.parameters(), strict=True):
        torch.testing.assert_close(t, 0.995 * b + 0.005 * o)


def test_srpo_weights():
    a, s = torch.tensor([0.6]), torch.tensor([0.8])
    assert float(srpo_weight(a, s, "sigma2")) == pytest.approx(0.64)
    assert float(srpo_weight(a, s, "one")) == 1.0
    assert float(srpo_weight(a, s, "alpha_over_sigma")) == pytest.approx(0.75)


def test_srpo_loss_gradient_flows_only_through_the_action():
    a = torch.tensor([[0.5, -0.5]], requires_grad=True)
    eps = torch.tensor([[1.0, 2.0]], requires_grad=True)
    g = torch.tensor([[3.0, -1.0]], requires_grad=True)
    w = torch.tensor([0.5])
    loss, score, qterm = srpo_loss(a, eps, w, g, beta=0.1)
    assert float(score) == pytest.approx(0.5 * (0.5 - 1.0))
    assert float(qterm) == pytest.approx(1.5 + 0.5)
    loss.backward()
    torch.testing.assert_close(a.grad, 0.5 * eps.detach() - 0.1 * g.detach())
    assert eps.grad is None and g.grad is None


def test_q_gradient_mean_min_and_normalization():
    def q_net(s, a):
        return torch.stack([(a**2).sum(-1), 3.0 * a.sum(-1)])

    s, a = torch.zeros(1, 1), torch.tensor([[1.0, 2.0]])
    g, q = q_gradient(q_net, s, a, "mean", False)
    torch.testing.assert_close(g, torch.tensor([[2.5, 3.5]]))
    torch.testing.assert_close(q, torch.tensor([7.0]))
    # min picks the network with the lower value per sample: (1 + 4 = 5) < (3 * 3 = 9)
    torch.testing.assert_close(q_gradient(q_net, s, a, "min", False)[0], torch.tensor([[2.0, 4.0]]))
    g, _ = q_gradient(q_net, s, a, "mean", True)
    assert float((g**2).mean()) == pytest.approx(1.0)


@pytest.mark.parametrize("reduce", ["mean", "min"])
def test_srpo_loss_through_q_has_the_explicit_q_gradient_form(reduce):
    """The extraction's one-backward form must give the actor exactly the gradient of the spec's
    mean(w <e, a> - beta <g, a>) with g = dQ/da detached."""
    from srpo_cli.algos.extract import reduce_q
    from srpo_cli.algos.losses import srpo_loss_through_q
    from srpo_cli.nn.networks import EnsembleQ, TanhActor

    torch.manual_seed(0)
    actor, q_net = TanhActor(5, 3, 32, 2), EnsembleQ(5, 3, 32, 2).requires_grad_(False)
    s, eps, w = torch.randn(64, 5), torch.randn(64, 3), torch.rand(64)
    grads = []
    for form in ("explicit", "through_q"):
        actor.zero_grad()
        a = actor(s)
        if form == "explicit":
            g, _ = q_gradient(q_net, s, a, reduce, False)
            loss = srpo_loss(a, eps, w, g, beta=0.3)[0]
        else:
            loss = srpo_loss_through_q(a, eps, w, reduce_q(q_net(s, a), reduce), beta=0.3)[0]
        loss.backward()
        grads.append([p.grad.clone() for p in actor.parameters()])
    for explicit, through_q in zip(*grads, strict=True):
        torch.testing.assert_close(through_q, explicit, rtol=1e-5, atol=1e-7)


def test_normalized_critic_sees_standardized_states():
    """With normalize_obs, Q and V of raw states equal the plain nets on (s - mean) / std: rescaling a state
    dimension by 1000 and setting the statistics to match changes nothing."""
    from srpo_cli.data.transitions import observation_statistics
    from srpo_cli.nn.networks import ValueNet

    torch.manual_seed(0)
    s = torch.randn(64, 4) * torch.tensor([0.1, 1.0, 10.0, 3.0]) + 5.0
    a = torch.rand(64, 2) * 2 - 1
    q, v = EnsembleQ(4, 2, 16, 2, normalize_obs=True), ValueNet(4, 16, 2, normalize_obs=True)
    mean, std = observation_statistics(s, eps=0.0)
    for m in (q, v):
        m.obs_norm.set_statistics(mean, std)
    plain_q, plain_v = EnsembleQ(4, 2, 16, 2), ValueNet(4, 16, 2)
    plain_q.load_state_dict({k: t for k, t in q.state_dict().items() if "obs_norm" not in k})
    plain_v.load_state_dict({k: t for k, t in v.state_dict().items() if "obs_norm" not in k})
    z = (s - mean) / std
    torch.testing.assert_close(q(s, a), plain_q(z, a))
    torch.testing.assert_close(v(s), plain_v(z))
    assert z.mean(0).abs().max() < 1e-5 and (z.std(0) - 1).abs().max() < 1e-5
    scale = torch.tensor([1.0, 1.0, 1000.0, 1.0])
    for m in (q, v):
        m.obs_norm.set_statistics(*observation_statistics(s * scale, eps=0.0))
    torch.testing.assert_close(q(s * scale, a), plain_q(z, a))
    torch.testing.assert_close(v(s * scale), plain_v(z))


@pytest.mark.parametrize(
    ("n_layers", "normalize", "n_q", "layer_norm"),
    [
        (2, False, 2, False),
        (1, True, 2, False),
        (3, False, 2, False),
        (2, False, 5, False),
        (2, False, 2, True),
        (3, True, 3, True),
    ],
)
def test_critic_hand_written_backward_equals_autograd(n_layers, normalize, n_q, layer_norm):
    """The critic step's gradients come from Q's and V's hand-written backward; on one batch they must equal
    autograd's gradients of expectile_loss + twin_q_loss through the plain forward passes."""
    import numpy as np

    from srpo_cli.algos.critic import CriticStage
    from srpo_cli.config import RunConfig
    from srpo_cli.data.transitions import Transitions

    g = torch.Generator().manual_seed(0)
    n, obs, act = 512, 5, 2
    data = Transitions(
        dataset_id="test/random-v0",
        observations=torch.randn(n, obs, generator=g) * 3 + 1,
        actions=torch.rand(n, act, generator=g) * 2 - 1,
        rewards=torch.randn(n, generator=g),
        next_observations=torch.randn(n, obs, generator=g) * 3 + 1,
        terminals=(torch.rand(n, generator=g) < 0.1).float(),
        episode_returns=np.array([1.0, 5.0]),
        action_low=-np.ones(act, np.float32),
        action_high=np.ones(act, np.float32),
    )
    cfg = RunConfig()
    cfg.critic.n_layers, cfg.critic.hidden_dim, cfg.critic.normalize_observations = n_layers, 32, normalize
    cfg.critic.n_q, cfg.critic.layer_norm = n_q, layer_norm
    stage = CriticStage(cfg, data, torch.device("cpu"))
    assert stage.q(data.observations[:3], data.actions[:3]).shape == (n_q, 3)
    with torch.no_grad():  # a target net different from the online one, as after some training
        for p in stage.q_target.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    idx = torch.arange(64)
    batch = (data.observations[idx], data.actions[idx], stage.rewards[idx], data.next_observations[idx])
    batch += (data.terminals[idx],)
    v_loss, q_loss, _, grads = stage._losses_and_grads(*batch)

    s, a, r, s2, d = batch
    with torch.no_grad():
        q_t, v_next = stage.q_target(s, a).min(0).values, stage.v(s2)
    ref_v = expectile_loss(q_t - stage.v(s), cfg.critic.expectile)
    ref_q = twin_q_loss(stage.q(s, a), iql_q_target(r, d, v_next, cfg.critic.discount))
    ref = torch.autograd.grad(ref_v + ref_q, stage._params)
    torch.testing.assert_close(v_loss, ref_v.detach())
    torch.testing.assert_close(q_loss, ref_q.detach())
    assert len(grads) == len(ref) == 4 * (n_layers + 1)
    for mine, theirs in zip(grads, ref, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("layer_norm", [False, True])
def test_advantage_critic_hand_written_backward_equals_autograd(layer_norm):
    """critic.q_form=advantage: the networks are A, Q = V(s) + A(s, a) with V a constant in the Q loss, and V
    the expectile of r + gamma V_target(s'); the step's gradients equal autograd's on exactly those losses."""
    import numpy as np

    from srpo_cli.algos.critic import CriticStage
    from srpo_cli.config import RunConfig
    from srpo_cli.data.transitions import Transitions

    g = torch.Generator().manual_seed(1)
    n, obs, act = 256, 4, 3
    data = Transitions(
        dataset_id="test/random-v0",
        observations=torch.randn(n, obs, generator=g),
        actions=torch.rand(n, act, generator=g) * 2 - 1,
        rewards=torch.randn(n, generator=g),
        next_observations=torch.randn(n, obs, generator=g),
        terminals=(torch.rand(n, generator=g) < 0.1).float(),
        episode_returns=np.array([1.0, 5.0]),
        action_low=-np.ones(act, np.float32),
        action_high=np.ones(act, np.float32),
    )
    cfg = RunConfig()
    cfg.critic.hidden_dim, cfg.critic.q_form, cfg.critic.layer_norm = 32, "advantage", layer_norm
    stage = CriticStage(cfg, data, torch.device("cpu"))
    with torch.no_grad():
        for p in stage.q_target.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
        for p in stage.v.parameters():  # V apart from its target, so that each plays its own part
            p.add_(torch.randn(p.shape, generator=g) * 0.5)
        for p in stage.v_target.parameters():  # a target V far from zero: Q = V_target + A must carry it
            p.add_(torch.randn(p.shape, generator=g) * 0.5)
    idx = torch.arange(64)
    s, a, r, s2, d = (x[idx] for x in (data.observations, data.actions, stage.rewards, data.next_observations,
                                       data.terminals))  # fmt: skip
    v_loss, q_loss, _, grads = stage._losses_and_grads(s, a, r, s2, d)

    v = stage.v(s)
    with torch.no_grad():
        v_next, v_next_bar, v_const = stage.v(s2), stage.v_target(s2), stage.v(s)
    ref_v = expectile_loss(iql_q_target(r, d, v_next_bar, cfg.critic.discount) - v, cfg.critic.expectile)
    ref_q = twin_q_loss(v_const + stage.q(s, a), iql_q_target(r, d, v_next, cfg.critic.discount))
    ref = torch.autograd.grad(ref_v + ref_q, stage._params)
    torch.testing.assert_close(v_loss, ref_v.detach())
    torch.testing.assert_close(q_loss, ref_q.detach())
    for mine, theirs in zip(grads, ref, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6)
    # the direct form on the same networks is another loss: the switch is not a no-op
    stage.v_target = None
    assert not torch.allclose(stage._losses_and_grads(s, a, r, s2, d)[1], q_loss)


@pytest.mark.parametrize(
    ("reduce", "normalize", "weighting", "baseline", "normalize_obs", "n_q", "layer_norm"),
    [
        ("mean", False, "sigma2", False, False, 2, False),
        ("min", False, "one", True, False, 2, False),
        ("mean", True, "alpha_over_sigma", True, True, 2, False),
        ("min", True, "sigma2", False, False, 2, False),
        ("mean", False, "sigma2", True, False, 6, False),
        ("min", False, "sigma2", True, False, 6, False),
        ("mean", False, "sigma2", True, False, 2, True),
        ("min", True, "sigma2", False, True, 2, True),
    ],
)
def test_extraction_hand_written_gradients_equal_autograd(
    reduce, normalize, weighting, baseline, normalize_obs, n_q, layer_norm
):
    """The extraction step's actor gradients come from the actor's and Q's hand-written backward; with the
    same random draws they must equal autograd's on the spec-form loss (srpo_actor_loss)."""
    from srpo_cli.algos.extract import srpo_actor_grads, srpo_actor_loss
    from srpo_cli.config import ExtractConfig
    from srpo_cli.nn.diffusion import ScoreNet, VPSchedule
    from srpo_cli.nn.networks import TanhActor

    torch.manual_seed(0)
    actor = TanhActor(5, 3, 32, 2)
    with torch.no_grad():  # saturate some actions, where tanh's derivative matters
        actor.net[-1].bias.copy_(torch.tensor([2.0, 0.0, -1.0]))
    q_net = EnsembleQ(5, 3, 32, 2, n_q, normalize_obs=normalize_obs, layer_norm=layer_norm)
    if normalize_obs:
        q_net.obs_norm.set_statistics(torch.randn(5), torch.rand(5) + 0.5)
    q_net.requires_grad_(False)
    eps_net = ScoreNet(5, 3, hidden_dim=32, n_blocks=1).eval().requires_grad_(False)
    cfg = ExtractConfig(
        beta=0.3, q_reduce=reduce, normalize_q_grad=normalize, weighting=weighting, noise_baseline=baseline
    )
    s, sched = torch.randn(64, 5) * 2, VPSchedule()
    loss, score, _ = srpo_actor_loss(actor, s, eps_net, q_net, sched, cfg, torch.Generator().manual_seed(1))
    actor.zero_grad()
    loss.backward()
    expected = [p.grad.clone() for p in actor.parameters()]
    grads, loss2, score2, q2 = srpo_actor_grads(actor, s, eps_net, q_net, sched, cfg, torch.Generator().manual_seed(1))
    assert len(grads) == len(expected)
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(loss2, loss.detach())
    torch.testing.assert_close(score2, score.detach())
    q_all = q_net(s, actor(s).detach())
    torch.testing.assert_close(q2, (q_all.mean(0) if reduce == "mean" else q_all.min(0).values).mean())


@pytest.mark.parametrize("weighting", ["sigma2", "one"])
def test_regularizer_balance_against_a_gaussian_behavior_by_quadrature(weighting):
    """The score term's pull and the Q term's push, measured as the extraction would feel them, against the
    closed form for a Gaussian behavior N(mu, s_b^2) and a linear critic Q = <c, a>.

    For that behavior the exact noise predictor is eps(x, t) = sigma_t (x - alpha_t mu) / (alpha_t^2 s_b^2 +
    sigma_t^2), so an action d off mu along c feels E_t[w(t) alpha_t sigma_t d / (alpha_t^2 s_b^2 + sigma_t^2)]
    back toward mu, and the push is beta |c| everywhere."""
    from srpo_cli.algos.extract import regularizer_balance
    from srpo_cli.config import ExtractConfig
    from srpo_cli.nn.diffusion import VPSchedule

    schedule, s_b = VPSchedule(), 0.2
    mu = torch.tensor([0.1, -0.2, 0.0])
    c_vec = torch.tensor([3.0, 0.0, -4.0])  # |c| = 5; u = (0.6, 0, -0.8)

    def eps_net(x, s, t):
        alpha, sigma = schedule.alpha_sigma(t)
        return sigma[:, None] * (x - alpha[:, None] * mu) / (alpha[:, None] ** 2 * s_b**2 + sigma[:, None] ** 2)

    def q_net(s, a):
        return (a @ c_vec).unsqueeze(0).expand(2, -1)

    cfg = ExtractConfig(beta=0.02, weighting=weighting)
    s, a = torch.zeros(64, 1), mu.expand(64, 3)
    gen = torch.Generator().manual_seed(0)
    b = regularizer_balance(eps_net, q_net, schedule, s, a, cfg, gen, draws=2048, steps=(0.0, 0.1, 0.2, 0.5))
    t = torch.linspace(cfg.t_min, cfg.t_max, 20001, dtype=torch.float64)
    alpha, sigma = schedule.alpha_sigma(t)
    w = sigma**2 if weighting == "sigma2" else torch.ones_like(sigma)
    per_unit = float((w * alpha * sigma / (alpha**2 * s_b**2 + sigma**2)).mean())
    assert b.grad_norm == pytest.approx(5.0) and b.q_push == pytest.approx(0.1)
    assert b.score_pull[0] == pytest.approx(0.0, abs=0.01)
    for d, pull in zip(b.steps[1:], b.score_pull[1:], strict=True):
        assert pull == pytest.approx(per_unit * d, rel=0.05, abs=0.005), d
    # the pull grows linearly here, so the balance is where per_unit * d = beta |c| (0.46 and 0.16 off mu)
    assert b.balance_step == pytest.approx(0.1 / per_unit, rel=0.1)
    assert b.beta_for_step(0.2) == pytest.approx(per_unit * 0.2 / 5.0, rel=0.05)
    assert "they balance about" in b.describe()


def test_regularizer_balance_says_when_the_q_term_wins_everywhere():
    from srpo_cli.algos.extract import Balance

    held = Balance(beta=0.05, grad_norm=1.0, q_push=0.05, steps=(0.0, 0.1, 0.2), score_pull=(0.0, 0.03, 0.07))
    assert held.balance_step == pytest.approx(0.1 + 0.1 * 0.02 / 0.04)
    assert "balance about 0.15 off the data" in held.describe()
    lost = Balance(beta=0.2, grad_norm=4.0, q_push=0.8, steps=(0.0, 0.1, 0.2), score_pull=(0.0, 0.03, 0.07))
    assert lost.balance_step is None
    assert (
        "outweighs the score term at every distance up to 0.2, so the behavior model will not hold" in lost.describe()
    )
    assert "beta about 0.0175 would balance 0.2 off the data" in lost.describe()
    assert Balance(0.0, 1.0, 0.0, (0.0, 0.1), (0.01, 0.02)).balance_step == 0.0
    assert lost.as_dict()["balance_step"] is None and held.as_dict()["q_push"] == 0.05


def test_largest_beta_within_a_distance_by_hand():
    """auto_beta's rule: the strongest pull over [0, d] (linear between measured steps) over |dQ/da|; the push
    of the chosen beta is then matched within d (its balance step is at most d)."""
    from srpo_cli.algos.extract import Balance

    b = Balance(beta=0.05, grad_norm=2.0, q_push=0.1, steps=(0.0, 0.1, 0.2, 0.5), score_pull=(0.0, 0.04, 0.1, 0.3))
    assert b.largest_beta_within(0.2) == pytest.approx(0.999 * 0.1 / 2.0)
    assert b.largest_beta_within(0.15) == pytest.approx(0.999 * 0.07 / 2.0)  # between 0.1 and 0.2
    assert b.largest_beta_within(5.0) == pytest.approx(0.999 * 0.3 / 2.0)  # beyond the last step: the last pull
    # a pull that falls again (0.1 then 0.09): the strongest within the bound, and its crossing stays inside
    wavy = Balance(0.05, 1.0, 0.05, (0.0, 0.1, 0.2, 0.5), (0.0, 0.1, 0.09, 0.3))
    assert wavy.with_beta(wavy.largest_beta_within(0.2)).balance_step <= 0.1
    for d in (0.1, 0.15, 0.2, 0.35):
        chosen = b.with_beta(b.largest_beta_within(d))
        assert chosen.q_push == pytest.approx(chosen.beta * 2.0) and chosen.balance_step <= d + 1e-9
    # a pull that never points back (a behavior model that holds nothing) gives beta 0, never a negative one
    assert Balance(0.05, 1.0, 0.05, (0.0, 0.1), (-0.01, -0.02)).largest_beta_within(0.1) == 0.0
