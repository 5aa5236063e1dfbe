"""Train the authors' own IQL critic on a local dataset and save it as a srpo critic, to compare side by side.

    python tools/reference/reference_critic.py --reference /path/to/thu-ml/SRPO --dataset bench/halfcheetah/medium-v0 \
        --run OUT_DIR [--steps 150000] [--seed 0] [--threads 1]

Settles whether a critic's behaviour at a budget is our implementation's or the algorithm's: the reference's
`IQL_Critic.update_q0` (github.com/thu-ml/SRPO, loaded from --reference, patched only for the device, as
tools/perf/bench_speed.py does) trains on exactly the transitions and scaled rewards our critic stage sees,
batches drawn as the reference draws them (shuffle once per epoch, no replacement). Its side AWR policy is not
trained: it never touches the critic. At the end its online twin Q, target twin Q and V are copied into a
srpo `critic.safetensors` in OUT_DIR (the reference feeds [a, s] to Q, we feed [s, a]: the first layer's input
rows are reordered), so every probe reads it like our own: `tools/diagnostics/critic_rollouts.py`, `tools/diagnostics/diagnose_run.py`,
`srpo extract --run` (copy or link the behavior checkpoint next to it). The file is not resumable.
Prints the Q and V losses every --log-every steps (stderr) and writes them to OUT_DIR/reference_critic.csv.
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "perf"))  # bench_speed.py
from bench_speed import load_reference  # noqa: E402

from srpo_cli import (
    artifacts,  # noqa: E402
    config,  # noqa: E402
)
from srpo_cli.algos.critic import CriticStage  # noqa: E402
from srpo_cli.data.transitions import BatchSampler, load_transitions  # noqa: E402
from srpo_cli.train.device import set_threads  # noqa: E402


def copy_reference_weights(stage: CriticStage, iql, action_dim: int) -> None:
    """Reference TwinQ (q1, q2 on [a, s]) and ValueFunction -> our EnsembleQ (on [s, a]) and ValueNet."""

    def linears(seq: torch.nn.Module) -> list[torch.nn.Linear]:
        return [m for m in seq if isinstance(m, torch.nn.Linear)]

    with torch.no_grad():
        for ours, theirs in ((stage.q, iql.q0), (stage.q_target, iql.q0_target)):
            for k, net in enumerate((theirs.q1, theirs.q2)):
                for i, (dst, src) in enumerate(zip(ours.layers, linears(net), strict=True)):
                    w = src.weight.T  # [in, out]
                    if i == 0:
                        w = torch.cat([w[action_dim:], w[:action_dim]])  # [a, s] rows -> [s, a]
                    dst.weight[k].copy_(w)
                    dst.bias[k, 0].copy_(src.bias)
        for dst, src in zip(linears(stage.v.net), linears(iql.vf.v), strict=True):
            dst.weight.copy_(src.weight)
            dst.bias.copy_(src.bias)


class Log:
    """A reference tool's progress: one CSV row (step, values, steps/s since the last row) and one stderr line."""

    def __init__(self, path: Path, columns: list[str]):
        self.file = open(path, "w", newline="")
        self.writer = csv.writer(self.file)
        self.writer.writerow(["step", *columns, "steps_per_s"])
        self.columns = columns
        self.t0, self.last = time.perf_counter(), 0

    def write(self, step: int, values: list[float]) -> None:
        now = time.perf_counter()
        rate = (step - self.last) / (now - self.t0)
        self.t0, self.last = now, step
        self.writer.writerow([step, *values, round(rate, 1)])
        self.file.flush()
        text = " ".join(f"{c} {v:.4f}" for c, v in zip(self.columns, values, strict=True))
        print(f"step {step}: {text} ({rate:.1f} steps/s)", file=sys.stderr)


def add_common_arguments(ap: argparse.ArgumentParser, run_help: str) -> None:
    """The options every reference tool in tools/reference/ takes."""
    ap.add_argument("--reference", type=Path, required=True, help="checkout (or bare git dir) of thu-ml/SRPO")
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--run", type=Path, required=True, help=run_help)
    ap.add_argument("--preset", help="preset whose budget and choices apply; default: the dataset's")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override, as srpo's --set")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--log-every", type=int, default=5000)


