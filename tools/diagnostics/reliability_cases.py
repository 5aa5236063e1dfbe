"""Run srpo's hostile-user cases through the CLI and print what each does, as the table of
docs/reliability.md.

    python tools/diagnostics/reliability_cases.py            # Markdown table on stdout
    python tools/diagnostics/reliability_cases.py --check    # exit 1 if any case breaks the CLI contract

Every case runs in a fresh working folder against one private Minari store (the built-in default dataset, a
second dataset of other dimensions, and a tiny trained run), in this process, through Typer's test runner.
The contract it checks: the expected exit code, a message that names the problem, and never a traceback or
"Unexpected". The fault and concurrency cases (kills, two writers) need real processes and live in
tests/test_reliability.py.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np


@dataclass
class Case:
    group: str
    what: str
    argv: list[str] | Callable[[Path, dict], list[str]]
    code: int
    expect: str  # a phrase the message must contain
    env: dict[str, str] = field(default_factory=dict)
    setup: Callable[[Path, dict], None] | None = None


def _h5(path: Path, rows: int, obs_dim: int = 3, arrays=("observations", "actions", "rewards", "terminals")) -> str:
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        shapes = {"observations": (rows, obs_dim), "actions": (rows, 1), "rewards": (rows,), "terminals": (rows,)}
        for name in arrays:
            f[name] = (
                rng.standard_normal(shapes[name]).astype(np.float32) if name != "terminals" else np.zeros(rows, bool)
            )
    return str(path)


def _write(name: str, text: str | bytes) -> Callable[[Path, dict], None]:
    def setup(wd: Path, ctx: dict) -> None:
        (wd / name).write_bytes(text if isinstance(text, bytes) else text.encode())

    return setup


def _copy_run(wd: Path, ctx: dict) -> Path:
    dst = wd / "run"
    shutil.copytree(ctx["run"], dst)
    return dst


def _damage(name: str, how: str) -> Callable[[Path, dict], list[str]]:
    """A copy of the trained run with one file damaged, then ``srpo eval`` on it."""

    def argv(wd: Path, ctx: dict) -> list[str]:
        run = _copy_run(wd, ctx)
        f = run / name
        raw = bytearray(f.read_bytes())
        if how == "bytes":
            start = 8 + int.from_bytes(raw[:8], "little") + 64
            raw[start : start + 256] = np.random.default_rng(0).integers(0, 256, 256, dtype=np.uint8).tobytes()
        elif how == "truncate":
            raw = raw[: len(raw) // 2]
        elif how == "foreign":
            import torch
            from safetensors.torch import save_file

            save_file({"w": torch.ones(2)}, str(f))
            raw = bytearray(f.read_bytes())
        elif how == "nan":
            import torch
            from safetensors import safe_open
            from safetensors.torch import load_file, save_file

            with safe_open(str(f), "pt") as h:
                meta = h.metadata()
            t = load_file(str(f))
            t = {k: (v.fill_(float("nan")) if v.is_floating_point() else v) for k, v in t.items()}
            meta.pop("tensors_sha256")
            save_file(t, str(f), metadata=meta)
            raw = bytearray(f.read_bytes())
        elif how == "critic":
            raw = bytearray((run / "critic.safetensors").read_bytes())
        f.write_bytes(bytes(raw))
        return ["eval", "--run", str(run), "--episodes", "1"]

    return argv


def _state_step(step: int | None) -> Callable[[Path, dict], list[str]]:
    def argv(wd: Path, ctx: dict) -> list[str]:
        import torch

        run = _copy_run(wd, ctx)
        sp = run / "critic.state.pt"
        if step is None:
            sp.unlink()
        else:
            state = torch.load(sp, weights_only=True)
            state["step"] = step
            torch.save(state, sp)
        return ["pretrain-critic", "--run", str(run), "--resume", "--steps", "40", *ctx["tiny"]]

    return argv


def _foreign_behavior(wd: Path, ctx: dict) -> list[str]:
    run = _copy_run(wd, ctx)
    shutil.copy(ctx["other_run"] / "behavior.safetensors", run / "behavior.safetensors")
    return ["extract", "--run", str(run), "--force", "--steps", "5", *ctx["tiny"]]


def _foreign_critic(wd: Path, ctx: dict) -> list[str]:
    run = _copy_run(wd, ctx)
    shutil.copy(ctx["other_run"] / "critic.safetensors", run / "critic.safetensors")
    return ["eval", "--policy", "diffusion", "--run", str(run), "--episodes", "1", *ctx["tiny"]]


def _export(out: str, *extra: str) -> Callable[[Path, dict], list[str]]:
    def argv(wd: Path, ctx: dict) -> list[str]:
        run = _copy_run(wd, ctx)
        (wd / "exists.pt").write_bytes(b"x")
        (wd / "adir").mkdir()
        target = out.replace("RUN", str(run)).replace("WD", str(wd))
        return ["export", "--run", str(run), "--out", target, *extra]

    return argv


def cases() -> list[Case]:
    E = "expected int"
    return [
        # -- configuration ----------------------------------------------------------------------------------
        Case(
            "config", "a boolean where an integer goes (--set)", ["pretrain-critic", "--set", "critic.steps=true"], 2, E
        ),
        Case(
            "config",
            "a boolean where an integer goes (srpo.yaml)",
            ["pretrain-critic"],
            2,
            E,
            setup=_write("srpo.yaml", "critic:\n  steps: true\n"),
        ),
        Case(
            "config",
            "steps: .inf in srpo.yaml",
            ["pretrain-critic"],
            2,
            E,
            setup=_write("srpo.yaml", "critic:\n  steps: .inf\n"),
        ),
        Case("config", "an integer that overflows (1e400)", ["pretrain-critic", "--set", "critic.steps=1e400"], 2, E),
        Case("config", "a fractional step count", ["pretrain-critic", "--set", "critic.steps=2.5"], 2, E),
        Case("config", "a NaN learning rate", ["pretrain-behavior", "--set", "behavior.lr=.nan"], 2, "finite"),
        Case("config", "a negative learning rate", ["pretrain-critic", "--set", "critic.q_lr=-0.1"], 2, "positive"),
        Case("config", "ckpt_every: 0", ["pretrain-critic", "--set", "critic.ckpt_every=0"], 2, "positive integer"),
        Case("config", "log_every: 0", ["extract", "--set", "extract.log_every=0"], 2, "positive integer"),
        Case(
            "config",
            "a negative width",
            ["pretrain-behavior", "--set", "behavior.hidden_dim=-4"],
            2,
            "positive integer",
        ),
        Case("config", "dropout 5", ["pretrain-behavior", "--set", "behavior.dropout=5"], 2, "in [0, 1)"),
        Case("config", "expectile 1.5", ["pretrain-critic", "--set", "critic.expectile=1.5"], 2, "between 0 and 1"),
        Case(
            "config",
            "a choice that does not exist",
            ["extract", "--set", "extract.weighting=bogus"],
            2,
            "choose one of",
        ),
        Case("config", "an unknown key, with a close one", ["extract", "--set", "extract.bta=0.1"], 2, "Did you mean"),
        Case(
            "config",
            "run_dir with an unknown placeholder",
            ["pretrain-critic", "--run", "runs/{bogus}"],
            2,
            "placeholders",
        ),
        Case("config", "--set with unbalanced YAML", ["extract", "--set", "extract.beta=[1,2"], 2, "not valid YAML"),
        Case(
            "config",
            "--set with a YAML python tag",
            ["extract", "--set", "extract.beta=!!python/object/apply:os.system [id]"],
            2,
            "not valid YAML",
        ),
        Case("config", "--set without '='", ["extract", "--set", "extract.beta"], 2, "KEY=VALUE"),
        Case(
            "config",
            "srpo.yaml is a folder",
            ["pretrain-critic"],
            2,
            "Cannot read srpo.yaml",
            setup=lambda wd, c: (wd / "srpo.yaml").mkdir(),
        ),
        Case(
            "config",
            "srpo.yaml is binary",
            ["pretrain-critic"],
            2,
            "not a text file",
            setup=_write("srpo.yaml", b"\x00\xff\xfe\x01"),
        ),
        Case(
            "config", "srpo.yaml is a list", ["pretrain-critic"], 2, "mapping", setup=_write("srpo.yaml", "- 1\n- 2\n")
        ),
        Case(
            "config",
            "srpo.yaml with broken YAML",
            ["pretrain-critic"],
            2,
            "not valid YAML",
            setup=_write("srpo.yaml", "critic: [\n"),
        ),
        Case("config", "an unknown SRPO_* variable", ["init"], 2, "Unknown configuration key", env={"SRPO_BOGUS": "1"}),
        Case(
            "config",
            "an SRPO_* variable of the wrong type",
            ["init"],
            2,
            "expected float",
            env={"SRPO_EXTRACT__BETA": "abc"},
        ),
        Case(
            "config", "SRPO_NO_MALLOPT=1 (the documented opt-out)", ["init"], 0, "wrote", env={"SRPO_NO_MALLOPT": "1"}
        ),
        Case("config", "an unknown preset", ["pretrain-critic", "--preset", "nosuch"], 2, "Unknown preset"),
        Case("config", "--threads -1", ["pretrain-critic", "--threads", "-1"], 2, "threads"),
        Case("config", "--seed -1", ["pretrain-critic", "--seed", "-1"], 2, "'seed'"),
        Case("config", "eval.episodes 0", ["eval", "--episodes", "0"], 2, "eval.episodes"),
        # -- environment ------------------------------------------------------------------------------------
        Case("environment", "--device cuda without a GPU", ["pretrain-critic", "--device", "cuda"], 2, "no CUDA GPU"),
        Case("environment", "--device tpu", ["pretrain-critic", "--device", "tpu"], 2, "is not one of"),
        Case(
            "environment",
            "collect in an environment that does not exist",
            ["collect", "Nope-v9", "--id", "t/nope/x-v0", "--steps", "5"],
            1,
            "Cannot create environment",
        ),
        Case(
            "environment",
            "collect with a policy of another environment",
            lambda wd, c: [
                "collect",
                "MountainCarContinuous-v0",
                "--id",
                "t/mc/x-v0",
                "--policy",
                str(c["run"] / "actor.safetensors"),
                "--steps",
                "5",
            ],
            1,
            "does not fit environment",
        ),
        Case(
            "environment",
            "eval a policy with --dataset of another dataset",
            lambda wd, c: ["eval", "--run", str(c["run"]), "--dataset", c["other"], "--episodes", "1"],
            2,
            "was trained on",
        ),
        Case(
            "environment",
            "fetch a remote dataset offline",
            ["fetch", "mujoco/hopper/medium-v0"],
            1,
            "unreachable",
            env={"HF_HUB_OFFLINE": "", "HF_ENDPOINT": "https://nonexistent.invalid"},
        ),
        # -- datasets ---------------------------------------------------------------------------------------
        Case("datasets", "a dataset id that is not an id", ["fetch", "not an id"], 2, "not a Minari dataset id"),
        Case(
            "datasets",
            "a dataset that is not local",
            ["pretrain-critic", "--dataset", "not/there-v0"],
            1,
            "not in the local Minari store",
        ),
        Case(
            "datasets",
            "a D4RL file that does not exist",
            ["fetch", "--d4rl-file", "missing.hdf5", "--env", "Pendulum-v1", "--id", "t/d/x-v0"],
            2,
            "does not exist",
        ),
        Case(
            "datasets",
            "a D4RL file that is not HDF5",
            ["fetch", "--d4rl-file", "bad.hdf5", "--env", "Pendulum-v1", "--id", "t/d/x-v0"],
            2,
            "not a readable HDF5",
            setup=_write("bad.hdf5", "text"),
        ),
        Case(
            "datasets",
            "a D4RL file without rewards",
            lambda wd, c: [
                "fetch",
                "--d4rl-file",
                _h5(wd / "f.hdf5", 10, arrays=("observations", "actions", "terminals")),
                "--env",
                "Pendulum-v1",
                "--id",
                "t/d/x-v0",
            ],
            2,
            "missing rewards",
        ),
        Case(
            "datasets",
            "a D4RL file with zero rows",
            lambda wd, c: ["fetch", "--d4rl-file", _h5(wd / "f.hdf5", 0), "--env", "Pendulum-v1", "--id", "t/d/x-v0"],
            2,
            "no transitions",
        ),
        Case(
            "datasets",
            "a D4RL file imported with the wrong --env",
            lambda wd, c: [
                "fetch",
                "--d4rl-file",
                _h5(wd / "f.hdf5", 20),
                "--env",
                "MountainCarContinuous-v0",
                "--id",
                "t/d/x-v0",
            ],
            2,
            "does not fit environment",
        ),
        Case(
            "datasets",
            "a D4RL file with an --env that does not exist",
            lambda wd, c: ["fetch", "--d4rl-file", _h5(wd / "f.hdf5", 20), "--env", "Nope-v9", "--id", "t/d/x-v0"],
            1,
            "Cannot create environment",
        ),
        Case(
            "datasets",
            "--d4rl-file without --env",
            ["fetch", "--d4rl-file", "f.hdf5", "--id", "t/d/x-v0"],
            2,
            "needs --env",
        ),
        Case(
            "datasets",
            "import over an existing dataset without --force",
            lambda wd, c: ["fetch", "--d4rl-file", _h5(wd / "f.hdf5", 20), "--env", "Pendulum-v1", "--id", c["other"]],
            2,
            "already exists",
        ),
        Case(
            "datasets",
            "a failed forced import over an existing dataset",
            lambda wd, c: [
                "fetch",
                "--d4rl-file",
                _h5(wd / "f.hdf5", 20),
                "--env",
                "Nope-v9",
                "--id",
                c["other"],
                "--force",
            ],
            1,
            "Cannot create environment",
        ),
        Case(
            "datasets",
            "collect with --noise -1",
            ["collect", "Pendulum-v1", "--id", "t/c/x-v0", "--noise", "-1"],
            2,
            "--noise",
        ),
        # -- checkpoints ------------------------------------------------------------------------------------
        Case(
            "checkpoints",
            "eval a run that has no actor",
            ["eval", "--run", "nowhere", "--episodes", "1"],
            1,
            "does not exist",
        ),
        Case("checkpoints", "damaged tensor bytes", _damage("actor.safetensors", "bytes"), 1, "checksum"),
        Case(
            "checkpoints", "a truncated checkpoint", _damage("actor.safetensors", "truncate"), 1, "truncated or corrupt"
        ),
        Case(
            "checkpoints",
            "a safetensors file that is not srpo's",
            _damage("actor.safetensors", "foreign"),
            1,
            "not an srpo",
        ),
        Case("checkpoints", "NaN weights (no checksum)", _damage("actor.safetensors", "nan"), 1, "non-finite"),
        Case(
            "checkpoints",
            "a critic where the actor should be",
            _damage("actor.safetensors", "critic"),
            1,
            "'critic' checkpoint",
        ),
        Case(
            "checkpoints",
            "--resume with a training state of another step",
            _state_step(3),
            1,
            "replaced or copied separately",
        ),
        Case("checkpoints", "--resume with the training state missing", _state_step(None), 1, "is missing"),
        Case(
            "checkpoints",
            "retrain a finished stage without --force",
            lambda wd, c: ["pretrain-critic", "--run", str(_copy_run(wd, c)), "--steps", "5"],
            2,
            "already exists",
        ),
        Case(
            "checkpoints",
            "--resume and --force together",
            lambda wd, c: ["pretrain-critic", "--run", str(_copy_run(wd, c)), "--resume", "--force"],
            2,
            "contradict",
        ),
        Case(
            "checkpoints",
            "--resume with another configuration",
            lambda wd, c: [
                "pretrain-critic",
                "--run",
                str(_copy_run(wd, c)),
                "--resume",
                "--steps",
                "40",
                "--set",
                "critic.expectile=0.9",
                *c["tiny"],
            ],
            2,
            "critic.expectile is 0.7 there",
        ),
        Case(
            "checkpoints",
            "extract from a behavior model of another dataset",
            _foreign_behavior,
            1,
            "do not belong together",
        ),
        Case(
            "checkpoints",
            "the diffusion baseline with a critic of another dataset",
            _foreign_critic,
            1,
            "do not belong together",
        ),
        # -- output paths -----------------------------------------------------------------------------------
        Case(
            "output paths",
            "export over its own source",
            _export("RUN/actor.safetensors", "--force"),
            2,
            "being exported",
        ),
        Case(
            "output paths",
            "export over a training state",
            _export("RUN/critic.state.pt", "--force"),
            2,
            "training state",
        ),
        Case("output paths", "export over /dev/full", _export("/dev/full", "--force"), 2, "not a regular file"),
        Case("output paths", "export into a folder", _export("WD/adir", "--force"), 2, "is a folder"),
        Case("output paths", "export into a missing folder", _export("WD/missing/a.pt"), 2, "does not exist"),
        Case("output paths", "export over a file without --force", _export("WD/exists.pt"), 2, "already exists"),
        Case(
            "output paths",
            "export in an unknown format",
            _export("WD/a.pt", "--format", "pickle"),
            2,
            "is not one of",
        ),
        Case(
            "output paths",
            "--run names a file",
            ["pretrain-critic", "--run", "afile"],
            2,
            "is a file, not a folder",
            setup=_write("afile", "x"),
        ),
        Case(
            "output paths",
            "eval --seeds with no {seed} in --run",
            ["eval", "--seeds", "0,1,2", "--run", "runs/x"],
            2,
            "same run directory",
        ),
        Case("output paths", "eval --seeds ,,,", ["eval", "--seeds", ",,,"], 2, "no seed"),
        Case("output paths", "eval --seeds 1,1", ["eval", "--seeds", "1,1"], 2, "twice"),
        Case("output paths", "eval --runs naming one run twice", ["eval", "--runs", "a", "--runs", "a"], 2, "twice"),
        Case("output paths", "eval --seeds with letters", ["eval", "--seeds", "a,b"], 2, "comma-separated"),
    ]


TINY = ["--set", "critic.batch_size=64", "--set", "extract.batch_size=64", "--set", "eval.num_envs=1"]


def prepare(root: Path) -> dict:
    """A store with the built-in default and a second dataset, and a tiny trained run on each."""
    import torch

    from srpo_cli import config
    from srpo_cli.algos.behavior import train_behavior
    from srpo_cli.algos.critic import train_critic
    from srpo_cli.algos.extract import train_actor
    from srpo_cli.collect import collect
    from srpo_cli.data.builders import build_default_dataset
    from srpo_cli.data.transitions import load_transitions

    os.environ["MINARI_DATASETS_PATH"] = str(root / "store")
    default = build_default_dataset()
    other, _ = collect("MountainCarContinuous-v0", "t/mountaincar/random-v0", "random", 400)
    runs = {}
    for name, ds in (("run", default), ("other_run", other)):
        cfg = config.resolve({"dataset": ds}, config_path=Path("/nonexistent.yaml"), environ={})
        cfg.behavior.steps = cfg.critic.steps = cfg.extract.steps = 20
        cfg.behavior.batch_size = cfg.critic.batch_size = cfg.extract.batch_size = 64
        if name == "other_run":  # one random episode: no return range to scale rewards by
            cfg.critic.reward_mode = "none"
        data = load_transitions(ds)
        run = root / name
        for fn in (train_behavior, train_critic, train_actor):
            fn(cfg, data, run, torch.device("cpu"), quiet=True)
        runs[name] = run
    return {"default": default, "other": other, "tiny": TINY, **runs}


def run_case(case: Case, ctx: dict) -> tuple[int, str]:
    from typer.testing import CliRunner

    from srpo_cli.cli import app

    wd = Path(tempfile.mkdtemp(prefix="case-"))
    old_cwd, saved = os.getcwd(), {k: os.environ.get(k) for k in case.env}
    try:
        os.chdir(wd)
        for k, v in case.env.items():
            if v:
                os.environ[k] = v
            else:
                os.environ.pop(k, None)
        if case.setup:
            case.setup(wd, ctx)
        argv = case.argv(wd, ctx) if callable(case.argv) else case.argv
        r = CliRunner().invoke(app, [str(a) for a in argv])
        return r.exit_code, r.output
    finally:
        os.chdir(old_cwd)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(wd, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if a case breaks the contract")
    args = ap.parse_args(argv)
    saved = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "MINARI_DATASETS_PATH")}
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    root = Path(tempfile.mkdtemp(prefix="srpo-cases-"))
    try:
        ctx = prepare(root)
        failures = 0
        print("| group | case | exit | what srpo says (first sentence) |")
        print("|---|---|---|---|")
        for case in cases():
            code, output = run_case(case, ctx)
            text = " ".join(output.split())
            ok = code == case.code and case.expect in text and "Traceback" not in text and "Unexpected" not in text
            failures += not ok
            said = text[text.find("Error: ") + 7 :] if "Error: " in text else text
            said = said[: said.find(". ") + 1] if ". " in said else said[:160]
            said = re.sub(r"/tmp/case-[^/ ]+", "WORKDIR", re.sub(r"/tmp/srpo-cases-[^/ ]+", "STORE", said))
            mark = "" if ok else " **(contract broken)**"
            print(f"| {case.group} | {case.what} | {code}{mark} | {said.replace('|', '/')} |")
        print(f"\n{len(cases()) - failures} of {len(cases())} cases keep the contract.", file=sys.stderr)
        return 1 if (args.check and failures) else 0
    finally:
        shutil.rmtree(root, ignore_errors=True)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


if __name__ == "__main__":
    sys.exit(main())
