"""The ltsp-cluster balancer's lbsconfig.xml, as deployed in the field, loads and runs; every weight is explained."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from lbserver import config as configmod
from lbserver.config import loader
from lbserver.config.expr import Expr
from tests.support.cluster import Balancer, lbctl, start_agent
from tests.support import ROOT, free_port, python_cmd, wait_for_port, wait_until

# The form published in LTSP cluster tutorials (only the addresses are this machine's).
LEGACY = """<?xml version="1.0"?>
<lbsconfig>
  <lbservice listen="{listen}" max-threads="2" refresh-delay="{refresh}" returns="$NAME"/>
  <lbslave is-slave="false"/>
  <mgmtservice enabled="true" listen="127.0.0.1:{mgmt}" state-file="{tmp}/lbserver.state"/>
  <nodes>
    <group default="true" name="PROD">
{nodes}
    </group>
  </nodes>
  <rules>
    <variable name="LOADAVG" weight="50"><rule capacity=".7"/></variable>
    <variable name="NBX11SESS" weight="25">
      <rule capacity="$CPUFREQ*$CPUCOUNT*$CPUCOUNT/120" critical="$CPUFREQ*$CPUCOUNT*$CPUCOUNT/100"/>
    </variable>
    <variable name="MEMUSED" weight="25"><rule capacity="$MEMTOTAL-100000"/></variable>
    {extra}
  </rules>
