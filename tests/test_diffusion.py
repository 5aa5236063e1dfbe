import math

import numpy as np
import pytest
import torch

from srpo_cli.config import BehaviorConfig
from srpo_cli.diffusion import Dropout, ScoreNet, VPSchedule, _lambda_uniform_times, eps_loss, sample_actions


def test_schedule_check_points():
    sch = VPSchedule(0.1, 20.0)
    a, s = sch.alpha_sigma(torch.tensor([0.5, 0.02], dtype=torch.float64))
    assert float(a[0]) == pytest.approx(0.2812, abs=1e-4)
    assert float(s[0]) == pytest.approx(0.9597, abs=1e-4)
    assert float(a[1]) == pytest.approx(0.99701, abs=1e-5)
    assert float(s[1]) ** 2 == pytest.approx(0.00596, abs=1e-5)
    torch.testing.assert_close(a**2 + s**2, torch.ones(2, dtype=torch.float64))


def test_lambda_grid_inverts_the_schedule():
    sch = VPSchedule()
    t = _lambda_uniform_times(sch, 10, 1e-3, "cpu").double()
    assert float(t[0]) == pytest.approx(1.0, abs=1e-5) and float(t[-1]) == pytest.approx(1e-3, abs=1e-6)
    lam = sch.lambda_(t)
    steps = lam[1:] - lam[:-1]
    torch.testing.assert_close(steps, steps.mean().expand_as(steps), atol=1e-3, rtol=1e-3)


def test_parameter_count_for_hopper_dims():
    net = ScoreNet.from_config(11, 3, BehaviorConfig())
    trained = sum(p.numel() for p in net.parameters())
    fixed = net.fourier.W.numel()
    assert trained + fixed == 1_640_483  # the spec's count of working parameters (incl. the 32 frequencies)


def test_fourier_features_are_fixed_but_saved():
    torch.manual_seed(0)
    net = ScoreNet(3, 1)
    assert "fourier.W" in net.state_dict()
    assert all("fourier" not in n for n, _ in net.named_parameters())
    W = net.fourier.W.clone()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    loss = eps_loss(net, VPSchedule(), torch.rand(8, 1), torch.rand(8, 3), 0.001, 1.0, g)
    loss.backward()
    opt.step()
    assert torch.equal(W, net.fourier.W)
    torch.manual_seed(1)
    assert not torch.equal(W, ScoreNet(3, 1).fourier.W)  # random per seed


def test_behavior_model_recovers_state_conditioned_modes():
    """mu(a|s): s=+1 -> modes at +0.5 (70%) and -0.5 (30%); s=-1 -> a single mode at -0.2."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    n = 4096
    s = torch.where(torch.rand(n, generator=g) < 0.5, 1.0, -1.0)[:, None]
    upper = torch.rand(n, generator=g) < 0.7
    a_pos = torch.where(upper, 0.5, -0.5) + 0.03 * torch.randn(n, generator=g)
    a_neg = -0.2 + 0.03 * torch.randn(n, generator=g)
    a = torch.where(s[:, 0] > 0, a_pos, a_neg)[:, None]
    net = ScoreNet(1, 1, hidden_dim=64, n_blocks=2, expansion=2, dropout=0.0, time_dim=32)
    sch = VPSchedule()
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    for _ in range(1500):
        idx = torch.randint(0, n, (256,), generator=g)
        loss = eps_loss(net, sch, a[idx], s[idx], 1e-3, 1.0, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    out_pos = sample_actions(net, sch, torch.ones(2000, 1), 20, g)[:, 0].numpy()
    out_neg = sample_actions(net, sch, -torch.ones(2000, 1), 20, g)[:, 0].numpy()
    upper_frac = float(np.mean(out_pos > 0))
    assert upper_frac == pytest.approx(0.7, abs=0.08)
    assert np.median(out_pos[out_pos > 0]) == pytest.approx(0.5, abs=0.06)
    assert np.median(out_pos[out_pos < 0]) == pytest.approx(-0.5, abs=0.06)
    assert np.median(out_neg) == pytest.approx(-0.2, abs=0.06)
    assert np.mean(np.abs(out_neg + 0.2) < 0.15) > 0.85
    assert math.isfinite(float(loss))


def test_fast_mish_is_mish():
    from srpo_cli.diffusion import mish

    x = torch.cat([torch.linspace(-30, 30, 2001, dtype=torch.float64), torch.randn(500, dtype=torch.float64)])
    torch.testing.assert_close(mish(x), torch.nn.functional.mish(x))  # no-grad path (frozen nets)
    xg = x.clone().requires_grad_()
    torch.testing.assert_close(mish(xg).detach(), torch.nn.functional.mish(x))  # autograd path
    mish(xg).sum().backward()
    xr = x.clone().requires_grad_()
    torch.nn.functional.mish(xr).sum().backward()
    torch.testing.assert_close(xg.grad, xr.grad)
    assert torch.autograd.gradcheck(mish, (torch.randn(20, dtype=torch.float64, requires_grad=True),))
    x32 = torch.randn(1000) * 5
    torch.testing.assert_close(mish(x32), torch.nn.functional.mish(x32), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_drops_with_probability_p_and_rescales_like_nn_dropout(p):
    """The behavior net's CPU dropout draws its own mask: it must keep each element with probability 1 - p
    (independently of position: odd and even elements come from the two halves of one 64-bit draw), scale
    kept elements by 1 / (1 - p), pass gradients through the same mask, and be the identity in eval mode."""
    torch.manual_seed(0)
    drop = Dropout(p)
    x = torch.ones(1001, 513, requires_grad=True)  # odd sizes: the mask's last 64-bit draw is half used
    y = drop(x)
    kept = y != 0
    n = kept.numel()
    tol = 5 * math.sqrt(p * (1 - p) / n)  # 5 standard errors
    assert abs(kept.float().mean().item() - (1 - p)) < tol
    assert abs(kept[:, ::2].float().mean().item() - (1 - p)) < 2 * tol
    assert abs(kept[:, 1::2].float().mean().item() - (1 - p)) < 2 * tol
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 1 / (1 - p)))
    y.sum().backward()
    torch.testing.assert_close(x.grad, y.detach())
    torch.manual_seed(0)
    assert torch.equal(Dropout(p)(torch.ones(1001, 513)), y.detach())  # the seed reproduces it
    drop.eval()
    assert torch.equal(drop(x), x)
    with pytest.raises(ValueError):
        Dropout(1.0)
