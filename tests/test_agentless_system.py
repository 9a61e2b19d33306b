"""Agentless nodes with the real parts: Debian's prometheus-node-exporter and prometheus, and a real lbserver.

Exporters listen on 127.0.0.N, Prometheus on 127.0.0.1 scrapes only them (and
the tests' own loopback page); nothing contacts anything off loopback.
"""

from __future__ import annotations

import json
import os
import socket
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from tests.support import Procs, free_port, python_cmd, wait_for_port, wait_until
from tests.support.agentless import (ExpositionServer, exposition_with_timestamps, start_exporter,
                                     start_prometheus)
from tests.support.cluster import Balancer, ask_many, start_agent, stop

pytestmark = pytest.mark.system

POLL = 'interval="0.5" timeout="0.4" rise="2" fall="3"'


def _balancer(procs: Procs, tmp: Path, groups: str, rules: str, extra: str = "", log: Path | None = None) -> Balancer:
    """A real lbserver over ``groups`` with ``rules``; its log (stderr) written to ``log`` when given."""
    bal = Balancer(tmp / "lbsconfig.xml", free_port(), free_port())
    bal.config.write_text(f"""<?xml version="1.0"?>
<lbsconfig>
  <lbservice listen="127.0.0.1:{bal.port}" returns="$NAME"/>
  <mgmtservice listen="127.0.0.1:{bal.mgmt_port}" state-file="{tmp}/lbserver.state"/>
  <poll {POLL}/>
  <nodes>
{groups}
  </nodes>
  {extra}
  <rules>
{rules}
  </rules>
</lbsconfig>
""")
    if log is not None:
        with log.open("w") as out:  # the child keeps its own copy of the descriptor
            bal.proc = procs.start(python_cmd("lbserver", "-f", "-c", str(bal.config)), stderr=out)
    else:
        bal.proc = procs.start(python_cmd("lbserver", "-f", "-c", str(bal.config)))
    wait_for_port("127.0.0.1", bal.port, timeout=20, proc=bal.proc)
    wait_for_port("127.0.0.1", bal.mgmt_port, timeout=20, proc=bal.proc)
    return bal


def _sessions(n: int) -> str:
    return f"# HELP mille_xterm_nbsessions Login sessions.\n# TYPE mille_xterm_nbsessions gauge\nmille_xterm_nbsessions {n}\n"


def _failures_when_down(bal: Balancer, node: str) -> int:
    """Watch ``node`` until it is down; the failed polls in a row it had when it was last seen up."""
    seen = 0

    def down() -> bool:
        nonlocal seen
        n = bal.status()["nodes"][node]
        if n["up"]:
            seen = max(seen, n["consecutive_failures"])
        return not n["up"]

    wait_until(down, timeout=20, interval=0.05, what=f"{node} down")
    return seen


