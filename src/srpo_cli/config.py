"""Run configuration: one documented dataclass field per choice, YAML presets, and precedence.

Precedence, highest first: command-line flag > environment variable (``SRPO_...``) > ``srpo.yaml`` in the
working directory > ``--preset NAME`` > the built-in defaults below. Defaults are the reference code's
(``SRPO_SPEC.md``) except where a field says otherwise; the built-in default dataset's preset shrinks the
budgets so that the whole pipeline runs in minutes on a laptop CPU.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .errors import UsageError

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
    bf16: bool = _f(False, "bf16 autocast for forward/backward (weights and optimizer stay fp32)")
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
    bf16_behavior: bool = _f(False, "bf16 autocast on the frozen behavior net's forward pass")
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


def _unknown(key: str, source: str) -> UsageError:
    close = difflib.get_close_matches(key, all_keys(), n=1, cutoff=0.5)
    hint = f"Did you mean '{close[0]}'?" if close else "Run 'srpo init --show' to list the valid keys."
    return UsageError(f"Unknown configuration key '{key}' in {source}.", hint)


def _coerce(key: str, value: Any, source: str) -> Any:
    """Convert a value (from YAML, env var or --set string) to the field's type, with a clear error."""
    f = field_info(key)
    default = f.default if f.default is not dataclasses.MISSING else None
    typ = type(default)
    try:
        if isinstance(value, bool) and typ is not bool:
            raise TypeError(value)  # YAML's true/false: a boolean is not a number
        if typ is bool:
            if isinstance(value, str):
                low = value.strip().lower()
                if low not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                    raise ValueError(value)
                value = low in ("1", "true", "yes", "on")
            else:
                value = bool(value)
        elif typ is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            value = int(float(value)) if isinstance(value, str) else int(value)
        elif typ is float:
            value = float(value)
        elif typ is str:
            value = str(value)
    except (TypeError, ValueError, OverflowError):
        raise UsageError(
            f"Invalid value {value!r} for '{key}' in {source}: expected {typ.__name__}"
            + (" (a whole, finite number)." if typ is int else "."),
            f"({f.metadata.get('help', '')})",
        ) from None
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        raise UsageError(f"Invalid value {value!r} for '{key}' in {source}: choose one of {', '.join(choices)}.")
    return value


def flatten(tree: dict[str, Any], source: str) -> dict[str, Any]:
    """Nested mapping -> {dotted key: value}, validating every key."""
    if not isinstance(tree, dict):
        raise UsageError(f"{source} must be a mapping of configuration keys, got {type(tree).__name__}.")
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if k == "preset":
            continue
        if k in SECTIONS:
            if not isinstance(v, dict):
                raise UsageError(f"Section '{k}' in {source} must be a mapping.")
            for kk, vv in v.items():
                key = f"{k}.{kk}"
                if key not in all_keys():
                    raise _unknown(key, source)
                out[key] = _coerce(key, vv, source)
        else:
            if k not in all_keys():
                raise _unknown(str(k), source)
            out[k] = _coerce(k, v, source)
    return out


def apply(cfg: RunConfig, values: dict[str, Any]) -> RunConfig:
    for key, v in values.items():
        sec, _, name = key.rpartition(".")
        setattr(getattr(cfg, sec) if sec else cfg, name, v)
    return cfg


def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("srpo_cli.presets").iterdir() if p.name.endswith(".yaml"))


def load_preset(name: str) -> dict[str, Any]:
    names = preset_names()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=1)
        hint = f"Did you mean '{close[0]}'?" if close else "Run 'srpo presets' to list them."
        raise UsageError(f"Unknown preset '{name}'.", hint)
    text = resources.files("srpo_cli.presets").joinpath(f"{name}.yaml").read_text()
    return yaml.safe_load(text) or {}


def preset_for_dataset(dataset_id: str) -> str | None:
    for name in preset_names():
        if load_preset(name).get("dataset") == dataset_id:
            return name
    return None


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise UsageError(f"{path} is not valid YAML: {e}".replace("\n", " "), "Fix it or delete it.") from None
    except UnicodeDecodeError:
        raise UsageError(
            f"{path} is not a text file.", "Fix it or delete it ('srpo init' writes a fresh one)."
        ) from None
    except OSError as e:
        raise UsageError(
            f"Cannot read {path} ({e.strerror or type(e).__name__}).",
            "srpo reads its configuration from this file; make it a readable YAML file or remove it.",
        ) from None
    if not isinstance(data, dict):
        raise UsageError(f"{path} must hold a mapping of configuration keys.")
    return data


