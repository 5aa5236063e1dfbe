"""``srpo sweep``: datasets x seeds x betas on Ray, from a laptop to a cluster.

Why Ray core tasks rather than Ray Tune: a sweep here is a graph of stages that share work (one behavior model
and one critic per dataset and seed feed one extraction per beta, the AWR baseline and the evaluations), and Ray
tasks that take other tasks' results as arguments express that graph as it is, each stage scheduled as soon as
its inputs exist and a CPU (or GPU share) is free. Tune's unit is a whole trial, which would retrain the
pretraining once per beta or need the same graph built by hand inside it.

Every stage trains through ``pipeline.train_stage`` into the run directory it would use on the command line,
so a sweep resumes like any run: a finished stage is reused (with the lineage and configuration checks of
``pipeline.stage_plan``), a partial one continues from its checkpoint. A stage that fails is reported with
its error; the stages that do not depend on it go on.

The same graph rebuilds the published benchmark tables (``reproductions/bench_tables.sh``): ``diffusion``
adds the diffusion-policy baseline's evaluation per (dataset, seed), ``latency`` the action latency of the
SRPO actor against that baseline (measured after everything else, on an idle machine), and every extraction
reports the Q / score balance ``srpo extract`` prints. A beta given as ``preset`` is each dataset's configured
beta, so datasets with different betas share one column.
"""

from __future__ import annotations

import csv
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from srpo_cli import artifacts
from srpo_cli.config import resolve
from srpo_cli.errors import Interrupted, RuntimeFailure, UsageError

_NO_CONFIG_FILE = Path(os.devnull) / "srpo.yaml"  # a sweep is configured by its arguments alone


def parse_seeds(text: str) -> list[int]:
    """``0-4`` or ``0,1,5`` or both (``0-2,7``)."""
    seeds: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if not part:
                continue
            lo, _, hi = part.partition("-")
            seeds += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
    except ValueError:
        raise UsageError(f"--seeds expects integers and ranges such as 0-4 or 0,1,5; got '{text}'.") from None
    if not seeds or len(set(seeds)) < len(seeds):
        raise UsageError(f"--seeds '{text}' names no seed, or a seed twice.")
    return seeds


PRESET_BETA = "preset"  # in --betas: each dataset's configured extract.beta
AUTO_BETA = "auto"  # in --betas: chosen by the balance probe before each extraction (extract.auto_beta)


def _beta_name(beta: float | str) -> str:
    return beta if isinstance(beta, str) else f"{beta:g}"


def parse_betas(text: str) -> list[str]:
    """``0.01,0.05`` or ``preset,0.01``: the betas' keys as the summary and the tables spell them."""
    keys: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if part in (PRESET_BETA, AUTO_BETA):
            keys.append(part)
            continue
        try:
            value = float(part)
        except ValueError:
            raise UsageError(
                f"--betas expects numbers, 'preset' or 'auto', e.g. preset,0.01,0.05; got '{part}'."
            ) from None
        if not (value >= 0 and np.isfinite(value)):
            raise UsageError(f"--betas: {part} is not a beta (a finite number, 0 or more).")
        keys.append(f"{value:g}")
    if not keys:
        raise UsageError("--betas names no beta.", "Example: --betas 0.01,0.05,0.1 (or preset,0.01)")
    if len(set(keys)) < len(keys):
        raise UsageError(f"--betas '{text}' names a beta twice.")
    return keys


@dataclass
class Task:
    """One node of the sweep's graph, as the live table shows it."""

    name: str  # e.g. "hopper seed 0 extract beta=0.05"
    ref: Any = None
    state: str = "waiting"  # waiting, done, failed
    wall_s: float | None = None
    error: str | None = None
    result: dict[str, Any] = field(default_factory=dict)


