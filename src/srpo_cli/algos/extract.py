"""Stage 3: SRPO policy extraction. The actor is trained with the Q gradient plus the behavior model's
score as a regularizer; the behavior net and critic are frozen."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from srpo_cli import artifacts
from srpo_cli.algos.loading import check_inputs, load_behavior, load_critic
from srpo_cli.algos.losses import srpo_loss, srpo_loss_through_q, srpo_weight
from srpo_cli.config import ExtractConfig, RunConfig
from srpo_cli.data.transitions import Transitions
from srpo_cli.errors import UsageError
from srpo_cli.nn.compile import CompiledOrEager
from srpo_cli.nn.diffusion import VPSchedule
from srpo_cli.nn.networks import EnsembleQ, TanhActor
from srpo_cli.train.checkpoint import load_checkpoint, sha256_file
from srpo_cli.train.device import without_emulated_bf16
from srpo_cli.train.distributed import is_main
from srpo_cli.train.loop import Stage, fit, stderr
from srpo_cli.train.optim import optim_kwargs, optimizer_step


def reduce_q(qs: torch.Tensor, reduce: str) -> torch.Tensor:
    """[n_q, B] -> [B]: the mean (reference) or the min of the twin target Qs."""
    return qs.mean(0) if reduce == "mean" else qs.min(0).values


def q_gradient(
    q_target: torch.nn.Module, s: torch.Tensor, a: torch.Tensor, reduce: str, normalize: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(g, Q): g = d/da of the mean (or min) of the target twin Q at (s, a), optionally RMS-normalized per
    sample; Q its value there."""
    a = a.detach().requires_grad_(True)
    with torch.enable_grad():
        q = reduce_q(q_target(s, a), reduce)
        (g,) = torch.autograd.grad(q.sum(), a)
    if normalize:
        g = g / torch.sqrt((g**2).mean(-1, keepdim=True) + 1e-12)
    return g, q.detach()


@dataclass
class Balance:
    """How hard the two terms of the SRPO loss pull an action, on dataset states.

    The actor descends w(t) (eps - z) - beta dQ/da. ``q_push`` is beta |dQ/da| at the data's actions: the Q
    term's push away from the data. ``score_pull[i]`` is the score term's pull back toward the data at an action
    ``steps[i]`` (L2) off the data's action along dQ/da: E_t,z[w(t) (eps(alpha_t a + sigma_t z, s, t) - z)] . u.
    Where the push exceeds every pull nothing in the loss holds the actor near the data and it goes where the
    critic points: good where the critic is right off the data (the built-in default dataset), a collapse to
    the action bounds where it is not (halfcheetah at the bench presets' budget; BENCHMARKS.md)."""

    beta: float
    grad_norm: float
    q_push: float
    steps: tuple[float, ...]
    score_pull: tuple[float, ...]

    @property
    def balance_step(self) -> float | None:
        """Distance off the data's action where the score term's pull first matches the Q term's push
        (linear between the measured steps); None beyond the last step measured."""
        pairs = list(zip(self.steps, self.score_pull, strict=True))
        if pairs[0][1] >= self.q_push:
            return pairs[0][0]
        for (d0, p0), (d1, p1) in zip(pairs, pairs[1:], strict=False):
            if p1 >= self.q_push:
                return d0 + (d1 - d0) * (self.q_push - p0) / max(p1 - p0, 1e-12)
        return None

    def largest_beta_within(self, distance: float) -> float:
        """The largest beta whose push the pull matches at most ``distance`` off the data: the strongest pull
        over [0, distance] (linear between the measured steps) over |dQ/da|."""
        points = list(zip(self.steps, self.score_pull, strict=True))
        pulls = [p for d, p in points if d <= distance]
        for (d0, p0), (d1, p1) in zip(points, points[1:], strict=False):
            if d0 < distance < d1:
                pulls.append(p0 + (p1 - p0) * (distance - d0) / (d1 - d0))
        # 0.1% under the tie: the push must stay under the pull when the probe is rerun with another thread
        # count, whose rounding would otherwise move the balance to the next crossing past the bound
        return 0.999 * max(0.0, max(pulls, default=0.0)) / max(self.grad_norm, 1e-12)

    def with_beta(self, beta: float) -> Balance:
        return dataclasses.replace(self, beta=beta, q_push=beta * self.grad_norm)

    def beta_for_step(self, step: float) -> float:
        """The beta whose push matches the score term's pull ``step`` off the data (a measured step)."""
        return self.score_pull[self.steps.index(step)] / max(self.grad_norm, 1e-12)

    def describe(self) -> str:
        pulls = " / ".join(f"{p:.3f}" for p in self.score_pull)
        where = " / ".join(f"{d:g}" for d in self.steps)
        text = (
            f"Q term against the behavior regularizer: beta x |dQ/da| = {self.beta:g} x {self.grad_norm:.3f} = "
            f"{self.q_push:.3f}; the score term pulls back {pulls} at {where} off the data's actions along dQ/da"
        )
        step = self.balance_step
        if step is not None:
            return text + f": they balance about {step:.2f} off the data."
        return (
            text + f". [yellow]note:[/] the Q term outweighs the score term at every distance up to "
            f"{self.steps[-1]:g}, so the behavior model will not hold the actor near the data: it goes where the "
            "critic points, which pays where the critic is right off the data (the built-in default dataset) and "
            "collapses where it is not (halfcheetah at the bench presets' budget, BENCHMARKS.md)"
            + (
                f"; beta about {self.beta_for_step(0.2):.3g} would balance 0.2 off the data."
                if 0.2 in self.steps
                else "."
            )
        )

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "balance_step": self.balance_step}


