"""The loop every stage shares: progress bar, CSV metrics, periodic atomic checkpoints, resume, Ctrl-C, and
the non-finite guard. A stage only says how to build its networks and how to take one step."""

from __future__ import annotations

import csv
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from srpo_cli import artifacts
from srpo_cli.config import RunConfig
from srpo_cli.data.transitions import BatchSampler, Transitions
from srpo_cli.errors import Interrupted, RuntimeFailure, UsageError
from srpo_cli.train.checkpoint import (
    atomic_write,
    exclusive,
    load_checkpoint,
    load_train_state,
    lock_path,
    remove_stale_temps,
    save_checkpoint,
    save_train_state,
    sha256_file,
)
from srpo_cli.train.device import _sync, tune_malloc
from srpo_cli.train.distributed import any_rank, average, barrier, check_batch, gather, rank_and_world

stderr = Console(stderr=True)


class Stage:
    """One training stage. Subclasses fill ``modules`` (saved to the checkpoint), ``optimizers``,
    ``schedulers`` and implement ``step()`` returning 0-d loss tensors (not synchronised to the host)."""

    name: str = ""
    ckpt_stage: str = ""  # stage name written in the checkpoint metadata
    file_name: str = ""

    def __init__(self, cfg: RunConfig, data: Transitions, device: torch.device, batch_size: int):
        # A caller may load the data on one device and train on another (the CLI loads it on the training
        # device): indices drawn on the GPU cannot index tensors on the CPU, so the data follows the stage.
        data = data.to(device)
        self.cfg, self.data, self.device = cfg, data, device
        torch.manual_seed(cfg.seed)
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(cfg.seed)
        self.sampler = BatchSampler(data.size, batch_size, self.generator, cfg.data.sampling)
        # Under torchrun each rank trains on its slice of the global batch (train/distributed.py); noise and
        # dropout draws then come from rank-derived seeds (``distribute``), alone they share the batch stream.
        self.rank, self.world = rank_and_world()
        if self.world > 1:
            check_batch(batch_size, f"The {self.name} batch size")
        self.noise_generator = self.generator
        self.modules: dict[str, torch.nn.Module] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.schedulers: dict[str, Any] = {}
        self.parents: dict[str, str] = {}

    def step(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def batch_indices(self) -> torch.Tensor:
        """The next batch's indices: the whole batch alone, this rank's slice of it under torchrun."""
        idx = self.sampler.next()
        return idx if self.world == 1 else idx.chunk(self.world)[self.rank]

    def distribute(self) -> None:
        """Per-rank random streams for noise and dropout, once the networks are built from the shared seed
        (so every rank starts from the same weights)."""
        if self.world == 1:
            return
        seed = self.cfg.seed * 1_000_003 + 7_919 * (self.rank + 1)
        torch.manual_seed(seed)
        self.noise_generator = torch.Generator(device=self.device)
        self.noise_generator.manual_seed(seed)

    def _rank_rng(self) -> dict[str, Any]:
        return {"torch_rng": torch.get_rng_state(), "noise": self.noise_generator.get_state()}

    def extra_tensors(self) -> dict[str, dict[str, torch.Tensor]]:
        return {
            "action": {
                "low": torch.as_tensor(self.data.action_low),
                "high": torch.as_tensor(self.data.action_high),
            }
        }

    # -- persistence -----------------------------------------------------------------------------------
    def save(self, path: Path, step: int) -> None:
        state = {
            "step": step,
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()},
            "sampler": self.sampler.state_dict(),
            "generator": self.generator.get_state(),
            "generator_device": self.generator.device.type,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }
        if self.world > 1:  # every rank's own streams, so that a resumed run continues each of them
            state["ranks"] = gather(self._rank_rng())
        if self.rank == 0:
            # The new state goes beside the last one, then the weights replace theirs, then the new state
            # replaces the old: killed at any point, one of the two state files matches the weights (``load``).
            save_train_state(next_state_path(path), state)
            self.save_weights(path, step)
            os.replace(next_state_path(path), state_path(path))
        barrier()

    def save_weights(self, path: Path, step: int) -> None:
        """The checkpoint alone (no training state): what downstream stages, eval and export read."""
        modules = {k: m.state_dict() for k, m in self.modules.items()}
        modules.update(self.extra_tensors())
        save_checkpoint(
            path,
            self.ckpt_stage,
            modules,
            config=self.cfg.to_dict(),
            dataset_id=self.data.dataset_id,
            obs_dim=self.data.obs_dim,
            action_dim=self.data.action_dim,
            step=step,
            seed=self.cfg.seed,
            parents=self.parents,
            extra={
                "ref_min_score": self.data.ref_min_score,
                "ref_max_score": self.data.ref_max_score,
                "dataset_mean_return": float(self.data.episode_returns.mean()),
                "eval_env_spec": self.data.info.get("eval_env_spec"),
                "observation_space": self.data.info.get("observation_space"),
                # same seed, same thread count, same result: what a comparison of two runs must match
                "threads": torch.get_num_threads(),
            },
        )

    def load(self, path: Path) -> int:
        if self.rank > 0:
            barrier()  # rank 0 first: it may put the next state file in place (matching_train_state)
        ckpt = load_checkpoint(path, self.ckpt_stage)
        state = matching_train_state(path, ckpt.meta["step"])
        if self.rank == 0:
            barrier()
        for k, m in self.modules.items():
            m.load_state_dict({n: v.to(self.device) for n, v in ckpt.section(k).items()})
        for k, o in self.optimizers.items():
            o.load_state_dict(state["optimizers"][k])
        for k, s in self.schedulers.items():
            s.load_state_dict(state["schedulers"][k])
        self.sampler.load_state_dict(state["sampler"])
        self._load_generator(state, path)
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        ranks = state.get("ranks")
        if self.world > 1 and ranks and len(ranks) == self.world:
            torch.set_rng_state(ranks[self.rank]["torch_rng"])
            self.noise_generator.set_state(ranks[self.rank]["noise"])
        return int(state["step"])

    def _load_generator(self, state: dict[str, Any], path: Path) -> None:
        """The batch generator's state, or a fresh draw where the run moves to another kind of device.

        A CPU generator's state and a CUDA one's are different things (5056 bytes against 16), so a run
        stopped on a GPU cannot continue the same random stream on a CPU; the other device's arithmetic
        differs anyway. It goes on with a generator seeded from the seed and step, the same on every resume.
        """
        saved = state.get("generator_device")
        if saved is None:  # states written before the device was recorded: the size tells
            saved = self.device.type if state["generator"].numel() == self.generator.get_state().numel() else "?"
        if saved == self.device.type:
            self.generator.set_state(state["generator"])
            return
        self.generator.manual_seed(self.cfg.seed + int(state["step"]))
        stderr.print(
            f"[yellow]note:[/] {path.name} was trained on {'another device' if saved == '?' else saved} and "
            f"resumes on {self.device.type}: its batches are drawn from a new random stream (seed + step), so "
            "the result will not equal that of an uninterrupted run on either device."
        )


