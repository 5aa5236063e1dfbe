"""Errors that the CLI turns into a one-paragraph message and an exit code, never a traceback."""

from __future__ import annotations


class SrpoError(Exception):
    """A failure the user can act on. ``exit_code`` follows the CLI contract: 1 runtime, 2 usage."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message, hint)  # both in args, so the error survives pickling (worker processes)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} {self.hint}"


class UsageError(SrpoError):
    """Bad input from the user: a malformed id, an unknown config key, an invalid value."""

    exit_code = 2


class RuntimeFailure(SrpoError):
    """Valid input but the work failed: missing checkpoint, offline download, non-finite loss."""

    exit_code = 1


class Interrupted(SrpoError):
    """Ctrl-C during training; a checkpoint was written before exiting."""

    exit_code = 130
