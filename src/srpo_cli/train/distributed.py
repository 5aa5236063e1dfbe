"""Data-parallel training under ``torchrun``: one process per rank, the configured batch split across them.

A single process (no ``WORLD_SIZE``, or 1) takes none of these paths and trains exactly as before. Under
``torchrun --nproc-per-node N -m srpo_cli pretrain-critic ...`` every rank builds the same networks from the
same seed and draws the same global batch of indices from the same sampler; each trains on its own slice
(``Stage.batch_indices``), and ``optimizer_step`` averages the gradients across ranks before the update, so the
networks stay identical and a step equals one process's step on the whole batch (to float rounding). Noise and
dropout, which differ per sample, come from rank-derived seeds. Rank 0 alone writes checkpoints, metrics and
progress; every rank stops at the same step when any of them receives a stop signal.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from srpo_cli.errors import UsageError


def init_from_env(device: torch.device) -> bool:
    """Join the process group ``torchrun`` describes (gloo on a CPU, nccl on a GPU); nothing otherwise.
    Returns whether this call joined it (the caller then leaves it with ``leave``)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return True


def leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return rank_and_world()[0] == 0


def check_batch(batch_size: int, what: str) -> None:
    _, world = rank_and_world()
    if batch_size % world:
        raise UsageError(
            f"{what} {batch_size} does not split evenly across {world} ranks.",
            f"Use a batch size divisible by {world} (the configured batch is the global one).",
        )


def average_gradients(params) -> None:
    """Average the gradients of ``params`` across ranks, in one flat all-reduce."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat.div_(dist.get_world_size())
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def average(values: torch.Tensor) -> torch.Tensor:
    """The mean of ``values`` over ranks (logged losses)."""
    values = values.clone()
    dist.all_reduce(values)
    return values / dist.get_world_size()


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when it is true on any (a stop signal reaches ranks at different steps)."""
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def gather(obj):
    """[obj of rank 0, obj of rank 1, ...] on every rank."""
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
