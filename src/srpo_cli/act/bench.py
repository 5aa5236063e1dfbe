"""Per-action latency of a run's SRPO actor (its fast path and the forms it replaces) against the diffusion
baseline, measured in one process."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from srpo_cli import artifacts
from srpo_cli.act.evaluate import latency
from srpo_cli.act.policies import (
    NumpyActor,
    action_bounds,
    actor_module,
    diffusion_policy,
)
from srpo_cli.algos.loading import check_same_lineage
from srpo_cli.config import RunConfig
from srpo_cli.train.checkpoint import load_checkpoint
from srpo_cli.train.device import resolve_device


def bench_run(
    cfg: RunConfig, run_dir: Path, repeats: int = 2000, on_row: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Latency of the SRPO actor (its fast path, as eval acts; the numpy forward, torch eager and TorchScript
    for reference) and of the diffusion baseline, same machine, same process. ``on_row(name)`` is called as
    each measurement starts (the diffusion baseline's takes most of the time)."""
    note = on_row or (lambda name: None)
    device = resolve_device(cfg.device)
    ckpt = load_checkpoint(run_dir / artifacts.ACTOR, "actor")
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

    fast_name = f"srpo actor (fast path, {fast.backend})"
    note(fast_name)
    r = latency(lambda: fast(obs1), repeats)
    r["throughput_256"] = throughput(lambda: fast(obs256), max(10, repeats // 10))
    results[fast_name] = r
    if fast.backend != "numpy":
        note("srpo actor (numpy forward)")
        plain = NumpyActor.from_module(module, low, high, compiled=False)
        r = latency(lambda: plain(obs1), repeats)
        r["throughput_256"] = throughput(lambda: plain(obs256), max(10, repeats // 10))
        results["srpo actor (numpy forward)"] = r

    mod_dev = copy.deepcopy(module).to(device)  # a copy: the TorchScript row below stays on the CPU
    t1 = torch.as_tensor(obs1, device=device)
    t256 = torch.as_tensor(obs256, device=device)

    def torch_act(x):
        with torch.inference_mode():
            a = mod_dev(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            return a

    note(f"srpo actor (torch eager, {device.type})")
    r = latency(lambda: torch_act(t1), repeats)
    r["throughput_256"] = throughput(lambda: torch_act(t256), max(10, repeats // 10))
    results[f"srpo actor (torch eager, {device.type})"] = r

    # The alternative issue 4 names (a frozen TorchScript module), same process, so a reader can scale
    # our figure to their machine: the ratio between the rows carries over, the microseconds do not. Always
    # on the CPU, where the actor is deployed, whatever --device the diffusion baseline runs on.
    note("srpo actor (TorchScript frozen, cpu)")
    frozen = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.script(module.eval())))
    c1, c256 = torch.as_tensor(obs1), torch.as_tensor(obs256)
    with torch.inference_mode():
        r = latency(lambda: frozen(c1), repeats)
        r["throughput_256"] = throughput(lambda: frozen(c256), max(10, repeats // 10))
    results["srpo actor (TorchScript frozen, cpu)"] = r

    note("diffusion baseline")
    diff, b_ckpt = diffusion_policy(cfg, run_dir, device)
    check_same_lineage(ckpt, b_ckpt)  # the two rows must act on the same observations

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
    srpo = results[fast_name]
    return {
        "device": str(device),
        "threads": torch.get_num_threads(),
        "policies": results,
        "ratio_p50": r["p50_us"] / srpo["p50_us"],
        "ratio_throughput": srpo["throughput_256"] / r["throughput_256"],
        "srpo_p50_us": srpo["p50_us"],
        "diffusion_p50_us": r["p50_us"],
    }
