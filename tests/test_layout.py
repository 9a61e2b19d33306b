"""docs/development.md's module tables name every module of lbagent, lbserver and common, and nothing that is gone."""

from __future__ import annotations

import re

import pytest

from tests.support import ROOT

pytestmark = pytest.mark.unit

PROGRAMS = ("lbagent", "lbserver", "common")


def documented() -> dict[str, set[str]]:
    """Per program, the modules the "Inside X/" tables of the Layout section name (paths relative to X)."""
    text = (ROOT / "docs" / "development.md").read_text()
    layout = text[text.index("## Layout"):text.index("## Layers")]
    parts = re.split(r"^Inside `(\w+)/`:$", layout, flags=re.M)[1:]  # name, table, name, table...
    return {program: {m.group(1) for m in re.finditer(r"^\| `([\w/]+\.py)` \|", body, re.M)}
            for program, body in zip(parts[::2], parts[1::2])}


def present(program: str) -> set[str]:
    """The modules of ``program`` on disk, packages' __init__.py left out."""
    base = ROOT / program
    return {str(p.relative_to(base)) for p in base.rglob("*.py") if p.name != "__init__.py"}


@pytest.mark.parametrize("program", PROGRAMS)
def test_every_module_has_a_row_and_every_row_a_module(program):
    tables = documented()
    assert program in tables, f"docs/development.md has no 'Inside `{program}/`:' table"
    missing = sorted(present(program) - tables[program])
    gone = sorted(tables[program] - present(program))
    assert not missing, f"add a row to the {program}/ table of docs/development.md for: {', '.join(missing)}"
    assert not gone, f"the {program}/ table of docs/development.md names modules that are gone: {', '.join(gone)}"


def test_no_test_module_imports_another():
    """What tests share lives in tests/support; a test file importing another drags its tests along."""
    offenders = [f"{p.name}:{n}" for p in sorted((ROOT / "tests").glob("test_*.py"))
                 for n, line in enumerate(p.read_text().splitlines(), 1)
                 if re.match(r"\s*(from tests\.test_\w+ import|import tests\.test_|from test_\w+ import)", line)]
    assert not offenders, f"move what these import into tests/support: {', '.join(offenders)}"
