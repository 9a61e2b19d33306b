"""The newcomer's demo (`make demo`) runs end to end on loopback."""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.support import ROOT, python_cmd

pytestmark = pytest.mark.daemon


def test_demo_sends_terminals_to_the_least_loaded_servers():
    res = subprocess.run(python_cmd("lbserver.tools.demo", "-n", "200"), capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(ROOT)})
    assert res.returncode == 0, res.stderr
    sent = {m.group(1): int(m.group(2)) for m in re.finditer(r"^\s+(xapp\d)\s+127\.0\.0\.\d.*?(\d+)$", res.stdout, re.M)}
    assert set(sent) == {"xapp1", "xapp2", "xapp3"} and sum(sent.values()) == 200
    assert sent["xapp1"] > sent["xapp3"]  # 15 % against 75 % simulated load
    assert "group DEMO (default)" in res.stdout  # the lbctl status table