def state_path(ckpt: Path) -> Path:
    return ckpt.with_name(ckpt.name.replace(".safetensors", "") + ".state.pt")


def next_state_path(ckpt: Path) -> Path:
    """Where ``Stage.save`` writes the new training state before the weights it belongs to are in place."""
    return ckpt.with_name(ckpt.name.replace(".safetensors", "") + ".state.next.pt")


def has_train_state(ckpt: Path) -> bool:
    return state_path(ckpt).exists() or next_state_path(ckpt).exists()


def matching_train_state(ckpt: Path, step: int) -> dict[str, Any]:
    """The training state written with the weights of ``step``: the current state file, or the next one where
    the run was killed after the weights were replaced and before the state file was (then it takes the
    current one's place). A next state of a later step belongs to weights that were never written: removed."""
    current, nxt = state_path(ckpt), next_state_path(ckpt)
    found: list[int] = []
    if nxt.exists():
        state = load_train_state(nxt)
        if int(state["step"]) == step:
            os.replace(nxt, current)
            return state
        found.append(int(state["step"]))
        nxt.unlink()
    state = load_train_state(current)
    if int(state["step"]) != step:
        found.append(int(state["step"]))
        raise RuntimeFailure(
            f"Cannot resume: {ckpt} is at step {step} but its training state is at step "
            f"{' and '.join(map(str, found))} (the files were replaced or copied separately).",
            "Start over with --force.",
        )
    return state


