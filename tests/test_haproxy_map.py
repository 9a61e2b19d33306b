"""The HAProxy session map: a real lbserver keeps a real HAProxy 2.6's map of returning users current.

Three stand-in RDP servers listen on 127.0.0.71-73 (one port for all, as
xrdp's 3389), each beside a scripted agent reporting its load and its
sessions; a real lbserver polls them, answers agent checks and keeps the
map; HAProxy runs the manual's recipe (etc/examples/haproxy-xrdp-sessions.cfg,
on loopback) and its runtime socket tells what it holds. Clients send the
X.224 connection request with ``Cookie: mstshash=USER`` as RDP clients do.
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from pathlib import Path

import lxml.html
import pytest

from common.netutil import raise_nofile_limit
from tests.support import ROOT, Procs, free_port, python_cmd, require_program, wait_for_port, wait_until
from tests.support.browser import chromium
from tests.support.cluster import Balancer, lbctl, scripted_agent, server_xml, stop
from tests.support.haproxy import AppServers, haproxy_cli, rdp_connect

EXAMPLE = ROOT / "etc" / "examples" / "haproxy-xrdp-sessions.cfg"
MAP_PATH = "/etc/haproxy/mille-xterm-sessions.map"
NODES = {"xapp1": ("127.0.0.71", 0.0), "xapp2": ("127.0.0.72", 90.0), "xapp3": ("127.0.0.73", 50.0)}
"""name -> (address of its RDP server and agent, its SIMLOAD): xapp2 weighs least."""
RULES = '<variable name="SIMLOAD" custom="true" weight="100" capacity="100"/>'
HOSTILE = ["eve smith", "eve\tx", "x\nadd map m y 1", "a;del map m alice", "#c", 'q"t', "e\x7f", "é", "z" * 65,
           "cr\rx"]


def session(user: str, state: str = "disconnected") -> dict:
    return {"user": user, "kind": "x2go", "state": state, "since": time.time() - 60, "info": ""}


def write(path: Path, load: float, sessions: list[dict]) -> None:
    """A scripted agent's reply: SIMLOAD ``load`` and these sessions, sampled now."""
    path.write_text(json.dumps({"hostname": path.stem, "agent_version": "t", "sampled_at": time.time(),
                                "variables": {"NBPROC": 2, "CPUFREQ": 2000, "SIMLOAD": load},
                                "users": sorted({s["user"] for s in sessions}), "sessions": sessions}))


def common_port(ips) -> int:
    """A TCP port free on every one of ``ips``."""
    for _ in range(50):
        port = free_port(ips[0])
        try:
            for ip in ips[1:]:
                with socket.socket() as s:
                    s.bind((ip, port))
            return port
        except OSError:
            continue
    raise RuntimeError("no common free port")


def show_map(sock: Path, path: Path) -> dict[str, str]:
    """The map HAProxy holds for ``path``."""
    out = {}
    for line in haproxy_cli(sock, f"show map {path}").splitlines():
        parts = line.split()
        if len(parts) == 3:
            out[parts[1]] = parts[2]
    return out


