"""Resume, Ctrl-C, the non-finite guard and overwrite protection, on every stage."""

import os
import shutil
import signal
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_cfg

from srpo_cli.algos.baselines import train_baseline
from srpo_cli.algos.behavior import train_behavior
from srpo_cli.algos.critic import CriticStage, train_critic
from srpo_cli.algos.extract import train_actor
from srpo_cli.data.transitions import load_transitions
from srpo_cli.errors import Interrupted, RuntimeFailure, UsageError
from srpo_cli.train.checkpoint import load_checkpoint
from srpo_cli.train.loop import check_can_write, fit, state_path
from srpo_cli.train.optim import optimizer_step


@pytest.fixture(scope="module")
def data(default_dataset):
    return load_transitions(default_dataset)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data, default_dataset, device):
    """A run directory with all three stages (and both baselines) trained for a few steps."""
    run = tmp_path_factory.mktemp("run")
    cfg = tiny_cfg(default_dataset)
    dev = torch.device(device)
    out = {
        "behavior": train_behavior(cfg, data, run, dev, quiet=True),
        "critic": train_critic(cfg, data, run, dev, quiet=True),
        "extract": train_actor(cfg, data, run, dev, quiet=True),
        "awr": train_baseline("awr", cfg, data, run, dev, quiet=True),
        "bc": train_baseline("bc", cfg, data, run, dev, quiet=True),
    }
    return run, cfg, out


def _tensors(path):
    return load_checkpoint(path).tensors


STAGES = [
    ("behavior", "behavior.safetensors", lambda c, d, r, dev, **k: train_behavior(c, d, r, dev, **k)),
    ("critic", "critic.safetensors", lambda c, d, r, dev, **k: train_critic(c, d, r, dev, **k)),
    ("extract", "actor.safetensors", lambda c, d, r, dev, **k: train_actor(c, d, r, dev, **k)),
    ("awr", "awr.safetensors", lambda c, d, r, dev, **k: train_baseline("awr", c, d, r, dev, **k)),
]


@pytest.mark.parametrize("name,file_name,fn", STAGES, ids=[s[0] for s in STAGES])
def test_stopped_and_resumed_equals_uninterrupted(tmp_path, trained, data, name, file_name, fn, device):
    run, cfg, _ = trained
    dev = torch.device(device)
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        for dep in ("behavior.safetensors", "critic.safetensors"):
            if dep != file_name:
                shutil.copy(run / dep, tmp_path / sub / dep)
    fn(cfg, data, tmp_path / "a", dev, quiet=True)
    half = fn(cfg, data, tmp_path / "b", dev, quiet=True, stop_at=13)
    assert half["step"] == 13 and load_checkpoint(tmp_path / "b" / file_name).meta["step"] == 13
    full = fn(cfg, data, tmp_path / "b", dev, quiet=True, resume=True)
    assert full["start_step"] == 13
    a, b = _tensors(tmp_path / "a" / file_name), _tensors(tmp_path / "b" / file_name)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # the metrics CSV of the resumed run has no duplicated steps
    rows = (tmp_path / "b" / "metrics" / f"{'extract' if name == 'extract' else name}.csv").read_text().splitlines()
    steps = [r.split(",")[0] for r in rows[1:]]
    assert len(steps) == len(set(steps))