BALANCE_STEPS = (0.0, 0.1, 0.2, 0.5, 1.0)


@torch.no_grad()
def regularizer_balance(
    eps_net: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    q_net: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    schedule: VPSchedule,
    s: torch.Tensor,
    a: torch.Tensor,
    c: ExtractConfig,
    generator: torch.Generator,
    draws: int = 8,
    steps: tuple[float, ...] = BALANCE_STEPS,
    device_type: str = "cpu",
) -> Balance:
    """Measure ``Balance`` at the states ``s`` and their dataset actions ``a``, with the extraction's own
    weighting, t range, Q reduction and gradient normalization; ``draws`` (t, z) pairs per state and step.
    The noise baseline is always subtracted here: E[z] = 0, so the pull is the same with less noise."""
    g, _ = q_gradient(q_net, s, a, c.q_reduce, c.normalize_q_grad)
    norm = g.norm(dim=-1, keepdim=True)
    u = g / norm.clamp_min(1e-12)
    s_k = s.repeat_interleave(draws, 0)
    pulls = []
    for d in steps:
        # the actor is a tanh: it never reaches the bounds themselves
        x = (a + d * u).clamp(-0.999, 0.999).repeat_interleave(draws, 0)
        t = torch.rand(len(x), device=x.device, generator=generator) * (c.t_max - c.t_min) + c.t_min
        z = torch.randn(x.shape, device=x.device, generator=generator)
        alpha_t, sigma_t = schedule.alpha_sigma(t)
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=c.bf16_behavior):
            eps = eps_net(alpha_t[:, None] * x + sigma_t[:, None] * z, s_k, t).float()
        force = (srpo_weight(alpha_t, sigma_t, c.weighting)[:, None] * (eps - z)).view(len(s), draws, -1).mean(1)
        pulls.append(float((force * u).sum(-1).mean()))
    grad_norm = float(norm.mean())
    return Balance(c.beta, grad_norm, c.beta * grad_norm, tuple(steps), tuple(pulls))