def kept_path(ckpt: Path, step: int) -> Path:
    """Where ``fit(keep_every=...)`` keeps the weights of ``step``: ``actors/actor-00010000.safetensors`` beside
    ``actor.safetensors`` (zero-padded, so that names sort by step)."""
    return ckpt.parent / artifacts.KEPT_DIR / f"{ckpt.stem}-{step:08d}.safetensors"


def kept_files(ckpt: Path) -> list[tuple[int, Path]]:
    """[(step, path)] of the weights ``fit(keep_every=...)`` kept beside ``ckpt``, by step."""
    found = []
    for p in (ckpt.parent / artifacts.KEPT_DIR).glob(f"{ckpt.stem}-*.safetensors"):
        tail = p.stem[len(ckpt.stem) + 1 :]
        if tail.isdigit():
            found.append((int(tail), p))
    return sorted(found)


def _format_losses(values: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in values.items())


class _NoMetrics:
    """What a rank other than 0 writes its metrics to: nothing (rank 0 logs the ranks' average)."""

    wall_offset = 0.0

    def write(self, row: dict[str, Any]) -> None:
        pass

    def commit(self) -> None:
        pass

    def close(self) -> None:
        pass


def staged_metrics_path(path: Path) -> Path:
    """Where a run that replaces another (--force) writes its metrics until its first checkpoint."""
    return path.with_name(f".{path.name}.new")


class MetricsCSV:
    """Append-only metrics file; on resume, rows past the resumed step are dropped so curves stay clean.

    A run that replaces an earlier one writes to ``staged_metrics_path`` until ``commit()``, called once its
    first checkpoint has replaced the earlier run's: killed before that, the old history stays with the old
    weights. Rewrites (resume, a late column) are atomic, so a kill never truncates the file."""

    def __init__(self, path: Path, resume_step: int | None):
        self.target = path
        self.fields: list[str] | None = None
        # training seconds before this run resumed: wall_s continues from there instead of restarting at 0
        self.wall_offset = 0.0
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(path)
        staged = staged_metrics_path(path)
        staged.unlink(missing_ok=True)
        if resume_step is None or not path.exists():
            self.path = staged if path.exists() else path
            self.path.write_text("")
            return
        self.path = path
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        keep = [r for r in rows if r.get("step") and int(r["step"]) <= resume_step]
        if rows:
            self.fields = list(rows[0].keys())
        walls = [float(r["wall_s"]) for r in keep if r.get("wall_s")]
        self.wall_offset = max(walls, default=0.0)
        self._rewrite(keep)

    def _rewrite(self, rows: list[dict[str, Any]]) -> None:
        def write(tmp: str) -> None:
            with open(tmp, "w", newline="") as f:
                if self.fields:
                    w = csv.DictWriter(f, fieldnames=self.fields)
                    w.writeheader()
                    w.writerows(rows)

        atomic_write(self.path, write)

    def commit(self) -> None:
        """Put a staged file in the place of the replaced run's (after this run's first checkpoint)."""
        if self.path != self.target:
            os.replace(self.path, self.target)
            self.path = self.target

    def attach_tensorboard(self, log_dir: Path, purge_step: int) -> None:
        """Mirror every numeric value to TensorBoard event files in ``log_dir`` (if the tensorboard package is
        installed). ``purge_step``: events at or after it, left by a run this one replaces or resumes before,
        are hidden, as the CSV drops its rows past the resumed step."""
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # the tensorboard package is optional
            return
        self.tb = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)

    def close(self) -> None:
        if getattr(self, "tb", None) is not None:
            self.tb.close()
            self.tb = None

    def write(self, row: dict[str, Any]) -> None:
        tb = getattr(self, "tb", None)
        if tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, int | float):
                    tb.add_scalar(k, v, row["step"])
        if self.fields is None:
            self.fields = list(row.keys())
            with open(self.path, "w", newline="") as f:
                csv.DictWriter(f, fieldnames=self.fields).writeheader()
        for k in row:
            if k not in self.fields:
                # A late column (e.g. a periodic eval score): rewrite the header once.
                self.fields.append(k)
                with open(self.path, newline="") as f:
                    rows = list(csv.DictReader(f))
                self._rewrite(rows)
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.fields).writerow(row)


