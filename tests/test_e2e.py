"""The built-in default pipeline end to end, with a small budget: the SRPO actor must beat a random policy."""

import torch
from conftest import tiny_cfg

from srpo_cli.algos.behavior import train_behavior
from srpo_cli.algos.critic import train_critic
from srpo_cli.algos.extract import train_actor
from srpo_cli.data.transitions import load_transitions
from srpo_cli.pipeline import evaluate_run


def test_default_pipeline_beats_random(tmp_path, default_dataset, device):
    cfg = tiny_cfg(default_dataset)  # the pendulum preset's learning rates, smaller budgets
    # Measured on this task: the critic needs ~10k steps before Q ranks actions well, and the actor a few
    # thousand extraction steps to learn the swing-up (1,000 scored about 0, 3,000 about 55).
    cfg.behavior.steps, cfg.behavior.batch_size = 2000, 256
    cfg.critic.steps, cfg.critic.batch_size = 12000, 256
    cfg.extract.steps, cfg.extract.batch_size = 3000, 128
    cfg.eval.episodes, cfg.eval.num_envs = 20, 10
    dev = torch.device(device)
    data = load_transitions(default_dataset, dev)
    for fn in (train_behavior, train_critic, train_actor):
        fn(cfg, data, tmp_path, dev, quiet=True)
    res = evaluate_run(cfg, tmp_path, "srpo")
    # 0 = uniform random torques (whose 20-episode mean has a std of about 6 on this scale), 100 = the controller
    score = float(res.normalized(res.returns.mean()))
    assert score > 15, f"SRPO scored {score:.1f}; random is 0"


def test_goal_conditioned_dataset_trains_and_evaluates(tmp_path, device):
    """Dict observations (Minari's antmaze and pointmaze shape) through every stage and both kinds of policy:
    the checkpoints record the dataset's observation space, and evaluation flattens the env's observations by
    it, so the actor and the diffusion baseline act on the vectors they were trained on."""
    from goal_env import register

    from srpo_cli.collect import collect

    dataset_id, _ = collect(register(), "test/goal/e2e-v0", "random", steps=200, seed=1)
    cfg = tiny_cfg(dataset_id)
    dev = torch.device(device)
    data = load_transitions(dataset_id, dev)
    for fn in (train_behavior, train_critic, train_actor):
        fn(cfg, data, tmp_path, dev, quiet=True)
    for policy in ("srpo", "diffusion"):
        res = evaluate_run(cfg, tmp_path, policy)
        assert len(res.returns) == cfg.eval.episodes and (res.lengths == 25).all()
    # srpo collect rolls the trained actor out on the env's Dict observations, flattened as in training
    rolled, _ = collect(register(), "test/goal/rolled-v0", str(tmp_path / "actor.safetensors"), steps=30, seed=2)
    again = load_transitions(rolled)
    assert again.obs_dim == data.obs_dim and again.size == 30
