"""``python -m srpo_cli`` (and ``torchrun -m srpo_cli``): the srpo command line."""

from srpo_cli.cli import app

app()