def _config_from_dict(d: dict[str, Any]):
    """A RunConfig back from ``RunConfig.to_dict()`` (what a Ray task receives)."""
    from srpo_cli.config import SECTIONS, RunConfig

    cfg = RunConfig(**{k: v for k, v in d.items() if k not in SECTIONS})
    for sec, cls in SECTIONS.items():
        setattr(cfg, sec, cls(**d[sec]))
    return cfg


def _stage_task(stage: str, cfg_dict: dict, run_dir: str, threads: int, *parents: Any) -> dict[str, Any]:
    """Run in a Ray worker: train ``stage`` of the run (or reuse it when finished); ``parents`` are the results
    of the stages it reads, passed only so that Ray starts it after them."""
    cfg = _config_from_dict(cfg_dict)
    return _train_or_reuse(stage, cfg, run_dir, threads, _DataOnce(cfg))


class _DataOnce:
    """The run's transitions, loaded on first use only (a reused stage needs none; an extraction and the balance
    measured after it share one load)."""

    def __init__(self, cfg):
        self.cfg, self._data = cfg, None

    def __call__(self):
        from srpo_cli.data.transitions import load_transitions

        if self._data is None:
            self._data = load_transitions(self.cfg.dataset, "cpu", self.cfg.data.normalize_actions)
        return self._data


def _train_or_reuse(stage: str, cfg, run_dir: str, threads: int, data: _DataOnce) -> dict[str, Any]:
    import torch

    from srpo_cli.pipeline import stage_plan, train_stage

    torch.set_num_threads(max(1, threads))
    run = Path(run_dir)
    path = run / artifacts.STAGE_FILES[stage]
    section = {"extract": "extract", "behavior": "behavior", "critic": "critic"}.get(stage, "baseline")
    plan = stage_plan(path, getattr(cfg, section).steps, cfg=cfg)
    t0 = time.perf_counter()
    if plan != "skip":
        train_stage(stage, cfg, data(), run, torch.device("cpu"), resume=plan == "resume", quiet=True)
    return {"stage": stage, "plan": plan, "wall_s": time.perf_counter() - t0, "train_s": _training_wall(run, stage)}


def _training_wall(run: Path, stage: str) -> float | None:
    """The stage's own training time, resumes included: the last ``wall_s`` of its metrics (a reused stage
    keeps the time it took when it was trained)."""
    path = run / artifacts.METRICS_DIR / f"{stage}.csv"
    if not path.exists():
        return None
    with open(path, newline="") as f:
        walls = [float(r["wall_s"]) for r in csv.DictReader(f) if r.get("wall_s")]
    return walls[-1] if walls else None


def _eval_task(policy: str, cfg_dict: dict, run_dir: str, threads: int, *parents: Any) -> dict[str, Any]:
    import torch

    from srpo_cli.pipeline import evaluate_run

    torch.set_num_threads(max(1, threads))
    cfg = _config_from_dict(cfg_dict)
    res = evaluate_run(cfg, Path(run_dir), policy)
    summary = res.summary()
    data_return = summary.get("dataset_mean_return")
    if data_return is not None:
        summary["dataset_score"] = float(res.normalized(data_return)) if res.has_ref else float(data_return)
    return summary


def _link_parents(run: Path, beta_dir: Path) -> None:
    """An extraction at another beta reads the run's behavior model and critic: hard links, not copies."""
    beta_dir.mkdir(parents=True, exist_ok=True)
    for name in (artifacts.BEHAVIOR, artifacts.CRITIC):
        target = beta_dir / name
        if target.exists() and os.path.samefile(target, run / name):
            continue
        target.unlink(missing_ok=True)
        os.link(run / name, target)


def _extract_task(cfg_dict: dict, run_dir: str, beta_dir: str, threads: int, *parents: Any) -> dict[str, Any]:
    """The extraction at one beta, and the balance of its two terms there (``srpo extract``'s probe)."""
    import torch

    from srpo_cli.algos.extract import run_balance
    from srpo_cli.train.checkpoint import load_checkpoint

    _link_parents(Path(run_dir), Path(beta_dir))
    cfg = _config_from_dict(cfg_dict)
    data = _DataOnce(cfg)
    result = _train_or_reuse("extract", cfg, beta_dir, threads, data)
    # the beta the actor was trained at: the configured one, or the one auto_beta chose
    cfg.extract.beta = float(load_checkpoint(Path(beta_dir) / artifacts.ACTOR, "actor").config["extract"]["beta"])
    result["balance"] = run_balance(cfg, data(), Path(beta_dir), torch.device("cpu")).balance_step
    result["beta"] = cfg.extract.beta
    return result


