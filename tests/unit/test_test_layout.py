"""The suite's own layout: pytest imports test modules by basename (no ``__init__.py``, prepend mode), so two
modules with one name in tests/unit and tests/integration fail the whole run at collection."""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_no_two_test_modules_share_a_basename():
    names = Counter(path.name for path in TESTS.rglob("test_*.py") if ".venv" not in path.parts)
    assert [name for name, count in names.items() if count > 1] == []


def test_no_perf_module_imports_the_tests():
    """perf/ is a library the tests use, never the other way round (the body builders live in perf.drills)."""
    offenders = []
    for path in sorted((TESTS.parent / "perf").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {name}" for name in names if name.split(".")[0] == "tests"]
    assert offenders == []
