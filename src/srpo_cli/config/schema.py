"""The configuration schema: one documented dataclass field per choice, grouped by stage.

Defaults are the reference code's (thu-ml/SRPO at b3b916a; docs/algorithm.md lists them and every deviation)
except where a field says otherwise; the built-in default dataset's preset shrinks the budgets so that the
whole pipeline runs in minutes on a laptop CPU.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

DEFAULT_DATASET = "srpo/pendulum/scripted-medium-v0"


CONFIG_FILE = "srpo.yaml"


def _f(default: Any, help: str, choices: tuple[str, ...] | None = None) -> Any:
    meta = {"help": help}
    if choices:
        meta["choices"] = choices
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: default, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class BehaviorConfig:
    """Stage 1: the diffusion behavior model eps_phi(a_t, s, t) (an LN-ResNet, as in IDQL)."""

    steps: int = _f(2_000_000, "gradient steps (paper budget 2M)")
    batch_size: int = _f(2048, "state-action pairs per step")
    lr: float = _f(3e-4, "AdamW learning rate")
    lr_schedule: str = _f(
        "constant",
        "constant (the reference), or cosine decay to 0 over behavior.steps (a short CPU budget ends at a "
        "lower loss; continuing a finished cosine run with more steps restarts from a small learning rate)",
        ("constant", "cosine"),
    )
    weight_decay: float = _f(0.01, "AdamW weight decay")
    ema_decay: float = _f(
        0.0,
        "0: off (the reference). Else keep an exponential moving average of the weights, updated after every "
        "step with this decay (e.g. 0.999), and let extraction and the diffusion baseline use it",
    )
    beta_0: float = _f(0.1, "VP-SDE linear beta(t) at t=0")
    beta_1: float = _f(20.0, "VP-SDE linear beta(t) at t=1")
    t_min: float = _f(0.001, "smallest diffusion time sampled for the eps loss")
    t_max: float = _f(1.0, "largest diffusion time sampled for the eps loss")
    hidden_dim: int = _f(256, "width of the residual stream")
    n_blocks: int = _f(3, "number of LayerNorm residual blocks")
    block_expansion: int = _f(4, "inner width of a block = hidden_dim * block_expansion (256 -> 1024)")
    dropout: float = _f(0.1, "dropout at the input of each block (training only)")
    fourier_dim: int = _f(32, "number of fixed Gaussian Fourier frequencies for the time embedding")
    fourier_scale: float = _f(30.0, "std of the Fourier frequencies")
    time_dim: int = _f(128, "width of the learned time embedding")
    bf16: bool = _f(
        False,
        "bf16 autocast for forward/backward (weights and optimizer stay fp32); a CPU without AVX512-BF16 or AMX "
        "would emulate it 10-20x slower, so there the stage trains in fp32 and says so",
    )
    compile: bool = _f(False, "wrap the network in torch.compile")
    fused_mish: bool = _f(
        True,
        "on a CPU, Mish forward and backward as one inductor-compiled kernel each (same maths; needs a C++ "
        "compiler at run time, else the eager form with a warning)",
    )
    log_every: int = _f(100, "steps between metric rows / progress updates")
    ckpt_every: int = _f(50_000, "steps between periodic checkpoints")


@dataclass
class CriticConfig:
    """Stage 2: IQL critic: twin Q, target twin Q (Polyak), V trained by expectile regression."""

    steps: int = _f(1_500_000, "gradient steps (paper budget 1.5M)")
    batch_size: int = _f(256, "transitions per step")
    q_lr: float = _f(3e-4, "Adam learning rate of the twin Q")
    v_lr: float = _f(3e-4, "Adam learning rate of V")
    hidden_dim: int = _f(256, "hidden width of Q and V")
    n_layers: int = _f(2, "hidden layers of Q and V")
    n_q: int = _f(
        2,
        "Q-networks in the ensemble (the reference's twin Q: 2); V's target is the min of their targets, the "
        "extraction's Q term combines them by extract.q_reduce, AWR and the diffusion baseline take the min",
    )
    layer_norm: bool = _f(
        False,
        "LayerNorm (no affine weights) after each hidden ReLU of the Q-networks, which bounds Q off the data by "
        "its head's weights (Ball et al. 2023; ReBRAC); off in the reference",
    )
    q_form: str = _f(
        "direct",
        "direct: each Q-network fits r + gamma V(s') (the reference); advantage: Q(s, a) = V(s) + A(s, a) with V "
        "a constant in the Q loss, so the networks fit only r + gamma V(s') - V(s), the action's effect, and V "
        "the expectile of r + gamma V_target(s') (IQL's V where transitions are deterministic; "
        "docs/investigations/cpu-recipe.md)",
        ("direct", "advantage"),
    )
    expectile: float = _f(0.7, "expectile tau of the V loss (0.7 locomotion, 0.9 antmaze)")
    discount: float = _f(0.99, "discount gamma")
    tau: float = _f(0.005, "Polyak rate of the target twin Q, applied after every step")
    reward_mode: str = _f(
        "locomotion",
        "locomotion: r*reward_scale/(max_return-min_return); antmaze: r + antmaze_shift; none: raw r",
        ("locomotion", "antmaze", "none"),
    )
    reward_scale: float = _f(1000.0, "numerator of the locomotion return-range scaling")
    normalize_observations: bool = _f(
        False,
        "standardize states inside Q and V with the dataset's mean and std (stored in the checkpoint); off in the "
        "reference, on in CORL's IQL and TD3+BC",
    )
    obs_std_eps: float = _f(1e-3, "added to each state dimension's std when normalize_observations is on")
    antmaze_shift: float = _f(-1.0, "added to every reward in antmaze mode")
    compile: bool = _f(False, "torch.compile the critic step's losses and hand-written gradients")
    log_every: int = _f(500, "steps between metric rows / progress updates")
    ckpt_every: int = _f(100_000, "steps between periodic checkpoints")


@dataclass
class ExtractConfig:
    """Stage 3: SRPO policy extraction of the deterministic actor pi(s)."""

    beta: float = _f(0.05, "temperature: larger = greedier w.r.t. Q (hopper-medium 0.05); 0 ignores Q")
    auto_beta: bool = _f(
        False,
        "choose beta from the data (srpo extract --beta auto) before training: the largest beta whose Q push "
        "(beta |dQ/da|) the behavior model's pull back matches within auto_beta_distance of the data's actions, "
        "by the balance probe; the chosen beta replaces extract.beta and is recorded in the checkpoint",
    )
    auto_beta_distance: float = _f(
        0.1,
        "the bound of auto_beta: L2 distance off the data's actions in the [-1, 1] action box (on "
        "bench/hopper/medium-v0 scores fell as the balance moved past 0.1; docs/investigations/cpu-recipe.md)",
    )
    steps: int = _f(1_000_000, "gradient steps (paper budget 1M)")
    batch_size: int = _f(256, "states per step")
    lr: float = _f(3e-4, "Adam learning rate")
    lr_schedule: str = _f("cosine", "cosine decay to 0 over the run, or constant", ("cosine", "constant"))
    hidden_dim: int = _f(256, "actor hidden width")
    n_layers: int = _f(2, "actor hidden layers (antmaze: 4)")
    t_min: float = _f(0.02, "smallest diffusion time of the score regularizer")
    t_max: float = _f(0.98, "largest diffusion time of the score regularizer")
    weighting: str = _f(
        "sigma2", "w(t): sigma_t^2 (reference), 1, or alpha_t/sigma_t", ("sigma2", "one", "alpha_over_sigma")
    )
    noise_baseline: bool = _f(False, "subtract the injected noise z from eps (lower variance; off in reference)")
    q_reduce: str = _f(
        "mean", "combine the target Qs (critic.n_q) for the gradient: mean (reference) or min", ("mean", "min")
    )
    normalize_q_grad: bool = _f(False, "divide the Q gradient by its per-sample RMS (antmaze)")
    bf16_behavior: bool = _f(
        False, "bf16 autocast on the frozen behavior net's forward pass (fp32 on a CPU that would emulate it)"
    )
    compile: bool = _f(
        False,
        "torch.compile the step from the behavior net to the actor's gradients as one graph, the frozen behavior "
        "net's and critic's weights folded in as constants",
    )
    eval_every: int = _f(0, "evaluate the actor every N steps (0: never) and log the score")
    eval_episodes: int = _f(5, "episodes per intermediate evaluation")
    keep_every: int = _f(
        0,
        "keep a copy of the actor every N steps (0: none) as actors/actor-STEP.safetensors in the run directory, "
        "for 'srpo eval --curve' after training (more episodes, another machine, no pause in training)",
    )
    log_every: int = _f(500, "steps between metric rows / progress updates")
    ckpt_every: int = _f(100_000, "steps between periodic checkpoints")


@dataclass
class BaselineConfig:
    """AWR (the reference's side policy) and plain behavior cloning, for comparison tables."""

    steps: int = _f(1_000_000, "gradient steps")
    batch_size: int = _f(256, "transitions per step")
    lr: float = _f(3e-4, "Adam learning rate, cosine decay to 0")
    hidden_dim: int = _f(256, "policy hidden width")
    n_layers: int = _f(2, "policy hidden layers")
    temperature: float = _f(3.0, "AWR weight exp(temperature * (min Q_target - V)) (antmaze: 10)")
    max_weight: float = _f(100.0, "AWR weights are clamped at this value")
    keep_every: int = _f(
        0, "keep a copy of the policy every N steps (0: none) as actors/awr-STEP.safetensors (or bc-STEP)"
    )
    log_every: int = _f(500, "steps between metric rows / progress updates")
    ckpt_every: int = _f(100_000, "steps between periodic checkpoints")


@dataclass
class EvalConfig:
    """Evaluation rollouts and the diffusion-policy baseline."""

    episodes: int = _f(10, "evaluation episodes")
    num_envs: int = _f(10, "parallel environments (episodes are split statically across them)")
    seed: int = _f(1_000_000, "eval seed, fixed and independent of the training seed")
    candidates: int = _f(32, "diffusion baseline: candidate actions per state (IDQL-style)")
    sampling_steps: int = _f(15, "diffusion baseline: ODE solver steps per candidate")
    selection: str = _f("argmax", "diffusion baseline: pick the candidate with max Q", ("argmax",))


@dataclass
class DataConfig:
    """How a Minari dataset becomes tensors."""

    normalize_actions: bool = _f(True, "map a finite Box action space to [-1, 1] (no-op for MuJoCo)")
    sampling: str = _f(
        "epoch",
        "batches of every stage: epoch = shuffle once per epoch, no replacement, drop remainder (reference); "
        "uniform = i.i.d. indices",
        ("epoch", "uniform"),
    )


@dataclass
class RunConfig:
    """Everything one run needs; stored with every checkpoint."""

    dataset: str = _f(DEFAULT_DATASET, "Minari dataset id")
    run_dir: str = _f("runs/{dataset}/seed{seed}", "run directory; {dataset} and {seed} are filled in")
    device: str = _f("auto", "auto|cpu|cuda|mps", ("auto", "cpu", "cuda", "mps"))
    seed: int = _f(0, "training seed")
    threads: int = _f(0, "CPU threads torch may use (0: torch's default, usually one per core)")
    tensorboard: bool = _f(
        True,
        "also write each stage's metrics as TensorBoard event files (RUN/metrics/tensorboard/STAGE; view with "
        "'tensorboard --logdir runs/'), where the tensorboard package is installed; off: CSV only",
    )
    parallel_pretrain: bool = _f(
        True,
        "pipeline on a CPU: train the behavior model and the critic at the same time in two processes, each "
        "with half the threads (they are independent; measured faster than one after the other)",
    )
    data: DataConfig = field(default_factory=DataConfig)
    behavior: BehaviorConfig = field(default_factory=BehaviorConfig)
    critic: CriticConfig = field(default_factory=CriticConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def resolved_run_dir(self, seed: int | None = None) -> Path:
        slug = self.dataset.replace("/", "-")
        return Path(self.run_dir.format(dataset=slug, seed=self.seed if seed is None else seed))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "behavior": BehaviorConfig,
    "critic": CriticConfig,
    "extract": ExtractConfig,
    "baseline": BaselineConfig,
    "eval": EvalConfig,
}


def all_keys() -> list[str]:
    """Every dotted key a user may set, e.g. ``extract.beta``."""
    keys = [f.name for f in fields(RunConfig) if f.name not in SECTIONS]
    for sec, cls in SECTIONS.items():
        keys += [f"{sec}.{f.name}" for f in fields(cls)]
    return keys


def field_info(key: str) -> dataclasses.Field:
    sec, _, name = key.rpartition(".")
    cls = SECTIONS[sec] if sec else RunConfig
    return {f.name: f for f in fields(cls)}[name]