# SRPO_* variables that are switches of the program, not configuration keys.
NOT_CONFIG_VARIABLES = ("SRPO_PRESET", "SRPO_DEBUG", "SRPO_NO_MALLOPT")


def env_values(environ: dict[str, str] | None = None) -> dict[str, Any]:
    """``SRPO_SEED=1``, ``SRPO_EXTRACT__BETA=0.1`` (double underscore separates the section)."""
    environ = dict(os.environ if environ is None else environ)
    out: dict[str, Any] = {}
    for name, value in environ.items():
        if not name.startswith("SRPO_") or name in NOT_CONFIG_VARIABLES:
            continue
        key = name[5:].lower().replace("__", ".")
        if key not in all_keys():
            raise _unknown(key, f"environment variable {name}")
        out[key] = _coerce(key, value, f"environment variable {name}")
    return out


def parse_set(items: list[str]) -> dict[str, Any]:
    """``--set extract.weighting=one`` pairs."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise UsageError(f"--set expects KEY=VALUE, got '{item}'.", "Example: --set extract.beta=0.1")
        key, value = item.split("=", 1)
        key = key.strip()
        if key not in all_keys():
            raise _unknown(key, "--set")
        try:
            parsed = yaml.safe_load(value) if value else value
        except yaml.YAMLError as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise UsageError(
                f"--set {item}: the value is not valid YAML ({first}).",
                "Quote a plain string, or give a number or true/false, e.g. --set extract.beta=0.1",
            ) from None
        out[key] = _coerce(key, parsed, "--set")
    return out


def resolve(
    flags: dict[str, Any] | None = None,
    preset: str | None = None,
    config_path: Path | None = None,
    environ: dict[str, str] | None = None,
    warnings: list[str] | None = None,
) -> RunConfig:
    """Merge defaults < preset < srpo.yaml < environment < flags into one validated RunConfig.

    ``warnings``: a list to which what the user should hear about the resolution is appended (a preset pinned
    by srpo.yaml or SRPO_PRESET for another dataset than the run's)."""
    config_path = Path(CONFIG_FILE) if config_path is None else config_path
    file_tree = read_yaml(config_path) if config_path.exists() else {}
    env = dict(os.environ if environ is None else environ)
    preset, origin = _preset_in_force(flags, preset, config_path, file_tree, env)
    cfg = RunConfig()
    preset_tree = load_preset(preset) if preset else {}
    # Where each key's value came from, so that an invalid value is reported with the place to fix it.
    origins: dict[str, str] = {}
    layers = [
        (flatten(preset_tree, f"preset '{preset}'") if preset else {}, f"the preset '{preset}'"),
        (flatten(file_tree, str(config_path)), str(config_path)),
        (env_values(env), "an SRPO_* environment variable"),
        ({k: v for k, v in (flags or {}).items() if v is not None}, "the command line"),
    ]
    for values, where in layers:
        apply(cfg, values)
        origins.update(dict.fromkeys(values, where))
    validate(cfg, origins)
    note = _preset_mismatch(cfg, preset, origin, preset_tree.get("dataset"))
    if note and warnings is not None:
        warnings.append(note)
    return cfg


def _preset_in_force(
    flags: dict[str, Any] | None,
    preset: str | None,
    config_path: Path,
    file_tree: dict[str, Any],
    env: dict[str, str],
) -> tuple[str | None, str]:
    """The preset that applies and where it was chosen: '--preset', 'SRPO_PRESET', the file, or 'dataset'."""
    if preset:
        return preset, "--preset"
    if env.get("SRPO_PRESET"):
        return env["SRPO_PRESET"], "SRPO_PRESET"
    if file_tree.get("preset"):
        return str(file_tree["preset"]), str(config_path)
    # A dataset with a shipped preset gets it automatically (the built-in default's small budget included).
    dataset = (flags or {}).get("dataset") or env.get("SRPO_DATASET") or file_tree.get("dataset") or DEFAULT_DATASET
    return preset_for_dataset(str(dataset)), "dataset"


def _preset_mismatch(cfg: RunConfig, name: str | None, origin: str, made_for: str | None) -> str | None:
    """A warning when a preset pinned by srpo.yaml or SRPO_PRESET was made for another dataset than cfg's.

    The precedence is documented, but a ``preset:`` line left in srpo.yaml by an earlier run silently gives a
    new dataset the old one's beta and budgets: easy to miss, and it changes results.
    """
    if not name or origin in ("--preset", "dataset"):
        return None
    if made_for is None or made_for == cfg.dataset:
        return None
    where = "the SRPO_PRESET variable" if origin == "SRPO_PRESET" else f"{origin} ('preset: {name}')"
    own = preset_for_dataset(cfg.dataset)
    fix = f"pass --preset {own}" if own else "pass --preset NAME"
    drop = "unset SRPO_PRESET" if origin == "SRPO_PRESET" else f"delete the 'preset:' line from {origin}"
    return (
        f"preset '{name}' comes from {where} and was made for {made_for}, but this run's dataset is "
        f"{cfg.dataset}: its hyperparameters (extract.beta, steps, learning rates) apply anyway. To use "
        f"another, {fix} or {drop}."
    )


def validate(cfg: RunConfig, origins: dict[str, str] | None = None) -> None:
    """Raise a UsageError naming the first invalid value, what it must be, and where it was set.

    ``origins``: {dotted key: where its value came from}, as ``resolve`` records it; keys not in it hold
    srpo's own default.
    """
    pos, non_neg, unit = "a positive integer", "at least 0", "strictly between 0 and 1"
    positive = "a positive, finite number"
    b, c, x, bl = cfg.behavior, cfg.critic, cfg.extract, cfg.baseline
    checks = [(key, math.isfinite(value), "a finite number") for key, value in _float_values(cfg)]
    checks += [
        ("seed", cfg.seed >= 0, non_neg),
        ("eval.seed", cfg.eval.seed >= 0, non_neg),
        ("behavior.lr", b.lr > 0, positive),
        ("critic.q_lr", c.q_lr > 0, positive),
        ("critic.v_lr", c.v_lr > 0, positive),
        ("extract.lr", x.lr > 0, positive),
        ("baseline.lr", bl.lr > 0, positive),
        ("behavior.weight_decay", b.weight_decay >= 0, non_neg),
        ("behavior.dropout", 0.0 <= b.dropout < 1.0, "in [0, 1)"),
        ("behavior.beta_0", b.beta_0 > 0, positive),
        ("behavior.beta_1", b.beta_1 > b.beta_0, f"above behavior.beta_0 ({b.beta_0})"),
        ("behavior.fourier_scale", b.fourier_scale > 0, positive),
        ("critic.reward_scale", c.reward_scale > 0, positive),
        ("critic.obs_std_eps", c.obs_std_eps > 0, positive),
        ("baseline.temperature", bl.temperature >= 0, non_neg),
        ("baseline.max_weight", bl.max_weight > 0, positive),
        ("extract.eval_every", x.eval_every >= 0, f"{non_neg} (0: never)"),
        ("extract.eval_episodes", x.eval_episodes > 0, pos),
    ]
    for sec in ("behavior", "critic", "extract", "baseline"):
        for name in ("hidden_dim", "n_blocks", "block_expansion", "fourier_dim", "time_dim", "n_layers"):
            if hasattr(getattr(cfg, sec), name):
                checks.append((f"{sec}.{name}", getattr(getattr(cfg, sec), name) > 0, pos))
        for name in ("log_every", "ckpt_every"):
            checks.append((f"{sec}.{name}", getattr(getattr(cfg, sec), name) > 0, pos))
    try:
        cfg.resolved_run_dir()
        run_dir_ok = True
    except (KeyError, IndexError, ValueError, AttributeError):
        run_dir_ok = False
    checks.append(("run_dir", run_dir_ok, "a path whose only placeholders are {dataset} and {seed}"))
    checks += [
        ("behavior.steps", cfg.behavior.steps > 0, pos),
        ("critic.steps", cfg.critic.steps > 0, pos),
        ("extract.steps", cfg.extract.steps > 0, pos),
        ("baseline.steps", cfg.baseline.steps > 0, pos),
        ("behavior.batch_size", cfg.behavior.batch_size > 0, pos),
        ("critic.batch_size", cfg.critic.batch_size > 0, pos),
        ("extract.batch_size", cfg.extract.batch_size > 0, pos),
        ("baseline.batch_size", cfg.baseline.batch_size > 0, pos),
        ("critic.n_q", cfg.critic.n_q >= 1, pos),
        ("critic.expectile", 0.0 < cfg.critic.expectile < 1.0, unit),
        ("critic.discount", 0.0 <= cfg.critic.discount <= 1.0, "between 0 and 1"),
        ("critic.tau", 0.0 < cfg.critic.tau <= 1.0, "in (0, 1]"),
        ("threads", cfg.threads >= 0, f"{non_neg} (0: torch's default)"),
        ("extract.beta", cfg.extract.beta >= 0, f"{non_neg} (0: pure behavior regularization, an ablation)"),
        ("behavior.t_max", 0.0 < cfg.behavior.t_max <= 1.0, "in (0, 1]"),
        (
            "behavior.t_min",
            0.0 < cfg.behavior.t_min < cfg.behavior.t_max,
            f"above 0 and below behavior.t_max ({cfg.behavior.t_max})",
        ),
        ("behavior.ema_decay", 0.0 <= cfg.behavior.ema_decay < 1.0, "in [0, 1) (0: no moving average)"),
        ("extract.t_max", 0.0 < cfg.extract.t_max <= 1.0, "in (0, 1]"),
        (
            "extract.t_min",
            0.0 < cfg.extract.t_min < cfg.extract.t_max,
            f"above 0 and below extract.t_max ({cfg.extract.t_max})",
        ),
        ("extract.keep_every", cfg.extract.keep_every >= 0, f"{non_neg} (0: keep no intermediate actors)"),
        ("baseline.keep_every", cfg.baseline.keep_every >= 0, f"{non_neg} (0: keep no intermediate policies)"),
        ("eval.episodes", cfg.eval.episodes > 0, pos),
        ("eval.num_envs", cfg.eval.num_envs > 0, pos),
        ("eval.candidates", cfg.eval.candidates > 0, pos),
        ("eval.sampling_steps", cfg.eval.sampling_steps > 0, pos),
    ]
    origins = origins or {}
    for key, ok, requirement in checks:
        if ok:
            continue
        sec, _, name = key.rpartition(".")
        value = getattr(getattr(cfg, sec) if sec else cfg, name)
        where = origins.get(key, "srpo's defaults")
        if where == "the command line":
            fix = "give it a valid value on the command line"
        elif where.startswith("an SRPO_"):
            fix = f"change or unset SRPO_{key.upper().replace('.', '__')}"
        elif where.startswith("the preset"):
            fix = f"override it in srpo.yaml or with --set {key}=VALUE"
        else:
            fix = f"edit it in {where} or override it with --set {key}=VALUE"
        help_text = field_info(key).metadata["help"]
        raise UsageError(
            f"Invalid value {value!r} for '{key}' (from {where}): it must be {requirement}.",
            f"{key}: {help_text}. To fix it, {fix}.",
        )


def _float_values(cfg: RunConfig) -> list[tuple[str, float]]:
    out = []
    for key in all_keys():
        sec, _, name = key.rpartition(".")
        value = getattr(getattr(cfg, sec) if sec else cfg, name)
        if isinstance(value, float):
            out.append((key, value))
    return out


def write_yaml(cfg: RunConfig, path: Path, preset: str | None = None, pin_all: bool = False) -> None:
    """Write ``srpo.yaml``: dataset, run directory, device and seed, and every stage's hyperparameters.

    Unless ``pin_all``, the hyperparameters are written commented out, showing the values in force, so that
    the file documents every key without freezing them: a preset (chosen with ``preset:`` or by the dataset)
    and srpo's defaults still apply to every key the user has not uncommented.
    """
    tree = cfg.to_dict()
    lines = [
        "# srpo run configuration. Precedence: flag > SRPO_* env var > this file > preset > defaults.",
        "# Uncomment a section line and a key under it to pin a value; commented keys follow the preset",
        "# ('srpo presets'; by default the one whose dataset matches) and srpo's defaults.",
    ]
    if preset:
        lines.append(f"preset: {preset}")
    top = {k: v for k, v in tree.items() if k not in SECTIONS}
    lines.append(yaml.safe_dump(top, sort_keys=False).rstrip())
    for sec in SECTIONS:
        body = yaml.safe_dump({sec: tree[sec]}, sort_keys=False).rstrip().splitlines()
        if pin_all:
            lines += body
        else:
            lines += [f"# {line}" for line in body]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)
