"""Agentless scale: 1,000 node_exporter pages scraped, and 10,000 nodes read through one Prometheus.

    .venv/bin/python -m bench.bench_agentless [--case node-exporter|prometheus|both] [--exporters 1000]
                                              [--prometheus-nodes 10000] [--cycles 5]

node-exporter: a real node_exporter page (tests/support/node_exporter_page.txt,
Debian 12's node_exporter 1.5, every default collector: 57 KB) is served by
1,000 loopback endpoints (bench/agent_replicas.py, 127.10.x.y:9100, each answer
with a new node_time_seconds, as a real exporter's: nothing can be reused); a real
lbserver scrapes them as ``source="node-exporter"`` nodes. The reference, in
the same run, is a bare asyncio client fetching the same pages with the same
requests, without parsing them.

prometheus: one loopback page carries the node_exporter metrics the built-ins
need for 10,000 ``instance`` labels, with new figures at every scrape; Debian's prometheus scrapes it
(``honor_labels: true``) and a real lbserver reads a ``prometheus`` group
discovering those 10,000 nodes. The reference, in the same run, is a bare
asyncio client making the same instant queries (discover and one per
variable, all at once) and reading the answers without parsing them.

Figures: the balancer's mean poll cycle (its own histogram), the ratio to the
reference, its CPU time per cycle and its resident memory. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.parse
import statistics
import urllib.request
from pathlib import Path

from bench.support import (ROOT, child_env, cycle_window, free_port, poll_histogram, proc_rss_mib, replica_address,
                           status, wait_for_port, wait_until)
from lbserver.config import Node
from lbserver.core.agentless import promgroup
from lbserver.core.agentless.promapi import Server
from lbserver.core.agentless.scrape import build_request
from tests.support.agentless import ExpositionServer, prometheus_yml

PAGE = ROOT / "tests" / "support" / "node_exporter_page.txt"
EXPORTER_PORT = 9100


async def bare_cycle(targets: list[tuple[str, int, bytes]], timeout: float, concurrency: int = 512) -> float:
    """Seconds for a bare asyncio client to send each request and read each whole answer."""
    sem = asyncio.Semaphore(concurrency)

    async def one(host: str, port: int, request: bytes) -> None:
        async with sem:
            r, w = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
            w.write(request)
            await asyncio.wait_for(r.read(), timeout)
            w.close()

    start = time.perf_counter()
    await asyncio.gather(*(one(*t) for t in targets))
    return time.perf_counter() - start


def bare_cycles(targets: list[tuple[str, int, bytes]], timeout: float, count: int = 5) -> list[float]:
    """``count`` bare cycles, one after the other. Taken both before and after lbserver's cycles, their median
    is the reference: the machine's pace drifts within a run, and a reference taken on one side only moves
    the ratio more than the balancer does."""
    return [asyncio.run(bare_cycle(targets, timeout)) for _ in range(count)]


def measure(config: str, tmp: str, env: dict, interval: float, cycles: int, settle: float = 0.0) -> dict:
    """Start lbserver on ``config`` and measure ``cycles`` poll cycles: mean, CPU per cycle, RSS, failures."""
    path = os.path.join(tmp, "lbsconfig.xml")
    mgmt = free_port()
    Path(path).write_text(config.replace("MGMT_PORT", str(mgmt)).replace("LB_PORT", str(free_port())))
    lb = subprocess.Popen([sys.executable, "-m", "lbserver", "-f", "-c", path], env=env, stderr=subprocess.DEVNULL)
    try:
        wait_for_port("127.0.0.1", mgmt, lb, timeout=60)
        deadline = time.monotonic() + 120
        while poll_histogram(mgmt)[0] < 2 and time.monotonic() < deadline:  # past the first (cold) cycles
            time.sleep(0.2)
        time.sleep(settle)
        # Nothing talks to the balancer meanwhile (a /status of 10,000 nodes would cost more than a cycle).
        window = cycle_window(mgmt, lb.pid, interval, cycles)
        doc = status(mgmt)
        return {**window, "rss": proc_rss_mib(lb.pid), "failed": doc["last_poll"]["failed"],
                "polled": doc["last_poll"]["polled"], "errors": [g["error"] for g in doc["groups"].values()
                                                                  if g.get("error")]}
    finally:
        lb.terminate()
        lb.wait()


SERVER = """<lbsconfig>
  <lbservice listen="127.0.0.1:LB_PORT"/>
  <mgmtservice listen="127.0.0.1:MGMT_PORT" state-file="{tmp}/state"/>
  <poll interval="{interval}" timeout="{timeout}" rise="1" fall="2"/>
  <nodes>{groups}</nodes>
  <rules><variable name="LOADAVG" weight="50" capacity="1" per-cpu="true"/>
         <variable name="MEMUSEDPCT" weight="50" capacity="90"/></rules>
