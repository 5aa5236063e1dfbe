"""The VP-SDE noise schedule, the eps-network of the behavior model, its loss, and an ODE sampler."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F


class VPSchedule:
    """Linear beta(t) VP-SDE: log alpha_t = -(beta_1 - beta_0) t^2 / 4 - beta_0 t / 2, sigma_t^2 = 1 - alpha_t^2."""

    def __init__(self, beta_0: float = 0.1, beta_1: float = 20.0):
        self.beta_0, self.beta_1 = beta_0, beta_1

    def log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        return -0.25 * t**2 * (self.beta_1 - self.beta_0) - 0.5 * t * self.beta_0

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_alpha = self.log_alpha(t)
        alpha_t = torch.exp(log_alpha)
        # -expm1(2 log alpha) keeps sigma_t accurate near t = 0 where 1 - alpha^2 cancels.
        sigma_t = torch.sqrt(-torch.expm1(2.0 * log_alpha))
        return alpha_t, sigma_t

    def lambda_(self, t: torch.Tensor) -> torch.Tensor:
        """Half log-SNR, log(alpha_t / sigma_t): the time variable of DPM-Solver."""
        alpha_t, sigma_t = self.alpha_sigma(t)
        return torch.log(alpha_t) - torch.log(sigma_t)


def _mish_formula(x: torch.Tensor) -> torch.Tensor:
    """mish(x) = x tanh(softplus(x)) without softplus: tanh(log(1 + e^x)) = w / (w + 2), w = e^x (e^x + 2).

    One exp and a few multiply-adds instead of ATen's softplus and tanh element by element; exact to float
    rounding. Beyond x = 20, tanh(softplus(x)) == 1 in float32, hence the clamp before exp.
    """
    e = torch.exp(x.clamp(max=20.0))
    w = (e + 2.0) * e
    return x * (w / (w + 2.0))


def _mish_grad_formula(x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """grad * d/dx mish(x) = grad * (t + x sigmoid(x) (1 - t^2)), t = tanh(softplus(x)), from x alone."""
    e = torch.exp(x.clamp(max=20.0))
    w = (e + 2.0) * e
    t = w / (w + 2.0)
    return grad * (t + x * (e / (e + 1.0)) * (1.0 - t * t))


class _FusedKernels:
    """The two formulas above, each compiled by inductor into one loop over the tensor (one read of x, one
    write), shared by every Mish in the process and compiled on first use, once per dtype.

    In eager torch each formula is 7-9 element-wise passes, and exp and the divisions run once per pass: on
    a 2-core CPU a 2048x1024 fp32 Mish took 8.85 ms forward and backward, the fused pair 2.15 ms, and the
    behavior net's training step 2-8% less (``tools/perf/bench_mish.py``). They need a C++ compiler at run time; where torch.compile cannot
    build them, ``CompiledOrEager`` warns once and runs the same formulas in eager.
    """

    def __init__(self) -> None:
        self.forward: Callable[[torch.Tensor], torch.Tensor] | None = None
        self.backward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None

    def build(self) -> None:
        from srpo_cli.nn.compile import CompiledOrEager  # loads inductor's config: only when a Mish is fused

        hint = "Set behavior.fused_mish to false to skip the attempt."
        # dynamic: one kernel for every shape (batch sizes, the 128-, 256- and 1024-wide layers)
        self.forward = CompiledOrEager(_mish_formula, "the fused Mish", hint=hint, dynamic=True)
        self.backward = CompiledOrEager(_mish_grad_formula, "the fused Mish gradient", hint=hint, dynamic=True)


_FUSED = _FusedKernels()


class _FusedMishFunction(torch.autograd.Function):
    """Mish with the fused kernels; saves only x (the eager form saved three tensors of x's size)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return _FUSED.forward(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return _FUSED.backward(x, grad)


class _MishFunction(torch.autograd.Function):
    """The eager form of ``_mish_formula`` with its hand-written backward (no fused kernels)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        e = torch.exp(x.clamp(max=20.0))
        t = (e + 2.0).mul_(e)
        t.div_(t + 2.0)
        ctx.save_for_backward(x, t, e)
        return x * t

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        x, t, e = ctx.saved_tensors
        # d/dx mish = t + x * sigmoid(x) * (1 - t^2)
        sig = e / (e + 1.0)
        d = torch.addcmul(t, sig.mul_(x), torch.addcmul(torch.ones_like(t), t, t, value=-1.0))
        return grad * d


def _mish_no_grad(x: torch.Tensor) -> torch.Tensor:
    """The eager formula when nothing needs a backward: in place, two temporaries instead of five."""
    e = x.clamp(max=20.0).exp_()
    w = e.add(2.0).mul_(e)
    # w / (w + 2) = 1 - 2 / (w + 2)
    return w.add_(2.0).reciprocal_().mul_(-2.0).add_(1.0).mul_(x)


def mish(x: torch.Tensor, fused: bool = False) -> torch.Tensor:
    """Mish; ``fused``: on a CPU, by the inductor-compiled kernels (see ``_FusedKernels``)."""
    if x.device.type != "cpu":
        # On a GPU ATen's mish is already one fused kernel each way, where the form above is several: on
        # the H200 our behavior step ran at 0.93x the reference's (which uses ATen's) with it.
        return F.mish(x)
    if torch.compiler.is_compiling():
        return _mish_formula(x)  # inside a compiled graph already: let that compilation fuse it
    needs_grad = torch.is_grad_enabled() and x.requires_grad
    if fused:
        if _FUSED.forward is None:
            _FUSED.build()
        # autocast would run the kernels' ops in its own dtypes; they compute in x's dtype (bf16 under autocast)
        with torch.autocast("cpu", enabled=False):
            return _FusedMishFunction.apply(x) if needs_grad else _FUSED.forward(x)
    if needs_grad:
        return _MishFunction.apply(x)
    return _mish_no_grad(x)


class Mish(nn.Module):
    def __init__(self, fused: bool = False):
        super().__init__()
        self.fused = fused

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return mish(x, self.fused)


class Dropout(nn.Module):
    """nn.Dropout with a faster mask on CPU: 32 random bits per element, drawn 64 at a time.

    ATen's CPU dropout draws one float per element (bernoulli_): about 20 ms of each behavior step at batch
    2048, a sixth of it in bf16. Comparing raw 32-bit integers against round(p * 2^32) keeps an element with
    probability 1 - p to within 2^-32, finer than the float draw's 2^-24, at a third of the cost. Same
    global generator as nn.Dropout, so a seed and a resumed run reproduce it. Other devices use F.dropout.
    """

    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p
        self._threshold = round(p * 2**32) - 2**31  # int32 r >= threshold with probability 1 - p

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return h
        if h.device.type != "cpu":
            return F.dropout(h, self.p, True)
        n = h.numel()
        bits = torch.randint(-(2**63), 2**63 - 1, ((n + 1) // 2,), dtype=torch.int64, device=h.device)
        keep = bits.view(torch.int32)[:n].view(h.shape) >= self._threshold
        return h * keep.to(h.dtype).mul_(1.0 / (1.0 - self.p))

    def extra_repr(self) -> str:
        return f"p={self.p}"


class GaussianFourierFeatures(nn.Module):
    """Fixed random frequencies W ~ N(0, scale^2): random per seed, never trained, saved as a buffer."""

    def __init__(self, n_freq: int = 32, scale: float = 30.0):
        super().__init__()
        self.register_buffer("W", torch.randn(n_freq) * scale)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        proj = t[:, None] * self.W[None, :] * (2.0 * math.pi)
        return torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)


class LNResBlock(nn.Module):
    """h + Linear(Mish(Linear(LayerNorm(Dropout(h))))): the IDQL block, without the reference's unused Linear."""

    def __init__(self, dim: int, expansion: int, dropout: float, fused_mish: bool = False):
        super().__init__()
        self.dropout = Dropout(dropout)
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, dim * expansion)
        self.act = Mish(fused_mish)
        self.fc2 = nn.Linear(dim * expansion, dim)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.fc2(self.act(self.fc1(self.norm(self.dropout(h)))))


