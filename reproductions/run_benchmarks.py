"""Run the whole comparison on several datasets and seeds, and write a Markdown table.

    python reproductions/run_benchmarks.py --datasets bench/hopper/medium-v0 --seeds 0,1,2 --out .bench-data/results.md

For each dataset and seed: behavior model, critic, SRPO actor, AWR and BC policies on the same data and budget
(the dataset's preset, or --preset), then evaluation of SRPO, the diffusion-policy baseline, AWR and BC, and
the action latency of SRPO vs the diffusion baseline. Only its command line configures it: srpo.yaml and
SRPO_* variables are not read. Finished stages in the run directories are reused, so an
interrupted benchmark continues where it stopped. The table records the command line that produced it.

--betas 0,0.01 adds one SRPO column per beta: an actor extracted at that beta (the preset's extraction
otherwise) from the same behavior model and critic, in RUN/beta-B/ (hard links to the two checkpoints).
Extraction is the cheapest stage, so this is how to choose a dataset's beta for a budget.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import shlex
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from srpo_cli import config
from srpo_cli.act.bench import bench_run
from srpo_cli.algos.baselines import train_baseline
from srpo_cli.algos.behavior import train_behavior
from srpo_cli.algos.critic import train_critic
from srpo_cli.algos.extract import run_balance, train_actor
from srpo_cli.data.transitions import load_transitions
from srpo_cli.errors import SrpoError
from srpo_cli.pipeline import can_train_side_by_side, evaluate_run, stage_plan, train_side_by_side
from srpo_cli.train.device import resolve_device

POLICIES = ("srpo", "diffusion", "awr", "bc")
_NO_CONFIG_FILE = Path(os.devnull) / "srpo.yaml"  # never exists: the runner reads no srpo.yaml
WALLS = ("behavior", "critic", "extract", "awr", "bc", "total")


def _record_wall(run_dir, name: str, seconds: float) -> None:
    path = run_dir / "walls.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps({**old, name: seconds}))


def _script_path() -> str:
    """This script as the recorded command line should name it: relative to the working directory if inside it."""
    here = Path(__file__).resolve()
    try:
        return str(here.relative_to(Path.cwd()))
    except ValueError:
        return str(here)


def _score(res) -> float:
    """An evaluation's mean as a normalized score (0-100), or its mean return where the data has no reference."""
    return float(res.normalized(res.returns.mean())) if res.has_ref else float(res.returns.mean())


def _link(src: Path, dst: Path) -> None:
    if dst.exists():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:  # another file system, or no hard links there
        shutil.copy2(src, dst)


def extract_at_beta(cfg: config.RunConfig, data, run_dir: Path, beta: float, quiet: bool, force: bool) -> float:
    """The normalized SRPO score of an actor extracted at ``beta`` from the run's behavior model and critic."""
    sub = run_dir / f"beta-{beta:g}"
    sub.mkdir(exist_ok=True)
    for name in ("behavior.safetensors", "critic.safetensors"):
        _link(run_dir / name, sub / name)  # afresh each time: the run's own may have been retrained
    cfg_b = copy.deepcopy(cfg)
    cfg_b.extract.beta = beta
    cfg_b.run_dir = str(sub)
    plan = stage_plan(sub / "actor.safetensors", cfg_b.extract.steps, force, cfg_b)
    if plan != "skip":
        device = resolve_device(cfg.device)
        t0 = time.perf_counter()
        train_actor(cfg_b, data, sub, device, quiet=quiet, resume=plan == "resume")
        _record_wall(run_dir, f"extract beta={beta:g}", time.perf_counter() - t0)
    return _score(evaluate_run(cfg_b, sub, "srpo"))


