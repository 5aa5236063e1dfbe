"""The actor's single-observation forward as one compiled loop, for a robot's control loop on a CPU.

At batch 1 the 2x256 actor is about 70k multiply-adds: a few microseconds of arithmetic. A numpy forward
spends more than that in call overhead (each ufunc or matmul call costs about a microsecond here, and the
forward needs seven), and eager torch several times more. numba compiles the whole forward (every layer,
ReLU, tanh) into one native function, so one action costs one call. The compiled code is cached on disk
(``cache=True``), so only the first process on a machine pays the compilation (a few seconds).

numba is a declared dependency; where it cannot be imported (a platform without its wheels) or cannot
compile, ``mlp_kernel()`` returns None and callers fall back to the numpy forward, which computes the same
actions more slowly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

_KERNEL: Callable[..., None] | None = None


_TRIED = False


# Layers this narrow (the action layer) are stored [d_out, d_in] and computed as dot products: d_out-long
# row updates would not fill a vector register.
NARROW = 16


def _mlp_one(x: Any, params: Any, dims: Any, hidden: Any, out: Any) -> None:  # pragma: no cover - compiled
    """out <- tanh(MLP(x)) for one observation.

    ``params`` holds the layers back to back, each as its weight then its bias [d_out]; the weight is
    [d_in, d_out] row-major (the transpose of nn.Linear.weight), or [d_out, d_in] for a layer narrower than
    ``NARROW``; ``dims`` = [d_0, ..., d_L]; ``hidden`` is scratch [2, widest hidden layer]. A wide layer adds
    rows of W scaled by its inputs, so the inner loop runs over contiguous memory and vectorizes; ReLU is
    applied as each hidden unit is read, and a unit at zero is skipped (about half of them). ``x <= 0`` is
    False for NaN, so a NaN propagates as it does in torch.
    """
    n_layers = dims.shape[0] - 1
    src = x
    off = 0
    for layer in range(n_layers):
        d_in = dims[layer]
        d_out = dims[layer + 1]
        dst = out if layer == n_layers - 1 else hidden[layer % 2]
        bias = off + d_in * d_out
        b = params[bias : bias + d_out]
        # Views indexed by range() counters: numba then knows the indices are non-negative and the loops
        # vectorize (flat ``params[row + j]`` indexing measured 2-3x slower).
        if d_out < NARROW:
            w = params[off:bias].reshape((d_out, d_in))
            for j in range(d_out):
                acc = b[j]
                for i in range(d_in):
                    xi = src[i]
                    if layer > 0 and xi <= 0.0:
                        xi = 0.0
                    acc += xi * w[j, i]
                dst[j] = acc
        else:
            w = params[off:bias].reshape((d_in, d_out))
            for j in range(d_out):
                dst[j] = b[j]
            for i in range(d_in):
                xi = src[i]
                if layer > 0 and xi <= 0.0:
                    continue
                for j in range(d_out):
                    dst[j] += xi * w[i, j]
        off = bias + d_out
        src = dst
    for j in range(out.shape[0]):
        out[j] = np.tanh(out[j])


def mlp_kernel() -> Callable[..., None] | None:
    """The compiled ``_mlp_one`` (compiled lazily on first use), or None where numba is unavailable."""
    global _KERNEL, _TRIED
    if not _TRIED:
        _TRIED = True
        try:
            import numba
        except ImportError:
            return None
        # Reassociation lets the compiler vectorize the sums; no "nnan"/"ninf", so NaN and inf behave as in
        # IEEE arithmetic (a NaN observation gives a NaN action, not an arbitrary finite one).
        options = {"fastmath": {"reassoc", "contract", "nsz"}, "nogil": True, "boundscheck": False}
        try:
            _KERNEL = numba.njit(cache=True, **options)(_mlp_one)
        except RuntimeError:  # no writable cache location (read-only install, no home): compile per process
            _KERNEL = numba.njit(cache=False, **options)(_mlp_one)
        try:  # compile (or load from the cache) now, so that a platform numba cannot target falls back here
            one = np.ones(1, np.float32)
            params, dims = pack_layers(
                [(np.ones((1, NARROW), np.float32), np.ones(NARROW, np.float32)), (one[:, None].repeat(NARROW, 0), one)]
            )
            _KERNEL(one, params, dims, np.empty((2, NARROW), np.float32), np.empty(1, np.float32))
        except Exception:
            _KERNEL = None
    return _KERNEL


def pack_layers(layers: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """[(W [d_in, d_out], b [d_out]), ...] -> (flat float32 params, int64 dims) in ``_mlp_one``'s layout."""
    params = np.concatenate(
        [np.concatenate([(w.T if w.shape[1] < NARROW else w).reshape(-1), b.reshape(-1)]) for w, b in layers]
    )
    dims = np.array([layers[0][0].shape[0]] + [w.shape[1] for w, _ in layers], dtype=np.int64)
    return np.ascontiguousarray(params, dtype=np.float32), dims