def prepare_run(args: argparse.Namespace, out: Path) -> tuple[config.RunConfig, torch.device] | None:
    """The resolved config and device, or None (after saying why) where ``out`` exists: never overwrite."""
    if out.exists():
        print(f"{out} exists; choose another --run folder.", file=sys.stderr)
        return None
    args.run.mkdir(parents=True, exist_ok=True)
    set_threads(args.threads)
    preset = args.preset or config.preset_for_dataset(args.dataset)
    cfg = config.resolve(
        flags={**config.parse_set(args.set), "dataset": args.dataset, "seed": args.seed}, preset=preset
    )
    return cfg, torch.device("cpu")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(ap, run_help="output folder (must not hold a critic already)")
    ap.add_argument("--steps", type=int, default=150_000)
    args = ap.parse_args(argv)
    out = args.run / artifacts.CRITIC
    setup = prepare_run(args, out)
    if setup is None:
        return 2
    cfg, device = setup
    c = cfg.critic
    if c.normalize_observations or c.n_layers != 2 or c.hidden_dim != 256 or c.batch_size != 256:
        print("The reference critic has fixed 2x256 networks, raw states and batch 256.", file=sys.stderr)
        return 2

    data = load_transitions(args.dataset, device)
    torch.manual_seed(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        ref = load_reference(args.reference, device, Path(tmp))
        env = "antmaze" if c.reward_mode == "antmaze" else "locomotion"
        ns = SimpleNamespace(device=device.type, q_layer=2, env=env)
        iql = ref.IQL_Critic(adim=data.action_dim, sdim=data.obs_dim, args=ns)
    theirs = (iql.tau, iql.discount, iql.q_optimizer.param_groups[0]["lr"], iql.v_optimizer.param_groups[0]["lr"])
    if any(abs(x - y) > 1e-12 for x, y in zip(theirs, (c.expectile, c.discount, c.q_lr, c.v_lr), strict=True)):
        print(f"The reference trains with expectile, discount, Q and V learning rates {theirs}; the config "
              f"asks for {(c.expectile, c.discount, c.q_lr, c.v_lr)}.", file=sys.stderr)  # fmt: skip
        return 2

    stage = CriticStage(cfg, data, device)  # our networks (to save into) and our reward scaling
    rewards = stage.rewards.reshape(-1, 1)
    terminals = data.terminals.reshape(-1, 1)
    gen = torch.Generator().manual_seed(args.seed)
    sampler = BatchSampler(data.size, c.batch_size, gen, "epoch")
    log = Log(args.run / "reference_critic.csv", ["q_loss", "v_loss", "q_mean"])
    for step in range(1, args.steps + 1):
        idx = sampler.next()
        batch = {"s": data.observations[idx], "a": data.actions[idx], "r": rewards[idx],
                 "s_": data.next_observations[idx], "d": terminals[idx]}  # fmt: skip
        iql.update_q0(batch)
        if step % args.log_every == 0 or step == args.steps:
            log.write(step, [iql.q_loss.item(), iql.v_loss.item(), iql.q.item()])
    copy_reference_weights(stage, iql, data.action_dim)
    with torch.no_grad():  # the copy must compute what the reference computes, or every probe of it is void
        s, a = data.observations[:1024], data.actions[:1024]
        ref_q = torch.stack([torch.cat(iql.q0_target.both(a, s), 1).T, torch.cat(iql.q0.both(a, s), 1).T])
        our_q = torch.stack([stage.q_target(s, a), stage.q(s, a)])
        err = max((ref_q - our_q).abs().max().item(), (iql.vf(s).squeeze(1) - stage.v(s)).abs().max().item())
    if err > 1e-3:
        print(f"The copied critic differs from the reference's by {err:.3g}; not saved.", file=sys.stderr)
        return 1
    stage.save(out, args.steps)
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
