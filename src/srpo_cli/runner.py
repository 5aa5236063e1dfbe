"""Glue between a run directory and evaluation, latency measurement and the full pipeline."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoint import atomic_write, load_checkpoint
from .config import RunConfig
from .errors import UsageError
from .evaluate import EvalResult, evaluate, latency, make_env_fn
from .policies import DiffusionPolicy, NumpyActor, action_bounds, actor_module, load_behavior, load_critic
from .training import resolve_device

POLICY_FILES = {"srpo": "actor.safetensors", "awr": "awr.safetensors", "bc": "bc.safetensors"}


def policy_file(policy: str) -> str:
    if policy not in POLICY_FILES:
        raise UsageError(f"Unknown policy '{policy}'.", f"Choose one of {', '.join(POLICY_FILES)}.")
    return POLICY_FILES[policy]


def _diffusion_policy(cfg: RunConfig, run_dir: Path, device: torch.device):
    behavior, schedule, b_ckpt = load_behavior(run_dir / "behavior.safetensors", device)
    _, q_target, _, _ = load_critic(run_dir / "critic.safetensors", device)
    low, high = action_bounds(b_ckpt)
    pol = DiffusionPolicy(
        behavior,
        schedule,
        q_target,
        low,
        high,
        cfg.eval.candidates,
        cfg.eval.sampling_steps,
        device,
        seed=cfg.eval.seed,
    )
    return pol, b_ckpt


def evaluate_run(cfg: RunConfig, run_dir: Path, policy: str = "srpo") -> EvalResult:
    """Evaluate one run directory's policy and record per-episode returns in ``run_dir/eval.json``."""
    if policy == "diffusion":
        pol, ckpt = _diffusion_policy(cfg, run_dir, resolve_device(cfg.device))
    else:
        ckpt = load_checkpoint(run_dir / policy_file(policy))
        low, high = action_bounds(ckpt)
        pol = NumpyActor.from_module(actor_module(ckpt), low, high)
    extra = ckpt.meta["extra"]
    env_fn = make_env_fn(extra.get("eval_env_spec"), ckpt.meta["dataset_id"])
    res = evaluate(
        pol,
        env_fn,
        cfg.eval.episodes,
        cfg.eval.num_envs,
        cfg.eval.seed,
        extra.get("ref_min_score"),
        extra.get("ref_max_score"),
    )
    res.extra["dataset_mean_return"] = extra.get("dataset_mean_return")
    record_eval(run_dir, policy, res, cfg)
    return res


def record_eval(run_dir: Path, policy: str, res: EvalResult, cfg: RunConfig) -> None:
    path = run_dir / "eval.json"
    data: dict[str, Any] = {}
    if path.exists():
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError:
            data = {}
    data[policy] = {
        **res.summary(),
        "returns": res.returns.tolist(),
        "lengths": res.lengths.tolist(),
        "eval_seed": cfg.eval.seed,
        "num_envs": cfg.eval.num_envs,
    }
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=1)))


