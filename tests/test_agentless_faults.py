"""Agentless sources that misbehave: a real lbserver against unreachable, slow, failing and flooding servers.

Every bad source costs at most the poll timeout and its byte bound, its
problem is named (the node, or the group) on the status page, and the rest of
the cluster, a real lbagent here, is served all along.
"""

from __future__ import annotations

import json
import time

import psutil
import pytest

from tests.support import ROOT, free_port, python_cmd, wait_for_port, wait_until
from tests.support.agentless import ExpositionServer
from tests.support.cluster import Balancer, ask_many, start_agent

pytestmark = pytest.mark.daemon

PAGE = (ROOT / "tests" / "support" / "node_exporter_page.txt").read_bytes()


def _vector(n: int) -> bytes:
    return json.dumps({"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": {"__name__": "up", "instance": f"10.{i // 65536}.{i // 256 % 256}.{i % 256}:9100"},
         "value": [time.time(), "1"]} for i in range(n)]}}).encode()


def test_bad_agentless_sources_are_named_bounded_and_the_rest_is_served(procs, tmp_path):
    agent = start_agent(procs, tmp_path, "good", "127.0.0.51")
    good_page = ExpositionServer(PAGE)
    garbage = ExpositionServer(b"\x00\xff<html>" * 1000)
    huge = ExpositionServer(PAGE * 60)                                       # 3.4 MB, over max-reply-bytes
    missing = ExpositionServer(b"\n".join(l for l in PAGE.split(b"\n") if not l.startswith(b"node_load1 ")))
    slow_page = ExpositionServer(PAGE)
    slow_page.delay = 5.0
    slow_prom = ExpositionServer(_vector(1), ip="127.0.0.52")
    slow_prom.delay = 5.0
    failing_prom = ExpositionServer(b'{"status":"error","errorType":"bad_data","error":"1:5: parse error: '
                                    b'unexpected right brace"}', ip="127.0.0.53")
    failing_prom.status = 400
    flood_prom = ExpositionServer(_vector(5000), ip="127.0.0.54")
    servers = [good_page, garbage, huge, missing, slow_page, slow_prom, failing_prom, flood_prom]
    dead = free_port("127.0.0.55")
    try:
        bal = Balancer(tmp_path / "lbsconfig.xml", free_port(), free_port())

        def ne(name, srv):
            return f'<node name="{name}" address="{srv.url}/metrics" source="node-exporter"/>'
        bal.config.write_text(f"""<?xml version="1.0"?>
<lbsconfig>
  <lbservice listen="127.0.0.1:{bal.port}" returns="$NAME"/>
  <mgmtservice listen="127.0.0.1:{bal.mgmt_port}" state-file="{tmp_path}/lbserver.state"/>
  <poll interval="1" timeout="0.5" rise="1" fall="1"/>
  <nodes>
    <group name="A" default="true">
      <node name="good" address="{agent.url}"/>
      {ne("page", good_page)} {ne("garbage", garbage)} {ne("huge", huge)} {ne("missing", missing)}
      {ne("slow", slow_page)}
    </group>
    <group name="DEAD" prometheus="http://127.0.0.55:{dead}" discover="up"/>
    <group name="SLOW" prometheus="{slow_prom.url}" discover="up"/>
    <group name="FAILING" prometheus="{failing_prom.url}" discover="up"/>
    <group name="FLOOD" prometheus="{flood_prom.url}" discover="up" max-series="1000"/>
  </nodes>
  <rules><variable name="LOADAVG" weight="100" capacity="1000"/></rules>
</lbsconfig>
""")
        bal.proc = procs.start(python_cmd("lbserver", "-f", "-c", str(bal.config)))
        wait_for_port("127.0.0.1", bal.mgmt_port, timeout=20, proc=bal.proc)
        status = wait_until(lambda: (s := bal.status())["last_poll"] and len(
            [g for g in s["groups"].values() if g["error"]]) == 4 and s["nodes"]["good"]["up"] and s,
            timeout=20, what="a cycle with every group's verdict")
        nodes, groups = status["nodes"], status["groups"]
        assert nodes["good"]["healthy"] and nodes["page"]["healthy"]          # the rest of the cluster
        assert nodes["garbage"]["error"].startswith("node_exporter page: no node_cpu_seconds_total")
        assert nodes["huge"]["error"] == "reply larger than 1048576 bytes"
        assert nodes["missing"]["error"] == ("node_exporter page: no node_load1 on the page (needed for LOADAVG; "
                                             "is its collector enabled?)")
        assert nodes["slow"]["error"] == "no answer within 0.5 s"
        assert groups["DEAD"]["error"].startswith(f"group DEAD: Prometheus http://127.0.0.55:{dead}: ")
        assert "connection refused (Prometheus not running?)" in groups["DEAD"]["error"]
        assert groups["SLOW"]["error"].endswith("discover query: no answer within 0.5 s")
        assert groups["FAILING"]["error"].endswith("discover query: HTTP 400: bad_data: 1:5: parse error: "
                                                   "unexpected right brace")
        assert groups["FLOOD"]["error"].endswith("discover query: the query gives 5000 series (more than 1000: see "
                                                 "max-series)")
        assert status["last_poll"]["duration"] < 1.0                          # every bad source within its timeout
        assert set(ask_many(bal.port, 40)) <= {"good", "page"}                 # never a bad source's node
        rss = psutil.Process(bal.proc.pid).memory_info().rss
        assert rss < 200 * 2**20, rss                                         # the flood and the huge page not kept
        assert bal.proc.poll() is None
    finally:
        for s in servers:
            s.close()
