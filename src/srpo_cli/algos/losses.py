"""The losses of the three stages (and of the AWR/BC baselines), as pure functions of tensors."""

from __future__ import annotations

import torch


def expectile_loss(u: torch.Tensor, expectile: float) -> torch.Tensor:
    """mean(|tau - 1[u < 0]| u^2), u = target - prediction."""
    weight = torch.where(u < 0, 1.0 - expectile, expectile)
    return (weight * u**2).mean()


def expectile_loss_and_grad(u: torch.Tensor, expectile: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``expectile_loss(u)`` and its gradient d loss / d u = 2 |tau - 1[u < 0]| u / B."""
    weight = torch.where(u < 0, 1.0 - expectile, expectile)
    wu = weight * u
    return (wu * u).mean(), wu.mul_(2.0 / u.numel())


def iql_q_target(r: torch.Tensor, d: torch.Tensor, v_next: torch.Tensor, discount: float) -> torch.Tensor:
    """y = r~ + gamma (1 - d) V(s'): d is the termination flag only, never a truncation."""
    return r + discount * (1.0 - d) * v_next


def twin_q_loss(q: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """1/2 (MSE(Q1, y) + MSE(Q2, y)) for q of shape [2, B]; with n members 1/2 the sum of their n MSEs (each
    member's gradient is the twin Q's, whatever n)."""
    return 0.5 * ((q - y.unsqueeze(0)) ** 2).mean(-1).sum()


def twin_q_loss_and_grad(q: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``twin_q_loss(q, y)`` and its gradient d loss / d q = (q - y) / B."""
    diff = q - y.unsqueeze(0)
    return 0.5 * (diff * diff).mean(-1).sum(), diff.mul_(1.0 / q.shape[-1])


def srpo_weight(alpha_t: torch.Tensor, sigma_t: torch.Tensor, weighting: str) -> torch.Tensor:
    if weighting == "sigma2":
        return sigma_t**2
    if weighting == "one":
        return torch.ones_like(sigma_t)
    if weighting == "alpha_over_sigma":
        return alpha_t / sigma_t
    raise ValueError(f"unknown weighting {weighting!r}")


def _score_term(a: torch.Tensor, eps: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """mean_batch w(t) <e, a>, e detached: the score regularizer of both SRPO loss forms."""
    return (w * (eps.detach() * a).sum(-1)).mean()


def srpo_loss(
    a: torch.Tensor, eps: torch.Tensor, w: torch.Tensor, q_grad: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """mean(w(t) <e, a> - beta <g, a>), with e and g detached so the gradient flows only through a = pi(s).

    Returns (loss, score term, Q term) for logging.
    """
    score_term = _score_term(a, eps, w)
    q_term = (q_grad.detach() * a).sum(-1).mean()
    return score_term - beta * q_term, score_term, q_term


def srpo_loss_through_q(
    a: torch.Tensor, eps: torch.Tensor, w: torch.Tensor, q: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The same loss gradient as ``srpo_loss`` when ``q`` = Q(s, a) of a frozen Q, still attached to a.

    Returns (loss, score term, mean Q) for logging.
    """
    score_term = _score_term(a, eps, w)
    q_mean = q.mean()
    return score_term - beta * q_mean, score_term, q_mean.detach()


def weighted_regression_loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """AWR/BC: mean(weight * ||pi(s) - a||^2)."""
    return (weight * ((pred - target) ** 2).sum(-1)).mean()
