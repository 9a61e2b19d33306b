"""lbctl against a live lbserver with real agents: status, drain/enable (across a restart), reload, errors."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess

import pytest

from tests.support.cluster import ask_many, lbctl, start_agent, start_balancer, stop
from tests.support import ROOT, free_port, python_cmd, wait_for_port, wait_until

pytestmark = pytest.mark.daemon


@pytest.fixture
def three(procs, tmp_path):
    """Agents with loads 10, 40 and 70 % and a balancer over them (group PROD)."""
    agents = [start_agent(procs, tmp_path, f"xapp{i + 1}", f"127.0.0.{i + 2}", load)
              for i, load in enumerate((10, 40, 70))]
    bal = start_balancer(procs, tmp_path, {"PROD": [(a.name, a.url) for a in agents]})
    wait_until(lambda: all(n["health"] == "up" for n in bal.status()["nodes"].values()), 15, what="all up")
    return agents, bal


def test_status_table_json_and_colour(three):
    _, bal = three
    res = lbctl(bal.mgmt_url, "status")
    assert res.returncode == 0, res.stderr
    assert "\033[" not in res.stdout  # not a terminal: no colour
    lines = res.stdout.splitlines()
    assert lines[0].startswith("last poll ") and "3/3 agents answered" in lines[0]
    assert "group PROD (default)" in lines
    header = next(ln for ln in lines if "NODE" in ln).split()
    # SIMLOAD, the custom variable the rules weigh, has a column of its own.
    assert header == ["NODE", "HEALTH", "WEIGHT", "SHARE", "LOAD", "MEM%", "SESS", "SIMLOAD", "PICKS", "WHY"]
    rows = {ln.split()[0]: ln.split() for ln in lines if ln.strip().startswith("xapp")}
    assert set(rows) == {"xapp1", "xapp2", "xapp3"}
    assert all(r[1] == "up" for r in rows.values())
    assert [float(rows[n][7]) for n in ("xapp1", "xapp2", "xapp3")] == [10, 40, 70]
    assert float(rows["xapp1"][2]) > float(rows["xapp2"][2]) > float(rows["xapp3"][2])

    doc = json.loads(lbctl(bal.mgmt_url, "--json", "status").stdout)
    assert set(doc["nodes"]) == {"xapp1", "xapp2", "xapp3"}

    # on a terminal, the health words are coloured; NO_COLOR turns that off
    for env, coloured in (({}, True), ({"NO_COLOR": "1"}, False)):
        master, slave = pty.openpty()
        try:
            proc = subprocess.Popen(python_cmd("lbserver.mgmt.ctl", "--url", bal.mgmt_url, "status"), stdout=slave,
                                    stderr=subprocess.PIPE, env={"PYTHONPATH": str(ROOT), **env})
            os.close(slave)
            out = b""
            while True:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
            assert proc.wait(timeout=30) == 0
        finally:
            os.close(master)
        assert (b"\033[32mup\033[0m" in out) is coloured, out
        assert b"xapp1" in out


def test_drain_enable_survive_restart(three, procs, tmp_path):
    _, bal = three
    res = lbctl(bal.mgmt_url, "drain", "xapp1")
    assert res.returncode == 0, res.stderr
    assert res.stdout == "node xapp1 drained\n"
    assert lbctl(bal.mgmt_url, "drain", "xapp1").stdout == "node xapp1 drained (no change)\n"
    counts = ask_many(bal.port, 400)
    assert "xapp1" not in counts and sum(counts.values()) == 400
    row = next(ln for ln in lbctl(bal.mgmt_url, "status").stdout.splitlines() if ln.strip().startswith("xapp1"))
    assert row.split()[1] == "drained" and row.endswith("drained by admin")
    assert json.loads((tmp_path / "lbserver.state").read_text())["drained"] == ["xapp1"]
    node = bal.status()["nodes"]["xapp1"]
    assert node["drained"] and node["health"] == "drained" and node["weight"] > 0  # still polled, just not chosen

    # same config, same state file: still drained after a restart
    stop(bal.proc)
    bal.proc = procs.start(python_cmd("lbserver", "-f", "-c", str(bal.config)))
    wait_for_port("127.0.0.1", bal.port, timeout=20, proc=bal.proc)
    wait_for_port("127.0.0.1", bal.mgmt_port, timeout=20, proc=bal.proc)
    assert bal.status()["nodes"]["xapp1"]["drained"] is True
    counts = ask_many(bal.port, 400)
    assert "xapp1" not in counts

    res = lbctl(bal.mgmt_url, "enable", "xapp1")
    assert res.returncode == 0 and res.stdout == "node xapp1 enabled\n", res.stderr
    assert ask_many(bal.port, 400)["xapp1"] > 100  # the least loaded node takes most terminals again
    assert json.loads((tmp_path / "lbserver.state").read_text())["drained"] == []

    res = lbctl(bal.mgmt_url, "drain", "nope")
    assert res.returncode == 1
    assert "404" in res.stderr and "no such node: nope" in res.stderr


def test_reload_refuses_a_broken_config_and_applies_a_good_one(three, procs, tmp_path):
    _, bal = three
    original = bal.config.read_text()
    lines = original.splitlines()
    at = next(i for i, ln in enumerate(lines) if "<rules>" in ln) + 1
    lines.insert(at, '    <variable name="LOADAVG" weight="0" capacity="1"/>')
    bal.config.write_text("\n".join(lines) + "\n")
    res = lbctl(bal.mgmt_url, "reload")
    assert res.returncode == 1
    assert "reload refused, configuration kept" in res.stderr
    assert f"{bal.config}:{at + 1}: <variable> attribute weight='0'" in res.stderr, res.stderr
    # still serving with the running configuration
    assert set(ask_many(bal.port, 30)) <= {"xapp1", "xapp2", "xapp3"}
    assert lbctl(bal.mgmt_url, "status").returncode == 0

    extra = start_agent(procs, tmp_path, "xapp4", "127.0.0.6", 0)
    bal.config.write_text(original.replace("</group>", f'  <node name="xapp4" address="{extra.url}"/>\n    </group>', 1))
    res = lbctl(bal.mgmt_url, "reload")
    assert res.returncode == 0, res.stderr
    assert res.stdout == f"reloading {bal.config}\n"
    bal.wait_health("xapp4", "up")


def test_unreachable_service_exits_2(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    for args in (("status",), ("drain", "xapp1"), ("reload",)):
        res = lbctl(url, *args)
        assert res.returncode == 2, (args, res.stderr)
        assert res.stdout == ""
        assert re.match(rf"lbctl: cannot reach the management service at {re.escape(url)}/\S*: .*refused", res.stderr)
        assert "is lbserver running?" in res.stderr
    usage = lbctl(url, "drain")
    assert usage.returncode == 2 and "drain needs a NODE" in usage.stderr
