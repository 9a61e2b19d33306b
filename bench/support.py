"""What the benchmark scripts share, in one place: ports, children, a small real cluster, wrk, and probes.

Every script in bench/ runs from the top of the source tree as a module
(``.venv/bin/python -m bench.bench_terminal``) and imports what it shares
from here, never from another script. Readiness comes from
the loops of :mod:`common.children`, which the demo and the tests use too, and
the tests' ``wait_until`` for anything else; the real
BIND of the DNS benchmark is the tests' own (:mod:`tests.support.dns`).
Loopback only. No threads of its own.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import common.children
from common.children import free_port
from common.children import stop_children
from tests.support.dns import NamedServer, write_config
from tests.support.processes import wait_until

ROOT = Path(__file__).resolve().parent.parent
"""The top of the source tree."""

__all__ = ["ROOT", "NamedServer", "cpu_sets", "child_env", "cycle_window", "free_port", "pinned", "poll_histogram",
           "proc_cpu", "proc_rss_mib", "replica_address", "run_wrk", "start_cluster", "status", "stop_children",
           "wait_for_port", "wait_until", "write_config"]


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a child process: this tree first on PYTHONPATH (the daemons under test are this tree's)."""
    return dict(os.environ, PYTHONPATH=str(ROOT), **extra)


def wait_for_port(host: str, port: int, proc: subprocess.Popen | None = None, timeout: float = 15.0) -> None:
    """Return once ``host:port`` accepts connections; end the benchmark, saying why, if ``proc`` dies or time runs out."""
    try:
        common.children.wait_for_port(host, port, timeout, proc)
    except common.children.NotListening as exc:
        raise SystemExit(str(exc)) from None


def replica_address(i: int) -> str:
    """The i-th address of bench/agent_replicas.py's endpoints, 127.10.0.1 onwards (skipping .0 and .255)."""
    return f"127.10.{i // 254}.{i % 254 + 1}"


# --- a small real cluster -------------------------------------------------

CLUSTER_AGENT = """<lbaconfig><agent listen="{ip}:{port}" sample-interval="5"/>
<access><allow from="127.0.0.0/8"/></access></lbaconfig>"""
CLUSTER_SERVER = """<lbsconfig>
  <lbservice listen="127.0.0.1:{port}" returns="$IP" algorithm="{algorithm}"/>
  <mgmtservice listen="127.0.0.1:{mgmt}" state-file="{tmp}/state"/>
  <poll interval="5" timeout="2"/>
  <nodes><group name="PROD" default="true">{nodes}</group></nodes>
</lbsconfig>"""


def start_cluster(tmp: str, env: dict, children: list, algorithm: str = "two-choices") -> str:
    """Three real agents on 127.0.0.2-4 (appended to ``children``); return an lbsconfig.xml balancing them."""
    nodes = []
    for i in range(3):
        ip = f"127.0.0.{i + 2}"
        port = free_port(ip)
        cfg = Path(tmp, f"agent{i}.xml")
        cfg.write_text(CLUSTER_AGENT.format(ip=ip, port=port))
        agent = subprocess.Popen([sys.executable, "-m", "lbagent", "-f", "-c", str(cfg)], env=env,
                                 stderr=subprocess.DEVNULL)
        children.append(agent)
        wait_for_port(ip, port, agent)
        nodes.append(f'<node name="xapp{i + 1}" address="http://{ip}:{port}"/>')
    path = Path(tmp, "lbsconfig.xml")
    path.write_text(CLUSTER_SERVER.format(port=free_port(), mgmt=free_port(), tmp=tmp, nodes="".join(nodes),
                                          algorithm=algorithm))
    return str(path)


# --- wrk, and where it runs -----------------------------------------------

def pinned(cpus: set[int] | None):
    """A ``preexec_fn`` keeping a child (its threads and its own children too) on ``cpus``; None: anywhere."""
    if not cpus:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


def cpu_sets(pin: bool) -> tuple[set[int] | None, set[int] | None]:
    """(servers' CPUs, wrk's CPUs): the last CPU for the server under test, the others for wrk; (None, None) unpinned."""
    cpus = sorted(os.sched_getaffinity(0))
    if not pin or len(cpus) < 2:
        return None, None
    return {cpus[-1]}, set(cpus[:-1])


def run_wrk(url: str, *, threads: int, connections: int, duration: int, close: bool = False,
            cpus: set[int] | None = None, script: str | None = None) -> tuple[float, str]:
    """Requests/s and p99 latency text from one ``wrk --latency`` run, on ``cpus`` when given.

    ``script``: a wrk Lua script's path (what each request is, e.g. a POST with a body).
    """
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency", url]
    if script:
        cmd[1:1] = ["-s", script]
    if close:
        cmd[1:1] = ["-H", "Connection: close"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 30, check=True,
                         preexec_fn=pinned(cpus)).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: .*", out)
    if rps is None:
        raise SystemExit(f"could not read wrk output:\n{out}")
    if errors:
        print(f"    note: {errors.group(0).strip()}  ({url})")
    return float(rps.group(1)), p99.group(1) if p99 else "?"


# --- what a running balancer says -----------------------------------------

def proc_cpu(pid: int) -> float:
    """CPU time (user and system) of process ``pid`` so far, in seconds."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss_mib(pid: int) -> float:
    """Resident memory of process ``pid`` in MiB (0 when /proc does not say)."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def poll_histogram(mgmt: int) -> tuple[int, float]:
    """(count, sum) of lbserver_poll_duration_seconds from /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{mgmt}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    count = float(re.search(r"^lbserver_poll_duration_seconds_count (\S+)", text, re.M).group(1))
    total = float(re.search(r"^lbserver_poll_duration_seconds_sum (\S+)", text, re.M).group(1))
    return int(count), total


def cycle_window(mgmt: int, pid: int, interval: float, cycles: int) -> dict[str, float]:
    """The balancer's poll cycles over a window of about ``cycles`` of them: ``cycles`` done, ``mean`` seconds,
    ``cpu_per_cycle`` seconds.

    Read from its own poll-duration histogram around the window, while
    nothing else talks to it (so its CPU time is the cycles'). A cycle starts
    every max(interval, duration) seconds: the window's CPU time is counted
    over the cycles it spans, in fractions rather than in whole cycles
    finished (which is off by up to one cycle in a few).
    """
    count0, sum0 = poll_histogram(mgmt)
    cpu0, t0 = proc_cpu(pid), time.monotonic()
    time.sleep(cycles * interval + interval / 2)
    count1, sum1 = poll_histogram(mgmt)
    cpu1, t1 = proc_cpu(pid), time.monotonic()
    mean = (sum1 - sum0) / max(1, count1 - count0)
    return {"cycles": count1 - count0, "mean": mean, "cpu_per_cycle": (cpu1 - cpu0) * max(interval, mean) / (t1 - t0)}


def status(mgmt: int) -> dict:
    """The /status document of the balancer whose management port is ``mgmt``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{mgmt}/status", timeout=10) as resp:
        return json.load(resp)
