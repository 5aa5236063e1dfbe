import math

import numpy as np
import pytest
import torch

from srpo_cli.config import BehaviorConfig
from srpo_cli.nn.diffusion import Dropout, ScoreNet, VPSchedule, _lambda_uniform_times, eps_loss, sample_actions


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


@pytest.mark.parametrize("fused", [False, True])
def test_fast_mish_is_mish(fused):
    from srpo_cli.nn.diffusion import mish

    x = torch.cat([torch.linspace(-30, 30, 2001, dtype=torch.float64), torch.randn(500, dtype=torch.float64)])
    torch.testing.assert_close(mish(x, fused), torch.nn.functional.mish(x))  # no-grad path (frozen nets)
    xg = x.clone().requires_grad_()
    torch.testing.assert_close(mish(xg, fused).detach(), torch.nn.functional.mish(x))  # autograd path
    mish(xg, fused).sum().backward()
    xr = x.clone().requires_grad_()
    torch.nn.functional.mish(xr).sum().backward()
    torch.testing.assert_close(xg.grad, xr.grad)
    x20 = torch.randn(20, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: mish(v, fused), (x20,))
    x32 = torch.randn(1000) * 5
    torch.testing.assert_close(mish(x32, fused), torch.nn.functional.mish(x32), atol=1e-6, rtol=1e-5)


def test_fused_mish_in_bf16_autocast_keeps_the_dtype_and_the_values():
    """Under the behavior stage's bf16 autocast the fused kernels get bf16 tensors: they must return bf16
    (autocast must not turn their element-wise ops to fp32) and be as close to Mish as bf16 allows."""
    from srpo_cli.nn.diffusion import mish

    x = (torch.randn(256, 1024) * 4).bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = mish(x, True)
    assert y.dtype == torch.bfloat16
    g = torch.randn(256, 1024).bfloat16()
    y.backward(g)
    xf = x.detach().float().requires_grad_()
    ref = torch.nn.functional.mish(xf)
    ref.backward(g.float())
    torch.testing.assert_close(y.float(), ref, atol=0.05, rtol=0.02)
    torch.testing.assert_close(x.grad.float(), xf.grad, atol=0.05, rtol=0.02)


def test_the_fused_behavior_net_trains_like_the_eager_one():
    """fused_mish changes how Mish is computed, not the network: same outputs and parameter gradients."""
    torch.manual_seed(0)
    eager = ScoreNet(11, 3, fused_mish=False).eval()
    fused = ScoreNet(11, 3, fused_mish=True).eval()
    fused.load_state_dict(eager.state_dict())
    a, s, t = torch.randn(64, 3), torch.randn(64, 11), torch.rand(64)
    outs = []
    for net in (eager, fused):
        out = net(a, s, t)
        out.square().sum().backward()
        outs.append(out.detach())
    torch.testing.assert_close(outs[1], outs[0], atol=1e-5, rtol=1e-5)
    for pe, pf in zip(eager.parameters(), fused.parameters(), strict=True):
        torch.testing.assert_close(pf.grad, pe.grad, atol=1e-4, rtol=1e-4)


def test_fused_mish_falls_back_to_eager_with_a_warning(monkeypatch, capsys):
    """No C++ compiler: the fused Mish warns once, naming the field that turns it off, and computes Mish."""
    from srpo_cli.nn import diffusion

    def no_compiler(fn, **kwargs):
        def fails(*args, **kw):
            raise RuntimeError("C++ compile error: no compiler found")  # what inductor raises, in short

        return fails

    monkeypatch.setattr(torch, "compile", no_compiler)
    monkeypatch.setattr(diffusion, "_FUSED", diffusion._FusedKernels())
    x = torch.randn(300, requires_grad=True)
    y = diffusion.mish(x, True)
    y.sum().backward()
    torch.testing.assert_close(y.detach(), torch.nn.functional.mish(x.detach()))
    err = capsys.readouterr().err
    assert "torch.compile of the fused Mish failed" in err and "behavior.fused_mish" in err


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
