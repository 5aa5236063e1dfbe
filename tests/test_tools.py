"""The tools under tools/ run and keep their promises."""

import importlib.util
import sys
from pathlib import Path

TOOLS = Path(__file__).resolve().parents[1] / "tools"


def _load(rel: str):
    spec = importlib.util.spec_from_file_location(Path(rel).stem, TOOLS / rel)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_every_hostile_user_case_keeps_the_cli_contract(capsys):
    """docs/reliability.md's table: each case exits with its code and names the problem, never a traceback."""
    cases = _load("diagnostics/reliability_cases.py")
    assert cases.main(["--check"]) == 0, capsys.readouterr().out
    table = capsys.readouterr().out
    assert table.count("\n| ") >= 60 and "contract broken" not in table
