"""MLPs of the critic and the actor; the twin Q is one batched ensemble so both nets cost one matmul each layer.

Q and V also have a hand-written backward (``forward_cached`` / ``backward_cached``): the critic's step is small
matmuls at batch 256, where autograd's bookkeeping, the bias copies and allocations of its generic backward
cost about a fifth of the step on a CPU. The gradients are the same (a test compares them with autograd).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# torch's default; the critic's optional LayerNorm has no affine weights (the next Linear can absorb them)
LAYER_NORM_EPS = 1e-5


# d layer_norm / d input from the row statistics saved by torch.native_layer_norm (what autograd calls)
_layer_norm_backward = torch.ops.aten.native_layer_norm_backward


# d relu: grad where the ReLU's output is > 0, else 0 (one pass; what autograd's ReluBackward calls)
_relu_backward = torch.ops.aten.threshold_backward


def _weight_grad(g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """g^T x [out, in] for a Linear's output gradient g [B, out] and input x [B, in]."""
    if x.shape[1] < g.shape[1]:
        return x.t().mm(g).t().contiguous()
    return g.t().mm(x)


def _input_grad(g: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """g W [B, in] for g [B, out] and a Linear's weight [out, in] (or [E, B, out] and [E, out, in] ensembles
    written as [E, in, out] weights: the caller passes the transposed view)."""
    if g.shape[-1] == 1:
        return g * weight  # an outer product: broadcast, not a gemm with an inner dimension of 1
    return g.matmul(weight)


def mlp(in_dim: int, out_dim: int, hidden_dim: int, n_layers: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    d = in_dim
    for _ in range(n_layers):
        layers += [nn.Linear(d, hidden_dim), nn.ReLU()]
        d = hidden_dim
    layers.append(nn.Linear(d, out_dim))
    return nn.Sequential(*layers)


def mlp_forward_cached(linears: tuple[nn.Linear, ...], x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """An ``mlp`` forward without autograd that keeps each Linear's input for ``mlp_backward_cached``; the
    ReLUs run in place on the Linear outputs (their output > 0 is also the mask their backward needs)."""
    inputs = []
    for i, lin in enumerate(linears):
        inputs.append(x)
        x = torch.addmm(lin.bias, x, lin.weight.t())
        if i < len(linears) - 1:
            x = x.relu_()
    return x, inputs


def mlp_backward_cached(
    linears: tuple[nn.Linear, ...],
    g: torch.Tensor,
    inputs: list[torch.Tensor],
    weights: list[torch.Tensor] | None = None,
) -> list[torch.Tensor]:
    """d loss / d parameters (bias and weight of each Linear, in ``parameters()`` order) from d loss / d output
    [B, out]. The input of Linear i > 0 is the ReLU output of Linear i - 1, so it is also that ReLU's mask.
    ``weights``: the Linears' weights passed as tensors instead of read from the modules (see
    ``TanhActor.backward_cached``)."""
    if weights is None:
        weights = [lin.weight for lin in linears]
    grads: list[torch.Tensor] = []
    for i in range(len(linears) - 1, -1, -1):
        grads += [g.sum(0), _weight_grad(g, inputs[i])]  # bias, weight
        if i > 0:
            g = _relu_backward(_input_grad(g, weights[i]), inputs[i], 0)
    return grads[::-1]


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
        if self.weight.shape[-1] == 1:  # a head: a multiply and a sum, not a gemm with N = 1 (see above)
            return (x * self.weight.transpose(1, 2)).sum(-1, keepdim=True) + self.bias
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
        layer_norm: bool = False,
    ):
        super().__init__()
        self.n = n
        self.layer_norm = layer_norm
        self.obs_norm = ObsNormalizer(obs_dim) if normalize_obs else None
        dims = [obs_dim + action_dim] + [hidden_dim] * n_layers + [1]
        self.layers = nn.ModuleList([EnsembleLinear(n, i, o) for i, o in zip(dims[:-1], dims[1:], strict=False)])

    def _input(self, s: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        if self.obs_norm is not None:
            s = self.obs_norm(s)
        return torch.cat([s, a], dim=-1).unsqueeze(0).expand(self.n, -1, -1)

    def forward(self, s: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        x = self._input(s, a)
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = torch.relu(x)
                if self.layer_norm:
                    x = F.layer_norm(x, x.shape[-1:], eps=LAYER_NORM_EPS)
        return x.squeeze(-1)

    @torch.no_grad()
    def forward_cached(self, s: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Q [n, B] and what ``backward_cached`` needs: each layer's input, then, with ``layer_norm``, each
        hidden layer's ReLU output and its rows' mean and reciprocal standard deviation (no autograd)."""
        x = self._input(s, a)
        inputs, norm_cache = [], []
        for i, layer in enumerate(self.layers):
            inputs.append(x)
            x = layer(x)
            if i < len(self.layers) - 1:
                x = x.relu_()
                if self.layer_norm:
                    relu_out = x
                    x, mean, rstd = torch.native_layer_norm(relu_out, x.shape[-1:], None, None, LAYER_NORM_EPS)
                    norm_cache += [relu_out, mean, rstd]
        return x.squeeze(-1), inputs + norm_cache

    def _hidden_backward(self, g: torch.Tensor, cache: list[torch.Tensor], i: int) -> torch.Tensor:
        """d loss / d (output of Linear i - 1) from d loss / d (input of Linear i): back through the ReLU
        and, with ``layer_norm``, the normalization before it."""
        if not self.layer_norm:
            return _relu_backward(g, cache[i], 0)  # the input of Linear i is the ReLU's output
        k = len(self.layers) + 3 * (i - 1)
        relu_out, mean, rstd = cache[k : k + 3]
        g = _layer_norm_backward(g, relu_out, relu_out.shape[-1:], mean, rstd, None, None, [True, False, False])[0]
        return _relu_backward(g, relu_out, 0)

    @torch.no_grad()
    def backward_cached(self, grad_q: torch.Tensor, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        """d loss / d parameters, in ``parameters()`` order, from d loss / d Q [n, B]."""
        g = grad_q.unsqueeze(-1)
        grads: list[torch.Tensor] = []
        for i in range(len(self.layers) - 1, -1, -1):
            w = self.layers[i].weight
            if g.shape[-1] == 1:  # the head: x^T g as a multiply and a sum (see above)
                w_grad = (inputs[i] * g).sum(1).unsqueeze(-1)
            else:
                w_grad = torch.bmm(inputs[i].transpose(1, 2), g)
            grads += [g.sum(1, keepdim=True), w_grad]  # bias, weight
            if i > 0:
                g = self._hidden_backward(_input_grad(g, w.transpose(1, 2)), inputs, i)
        return grads[::-1]

    @torch.no_grad()
    def action_gradient(self, grad_q: torch.Tensor, inputs: list[torch.Tensor], action_dim: int) -> torch.Tensor:
        """d/da of sum(grad_q * Q(s, a)) [B, action_dim], for a frozen Q: the input gradient only, no
        parameter gradients (what the extraction's Q term needs)."""
        g = grad_q.unsqueeze(-1)
        for i in range(len(self.layers) - 1, -1, -1):
            g = _input_grad(g, self.layers[i].weight.transpose(1, 2))
            if i > 0:
                g = self._hidden_backward(g, inputs, i)
        # the members share the input [s, a]; the actions are its last columns (states are normalized, not a)
        return g.sum(0)[:, -action_dim:]


class AdvantageQ(nn.Module):
    """Q(s, a) = V(s) + A(s, a) for a critic trained with ``critic.q_form=advantage``: ``advantage`` is the
    ensemble that was trained (it fits r + gamma V(s') - V(s)), ``v`` the value net. Frozen use only; V does not
    depend on the action, so the action gradient is the advantage's."""

    def __init__(self, advantage: EnsembleQ, v: ValueNet):
        super().__init__()
        self.advantage, self.v, self.n = advantage, v, advantage.n

    def forward(self, s: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return self.advantage(s, a) + self.v(s).unsqueeze(0)

    @torch.no_grad()
    def forward_cached(self, s: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        q, inputs = self.advantage.forward_cached(s, a)
        return q + self.v(s).unsqueeze(0), inputs

    @torch.no_grad()
    def action_gradient(self, grad_q: torch.Tensor, inputs: list[torch.Tensor], action_dim: int) -> torch.Tensor:
        return self.advantage.action_gradient(grad_q, inputs, action_dim)


class ValueNet(nn.Module):
    def __init__(self, obs_dim: int, hidden_dim: int = 256, n_layers: int = 2, normalize_obs: bool = False):
        super().__init__()
        self.obs_norm = ObsNormalizer(obs_dim) if normalize_obs else None
        self.net = mlp(obs_dim, 1, hidden_dim, n_layers)
        self._linears = tuple(m for m in self.net if isinstance(m, nn.Linear))  # for the hand-written backward

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        if self.obs_norm is not None:
            s = self.obs_norm(s)
        return self.net(s).squeeze(-1)

    @torch.no_grad()
    def forward_cached(self, s: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """V [B] and each Linear's input, for ``backward_cached``; ReLUs run in place (no autograd)."""
        x = self.obs_norm(s) if self.obs_norm is not None else s
        v, inputs = mlp_forward_cached(self._linears, x)
        return v.squeeze(-1), inputs

    @torch.no_grad()
    def backward_cached(self, grad_v: torch.Tensor, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        """d loss / d parameters, in ``parameters()`` order, from d loss / d V [B]."""
        return mlp_backward_cached(self._linears, grad_v.unsqueeze(-1), inputs)


class TanhActor(nn.Module):
    """Deterministic ("Dirac") policy a = tanh(MLP(s)) in [-1, 1]; also the AWR and BC policies."""

    def __init__(self, obs_dim: int, action_dim: int, hidden_dim: int = 256, n_layers: int = 2):
        super().__init__()
        self.net = mlp(obs_dim, action_dim, hidden_dim, n_layers)
        self._linears = tuple(m for m in self.net if isinstance(m, nn.Linear))  # for the hand-written backward

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(s))

    @torch.no_grad()
    def forward_cached(self, s: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """pi(s) [B, action_dim] and each Linear's input, for ``backward_cached``."""
        pre, inputs = mlp_forward_cached(self._linears, s)
        return pre.tanh_(), inputs

    @torch.no_grad()
    def backward_cached(
        self,
        grad_a: torch.Tensor,
        a: torch.Tensor,
        inputs: list[torch.Tensor],
        weights: list[torch.Tensor] | None = None,
    ) -> list[torch.Tensor]:
        """d loss / d parameters, in ``parameters()`` order, from d loss / d pi(s) and pi(s) itself.
        ``weights``: the Linears' weights as plain tensors (``linear_weights``), for a graph compiled with
        frozen constants, where weights read from a module would be folded in and go stale as the actor trains."""
        # d tanh(x) / dx = 1 - tanh(x)^2
        return mlp_backward_cached(self._linears, grad_a * (1.0 - a * a), inputs, weights)

    def linear_weights(self) -> list[torch.Tensor]:
        """Each Linear's weight, detached: the same storage (Adam's in-place updates show), not a Parameter."""
        return [lin.weight.detach() for lin in self._linears]


@torch.no_grad()
def polyak_update(target: list[torch.Tensor], online: list[torch.Tensor], tau: float) -> None:
    """target <- (1 - tau) target + tau online, as one fused foreach kernel over all tensors."""
    torch._foreach_lerp_(target, online, tau)