class ScoreNet(nn.Module):
    """eps_phi(a_t, s, t): predicts the noise that was added to the action."""

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        hidden_dim: int = 256,
        n_blocks: int = 3,
        expansion: int = 4,
        dropout: float = 0.1,
        fourier_dim: int = 32,
        fourier_scale: float = 30.0,
        time_dim: int = 128,
        fused_mish: bool = False,
    ):
        super().__init__()
        self.obs_dim, self.action_dim = obs_dim, action_dim
        self.fourier = GaussianFourierFeatures(fourier_dim, fourier_scale)
        self.time_mlp = nn.Sequential(
            nn.Linear(2 * fourier_dim, time_dim), Mish(fused_mish), nn.Linear(time_dim, time_dim)
        )
        self.inp = nn.Linear(action_dim + obs_dim + time_dim, hidden_dim)
        self.blocks = nn.ModuleList([LNResBlock(hidden_dim, expansion, dropout, fused_mish) for _ in range(n_blocks)])
        self.head = nn.Sequential(Mish(fused_mish), nn.Linear(hidden_dim, action_dim))

    @classmethod
    def from_config(cls, obs_dim: int, action_dim: int, cfg) -> ScoreNet:
        return cls(
            obs_dim,
            action_dim,
            hidden_dim=cfg.hidden_dim,
            n_blocks=cfg.n_blocks,
            expansion=cfg.block_expansion,
            dropout=cfg.dropout,
            fourier_dim=cfg.fourier_dim,
            fourier_scale=cfg.fourier_scale,
            time_dim=cfg.time_dim,
            fused_mish=cfg.fused_mish,
        )

    def forward(self, a_t: torch.Tensor, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.time_mlp(self.fourier(t))
        h = self.inp(torch.cat([a_t, s, emb], dim=-1))
        for block in self.blocks:
            h = block(h)
        return self.head(h)


def eps_loss(
    net: nn.Module,
    schedule: VPSchedule,
    a: torch.Tensor,
    s: torch.Tensor,
    t_min: float,
    t_max: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """mean_batch sum_dims (eps_phi(alpha_t a + sigma_t z, s, t) - z)^2, t ~ U(t_min, t_max)."""
    b = a.shape[0]
    t = torch.rand(b, device=a.device, generator=generator) * (t_max - t_min) + t_min
    z = torch.randn(a.shape, device=a.device, generator=generator)
    alpha_t, sigma_t = schedule.alpha_sigma(t)
    a_t = alpha_t[:, None] * a + sigma_t[:, None] * z
    return ((net(a_t, s, t) - z) ** 2).sum(-1).mean()


@torch.no_grad()
def sample_actions(
    net: nn.Module,
    schedule: VPSchedule,
    s: torch.Tensor,
    steps: int,
    generator: torch.Generator | None = None,
    t_end: float = 1e-3,
    clip: float = 1.0,
) -> torch.Tensor:
    """Draw actions a ~ mu(.|s) with the first-order DPM-Solver (= DDIM) on the probability-flow ODE.

    Time steps are uniform in lambda = log(alpha/sigma) from t = 1 to ``t_end``.
    """
    b = s.shape[0]
    dev = s.device
    x = torch.randn(b, net.action_dim, device=dev, generator=generator)
    t_grid = _lambda_uniform_times(schedule, steps, t_end, dev)
    for i in range(steps):
        t_cur, t_next = t_grid[i], t_grid[i + 1]
        a_cur, s_cur = schedule.alpha_sigma(t_cur)
        a_next, s_next = schedule.alpha_sigma(t_next)
        h = torch.log(a_next / s_next) - torch.log(a_cur / s_cur)
        eps = net(x, s, t_cur.expand(b))
        x = (a_next / a_cur) * x - s_next * torch.expm1(h) * eps
    return x.clamp(-clip, clip)


def _lambda_uniform_times(schedule: VPSchedule, steps: int, t_end: float, device) -> torch.Tensor:
    """Invert lambda(t) on a uniform lambda grid (closed form for the linear-beta VP-SDE)."""
    t_hi = torch.tensor(1.0, dtype=torch.float64)
    t_lo = torch.tensor(t_end, dtype=torch.float64)
    lam_hi, lam_lo = _lam64(schedule, t_hi), _lam64(schedule, t_lo)
    lams = torch.linspace(float(lam_hi), float(lam_lo), steps + 1, dtype=torch.float64)
    # lambda = log alpha - 0.5 log(1 - alpha^2) => log alpha = -0.5 softplus(-2 lambda)
    log_alpha = -0.5 * F.softplus(-2.0 * lams)
    db = schedule.beta_1 - schedule.beta_0
    # solve 0.25 db t^2 + 0.5 beta_0 t + log_alpha = 0 for t >= 0
    t = (-0.5 * schedule.beta_0 + torch.sqrt(0.25 * schedule.beta_0**2 - db * log_alpha)) / (0.5 * db)
    return t.to(torch.float32).to(device)


def _lam64(schedule: VPSchedule, t: torch.Tensor) -> torch.Tensor:
    log_alpha = -0.25 * t**2 * (schedule.beta_1 - schedule.beta_0) - 0.5 * t * schedule.beta_0
    return log_alpha - 0.5 * torch.log(-torch.expm1(2 * log_alpha))
