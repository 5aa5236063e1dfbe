"""``python -m srpo_cli`` (and ``torchrun -m srpo_cli``): the srpo command line."""

from .cli import app

app()
