"""srpo: Score Regularized Policy Optimization (Chen et al., ICLR 2024) for offline RL.

The Python API, for notebooks and scripts (the CLI is a thin layer over the same functions)::

    import torch
    import srpo_cli as srpo

    cfg = srpo.resolve_config({"dataset": "srpo/pendulum/scripted-medium-v0"})  # flags > env > srpo.yaml > preset
    srpo.fetch(cfg.dataset)                                   # or a Minari id, or import_d4rl(...)
    data = srpo.load_transitions(cfg.dataset)
    run = cfg.resolved_run_dir()
    for stage in ("behavior", "critic", "extract"):           # also "awr", "bc"
        srpo.train_stage(stage, cfg, data, run, torch.device("cpu"))
    result = srpo.evaluate_run(cfg, run)                      # returns and 0-100 scores; writes eval.json
    policy = srpo.load_actor_policy(run / "actor.safetensors")
    action = policy(observation)                              # one observation -> one action, in env units

``examples/python_api.py`` runs exactly this. Names are imported on first use, so ``import srpo_cli`` stays
cheap (torch and gymnasium load only when a function that needs them is called).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> (module, attribute): the whole API in one table
_API = {
    "RunConfig": ("srpo_cli.config", "RunConfig"),
    "resolve_config": ("srpo_cli.config", "resolve"),
    "fetch": ("srpo_cli.data.fetch", "fetch"),
    "import_d4rl": ("srpo_cli.data.builders", "import_d4rl"),
    "load_transitions": ("srpo_cli.data.transitions", "load_transitions"),
    "train_stage": ("srpo_cli.pipeline", "train_stage"),
    "run_stage": ("srpo_cli.pipeline", "run_stage"),
    "run_pipeline": ("srpo_cli.pipeline", "run_pipeline"),
    "evaluate_run": ("srpo_cli.pipeline", "evaluate_run"),
    "load_actor_policy": ("srpo_cli.act.policies", "load_actor_policy"),
    "load_checkpoint": ("srpo_cli.train.checkpoint", "load_checkpoint"),
    "export_actor": ("srpo_cli.act.export", "export_actor"),
    "collect": ("srpo_cli.collect", "collect"),
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'srpo_cli' has no attribute '{name}'")
    module, attribute = _API[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
