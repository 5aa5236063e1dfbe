"""One registry of the files a run directory holds: every module names them through here.

A run directory (``runs/{dataset}/seed{seed}`` by default) holds one checkpoint per stage, each with its
training state beside it (``NAME.state.pt``), the metrics of each stage, the evaluation results and the
policies kept during training.
"""

from __future__ import annotations

from srpo_cli.errors import UsageError

BEHAVIOR = "behavior.safetensors"
CRITIC = "critic.safetensors"
ACTOR = "actor.safetensors"
AWR = "awr.safetensors"
BC = "bc.safetensors"

# the checkpoint each training stage writes, by the stage names the pipeline and the runner use
STAGE_FILES = {"behavior": BEHAVIOR, "critic": CRITIC, "extract": ACTOR, "awr": AWR, "bc": BC}
# the policy files ``srpo eval --policy`` and ``srpo export --policy`` read
POLICY_FILES = {"srpo": ACTOR, "awr": AWR, "bc": BC}

EVAL_JSON = "eval.json"
PIPELINE_JSON = "pipeline.json"
METRICS_DIR = "metrics"
TENSORBOARD_DIR = "tensorboard"  # inside METRICS_DIR, one folder per stage
KEPT_DIR = "actors"


def policy_file(policy: str) -> str:
    if policy not in POLICY_FILES:
        raise UsageError(f"Unknown policy '{policy}'.", f"Choose one of {', '.join(POLICY_FILES)}.")
    return POLICY_FILES[policy]
