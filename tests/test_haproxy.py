"""A real HAProxy (Debian's package) weighed by a real lbserver through its agent-check port.

Three small TCP servers stand in for xrdp servers on 127.0.0.21-23, each
with a real lbagent beside it; a real lbserver polls the agents and serves
agent checks; HAProxy runs the manual's recipe (etc/examples/haproxy-xrdp.cfg,
with loopback addresses and fast agent-inter) in the foreground, and its
stats socket tells what it believes. Clients speak just enough RDP (an X.224
connection request with a ``Cookie: mstshash=USER`` line) for HAProxy's
``rdp_cookie`` stickiness to work.
"""

from __future__ import annotations

import csv
import io
import json
import socket
import statistics
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.cluster import lbctl, restart_agent, start_agent, start_balancer, stop
from common.netutil import raise_nofile_limit
from tests.support import (ARTIFACTS, ROOT, Procs, free_port, python_cmd, require_program, wait_for_port,
                           wait_until)
from tests.support.haproxy import AppServers, haproxy_cli, rdp_connect
from tests.support.stats import chi2

EXAMPLE = ROOT / "etc" / "examples" / "haproxy-xrdp.cfg"
NODES = {"xapp1": ("127.0.0.21", 10.0), "xapp2": ("127.0.0.22", 40.0), "xapp3": ("127.0.0.23", 70.0)}
"""name -> (address of its app server and agent, the SIMLOAD it starts with)."""
BASE = {"xapp1": 100, "xapp2": 67, "xapp3": 33}
"""The agent-check percentages of those loads: lbserver weights 90, 60 and 30."""
CHI2_001_DF2 = 13.816  # chi-square at p = 0.001, 2 degrees of freedom

# -- HAProxy ------------------------------------------------------------------

def haproxy_config(frontend: int, agent_port: int, servers: dict[str, tuple[str, int]], sock: Path) -> str:
    """The manual's recipe, with loopback addresses, fast checks and a stats socket of our own."""
    text = EXAMPLE.read_text()
    subs = [("bind :3389", f"bind 127.0.0.1:{frontend}"),
            ("agent-addr 10.0.0.10 agent-port 8011", f"agent-addr 127.0.0.1 agent-port {agent_port}"),
            ("check inter 2s", "check inter 200ms"),
            ("agent-inter 2s", "agent-inter 200ms")]
    subs += [(f"10.0.0.{i}:3389", f"{ip}:{port}") for i, (ip, port) in enumerate(servers.values(), 1)]
    for old, new in subs:
        assert text.count(old) == 1, f"the recipe no longer has {old!r}: update this test with it"
        text = text.replace(old, new)
    return f"global\n    stats socket {sock} level admin\n    maxconn 4000\n\n{text}"


def show_stat(sock: Path) -> dict[str, dict[str, str]]:
    """``show stat`` of backend xrdp's servers, by server name."""
    text = haproxy_cli(sock, "show stat").lstrip("# ")
    return {row["svname"]: row for row in csv.DictReader(io.StringIO(text))
            if row["pxname"] == "xrdp" and row["svname"] not in ("FRONTEND", "BACKEND")}


def expected_percentages(status: dict) -> dict[str, int]:
    """What the agent-check replies should set, from lbserver's /status: weight / greatest selectable weight."""
    selectable = {n: v["weight"] for n, v in status["nodes"].items() if v["healthy"] and not v["drained"]}
    top = max(selectable.values())
    return {n: min(100, max(1, int(100 * w / top + 0.5))) for n, w in selectable.items()}


