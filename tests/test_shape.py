"""The shipped code stays readable in one screen per function: no function of a shipped package,
nested ones included, is longer than 60 lines, from its def line to its last (issue 22)."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

# What ships to EMR and the Lambdas, and what operators and builders run.
PACKAGES = (
    "emr_serverless_job",
    "fruits_contract",
    "lambda_trigger",
    "fruits_ops",
    "fruits_readers",
    "fruits_build",
    "emr_emulator",
    "fruits_demo",
)
MAX_FUNCTION_LINES = 60


def long_functions(path: Path) -> list[str]:
    """``path:line name (N lines)`` for each function of one file longer than the limit."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            lines = node.end_lineno - node.lineno + 1
            if lines > MAX_FUNCTION_LINES:
                where = path.relative_to(ROOT)
                found.append(f"{where}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_no_shipped_function_is_over_60_lines():
    files = sorted(path for package in PACKAGES for path in (ROOT / package).rglob("*.py"))
    assert files, f"no Python file found in {PACKAGES}"
    offenders = [offender for path in files for offender in long_functions(path)]
    assert not offenders, (
        f"{len(offenders)} function(s) over {MAX_FUNCTION_LINES} lines; split each into named "
        "steps:\n" + "\n".join(offenders)
    )
