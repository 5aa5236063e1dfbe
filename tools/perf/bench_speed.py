"""Training speed of each SRPO stage, ours against the authors' reference code, in alternating bursts.

    python tools/perf/bench_speed.py --reference /path/to/thu-ml/SRPO [--device cpu] [--rounds 5] [--only critic]

The reference (github.com/thu-ml/SRPO) is not part of srpo: point --reference at a checkout (a work tree or a
bare git directory). Its files are copied to a temporary folder and patched only to run on --device instead of
a hard-coded "cuda"; nothing else is changed. Without --reference only our figures are printed.

Both implementations train the same networks on the same random Hopper-sized data (obs 11, action 3) at the
paper's batch sizes (behavior 2048, critic 256, extract 256). Each implementation runs in its own process (ours
tunes the allocator; the reference must not inherit that), built once; then, --rounds times, each stage is
timed for a burst of a few seconds in ours and right after (or right before: the order alternates) in the
reference, one process waiting while the other runs. This machine's speed swings by tens of percent from
minute to minute, so the figure to quote is the median over rounds of each round's ratio (two bursts seconds
apart), not a ratio of medians taken minutes apart; bf16 and compiled variants are paired with the
reference's fp32 burst. The range of the per-round ratios is printed beside it.
The reference's critic step (`update_iql`) also trains a side AWR policy that SRPO never uses: the "critic"
row times that whole step, as issue 3 defines the comparison; "critic-qv" times its Q and V update alone
(`update_q0`) against the same step of ours, the like-for-like figure.
"""

from __future__ import annotations

import argparse
import importlib
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

OBS, ACT, N = 11, 3, 100_000


def matmul_peak(dtype: torch.dtype, device: torch.device, n: int = 1024, reps: int = 20) -> float:
    """GFLOP/s of an n x n x n matmul, the best of a few timings."""
    from srpo_cli.train.device import emulates_bf16

    if dtype == torch.bfloat16 and emulates_bf16(device):
        # software bf16: one 1024^3 matmul takes seconds (2.3 s on an AVX2-only EPYC), the full timing minutes
        n, reps = 256, 2
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    best = 0.0
    for _ in range(5):
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        _sync(device)
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9)
    return best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(step, n: int, device: torch.device, warmup: int = 3) -> float:
    for _ in range(warmup):
        step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    _sync(device)
    return n / (time.perf_counter() - t0)


# ----------------------------------------------------------------------------------------------------------- ours
def random_transitions(device: torch.device):
    """N random Hopper-sized transitions (obs 11, action 3) on ``device``: what every stage here trains on."""
    from srpo_cli.data.transitions import Transitions

    g = torch.Generator().manual_seed(0)
    return Transitions(
        dataset_id="bench/random-v0",
        observations=torch.randn(N, OBS, generator=g).to(device),
        actions=(torch.rand(N, ACT, generator=g) * 2 - 1).to(device),
        rewards=torch.randn(N, generator=g).to(device),
        next_observations=torch.randn(N, OBS, generator=g).to(device),
        terminals=(torch.rand(N, generator=g) < 0.01).float().to(device),
        episode_returns=torch.randn(100, generator=g).numpy() * 100,
        action_low=-torch.ones(ACT).numpy(),
        action_high=torch.ones(ACT).numpy(),
    )