def check_can_write(path: Path, resume: bool, force: bool) -> None:
    """Refuse to overwrite a finished or partial stage unless asked."""
    if resume and force:
        raise UsageError("--resume and --force contradict each other.", "Pick one.")
    if path.exists() and not (resume or force):
        raise UsageError(
            f"{path} already exists.",
            "Pass --resume to continue that run, --force to train again and overwrite it, or --run DIR for a "
            "new run directory.",
        )
    if resume and not path.exists():
        raise RuntimeFailure(f"Cannot resume: {path} does not exist.", "Run the stage without --resume first.")


def fit(
    stage: Stage,
    total_steps: int,
    ckpt_path: Path,
    *,
    resume: bool = False,
    log_every: int = 100,
    ckpt_every: int = 10_000,
    quiet: bool = False,
    stop_at: int | None = None,
    hooks: list[tuple[int, Callable[[int], dict[str, float]]]] | None = None,
    keep_every: int = 0,
) -> dict[str, Any]:
    """Train ``stage`` to ``total_steps``, checkpointing atomically. Returns a summary.

    ``keep_every``: also write the weights every N steps (and at the end) to ``kept_path(ckpt_path, step)``,
    files that no later step overwrites, for evaluating the policy over training afterwards.

    One writer per checkpoint: a second process training the same stage into the same run is refused while
    this one runs (``checkpoint.exclusive``)."""
    tune_malloc()  # before the training's first allocations; once per process
    stage.distribute()
    if stage.rank > 0:  # rank 0 holds the lock and writes; the others train beside it
        return _fit(stage, total_steps, ckpt_path, resume, log_every, ckpt_every, True, stop_at, [], 0)
    with exclusive(lock_path(ckpt_path), f"{ckpt_path}"):
        return _fit(stage, total_steps, ckpt_path, resume, log_every, ckpt_every, quiet, stop_at, hooks, keep_every)