def _latency_task(cfg_dict: dict, beta_dir: str, threads: int, repeats: int) -> dict[str, Any]:
    """Action latency of the SRPO actor and of the diffusion baseline (``srpo bench``), same process."""
    import torch

    from srpo_cli.act.bench import bench_run

    torch.set_num_threads(max(1, threads))
    return bench_run(_config_from_dict(cfg_dict), Path(beta_dir), repeats=repeats)


def run_sweep(
    datasets: list[str],
    seeds: list[int],
    betas: list[str | float],
    out: Path,
    *,
    preset: str | None = None,
    overrides: dict[str, Any] | None = None,
    address: str | None = None,
    num_cpus: int | None = None,
    cpus_per_trial: float = 1,
    gpus_per_trial: float = 0,
    diffusion: bool = False,
    latency: bool = False,
    latency_repeats: int = 500,
    on_update: Callable[[list[Task]], None] | None = None,
) -> dict[str, Any]:
    """Train and evaluate every (dataset, seed) and, from each, one SRPO actor per beta; returns the summary
    that ``write_results`` publishes. ``betas``: numbers, or ``"preset"`` for each dataset's configured beta.
    ``address``: None starts a private local Ray instance with ``num_cpus`` CPUs (stopped at the end); ``auto``
    or ``ray://host:port`` joins a running cluster, whose workers must see ``out`` at the same path (shared
    storage). ``diffusion``: also evaluate the diffusion-policy baseline; ``latency``: also time the SRPO actor
    against it (on the first seed and the first beta, after every other task)."""
    try:
        import ray
    except ImportError:
        raise RuntimeFailure(
            "srpo sweep needs Ray.", "Install it with: pip install 'srpo-cli[sweep]' (or 'ray')."
        ) from None
    keys = parse_betas(",".join(str(b) for b in betas))
    out = Path(out).resolve()

    def configure(dataset: str, seed: int, beta: float | str | None = None):
        flags = {**(overrides or {}), "dataset": dataset, "seed": seed}
        flags["run_dir"] = str(out / "runs" / "{dataset}" / "seed{seed}")
        if beta == AUTO_BETA:
            flags["extract.auto_beta"] = True
        elif beta is not None:
            flags["extract.beta"], flags["extract.auto_beta"] = beta, False
        return resolve(flags, preset=preset, config_path=_NO_CONFIG_FILE, environ={})

    cfgs = {(dataset, seed): configure(dataset, seed) for dataset in datasets for seed in seeds}

    # each key's beta per run: 'preset' is the run's own configured beta, which may equal a listed one, or
    # 'auto' where the run's configuration chooses it (extract.auto_beta)
    def preset_beta(cfg):
        return AUTO_BETA if cfg.extract.auto_beta else cfg.extract.beta

    beta_values = {
        run: {k: preset_beta(cfg) if k == PRESET_BETA else k if k == AUTO_BETA else float(k) for k in keys}
        for run, cfg in cfgs.items()
    }
    started_here = not ray.is_initialized() and address is None
    t0 = time.perf_counter()
    if not ray.is_initialized():
        kwargs = {"num_cpus": num_cpus} if address is None else {}
        if address is None:
            # A private instance: "local" starts one even where another Ray runs on this machine (ray.init() would
            # join that one, whose CPUs are not ours to size). Its workers keep this process's priority: Ray
            # renices workers by 15, and the stages of a sweep are the work itself, not background chores (at
            # nice 15 beside two ordinary training processes, a behavior stage ran 2 steps/s instead of 120).
            os.environ.setdefault("RAY_worker_niceness", "0")
        ray.init(
            address=address or "local",
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
            **kwargs,
        )
    startup_s = time.perf_counter() - t0
    threads = max(1, int(cpus_per_trial))
    opts = {"num_cpus": cpus_per_trial, "num_gpus": gpus_per_trial, "max_retries": 0}
    stage = ray.remote(_stage_task).options(**opts)
    extract = ray.remote(_extract_task).options(**opts)
    evaluate = ray.remote(_eval_task).options(**opts)
    tasks: list[Task] = []
    beta_dirs: dict[tuple[str, int], dict[float | str, tuple[dict, Path]]] = {}
    try:
        for (dataset, seed), cfg in cfgs.items():
            run = cfg.resolved_run_dir()
            run.mkdir(parents=True, exist_ok=True)
            d = cfg.to_dict()
            label = f"{dataset} seed {seed}"
            b = Task(f"{label} behavior", stage.remote("behavior", d, str(run), threads))
            c = Task(f"{label} critic", stage.remote("critic", d, str(run), threads))
            awr = Task(f"{label} awr", stage.remote("awr", d, str(run), threads, c.ref))
            bc = Task(f"{label} bc", stage.remote("bc", d, str(run), threads))
            tasks += [b, c, awr, bc]
            tasks.append(Task(f"{label} eval awr", evaluate.remote("awr", d, str(run), threads, awr.ref)))
            tasks.append(Task(f"{label} eval bc", evaluate.remote("bc", d, str(run), threads, bc.ref)))
            if diffusion:
                tasks.append(
                    Task(f"{label} eval diffusion", evaluate.remote("diffusion", d, str(run), threads, b.ref, c.ref))
                )
            beta_dirs[dataset, seed] = {}
            for beta in dict.fromkeys(beta_values[dataset, seed].values()):  # one extraction per distinct beta
                cb = configure(dataset, seed, beta).to_dict()
                beta_dir = run / f"beta-{_beta_name(beta)}"
                cb["run_dir"] = str(beta_dir)
                beta_dirs[dataset, seed][beta] = (cb, beta_dir)
                e = Task(
                    f"{label} extract beta={_beta_name(beta)}",
                    extract.remote(cb, str(run), str(beta_dir), threads, b.ref, c.ref),
                )
                tasks.append(e)
                tasks.append(
                    Task(
                        f"{label} eval srpo beta={_beta_name(beta)}",
                        evaluate.remote("srpo", cb, str(beta_dir), threads, e.ref),
                    )
                )
        _wait(ray, tasks, on_update)
        if latency:
            # timed alone, after the training and evaluations: a core shared with a training stage would
            # time the neighbour as much as the actor
            bench = ray.remote(_latency_task).options(**opts)
            timed = []
            for dataset in datasets:
                seed = seeds[0]
                beta = beta_values[dataset, seed][keys[0]]
                cb, beta_dir = beta_dirs[dataset, seed][beta]
                if (beta_dir / artifacts.ACTOR).exists():
                    ref = bench.remote(cb, str(beta_dir), threads, latency_repeats)
                    timed.append(Task(f"{dataset} seed {seed} latency beta={_beta_name(beta)}", ref))
            tasks += timed
            _wait(ray, timed, lambda _: on_update(tasks) if on_update else None)
    finally:
        if started_here:
            ray.shutdown()
    return summarize(cfgs, keys, beta_values, tasks, startup_s, time.perf_counter() - t0)