class ExtractStage(Stage):
    name = "extract"
    ckpt_stage = "actor"
    file_name = artifacts.ACTOR

    def __init__(self, cfg: RunConfig, data: Transitions, device: torch.device, run_dir: Path):
        super().__init__(cfg, data, device, cfg.extract.batch_size)
        data = self.data  # on the training device
        c = cfg.extract
        b_path, c_path = Path(run_dir) / artifacts.BEHAVIOR, Path(run_dir) / artifacts.CRITIC
        self.behavior, self.schedule, b_ckpt = load_behavior(b_path, device)
        _, self.q_target, _, c_ckpt = load_critic(c_path, device)
        check_inputs(b_ckpt, c_ckpt, data)
        self.parents = {artifacts.BEHAVIOR: sha256_file(b_path), artifacts.CRITIC: sha256_file(c_path)}
        torch.manual_seed(cfg.seed)  # the actor's init must not depend on what loading consumed
        self.actor = TanhActor(data.obs_dim, data.action_dim, c.hidden_dim, c.n_layers).to(device)
        self.modules = {"actor": self.actor}
        opt = torch.optim.Adam(self.actor.parameters(), **optim_kwargs(c.lr, device))
        self.optimizers = {"actor": opt}
        if c.lr_schedule == "cosine":
            self.schedulers = {"actor": torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=c.steps, eta_min=0.0)}
        # The behavior net and the critic never change here, so inductor may fold their weights in as constants
        # (prepacked oneDNN matmul weights, no per-step bf16 casts, the residual adds fused into the matmuls);
        # one graph from the behavior net's input to the actor's gradients, the actor's weights as inputs.
        self.compiled = (
            CompiledOrEager(
                _FrozenNets(self.behavior, self.q_target, self.schedule, c, device.type),
                "the extraction step",
                frozen=True,
            )
            if c.compile
            else None
        )

    def step(self) -> dict[str, torch.Tensor]:
        idx = self.batch_indices()
        grads, loss, score_term, q_value = srpo_actor_grads(
            self.actor,
            self.data.observations.index_select(0, idx),
            self.behavior,
            self.q_target,
            self.schedule,
            self.cfg.extract,
            self.noise_generator,
            self.device.type,
            self.compiled,
        )
        for p, g in zip(self.actor.parameters(), grads, strict=True):
            p.grad = g
        optimizer_step(self.optimizers["actor"])
        if self.schedulers:
            self.schedulers["actor"].step()
        return {"loss": loss, "score_term": score_term, "q_value": q_value}


