"""The newcomer's demo (`make demo`) runs end to end on loopback, and its expectations hold."""

from __future__ import annotations

import math
import re
import subprocess

import pytest

from tests.support import ROOT, python_cmd

pytestmark = pytest.mark.daemon

TERMINALS = 400
ROW = re.compile(r"^\s+(xapp\d)\s+127\.0\.0\.\d+\s+(\d+)\s+[\d.]+\s+([\d.]+)%\s+([\d.]+)%\s+(\d+)$", re.M)


def test_demo_sends_what_it_says_the_default_algorithm_sends():
    res = subprocess.run(python_cmd("lbserver.tools.demo", "-n", str(TERMINALS)), capture_output=True, text=True,
                         timeout=120, env={"PYTHONPATH": str(ROOT)})
    assert res.returncode == 0, res.stderr
    rows = {m.group(1): (int(m.group(2)), float(m.group(3)) / 100, float(m.group(4)) / 100, int(m.group(5)))
            for m in ROW.finditer(res.stdout)}
    assert set(rows) == {"xapp1", "xapp2", "xapp3"}, res.stdout
    assert sum(sent for *_, sent in rows.values()) == TERMINALS
    assert abs(sum(drawn for _, drawn, _, _ in rows.values()) - 1) < 0.002
    assert abs(sum(expected for _, _, expected, _ in rows.values()) - 1) < 0.002
    # The printed expectation is two-choices' (not the weight shares, which weighted-random would give) ...
    assert rows["xapp1"][2] > rows["xapp1"][1] and rows["xapp3"][2] < rows["xapp3"][1]
    # ... and what the balancer sent matches it, within 4 standard deviations (and 2 terminals for small counts).
    for name, (_, _, expected, sent) in rows.items():
        mean = TERMINALS * expected
        assert abs(sent - mean) <= 4 * math.sqrt(mean * (1 - expected)) + 2, (name, sent, mean, res.stdout)
    assert "two-choices" in res.stdout

    # lbctl's table shows the variable the demo's rule weighs, the figure the servers differ by.
    table = res.stdout[res.stdout.index("group DEMO (default)"):].splitlines()
    header = table[1].split()
    assert "SIMLOAD" in header
    for line in table[2:5]:
        cells = line.split()
        assert int(cells[header.index("SIMLOAD")]) == rows[cells[0]][0]
