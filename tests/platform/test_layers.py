"""The rules stay pure: ``lifecycle``, ``retry`` and ``status`` import nothing that touches a socket,
a file or the database, so a unit test drives them without a broker (read off their own imports)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "platform" / "chute"
#: what a pure rule may import: the leaf modules of chute and stdlib modules without I/O
ALLOWED = {"__future__", "enum", "random", "collections", "collections.abc", "dataclasses", "datetime", "typing",
           "chute.errors", "chute.retry", "chute.status"}


def imports_of(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


@pytest.mark.parametrize("module", ["lifecycle.py", "retry.py", "status.py"])
def test_a_rule_module_imports_only_pure_modules(module: str) -> None:
    assert imports_of(PACKAGE / module) <= ALLOWED, imports_of(PACKAGE / module) - ALLOWED


def test_the_check_sees_an_import_it_must_refuse(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from chute.models import Job\nimport sqlalchemy\n")
    assert imports_of(bad) - ALLOWED == {"chute.models", "sqlalchemy"}
