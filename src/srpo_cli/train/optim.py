"""The optimizer step and the optimizers' shared settings."""

from __future__ import annotations

from typing import Any

import torch

from srpo_cli.train.distributed import average_gradients, rank_and_world


def optimizer_step(opt: torch.optim.Optimizer) -> None:
    """``opt.step()``; for a fused Adam or AdamW, its kernel called directly with the same arguments.

    Why: ``Optimizer.step``'s generic Python (hooks, grouping tensors by device and dtype, per-parameter
    state checks) costs about a quarter of a millisecond per call on a CPU, which is 5-10% of the critic's
    whole step at batch 256. The shortcut passes ``torch._fused_adam_`` (``_fused_adamw_``) exactly what
    ``Adam.step`` passes it, group by group, so the update is bitwise the same (a test checks it, and that
    the state saved for ``--resume`` is too). Anything it does not cover (an optimizer that is not a fused
    Adam, the first step, before the state exists, amsgrad, a tensor learning rate, a parameter without a
    gradient, mixed devices or dtypes, complex parameters, gradient scaling) goes through ``opt.step()``.
    """
    if rank_and_world()[1] > 1:  # data-parallel: every rank steps with the gradient of the whole batch
        average_gradients([p for g in opt.param_groups for p in g["params"]])
    calls = _direct_adam_calls(opt)
    if calls is None:
        opt.step()
        return
    for group, params, grads, states in calls:
        steps = [s["step"] for s in states]
        torch._foreach_add_(steps, 1)
        fused = torch._fused_adamw_ if group.get("decoupled_weight_decay") else torch._fused_adam_
        fused(
            params,
            grads,
            [s["exp_avg"] for s in states],
            [s["exp_avg_sq"] for s in states],
            [],
            steps,
            amsgrad=False,
            lr=group["lr"],
            beta1=group["betas"][0],
            beta2=group["betas"][1],
            weight_decay=group["weight_decay"],
            eps=group["eps"],
            maximize=group["maximize"],
        )


def _direct_adam_calls(opt: torch.optim.Optimizer) -> list[tuple[dict, list, list, list]] | None:
    """(group, params, grads, states) per param group if ``optimizer_step`` can call the kernel itself, else None."""
    if not isinstance(opt, torch.optim.Adam) or getattr(opt, "grad_scale", None) is not None:
        return None
    calls = []
    for group in opt.param_groups:
        params = group["params"]
        states = [opt.state.get(p) for p in params]
        grads = [p.grad for p in params]
        covered = (
            group.get("fused")
            and not group["amsgrad"]
            and not group.get("differentiable")
            and isinstance(group["lr"], float)
            and all(isinstance(b, float) for b in group["betas"])
            and all(s and "step" in s for s in states)
            and all(g is not None and not g.is_sparse for g in grads)
            and len({(p.device, p.dtype) for p in params}) == 1
            and not any(p.is_complex() for p in params)
        )
        if not covered:
            return None
        calls.append((group, params, grads, states))
    return calls


def optim_kwargs(lr: float, device: torch.device, **kw: Any) -> dict[str, Any]:
    """Adam(W) keyword arguments: fused kernels where this torch build has them for the device."""
    return {"lr": lr, "fused": True, **kw} if device.type in ("cpu", "cuda") else {"lr": lr, "foreach": True, **kw}