def bench_run(cfg: RunConfig, run_dir: Path, repeats: int = 2000) -> dict[str, Any]:
    """Latency of the SRPO actor (numpy fast path, as eval acts; and torch eager for reference) and of the
    diffusion baseline, same machine, same process."""
    device = resolve_device(cfg.device)
    ckpt = load_checkpoint(run_dir / "actor.safetensors", "actor")
    low, high = action_bounds(ckpt)
    module = actor_module(ckpt)
    fast = NumpyActor.from_module(module, low, high)
    rng = np.random.default_rng(0)
    obs1 = rng.standard_normal((1, ckpt.meta["obs_dim"])).astype(np.float32)
    obs256 = rng.standard_normal((256, ckpt.meta["obs_dim"])).astype(np.float32)
    results: dict[str, dict[str, float]] = {}

    def throughput(fn, n_calls: int) -> float:
        fn()
        t0 = time.perf_counter()
        for _ in range(n_calls):
            fn()
        return 256 * n_calls / (time.perf_counter() - t0)

    r = latency(lambda: fast(obs1), repeats)
    r["throughput_256"] = throughput(lambda: fast(obs256), max(10, repeats // 10))
    results["srpo actor (numpy fast path)"] = r

    mod_dev = module.to(device)
    t1 = torch.as_tensor(obs1, device=device)
    t256 = torch.as_tensor(obs256, device=device)

    def torch_act(x):
        with torch.inference_mode():
            a = mod_dev(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            return a

    r = latency(lambda: torch_act(t1), repeats)
    r["throughput_256"] = throughput(lambda: torch_act(t256), max(10, repeats // 10))
    results[f"srpo actor (torch eager, {device.type})"] = r

    diff, _ = _diffusion_policy(cfg, run_dir, device)

    def diff_act(x):
        a = diff.act_tensor(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return a

    d_reps = max(10, repeats // 100)
    r = latency(lambda: diff_act(t1), d_reps, warmup=3)
    r["throughput_256"] = throughput(lambda: diff_act(t256), 3)
    name = f"diffusion baseline ({cfg.eval.candidates} candidates x {cfg.eval.sampling_steps} steps, {device.type})"
    results[name] = r
    srpo = results["srpo actor (numpy fast path)"]
    return {
        "device": str(device),
        "threads": torch.get_num_threads(),
        "policies": results,
        "ratio_p50": r["p50_us"] / srpo["p50_us"],
        "ratio_throughput": srpo["throughput_256"] / r["throughput_256"],
        "srpo_p50_us": srpo["p50_us"],
        "diffusion_p50_us": r["p50_us"],
    }


def run_pipeline(cfg: RunConfig, force: bool = False, quiet: bool = False, log=None) -> dict[str, Any]:
    """fetch -> behavior -> critic -> extract -> eval (SRPO, diffusion baseline) -> bench, in one run dir."""
    from .behavior import train_behavior
    from .critic import train_critic
    from .data import load_transitions
    from .extract import train_actor
    from .training import state_path

    t0 = time.perf_counter()
    device = resolve_device(cfg.device)
    run_dir = cfg.resolved_run_dir()
    data = load_transitions(cfg.dataset, device, cfg.data.normalize_actions)
    stages = [
        ("behavior.safetensors", train_behavior),
        ("critic.safetensors", train_critic),
        ("actor.safetensors", train_actor),
    ]
    for file_name, fn in stages:
        path = run_dir / file_name
        if path.exists() and not force:
            ck = load_checkpoint(path)
            if ck.meta["step"] >= getattr(cfg, "extract" if ck.stage == "actor" else ck.stage).steps:
                if log:
                    log.print(f"{file_name}: finished earlier, reused (--force to retrain)", style="dim")
                continue
            if state_path(path).exists():
                fn(cfg, data, run_dir, device, resume=True, quiet=quiet)
                continue
        fn(cfg, data, run_dir, device, quiet=quiet)
    if log:
        log.print("evaluating the SRPO actor and the diffusion baseline ...", style="dim")
    srpo = evaluate_run(cfg, run_dir, "srpo")
    diff = evaluate_run(cfg, run_dir, "diffusion")
    bench = bench_run(cfg, run_dir, repeats=500)
    result: dict[str, Any] = {
        "dataset": cfg.dataset,
        "run_dir": str(run_dir),
        "dataset_return": float(data.episode_returns.mean()),
        "srpo_return": float(srpo.returns.mean()),
        "diffusion_return": float(diff.returns.mean()),
        "srpo_p50_us": bench["srpo_p50_us"],
        "diffusion_p50_us": bench["diffusion_p50_us"],
        "latency_ratio": bench["ratio_p50"],
        "episodes": cfg.eval.episodes,
    }
    if srpo.has_ref:
        for key in ("dataset", "srpo", "diffusion"):
            result[f"{key}_score"] = float(srpo.normalized(result[f"{key}_return"]))
    result["wall_s"] = time.perf_counter() - t0
    atomic_write(run_dir / "pipeline.json", lambda tmp: Path(tmp).write_text(json.dumps(result, indent=1)))
    return result
