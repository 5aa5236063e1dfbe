"""Stages over a run directory: training one stage (what each CLI command calls), evaluating a run's
policies, the side-by-side schedule and the whole pipeline. Everything here is usable without the CLI."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from srpo_cli import artifacts
from srpo_cli.act.bench import bench_run
from srpo_cli.act.evaluate import EvalResult, evaluate, make_env_fn, periodic_eval_hook
from srpo_cli.act.policies import (
    actor_policy,
    diffusion_policy,
)
from srpo_cli.artifacts import policy_file
from srpo_cli.config import RunConfig
from srpo_cli.data.spaces import check_env_matches
from srpo_cli.data.transitions import Transitions, dataset_report, report_line
from srpo_cli.errors import Interrupted, RuntimeFailure, UsageError
from srpo_cli.train.checkpoint import Checkpoint, atomic_write, load_checkpoint, sha256_file
from srpo_cli.train.device import busy_cores_warning, resolve_device
from srpo_cli.train.distributed import barrier, init_from_env, is_main, leave
from srpo_cli.train.loop import check_can_write, has_train_state, kept_files, staged_metrics_path


def train_stage(
    name: str,
    cfg: RunConfig,
    data: Transitions,
    run_dir: Path,
    device: torch.device,
    *,
    resume: bool = False,
    quiet: bool = False,
    stop_at: int | None = None,
) -> dict[str, Any]:
    """Train one stage (``behavior``, ``critic``, ``extract``, ``awr`` or ``bc``) into ``run_dir``; returns its
    summary (steps, wall time, last losses, checkpoint). The one entry every caller trains through."""
    from srpo_cli.algos.baselines import train_baseline
    from srpo_cli.algos.behavior import train_behavior
    from srpo_cli.algos.critic import train_critic
    from srpo_cli.algos.extract import train_actor

    kw = dict(resume=resume, quiet=quiet, stop_at=stop_at)
    if name == "behavior":
        return train_behavior(cfg, data, run_dir, device, **kw)
    if name == "critic":
        return train_critic(cfg, data, run_dir, device, **kw)
    if name == "extract":
        return train_actor(
            cfg, data, run_dir, device, evaluator=lambda actor: periodic_eval_hook(actor, data, cfg), **kw
        )
    if name in ("awr", "bc"):
        return train_baseline(name, cfg, data, run_dir, device, **kw)
    raise UsageError(f"Unknown stage '{name}'.", f"Choose one of {', '.join(artifacts.STAGE_FILES)}.")


# What each stage reads from its run directory before it can start.
STAGE_INPUTS: dict[str, tuple[str, ...]] = {
    "behavior": (),
    "critic": (),
    "extract": (artifacts.BEHAVIOR, artifacts.CRITIC),
    "awr": (artifacts.CRITIC,),
    "bc": (),
}


def check_run_dir(run_dir: Path) -> None:
    """A run directory must be a folder (or not exist yet): found before any training time is spent."""
    for parent in [run_dir, *run_dir.parents]:
        if parent.exists() and not parent.is_dir():
            raise UsageError(
                f"--run {run_dir}: {parent} is a file, not a folder.", "Name a folder (new or existing) for the run."
            )


def run_stage(
    name: str, cfg: RunConfig, *, resume: bool = False, force: bool = False, quiet: bool = False, log=None
) -> dict[str, Any] | None:
    """What ``srpo pretrain-behavior`` (``pretrain-critic``, ``extract``, ``train-baseline``) does: check the
    run directory, refuse to overwrite or to resume with other settings, hold the stage's lock, load the
    dataset (building the built-in default if missing) and train. ``log``: a Rich console for notes.

    Launched by ``torchrun`` (``torchrun --nproc-per-node N -m srpo_cli pretrain-critic ...``), every rank runs
    this: the configured batch is split across them, and rank 0 alone writes (train/distributed.py)."""
    device = resolve_device(cfg.device)
    joined = init_from_env(device)  # under torchrun: one rank of a data-parallel training
    main = is_main()
    try:
        summary = _run_stage(name, cfg, device, resume, force, quiet if main else True, log if main else None)
    finally:
        if joined:
            leave()
    return summary if main else None  # one summary (rank 0's) for the whole data-parallel run


def _run_stage(name: str, cfg: RunConfig, device, resume: bool, force: bool, quiet: bool, log) -> dict[str, Any]:
    from srpo_cli.data.fetch import ensure_local
    from srpo_cli.data.transitions import load_transitions
    from srpo_cli.train.checkpoint import exclusive, lock_path

    run_dir = cfg.resolved_run_dir()
    check_run_dir(run_dir)
    ckpt = run_dir / artifacts.STAGE_FILES[name]
    if is_main():  # the other ranks read what rank 0 checks, and may see the files it writes meanwhile
        check_can_write(ckpt, resume, force)
    if resume:
        refuse_other_config(
            load_checkpoint(ckpt),
            cfg,
            "--resume would continue",
            "Resume with the same settings (only steps and logging may change), or --force to start over.",
        )
    for needed in STAGE_INPUTS[name]:
        if not (run_dir / needed).exists():
            raise RuntimeFailure(
                f"{run_dir / needed} is missing; '{name}' needs it.",
                "Run 'srpo pretrain-behavior' and 'srpo pretrain-critic' first (same --run/--dataset/--seed).",
            )
    # Taken before the data load, so that a second writer or a read-only folder is refused at once (training
    # takes it again; held for the whole stage). Under torchrun rank 0 holds it for all the ranks.
    with exclusive(lock_path(ckpt), str(ckpt)) if is_main() else contextlib.nullcontext():
        if is_main():  # one rank builds the built-in default if it is missing; the others wait for it
            ensure_local(cfg.dataset, log)
        barrier()
        data = load_transitions(cfg.dataset, device, cfg.data.normalize_actions)
        if log is not None:
            log.print(
                f"{name}: dataset {cfg.dataset} ({data.size:,} transitions, obs {data.obs_dim}, action "
                f"{data.action_dim}; {report_line(dataset_report(data, sample=500))}) -> {ckpt}",
                style="dim",
                highlight=False,
            )
            note = busy_cores_warning(torch.get_num_threads()) if device.type == "cpu" else None
            if note:
                log.print(f"warning: {note}", style="yellow", highlight=False)
        return train_stage(name, cfg, data, run_dir, device, resume=resume, quiet=quiet)


def evaluate_run(
    cfg: RunConfig,
    run_dir: Path,
    policy: str = "srpo",
    expect_dataset: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> EvalResult:
    """Evaluate one run directory's policy and record per-episode returns in ``run_dir/eval.json``.

    ``expect_dataset``: the dataset the user named; a policy trained on another is refused rather than
    evaluated on its own environment without a word. ``progress(finished, episodes)``: called as episodes end."""
    if policy == "diffusion":
        pol, ckpt = diffusion_policy(cfg, run_dir, resolve_device(cfg.device))
    else:
        ckpt = load_checkpoint(run_dir / policy_file(policy))
        pol = None
    if expect_dataset is not None and ckpt.meta["dataset_id"] != expect_dataset:
        raise UsageError(
            f"{ckpt.path} was trained on '{ckpt.meta['dataset_id']}', not on --dataset {expect_dataset}.",
            "Drop --dataset to evaluate it on its own dataset's environment, or point --run at a run of "
            f"{expect_dataset}.",
        )
    res = _evaluate(cfg, pol if pol is not None else actor_policy(ckpt), ckpt, progress)
    record_eval(run_dir, policy, res, cfg)
    return res


def _evaluate_actor(cfg: RunConfig, ckpt: Checkpoint) -> EvalResult:
    """The actor (SRPO, AWR or BC) in ``ckpt``, through the fast path eval acts with."""
    return _evaluate(cfg, actor_policy(ckpt), ckpt)


def _evaluate(cfg: RunConfig, pol: Any, ckpt: Checkpoint, progress=None) -> EvalResult:
    """``pol`` on the environment and reference scores that ``ckpt`` records."""
    extra = ckpt.meta["extra"]
    env_fn = make_env_fn(extra.get("eval_env_spec"), ckpt.meta["dataset_id"], extra.get("observation_space"))
    check_env_matches(env_fn, ckpt.meta["obs_dim"], ckpt.meta["action_dim"], str(ckpt.path))
    res = evaluate(
        pol,
        env_fn,
        cfg.eval.episodes,
        cfg.eval.num_envs,
        cfg.eval.seed,
        extra.get("ref_min_score"),
        extra.get("ref_max_score"),
        progress,
    )
    res.extra["dataset_mean_return"] = extra.get("dataset_mean_return")
    return res


def evaluate_curve(
    cfg: RunConfig, run_dir: Path, policy: str = "srpo", on_point: Callable[[int, EvalResult], None] | None = None
) -> list[tuple[int, EvalResult]]:
    """Evaluate every policy the run kept during training (``extract.keep_every``, ``baseline.keep_every``), in
    step order, and write the curve to ``run_dir/metrics/eval-POLICY.csv`` (replaced: it is a measurement of
    the finished run, not a log), which ``srpo plot`` draws beside the training metrics."""
    if policy == "diffusion":
        raise UsageError(
            "--curve evaluates the policies kept during training; the diffusion baseline has none.",
            "Use --policy srpo, awr or bc.",
        )
    ckpt_path = Path(run_dir) / policy_file(policy)
    kept = kept_files(ckpt_path)
    if not kept:
        key = "extract.keep_every" if policy == "srpo" else "baseline.keep_every"
        raise UsageError(
            f"{run_dir} has no kept {policy} policies ({ckpt_path.parent / 'actors'} has no "
            f"{ckpt_path.stem}-STEP.safetensors files).",
            f"Train with --set {key}=N (or --keep-every N) to keep a copy every N steps, then run this again.",
        )
    points = []
    for step, path in kept:
        res = _evaluate_actor(cfg, load_checkpoint(path))
        points.append((step, res))
        if on_point is not None:
            on_point(step, res)
    header = ["step", "eval_return"] + (["eval_score"] if points[0][1].has_ref else [])
    lines = [",".join(header)]
    for step, res in points:
        row = [str(step), f"{res.returns.mean():.6g}"]
        if res.has_ref:
            row.append(f"{res.normalized(res.returns.mean()):.6g}")
        lines.append(",".join(row))
    out = Path(run_dir) / artifacts.METRICS_DIR / f"eval-{policy}.csv"
    atomic_write(out, lambda tmp: Path(tmp).write_text("\n".join(lines) + "\n"))
    return points


def record_eval(run_dir: Path, policy: str, res: EvalResult, cfg: RunConfig) -> None:
    path = run_dir / artifacts.EVAL_JSON
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


# Fields that change logging, checkpoint cadence, speed or the length of the run, not what a stage computes.
# bf16 is one: a CPU without bf16 arithmetic trains in fp32 whatever the configuration says
# (train.device.without_emulated_bf16), and a run may move between machines.
_BOOKKEEPING = {"log_every", "ckpt_every", "compile", "eval_every", "eval_episodes", "steps", "bf16", "bf16_behavior"}


_SECTION_OF_STAGE = {
    "behavior": "behavior",
    "critic": "critic",
    "actor": "extract",
    "awr": "baseline",
    "bc": "baseline",
}


def config_differences(stored: dict[str, Any], cfg: RunConfig, stage: str) -> list[str]:
    """Where a checkpoint's recorded configuration differs from ``cfg`` in what its stage computes (its
    section, the data section, dataset and seed). A field the checkpoint predates counts as its default."""
    from srpo_cli.config import SECTIONS

    want = cfg.to_dict()
    diffs = [
        f"{key} is {stored.get(key)!r} there, {want[key]!r} here"
        for key in ("dataset", "seed")
        if stored.get(key) != want[key]
    ]
    for sec in ("data", _SECTION_OF_STAGE[stage]):
        defaults = dataclasses.asdict(SECTIONS[sec]())
        have = {**defaults, **stored.get(sec, {})}
        for key, value in want[sec].items():
            if (
                sec == "extract"
                and key == "beta"
                and have.get("auto_beta")
                and value is not None
                and want[sec]["auto_beta"]
            ):
                continue  # chosen by the probe at training time: the stored one is the run's
            if key not in _BOOKKEEPING and have.get(key) != value:
                diffs.append(f"{sec}.{key} is {have.get(key)!r} there, {value!r} here")
    return diffs


def refuse_other_config(ckpt: Checkpoint, cfg: RunConfig, what: str, hint: str) -> None:
    """A usage error naming each field in which ``cfg`` differs from what ``ckpt`` was trained with."""
    diffs = config_differences(ckpt.config, cfg, ckpt.stage)
    if diffs:
        raise UsageError(
            f"{what} {ckpt.path} with another configuration than it was trained with: {'; '.join(diffs)}.", hint
        )


def stage_plan(path: Path, steps: int, force: bool = False, cfg: RunConfig | None = None) -> str:
    """What a pipeline does with one stage's checkpoint: 'skip' (finished), 'resume' (partial, with its
    training state) or 'train' (absent, or --force). With ``cfg``, a checkpoint trained with another
    configuration is refused rather than silently reused."""
    if force or not path.exists():
        return "train"
    ckpt = load_checkpoint(path)
    if cfg is not None:
        refuse_other_config(
            ckpt, cfg, "This run would reuse", "Pass --force to retrain it, or use another run directory."
        )
        stale = [
            name
            for name, sha in (ckpt.meta.get("parents") or {}).items()
            if (path.parent / name).exists() and sha256_file(path.parent / name) != sha
        ]
        if stale:
            raise UsageError(
                f"{path} was trained from another {' and '.join(stale)} than the one now in {path.parent}.",
                "Pass --force to retrain it from the current one, or use another run directory.",
            )
    if ckpt.meta["step"] >= steps:
        return "skip"
    return "resume" if has_train_state(path) else "train"


# What each stage reads besides the data: a stage starts side by side once these are finished.
STAGE_PARENTS: dict[str, tuple[str, ...]] = {
    "behavior": (),
    "critic": (),
    "extract": ("behavior", "critic"),
    "awr": ("critic",),
    "bc": (),
}


def side_by_side_stages(cfg: RunConfig, device: torch.device, plans: dict[str, str]) -> list[str]:
    """The pretraining stages to train side by side given each stage's plan: both, or none (one stage
    left to train, a GPU, one thread, or ``parallel_pretrain`` off)."""
    pre = [n for n in ("behavior", "critic") if plans[n] != "skip"]
    return pre if len(pre) == 2 and can_train_side_by_side(cfg, device) else []


def can_train_side_by_side(cfg: RunConfig, device: torch.device) -> bool:
    """Two training processes with half the threads each: on a CPU with two threads or more, unless
    ``parallel_pretrain`` is off."""
    threads = cfg.threads or torch.get_num_threads()
    return bool(cfg.parallel_pretrain) and device.type == "cpu" and threads >= 2


def _follow_parent(parent_pid: int) -> None:
    """Pool initializer: a worker must not outlive the pipeline. Ctrl-C reaches the whole process group, but a
    SIGTERM sent to the pipeline alone (``kill PID``) ends it and leaves its workers training on, and then
    waiting forever for work from a parent that is gone. On Linux the kernel sends the worker SIGTERM when
    its parent dies (PR_SET_PDEATHSIG), which the stage answers like Ctrl-C: a checkpoint, then exit."""
    import ctypes
    import signal
    import sys

    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:  # the parent died before the request took effect
        os._exit(130)


def _stage_worker(
    stage: str, cfg: RunConfig, run_dir: Path, resume: bool, threads: int, parent_pid: int
) -> dict[str, Any]:
    """One training stage in its own process (spawned: nothing inherited but its arguments)."""
    from srpo_cli.data.transitions import load_transitions
    from srpo_cli.train.device import set_threads

    set_threads(threads)
    # Side by side is the CPU mode (``can_train_side_by_side``): cfg.device may say auto, which on a machine
    # with a GPU would send the workers there while the caller planned for the CPU.
    device = torch.device("cpu")
    data = load_transitions(cfg.dataset, device, cfg.data.normalize_actions)
    try:
        return train_stage(stage, cfg, data, run_dir, device, resume=resume, quiet=True)
    except BaseException:
        # Orphaned: the stage has checkpointed if it could, and nobody will read a result or send more work
        # (returning would leave the worker blocked on its queues), so leave without Python's shutdown.
        if os.getppid() != parent_pid:
            os._exit(130)
        raise


def _last_metrics(path: Path) -> dict[str, str]:
    """The last complete row of a metrics CSV that another process is appending to."""
    try:
        with open(path, "rb") as f:
            header = f.readline().decode().strip().split(",")
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 4096))
            lines = f.read().decode(errors="ignore").splitlines()
    except OSError:
        return {}
    for line in reversed(lines[1:] if len(lines) > 1 else []):
        values = line.split(",")
        if len(values) == len(header) and values[0].isdigit():
            return dict(zip(header, values, strict=True))
    return {}


def pretrain_side_by_side(
    cfg: RunConfig, run_dir: Path, resume: dict[str, bool], quiet: bool = False, log=None
) -> dict[str, float]:
    """Train the behavior model and the critic at the same time (``train_side_by_side``); ``resume`` says,
    for each of the two, whether it continues from its checkpoint. Returns each stage's wall time."""
    return train_side_by_side(
        cfg, run_dir, list(resume), lambda name: "resume" if resume[name] else "train", quiet, log
    )


