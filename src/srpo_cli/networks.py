"""MLPs of the critic and the actor; the twin Q is one batched ensemble so both nets cost one matmul each layer."""

from __future__ import annotations

import math

import torch
from torch import nn


def mlp(in_dim: int, out_dim: int, hidden_dim: int, n_layers: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    d = in_dim
    for _ in range(n_layers):
        layers += [nn.Linear(d, hidden_dim), nn.ReLU()]
        d = hidden_dim
    layers.append(nn.Linear(d, out_dim))
    return nn.Sequential(*layers)


class ObsNormalizer(nn.Module):
    """s -> (s - mean) / std with the dataset's statistics, frozen as buffers so they travel in the checkpoint."""

    def __init__(self, obs_dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(obs_dim))
        self.register_buffer("std", torch.ones(obs_dim))

    def set_statistics(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.mean.copy_(mean)
        self.std.copy_(std)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        return (s - self.mean) / self.std


class EnsembleLinear(nn.Module):
    """E independent Linear layers applied with one batched matmul: x [E, B, in] -> [E, B, out]."""

    def __init__(self, n: int, in_dim: int, out_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n, in_dim, out_dim))
        self.bias = nn.Parameter(torch.empty(n, 1, out_dim))
        bound = 1.0 / math.sqrt(in_dim)  # nn.Linear's default init, member by member
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class EnsembleQ(nn.Module):
    """n Q-networks on concat[s, a]; returns [n, B]. With ``normalize_obs`` the states are standardized inside
    the module (statistics set once from the data), so every caller keeps passing raw states."""

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        hidden_dim: int = 256,
        n_layers: int = 2,
        n: int = 2,
        normalize_obs: bool = False,
    ):
        super().__init__()
        self.n = n
        self.obs_norm = ObsNormalizer(obs_dim) if normalize_obs else None
        dims = [obs_dim + action_dim] + [hidden_dim] * n_layers + [1]
        self.layers = nn.ModuleList([EnsembleLinear(n, i, o) for i, o in zip(dims[:-1], dims[1:], strict=False)])

    def forward(self, s: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        if self.obs_norm is not None:
            s = self.obs_norm(s)
        x = torch.cat([s, a], dim=-1).unsqueeze(0).expand(self.n, -1, -1)
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = torch.relu(x)
        return x.squeeze(-1)


class ValueNet(nn.Module):
    def __init__(self, obs_dim: int, hidden_dim: int = 256, n_layers: int = 2, normalize_obs: bool = False):
        super().__init__()
        self.obs_norm = ObsNormalizer(obs_dim) if normalize_obs else None
        self.net = mlp(obs_dim, 1, hidden_dim, n_layers)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        if self.obs_norm is not None:
            s = self.obs_norm(s)
        return self.net(s).squeeze(-1)


class TanhActor(nn.Module):
    """Deterministic ("Dirac") policy a = tanh(MLP(s)) in [-1, 1]; also the AWR and BC policies."""

    def __init__(self, obs_dim: int, action_dim: int, hidden_dim: int = 256, n_layers: int = 2):
        super().__init__()
        self.net = mlp(obs_dim, action_dim, hidden_dim, n_layers)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(s))


@torch.no_grad()
def polyak_update(target: list[torch.Tensor], online: list[torch.Tensor], tau: float) -> None:
    """target <- (1 - tau) target + tau online, as one fused foreach kernel over all tensors."""
    torch._foreach_lerp_(target, online, tau)
