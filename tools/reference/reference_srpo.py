"""Train the authors' own behavior model, or run the authors' own SRPO extraction, on a local dataset, and
save the result as a srpo checkpoint, to compare side by side.

    # the authors' behavior model (SRPO_Behavior.update_behavior) at a preset's behavior budget:
    python tools/reference/reference_srpo.py behavior --reference /path/to/thu-ml/SRPO --dataset D --run OUT \
        [--preset P] [--seed 0] [--threads 1]
    # the authors' extraction (SRPO.update_SRPO_policy) from the behavior.safetensors and critic.safetensors
    # in OUT (ours, or converted by this script or tools/reference/reference_critic.py), at a preset's extraction:
    python tools/reference/reference_srpo.py extract --reference /path/to/thu-ml/SRPO --dataset D --run OUT \
        [--preset P] [--seed 0] [--threads 1] [--set extract.beta=0.01]
    srpo eval --dataset D --run OUT --policy srpo|diffusion --episodes 10

With tools/reference/reference_critic.py this covers the authors' whole pipeline: together they tell whether a
score at a budget is our implementation's or the algorithm's. The reference's code (github.com/thu-ml/SRPO,
loaded from --reference, patched only for the device, as tools/perf/bench_speed.py does) runs unchanged; this
script only feeds it batches drawn as the reference draws them (shuffle once per epoch, no replacement), with
the budget and the choices of the resolved srpo config, and refuses a config the reference cannot express.
The extraction's cosine schedule decays over the run's steps (the reference's T_max is n_policy_epochs x
10,000 steps, so n_policy_epochs = steps / 10,000). The noise baseline is the reference's WT "noise" option.

The result is copied into a srpo checkpoint (behavior: ScoreNet_IDQL -> our ScoreNet, without its unused
residual Linear; actor: Dirac_Policy -> our TanhActor), after checking that the copy computes what the
reference computes. The files are for evaluation and probes, not for --resume. Losses go to stderr every
--log-every steps and to OUT/reference_behavior.csv or OUT/reference_extract.csv.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "perf"))  # bench_speed.py
sys.path.insert(0, str(Path(__file__).resolve().parent))  # reference_critic.py
from bench_speed import load_reference, reference_schedule  # noqa: E402
from reference_critic import Log, add_common_arguments, prepare_run  # noqa: E402

from srpo_cli import artifacts  # noqa: E402
from srpo_cli.act.policies import load_critic  # noqa: E402
from srpo_cli.algos.behavior import BehaviorStage  # noqa: E402
from srpo_cli.algos.extract import ExtractStage  # noqa: E402
from srpo_cli.algos.loading import load_behavior
from srpo_cli.data.transitions import BatchSampler, load_transitions  # noqa: E402


def linears(seq: torch.nn.Module) -> list[torch.nn.Linear]:
    return [m for m in seq.modules() if isinstance(m, torch.nn.Linear)]


def behavior_pairs(ours: torch.nn.Module, theirs: torch.nn.Module) -> list[tuple[torch.nn.Module, torch.nn.Module]]:
    """(our module, the reference's) for every weight of ScoreNet; the reference's block.residual is unused."""
    pairs = [(ours.time_mlp[0], theirs.cond_model[0]), (ours.time_mlp[2], theirs.cond_model[2]),
             (ours.inp, theirs.main.fc), (ours.head[1], theirs.main.out_fc)]  # fmt: skip
    for b, tb in zip(ours.blocks, theirs.main.blocks, strict=True):
        pairs += [(b.norm, tb.layer_norm), (b.fc1, tb.fc1), (b.fc2, tb.fc2)]
    return pairs


def copy_behavior(dst: torch.nn.Module, src: torch.nn.Module, to_reference: bool) -> None:
    with torch.no_grad():
        ours, theirs = (src, dst) if to_reference else (dst, src)
        for o, t in behavior_pairs(ours, theirs):
            a, b = (t, o) if to_reference else (o, t)
            a.weight.copy_(b.weight)
            a.bias.copy_(b.bias)
        if to_reference:
            theirs.embed[0].W.copy_(ours.fourier.W)
        else:
            ours.fourier.W.copy_(theirs.embed[0].W)


def behavior_error(ours: torch.nn.Module, theirs: torch.nn.Module, s: torch.Tensor, action_dim: int) -> float:
    """Largest difference of the two nets' eps at random (a_t, t) for the states s, dropout off."""
    ours.eval(), theirs.eval()
    g = torch.Generator().manual_seed(0)
    a = torch.randn(s.shape[0], action_dim, generator=g)
    t = torch.rand(s.shape[0], generator=g) * 0.999 + 0.001
    with torch.no_grad():
        return (ours(a, s, t) - theirs(a, t, s)).abs().max().item()


def copy_critic_to_reference(q_target, v, iql, action_dim: int) -> None:
    """Our EnsembleQ (on [s, a]) and ValueNet -> the reference's TwinQ (q1, q2 on [a, s]) and ValueFunction."""
    with torch.no_grad():
        for theirs in (iql.q0, iql.q0_target):  # the extraction reads only q0_target; q0 gets the same
            for k, net in enumerate((theirs.q1, theirs.q2)):
                for i, (src, dst) in enumerate(zip(q_target.layers, linears(net), strict=True)):
                    w = src.weight[k]  # [in, out]
                    if i == 0:
                        w = torch.cat([w[-action_dim:], w[:-action_dim]])  # [s, a] rows -> [a, s]
                    dst.weight.copy_(w.T)
                    dst.bias.copy_(src.bias[k, 0])
        for src, dst in zip(linears(v.net), linears(iql.vf.v), strict=True):
            dst.weight.copy_(src.weight)
            dst.bias.copy_(src.bias)


def reference_args(cfg, env_name: str, device: torch.device) -> SimpleNamespace:
    e = cfg.extract
    wt = {"sigma2": "VDS", "one": "stable", "alpha_over_sigma": "score"}[e.weighting]
    return SimpleNamespace(device=device.type, actor_blocks=cfg.behavior.n_blocks, policy_layer=e.n_layers,
                           q_layer=cfg.critic.n_layers, n_policy_epochs=e.steps / 10_000,
                           WT=wt + (" noise" if e.noise_baseline else ""), beta=e.beta,
                           regq=int(e.normalize_q_grad), env=env_name)  # fmt: skip


def check_behavior_config(cfg) -> str | None:
    b = cfg.behavior
    want = dict(hidden_dim=256, block_expansion=4, dropout=0.1, fourier_dim=32, fourier_scale=30.0, time_dim=128,
                beta_0=0.1, beta_1=20.0, lr=3e-4, weight_decay=0.01)  # fmt: skip
    diff = {k: (getattr(b, k), v) for k, v in want.items() if getattr(b, k) != v}
    return f"the reference's behavior model is fixed at {want}; the config differs in {diff}" if diff else None


def check_extract_config(cfg) -> str | None:
    e = cfg.extract
    want = dict(hidden_dim=256, lr=3e-4, lr_schedule="cosine", t_min=0.02, t_max=0.98, q_reduce="mean")
    diff = {k: (getattr(e, k), v) for k, v in want.items() if getattr(e, k) != v}
    return f"the reference's extraction is fixed at {want}; the config differs in {diff}" if diff else None


def train_reference_behavior(args, cfg, data, ref, device) -> int:
    out = args.run / artifacts.BEHAVIOR
    b = cfg.behavior
    schedule = reference_schedule(b.beta_0, b.beta_1)
    ns = reference_args(cfg, "locomotion", device)
    model = ref.SRPO_Behavior(data.obs_dim + data.action_dim, data.action_dim, schedule, args=ns).to(device)
    gen = torch.Generator().manual_seed(args.seed)
    sampler = BatchSampler(data.size, b.batch_size, gen, "epoch")
    log = Log(args.run / "reference_behavior.csv", ["loss"])
    window: list[torch.Tensor] = []
    for step in range(1, b.steps + 1):
        idx = sampler.next()
        model.update_behavior({"s": data.observations[idx], "a": data.actions[idx]})
        window.append(model.loss.detach())
        if step % args.log_every == 0 or step == b.steps:
            log.write(step, [torch.stack(window).mean().item()])
            window.clear()
    cfg.behavior.bf16 = False  # what the reference trained with; recorded in the checkpoint's config
    stage = BehaviorStage(cfg, data, device)
    copy_behavior(stage.net, model.diffusion_behavior, to_reference=False)
    err = behavior_error(stage.net, model.diffusion_behavior, data.observations[:1024], data.action_dim)
    return save_checked(stage, out, b.steps, "behavior model", err, 1e-4)


def run_reference_extraction(args, cfg, data, ref, device) -> int:
    out = args.run / artifacts.ACTOR
    e = cfg.extract
    ours_b, _, b_ckpt = load_behavior(args.run / artifacts.BEHAVIOR, device)
    bc = b_ckpt.config["behavior"]
    _, q_target, v, _ = load_critic(args.run / artifacts.CRITIC, device)
    if q_target.obs_norm is not None:
        print("The reference's critic reads raw states; this critic normalizes them.", file=sys.stderr)
        return 2
    ns = reference_args(cfg, "locomotion", device)
    ns.actor_blocks = bc["n_blocks"]
    schedule = reference_schedule(bc["beta_0"], bc["beta_1"])
    torch.manual_seed(args.seed)
    model = ref.SRPO(data.obs_dim + data.action_dim, data.action_dim, schedule, args=ns).to(device)
    copy_behavior(model.diffusion_behavior, ours_b, to_reference=True)
    err = behavior_error(ours_b, model.diffusion_behavior, data.observations[:1024], data.action_dim)
    copy_critic_to_reference(q_target, v, model.q[0], data.action_dim)
    with torch.no_grad():
        s, a = data.observations[:1024], data.actions[:1024]
        their_q = torch.cat(model.q[0].q0_target.both(a, s), 1).T
        err = max(err, (their_q - q_target(s, a)).abs().max().item())
    if err > 1e-4:
        print(f"The behavior model or critic copied into the reference differs by {err:.3g}.", file=sys.stderr)
        return 1
    gen = torch.Generator().manual_seed(args.seed)
    sampler = BatchSampler(data.size, e.batch_size, gen, "epoch")
    log = Log(args.run / "reference_extract.csv", ["q_mean"])
    for step in range(1, e.steps + 1):
        model.update_SRPO_policy({"s": data.observations[sampler.next()]})
        if step % args.log_every == 0 or step == e.steps:
            log.write(step, [model.SRPO_policy.q.item()])
    stage = ExtractStage(cfg, data, device, args.run)
    with torch.no_grad():
        for dst, src in zip(linears(stage.actor.net), linears(model.SRPO_policy.net), strict=True):
            dst.weight.copy_(src.weight)
            dst.bias.copy_(src.bias)
        s = data.observations[:1024]
        err = (stage.actor(s) - model.SRPO_policy(s)).abs().max().item()
    return save_checked(stage, out, e.steps, "actor", err, 1e-5)


def save_checked(stage, out: Path, step: int, what: str, err: float, tol: float) -> int:
    """Save the copy only if it computes what the reference computes: a probe of anything else is void."""
    if err > tol:
        print(f"The copied {what} differs from the reference's by {err:.3g}; not saved.", file=sys.stderr)
        return 1
    stage.save(out, step)
    print(out)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=("behavior", "extract"))
    add_common_arguments(ap, run_help="run folder: extract reads its behavior and critic")
    args = ap.parse_args(argv)
    setup = prepare_run(args, args.run / (artifacts.BEHAVIOR if args.what == "behavior" else artifacts.ACTOR))
    if setup is None:
        return 2
    cfg, device = setup
    problem = check_behavior_config(cfg) if args.what == "behavior" else check_extract_config(cfg)
    if problem:
        print(f"Cannot run the reference: {problem}.", file=sys.stderr)
        return 2
    data = load_transitions(args.dataset, device)
    torch.manual_seed(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        ref = load_reference(args.reference, device, Path(tmp))
        if args.what == "behavior":
            return train_reference_behavior(args, cfg, data, ref, device)
        return run_reference_extraction(args, cfg, data, ref, device)


if __name__ == "__main__":
    raise SystemExit(main())