def our_stages(device: torch.device, tmp: Path):
    from srpo_cli import config
    from srpo_cli.algos.behavior import BehaviorStage
    from srpo_cli.algos.critic import CriticStage
    from srpo_cli.algos.extract import ExtractStage

    data = random_transitions(device)
    cfg = config.RunConfig()
    cfg.critic.reward_mode = "none"
    behavior = BehaviorStage(cfg, data, device)
    critic = CriticStage(cfg, data, device)
    behavior.save(tmp / "behavior.safetensors", 0)
    critic.save(tmp / "critic.safetensors", 0)
    # "critic-qv": the same step, named to pair with the reference's step without its side policy
    stages = {"behavior fp32": behavior.step, "critic fp32": critic.step, "critic-qv fp32": critic.step}
    extract = ExtractStage(cfg, data, device, tmp)
    stages["extract fp32"] = extract.step
    cfg_bf = config.RunConfig()
    cfg_bf.behavior.bf16 = True
    cfg_bf.extract.bf16_behavior = True
    stages["behavior bf16"] = BehaviorStage(cfg_bf, data, device).step
    stages["extract bf16"] = ExtractStage(cfg_bf, data, device, tmp).step
    cfg_e32 = config.RunConfig()
    cfg_e32.extract.compile = True  # fp32 throughout: the same maths as "extract fp32", one compiled graph
    stages["extract fp32 compiled"] = ExtractStage(cfg_e32, data, device, tmp).step
    cfg_ec = config.RunConfig()
    cfg_ec.extract.bf16_behavior = True
    cfg_ec.extract.compile = True  # the frozen behavior net compiled with its weights as constants
    stages["extract bf16 compiled"] = ExtractStage(cfg_ec, data, device, tmp).step
    cfg_c = config.RunConfig()
    cfg_c.critic.reward_mode = "none"
    cfg_c.critic.compile = True  # the warm-up steps pay the compilation
    stages["critic compiled"] = CriticStage(cfg_c, data, device).step
    return stages


# ------------------------------------------------------------------------------------------------------ reference
def load_reference(path: Path, device: torch.device, tmp: Path):
    """Copy the reference's model.py and SRPO.py to tmp, patch the device, import them."""
    dst = tmp / "reference"
    dst.mkdir()
    for name in ("model.py", "SRPO.py"):
        if (path / name).exists():
            text = (path / name).read_text()
        else:  # a bare git directory
            text = subprocess.run(["git", "--git-dir", str(path), "show", f"HEAD:{name}"], check=True,
                                  capture_output=True, text=True).stdout  # fmt: skip
        (dst / name).write_text(text.replace('"cuda"', f'"{device.type}"'))
    sys.path.insert(0, str(dst))
    for name in ("SRPO", "model"):  # a copy imported earlier in this process (from another tmp) is stale
        sys.modules.pop(name, None)
    return importlib.import_module("SRPO")


def reference_schedule(beta_0: float = 0.1, beta_1: float = 20.0):
    """The reference's marginal_prob_std (utils.py), which its training scripts pass in: (alpha_t, sigma_t)."""

    def marginal_prob_std(t: torch.Tensor):
        log_mean_coeff = -0.25 * t**2 * (beta_1 - beta_0) - 0.5 * t * beta_0
        return torch.exp(log_mean_coeff), torch.sqrt(1.0 - torch.exp(2.0 * log_mean_coeff))

    return marginal_prob_std


def reference_stages(ref, device: torch.device):
    marginal_prob_std = reference_schedule()
    args = SimpleNamespace(device=device.type, actor_blocks=3, policy_layer=2, q_layer=2, n_policy_epochs=100,
                           WT="VDS", beta=0.05, regq=0, env="hopper-medium-v2")  # fmt: skip
    torch.manual_seed(0)
    s = torch.randn(N, OBS, device=device)
    a = torch.rand(N, ACT, device=device) * 2 - 1
    r = torch.randn(N, 1, device=device)
    s2 = torch.randn(N, OBS, device=device)
    d = (torch.rand(N, 1, device=device) < 0.01).float()

    def batch(bs):
        # the reference samples from a pre-shuffled tensor dataset; indexing costs the same for both
        idx = torch.randint(0, N, (bs,), device=device)
        return {"s": s[idx], "a": a[idx], "r": r[idx], "s_": s2[idx], "d": d[idx]}

    behavior = ref.SRPO_Behavior(OBS + ACT, ACT, marginal_prob_std, args=args).to(device)
    critic = ref.SRPO_IQL(OBS + ACT, ACT, args=args).to(device)
    policy = ref.SRPO(OBS + ACT, ACT, marginal_prob_std, args=args).to(device)
    policy.q[0] = critic.q[0]

    return {
        "behavior fp32": lambda: behavior.update_behavior(batch(2048)),
        "critic fp32": lambda: critic.update_iql(batch(256)),
        # the critic alone (Q and V), without the side AWR policy that update_iql also trains
        "critic-qv fp32": lambda: critic.q[0].update_q0(batch(256)),
        "extract fp32": lambda: policy.update_SRPO_policy(batch(256)),
    }


