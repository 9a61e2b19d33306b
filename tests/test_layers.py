"""The import layers: the contracts in .importlinter hold, no cycle anywhere, and a broken layer is caught."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.daemon

ROOT = Path(__file__).resolve().parent.parent
LINT = str(Path(sys.executable).with_name("lint-imports"))


def _lint(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([LINT, "--config", str(root / ".importlinter"), "--no-cache"], cwd=root,
                          capture_output=True, text=True, timeout=120, env={"PYTHONPATH": str(root)})


def test_contracts_are_kept():
    res = _lint(ROOT)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "0 broken" in res.stdout


def test_no_import_cycle_anywhere():
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "import-graph")], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "no import cycles" in res.stdout


def test_an_upward_import_breaks_the_contract(tmp_path):
    """A copy of the tree where the core imports the management service, lazily, inside a function."""
    for name in ("lbserver", "lbagent", "lbclient", "common"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / ".importlinter", tmp_path)
    health = tmp_path / "lbserver" / "core" / "health.py"
    health.write_text(health.read_text() + "\n\ndef _status():\n    from lbserver.mgmt import api  # noqa\n")
    res = _lint(tmp_path)
    assert res.returncode != 0
    assert "lbserver.core.health -> lbserver.mgmt.api" in res.stdout
    cycle = subprocess.run([sys.executable, str(ROOT / "scripts" / "import-graph"), "--root", str(tmp_path)],
                           capture_output=True, text=True, timeout=120)
    assert cycle.returncode == 1 and "lbserver.core.health" in cycle.stdout
