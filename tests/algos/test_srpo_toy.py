"""SRPO on the paper's bandit: one state, a two-mode behavior and a known Q.

The behavior score is exact (the diffused Gaussian mixture has a closed-form score), so these tests check
the extraction maths alone: the sign and weighting of the score term, the Q gradient, beta's role.
"""

import math

import pytest
import torch

from srpo_cli.algos.extract import srpo_actor_loss
from srpo_cli.config import ExtractConfig
from srpo_cli.nn.diffusion import VPSchedule
from srpo_cli.nn.networks import TanhActor

SCHEDULE = VPSchedule()
MODES = torch.tensor([-0.6, 0.6])  # behavior: two equally likely modes...
MODE_STD = 0.05


def exact_eps(a_t, s, t):
    """eps(a_t, t) = -sigma_t * grad log p_t(a_t) for p_0 = 0.5 N(-0.6, 0.05^2) + 0.5 N(0.6, 0.05^2)."""
    alpha, sigma = (x[:, None] for x in SCHEDULE.alpha_sigma(t))
    var = alpha**2 * MODE_STD**2 + sigma**2
    logp = -0.5 * (a_t - alpha * MODES) ** 2 / var - 0.5 * torch.log(var)
    resp = torch.softmax(logp, -1)
    score = (resp * (-(a_t - alpha * MODES) / var)).sum(-1, keepdim=True)
    return -sigma * score


def q_twin(s, a):
    """...and Q(a) = a: the right mode is better, argmax Q is a = 1, outside the data."""
    return torch.stack([a[:, 0], a[:, 0]])


def train(beta: float, start: float, weighting: str = "sigma2", steps: int = 1200) -> float:
    torch.manual_seed(0)
    actor = TanhActor(1, 1, 32, 2)
    with torch.no_grad():  # start the policy exactly at `start`
        actor.net[-1].weight.zero_()
        actor.net[-1].bias.fill_(math.atanh(start))
    opt = torch.optim.Adam(actor.parameters(), 3e-3)
    g = torch.Generator().manual_seed(0)
    cfg = ExtractConfig(beta=beta, weighting=weighting)
    s = torch.zeros(256, 1)
    for _ in range(steps):
        loss, _, _ = srpo_actor_loss(actor, s, exact_eps, q_twin, SCHEDULE, cfg, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return float(actor(torch.zeros(1, 1)))


@pytest.mark.parametrize("start", [-0.3, 0.3])
def test_small_beta_settles_on_the_nearest_behavior_mode(start):
    # Weighting alpha/sigma stresses small t, where the score of the mixture is two-moded; the policy
    # stays on the mode it starts near, even the worse one: the regularizer dominates.
    a = train(beta=0.001, start=start, weighting="alpha_over_sigma")
    assert a == pytest.approx(0.6 * math.copysign(1, start), abs=0.1)


@pytest.mark.parametrize("start", [-0.8, 0.3])
def test_intermediate_beta_picks_the_mode_with_higher_q(start):
    a = train(beta=0.1, start=start)  # the reference weighting sigma_t^2
    assert a == pytest.approx(0.6, abs=0.1)


def test_large_beta_moves_to_argmax_q():
    assert train(beta=10.0, start=-0.3) > 0.95


def test_tiny_beta_with_sigma2_weighting_is_mean_seeking():
    # Measured property, recorded so a change shows up: w = sigma^2 stresses large t, where the diffused
    # mixture is one bump centred between the modes, so with almost no Q signal the policy sits near the
    # behavior's mean rather than on a mode.
    assert abs(train(beta=0.001, start=-0.5)) < 0.2