def run_one(cfg: config.RunConfig, quiet: bool, force: bool = False, betas: tuple[float, ...] = ()) -> dict:
    device = resolve_device(cfg.device)
    run_dir = cfg.resolved_run_dir()
    run_dir.mkdir(parents=True, exist_ok=True)
    data = load_transitions(cfg.dataset, device, cfg.data.normalize_actions)
    stages = [
        ("behavior", "behavior.safetensors", cfg.behavior.steps, train_behavior),
        ("critic", "critic.safetensors", cfg.critic.steps, train_critic),
        ("extract", "actor.safetensors", cfg.extract.steps, train_actor),
        ("awr", "awr.safetensors", cfg.baseline.steps, lambda *a, **k: train_baseline("awr", *a, **k)),
        ("bc", "bc.safetensors", cfg.baseline.steps, lambda *a, **k: train_baseline("bc", *a, **k)),
    ]
    # A finished stage is reused only if it was trained with this configuration (else: refused, or --force),
    # judged when its turn comes: a stage's parents may be retrained before it.
    files = {name: (file_name, steps) for name, file_name, steps, _ in stages}

    def plan(name: str) -> str:
        return stage_plan(run_dir / files[name][0], files[name][1], force, cfg)

    for name in files:
        plan(name)  # a refused stage (other settings, stale parents) stops the run now, not after pretraining
    t0 = time.perf_counter()
    if can_train_side_by_side(cfg, device):
        # Two at a time, each stage as soon as a core and its parents are free (AWR and BC beside the
        # behavior model once the critic is done); each wall is the stage's own, beside another stage.
        walls = train_side_by_side(cfg, run_dir, [name for name, *_ in stages], plan, quiet, None)
        for name, seconds in walls.items():
            _record_wall(run_dir, name, seconds)
    else:
        walls = {}
        for name, _, _, fn in stages:
            how = plan(name)
            if how == "skip":
                continue
            t = time.perf_counter()
            fn(cfg, data, run_dir, device, quiet=quiet, resume=how == "resume")
            walls[name] = time.perf_counter() - t
            _record_wall(run_dir, name, walls[name])
    if walls:
        _record_wall(run_dir, "total", time.perf_counter() - t0)
    walls = json.loads((run_dir / "walls.json").read_text())
    scores = {}
    for pol in POLICIES:
        scores[pol] = _score(evaluate_run(cfg, run_dir, pol))
    ref = (data.ref_min_score, data.ref_max_score)
    mean_ret = float(data.episode_returns.mean())
    scores["dataset"] = 100 * (mean_ret - ref[0]) / (ref[1] - ref[0]) if None not in ref else mean_ret
    for beta in betas:
        scores[f"beta={beta:g}"] = (
            scores["srpo"] if beta == cfg.extract.beta else extract_at_beta(cfg, data, run_dir, beta, quiet, force)
        )
    bench = bench_run(cfg, run_dir, repeats=500)
    balance = run_balance(cfg, data, run_dir, device).balance_step
    return {"scores": scores, "walls": walls, "latency": bench, "balance": balance}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", required=True, help="comma-separated Minari ids (local)")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--preset", default=None, help="preset for every dataset (default: each dataset's own)")
    ap.add_argument("--set", action="append", default=[], help="config override KEY=VALUE (repeatable)")
    ap.add_argument("--runs", default=".bench-data/runs/{dataset}/seed{seed}", help="run directory template")
    ap.add_argument("--out", type=Path, default=Path(".bench-data/results.md"))
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--force", action="store_true", help="retrain every stage, even finished ones")
    ap.add_argument("--betas", default="", help="comma-separated betas: one more SRPO column each")
    args = ap.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    betas = tuple(float(b) for b in args.betas.split(",") if b)
    beta_cols = [f"beta={b:g}" for b in betas]
    rows = []
    for ds in args.datasets.split(","):
        per_seed = []
        for seed in seeds:
            flags = {"dataset": ds, "seed": seed, "run_dir": args.runs, **config.parse_set(args.set)}
            # Only this command line decides: a stray srpo.yaml or SRPO_* variable in the shell (a preset pinned
            # for another dataset, say) would change what the table measures without the recorded command saying so.
            cfg = config.resolve(flags, preset=args.preset, config_path=_NO_CONFIG_FILE, environ={})
            print(f"== {ds} seed {seed} -> {cfg.resolved_run_dir()}", file=sys.stderr, flush=True)
            try:
                per_seed.append(run_one(cfg, args.quiet, args.force, betas))
            except SrpoError as e:
                print(f"Error: {e}", file=sys.stderr)
                return e.exit_code
        rows.append((ds, cfg, per_seed))
    lines = [
        f"Command: `python {' '.join(shlex.quote(a) for a in [_script_path(), *(argv or sys.argv[1:])])}`  ",
        f"Date: {datetime.date.today()}, seeds {args.seeds}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, device {rows[0][1].device}  ",
        "Scores: normalized 0-100, mean ± std over seeds of the per-seed mean (final checkpoints), "
        f"{rows[0][1].eval.episodes} episodes per seed.  ",
        "Wall times: with parallel_pretrain on "
        f"({rows[0][1].parallel_pretrain}), the stages train two at a time (one process each, half the threads), "
        "each as soon as its parents are done (AWR and BC beside the behavior model once the critic ends); "
        "total is the training's wall, start to end.  ",
        "Q / score balance (per seed): how far off the data's actions the score term's pull back matches the Q "
        "term's push, beta x |dQ/da|, at the preset's beta (`srpo extract` prints it); none: the push wins at "
        "every distance up to 1.0 and nothing holds the actor near the data.",
        "",
        *(["SRPO at other betas: the preset's extraction from the same behavior model and critic."] if betas else []),
        "",
        "| dataset | data avg | SRPO | diffusion | AWR | BC | "
        + "".join(f"SRPO {c} | " for c in beta_cols)
        + "Q / score balance | wall s (behavior / critic / extract / AWR / BC / total) | "
        "latency p50 SRPO / diffusion (µs) |",
        "|---|---|---|---|---|---|" + "---|" * len(beta_cols) + "---|---|---|",
    ]
    for ds, _cfg, per_seed in rows:
        cell = {}
        for k in ("dataset", *POLICIES, *beta_cols):
            v = np.array([r["scores"][k] for r in per_seed])
            cell[k] = f"{v.mean():.1f} ± {v.std():.1f}"
        w = {k: np.nanmean([r["walls"].get(k) or np.nan for r in per_seed]) for k in WALLS}
        lat = per_seed[0]["latency"]
        lines.append(
            f"| {ds} | {cell['dataset']} | {cell['srpo']} | {cell['diffusion']} | {cell['awr']} | {cell['bc']} | "
            + "".join(f"{cell[c]} | " for c in beta_cols)
            + ", ".join("none" if r["balance"] is None else f"{r['balance']:.2f}" for r in per_seed)
            + f" | {' / '.join(f'{w[k]:.0f}' for k in WALLS)} | "
            f"{lat['srpo_p50_us']:.1f} / {lat['diffusion_p50_us']:,.0f} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
