"""lbclient and the LDM get_hosts script: unit tests, then real processes against the harness."""

from __future__ import annotations

import ast
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lbclient import client as lbclient
from lbclient.client import ServerError, build_request, parse_response, parse_server, valid_host
from tests.support import ROOT, Procs, free_port, python_cmd, wait_for_port

CLIENT = ROOT / "lbclient" / "client.py"
GET_HOSTS = ROOT / "etc" / "ldm" / "get_hosts"


# -- pure parts ----------------------------------------------------------------

@pytest.mark.parametrize("spec, expected", [
    ("boot1", ("boot1", 8008)),
    ("boot1:9000", ("boot1", 9000)),
    ("10.0.0.1:81", ("10.0.0.1", 81)),
    ("[::1]", ("::1", 8008)),
    ("[::1]:8009", ("::1", 8009)),
    ("fd00::2", ("fd00::2", 8008)),
    (" boot2 ", ("boot2", 8008)),
])
@pytest.mark.unit
def test_parse_server(spec, expected):
    assert parse_server(spec) == expected


@pytest.mark.unit
@pytest.mark.parametrize("spec", ["", ":80", "host:", "host:0", "host:70000", "host:x", "[::1", "[::1]x", "[]:80"])
def test_parse_server_rejects(spec):
    with pytest.raises(ValueError):
        parse_server(spec)


@pytest.mark.unit
@pytest.mark.parametrize("text", ["xapp1", "xapp1.example.org", "xapp1.example.org.", "10.0.0.1", "fd00::1",
                                  "a-b.c_d", "1host"])
def test_valid_host(text):
    assert valid_host(text)


@pytest.mark.unit
@pytest.mark.parametrize("text", ["", "a b", "a\tb", "-x", "x-", "a..b", "<html>", "x" * 64 + ".org",
                                  "1.2.3", "999.1.1.1", "a" * 256, "host;rm", "é.org"])
def test_invalid_host(text):
    assert not valid_host(text)