def _fit(stage, total_steps, ckpt_path, resume, log_every, ckpt_every, quiet, stop_at, hooks, keep_every):
    main = stage.rank == 0
    if main:
        for f in (ckpt_path, state_path(ckpt_path), next_state_path(ckpt_path)):
            remove_stale_temps(f)  # left by a process killed inside a write; we hold the stage's lock
    start = stage.load(ckpt_path) if resume else 0
    if start > total_steps:
        raise UsageError(f"{ckpt_path} is already at step {start}, beyond --steps {total_steps}.")
    if not main:
        metrics = _NoMetrics()
    else:
        metrics = MetricsCSV(ckpt_path.parent / artifacts.METRICS_DIR / f"{stage.name}.csv", start if resume else None)
    if main and stage.cfg.tensorboard:
        tb_dir = ckpt_path.parent / artifacts.METRICS_DIR / artifacts.TENSORBOARD_DIR / stage.name
        metrics.attach_tensorboard(tb_dir, start + 1)
    # Kept weights beyond the starting step belong to a run being replaced (--force) or to the stretch after
    # the checkpoint we resume from, which is trained again: left, they would mix two runs in one curve. They
    # go when this run's first checkpoint replaces the old one (killed before, the old run stays whole).
    stale_kept = {p for s, p in kept_files(ckpt_path) if s > start} if main else set()

    def save(step: int) -> None:
        stage.save(ckpt_path, step)
        metrics.commit()
        for p in stale_kept:
            p.unlink(missing_ok=True)
        stale_kept.clear()

    end = total_steps if stop_at is None else min(stop_at, total_steps)
    hooks = hooks or []
    log_every = max(1, log_every)
    last: dict[str, float] = {}
    t0 = time.perf_counter()
    t_log, step_log = t0, start
    speed_probe = (start + 5, start + 25)
    probe_t = None
    progress = Progress(
        TextColumn(f"[bold]{stage.name}[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]} steps/s"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[losses]}"),
        console=stderr,
        disable=quiet,
        transient=False,
    )
    step = start
    pending: list[dict[str, torch.Tensor]] = []

    def flush(step: int) -> None:
        nonlocal last, t_log, step_log
        if not pending:
            return
        means = torch.stack([torch.stack([p[k] for p in pending]).float().mean() for k in pending[0]])
        if stage.world > 1:  # every rank's share of the batch
            means = average(means)
        stacked = dict(zip(pending[0], means.tolist(), strict=True))
        pending.clear()
        bad = [k for k, v in stacked.items() if not math.isfinite(v)]
        if bad:
            raise RuntimeFailure(
                f"{stage.name}: non-finite {', '.join(bad)} at step {step}; training stopped. The last good "
                f"checkpoint ({ckpt_path if ckpt_path.exists() else 'none yet'}) was kept.",
                "Lower the learning rate, check the data for extreme values, or try another --seed.",
            )
        now = time.perf_counter()
        rate = (step - step_log) / max(now - t_log, 1e-9)
        t_log, step_log = now, step
        row = {"step": step, "wall_s": round(metrics.wall_offset + now - t0, 3), "steps_per_s": round(rate, 2)}
        for name, sched in stage.schedulers.items():
            row[f"lr_{name}"] = sched.get_last_lr()[0]
        row.update({k: round(v, 6) for k, v in stacked.items()})
        last = stacked
        metrics.write(row)
        progress.update(task, completed=step, rate=f"{rate:,.1f}", losses=_format_losses(stacked))

    distributed = stage.world > 1
    previous_handlers = _install_stop_handlers()
    try:
        with progress:
            task = progress.add_task(stage.name, total=total_steps, completed=start, rate="-", losses="")
            while step < end:
                if distributed:
                    # ranks receive a signal at different steps: the handler only records it, and every rank
                    # stops at the first boundary where any of them has one (a checkpoint is a collective)
                    _STOP["in_step"] = True
                    if any_rank(_STOP["received"], stage.device):
                        raise KeyboardInterrupt
                elif _STOP["received"]:
                    raise KeyboardInterrupt
                # A stop signal landing inside the step would leave it half done (weights updated, the
                # counter not; or the batch drawn, the weights not), and the checkpoint written on the way
                # out would resume onto another trajectory: the handler waits for the step to end.
                _STOP["in_step"] = True
                pending.append(stage.step())
                step += 1
                if not distributed:
                    _STOP["in_step"] = False
                    if _STOP["received"]:
                        raise KeyboardInterrupt
                if step == speed_probe[0]:
                    _sync(stage.device)
                    probe_t = time.perf_counter()
                elif step == speed_probe[1] and probe_t is not None:
                    _sync(stage.device)
                    rate = (speed_probe[1] - speed_probe[0]) / (time.perf_counter() - probe_t)
                    eta = (total_steps - step) / rate
                    if not quiet:
                        progress.console.print(
                            f"{stage.name}: measured {rate:,.1f} steps/s on {stage.device}; "
                            f"{total_steps - step:,} steps left, expected {_fmt_duration(eta)}"
                        )
                if step % log_every == 0 or step == end:
                    flush(step)
                for every, fn in hooks:
                    if every > 0 and (step % every == 0 or step == total_steps):
                        extra = fn(step)
                        wall = metrics.wall_offset + time.perf_counter() - t0
                        metrics.write({"step": step, "wall_s": round(wall, 3), **extra})
                        if not quiet:
                            progress.console.print(f"{stage.name} step {step}: {_format_losses(extra)}")
                if keep_every > 0 and (step % keep_every == 0 or step == total_steps):
                    kept = kept_path(ckpt_path, step)
                    stage.save_weights(kept, step)
                    stale_kept.discard(kept)
                if step % ckpt_every == 0 and step != end:
                    flush(step)
                    save(step)
            flush(step)
            save(step)
    except KeyboardInterrupt:
        pending.clear()
        if _STOP["torn"]:
            kept = f"{ckpt_path} is as it was" if ckpt_path.exists() else "no checkpoint was written"
            raise Interrupted(
                f"Stopped in the middle of step {step + 1} (Ctrl-C after an earlier stop signal); that "
                f"step's state is not saved, and {kept}.",
                "Continue with --resume where a checkpoint exists, else start the stage again.",
            ) from None
        save(step)
        raise Interrupted(
            f"Interrupted at step {step}; checkpoint written to {ckpt_path}.", "Continue with --resume."
        ) from None
    finally:
        _restore_stop_handlers(previous_handlers)
        metrics.close()
    wall = time.perf_counter() - t0
    return {
        "stage": stage.name,
        "start_step": start,
        "step": step,
        "wall_s": wall,
        "steps_per_s": (step - start) / max(wall, 1e-9),
        "losses": last,
        "checkpoint": str(ckpt_path),
        "sha256": sha256_file(ckpt_path),
    }


