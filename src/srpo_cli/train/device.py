"""Devices, CPU threads and the allocator: what a training process sets up before its first step."""

from __future__ import annotations

import copy
import os
import platform
import sys
from typing import TYPE_CHECKING

import torch

from srpo_cli.errors import UsageError

if TYPE_CHECKING:
    from srpo_cli.config import RunConfig

_MALLOC_TUNED = False


def tune_malloc() -> None:
    """Keep freed memory in the process instead of returning it to the OS after every step.

    glibc serves each large tensor (> 128 KiB by default) with a fresh mmap and unmaps it on free, so every
    training step pays page faults for all its activations; on a 2-core CPU that measured 2-3x on the
    behavior net's element-wise ops. Raising the mmap and trim thresholds makes glibc reuse the heap, the
    same effect PyTorch's CPU tuning guide gets from jemalloc/tcmalloc. Opt out with SRPO_NO_MALLOPT=1.
    """
    import ctypes
    import os

    global _MALLOC_TUNED
    if _MALLOC_TUNED or not sys.platform.startswith("linux") or os.environ.get("SRPO_NO_MALLOPT"):
        return
    _MALLOC_TUNED = True
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        libc.mallopt(m_mmap_threshold, 1 << 30)
        libc.mallopt(m_trim_threshold, 1 << 30)
    except (OSError, AttributeError):  # not glibc (musl, ...): nothing to tune
        pass


def set_threads(threads: int) -> int:
    """Apply the ``threads`` config field (0 keeps torch's default; ``config.validate`` refuses negatives);
    returns the count in force."""
    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def resolve_device(name: str) -> torch.device:
    """auto -> cuda if present, else mps, else cpu. An unavailable explicit choice is a usage error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but no CUDA GPU is visible.", "Use --device cpu or auto.")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UsageError("--device mps was asked for but MPS is not available.", "Use --device cpu or auto.")
    if name not in ("cpu", "cuda", "mps"):
        raise UsageError(f"Unknown device '{name}'.", "Choose auto, cpu, cuda or mps.")
    return torch.device(name)


def busy_cores_warning(threads: int, load: float | None = None, cores: int | None = None) -> str | None:
    """A warning when other processes already keep the cores that a stage's ``threads`` would use busy.

    torch's threads wait for each other at every operation, so one that shares its core with another busy
    process holds all of them up: a two-thread critic measured 1.8 steps/s on a 2-core machine whose cores
    were both taken, where it does hundreds alone."""
    if load is None:
        try:
            load = os.getloadavg()[0]
        except OSError:  # not available on this platform
            return None
    cores = cores or os.cpu_count() or 1
    free = cores - load
    if threads <= 1 or threads <= free + 0.5:
        return None
    fit = max(1, int(free + 0.5))
    return (
        f"the load average is {load:.1f} on {cores} cores, so only about {max(free, 0):.1f} are free, and this "
        f"stage would run {threads} threads; threads that share their cores with other busy processes slow the "
        f"whole stage down many times over. Pass --threads {fit} (or wait for the other work to finish)."
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def emulates_bf16(device: torch.device) -> bool:
    """Whether ``device`` is a CPU without bf16 arithmetic, where torch emulates it in software.

    On such a CPU bf16 autocast is no speed-up but a slowdown: on a 2-core AVX2 AMD EPYC (no AVX-512) one
    behavior-training thread ran 22.6 steps/s in fp32 and 1.1 in bf16 on the paper's network, 74 and 6.7 on
    a small one (docs/investigations/bf16-without-native-support.md). x86 has it with AVX512-BF16 or AMX;
    elsewhere oneDNN's own check decides. GPUs have it."""
    if device.type != "cpu":
        return False
    try:
        if platform.machine().lower() in ("x86_64", "amd64", "i386", "i686"):
            return not (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
        return not torch.ops.mkldnn._is_mkldnn_bf16_supported()
    except (AttributeError, RuntimeError):  # a torch without these checks: keep what was asked for
        return False


def without_emulated_bf16(cfg: RunConfig, device: torch.device, field: str) -> tuple[RunConfig, str | None]:
    """``cfg`` with bf16 ``field`` ("behavior.bf16" or "extract.bf16_behavior") turned off where ``device`` would only emulate
    it, and a warning that says so; otherwise ``cfg`` itself and None. The stage's checkpoint then records the
    fp32 it trained in (the resume and reuse checks treat these fields as speed settings, like compile)."""
    section, key = field.split(".")
    if not getattr(getattr(cfg, section), key) or not emulates_bf16(device):
        return cfg, None
    cfg = copy.deepcopy(cfg)
    setattr(getattr(cfg, section), key, False)
    return cfg, (
        f"{field} is on, but this CPU has no bf16 arithmetic (no AVX512-BF16 or AMX), so torch would emulate it, "
        "10-20x slower than fp32: this stage runs in fp32 instead (its checkpoint records it). bf16 pays on "
        "CPUs with AVX512-BF16 or AMX and on GPUs."
    )