class Farm:
    """Everything of one test module, and ways to read it."""

    def __init__(self, tmp: Path) -> None:
        raise_nofile_limit()
        self.tmp = tmp
        self.procs = Procs()
        self.app_addr = {n: (ip, free_port(ip)) for n, (ip, _) in NODES.items()}
        self.apps = AppServers(self.app_addr)
        self.agents = {n: start_agent(self.procs, tmp, n, ip, load) for n, (ip, load) in NODES.items()}
        self.agent_port = free_port()
        self.bal = start_balancer(
            self.procs, tmp, {"PROD": [(n, a.url) for n, a in self.agents.items()]},
            extra=f'<haproxy-agent listen="127.0.0.1:{self.agent_port}" read-timeout="0.5">'
                  f'<allow from="127.0.0.1"/></haproxy-agent>')
        wait_for_port("127.0.0.1", self.agent_port, proc=self.bal.proc)
        self.frontend = free_port()
        self.sock = tmp / "haproxy.sock"
        self.cfg = tmp / "haproxy.cfg"
        self.cfg.write_text(haproxy_config(self.frontend, self.agent_port, self.app_addr, self.sock))
        haproxy = require_program("haproxy")
        check = subprocess.run([haproxy, "-c", "-f", str(self.cfg)], capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, check.stdout + check.stderr
        self.haproxy = self.procs.start([haproxy, "-db", "-f", str(self.cfg)])
        wait_for_port("127.0.0.1", self.frontend, proc=self.haproxy)
        wait_until(lambda: self.sock.exists() and show_stat(self.sock), what="HAProxy's stats socket")
        self.users = 0

    def stat(self) -> dict[str, dict[str, str]]:
        return show_stat(self.sock)

    def user(self) -> str:
        self.users += 1
        return f"user{self.users:05d}"

    def wait_in_step(self, target: dict[str, int] | None = None, timeout: float = 20.0) -> dict[str, int]:
        """Wait until every selectable node is UP in HAProxy with the weight lbserver's snapshot gives it.

        With ``target``, also until those weights are ``target`` (after a change of load or state).
        """
        def same():
            want = expected_percentages(self.bal.status())
            stat = self.stat()
            got = {n: int(row["weight"]) for n, row in stat.items() if row["status"] == "UP"}
            return want if got == want and (target is None or want == target) else None
        return wait_until(same, timeout, what=f"HAProxy's weights equal to lbserver's ({target})")

    def close(self) -> None:
        self.procs.stop_all()
        self.apps.close()


@pytest.fixture(scope="module")
def farm(tmp_path_factory):
    f = Farm(tmp_path_factory.mktemp("haproxy"))
    yield f
    f.close()


# -- the tests ---------------------------------------------------------------

@pytest.mark.system
def test_haproxy_weights_follow_lbserver(farm):
    farm.wait_in_step(BASE)
    stat = farm.stat()
    assert all(row["agent_status"] == "L7OK" for row in stat.values()), stat
    farm.agents["xapp3"].set_load(20.0)                      # weight 80: now 80/90 of xapp1's
    farm.wait_in_step({"xapp1": 100, "xapp2": 67, "xapp3": 89})
    farm.agents["xapp1"].set_load(95.0)                      # weight 5: xapp3 is the yardstick now
    farm.wait_in_step({"xapp1": 6, "xapp2": 75, "xapp3": 100})
    for name, (_, load) in NODES.items():
        farm.agents[name].set_load(load)
    farm.wait_in_step(BASE)


@pytest.mark.system
def test_sessions_spread_by_the_weights(farm):
    weights = farm.wait_in_step(BASE)
    held = []
    counts = {n: 0 for n in NODES}
    try:
        for _ in range(300):
            sock, server = rdp_connect(farm.frontend, farm.user())
            held.append(sock)
            counts[server] += 1
        assert chi2(counts, weights) < CHI2_001_DF2, (counts, weights)
        stat = farm.stat()
        assert {k: int(stat[k]["scur"]) for k in NODES} == counts  # HAProxy's own count of open sessions
    finally:
        for sock in held:
            sock.close()
    wait_until(lambda: all(row["scur"] == "0" for row in farm.stat().values()), what="sessions closed")


def _timed_drain(farm, node: str) -> tuple[float, float]:
    """lbctl drain ``node``; seconds from running lbctl, and from its return, to HAProxy's DRAIN."""
    t0 = time.monotonic()
    res = lbctl(farm.bal.mgmt_url, "drain", node)
    t1 = time.monotonic()
    assert res.returncode == 0, res.stderr
    wait_until(lambda: farm.stat()[node]["status"].startswith("DRAIN"), 10, interval=0.005, what=f"{node} DRAIN")
    t2 = time.monotonic()
    return t2 - t0, t2 - t1


@pytest.mark.system
def test_lbctl_drain_reaches_haproxy_and_enable_brings_it_back(farm):
    farm.wait_in_step(BASE)
    # Give xapp2 a session first: leastconn sends the first ones to xapp1, so hold them.
    held, sticky = [], None
    for _ in range(200):  # leastconn alternates once xapp1 holds one: a few tries at most
        user = farm.user()
        sock, server = rdp_connect(farm.frontend, user)
        held.append(sock)
        if server == "xapp2":
            sticky = user
            break
    assert sticky is not None, "HAProxy never sent a session to xapp2"
    for sock in held:
        sock.close()

    from_start, from_return = _timed_drain(farm, "xapp2")
    row = farm.stat()["xapp2"]
    assert row["status"] == "DRAIN (agent)" and "drained by admin" in row["last_agt"], row
    # New users: never the drained server, even while it has the fewest sessions.
    held, placed = [], []
    try:
        for _ in range(40):
            sock, server = rdp_connect(farm.frontend, farm.user())
            held.append(sock)
            placed.append(server)
        assert "xapp2" not in placed and set(placed) == {"xapp1", "xapp3"}
        # A returning user still reaches his session on the drained server (the stick table).
        sock, server = rdp_connect(farm.frontend, sticky)
        held.append(sock)
        assert server == "xapp2"
    finally:
        for sock in held:
            sock.close()

    assert lbctl(farm.bal.mgmt_url, "enable", "xapp2").returncode == 0
    farm.wait_in_step(BASE)

    # The time from an lbctl drain to HAProxy's DRAIN (agent-inter 200 ms), a few times over.
    times = [(from_start, from_return)]
    for _ in range(5):
        times.append(_timed_drain(farm, "xapp3"))
        assert lbctl(farm.bal.mgmt_url, "enable", "xapp3").returncode == 0
        farm.wait_in_step(BASE)
    starts, returns = [t[0] for t in times], [t[1] for t in times]
    report = (f"lbctl drain -> HAProxy DRAIN, agent-inter 200 ms, {len(times)} drains:\n"
              f"  from running lbctl:    median {statistics.median(starts) * 1000:.0f} ms, "
              f"min {min(starts) * 1000:.0f}, max {max(starts) * 1000:.0f}\n"
              f"  from lbctl's return:   median {statistics.median(returns) * 1000:.0f} ms, "
              f"min {min(returns) * 1000:.0f}, max {max(returns) * 1000:.0f}\n")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "haproxy-drain-latency.txt").write_text(report)
    print(report)