def srpo_actor_loss(
    actor: torch.nn.Module,
    s: torch.Tensor,
    eps_net: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    q_net: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    schedule: VPSchedule,
    c: ExtractConfig,
    generator: torch.Generator,
    device_type: str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One SRPO loss evaluation (spec, stage 3, steps 1-6). ``q_net(s, a)`` returns [n_q, B] and must be
    frozen (no parameter gradients). Returns (loss, score term, mean Q of the actor's actions)."""
    a = actor(s)
    b = s.shape[0]
    t = torch.rand(b, device=s.device, generator=generator) * (c.t_max - c.t_min) + c.t_min
    z = torch.randn(a.shape, device=s.device, generator=generator)
    alpha_t, sigma_t = schedule.alpha_sigma(t)
    with torch.no_grad(), torch.autocast(device_type, dtype=torch.bfloat16, enabled=c.bf16_behavior):
        eps = eps_net(alpha_t[:, None] * a.detach() + sigma_t[:, None] * z, s, t).float()
    if c.noise_baseline:
        eps = eps - z
    w = srpo_weight(alpha_t, sigma_t, c.weighting)
    if c.normalize_q_grad:
        g, q = q_gradient(q_net, s, a, c.q_reduce, True)
        loss, score_term, _ = srpo_loss(a, eps, w, g, c.beta)
        return loss, score_term, q.mean()
    # Without normalization, d/dtheta <g, pi(s)> with g = dQ/da detached is exactly d/dtheta Q(s, pi(s)) for a
    # frozen Q: one backward pass through Q and the actor instead of a separate autograd.grad for g.
    q = reduce_q(q_net(s, a), c.q_reduce)
    return srpo_loss_through_q(a, eps, w, q, c.beta)


@torch.no_grad()
def srpo_actor_grads(
    actor: TanhActor,
    s: torch.Tensor,
    eps_net: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    q_net: EnsembleQ,
    schedule: VPSchedule,
    c: ExtractConfig,
    generator: torch.Generator,
    device_type: str = "cpu",
    compiled: Callable[..., tuple[list[torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]] | None = None,
) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]:
    """``srpo_actor_loss``'s actor gradients by the networks' hand-written backward, with the same random draws.

    At the paper's batch of 256 the actor and the twin Q are small matmuls, where autograd's graph
    bookkeeping, its generic backward and its allocations cost about as much as the arithmetic on a CPU.
    Returns (parameter gradients in ``actor.parameters()`` order, loss, score term, mean Q of the actor's
    actions); a test checks the gradients against autograd on ``srpo_actor_loss``. ``compiled``: a compiled
    ``actor_grads_from_draws`` for this actor, behavior net, critic and config (``extract.compile``).
    """
    a, a_inputs = actor.forward_cached(s)
    b = s.shape[0]
    t = torch.rand(b, device=s.device, generator=generator) * (c.t_max - c.t_min) + c.t_min
    z = torch.randn(a.shape, device=s.device, generator=generator)
    if compiled is not None:
        return compiled(actor, s, a, a_inputs, t, z, actor.linear_weights())
    return actor_grads_from_draws(actor, eps_net, q_net, schedule, c, device_type, s, a, a_inputs, t, z)


@torch.no_grad()
def actor_grads_from_draws(
    actor: TanhActor,
    eps_net: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    q_net: EnsembleQ,
    schedule: VPSchedule,
    c: ExtractConfig,
    device_type: str,
    s: torch.Tensor,
    a: torch.Tensor,
    a_inputs: list[torch.Tensor],
    t: torch.Tensor,
    z: torch.Tensor,
    actor_weights: list[torch.Tensor] | None = None,
) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]:
    """``srpo_actor_grads`` once the actor has acted and t, z are drawn: the behavior net's eps, the Q term and
    the actor's backward. Separate so that ``extract.compile`` can compile it as one graph with the frozen
    behavior net and critic folded in as constants; the random draws stay outside, in eager. The actor's
    weights must then come in as ``actor_weights`` (plain tensors), or they would be folded in too."""
    alpha_t, sigma_t = schedule.alpha_sigma(t)
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=c.bf16_behavior):
        eps = eps_net(alpha_t[:, None] * a + sigma_t[:, None] * z, s, t).float()
    if c.noise_baseline:
        eps = eps - z
    w = srpo_weight(alpha_t, sigma_t, c.weighting)
    qs, q_inputs = q_net.forward_cached(s, a)  # [n_q, B]
    if c.q_reduce == "mean":
        q = qs.mean(0)
        d_q = torch.full_like(qs, 1.0 / qs.shape[0])
    else:
        q, which = qs.min(0)
        d_q = torch.zeros_like(qs).scatter_(0, which.unsqueeze(0), 1.0)
    g = q_net.action_gradient(d_q, q_inputs, a.shape[-1])  # dQ/da [B, action_dim]
    if c.normalize_q_grad:
        g = g / torch.sqrt((g**2).mean(-1, keepdim=True) + 1e-12)
    we = w.unsqueeze(-1) * eps
    score_term = (we * a).sum(-1).mean()
    # both forms (spec and through-Q) give d loss / d a = (w e - beta g) / B
    loss = score_term - c.beta * ((g * a).sum(-1).mean() if c.normalize_q_grad else q.mean())
    grads = actor.backward_cached((we - c.beta * g).div_(s.shape[0]), a, a_inputs, actor_weights)
    return grads, loss, score_term, q.mean()


class _FrozenNets(torch.nn.Module):
    """``actor_grads_from_draws`` with the behavior net and critic as submodules: compiled with ``frozen=True``,
    inductor folds a module's own weights in as constants, while the actor and its weights come in as call
    arguments and stay graph inputs (a test checks that changing them changes the result)."""

    def __init__(
        self, behavior: torch.nn.Module, q_net: EnsembleQ, schedule: VPSchedule, c: ExtractConfig, device_type: str
    ):
        super().__init__()
        self.behavior, self.q_net = behavior, q_net
        self.schedule, self.c, self.device_type = schedule, c, device_type

    def forward(
        self, actor: TanhActor, *args: Any
    ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]:
        return actor_grads_from_draws(actor, self.behavior, self.q_net, self.schedule, self.c, self.device_type, *args)


def stage_balance(
    behavior: torch.nn.Module, q_target: torch.nn.Module, schedule: VPSchedule, data: Transitions, cfg: RunConfig
) -> Balance:
    """``regularizer_balance`` as ``srpo extract`` measures it: 512 dataset states, 8 draws each, drawn with a
    generator of its own (seeded from ``cfg.seed``; training's random streams are left as they were). Most of
    the figures' spread is between states (|dQ/da| varies from state to state), so many states with few draws
    each measure them better than few with many, at the same cost."""
    device = data.observations.device
    gen = torch.Generator(device).manual_seed(cfg.seed)
    idx = torch.randint(0, data.size, (min(512, data.size),), device=device, generator=gen)
    s, a = data.observations.index_select(0, idx), data.actions.index_select(0, idx)
    return regularizer_balance(behavior, q_target, schedule, s, a, cfg.extract, gen, device_type=device.type)