class MapFarm:
    """Agents, RDP servers, an lbserver with <haproxy-map>, and HAProxy running the recipe."""

    def __init__(self, tmp: Path) -> None:
        raise_nofile_limit()
        self.tmp = tmp
        self.procs = Procs()
        self.rdp_port = common_port([ip for ip, _ in NODES.values()])
        self.apps = AppServers({n: (ip, self.rdp_port) for n, (ip, _) in NODES.items()})
        self.states: dict[str, Path] = {}
        members = []
        for name, (ip, load) in NODES.items():
            self.states[name] = tmp / f"{name}.json"
            write(self.states[name], load, [])
            node = scripted_agent(self.procs, ip, "--mode", "state", "--state", str(self.states[name]))
            members.append((name, node.address))
        self.sock = tmp / "haproxy.sock"
        self.map = tmp / "sessions.map"
        self.log = tmp / "lbserver.log"
        self.agent_port = free_port()
        self.bal = Balancer(tmp / "lbsconfig.xml", free_port(), free_port())
        self.bal.config.write_text(server_xml(
            self.bal.port, self.bal.mgmt_port, {"RDP": members}, tmp, rules=RULES,
            poll='interval="0.3" timeout="0.25" rise="1" fall="2"',
            extra=f'<haproxy-agent listen="127.0.0.1:{self.agent_port}"/>'
                  f'<haproxy-map group="RDP" socket="{self.sock}" file="{self.map}" timeout="2"/>'))
        self.start_balancer()
        wait_until(self.map.exists, 10, what="the map file")
        self.frontend = free_port()
        self.cfg = tmp / "haproxy.cfg"
        self.cfg.write_text(self.haproxy_config())
        self.haproxy_bin = require_program("haproxy")
        check = subprocess.run([self.haproxy_bin, "-c", "-f", str(self.cfg)], capture_output=True, text=True,
                               timeout=30)
        assert check.returncode == 0, check.stdout + check.stderr
        self.start_haproxy()

    def haproxy_config(self) -> str:
        text = EXAMPLE.read_text()
        subs = [("bind :3389", f"bind 127.0.0.1:{self.frontend}"),
                ("agent-addr 10.0.0.10 agent-port 8011", f"agent-addr 127.0.0.1 agent-port {self.agent_port}"),
                ("check inter 2s", "check inter 200ms"), ("agent-inter 2s", "agent-inter 200ms"),
                ("server home 0.0.0.0:3389", f"server home 0.0.0.0:{self.rdp_port}")]
        subs += [(f"10.0.0.{i}:3389", f"{ip}:{self.rdp_port}") for i, (ip, _) in enumerate(NODES.values(), 1)]
        for old, new in subs:
            assert text.count(old) == 1, f"the recipe no longer has {old!r}: update this test with it"
            text = text.replace(old, new)
        assert text.count(f"map({MAP_PATH})") == 2
        text = text.replace(f"map({MAP_PATH})", f"map({self.map})")
        return f"global\n    stats socket {self.sock} level admin\n\n{text}"

    def start_balancer(self) -> None:
        bal = self.bal
        with self.log.open("a") as log:  # the foreground daemon logs to stderr
            bal.proc = self.procs.start(python_cmd("lbserver", "-f", "-c", str(bal.config)),
                                        stdout=subprocess.DEVNULL, stderr=log)
        wait_for_port("127.0.0.1", bal.mgmt_port, timeout=20, proc=bal.proc)

    def start_haproxy(self, *args: str) -> None:
        """Start HAProxy (``-sf PID``: as a reload, taking over from the process PID); wait for its runtime socket."""
        self.haproxy = self.procs.start([self.haproxy_bin, "-db", "-f", str(self.cfg), *args],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port("127.0.0.1", self.frontend, proc=self.haproxy)
        wait_until(lambda: self.sock.exists() and f"Pid: {self.haproxy.pid}\n" in haproxy_cli(self.sock, "show info"),
                   what="HAProxy's runtime socket")

    def held(self) -> dict[str, str]:
        return show_map(self.sock, self.map)

    def server_of(self, user: str) -> str:
        sock, server = rdp_connect(self.frontend, user)
        sock.close()
        return server

    def haproxy_status(self, server: str) -> str:
        for line in haproxy_cli(self.sock, "show stat").splitlines():
            fields = line.split(",")
            if fields[:2] == ["xrdp", server]:
                return fields[17]
        return ""

    def close(self) -> None:
        self.procs.stop_all()
        self.apps.close()


@pytest.fixture(scope="module")
def farm(tmp_path_factory):
    f = MapFarm(tmp_path_factory.mktemp("haproxy-map"))
    yield f
    f.close()


@pytest.mark.system
def test_a_returning_user_reaches_his_session_through_the_map_drained_reloaded_and_restarted(farm, tmp_path):
    write(farm.states["xapp2"], 90.0, [session("alice")])
    write(farm.states["xapp3"], 50.0, [session(name, "active") for name in HOSTILE])
    wait_until(lambda: farm.held() == {"alice": "127.0.0.72"}, 10, what="alice in HAProxy's map")
    assert farm.map.read_text().splitlines()[1:] == ["alice 127.0.0.72"]
    # The map's key is the cookie lower-cased, without a domain: what mstsc or FreeRDP may send.
    assert {farm.server_of(u) for u in ("alice", "Alice", "CORP\\alice", "corp\\ALICE")} == {"xapp2"}

    assert lbctl(farm.bal.mgmt_url, "drain", "xapp2").returncode == 0
    wait_until(lambda: farm.haproxy_status("xapp2") == "DRAIN (agent)", 10, what="xapp2 drained in HAProxy")
    assert farm.server_of("alice") == "xapp2"
    assert "xapp2" not in {farm.server_of(f"new{i}") for i in range(20)}

    # Hostile names never reached HAProxy or the file; they are counted, each logged once.
    assert farm.bal.status()["nodes"]["xapp3"]["healthy"]
    status = farm.bal.status()["haproxy_map"]
    assert status["in_sync"] and status["entries"] == 1 and status["refused"] == len(HOSTILE), status
    assert status["error"] is None  # (the syncs before HAProxy started did fail)
    logged = [line for line in farm.log.read_text().splitlines() if "left out of the HAProxy session map" in line]
    assert len(logged) == len(HOSTILE), logged
    out = lbctl(farm.bal.mgmt_url, "status")
    assert "HAProxy session map of group RDP" in out.stdout and "1 entries" in out.stdout, out.stdout
    # The dashboard, as a person sees it in a browser, shows the same.
    dom = lxml.html.fromstring(chromium(tmp_path, "--virtual-time-budget=3000", "--dump-dom",
                                        farm.bal.mgmt_url + "/").stdout)
    row = [c.text_content().strip() for c in dom.get_element_by_id("sessionmap").iter("td")]
    assert row[:3] == ["RDP", "in sync", "1"] and row[5] == str(len(HOSTILE)), row

    # HAProxy reloaded while lbserver is away: the file alone brings alice home.
    stop(farm.bal.proc)
    old = farm.haproxy
    farm.start_haproxy("-sf", str(old.pid))
    old.wait(timeout=10)
    assert farm.held() == {"alice": "127.0.0.72"}
    assert farm.server_of("alice") == "xapp2"

    # lbserver restarted after HAProxy's map went astray: it finds out and sends the differences.
    haproxy_cli(farm.sock, f"clear map {farm.map}")
    haproxy_cli(farm.sock, f"add map {farm.map} mallory 127.0.0.71")
    write(farm.states["xapp3"], 50.0, [session("bob")])
    farm.start_balancer()
    wait_until(lambda: farm.held() == {"alice": "127.0.0.72", "bob": "127.0.0.73"}, 10, what="the map re-synced")
    assert farm.server_of("bob") == "xapp3"

    # A session that ends leaves the map at the next poll.
    write(farm.states["xapp2"], 90.0, [])
    wait_until(lambda: "alice" not in farm.held(), 10, what="alice out of the map")
    assert "alice" not in farm.map.read_text()
    assert farm.server_of("alice") != "xapp2"  # drained, and no session there any more


class Garbage:
    """A unix socket server that is not HAProxy: answers ``text`` (closes at once for b""), or (None) stays mute."""

    def __init__(self, path: Path, text: bytes | None) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.bind(str(path))
        self.sock.listen()
        self.text = text
        self.held: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            if self.text is None:
                self.held.append(conn)
                continue
            with conn:
                conn.sendall(self.text)
                while self.text and conn.recv(4096):  # until the client gives up
                    pass

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


@pytest.mark.daemon
def test_a_dead_or_wrong_runtime_socket_is_logged_and_retried_and_terminals_are_served(tmp_path):
    procs = Procs()
    state = tmp_path / "a.json"
    write(state, 10.0, [session("alice")])
    try:
        node = scripted_agent(procs, "127.0.0.74", "--mode", "state", "--state", str(state))
        sock, mapfile, log = tmp_path / "admin.sock", tmp_path / "s.map", tmp_path / "lbserver.log"
        bal = Balancer(tmp_path / "lbsconfig.xml", free_port(), free_port())
        bal.config.write_text(server_xml(
            bal.port, bal.mgmt_port, {"RDP": [("xapp4", node.address)]}, tmp_path, rules=RULES,
            poll='interval="0.2" timeout="0.15" rise="1" fall="2"',
            extra=f'<haproxy-map group="RDP" socket="{sock}" file="{mapfile}" timeout="0.5"/>'))
        with log.open("w") as err:
            bal.proc = procs.start(python_cmd("lbserver", "-f", "-c", str(bal.config)),
                                   stdout=subprocess.DEVNULL, stderr=err)
        wait_for_port("127.0.0.1", bal.mgmt_port, timeout=20, proc=bal.proc)

        # No socket at all: the file is still written, the error counted and retried, terminals served.
        wait_until(lambda: (bal.status()["haproxy_map"] or {}).get("errors", 0) >= 3, 10, what="retries")
        smap = bal.status()["haproxy_map"]
        assert not smap["in_sync"] and "No such file" in smap["error"], smap
        assert mapfile.read_text().splitlines()[1:] == ["alice 127.0.0.74"]
        assert bal.ask() == "xapp4"

        # A socket that is not HAProxy's: answers something else, closes at once (a closed
        # connection or a broken pipe, by timing), or never answers.
        for text, why in ((b"\n> hello\n> ", "no Pid"), (b"", ""), (None, "timed out")):
            server = Garbage(sock, text)
            before = bal.status()["haproxy_map"]["errors"]
            smap = wait_until(lambda: (m := bal.status()["haproxy_map"])["errors"] >= before + 2 and m, 10,
                              what="more failed syncs")
            assert why in smap["error"], smap
            assert bal.ask() == "xapp4" and bal.proc.poll() is None
            server.close()
            sock.unlink()
        # One log line per minute at most, however many cycles failed.
        errors = [line for line in log.read_text().splitlines() if "HAProxy session map of group" in line]
        assert len(errors) == 1, errors
    finally:
        procs.stop_all()
