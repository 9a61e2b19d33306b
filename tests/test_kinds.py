"""The test kinds: an unmarked test is refused, and a test cannot start more than its marker allows."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support import ROOT, require_program
from tests.support.kinds import allowed, kind_guard


@pytest.mark.unit
@pytest.mark.parametrize("kind, program, ok", [
    ("unit", "sh", True), ("unit", "python3", False), ("unit", "lbserver", False), ("unit", "named", False),
    ("daemon", "python3.11", True), ("daemon", "lbagent", True), ("daemon", "openssl", True),
    ("daemon", "haproxy", False), ("daemon", "curl", False), ("daemon", "make", False),
    ("system", "named", True), ("system", "chromium", True),
])
def test_what_each_kind_may_start(kind, program, ok):
    assert allowed(kind, program) is ok


@pytest.mark.unit
def test_a_unit_test_starting_python_is_told_to_be_a_daemon_test():
    before = subprocess.Popen.__init__
    with kind_guard("unit"), pytest.raises(AssertionError, match="marked unit starts python.*mark it daemon"):
        subprocess.run([sys.executable, "-c", "pass"], check=False)
    assert subprocess.Popen.__init__ is before  # the guard this test runs under is back


@pytest.mark.daemon
def test_a_test_without_a_kind_is_refused_before_anything_runs(tmp_path):
    """pytest, with this suite's rules as a plugin, refuses a file holding an unmarked test and names it."""
    probe = tmp_path / "test_probe.py"
    probe.write_text("import pytest\n\n\n@pytest.mark.unit\ndef test_marked():\n    pass\n\n\n"
                     "def test_unmarked():\n    raise SystemExit('ran')\n")
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "tests.conftest", "-c", "/dev/null",
                          "--rootdir", str(tmp_path), str(probe)], capture_output=True, text=True, timeout=60,
                         cwd=tmp_path, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert res.returncode == 4, res.stdout + res.stderr  # pytest's usage error
    assert "test_probe.py::test_unmarked: no kind marker" in res.stderr
    assert "test_marked" not in res.stderr and "ran" not in res.stdout


@pytest.mark.unit
def test_a_missing_program_is_named_with_its_package_and_how_to_install_it(monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name, path=None: None)  # a machine without BIND
    with pytest.raises(pytest.fail.Exception, match=r"needs named \(Debian package bind9\).*make test"):
        require_program("named")