STEPS = {"behavior": 6, "critic": 500, "critic-qv": 500, "extract": 150}  # a few seconds each per round
# a GPU steps 10-100x faster: time enough steps that launch jitter and the first synchronisation average out
STEPS_GPU = {"behavior": 60, "critic": 1000, "critic-qv": 1000, "extract": 500}
# behavior: one step is ~20 GFLOP at batch 2048 for 1.64M parameters (forward 2 * P * B, backward 2x that)
BEHAVIOR_GFLOP = 6 * 1.64e6 * 2048 / 1e9


def serve(impl: str, reference: Path | None, device: torch.device, only: list[str]) -> None:
    """A worker process: build one implementation's stages once, then time bursts on request.

    Protocol (one line each way): the worker prints the JSON list of its stage names when ready; each
    request is ``{"stage": name, "steps": n, "warmup": k}`` and is answered with the steps/s of that burst
    (answers start with REPLY).
    Each implementation has its own process (ours tunes the allocator; the reference must not inherit that),
    and only one of the two runs at a time: the other waits on its pipe.
    """
    tmp = Path(tempfile.mkdtemp(prefix="srpo-bench-"))
    try:
        stages = (
            our_stages(device, tmp)
            if impl == "ours"
            else reference_stages(load_reference(reference, device, tmp), device)
        )
        stages = {k: v for k, v in stages.items() if not only or any(k.startswith(o) for o in only)}
        print(REPLY + json.dumps(list(stages)), flush=True)
        for line in sys.stdin:
            req = json.loads(line)
            if "peak" in req:  # the matmul peak now, in this process: what the behavior step is measured against
                print(REPLY + json.dumps(matmul_peak(getattr(torch, req["peak"]), device)), flush=True)
                continue
            steps_per_s = timed(stages[req["stage"]], req["steps"], device, warmup=req["warmup"])
            print(REPLY + json.dumps(steps_per_s), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


REPLY = "@bench "  # marks the worker's answers on its stdout


class Worker:
    def __init__(self, impl: str, args):
        cmd = [sys.executable, __file__, "--worker", impl, "--device", args.device, "--only", args.only]
        if args.reference:
            cmd += ["--reference", str(args.reference)]
        self.impl = impl
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.stages = self._read()
        self.warm: set[str] = set()

    def _read(self):
        while True:  # skip whatever else the code under test prints
            line = self.proc.stdout.readline()
            if not line:
                raise SystemExit(f"{self.impl} worker failed (its error is above)")
            if line.startswith(REPLY):
                return json.loads(line[len(REPLY) :])

    def time(self, stage: str, device: torch.device) -> float:
        steps = (STEPS if device.type == "cpu" else STEPS_GPU)[stage.split()[0]]
        # the first burst pays compilation and first-touch costs; later ones re-warm caches the other used
        warmup = 1 if stage in self.warm else (3 if device.type == "cpu" else 20)
        self.warm.add(stage)
        return self._ask({"stage": stage, "steps": steps, "warmup": warmup})

    def peak(self, dtype: str) -> float:
        return self._ask({"peak": dtype})

    def _ask(self, req: dict) -> float:
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference", type=Path, help="checkout (or bare git dir) of github.com/thu-ml/SRPO")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rounds", type=int, default=5, help="bursts per stage and implementation")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--only", default="", help="comma-separated stage prefixes to run, e.g. critic,extract")
    ap.add_argument("--worker", choices=["ours", "reference"], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    only = [x for x in args.only.split(",") if x]
    if args.worker:
        serve(args.worker, args.reference, device, only)
        return 0
    workers = [Worker("ours", args)] + ([Worker("reference", args)] if args.reference else [])
    ours, ref = workers[0], (workers[1] if len(workers) > 1 else None)
    results: dict[str, dict[str, list[float]]] = {n: {"ours": [], "reference": []} for n in ours.stages}
    peaks: dict[str, list[float]] = {"float32": [], "bfloat16": []}
    try:
        for i in range(args.rounds):
            for name in ours.stages:
                if name.startswith("behavior") and name.endswith("fp32"):
                    # the share of the peak is a ratio too: the peak is measured right before each behavior burst
                    for dtype, got in peaks.items():
                        got.append(ours.peak(dtype))
                # bf16 and compiled variants are paired with the reference's fp32 burst, as issue 3 compares them
                ref_name = name.split()[0] + " fp32"
                pair = [(ours, name)] + ([(ref, ref_name)] if ref and ref_name in ref.stages else [])
                for w, stage in pair if i % 2 == 0 else pair[::-1]:  # alternate who goes first
                    results[name]["ours" if w is ours else "reference"].append(w.time(stage, device))
            got = {k: round(v["ours"][-1], 1) for k, v in results.items()}
            print(f"round {i + 1}: ours {json.dumps(got)}", file=sys.stderr, flush=True)
    finally:
        for w in workers:
            w.close()
    peak32 = statistics.median(peaks["float32"]) if peaks["float32"] else matmul_peak(torch.float32, device)
    peak16 = statistics.median(peaks["bfloat16"]) if peaks["bfloat16"] else matmul_peak(torch.bfloat16, device)
    rows = {}
    for name, r in results.items():
        ours_m = statistics.median(r["ours"])
        ref_m = statistics.median(r["reference"]) if r["reference"] else None
        row = {"ours_steps_per_s": ours_m, "reference_steps_per_s": ref_m, "rounds": r}
        if ref_m:
            # each round times ours and the reference back to back: the ratio within a round is what this
            # machine's minute-to-minute swings spare, and its median over rounds is the figure to quote
            ratios = sorted(o / f for o, f in zip(r["ours"], r["reference"], strict=True))
            row["speedup"] = statistics.median(ratios)
            row["speedup_per_round"] = [ratios[0], ratios[-1]]
            if not name.endswith("fp32"):
                row["reference_steps_per_s"] = None  # the reference fp32 burst it was paired with
                row["speedup_vs_reference_fp32"] = row.pop("speedup")
        if name.startswith("behavior"):
            row["gflop_per_s"] = ours_m * BEHAVIOR_GFLOP
            row["fraction_of_fp32_peak"] = (
                statistics.median(x * BEHAVIOR_GFLOP / p for x, p in zip(r["ours"], peaks["float32"], strict=True))
                if peaks["float32"]
                else row["gflop_per_s"] / peak32
            )
        rows[name] = row
    out = {
        "device": str(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "rounds": args.rounds,
        "matmul_peak_gflops": {"fp32": peak32, "bf16": peak16},
        "stages": rows,
    }
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    print(f"device {device}, {out['threads']} threads, torch {torch.__version__}, {args.rounds} rounds")
    print(f"matmul peak (1024^3, median of the rounds): fp32 {peak32:.0f} GFLOP/s, bf16 {peak16:.0f} GFLOP/s")
    print("speedup: the median over rounds of ours / reference, each round's two bursts back to back")
    print(f"{'stage':<22}{'ours steps/s':>13}{'reference':>11}{'speedup':>9}  notes")
    for name, row in rows.items():
        ref_s = f"{row['reference_steps_per_s']:.1f}" if row["reference_steps_per_s"] else "-"
        sp = f"{row['speedup']:.2f}x" if "speedup" in row else "-"
        notes = []
        if "speedup_vs_reference_fp32" in row:
            notes.append(f"{row['speedup_vs_reference_fp32']:.2f}x reference fp32")
        if "speedup_per_round" in row:
            lo, hi = row["speedup_per_round"]
            notes.append(f"rounds {lo:.2f}-{hi:.2f}x")
        if "gflop_per_s" in row:
            notes.append(
                f"{row['gflop_per_s']:.0f} GFLOP/s; {100 * row['fraction_of_fp32_peak']:.0f}% of the round's fp32 peak"
            )
        print(f"{name:<22}{row['ours_steps_per_s']:>13.1f}{ref_s:>11}{sp:>9}  {'; '.join(notes)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