def _wait(ray: Any, tasks: list[Task], on_update: Callable[[list[Task]], None] | None) -> None:
    """Collect every task's result as it finishes; a failure is recorded with its error, not raised. Ctrl-C or
    SIGTERM stops the sweep: each running stage is cancelled the way Ctrl-C stops a stage (it finishes its step
    and checkpoints), so that the same command continues it; without this, Ray would kill the workers with
    everything since their last periodic checkpoint."""
    import signal
    import threading

    pending = {t.ref: t for t in tasks}

    def stop(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop) if threading.current_thread() is threading.main_thread() else None
    try:
        _collect(ray, tasks, pending, on_update)
    except KeyboardInterrupt:
        if previous is not None:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one stop is enough while the stages checkpoint
        for ref in pending:
            ray.cancel(ref, force=False, recursive=False)
        ray.wait(list(pending), num_returns=len(pending), timeout=120.0)
        raise Interrupted(
            "Sweep stopped; the stages that were training wrote a checkpoint.",
            "Run the same command again to continue: finished stages are reused, stopped ones resume.",
        ) from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _collect(ray: Any, tasks: list[Task], pending: dict, on_update: Callable[[list[Task]], None] | None) -> None:
    while pending:
        if on_update:
            on_update(tasks)
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
        for ref in ready:
            t = pending.pop(ref)
            try:
                t.result = ray.get(ref)
                t.state, t.wall_s = "done", t.result.get("wall_s")
            except Exception as e:  # a RayTaskError wrapping the stage's own error (or its parent's)
                cause = getattr(e, "cause", None) or e
                text = str(cause).strip().splitlines()
                t.state, t.error = "failed", (text[-1] if text else type(cause).__name__)[:300]
    if on_update:
        on_update(tasks)


