"""Learning curves from the metrics CSVs of one or more run directories (e.g. several seeds)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from srpo_cli import artifacts
from srpo_cli.errors import UsageError

SKIP = {"step", "wall_s", "steps_per_s"}


def _read(path: Path) -> dict[str, list[tuple[int, float]]]:
    series: dict[str, list[tuple[int, float]]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            for k, v in row.items():
                if k in SKIP or not v:
                    continue
                series.setdefault(k, []).append((int(row["step"]), float(v)))
    return series


def run_labels(run_dirs: list[Path]) -> list[str]:
    """Each run's label: the shortest tail of its path that no other run's path ends with, so that runs of one
    seed in different folders (``runs/.../seed5``, ``runs300/.../seed5``) stay apart in a legend."""
    parts = [Path(r).parts for r in run_dirs]
    labels = []
    for i, own in enumerate(parts):
        tail = own
        for k in range(1, len(own) + 1):
            if all(other[-k:] != own[-k:] for j, other in enumerate(parts) if j != i):
                tail = own[-k:]
                break
        labels.append("/".join(tail))
    return labels


def smooth(values: list[float], window: int) -> np.ndarray:
    """Trailing moving average over ``window`` logged points (shorter at the start, where fewer exist)."""
    v = np.asarray(values, dtype=float)
    if window <= 1 or len(v) == 0:
        return v
    c = np.cumsum(np.insert(v, 0, 0.0))
    idx = np.arange(1, len(v) + 1)
    lo = np.maximum(0, idx - window)
    return (c[idx] - c[lo]) / (idx - lo)


def plot_runs(
    run_dirs: list[Path],
    out_dir: Path | None = None,
    mean: bool = True,
    window: int = 1,
    xlim: tuple[float, float] | None = None,
    ylim: tuple[float, float] | None = None,
) -> list[Path]:
    """One PNG per stage; each metric a panel; several runs (seeds) each labelled by its directory name (more of
    its path where names repeat), with their mean and min-max band unless ``mean`` is off (runs that are
    different variants, not seeds). ``window``: a trailing moving average over that many logged points;
    ``xlim``/``ylim``: the axes' ranges (every panel)."""
    if window < 1:
        raise UsageError(f"--window must be at least 1, got {window}.")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for r in run_dirs:
        if not (Path(r) / artifacts.METRICS_DIR).is_dir():
            raise UsageError(f"{r} has no metrics/ folder; is it an srpo run directory?")
    out_dir = Path(out_dir) if out_dir else Path(run_dirs[0]) / "plots"
    out_dir.mkdir(parents=True, exist_ok=True)
    label_of = dict(zip((Path(r) for r in run_dirs), run_labels(run_dirs), strict=True))
    stages = sorted({p.stem for r in run_dirs for p in (Path(r) / artifacts.METRICS_DIR).glob("*.csv")})
    files = []
    for stage in stages:
        present = [Path(r) for r in run_dirs if (Path(r) / artifacts.METRICS_DIR / f"{stage}.csv").exists()]
        runs = [_read(r / artifacts.METRICS_DIR / f"{stage}.csv") for r in present]
        names = [label_of[r] for r in present]
        keys = sorted({k for run in runs for k in run})
        if not keys:
            continue
        fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2), squeeze=False)
        for ax, key in zip(axes[0], keys, strict=False):
            curves = [run[key] for run in runs if key in run]
            labels = [name for run, name in zip(runs, names, strict=True) if key in run]
            for c, label in zip(curves, labels, strict=True):
                xs, ys = zip(*c, strict=False)
                ys = smooth(ys, window)
                alpha = 0.35 if len(curves) > 1 and mean else 1.0
                ax.plot(xs, ys, alpha=alpha, lw=1, marker="o" if len(c) < 20 else None, ms=3, label=label)
            if len(curves) > 1 and not mean:
                ax.legend(fontsize=7)
            if len(curves) > 1 and mean:
                steps = sorted(set.intersection(*[{s for s, _ in c} for c in curves]))
                if steps:
                    vals = np.array([smooth([dict(c)[s] for s in steps], window) for c in curves])
                    ax.plot(steps, vals.mean(0), color="black", lw=2, label=f"mean of {len(curves)}")
                    ax.fill_between(steps, vals.min(0), vals.max(0), color="gray", alpha=0.2)
                    ax.legend(fontsize=7)
            if xlim:
                ax.set_xlim(*xlim)
            if ylim:
                ax.set_ylim(*ylim)
            title = key + (" (0-100)" if key == "eval_score" else "")
            ax.set_title(title + (f", moving average of {window}" if window > 1 else ""), fontsize=9)
            ax.set_xlabel("step", fontsize=8)
            ax.tick_params(labelsize=7)
        fig.suptitle(f"{stage}: {', '.join(str(r) for r in run_dirs)}"[:120], fontsize=9)
        fig.tight_layout()
        path = out_dir / f"{stage}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        files.append(path)
    return files
