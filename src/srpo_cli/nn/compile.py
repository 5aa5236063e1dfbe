"""torch.compile with an eager fallback, for the stages' optional ``compile`` fields."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from rich.console import Console

stderr = Console(stderr=True)


class CompiledOrEager:
    """``torch.compile(fn)`` that falls back to ``fn`` itself, with one warning, if its first call fails.

    torch.compile on a CPU needs a working C++ compiler, and some torch builds or devices cannot compile a
    given graph; a ``compile: true`` in a preset must not turn that into a failed training. Only the first
    call falls back: that is where compilation happens, and the wrapped functions are pure (no state changes
    before the failure), so running ``fn`` instead gives the step the eager result. Were the error not a
    compilation's, ``fn`` raises it again. Later errors propagate.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        what: str,
        *,
        frozen: bool = False,
        hint: str = "Set the compile field to false to skip the attempt.",
        **compile_kwargs: Any,
    ):
        """``frozen``: ``fn`` is an inference-only module whose weights never change, so inductor may fold them
        in as constants (prepacked oneDNN matmul weights on a CPU, no per-call dtype casts). That needs
        inductor's global ``freezing`` flag while dynamo traces: ``torch.compile(options={"freezing": True})``
        is accepted but leaves the weights as graph inputs (torch 2.13, checked in the generated code)."""
        self.eager, self.what, self.hint = fn, what, hint
        self._frozen = frozen
        if frozen:
            import torch._inductor.config as inductor_config

            self._inductor_config = inductor_config

            # Dynamo caches compiled graphs on the code object it is handed: compiling ``fn`` itself would
            # let a later live compile of the same module reuse this graph and its stale constants.
            def frozen_fn(*args: Any, **kwargs: Any) -> Any:
                return fn(*args, **kwargs)

            self._fn = torch.compile(frozen_fn, **compile_kwargs)
        else:
            self._fn = torch.compile(fn, **compile_kwargs)
        self._first = True
        self.compiled = True

    def _call(self, *args: Any, **kwargs: Any) -> Any:
        if not self._frozen:
            return self._fn(*args, **kwargs)
        # every call, not only the first: a recompilation (a new input shape) must freeze as well
        with self._inductor_config.patch(freezing=True):
            return self._fn(*args, **kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not self._first:
            return self._call(*args, **kwargs)
        self._first = False
        try:
            return self._call(*args, **kwargs)
        except Exception as e:  # any compilation failure; eager below re-raises errors that are not
            first_line = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            stderr.print(
                f"[yellow]warning:[/] torch.compile of {self.what} failed ({type(e).__name__}: {first_line}); "
                f"continuing without compilation (same results, slower). {self.hint}"
            )
            self._fn, self.compiled = self.eager, False
            return self._fn(*args, **kwargs)
