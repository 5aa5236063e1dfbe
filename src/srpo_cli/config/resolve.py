"""Resolving a configuration: presets, ``srpo.yaml``, ``SRPO_*`` variables and flags, validated in one place.

Precedence, highest first: command-line flag > environment variable (``SRPO_...``) > ``srpo.yaml`` in the
working directory > ``--preset NAME`` > the built-in defaults (``config/schema.py``).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from srpo_cli.config.schema import CONFIG_FILE, DEFAULT_DATASET, SECTIONS, RunConfig, all_keys, field_info
from srpo_cli.errors import UsageError


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
    return sorted(p.name[:-5] for p in resources.files("srpo_cli.config.presets").iterdir() if p.name.endswith(".yaml"))


def load_preset(name: str) -> dict[str, Any]:
    names = preset_names()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=1)
        hint = f"Did you mean '{close[0]}'?" if close else "Run 'srpo presets' to list them."
        raise UsageError(f"Unknown preset '{name}'.", hint)
    text = resources.files("srpo_cli.config.presets").joinpath(f"{name}.yaml").read_text()
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
    origins: dict[str, str] | None = None,
) -> RunConfig:
    """Merge defaults < preset < srpo.yaml < environment < flags into one validated RunConfig.

    ``warnings``: a list to which what the user should hear about the resolution is appended (a preset pinned
    by srpo.yaml or SRPO_PRESET for another dataset than the run's). ``origins``: a dict filled with where
    each key's value came from (keys absent hold srpo's defaults)."""
    config_path = Path(CONFIG_FILE) if config_path is None else config_path
    file_tree = read_yaml(config_path) if config_path.exists() else {}
    env = dict(os.environ if environ is None else environ)
    preset, origin = _preset_in_force(flags, preset, config_path, file_tree, env)
    cfg = RunConfig()
    preset_tree = load_preset(preset) if preset else {}
    # Where each key's value came from, so that an invalid value is reported with the place to fix it.
    origins = {} if origins is None else origins
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
        ("extract.auto_beta_distance", x.auto_beta_distance > 0, positive),
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