def test_behavior_cosine_schedule_decays_to_zero_and_resumes_exactly(tmp_path, data, default_dataset, device):
    """behavior.lr_schedule=cosine: the learning rate ends at 0, the weights differ from the constant
    schedule's, and a run stopped and resumed (the scheduler's state in the state file) ends where one that
    never stopped does."""
    from srpo_cli.algos.behavior import BehaviorStage

    cfg = tiny_cfg(default_dataset, **{"behavior.lr_schedule": "cosine"})
    dev = torch.device(device)
    stage = BehaviorStage(cfg, data, dev)
    for _ in range(cfg.behavior.steps):
        stage.step()
    assert stage.optimizers["net"].param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    for sub in ("a", "b", "c"):
        (tmp_path / sub).mkdir()
    train_behavior(cfg, data, tmp_path / "a", dev, quiet=True)
    train_behavior(cfg, data, tmp_path / "b", dev, quiet=True, stop_at=13)
    train_behavior(cfg, data, tmp_path / "b", dev, quiet=True, resume=True)
    train_behavior(tiny_cfg(default_dataset), data, tmp_path / "c", dev, quiet=True)
    a, b, c = (_tensors(tmp_path / sub / "behavior.safetensors") for sub in ("a", "b", "c"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_kept_actors_resume_and_a_forced_run_replaces_them(tmp_path, trained, data, device):
    """extract.keep_every keeps the actor at every N steps and at the end (the last is actor.safetensors); a
    run stopped and resumed keeps the same files with the same weights; a run started over with --force
    leaves none of the old run's beside its own."""
    from srpo_cli.train.loop import kept_files

    run, cfg, _ = trained
    cfg = tiny_cfg(cfg.dataset, **{"extract.keep_every": 10})
    dev = torch.device(device)
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        for dep in ("behavior.safetensors", "critic.safetensors"):
            shutil.copy(run / dep, tmp_path / sub / dep)
    train_actor(cfg, data, tmp_path / "a", dev, quiet=True)
    kept_a = kept_files(tmp_path / "a" / "actor.safetensors")
    assert [s for s, _ in kept_a] == [10, 20, 30]
    assert _tensors(kept_a[-1][1]).keys() == _tensors(tmp_path / "a" / "actor.safetensors").keys()
    assert all(
        torch.equal(v, _tensors(tmp_path / "a" / "actor.safetensors")[k]) for k, v in _tensors(kept_a[-1][1]).items()
    )
    cfg_b = tiny_cfg(cfg.dataset, **{"extract.keep_every": 10, "extract.ckpt_every": 10})
    train_actor(cfg_b, data, tmp_path / "b", dev, quiet=True, stop_at=15)  # checkpoint at 10, stopped at 15
    assert [s for s, _ in kept_files(tmp_path / "b" / "actor.safetensors")] == [10]
    train_actor(cfg_b, data, tmp_path / "b", dev, quiet=True, resume=True)
    kept_b = kept_files(tmp_path / "b" / "actor.safetensors")
    assert [s for s, _ in kept_b] == [10, 20, 30]
    for (_, pa), (_, pb) in zip(kept_a, kept_b, strict=True):
        ta, tb = _tensors(pa), _tensors(pb)
        assert all(torch.equal(ta[k], tb[k]) for k in ta)
    # started over (what --force does after the CLI's check): only the new run's kept actors remain
    train_actor(tiny_cfg(cfg.dataset, **{"extract.keep_every": 15}), data, tmp_path / "b", dev, quiet=True)
    assert [s for s, _ in kept_files(tmp_path / "b" / "actor.safetensors")] == [15, 30]


def test_checkpoints_from_the_training_device_load_and_resume_on_the_cpu(tmp_path, trained, data, device):
    """A run trained on --device (cuda with `pytest --device cuda`) must load and resume on a CPU-only
    machine: tensors, optimizer states and RNG states all come back to the CPU."""
    from srpo_cli.act.policies import load_actor_policy
    from srpo_cli.algos.loading import load_behavior, load_critic

    run, cfg, _ = trained
    cpu = torch.device("cpu")
    net, _, _ = load_behavior(run / "behavior.safetensors", cpu)
    q, q_t, v, _ = load_critic(run / "critic.safetensors", cpu)
    for m in (net, q, q_t, v):
        assert {p.device.type for p in m.parameters()} == {"cpu"}
    s, a = data.observations[:5].cpu(), data.actions[:5].cpu()
    assert torch.isfinite(q(s, a)).all() and torch.isfinite(v(s)).all()
    assert torch.isfinite(net(a, s, torch.full((5,), 0.5))).all()
    for name in ("actor", "awr", "bc"):
        act = load_actor_policy(run / f"{name}.safetensors")(s[0].numpy())
        assert act.shape == (a.shape[1],) and (abs(act) <= 2.0 + 1e-6).all()  # pendulum's torque bound
    # a stage stopped on the training device resumes on the CPU and finishes
    for dep in ("behavior.safetensors", "critic.safetensors"):
        shutil.copy(run / dep, tmp_path / dep)
    train_actor(cfg, data, tmp_path, torch.device(device), quiet=True, stop_at=13)
    out = train_actor(cfg, data, tmp_path, cpu, quiet=True, resume=True)
    assert out["start_step"] == 13 and load_checkpoint(tmp_path / "actor.safetensors").meta["step"] == cfg.extract.steps


@pytest.mark.parametrize("recorded", [True, False], ids=["device-recorded", "older-state"])
def test_a_state_from_another_device_resumes_on_a_fresh_deterministic_stream(tmp_path, trained, data, recorded, capsys):
    """A GPU generator's state (16 bytes) cannot be set into a CPU generator (2026-11-28, H200: the resume
    on the CPU failed with torch's RuntimeError). Written here by hand, as this machine may have no GPU;
    states saved before the device was recorded are told apart by their size."""
    run, cfg, _ = trained
    for dep in ("behavior.safetensors", "critic.safetensors"):
        shutil.copy(run / dep, tmp_path / dep)
    cpu = torch.device("cpu")
    train_actor(cfg, data, tmp_path, cpu, quiet=True, stop_at=13)
    sp = state_path(tmp_path / "actor.safetensors")
    state = torch.load(sp, weights_only=True)
    assert state["generator_device"] == "cpu"
    state["generator"] = torch.zeros(16, dtype=torch.uint8)  # the size of a CUDA generator's state
    state["generator_device"] = "cuda"
    if not recorded:
        del state["generator_device"]
    torch.save(state, sp)
    saved = {p: p.read_bytes() for p in tmp_path.glob("actor*")}
    finals = []
    for _ in range(2):
        for p, b in saved.items():
            p.write_bytes(b)
        out = train_actor(cfg, data, tmp_path, cpu, quiet=True, resume=True)
        assert out["start_step"] == 13
        # copies: the loaded tensors map the file, which the next round overwrites in place
        finals.append({k: v.clone() for k, v in _tensors(tmp_path / "actor.safetensors").items()})
    assert "resumes on cpu" in " ".join(capsys.readouterr().err.split())
    assert all(torch.equal(finals[0][k], finals[1][k]) for k in finals[0])


def test_same_seed_same_result(tmp_path, data, default_dataset):
    cfg = tiny_cfg(default_dataset)
    for sub in ("a", "b"):
        train_critic(cfg, data, tmp_path / sub, torch.device("cpu"), quiet=True)
    a, b = _tensors(tmp_path / "a" / "critic.safetensors"), _tensors(tmp_path / "b" / "critic.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    cfg.seed = 1
    train_critic(cfg, data, tmp_path / "c", torch.device("cpu"), quiet=True)
    c = _tensors(tmp_path / "c" / "critic.safetensors")
    assert not torch.equal(a["q.layers.0.weight"], c["q.layers.0.weight"])


def test_checkpoint_metadata_and_lineage(trained):
    run, cfg, out = trained
    actor = load_checkpoint(run / "actor.safetensors", "actor")
    assert actor.meta["dataset_id"] == cfg.dataset and actor.meta["step"] == cfg.extract.steps
    assert actor.config["extract"]["beta"] == cfg.extract.beta  # the resolved config travels with it
    assert set(actor.meta["parents"]) == {"behavior.safetensors", "critic.safetensors"}
    assert actor.meta["parents"]["critic.safetensors"] == out["critic"]["sha256"]
    assert actor.meta["extra"]["ref_min_score"] is not None
    critic = load_checkpoint(run / "critic.safetensors", "critic")
    assert {k.split(".")[0] for k in critic.tensors} == {"q", "q_target", "v", "action"}
    for stage in ("behavior", "critic", "extract"):
        assert (run / "metrics" / f"{stage}.csv").exists()


def _wrap_step(stage, hook):
    """Route stage.step through hook(step_number, real_step)."""
    real_step, calls = stage.step, {"n": 0}

    def step():
        calls["n"] += 1
        return hook(calls["n"], real_step)

    stage.step = step


def test_ctrl_c_writes_a_checkpoint_and_resumes(tmp_path, data, default_dataset):
    cfg = tiny_cfg(default_dataset)
    stage = CriticStage(cfg, data, torch.device("cpu"))

    def interrupt_at_8(n, real_step):
        if n == 8:
            raise KeyboardInterrupt
        return real_step()

    _wrap_step(stage, interrupt_at_8)
    path = tmp_path / "critic.safetensors"
    with pytest.raises(Interrupted) as exc:
        fit(stage, cfg.critic.steps, path, quiet=True)
    assert exc.value.exit_code == 130
    assert load_checkpoint(path).meta["step"] == 7
    out = train_critic(cfg, data, tmp_path, torch.device("cpu"), quiet=True, resume=True)
    assert out["start_step"] == 7 and out["step"] == cfg.critic.steps


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, data, default_dataset):
    cfg = tiny_cfg(default_dataset)
    stage = CriticStage(cfg, data, torch.device("cpu"))

    def nan_from_25(n, real_step):
        out = real_step()
        if n >= 25:
            out["q_loss"] = torch.tensor(float("nan"))
        return out

    _wrap_step(stage, nan_from_25)
    path = tmp_path / "critic.safetensors"
    with pytest.raises(RuntimeFailure, match="non-finite q_loss"):
        fit(stage, cfg.critic.steps, path, quiet=True, log_every=10, ckpt_every=20)
    assert load_checkpoint(path).meta["step"] == 20


def test_refuses_to_overwrite_without_resume_or_force(tmp_path):
    path = tmp_path / "actor.safetensors"
    check_can_write(path, resume=False, force=False)
    path.write_bytes(b"x")
    with pytest.raises(UsageError, match="already exists"):
        check_can_write(path, resume=False, force=False)
    check_can_write(path, resume=False, force=True)
    with pytest.raises(UsageError, match="contradict"):
        check_can_write(path, resume=True, force=True)
    with pytest.raises(RuntimeFailure, match="does not exist"):
        check_can_write(tmp_path / "none.safetensors", resume=True, force=False)


def test_resume_detects_a_state_file_from_another_step(tmp_path, data, default_dataset):
    cfg = tiny_cfg(default_dataset)
    train_critic(cfg, data, tmp_path, torch.device("cpu"), quiet=True, stop_at=10)
    state = torch.load(state_path(tmp_path / "critic.safetensors"), weights_only=True)
    state["step"] = 99
    torch.save(state, state_path(tmp_path / "critic.safetensors"))
    with pytest.raises(RuntimeFailure, match="replaced or copied separately"):
        train_critic(cfg, data, tmp_path, torch.device("cpu"), quiet=True, resume=True)


def test_extract_refuses_checkpoints_from_another_dataset(tmp_path, trained, data, handmade_dataset):
    run, cfg, _ = trained
    other = load_transitions(handmade_dataset["id"])
    cfg2 = tiny_cfg(handmade_dataset["id"])
    cfg2.critic.batch_size = 2
    train_critic(cfg2, other, tmp_path, torch.device("cpu"), quiet=True)
    shutil.copy(run / "behavior.safetensors", tmp_path / "behavior.safetensors")
    with pytest.raises(RuntimeFailure, match="do not belong together: dataset_id"):
        train_actor(cfg, data, tmp_path, torch.device("cpu"), quiet=True)


def _sigterm_at_step_5(tmp_path, data, default_dataset, swallow: bool) -> int:
    """Train a critic that sends itself SIGTERM during step 5; the step the checkpoint was written at."""
    import os
    import signal

    cfg = tiny_cfg(default_dataset)
    stage = CriticStage(cfg, data, torch.device("cpu"))

    def term_at_5(n, real_step):
        if n == 5:
            try:
                os.kill(os.getpid(), signal.SIGTERM)  # Python runs the handler here, in this try
            except KeyboardInterrupt:
                if not swallow:
                    raise
        return real_step()

    _wrap_step(stage, term_at_5)
    path = tmp_path / "critic.safetensors"
    sigterm_before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted):
        fit(stage, cfg.critic.steps, path, quiet=True)
    assert signal.getsignal(signal.SIGTERM) is sigterm_before  # restored after training
    return load_checkpoint(path).meta["step"]


def test_sigterm_is_handled_like_ctrl_c(tmp_path, data, default_dataset):
    assert _sigterm_at_step_5(tmp_path, data, default_dataset, swallow=False) in (4, 5)


def test_sigterm_stops_training_even_where_its_interrupt_is_swallowed(tmp_path, data, default_dataset):
    """The handler's KeyboardInterrupt is raised in whatever Python code runs when the signal lands; code that
    swallows it (a __del__, a callback whose errors are only printed) must not leave the stage training on with
    SIGTERM ignored (one way a pipeline worker could outlive its parent, as one did once in the suite)."""
    assert _sigterm_at_step_5(tmp_path, data, default_dataset, swallow=True) in (5, 6)


@pytest.mark.parametrize("signum", ["SIGTERM", "SIGINT"])
def test_a_signal_inside_a_step_stops_after_it_and_resumes_onto_the_same_weights(
    tmp_path, data, default_dataset, signum
):
    """A signal that lands while a step runs (here: after its weight update, before fit counts it) must not
    leave a checkpoint whose weights are one step ahead of its step counter: the resumed run would train one
    step more than an uninterrupted one (it did, raising inside the step)."""
    cfg = tiny_cfg(default_dataset)
    train_critic(cfg, data, tmp_path / "a", torch.device("cpu"), quiet=True)
    stage = CriticStage(cfg, data, torch.device("cpu"))

    def signal_inside_step_7(n, real_step):
        out = real_step()
        if n == 7:
            os.kill(os.getpid(), getattr(signal, signum))  # Python runs the handler here, inside the step
        return out

    _wrap_step(stage, signal_inside_step_7)
    path = tmp_path / "b" / "critic.safetensors"
    path.parent.mkdir()
    # Python's own handler, or SIG_IGN where the suite runs as a background job (the shell ignores SIGINT there)
    sigint_before = signal.getsignal(signal.SIGINT)
    with pytest.raises(Interrupted):
        fit(stage, cfg.critic.steps, path, quiet=True)
    assert load_checkpoint(path).meta["step"] == 7
    assert signal.getsignal(signal.SIGINT) is sigint_before  # restored after training
    train_critic(cfg, data, tmp_path / "b", torch.device("cpu"), quiet=True, resume=True)
    a, b = _tensors(tmp_path / "a" / "critic.safetensors"), _tensors(path)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_second_ctrl_c_inside_a_step_stops_at_once_without_saving_it(tmp_path, data, default_dataset):
    cfg = tiny_cfg(default_dataset)
    stage = CriticStage(cfg, data, torch.device("cpu"))

    def two_ctrl_c_inside_step_7(n, real_step):
        out = real_step()
        if n == 7:
            os.kill(os.getpid(), signal.SIGINT)  # deferred to the end of the step
            os.kill(os.getpid(), signal.SIGINT)  # the user insists: raises here
            raise AssertionError("the second Ctrl-C did not stop the step")
        return out

    _wrap_step(stage, two_ctrl_c_inside_step_7)
    path = tmp_path / "critic.safetensors"
    with pytest.raises(Interrupted) as exc:
        fit(stage, cfg.critic.steps, path, quiet=True, ckpt_every=5)
    assert "middle of step 7" in exc.value.args[0]
    assert load_checkpoint(path).meta["step"] == 5  # the periodic checkpoint, not the torn step


def test_side_by_side_pretraining_equals_one_after_the_other(tmp_path, data, default_dataset):
    """The pipeline's CPU mode (behavior and critic in two processes, one thread each) must train exactly what
    the stages train one after the other with one thread."""
    from srpo_cli.pipeline import pretrain_side_by_side

    cfg = tiny_cfg(default_dataset, threads=2)  # two threads in all: one per process
    # Side by side is the CPU mode whatever cfg.device says: with "auto" on a GPU machine the workers once
    # trained on the GPU (2026-11-28, H200) and this test compared their weights with the CPU's.
    cfg.device = "cuda"
    walls = pretrain_side_by_side(cfg, tmp_path / "par", {"behavior": False, "critic": False})
    assert set(walls) == {"behavior", "critic"}
    _train_one_after_the_other(cfg, data, tmp_path / "seq", ("behavior", "critic"))
    for name in ("behavior.safetensors", "critic.safetensors"):
        a, b = _tensors(tmp_path / "par" / name), _tensors(tmp_path / "seq" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def _train_one_after_the_other(cfg, data, run_dir, names, threads=None) -> None:
    fns = {"behavior": train_behavior, "critic": train_critic, "extract": train_actor}
    before = torch.get_num_threads()
    try:
        for name in names:
            torch.set_num_threads((threads or {}).get(name, 1))
            if name in fns:
                fns[name](cfg, data, run_dir, torch.device("cpu"), quiet=True)
            else:
                train_baseline(name, cfg, data, run_dir, torch.device("cpu"), quiet=True)
    finally:
        torch.set_num_threads(before)


def test_every_stage_side_by_side_waits_for_its_parents_and_trains_the_same(tmp_path, data, default_dataset):
    """The runner's schedule (two stages at a time, each once its parents are done) must train what the
    stages train one after the other, and ask for each stage's plan only once its parents are finished."""
    from srpo_cli.pipeline import STAGE_PARENTS, train_side_by_side

    cfg = tiny_cfg(default_dataset, threads=2)
    cfg.behavior.steps = 60  # the longest, as at the presets' budgets: AWR and BC start beside it
    names = ["behavior", "critic", "extract", "awr", "bc"]
    files = {"behavior": "behavior", "critic": "critic", "extract": "actor", "awr": "awr", "bc": "bc"}
    par = tmp_path / "par"
    asked: list[tuple[str, set[str]]] = []

    def plan(name: str) -> str:
        asked.append((name, {n for n in names if (par / f"{files[n]}.safetensors").exists()}))
        return "train"

    walls = train_side_by_side(cfg, par, names, plan)
    assert set(walls) == set(names)
    assert sorted(n for n, _ in asked) == sorted(names)  # each asked once
    for name, present in asked:
        assert set(STAGE_PARENTS[name]) <= present, (name, present)
    # Bit-equal results need the same thread count per stage (not a property of the maths libraries across
    # thread counts): the schedule gives the last stage every thread, which one depends on timing, so each
    # stage is retrained with the count its checkpoint records.
    threads = {n: load_checkpoint(par / f"{files[n]}.safetensors").meta["extra"]["threads"] for n in names}
    assert sorted(threads.values())[:-1] == [1] * (len(names) - 1)  # two at a time: one thread each but the last
    _train_one_after_the_other(cfg, data, tmp_path / "seq", names, threads)
    for name in names:
        a = _tensors(par / f"{files[name]}.safetensors")
        b = _tensors(tmp_path / "seq" / f"{files[name]}.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    # With the two pretraining stages finished and skipped, the others start from them at once.
    asked.clear()
    walls = train_side_by_side(cfg, par, names, lambda n: "skip" if n in ("behavior", "critic") else "train")
    assert set(walls) == {"extract", "awr", "bc"}


def test_side_by_side_pretraining_reports_a_worker_error(tmp_path, default_dataset):
    from srpo_cli.pipeline import pretrain_side_by_side

    cfg = tiny_cfg(default_dataset, threads=2)
    cfg.critic.batch_size = 10**7  # larger than the dataset: the critic's process fails with a usage error
    with pytest.raises(UsageError, match="larger than the dataset"):
        pretrain_side_by_side(cfg, tmp_path, {"behavior": False, "critic": False})


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_side_by_side_workers_checkpoint_and_exit_when_the_pipeline_is_killed(tmp_path, default_dataset):
    """A SIGTERM to the pipeline alone (``kill PID``, not the process group) ends it; its two training
    processes must then write their checkpoints and exit, not train on and wait forever for more work."""
    import os
    import pickle
    import signal
    import subprocess
    import time

    cfg = tiny_cfg(default_dataset, threads=2)
    cfg.behavior.steps = cfg.critic.steps = 10**6  # far more than the test waits for
    (tmp_path / "cfg.pkl").write_bytes(pickle.dumps(cfg))
    run = tmp_path / "run"
    script = (
        "import pickle; from pathlib import Path; from srpo_cli.pipeline import pretrain_side_by_side; "
        f"pretrain_side_by_side(pickle.loads(Path({str(tmp_path / 'cfg.pkl')!r}).read_bytes()), Path({str(run)!r}), "
        "{'behavior': False, 'critic': False}, quiet=True)"
    )
    parent = subprocess.Popen([sys.executable, "-c", script])

    def workers() -> list[int]:
        found = []
        for d in Path("/proc").iterdir():
            try:
                stat = (d / "stat").read_text()
                cmd = (d / "cmdline").read_bytes()
            except OSError:
                continue
            if d.name.isdigit() and int(stat.rsplit(")", 1)[1].split()[1]) == parent.pid and b"spawn_main" in cmd:
                found.append(int(d.name))
        return found

    pids: list[int] = []
    try:
        deadline = time.monotonic() + 180
        while not all(_logged_rows(run / "metrics" / f"{n}.csv") > 0 for n in ("behavior", "critic")):
            assert time.monotonic() < deadline and parent.poll() is None, "the two stages never started"
            time.sleep(0.5)
        pids = workers()
        assert len(pids) == 2
        parent.send_signal(signal.SIGTERM)
        parent.wait(timeout=30)
        deadline = time.monotonic() + 120
        while any(_alive(p) for p in pids):
            assert time.monotonic() < deadline, f"a training process outlived the pipeline: {_where(pids)}"
            time.sleep(0.5)
    finally:
        if parent.poll() is None:
            parent.kill()
        for p in pids:  # after a failure; reparented by then, so no longer found as the parent's children
            if _alive(p):
                os.kill(p, signal.SIGKILL)
    for name in ("behavior.safetensors", "critic.safetensors"):
        assert load_checkpoint(run / name).meta["step"] > 0


def _where(pids: list[int]) -> str:
    """What each live process is doing, for a failure message (seen once in 30-odd runs: 2026-11-27)."""
    out = []
    for pid in pids:
        try:
            d = Path(f"/proc/{pid}")
            state = next(x for x in (d / "status").read_text().splitlines() if x.startswith("State"))
            tasks = sorted(d.glob("task/*"))
            chans = [(t / "wchan").read_text() + ":" + (t / "comm").read_text().strip() for t in tasks]
            out.append(f"pid {pid} {state}, threads {chans}")
        except OSError:
            continue
    return "; ".join(out)


def _logged_rows(path: Path) -> int:
    """Data rows of a metrics CSV: > 0 once the stage's training loop is running."""
    try:
        return max(0, len(path.read_text().splitlines()) - 1)
    except OSError:
        return 0


def _alive(pid: int) -> bool:
    """The process exists and has not exited (a zombie has: it only waits for its new parent to reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_normalized_critic_round_trip(tmp_path, data, default_dataset):
    """The dataset's state statistics travel in critic.safetensors and the loaded critic gives the trained
    one's values; the default (reference) critic has no statistics at all."""
    from srpo_cli.algos.loading import load_critic

    cfg = tiny_cfg(default_dataset, **{"critic.normalize_observations": True})
    train_critic(cfg, data, tmp_path, torch.device("cpu"), quiet=True)
    q, q_t, v, ckpt = load_critic(tmp_path / "critic.safetensors", torch.device("cpu"))
    assert ckpt.config["critic"]["normalize_observations"] is True
    torch.testing.assert_close(q.obs_norm.mean, data.observations.mean(0))
    torch.testing.assert_close(q_t.obs_norm.std, data.observations.std(0) + cfg.critic.obs_std_eps)
    torch.testing.assert_close(v.obs_norm.std, q.obs_norm.std)
    stage = CriticStage(cfg, data, torch.device("cpu"))
    stage.q.load_state_dict(ckpt.section("q"))
    s, a = data.observations[:32], data.actions[:32]
    torch.testing.assert_close(q(s, a), stage.q(s, a))
    plain = tiny_cfg(default_dataset)
    train_critic(plain, data, tmp_path / "plain", torch.device("cpu"), quiet=True)
    assert not any("obs_norm" in k for k in _tensors(tmp_path / "plain" / "critic.safetensors"))


def test_layer_norm_critic_round_trip(tmp_path, data, default_dataset):
    """critic.layer_norm travels in the checkpoint's config: the loaded Q and target Q normalize as trained (the
    same weights without the normalization give other values)."""
    from srpo_cli.algos.loading import load_critic
    from srpo_cli.nn.networks import EnsembleQ

    cfg = tiny_cfg(default_dataset, **{"critic.layer_norm": True})
    train_critic(cfg, data, tmp_path, torch.device("cpu"), quiet=True)
    q, q_t, _, ckpt = load_critic(tmp_path / "critic.safetensors", torch.device("cpu"))
    assert q.layer_norm and q_t.layer_norm
    s, a = data.observations[:32], data.actions[:32]
    c = cfg.critic
    for loaded, section in ((q, "q"), (q_t, "q_target")):
        for layer_norm in (True, False):
            rebuilt = EnsembleQ(data.obs_dim, data.action_dim, c.hidden_dim, c.n_layers, c.n_q, layer_norm=layer_norm)
            rebuilt.load_state_dict(ckpt.section(section))
            same = torch.allclose(loaded(s, a), rebuilt(s, a))
            assert same == layer_norm


def _later_stages_run_on(cfg, data, run_dir, q_t) -> None:
    """The extraction, AWR and the diffusion baseline all run on the critic in ``run_dir`` (loaded as ``q_t``)."""
    from srpo_cli.act.policies import DiffusionPolicy
    from srpo_cli.algos.loading import load_behavior

    cpu = torch.device("cpu")
    train_actor(cfg, data, run_dir, cpu, quiet=True)
    train_baseline("awr", cfg, data, run_dir, cpu, quiet=True)
    behavior, schedule, _ = load_behavior(run_dir / "behavior.safetensors", cpu)
    policy = DiffusionPolicy(
        behavior, schedule, q_t, data.action_low, data.action_high, candidates=4, steps=3, device=cpu
    )
    assert policy(data.observations[:3].numpy()).shape == (3, data.action_dim)


def test_a_larger_q_ensemble_round_trips_and_feeds_every_stage_after_it(tmp_path, data, default_dataset):
    """critic.n_q = 4: the checkpoint holds four members (and the target's four), the loaded critic gives the
    trained one's values, and the extraction, AWR and the diffusion baseline all run on it."""
    from srpo_cli.algos.loading import load_critic

    cfg = tiny_cfg(default_dataset, **{"critic.n_q": 4})
    cpu = torch.device("cpu")
    train_behavior(cfg, data, tmp_path, cpu, quiet=True)
    train_critic(cfg, data, tmp_path, cpu, quiet=True)
    q, q_t, _, ckpt = load_critic(tmp_path / "critic.safetensors", cpu)
    assert ckpt.config["critic"]["n_q"] == 4
    s, a = data.observations[:32], data.actions[:32]
    assert q(s, a).shape == q_t(s, a).shape == (4, 32)
    stage = CriticStage(cfg, data, cpu)
    stage.q_target.load_state_dict(ckpt.section("q_target"))
    torch.testing.assert_close(q_t(s, a), stage.q_target(s, a))
    # members start apart and stay apart (independent initializations, not copies)
    assert (q(s, a)[0] - q(s, a)[3]).abs().max() > 1e-4
    _later_stages_run_on(cfg, data, tmp_path, q_t)
    from srpo_cli.config import validate

    with pytest.raises(UsageError, match="critic.n_q"):
        validate(tiny_cfg(default_dataset, **{"critic.n_q": 0}))


def test_advantage_critic_loads_as_v_plus_a_and_feeds_every_stage_after_it(tmp_path, data, default_dataset):
    """critic.q_form=advantage travels in the checkpoint: the loaded Q and target Q are V(s) + A(s, a) (what AWR,
    the extraction and the diffusion baseline read), their action gradient is A's, and every stage runs on it."""
    from srpo_cli.algos.loading import load_critic
    from srpo_cli.nn.networks import AdvantageQ, EnsembleQ

    cfg = tiny_cfg(default_dataset, **{"critic.q_form": "advantage"})
    cpu = torch.device("cpu")
    train_behavior(cfg, data, tmp_path, cpu, quiet=True)
    train_critic(cfg, data, tmp_path, cpu, quiet=True)
    q, q_t, v, ckpt = load_critic(tmp_path / "critic.safetensors", cpu)
    assert isinstance(q, AdvantageQ) and isinstance(q_t, AdvantageQ)
    c = cfg.critic
    adv = EnsembleQ(data.obs_dim, data.action_dim, c.hidden_dim, c.n_layers, c.n_q)
    adv.load_state_dict(ckpt.section("q_target"))
    s, a = data.observations[:32], data.actions[:32]
    torch.testing.assert_close(q_t(s, a), adv(s, a) + v(s))
    assert ckpt.section("v_target")  # V's target travels with it (a resumed run goes on from it)
    value, inputs = q_t.forward_cached(s, a)
    torch.testing.assert_close(value, q_t(s, a))
    a_req = a.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(q_t(s, a_req).min(0).values.sum(), a_req)
    ones = torch.zeros_like(value).scatter_(0, value.argmin(0, keepdim=True), 1.0)
    torch.testing.assert_close(q_t.action_gradient(ones, inputs, data.action_dim), expected)
    _later_stages_run_on(cfg, data, tmp_path, q_t)
    # a run directory's direct-form critic is not silently reused for an advantage-form configuration
    from srpo_cli.pipeline import stage_plan

    with pytest.raises(UsageError, match="critic.q_form"):
        stage_plan(tmp_path / "critic.safetensors", c.steps, cfg=tiny_cfg(default_dataset))


def test_advantage_critic_values_stay_where_the_direct_critic_puts_them(data, default_dataset):
    """The same data and seed, 1,500 steps: the advantage form's V follows the direct form's and stays inside
    what discounted rewards allow, instead of running off as the first forms did (V as Q's baseline and V fitted
    to V + A_target: V's mean 84 -> 403 in 500 steps on bench/hopper; V_target as the baseline: -104 against the
    direct form's -26 at 1,500 steps here, then oscillating to +104)."""
    cpu = torch.device("cpu")
    means: dict[str, list[float]] = {}
    for form in ("direct", "advantage"):
        cfg = tiny_cfg(default_dataset, **{"critic.q_form": form, "critic.batch_size": 128})
        stage = CriticStage(cfg, data, cpu)
        means[form] = [float(stage.step()["v_mean"]) for _ in range(1500)]
    bound = float(stage.rewards.abs().max()) / (1 - cfg.critic.discount)
    assert max(abs(v) for v in means["advantage"]) <= bound
    direct, advantage = means["direct"][-1], means["advantage"][-1]
    assert abs(advantage - direct) < 0.5 * abs(direct) + 1.0, (direct, advantage)


def test_behavior_ema_is_a_moving_average_beside_an_unchanged_training(tmp_path, data, default_dataset):
    """behavior.ema_decay keeps ema <- d * ema + (1 - d) * net after every step, leaves the net's own training
    as it is without it, resumes to the same weights, and is what extraction and the baseline load."""
    from srpo_cli.algos.behavior import BehaviorStage
    from srpo_cli.algos.loading import load_behavior

    cpu = torch.device("cpu")
    d = 0.8
    cfg = tiny_cfg(default_dataset, **{"behavior.ema_decay": d})
    stage = BehaviorStage(cfg, data, cpu)
    expected = [p.detach().clone() for p in stage.net.parameters()]
    for _ in range(5):
        stage.step()
        expected = [d * e + (1 - d) * p.detach() for e, p in zip(expected, stage.net.parameters(), strict=True)]
    for e, p in zip(expected, stage.ema.parameters(), strict=True):
        torch.testing.assert_close(p, e, rtol=1e-6, atol=1e-7)
        # outside autograd: a recorded lerp chains every step's average into one ever-growing graph
        assert p.is_leaf and not p.requires_grad and p.grad_fn is None

    train_behavior(cfg, data, tmp_path / "ema", cpu, quiet=True)
    train_behavior(tiny_cfg(default_dataset), data, tmp_path / "plain", cpu, quiet=True)
    with_ema = _tensors(tmp_path / "ema" / "behavior.safetensors")
    plain = _tensors(tmp_path / "plain" / "behavior.safetensors")
    assert {k for k in with_ema if k.startswith("net.")} == {k for k in plain if k.startswith("net.")}
    for k in plain:
        assert torch.equal(with_ema[k], plain[k]), k
    assert any(not torch.equal(with_ema[k], with_ema["ema." + k[4:]]) for k in plain if k.startswith("net."))
    assert not any(k.startswith("ema.") for k in plain)

    net, _, _ = load_behavior(tmp_path / "ema" / "behavior.safetensors", cpu)
    for name, value in net.state_dict().items():
        assert torch.equal(value, with_ema["ema." + name]), name

    train_behavior(cfg, data, tmp_path / "half", cpu, quiet=True, stop_at=13)
    train_behavior(cfg, data, tmp_path / "half", cpu, quiet=True, resume=True)
    resumed = _tensors(tmp_path / "half" / "behavior.safetensors")
    for k in with_ema:
        assert torch.equal(resumed[k], with_ema[k]), k


def test_config_differences_name_what_a_stage_computes(trained, default_dataset):
    """Only fields that change what a stage computes count; a field the checkpoint predates is its default."""
    from srpo_cli.pipeline import config_differences

    run, cfg, _ = trained
    stored = load_checkpoint(run / "critic.safetensors").config
    same = tiny_cfg(default_dataset, **{"critic.steps": 10**6, "critic.log_every": 7, "extract.beta": 9.0})
    assert config_differences(stored, same, "critic") == []  # steps, logging, other stages: not the critic's
    other = tiny_cfg(default_dataset, **{"critic.discount": 0.9, "data.sampling": "uniform"})
    diffs = config_differences(stored, other, "critic")
    assert "critic.discount is 0.99 there, 0.9 here" in diffs and any(d.startswith("data.sampling") for d in diffs)
    old = {**stored, "critic": {k: v for k, v in stored["critic"].items() if k != "normalize_observations"}}
    assert config_differences(old, same, "critic") == []
    assert config_differences(old, tiny_cfg(default_dataset, **{"critic.normalize_observations": True}), "critic")
    assert config_differences(stored, tiny_cfg(default_dataset, seed=3), "critic") == ["seed is 0 there, 3 here"]


def test_bf16_on_a_cpu_that_would_emulate_it_trains_in_fp32_and_says_so(
    tmp_path, trained, data, default_dataset, monkeypatch, capsys
):
    """A CPU without bf16 arithmetic emulates it 10-20x slower than fp32 (AVX2-only x86): a preset's bf16 must
    not turn its hour into a day there. The stages train in fp32 (the same weights as an fp32 run), warn on
    stderr, record fp32, and the same bf16 configuration then reuses those checkpoints instead of refusing."""
    import srpo_cli.train.device as device_mod
    from srpo_cli.pipeline import stage_plan

    cpu = torch.device("cpu")
    run, _, _ = trained
    asked = tiny_cfg(default_dataset, **{"behavior.bf16": True, "extract.bf16_behavior": True})
    monkeypatch.setattr(device_mod, "emulates_bf16", lambda device: device.type == "cpu")
    out = tmp_path / "emulated"
    out.mkdir()
    train_behavior(asked, data, out, cpu)
    shutil.copy(run / "critic.safetensors", out / "critic.safetensors")
    train_actor(asked, data, out, cpu)
    err = capsys.readouterr().err
    assert "behavior.bf16 is on, but this CPU has no bf16 arithmetic" in " ".join(err.split())
    assert "extract.bf16_behavior is on" in " ".join(err.split())
    assert asked.behavior.bf16 and asked.extract.bf16_behavior  # the caller's configuration is left as it was

    fp32 = tiny_cfg(default_dataset)
    train_behavior(fp32, data, tmp_path / "fp32", cpu, quiet=True)
    shutil.copy(run / "critic.safetensors", tmp_path / "fp32" / "critic.safetensors")
    train_actor(fp32, data, tmp_path / "fp32", cpu, quiet=True)
    for name, section, key in (("behavior", "behavior", "bf16"), ("actor", "extract", "bf16_behavior")):
        ckpt = load_checkpoint(out / f"{name}.safetensors")
        assert ckpt.config[section][key] is False
        ref = _tensors(tmp_path / "fp32" / f"{name}.safetensors")
        for k, v in ckpt.tensors.items():
            assert torch.equal(v, ref[k]), (name, k)
        assert stage_plan(out / f"{name}.safetensors", 30, cfg=asked) == "skip"  # reused, not refused

    monkeypatch.setattr(device_mod, "emulates_bf16", lambda device: False)
    cfg, note = device_mod.without_emulated_bf16(asked, cpu, "behavior.bf16")
    assert cfg is asked and note is None  # where bf16 is native it stays on
    monkeypatch.undo()
    assert device_mod.emulates_bf16(torch.device("cuda")) is False  # GPUs have bf16; only CPUs are checked


def test_compiled_critic_and_extraction_train_like_eager(tmp_path, trained, data, default_dataset, device):
    """critic.compile compiles the whole no-grad gradient computation and extract.compile folds the frozen
    behavior net's weights in as constants: neither may freeze what trains (the critic's weights) nor
    change the maths, so a few steps must end where eager ones do."""
    run, _, _ = trained
    dev = torch.device(device)
    ends = {}
    for compiled in (False, True):
        cfg = tiny_cfg(default_dataset)
        cfg.critic.steps, cfg.extract.steps = 8, 8
        cfg.critic.compile = cfg.extract.compile = compiled
        out = tmp_path / str(compiled)
        out.mkdir()
        shutil.copy(run / "behavior.safetensors", out / "behavior.safetensors")
        train_critic(cfg, data, out, dev, quiet=True)
        train_actor(cfg, data, out, dev, quiet=True)
        ends[compiled] = (_tensors(out / "critic.safetensors"), _tensors(out / "actor.safetensors"))
    for eager, comp in zip(ends[False], ends[True], strict=True):
        for k in eager:
            torch.testing.assert_close(comp[k], eager[k], rtol=1e-4, atol=1e-5)
    first = tiny_cfg(default_dataset)  # and the critic did train: its weights left their initialization
    init = CriticStage(first, data, dev)
    assert not torch.allclose(init.q.layers[0].weight.cpu(), ends[True][0]["q.layers.0.weight"])


@pytest.mark.parametrize("bf16", [False, True])
def test_the_compiled_extraction_step_reads_the_actors_current_weights(trained, data, device, bf16):
    """extract.compile compiles the behavior net, the Q term and the actor's backward as one graph with the
    frozen nets folded in as constants. The actor's weights change every step and must not be folded in:
    after an in-place change, the compiled gradients match eager ones at the new weights (and they moved)."""
    from srpo_cli.algos.extract import ExtractStage, actor_grads_from_draws

    run, cfg, _ = trained
    cfg = tiny_cfg(cfg.dataset, **{"extract.compile": True, "extract.bf16_behavior": bf16})
    dev = torch.device(device)
    stage = ExtractStage(cfg, data, dev, run)
    s = stage.data.observations[:64]
    g = torch.Generator(device=dev).manual_seed(0)
    t = torch.rand(64, device=dev, generator=g) * 0.9 + 0.05
    z = torch.randn(64, data.action_dim, device=dev, generator=g)

    @torch.no_grad()  # as in training: inductor freezes constants only in a graph compiled without grad
    def both():
        a, inputs = stage.actor.forward_cached(s)
        args = (s, a, inputs, t, z)
        eager = actor_grads_from_draws(
            stage.actor, stage.behavior, stage.q_target, stage.schedule, cfg.extract, dev.type, *args
        )
        return stage.compiled(stage.actor, *args, stage.actor.linear_weights()), eager

    before, _ = both()
    with torch.no_grad():
        for p in stage.actor.parameters():
            p.mul_(1.5)
    after, eager = both()
    assert stage.compiled.compiled
    tol = {"rtol": 2e-2, "atol": 2e-3} if bf16 else {"rtol": 1e-4, "atol": 1e-5}
    for c_, e_ in zip(after[0], eager[0], strict=True):
        torch.testing.assert_close(c_, e_, **tol)
    assert not torch.allclose(after[0][0], before[0][0], rtol=1e-2, atol=1e-3)


def test_a_frozen_compile_folds_the_weights_in():
    """extract.compile relies on inductor folding the frozen behavior net's weights in as constants. Were the
    freezing not in force (torch.compile's options={"freezing": True} alone leaves them graph inputs), the
    compiled function would still read the module's weights: changing one in place would change its output."""
    from srpo_cli.nn.compile import CompiledOrEager

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)).eval()
    net.requires_grad_(False)
    x = torch.randn(16, 8)
    frozen, live = CompiledOrEager(net, "a frozen net", frozen=True), CompiledOrEager(net, "a live net")
    with torch.no_grad():
        before = net(x)
        torch.testing.assert_close(frozen(x), before, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(live(x), before, rtol=1e-4, atol=1e-5)
        net[2].bias.add_(1.0)
        torch.testing.assert_close(frozen(x), before, rtol=1e-4, atol=1e-5)  # constants: the old weights
        torch.testing.assert_close(live(x), before + 1.0, rtol=1e-4, atol=1e-5)
    assert frozen.compiled and live.compiled


def test_compile_falls_back_to_eager_when_no_compiler_works(monkeypatch, capsys):
    """A compile: true on a machine without a working C++ compiler trains eagerly, with one warning."""
    import torch._inductor.config as inductor_config

    from srpo_cli.nn.compile import CompiledOrEager

    monkeypatch.setattr(inductor_config.cpp, "cxx", (None, "/bin/false"))
    monkeypatch.setattr(inductor_config, "fx_graph_cache", False)
    torch._dynamo.reset()

    def f(x):
        return torch.sin(x) * 3.0 + x.cos()

    fn = CompiledOrEager(f, "a test function")
    x = torch.randn(64)
    torch.testing.assert_close(fn(x), f(x))
    assert fn.compiled is False
    assert "torch.compile of a test function failed" in capsys.readouterr().err
    torch.testing.assert_close(fn(x + 1), f(x + 1))  # and it stays eager
    torch._dynamo.reset()


def test_compile_errors_that_are_not_compilation_still_surface():
    from srpo_cli.nn.compile import CompiledOrEager

    def f(x):
        return x @ x  # [3, 4] @ [3, 4] fails eagerly too

    with pytest.raises(RuntimeError):
        CompiledOrEager(f, "a broken function")(torch.randn(3, 4))


@pytest.mark.parametrize("kind", ["adam", "adamw"])
def test_optimizer_step_is_bitwise_adam_step(kind, device):
    """The direct fused-kernel call gives exactly Adam(W).step's parameters and state, across two groups
    with their own learning rates, an LR schedule, and a save/load of the state in between (--resume)."""
    dev = torch.device(device)
    if dev.type not in ("cpu", "cuda"):
        pytest.skip("fused Adam exists for the CPU and CUDA only")
    g = torch.Generator().manual_seed(0)
    shapes = [(5, 3), (3,), (4, 5), (4,)]
    init = [torch.randn(s, generator=g) for s in shapes]
    grads = [[torch.randn(s, generator=g) for s in shapes] for _ in range(6)]

    def build():
        params = [torch.nn.Parameter(x.clone().to(dev)) for x in init]
        cls = torch.optim.AdamW if kind == "adamw" else torch.optim.Adam
        groups = [{"params": params[:2], "lr": 1e-2}, {"params": params[2:], "lr": 3e-3}]
        opt = cls(groups, lr=1e-2, betas=(0.8, 0.95), weight_decay=0.1, fused=True)
        return params, opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=6)

    def train(params, opt, sched, stepper, steps):
        for gs in steps:
            for p, x in zip(params, gs, strict=True):
                p.grad = x.to(dev)
            stepper(opt)
            sched.step()

    ref, ref_opt, ref_sched = build()
    train(ref, ref_opt, ref_sched, lambda o: o.step(), grads)
    ours, opt, sched = build()
    train(ours, opt, sched, optimizer_step, grads[:3])  # the first call creates the state via opt.step()
    resumed, r_opt, r_sched = build()
    r_opt.load_state_dict(opt.state_dict())
    r_sched.load_state_dict(sched.state_dict())
    with torch.no_grad():
        for p, q in zip(resumed, ours, strict=True):
            p.copy_(q)
    train(resumed, r_opt, r_sched, optimizer_step, grads[3:])
    for p, q in zip(resumed, ref, strict=True):
        assert torch.equal(p, q)
    for p, q in zip(resumed, ref, strict=True):
        for key in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(r_opt.state[p][key], ref_opt.state[q][key])


def test_optimizer_step_falls_back_for_what_it_does_not_cover():
    """A non-fused Adam, amsgrad and a parameter without a gradient all take opt.step()'s path."""
    for kwargs in ({"foreach": True}, {"fused": True, "amsgrad": True}):
        p, q = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(3))
        opt, ref = torch.optim.Adam([p], lr=0.1, **kwargs), torch.optim.Adam([q], lr=0.1, **kwargs)
        for _ in range(3):
            p.grad, q.grad = torch.full((3,), 0.5), torch.full((3,), 0.5)
            optimizer_step(opt)
            ref.step()
        assert torch.equal(p, q)
    p, frozen = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.Adam([p, frozen], lr=0.1, fused=True)
    for _ in range(2):
        p.grad = torch.ones(3)
        optimizer_step(opt)
    assert torch.equal(frozen, torch.ones(3)) and not torch.equal(p, torch.ones(3))