STAGES = ("behavior", "critic", "extract", "awr", "bc")


def summarize(
    cfgs: dict, keys: list[str], beta_values: dict, tasks: list[Task], startup_s: float, wall_s: float
) -> dict[str, Any]:
    """Scores per dataset and beta over seeds (mean, std), the data's average, BC and AWR (and the diffusion
    baseline where evaluated), each extraction's balance, training time per stage, the best beta per dataset,
    and every failure."""
    by_name = {t.name: t for t in tasks}
    datasets = list(dict.fromkeys(d for d, _ in cfgs))
    rows = []
    for dataset in datasets:
        seeds = sorted(s for d, s in cfgs if d == dataset)
        entry: dict[str, Any] = {"dataset": dataset, "seeds": seeds, "betas": {}, "beta_values": {}, "balance": {}}
        for key in keys:
            values = [beta_values[dataset, s][key] for s in seeds]
            names = [f"{dataset} seed {s} eval srpo beta={_beta_name(v)}" for s, v in zip(seeds, values, strict=True)]
            entry["betas"][key] = _mean_std(_scores(by_name, names))
            extractions = [
                by_name.get(f"{dataset} seed {s} extract beta={_beta_name(v)}")
                for s, v in zip(seeds, values, strict=True)
            ]
            done = [t.result if t is not None and t.state == "done" else {} for t in extractions]
            if AUTO_BETA in values:  # the beta each seed's probe chose
                entry.setdefault("auto_keys", []).append(key)
                values = [r.get("beta") for r in done]
            entry["beta_values"][key] = values[0] if len(set(values)) == 1 else values
            entry["balance"][key] = [r.get("balance") for r in done]
        for policy in ("bc", "awr", "diffusion"):
            names = [f"{dataset} seed {s} eval {policy}" for s in seeds]
            if policy != "diffusion" or any(n in by_name for n in names):
                entry[policy] = _mean_std(_scores(by_name, names))
        entry["data"] = _data_score(dataset, tasks)
        finished = {b: v for b, v in entry["betas"].items() if v["n"]}
        entry["best_beta"] = max(finished, key=lambda b: finished[b]["mean"]) if finished else None
        train_s: dict[str, list[float]] = {}
        for t in tasks:
            if t.state == "done" and t.name.startswith(f"{dataset} seed") and t.result.get("train_s") is not None:
                train_s.setdefault(t.result["stage"], []).append(t.result["train_s"])
        entry["train_s"] = {k: float(np.mean(train_s[k])) for k in STAGES if k in train_s}
        lat = next((t for t in tasks if t.name.startswith(f"{dataset} seed") and " latency " in t.name), None)
        if lat is not None and lat.state == "done":
            entry["latency_p50_us"] = {"srpo": lat.result["srpo_p50_us"], "diffusion": lat.result["diffusion_p50_us"]}
        rows.append(entry)
    walls: dict[str, list[float]] = {}
    for t in tasks:
        if t.state == "done" and t.result.get("plan") in ("train", "resume"):
            kind = t.result["stage"]
            walls.setdefault(kind, []).append(t.wall_s or 0.0)
    return {
        "rows": rows,
        "betas": keys,
        "wall_s_per_stage": {k: float(np.mean(v)) for k, v in walls.items()},
        "ray_startup_s": startup_s,
        "wall_s": wall_s,
        "failures": [{"task": t.name, "error": t.error} for t in tasks if t.state == "failed"],
        "score_scale": "0-100 normalized where the dataset has reference scores, else return",
    }