# Set by the handler of ``_install_stop_handlers``; read by ``fit`` at every step boundary.
_STOP = {"received": False, "in_step": False, "torn": False}


def _install_stop_handlers():
    """Ctrl-C (SIGINT) and SIGTERM (a scheduler's preemption, ``kill``) stop training with a checkpoint.

    Between steps the handler raises KeyboardInterrupt at once, so that a long evaluation or checkpoint write
    stops promptly (writes are atomic). Inside a step it only records the signal, and ``fit`` stops when the
    step is complete, so the checkpoint holds one consistent state. A second Ctrl-C inside the same step
    stops at once, without saving that step (the last checkpoint stays). Returns the previous handlers.
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None
    _STOP.update(received=False, in_step=False, torn=False)

    def handler(signum, frame):
        if signum == signal.SIGTERM:
            # One is enough: a second SIGTERM during the checkpoint would interrupt the write itself (an
            # orphaned pipeline worker receives two). ``fit`` restores the previous handler when it ends.
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        again = _STOP["received"]
        # The flag also stops the loop where a raise below lands in code that swallows it (a __del__, a
        # callback whose errors are only printed) instead of training on with the signal ignored.
        _STOP["received"] = True
        if not _STOP["in_step"]:
            raise KeyboardInterrupt
        if signum == signal.SIGINT:
            if again:
                _STOP["torn"] = True
                raise KeyboardInterrupt
            sys.stderr.write("\nStopping after this step (Ctrl-C again to stop now, without saving it).\n")

    return signal.signal(signal.SIGTERM, handler), signal.signal(signal.SIGINT, handler)


def _restore_stop_handlers(previous) -> None:
    import signal

    # the flags belong to one fit: a later one, in any thread, starts clean
    _STOP.update(received=False, in_step=False, torn=False)
    if previous is not None:
        signal.signal(signal.SIGTERM, previous[0])
        signal.signal(signal.SIGINT, previous[1])


def _fmt_duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