def ok(body: bytes, head: bytes = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n") -> bytes:
    return head + b"Content-Length: %d\r\n\r\n" % len(body) + body


@pytest.mark.unit
def test_parse_response_good():
    assert parse_response(ok(b"xapp2\n")) == "xapp2"
    assert parse_response(ok(b"10.0.0.2\r\n")) == "10.0.0.2"
    assert parse_response(b"HTTP/1.0 200 OK\n\nxapp3") == "xapp3"  # no length, bare LF


@pytest.mark.parametrize("data, why", [
    (ok(b"unknown group\n", b"HTTP/1.1 404 Not Found\r\n"), "HTTP 404 unknown group"),
    (ok(b""), "empty"),
    (ok(b"\n"), "empty"),
    (ok(b"two words\n"), "not a host"),
    (ok(b"xapp1\nxapp2\n"), "not a host"),
    (ok(b"x\x07y\n"), "not a host"),
    (ok(b"a" * 300 + b"\n"), "longer than 255"),
    (ok(b"\xc3\xa9t\xc3\xa9\n"), "not ASCII"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nxapp", "shorter"),
    (b"SSH-2.0-OpenSSH_9.2\r\n", "incomplete"),
    (b"garbage\r\n\r\nxapp1\n", "not an HTTP response"),
])
@pytest.mark.unit
def test_parse_response_rejects(data, why):
    with pytest.raises(ServerError) as info:
        parse_response(data)
    assert why in str(info.value)


@pytest.mark.unit
def test_build_request_encodes_query():
    req = build_request("boot1", 8008, "lab one", "Jérôme&co")
    line = req.split(b"\r\n")[0]
    assert line == b"GET /?group=lab+one&user=J%C3%A9r%C3%B4me%26co HTTP/1.0"
    assert b"\r\nHost: boot1:8008\r\n" in req and req.endswith(b"\r\n\r\n")
    assert build_request("::1", 8008).startswith(b"GET / HTTP/1.0\r\nHost: [::1]:8008\r\n")


@pytest.mark.unit
def test_servers_from_env_and_default():
    assert lbclient.servers_from(None, {"LBSERVER": "boot1, [::1]:9"}) == [("boot1", 8008), ("::1", 9)]
    assert lbclient.servers_from(None, {}) == [("localhost", 8008)]
    assert lbclient.servers_from(["b:1"], {"LBSERVER": "ignored"}) == [("b", 1)]


def imported_modules(path: Path) -> set[str]:
    """Top-level names of the modules ``path`` imports ("." for a relative import)."""
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            modules.add("." if node.level else (node.module or "").split(".")[0])
    return modules


@pytest.mark.unit
def test_standard_library_only():
    """The client must run when copied alone into a thin-client image."""
    modules = imported_modules(CLIENT)
    assert modules <= set(sys.stdlib_module_names), modules - set(sys.stdlib_module_names)
    tree = ast.parse(CLIENT.read_text())
    # old Python 3 syntax: no := (3.8), no f-strings or variable annotations (3.6)
    assert not any(isinstance(n, (ast.NamedExpr, ast.JoinedStr, ast.AnnAssign)) for n in ast.walk(tree))


@pytest.mark.unit
def test_package_imports_nothing_of_the_project():
    """lbclient/ is its own top-level package: standard library, and itself, only."""
    files = sorted((ROOT / "lbclient").glob("*.py"))
    assert {f.name for f in files} >= {"__init__.py", "__main__.py", "client.py"}
    allowed = set(sys.stdlib_module_names) | {"lbclient"}
    for path in files:
        modules = imported_modules(path)
        assert not modules & {"lbserver", "lbagent", "common"}, (path.name, modules)
        assert modules <= allowed, (path.name, modules - allowed)


@pytest.mark.unit
def test_version_follows_the_project():
    """client.py cannot import common.version; its own VERSION must match it."""
    from common.version import __version__

    assert lbclient.VERSION == __version__


# -- real processes --------------------------------------------------------------

@pytest.fixture(scope="module")
def harness():
    """The terminal service harness; yields its port."""
    procs = Procs()
    port = free_port()
    proc = procs.start(python_cmd("tests.support.terminal_harness", "--listen", f"127.0.0.1:{port}",
                                  "--hosts", "host-a", "--groups", "g1:x,y;g2:z"))
    wait_for_port("127.0.0.1", port, proc=proc)
    try:
        yield port
    finally:
        procs.stop_all()


@pytest.fixture(scope="module")
def copied_client(tmp_path_factory):
    """lbclient/client.py copied alone into an empty directory as ``lbclient``, as in a thin-client image."""
    path = tmp_path_factory.mktemp("image") / "lbclient"
    shutil.copy(CLIENT, path)
    return path


def run_client(copied: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 15):
    # -I: isolated mode, so nothing of the project is importable
    full_env = {k: v for k, v in os.environ.items() if k not in ("LBSERVER", "PYTHONPATH")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-I", str(copied), *args], capture_output=True, text=True,
                          timeout=timeout, env=full_env)


@pytest.mark.daemon
def test_client_asks_group_and_user(harness, copied_client):
    s = f"127.0.0.1:{harness}"
    assert run_client(copied_client, "-s", s, "-g", "g2").stdout == "z\n"
    assert run_client(copied_client, "-s", s, "-u", "alice").stdout == "alice-host\n"
    result = run_client(copied_client, "-s", s, "-g", "g2", "-u", "alice")
    assert (result.returncode, result.stdout, result.stderr) == (0, "alice-host\n", "")
    assert run_client(copied_client, "-s", s).stdout == "host-a\n"


@pytest.mark.daemon
def test_client_env_lbserver_and_ipv6(procs, copied_client):
    port = free_port("::1")
    proc = procs.start(python_cmd("tests.support.terminal_harness", "--listen", f"[::1]:{port}", "--hosts", "v6host"))
    wait_for_port("::1", port, proc=proc)
    assert run_client(copied_client, "-s", f"[::1]:{port}").stdout == "v6host\n"
    result = run_client(copied_client, env={"LBSERVER": f"127.0.0.1:{free_port()} [::1]:{port}"})
    assert result.returncode == 0 and result.stdout == "v6host\n"
    assert "refused" in result.stderr.lower()


@pytest.mark.daemon
def test_client_falls_over_to_next_server(harness, copied_client):
    dead = free_port()
    result = run_client(copied_client, "-s", f"127.0.0.1:{dead}", "-s", f"127.0.0.1:{harness}", "-g", "g2")
    assert (result.returncode, result.stdout) == (0, "z\n")
    assert result.stderr.count("\n") == 1 and f"127.0.0.1:{dead}" in result.stderr


@pytest.mark.daemon
def test_client_unknown_group_and_none_answering(harness, copied_client):
    result = run_client(copied_client, "-s", f"127.0.0.1:{harness}", "-g", "nosuch")
    assert result.returncode == 1 and result.stdout == ""
    assert "HTTP 404" in result.stderr and "no balancer answered" in result.stderr


class BadServer:
    """A loopback TCP server answering every connection with fixed bytes (or never, when None)."""

    def __init__(self, reply: bytes | None) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.reply = reply
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        held = []
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            if self.reply is None:
                held.append(conn)  # accept, read nothing, say nothing
                continue
            with conn:
                conn.settimeout(2)
                try:
                    conn.recv(4096)
                    conn.sendall(self.reply)
                except OSError:
                    pass
        for conn in held:
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


@pytest.mark.parametrize("reply, why", [
    (b"HTTP/1.0 200 OK\r\n\r\n<html>not a host</html>\n", "not a host"),
    (b"HTTP/1.0 200 OK\r\n\r\n", "empty answer"),
    (b"HTTP/1.0 500 Oops\r\n\r\n", "HTTP 500"),
    (b"HTTP/1.0 200 OK\r\n\r\n" + b"a" * 300, "longer than 255"),
    (b"\x00\x01\x02", "incomplete"),
])
@pytest.mark.daemon
def test_client_rejects_bad_answers(harness, copied_client, reply, why):
    bad = BadServer(reply)
    try:
        result = run_client(copied_client, "-s", f"127.0.0.1:{bad.port}", "-s", f"127.0.0.1:{harness}",
                            "-g", "g2")
    finally:
        bad.close()
    assert (result.returncode, result.stdout) == (0, "z\n")
    assert why in result.stderr


@pytest.mark.daemon
def test_client_timeout_bounded(harness, copied_client):
    mute = BadServer(None)
    try:
        started = time.monotonic()
        result = run_client(copied_client, "-t", "0.5", "-s", f"127.0.0.1:{mute.port}",
                            "-s", f"127.0.0.1:{harness}", "-g", "g2")
        elapsed = time.monotonic() - started
    finally:
        mute.close()
    assert (result.returncode, result.stdout) == (0, "z\n")
    assert "timed out" in result.stderr
    assert elapsed < 5  # 0.5 s for the mute one plus interpreter start-up


@pytest.mark.daemon
def test_client_help_and_usage_errors(copied_client):
    help_text = run_client(copied_client, "--help")
    assert help_text.returncode == 0
    for word in ("usage: lbclient", "LBSERVER", "exit status", "examples", "--group", "--timeout"):
        assert word in help_text.stdout
    bad = run_client(copied_client, "-s", "host:notaport")
    assert bad.returncode == 2 and "invalid port" in bad.stderr
    assert run_client(copied_client, "-t", "0").returncode == 2


@pytest.mark.daemon
def test_python_m_lbclient(harness, tmp_path):
    """``python3 -m lbclient``, the package installed (here: on PYTHONPATH), from any directory."""
    env = {k: v for k, v in os.environ.items() if k != "LBSERVER"}
    env["PYTHONPATH"] = str(ROOT)
    help_text = subprocess.run([sys.executable, "-m", "lbclient", "--help"], capture_output=True, text=True,
                               timeout=15, env=env, cwd=tmp_path)
    assert help_text.returncode == 0, help_text.stderr
    assert help_text.stdout.startswith("usage: lbclient ") and "exit status" in help_text.stdout
    asked = subprocess.run([sys.executable, "-m", "lbclient", "-s", f"127.0.0.1:{harness}", "-g", "g2"],
                           capture_output=True, text=True, timeout=15, env=env, cwd=tmp_path)
    assert (asked.returncode, asked.stdout, asked.stderr) == (0, "z\n", "")


@pytest.mark.daemon
def test_client_py_copied_alone_runs_as_a_script(harness, tmp_path):
    """``python3 client.py`` next to nothing else: -S leaves out site-packages (where the project
    may be installed), so only the standard library and the file's own directory are importable."""
    image = tmp_path / "image"
    image.mkdir()
    shutil.copy(CLIENT, image / "client.py")
    env = {k: v for k, v in os.environ.items() if k not in ("LBSERVER", "PYTHONPATH")}
    for args, out in ((["--help"], "usage: lbclient "), (["-s", f"127.0.0.1:{harness}", "-g", "g2"], "z\n")):
        result = subprocess.run([sys.executable, "-S", "client.py", *args], capture_output=True, text=True,
                                timeout=15, env=env, cwd=image)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(out)
    assert sorted(p.name for p in image.iterdir()) == ["client.py"]  # nothing else needed or written


# -- etc/ldm/get_hosts ---------------------------------------------------------

def get_hosts(copied: Path, env: dict[str, str]):
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LB_CLIENT": f"{sys.executable} -I {copied}"}
    base.update(env)
    return subprocess.run(["sh", str(GET_HOSTS)], capture_output=True, text=True, timeout=20, env=base)


@pytest.mark.unit
def test_get_hosts_is_executable():
    assert os.access(GET_HOSTS, os.X_OK)
    assert GET_HOSTS.read_text().startswith("#!/bin/sh")


@pytest.mark.daemon
def test_get_hosts_asks_balancer(harness, copied_client):
    result = get_hosts(copied_client, {"LB_SERVERS": f"127.0.0.1:{free_port()} 127.0.0.1:{harness}",
                                       "LB_GROUP": "g2", "LDM_SERVER": "fallback1"})
    assert (result.returncode, result.stdout) == (0, "z\n")
    result = get_hosts(copied_client, {"LB_SERVERS": f"127.0.0.1:{harness}", "LDM_USERNAME": "alice"})
    assert result.stdout == "alice-host\n"


@pytest.mark.unit
def test_get_hosts_falls_back_to_ldm_server(copied_client):
    dead = f"127.0.0.1:{free_port()}"
    result = get_hosts(copied_client, {"LB_SERVERS": dead, "LB_TIMEOUT": "0.5", "LDM_SERVER": "xapp1 xapp2"})
    assert (result.returncode, result.stdout) == (0, "xapp1\nxapp2\n")
    assert "no balancer answered" in result.stderr
    result = get_hosts(copied_client, {"LB_SERVERS": dead, "LB_TIMEOUT": "0.5"})
    assert result.returncode == 1 and result.stdout == ""
    assert "LDM_SERVER is empty" in result.stderr
