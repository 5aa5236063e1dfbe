"""The ``srpo`` command line: thin Typer commands over the library, grouped by what they work on (common:
the app and the error contract; stages: training; data: datasets; settings: configuration; results: eval,
bench, export, plot)."""

from srpo_cli.cli import data, results, settings, stages, sweep  # noqa: F401  (registers the commands)
from srpo_cli.cli.common import app

__all__ = ["app"]