def run_balance(cfg: RunConfig, data: Transitions, run_dir: Path, device: torch.device) -> Balance:
    """``stage_balance`` for the behavior model and critic in ``run_dir`` (a finished run's, for tables)."""
    cfg, _ = without_emulated_bf16(cfg, device, "extract.bf16_behavior")
    behavior, schedule, _ = load_behavior(Path(run_dir) / artifacts.BEHAVIOR, device)
    _, q_target, _, _ = load_critic(Path(run_dir) / artifacts.CRITIC, device)
    return stage_balance(behavior, q_target, schedule, data.to(device), cfg)


def train_actor(
    cfg: RunConfig,
    data: Transitions,
    run_dir: Path,
    device: torch.device,
    *,
    resume: bool = False,
    quiet: bool = False,
    stop_at: int | None = None,
    evaluator: Callable[[torch.nn.Module], Callable[[int], dict[str, float]]] | None = None,
) -> dict[str, Any]:
    """Extract the SRPO actor from ``run_dir``'s behavior and critic; writes ``run_dir/actor.safetensors``.

    ``evaluator(actor)``: the function ``extract.eval_every`` calls with the step to score the actor in
    training (acting lives in a layer above this one; ``pipeline.train_stage`` passes
    ``act.evaluate.periodic_eval_hook``)."""
    cfg, note = without_emulated_bf16(cfg, device, "extract.bf16_behavior")
    if note and not quiet and is_main():
        stderr.print(f"[yellow]warning:[/] {note}", highlight=False)
    if cfg.extract.auto_beta:
        cfg = copy.deepcopy(cfg)  # the chosen beta is this stage's, not the caller's configuration
    stage = ExtractStage(cfg, data, device, run_dir)
    c = cfg.extract
    # before the long part: whether the spec's beta lets the behavior model hold the actor near the data at
    # all, with this critic (its action gradient's scale is the data's and the budget's, not the paper's)
    balance = stage_balance(stage.behavior, stage.q_target, stage.schedule, stage.data, cfg)
    auto = None
    if c.auto_beta:
        ckpt_path = Path(run_dir) / artifacts.ACTOR
        # a resumed run keeps the beta it started with (the probe's floats may round otherwise elsewhere)
        chosen = (
            float(load_checkpoint(ckpt_path, "actor").config["extract"]["beta"])
            if resume and ckpt_path.exists()
            else balance.largest_beta_within(c.auto_beta_distance)
        )
        c.beta = chosen  # the stage (and its compiled step, traced at the first step) reads it from here
        balance = balance.with_beta(chosen)
        auto = {"beta": chosen, "distance": c.auto_beta_distance, "grad_norm": balance.grad_norm}
        if not quiet:
            stderr.print(
                f"beta auto: {chosen:.4g}, the largest beta whose push the score term's pull matches within "
                f"{c.auto_beta_distance:g} of the data (pulls {' / '.join(f'{p:.3f}' for p in balance.score_pull)} "
                f"at {' / '.join(f'{d:g}' for d in balance.steps)}; |dQ/da| {balance.grad_norm:.3f})",
                highlight=False,
            )
    if not quiet:
        stderr.print(balance.describe(), highlight=False)
    hooks = []
    if c.eval_every > 0:
        if evaluator is None:
            raise UsageError(
                "extract.eval_every asks for evaluations during training, but no evaluator was given.",
                "Train through srpo_cli.pipeline.train_stage (as the CLI does), or pass evaluator=.",
            )
        hooks.append((c.eval_every, evaluator(stage.actor)))
    summary = fit(
        stage,
        c.steps,
        Path(run_dir) / artifacts.ACTOR,
        resume=resume,
        log_every=c.log_every,
        ckpt_every=c.ckpt_every,
        quiet=quiet,
        stop_at=stop_at,
        hooks=hooks,
        keep_every=c.keep_every,
    )
    return {**summary, "balance": balance.as_dict(), **({"auto_beta": auto} if auto else {})}