</lbsconfig>"""


def node_exporter_case(tmp: str, env: dict, count: int, cycles: int) -> None:
    replicas = subprocess.Popen([sys.executable, "-m", "bench.agent_replicas", "--reply", str(PAGE),
                                 "--count", str(count), "--port", str(EXPORTER_PORT), "--fresh"],
                                stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert replicas.stdout.readline().strip() == "ready"
        nodes = [Node(name=f"n{i}", address=f"http://{replica_address(i)}:{EXPORTER_PORT}/metrics",
                      host=replica_address(i), port=EXPORTER_PORT, source="node-exporter") for i in range(count)]
        targets = [(n.host, n.port, build_request(n)) for n in nodes]
        before = bare_cycles(targets, 10.0)
        members = "".join(f'<node name="{n.name}" address="{n.address}" source="node-exporter"/>' for n in nodes)
        interval, timeout = 4.0, 2.0
        r = measure(SERVER.format(tmp=tmp, interval=interval, timeout=timeout,
                                  groups=f'<group name="ALL" default="true">{members}</group>'),
                    tmp, env, interval, cycles)
        floor = statistics.median(before + bare_cycles(targets, 10.0))
        verdict = "ok" if r["mean"] <= 1.5 * floor else "MISSED"
        print(f"{count} node_exporter pages ({PAGE.stat().st_size // 1024} KB each)".ljust(44)
              + f" {r['mean']:>7.3f} s {floor:>7.3f} s {r['mean'] / floor:>5.2f}x {r['cpu_per_cycle']:>8.3f} s"
              + f" {r['rss']:>7.1f} MiB {r['failed']:>4}/{r['polled']}  <= 1.5x {verdict}")
    finally:
        replicas.terminate()
        replicas.wait()


def fleet_page(count: int, turn: int = 0) -> bytes:
    """The node_exporter metrics the built-ins need, for ``count`` instances 10.x.y.z:9100, on one page.

    ``turn`` changes the loads and the free memory, as between two real scrapes.
    """
    lines = []
    for i in range(count):
        inst = f'instance="10.{i // 65536}.{i // 256 % 256}.{i % 256}:9100"'
        root = f'{inst},device="/dev/vda",mountpoint="/"'
        lines += [f'node_cpu_seconds_total{{{inst},cpu="0",mode="idle"}} {1000 + i}',
                  f'node_cpu_seconds_total{{{inst},cpu="0",mode="user"}} 100',
                  f"node_load1{{{inst}}} {(i + turn) % 100 / 50}", f"node_load5{{{inst}}} {turn % 7 / 10}",
                  f"node_load15{{{inst}}} 0.5", f"node_memory_MemTotal_bytes{{{inst}}} 8589934592",
                  f"node_memory_MemAvailable_bytes{{{inst}}} {4294967296 + i * 4096 + turn * 2**20}",
                  f"node_memory_SwapTotal_bytes{{{inst}}} 0", f"node_memory_SwapFree_bytes{{{inst}}} 0",
                  f"node_filesystem_size_bytes{{{root}}} 1000", f"node_filesystem_free_bytes{{{root}}} 500",
                  f"node_filesystem_avail_bytes{{{root}}} 450", f"node_boot_time_seconds{{{inst}}} 1700000000",
                  f"node_time_seconds{{{inst}}} 1700100000"]
    return ("\n".join(lines) + "\n").encode()


def _count(url: str, promql: str) -> int:
    try:
        with urllib.request.urlopen(f"{url}/api/v1/query?" + urllib.parse.urlencode({"query": promql}),
                                    timeout=10) as resp:
            result = json.load(resp)["data"]["result"]
    except OSError:
        return -1
    return int(float(result[0]["value"][1])) if result else 0


def prometheus_case(tmp: str, env: dict, count: int, cycles: int) -> None:
    page = ExpositionServer(itertools.cycle([fleet_page(count, turn) for turn in range(5)]).__next__)  # new figures
    # at every scrape
    prom = None
    try:
        port = free_port("127.0.0.1")
        config = Path(tmp, "prometheus.yml")
        config.write_text(prometheus_yml([], "5s", {"fleet": [f"127.0.0.1:{page.port}"]}))
        prom = subprocess.Popen(["/usr/bin/prometheus", f"--config.file={config}",
                                 f"--storage.tsdb.path={tmp}/prometheus-data", f"--web.listen-address=127.0.0.1:{port}",
                                 "--log.level=error", "--storage.tsdb.retention.time=1h"],
                                stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        wait_for_port("127.0.0.1", port, prom, timeout=60)
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: _count(url, "count(node_load1)") >= count, 120, 0.5, what="Prometheus's first scrape")
        # Two scrapes, so that rate() (CPUUSED) has two samples for every node.
        wait_until(lambda: _count(url, 'count(rate(node_cpu_seconds_total{mode="idle"}[1m]))') >= count, 120, 0.5,
                   what="Prometheus's second scrape")
        discover = "node_load1"
        server = Server(url)
        queries = [discover, promgroup.FRESHNESS_QUERY] + [promgroup.with_timestamp(q) for q in promgroup.BUILTIN_QUERIES.values()] \
            + [promgroup.with_timestamp(promgroup.DRAIN_QUERY)]
        targets = [(h, p, req) for h, p, req in (server.request(q) for q in queries)]
        before = bare_cycles(targets, 30.0)
        interval, timeout = 10.0, 8.0
        r = measure(SERVER.format(tmp=tmp, interval=interval, timeout=timeout,
                                  groups=f'<group name="P" default="true" prometheus="{url}" '
                                         f'discover="{discover}"/>'), tmp, env, interval, cycles)
        floor = statistics.median(before + bare_cycles(targets, 30.0))
        verdict = "ok" if r["mean"] <= 1.5 * floor else "MISSED"
        print(f"{count} nodes through one Prometheus ({len(queries)} queries)".ljust(44)
              + f" {r['mean']:>7.3f} s {floor:>7.3f} s {r['mean'] / floor:>5.2f}x {r['cpu_per_cycle']:>8.3f} s"
              + f" {r['rss']:>7.1f} MiB {r['failed']:>4}/{r['polled']}  <= 1.5x {verdict}")
        for error in r["errors"]:
            print(f"{'':44}  group error: {error}")
    finally:
        if prom is not None:
            prom.terminate()
            prom.wait()
        page.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", choices=("node-exporter", "prometheus", "both"), default="both")
    parser.add_argument("--exporters", type=int, default=1000)
    parser.add_argument("--prometheus-nodes", type=int, default=10000)
    parser.add_argument("--cycles", type=int, default=5)
    args = parser.parse_args()
    env = child_env()
    print(f"machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    print(f"{'case':44} {'cycle':>9} {'reference':>9} {'ratio':>6} {'CPU/cycle':>10} {'RSS':>11} {'failed':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        if args.case in ("node-exporter", "both"):
            node_exporter_case(tmp, env, args.exporters, args.cycles)
        if args.case in ("prometheus", "both"):
            prometheus_case(tmp, env, args.prometheus_nodes, args.cycles)
    print("reference: a bare asyncio client sending the same requests and reading the whole answers without "
          "parsing, same run, median of 10 (5 before lbserver's cycles, 5 after); cycle: lbserver's mean poll cycle (its own histogram); CPU/cycle: "
          "lbserver's CPU time per cycle.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