def test_node_exporters_are_weighed_go_down_after_fall_and_back_after_rise(procs, tmp_path):
    exporters = [start_exporter(procs, tmp_path, f"127.0.0.{i}") for i in (21, 22, 23)]
    for e, sessions in zip(exporters, (0, 5, 9)):
        e.write_textfile("sessions", _sessions(sessions))
    nodes = "\n".join(f'      <node name="ne{i}" address="{e.url}" source="node-exporter"/>'
                      for i, e in enumerate(exporters))
    bal = _balancer(procs, tmp_path, f'    <group name="A" default="true">\n{nodes}\n    </group>',
                    '    <variable name="NBSESSIONS" weight="100" capacity="10"/>')
    status = wait_until(lambda: (s := bal.status()) and all(n["healthy"] for n in s["nodes"].values()) and s,
                        timeout=20, what="three healthy node_exporter nodes")
    v = status["nodes"]["ne0"]["variables"]
    # The same figures, in the same units, as the agent reads them on this host.
    assert v["NBPROC"] == os.cpu_count()
    assert abs(v["MEMTOTAL"] - psutil.virtual_memory().total // 2**20) <= 1
    assert 0 < v["UPTIME"] and abs(v["UPTIME"] - (time.time() - psutil.boot_time())) < 30
    assert abs(v["DISKUSEDPCT"] - psutil.disk_usage("/").percent) < 1
    assert v["DRAINED"] is False and 0 <= v["CPUUSED"] <= 100
    weights = [status["nodes"][f"ne{i}"]["weight"] for i in range(3)]
    assert weights[0] > weights[1] > weights[2] > 0, weights       # 0, 5 and 9 sessions of 10
    assert [r["value"] for r in status["nodes"]["ne1"]["rules"]] == [5]
    answers = ask_many(bal.port, 60)
    assert answers["ne0"] > answers["ne2"]

    stop(exporters[1].proc)
    assert _failures_when_down(bal, "ne1") == 2                   # up through 2 failed polls, down at the 3rd
    assert "connection refused" in bal.status()["nodes"]["ne1"]["error"]
    assert "ne1" not in ask_many(bal.port, 30)
    assert all(bal.status()["nodes"][n]["up"] for n in ("ne0", "ne2"))   # the rest of the group still served

    exporters[1].proc = procs.start([exporters[1].proc.args[0], *exporters[1].proc.args[1:]])
    wait_for_port(exporters[1].ip, exporters[1].port, proc=exporters[1].proc)
    back = wait_until(lambda: (n := bal.status()["nodes"]["ne1"])["up"] and n, timeout=20, what="ne1 back")
    assert back["consecutive_failures"] == 0


def test_a_drain_written_by_the_textfile_collector_is_honoured(procs, tmp_path):
    exporters = [start_exporter(procs, tmp_path, f"127.0.0.{i}") for i in (24, 25)]
    nodes = "\n".join(f'      <node name="ne{i}" address="{e.url}" source="node-exporter"/>'
                      for i, e in enumerate(exporters))
    bal = _balancer(procs, tmp_path, f'    <group name="A" default="true">\n{nodes}\n    </group>',
                    '    <variable name="LOADAVG" weight="100" capacity="1000"/>')
    wait_until(lambda: all(n["healthy"] for n in bal.status()["nodes"].values()), timeout=20, what="healthy")
    exporters[0].write_textfile("drain", 'mille_xterm_drained{reason="kernel update"} 1\n')
    node = wait_until(lambda: (n := bal.status()["nodes"]["ne0"])["drained"] and n, timeout=20, what="drained")
    assert node["drained_by"] == ["agent"] and "drained at the source: kernel update" in node["why"]
    assert set(ask_many(bal.port, 30)) == {"ne1"}
    enable = urllib.request.Request(bal.mgmt_url + "/nodes/ne0/enable", method="POST")
    with urllib.request.urlopen(enable, timeout=5) as resp:     # an admin enable does not undo it: it says how
        assert "removing the server's mille_xterm_drained textfile ends that" in json.load(resp)["message"]
    assert bal.status()["nodes"]["ne0"]["drained"]
    exporters[0].remove_textfile("drain")
    wait_until(lambda: not bal.status()["nodes"]["ne0"]["drained"], timeout=20, what="enabled again")


def test_a_prometheus_group_discovers_weighs_drains_and_runs_promql_rules(procs, tmp_path):
    exporters = [start_exporter(procs, tmp_path, f"127.0.0.{i}") for i in (26, 27, 28)]
    for e, gpu in zip(exporters, (10, 40, 90)):
        e.write_textfile("gpu", f"site_gpu_used_percent {gpu}\n")
    prom = start_prometheus(procs, tmp_path, [e.instance for e in exporters])
    wait_until(lambda: len([r for r in prom.query('up{job="node"}') if r["value"][1] == "1"]) == 3, timeout=30,
               what="prometheus scraping the three exporters")
    group = f'    <group name="P" default="true" prometheus="{prom.url}" discover=\'up{{job="node"}}\'/>'
    bal = _balancer(procs, tmp_path, group,
                    '    <variable name="GPUUSED" weight="100" capacity="100" critical="80"/>',
                    extra='<variables><variable name="GPUUSED" promql="max by (instance) (site_gpu_used_percent)"/>'
                          '</variables>')
    names = {e.ip: e for e in exporters}
    status = wait_until(lambda: (s := bal.status()) and len(s["nodes"]) == 3
                        and sum(n["up"] for n in s["nodes"].values()) == 3 and s, timeout=30, what="three nodes")
    assert set(status["nodes"]) == set(names)                        # named by the host of their instance
    assert status["groups"]["P"]["nodes"] == sorted(names)
    first = status["nodes"]["127.0.0.26"]
    assert first["variables"]["GPUUSED"] == 10 and first["variables"]["NBPROC"] == os.cpu_count()
    assert abs(first["variables"]["MEMTOTAL"] - psutil.virtual_memory().total // 2**20) <= 1
    assert first["address"] == f"http://{exporters[0].instance}"
    assert not status["nodes"]["127.0.0.28"]["healthy"]            # GPUUSED 90, critical 80
    assert status["nodes"]["127.0.0.26"]["weight"] > status["nodes"]["127.0.0.27"]["weight"] > 0
    assert set(ask_many(bal.port, 40)) <= {"127.0.0.26", "127.0.0.27"}

    exporters[1].write_textfile("drain", 'mille_xterm_drained{reason="disk swap"} 1\n')
    node = wait_until(lambda: (n := bal.status()["nodes"]["127.0.0.27"])["drained"] and n, timeout=30,
                      what="drain through prometheus")
    assert "disk swap" in node["why"]

    stop(exporters[0].proc)
    down = wait_until(lambda: not (n := bal.status()["nodes"]["127.0.0.26"])["up"] and n, timeout=30,
                      what="a stopped exporter's node down")
    assert "127.0.0.26" in down["error"] and "in Prometheus" in down["error"]


def test_a_stale_sample_in_prometheus_fails_the_poll(procs, tmp_path):
    """Samples Prometheus still returns (its five-minute look-back) but older than fall x interval."""
    figures = {"node_load1": 0.1, "node_load5": 0.1, "node_load15": 0.1, "node_memory_MemTotal_bytes": 2**33,
               "node_memory_MemAvailable_bytes": 2**32, "node_memory_SwapTotal_bytes": 0,
               "node_memory_SwapFree_bytes": 0, 'node_filesystem_size_bytes{mountpoint="/"}': 100,
               'node_filesystem_free_bytes{mountpoint="/"}': 50, 'node_filesystem_avail_bytes{mountpoint="/"}': 50,
               "node_boot_time_seconds": 1000, "node_time_seconds": 2000,
               'node_cpu_seconds_total{cpu="0",mode="idle"}': 10, 'node_cpu_seconds_total{cpu="0",mode="user"}': 5}
    old = time.time() - 60
    page = ExpositionServer(lambda: exposition_with_timestamps({"127.0.0.41:9100": figures}, old)
                            + exposition_with_timestamps({"127.0.0.42:9100": figures}))
    try:
        prom = start_prometheus(procs, tmp_path, [], jobs={"pushed": [f"127.0.0.1:{page.port}"]})
        wait_until(lambda: len(prom.query("node_load1")) == 2, timeout=30, what="both instances in prometheus")
        group = (f'    <group name="P" default="true" prometheus="{prom.url}">\n'
                 '      <node instance="127.0.0.41:9100" name="old"/>\n'
                 '      <node instance="127.0.0.42:9100" name="fresh"/>\n    </group>')
        bal = _balancer(procs, tmp_path, group, '    <variable name="LOADAVG" weight="100" capacity="10"/>')
        status = wait_until(lambda: (s := bal.status())["nodes"].get("fresh", {}).get("healthy") and s,
                            timeout=30, what="the fresh node healthy")
        stale = status["nodes"]["old"]
        assert not stale["up"] and "stale sample" in stale["error"] and "s old in Prometheus" in stale["error"]
        assert set(ask_many(bal.port, 20)) == {"fresh"}
    finally:
        page.close()


def _haproxy_answer(port: int, node: str) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(node.encode() + b"\n")
        return s.makefile().readline().strip()


def test_agent_node_exporter_and_prometheus_nodes_mix_in_one_group(procs, tmp_path):
    agent = start_agent(procs, tmp_path, "agent", "127.0.0.31")
    scraped = start_exporter(procs, tmp_path, "127.0.0.32")
    via_prom = start_exporter(procs, tmp_path, "127.0.0.33")
    prom = start_prometheus(procs, tmp_path, [via_prom.instance])
    wait_until(lambda: [r for r in prom.query('up{job="node"}') if r["value"][1] == "1"], timeout=30,
               what="prometheus scraping")
    haproxy_port = free_port()
    group = (f'    <group name="MIX" default="true" prometheus="{prom.url}" discover=\'up{{job="node"}}\'>\n'
             f'      <node name="agent" address="{agent.url}"/>\n'
             f'      <node name="scraped" address="{scraped.url}" source="node-exporter"/>\n    </group>')
    bal = _balancer(procs, tmp_path, group, '    <variable name="MEMUSEDPCT" weight="100" capacity="100"/>',
                    extra=f'<haproxy-agent listen="127.0.0.1:{haproxy_port}"/>')
    names = {"agent", "scraped", "127.0.0.33"}
    status = wait_until(lambda: (s := bal.status()) and set(s["nodes"]) == names
                        and all(n["healthy"] for n in s["nodes"].values()) and s, timeout=30, what="three kinds")
    assert status["groups"]["MIX"]["nodes"] == ["agent", "scraped", "127.0.0.33"]
    mem = {n: status["nodes"][n]["variables"]["MEMUSEDPCT"] for n in names}
    assert max(mem.values()) - min(mem.values()) < 5, mem             # one host, three sources, one figure
    for n in names:
        rules = status["nodes"][n]["rules"]
        assert [r["name"] for r in rules] == ["MEMUSEDPCT"] and rules[0]["contribution"] > 0
        assert _haproxy_answer(haproxy_port, n).startswith("up ready ")
    assert set(ask_many(bal.port, 60)) == names
    with urllib.request.urlopen(urllib.request.Request(bal.mgmt_url + "/nodes/127.0.0.33/drain", method="POST"),
                                timeout=5) as resp:
        assert resp.status == 200
    assert _haproxy_answer(haproxy_port, "127.0.0.33") == "up drain #drained by admin"
    assert "127.0.0.33" not in ask_many(bal.port, 30)


def test_a_promql_variable_prometheus_refuses_is_left_out_and_named_once(procs, tmp_path):
    exporter = start_exporter(procs, tmp_path, "127.0.0.34")
    prom = start_prometheus(procs, tmp_path, [exporter.instance])
    wait_until(lambda: prom.query('up{job="node"}'), timeout=30, what="prometheus scraping")
    log = tmp_path / "lbserver.log"
    bal = _balancer(procs, tmp_path,
                    f'    <group name="P" default="true" prometheus="{prom.url}" discover=\'up{{job="node"}}\'/>',
                    '    <variable name="LOADAVG" weight="100" capacity="1000"/>',
                    extra='<variables><variable name="BROKEN" promql="max by (instance) ("/></variables>', log=log)
    node = wait_until(lambda: (n := bal.status()["nodes"].get("127.0.0.34")) and n["healthy"] and n, timeout=30,
                      what="the node healthy without its broken variable")
    assert "BROKEN" not in node["variables"] and "LOADAVG" in node["variables"]
    wait_until(lambda: bal.status()["last_poll"]["started"] > node["last_success"] + 1, timeout=10, what="more polls")
    said = [line for line in log.read_text().splitlines() if "BROKEN" in line]
    assert len(said) == 1, said                                  # once, not at every poll
    assert "variable BROKEN of group P left out: group P: Prometheus http://127.0.0.1:" in said[0]
    assert "HTTP 400: bad_data:" in said[0]