def _scores(by_name: dict[str, Task], names: list[str]) -> list[float]:
    """Each finished evaluation's score (its return where the dataset has no reference scores)."""
    done = [by_name[n] for n in names if n in by_name and by_name[n].state == "done"]
    return [float(t.result.get("score_mean", t.result.get("return_mean"))) for t in done]


def _data_score(dataset: str, tasks: list[Task]) -> float | None:
    """The data's average on the table's scale, as any finished evaluation on the dataset reports it."""
    for t in tasks:
        if t.state == "done" and t.name.startswith(f"{dataset} seed") and "dataset_score" in t.result:
            return float(t.result["dataset_score"])
    return None


def _mean_std(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "n": len(values)}


def chosen_betas(row: dict[str, Any], key: str) -> str:
    """' at 0.012, 0.015' for a column whose beta the probe chose ('auto', or 'preset' where the preset sets
    extract.auto_beta): the beta each seed's probe chose; '' for any other."""
    if key not in row.get("auto_keys", ()):
        return ""
    chosen = row["beta_values"][key]
    return " at " + ", ".join(
        "-" if v is None else f"{v:.3g}" for v in (chosen if isinstance(chosen, list) else [chosen])
    )


def write_results(summary: dict[str, Any], out: Path, command: str) -> dict[str, Path]:
    """``sweep.md`` (a table with the best beta per dataset in bold), ``sweep.json`` and ``sweep.png`` (score
    against beta with the spread over seeds) in ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from srpo_cli.train.checkpoint import atomic_write

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    def fmt(v: dict[str, Any]) -> str:
        return "-" if not v["n"] else f"{v['mean']:.1f} ± {v['std']:.1f} (n={v['n']})"

    keys = summary["betas"]
    rows = summary["rows"]
    has_diffusion = any("diffusion" in r for r in rows)
    has_latency = any("latency_p50_us" in r for r in rows)

    def beta_label(key: str) -> str:
        if key not in (PRESET_BETA, AUTO_BETA):
            return f"SRPO beta={key}"
        if key == AUTO_BETA:  # chosen per run: shown in the rows
            return "SRPO beta=auto"
        values = {"auto" if key in r.get("auto_keys", ()) else json.dumps(r["beta_values"][key]) for r in rows}
        return f"SRPO beta=preset ({', '.join(sorted(values))})"

    lines = [
        "# srpo sweep",
        "",
        f"Command: `{command}`  ",
        f"Score: {summary['score_scale']}; mean ± std over seeds of each seed's final actor. Best beta in bold.  ",
        f"Wall time: {summary['wall_s']:.0f} s in all, Ray start-up {summary['ray_startup_s']:.1f} s; "
        "training s per stage: each stage's own time from its metrics (mean over seeds; resumes included, "
        "stages beside each other share the machine).",
        "",
        "| dataset | data | "
        + " | ".join(beta_label(b) for b in keys)
        + (" | diffusion" if has_diffusion else "")
        + " | AWR | BC | training s ("
        + " / ".join(STAGES)
        + ")"
        + (" | latency p50 SRPO / diffusion (µs)" if has_latency else "")
        + " |",
        "|---|---|" + "---|" * (len(keys) + has_diffusion + 3 + has_latency),
    ]
    for row in rows:
        cells = []
        for b in keys:
            text = fmt(row["betas"][b])
            text += chosen_betas(row, b)
            cells.append(f"**{text}**" if b == row["best_beta"] else text)
        if has_diffusion:
            cells.append(fmt(row["diffusion"]) if "diffusion" in row else "-")
        cells += [fmt(row["awr"]), fmt(row["bc"])]
        cells.append(" / ".join(f"{row['train_s'][k]:.0f}" if k in row["train_s"] else "-" for k in STAGES))
        if has_latency:
            lat = row.get("latency_p50_us")
            cells.append(f"{lat['srpo']:.1f} / {lat['diffusion']:,.0f}" if lat else "-")
        data = "-" if row["data"] is None else f"{row['data']:.1f}"
        lines.append(f"| {row['dataset']} | {data} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Q / score balance per seed: how far off the data's actions the score term's pull back matches the Q "
        "term's push at that beta (`srpo extract` prints it); none: the push wins at every distance up to 1.0, "
        "and nothing holds the actor near the data.",
        "",
        "| dataset | " + " | ".join(f"beta={b}" for b in keys) + " |",
        "|---|" + "---|" * len(keys),
    ]
    for row in rows:
        cells = [
            ", ".join("-" if v is None else f"{v:.2f}" for v in row["balance"][b]) if row["balance"][b] else "-"
            for b in keys
        ]
        lines.append(f"| {row['dataset']} | " + " | ".join(cells) + " |")
    if summary["failures"]:
        lines += ["", "Failed stages:", ""] + [f"- {f['task']}: {f['error']}" for f in summary["failures"]]
    files = {"md": out / "sweep.md", "json": out / "sweep.json", "png": out / "sweep.png"}
    atomic_write(files["md"], lambda tmp: Path(tmp).write_text("\n".join(lines) + "\n"))
    atomic_write(files["json"], lambda tmp: Path(tmp).write_text(json.dumps({**summary, "command": command}, indent=1)))
    fig, ax = plt.subplots(figsize=(6, 4))
    xs_all = []
    for row in rows:
        # 'preset' is plotted at the dataset's own beta; a beta listed twice that way is one point
        points = {}
        for b in keys:
            x, v = row["beta_values"][b], row["betas"][b]
            if isinstance(x, float | int) and v["mean"] is not None:
                points[float(x)] = (v["mean"], v["std"] or 0.0, b == row["best_beta"])
        if not points:
            continue
        xs = sorted(points)
        xs_all += xs
        line = ax.errorbar(
            xs, [points[x][0] for x in xs], yerr=[points[x][1] for x in xs], marker="o", capsize=3,
            label=row["dataset"],
        )  # fmt: skip
        for x in xs:
            if points[x][2]:
                ax.plot([x], [points[x][0]], marker="*", ms=14, color=line[0].get_color())
        if row["data"] is not None:
            ax.axhline(row["data"], ls=":", color=line[0].get_color(), lw=1)
    ax.set_xlabel("beta")
    ax.set_ylabel("score (0-100)" if "score" in summary["score_scale"] else "return")
    positive = [x for x in xs_all if x > 0]
    if len(set(positive)) > 1 and 0 in xs_all:  # betas span decades; 0 (the score term alone) on a linear stretch
        ax.set_xscale("symlog", linthresh=min(positive))
    elif len(set(positive)) > 1:
        ax.set_xscale("log")
    ax.set_title("SRPO against beta (spread over seeds; star: best; dotted: the data)", fontsize=9)
    if xs_all:
        ax.legend(fontsize=7)
    fig.tight_layout()
    tmp_png = files["png"].with_name(".sweep.png.tmp.png")
    fig.savefig(tmp_png, dpi=100)
    plt.close(fig)
    os.replace(tmp_png, files["png"])
    return files