</lbsconfig>
"""


def write(tmp: Path, listen: str, nodes: str = '<node address="http://127.0.0.2:8001" name="xapp1"/>',
          refresh: str = "60", extra: str = "", mgmt: int = 8009) -> Path:
    path = tmp / "lbsconfig.xml"
    path.write_text(LEGACY.format(listen=listen, refresh=refresh, mgmt=mgmt, tmp=tmp, nodes=nodes, extra=extra))
    return path


@pytest.mark.unit
def test_the_legacy_form_loads(tmp_path, caplog):
    cfg = configmod.load(str(write(tmp_path, "*:8008", refresh="0.5")))
    assert cfg.listen == ("0.0.0.0", 8008)                      # *:PORT is every address
    assert cfg.poll.interval == 0.5 and cfg.poll.timeout == 0.25  # refresh-delay, and a timeout that fits it
    loadavg, sessions, mem = cfg.rules
    assert loadavg.capacity == 0.7 and loadavg.kb_memory
    assert isinstance(sessions.capacity, Expr) and sessions.capacity.names() == {"CPUFREQ", "NBPROC"}
    assert mem.capacity.names() == {"MEMTOTAL"}
    assert "rule variable NBX11SESS is not a built-in" in caplog.text
    off = tmp_path / "off.xml"
    off.write_text(write(tmp_path, "*:8008").read_text().replace('enabled="true"', 'enabled="false"'))
    assert configmod.load(str(off)).mgmt_listen is None


@pytest.mark.parametrize("rule, message", [
    ('<variable name="X" weight="1"><rule capacity="$CPUFREQ*"/></variable>',
     "capacity='$CPUFREQ*': unexpected end of expression at column 10"),
    ('<variable name="X" weight="1"><rule capacity="CPUFREQ"/></variable>', "(variables are written $NAME)"),
    ('<variable name="X" weight="1"><rule critical="2"/></variable>', "needs a capacity"),
    ('<variable name="X" weight="1" capacity="2"><rule capacity="3"/></variable>', "not both"),
    ('<variable name="X" weight="1" capacity="4-4"/>', "must be greater than 0"),
    ('<variable name="X" weight="1" capacity="1/(2-2)"/>', "division by zero"),
])
@pytest.mark.unit
def test_bad_expressions_are_located(tmp_path, rule, message):
    path = write(tmp_path, "127.0.0.1:8008", extra=rule)
    with pytest.raises(configmod.ConfigError) as info:
        configmod.load(str(path))
    assert info.value.line == 17 and message in str(info.value), str(info.value)


@pytest.mark.daemon
def test_the_old_default_path_is_read_when_the_new_one_is_absent(tmp_path, monkeypatch):
    new, old = tmp_path / "mille-xterm" / "lbsconfig.xml", tmp_path / "ltsp" / "lbsconfig.xml"
    monkeypatch.setattr(loader, "DEFAULT_PATH", str(new))
    monkeypatch.setattr(loader, "LEGACY_PATH", str(old))
    assert loader.default_path() == str(new)  # neither: the new one, whose absence the error names
    old.parent.mkdir()
    old.write_text("<lbsconfig/>")
    assert loader.default_path() == str(old)  # only the old one
    new.parent.mkdir()
    new.write_text("<lbsconfig/>")
    assert loader.default_path() == str(new)  # both: the new one wins
    out = subprocess.run(python_cmd("lbserver", "--help"), capture_output=True, text=True, env={"PYTHONPATH": str(ROOT)})
    assert "/etc/ltsp/lbsconfig.xml" in out.stdout


def _rule(status_node: dict, name: str) -> dict:
    return next(r for r in status_node["rules"] if r["name"] == name)


@pytest.mark.daemon
def test_a_legacy_file_runs_against_real_agents_and_explains_every_weight(procs, tmp_path):
    sessions = {"xapp1": 3, "xapp2": 100000}  # xapp2 is far over its expression critical
    agents = [start_agent(procs, tmp_path, name, f"127.0.0.{i + 2}", 0,
                          extra=f'<variable name="NBX11SESS" type="constant" value="{n}"/>')
              for i, (name, n) in enumerate(sessions.items())]
    nodes = "\n".join(f'      <node address="{a.url}" name="{a.name}"/>' for a in agents)
    port, mgmt = free_port(), free_port()
    path = write(tmp_path, f"127.0.0.1:{port}", nodes, refresh="0.5",
                 extra='<variable name="NBX11SES" weight="5" capacity="10"/>', mgmt=mgmt)
    bal = Balancer(path, port, mgmt)
    bal.proc = procs.start(python_cmd("lbserver", "-f", "-c", str(path)))
    wait_for_port("127.0.0.1", port, timeout=20, proc=bal.proc)
    # The typo'd NBX11SES makes every node unhealthy, and is named in /status and the log.
    status = wait_until(lambda: (s := bal.status())["unreported_variables"] and s, 15, what="typo named")
    assert status["unreported_variables"] == ["NBX11SES"]

    path.write_text(path.read_text().replace('<variable name="NBX11SES" weight="5" capacity="10"/>', ""))
    bal.proc.send_signal(1)  # SIGHUP: the fixed file
    status = bal.wait_health("xapp1", "up")
    assert status["unreported_variables"] == []

    one = status["nodes"]["xapp1"]
    v = one["variables"]
    cap = v["CPUFREQ"] * v["NBPROC"] * v["NBPROC"] / 120
    assert _rule(one, "NBX11SESS") == {"name": "NBX11SESS", "value": 3, "capacity": pytest.approx(cap, abs=1e-3),
                                       "critical": pytest.approx(cap * 120 / 100, abs=1e-3),
                                       "contribution": pytest.approx(25 * max(0, 1 - 3 / cap), abs=1e-3)}
    mem = _rule(one, "MEMUSED")  # kB, as the ltsp-cluster agent reported it
    assert mem["value"] == pytest.approx(v["MEMUSED"] * 1024, abs=1e-3)
    assert mem["capacity"] == pytest.approx(v["MEMTOTAL"] * 1024 - 100000, abs=1e-3)
    load = _rule(one, "LOADAVG")
    assert load["capacity"] == 0.7 and load["value"] == pytest.approx(v["LOADAVG"], abs=1e-3)
    total = sum(r["contribution"] for r in one["rules"])
    assert total == pytest.approx(25 * max(0, 1 - 3 / cap) + 50 * max(0, 1 - v["LOADAVG"] / 0.7)
                                  + 25 * max(0, min(1, 1 - mem["value"] / mem["capacity"])), abs=1e-2)
    assert one["weight"] == pytest.approx(one["size"] * total, rel=1e-3, abs=1e-2)

    two = status["nodes"]["xapp2"]
    assert two["health"] == "unhealthy" and "NBX11SESS 1e+05 >= critical" in two["why"]
    assert _rule(two, "NBX11SESS")["problem"] == "at or over critical"
    assert {bal.ask() for _ in range(20)} == {"xapp1"}

    ctl = lbctl(bal.mgmt_url, "status", "xapp1")
    assert ctl.returncode == 0, ctl.stderr
    lines = ctl.stdout.splitlines()
    assert lines[0] == "node xapp1: up"
    assert any(line.split()[:1] == ["NBX11SESS"] and f"{cap:.4g}" in line for line in lines), ctl.stdout
    bal.proc.terminate()
    bal.proc.wait(timeout=10)
    log = bal.proc.stderr.read()
    assert log.count("rule variable NBX11SES is reported by no agent") == 1