def train_side_by_side(
    cfg: RunConfig,
    run_dir: Path,
    stages: list[str],
    plan: Callable[[str], str],
    quiet: bool = False,
    log=None,
) -> dict[str, float]:
    """Train ``stages`` (names of ``STAGE_PARENTS``, in order of priority) two at a time, each in its own
    process with half of the CPU threads, each starting as soon as a process is free and the stages it reads
    are finished; a stage that starts with nothing beside it or to come gets every thread. Two single-thread
    trainings keep two cores busier than one two-thread training after another: small matmuls scale poorly
    across threads (BENCHMARKS.md); and the critic, which finishes first, leaves its core to the stages that
    need only it (AWR) or nothing (BC) while the behavior model trains on.

    ``plan(name)`` is asked when a stage's turn comes, its parents finished: "skip", "train" or "resume"
    (so that a stage reused or refused is judged against the parents as they are then). Returns the wall
    time of each stage trained, from its start to its end. Ctrl-C reaches every process, and the running
    stages checkpoint before the error is re-raised here; after a stage fails, no other starts.
    """
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    unknown = [n for n in stages if n not in STAGE_PARENTS]
    if unknown:
        raise ValueError(f"unknown stages {unknown}")
    all_threads = cfg.threads or torch.get_num_threads()
    threads = max(1, all_threads // 2)
    steps = {
        "behavior": cfg.behavior.steps,
        "critic": cfg.critic.steps,
        "extract": cfg.extract.steps,
        "awr": cfg.baseline.steps,
        "bc": cfg.baseline.steps,
    }
    if log:
        log.print(f"training {', '.join(stages)} two at a time, {threads} thread(s) each", style="dim")
    walls: dict[str, float] = {}
    started: dict[str, float] = {}
    finished: set[str] = set()
    waiting = list(stages)
    progress = Progress(
        TextColumn("[bold]{task.description}[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]} steps/s {task.fields[losses]}"),
        console=log,
        disable=quiet or log is None,
    )
    pid = os.getpid()
    pool = ProcessPoolExecutor(
        max_workers=2, mp_context=mp.get_context("spawn"), initializer=_follow_parent, initargs=(pid,)
    )
    futures: dict[str, Any] = {}
    tasks: dict[str, Any] = {}
    failed = False

    def start_ready() -> None:
        # Only as many as there are free processes, so that nothing queues: a queued stage would start
        # after a failure, or hold up the pool's shutdown on Ctrl-C.
        for name in list(waiting):
            if failed or sum(not f.done() for f in futures.values()) >= 2:
                return
            if not all(p in finished or p not in stages for p in STAGE_PARENTS[name]):
                continue
            waiting.remove(name)
            how = plan(name)
            if how == "skip":
                finished.add(name)
                continue
            started[name] = time.perf_counter()
            # The last stage, with nothing beside it now or to come, has every thread (the extraction, often).
            alone = not waiting and all(f.done() for f in futures.values())
            n_threads = all_threads if alone else threads
            futures[name] = pool.submit(_stage_worker, name, cfg, run_dir, how == "resume", n_threads, pid)
            tasks[name] = progress.add_task(name, total=steps[name], rate="-", losses="")

    def poll() -> None:
        nonlocal failed
        for name, fut in futures.items():
            if name in walls:
                continue  # finished, its bar already at its last row
            if fut.done():
                walls[name] = time.perf_counter() - started[name]
                if fut.exception() is None:
                    finished.add(name)
                else:
                    failed = True
            csv_path = run_dir / artifacts.METRICS_DIR / f"{name}.csv"
            staged = staged_metrics_path(csv_path)  # a run replacing another, before its first checkpoint
            row = _last_metrics(staged if staged.exists() else csv_path)
            if row:
                losses = " ".join(f"{k}={v}" for k, v in row.items() if k not in ("step", "wall_s", "steps_per_s"))
                progress.update(
                    tasks[name], completed=int(row["step"]), rate=row.get("steps_per_s", "-"), losses=losses
                )

    with pool:
        try:
            with progress:
                start_ready()
                while not all(f.done() for f in futures.values()) or (waiting and not failed):
                    poll()
                    start_ready()
                    time.sleep(0.5)
                poll()  # the final rows, so the bars end at the last step
        except KeyboardInterrupt:
            for fut in futures.values():
                try:
                    fut.result()
                except BaseException:
                    pass
            raise Interrupted(
                "Interrupted; every stage in training wrote a checkpoint.", "Run the same command again to resume."
            ) from None
        for fut in futures.values():
            fut.result()  # re-raises a worker's SrpoError here, with its message
    return walls


def run_pipeline(cfg: RunConfig, force: bool = False, quiet: bool = False, log=None) -> dict[str, Any]:
    """fetch -> behavior -> critic -> extract -> eval (SRPO, diffusion baseline) -> bench, in one run dir.

    On a CPU with ``parallel_pretrain`` (the default) the behavior model and critic train side by side."""
    from srpo_cli.data.fetch import ensure_local
    from srpo_cli.data.transitions import load_transitions

    t0 = time.perf_counter()
    device = resolve_device(cfg.device)
    run_dir = cfg.resolved_run_dir()
    check_run_dir(run_dir)
    ensure_local(cfg.dataset, log)
    note = busy_cores_warning(cfg.threads or torch.get_num_threads()) if device.type == "cpu" else None
    if note and log is not None:
        log.print(f"warning: {note}", style="yellow", highlight=False)
    data = load_transitions(cfg.dataset, device, cfg.data.normalize_actions)
    stages = [
        ("behavior", artifacts.BEHAVIOR, cfg.behavior.steps),
        ("critic", artifacts.CRITIC, cfg.critic.steps),
        ("extract", artifacts.ACTOR, cfg.extract.steps),
    ]
    plans = {name: stage_plan(run_dir / file_name, steps, force, cfg) for name, file_name, steps in stages}
    pre = side_by_side_stages(cfg, device, plans)
    if pre:
        run_dir.mkdir(parents=True, exist_ok=True)
        pretrain_side_by_side(cfg, run_dir, {n: plans[n] == "resume" for n in pre}, quiet, log)
    for name, file_name, _ in stages:
        if plans[name] == "skip":
            if log:
                log.print(f"{file_name}: finished earlier, reused (--force to retrain)", style="dim")
            continue
        if name in pre:
            continue
        train_stage(name, cfg, data, run_dir, device, resume=plans[name] == "resume", quiet=quiet)
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
    atomic_write(run_dir / artifacts.PIPELINE_JSON, lambda tmp: Path(tmp).write_text(json.dumps(result, indent=1)))
    return result


def describe_run(run_dir: Path) -> dict[str, Any]:
    """What ``srpo show`` prints: each stage's checkpoint (steps done of its budget, dataset, seed, whether the
    checkpoints it was trained from are still the ones beside it), its last metrics, the evaluation results,
    the configuration the run was trained with, and every file with its size."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UsageError(
            f"{run_dir} is not a folder.", "Name a run directory, e.g. runs/srpo-pendulum-scripted-medium-v0/seed0"
        )
    steps_key = {"behavior": ("behavior", "steps"), "critic": ("critic", "steps"), "actor": ("extract", "steps")}
    stages: dict[str, Any] = {}
    config = None
    for name, file_name in artifacts.STAGE_FILES.items():
        path = run_dir / file_name
        if not path.exists():
            continue
        try:
            ckpt = load_checkpoint(path)
        except RuntimeFailure as e:
            stages[name] = {"file": file_name, "error": e.message}
            continue
        sec, key = steps_key.get(ckpt.stage, ("baseline", "steps"))
        lineage = {
            parent: ("same" if (run_dir / parent).exists() and sha256_file(run_dir / parent) == sha else "replaced")
            for parent, sha in (ckpt.meta.get("parents") or {}).items()
        }
        metrics_csv = run_dir / artifacts.METRICS_DIR / f"{name}.csv"
        stages[name] = {
            "file": file_name,
            "step": ckpt.meta["step"],
            "steps": ckpt.config.get(sec, {}).get(key),
            "dataset": ckpt.meta["dataset_id"],
            "seed": ckpt.meta["seed"],
            "resumable": has_train_state(path),
            "parents": lineage,
            "last_metrics": _last_metrics(metrics_csv) if metrics_csv.exists() else {},
            "kept_policies": len(kept_files(path)),
        }
        config = ckpt.config  # the most downstream checkpoint's, in STAGE_FILES order
    evals = {}
    if (run_dir / artifacts.EVAL_JSON).exists():
        try:
            raw = json.loads((run_dir / artifacts.EVAL_JSON).read_text())
            evals = {k: {f: v for f, v in r.items() if f not in ("returns", "lengths")} for k, r in raw.items()}
        except (json.JSONDecodeError, AttributeError):
            evals = {"error": f"{artifacts.EVAL_JSON} is not valid JSON"}
    files = [
        {"path": str(p.relative_to(run_dir)), "bytes": p.stat().st_size}
        for p in sorted(run_dir.rglob("*"))
        if p.is_file() and not p.name.startswith(".")
    ]
    if not stages and not files:
        raise UsageError(f"{run_dir} holds no srpo run (no checkpoints, no metrics).")
    return {"run": str(run_dir), "stages": stages, "eval": evals, "config": config, "files": files}