@pytest.mark.system
def test_drain_at_the_source_reaches_haproxy(farm):
    farm.wait_in_step(BASE)
    agent = farm.agents["xapp1"]
    res = subprocess.run(python_cmd("lbagent", "-c", str(agent.config), "--drain", "kernel", "update"),
                         capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    row = wait_until(lambda: (r := farm.stat()["xapp1"])["status"].startswith("DRAIN") and r, 15,
                     what="xapp1 DRAIN")
    assert "drained at the source (kernel update)" in row["last_agt"], row
    # The others are weighed among themselves now.
    farm.wait_in_step({"xapp2": 100, "xapp3": 50})
    res = subprocess.run(python_cmd("lbagent", "-c", str(agent.config), "--enable"),
                         capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    farm.wait_in_step(BASE)


@pytest.mark.system
def test_a_dead_agent_marks_the_server_down_and_a_restart_brings_it_back(farm):
    farm.wait_in_step(BASE)
    agent = farm.agents["xapp3"]
    t0 = time.monotonic()
    stop(agent.proc)
    row = wait_until(lambda: (r := farm.stat()["xapp3"])["status"].startswith("DOWN") and r, 20,
                     interval=0.01, what="xapp3 DOWN")
    down_after = time.monotonic() - t0
    assert "agent down" in row["last_agt"], row
    placed = []
    held = []
    try:
        for _ in range(20):
            sock, server = rdp_connect(farm.frontend, farm.user())
            held.append(sock)
            placed.append(server)
    finally:
        for sock in held:
            sock.close()
    assert "xapp3" not in placed
    restart_agent(farm.procs, agent)
    farm.wait_in_step(BASE)
    status = farm.bal.status()
    poll = status["poll"]
    print(f"agent stopped -> HAProxy DOWN after {down_after:.2f} s "
          f"(poll interval {poll['interval']} s, timeout {poll['timeout']} s, fall {poll['fall']})")


@pytest.mark.system
def test_junk_slow_and_foreign_clients_do_not_disturb_the_agent_port(farm):
    farm.wait_in_step(BASE)
    port = farm.agent_port
    slow = []
    try:
        for i in range(40):  # clients that never end their line
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(b"xap")
            slow.append(s)
        for junk in (b"\x00\xff" * 2000, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\r\n" * 100, bytes(range(256))):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(junk)
                s.shutdown(socket.SHUT_WR)
                answer = b""
                while chunk := s.recv(4096):
                    answer += chunk
                assert answer.startswith(b"down #") and answer.count(b"\n") == 1, answer
        # A peer outside <allow> (127.0.0.1 only) is cut without an answer.
        with socket.socket() as s:
            s.settimeout(5)
            s.bind(("127.0.0.5", 0))
            s.connect(("127.0.0.1", port))
            try:
                s.sendall(b"xapp1\n")
                assert s.recv(100) == b""
            except (ConnectionResetError, BrokenPipeError):
                pass
        # Meanwhile the weights still follow, checks keep succeeding, and the slow ones got their answer.
        farm.agents["xapp2"].set_load(0.0)
        farm.wait_in_step({"xapp1": 90, "xapp2": 100, "xapp3": 30})
        for s in slow:
            assert s.recv(100) == b"down #unknown node xap\n"
    finally:
        for s in slow:
            s.close()
        farm.agents["xapp2"].set_load(NODES["xapp2"][1])
    farm.wait_in_step(BASE)
    assert farm.bal.proc.poll() is None
    assert all(row["agent_status"] == "L7OK" for row in farm.stat().values())


@pytest.mark.system
def test_the_terminal_port_answers_json_for_scripts(farm):
    farm.wait_in_step(BASE)
    url = farm.bal.url
    out = subprocess.run(["curl", "-s", "-D", "-", f"{url}/?format=json"], capture_output=True, text=True,
                         timeout=30, check=True).stdout
    head, _, body = out.partition("\n\n")  # text mode turns CRLF into LF
    assert "Content-Type: application/json" in head
    doc = json.loads(body)
    assert set(doc) == {"host", "node", "group", "weight", "why"}
    assert doc["node"] in NODES and doc["host"] == doc["node"] and doc["group"] == "PROD"
    assert doc["why"] == "weighted" and doc["weight"] == farm.bal.status()["nodes"][doc["node"]]["weight"]
    # The manual's one-liner, with echo in place of xfreerdp.
    line = subprocess.run(["sh", "-c", f"echo xfreerdp /v:$(curl -s '{url}/?format=json' | jq -r .host)"],
                          capture_output=True, text=True, timeout=30, check=True).stdout.strip()
    assert line.startswith("xfreerdp /v:xapp")
    for query, code in (("?format=json&group=NOPE", "404"), ("?format=xml", "400"), ("?format=text", "200")):
        got = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"{url}/{query}"],
                             capture_output=True, text=True, timeout=30).stdout
        assert got == code, (query, got)
    assert farm.bal.ask("?format=text") in NODES


@pytest.mark.daemon
def test_reload_moves_and_stops_the_agent_port(procs, tmp_path):
    agent = start_agent(procs, tmp_path, "solo", "127.0.0.24", 0.0)
    old, new = free_port(), free_port()
    bal = start_balancer(procs, tmp_path, {"G": [("solo", agent.url)]},
                         extra=f'<haproxy-agent listen="127.0.0.1:{old}"/>')
    wait_for_port("127.0.0.1", old, proc=bal.proc)

    def ask(port: int) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"solo\n")
            return s.recv(100)

    assert wait_until(lambda: ask(old) == b"up ready 100%\n", what="solo up")
    text = bal.config.read_text()
    bal.config.write_text(text.replace(f"127.0.0.1:{old}", f"127.0.0.1:{new}"))
    bal.proc.send_signal(1)  # SIGHUP
    assert wait_until(lambda: ask(new) == b"up ready 100%\n", what="the new port answering")
    with pytest.raises(ConnectionRefusedError):
        ask(old)
    bal.config.write_text(text.replace(f'<haproxy-agent listen="127.0.0.1:{old}"/>', ""))
    bal.proc.send_signal(1)

    def refused() -> bool:
        try:
            ask(new)
        except ConnectionRefusedError:
            return True
        return False
    assert wait_until(refused, what="the agent port closed")
    bal.config.write_text(text)   # and back, on the first port
    bal.proc.send_signal(1)
    assert wait_until(lambda: ask(old) == b"up ready 100%\n", what="the agent port open again")
    assert bal.ask() == "solo"  # terminals are served throughout
