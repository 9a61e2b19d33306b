"""lbagent as a real process on loopback, queried with xmlrpc.client and raw sockets."""

from __future__ import annotations

import http.client
import os
import resource
import signal
import socket
import ssl
import subprocess
import sys
import textwrap
import xmlrpc.client

import psutil
import pytest

from tests.support import free_port, python_cmd, wait_for_port, wait_until
from tests.support.agentclient import CLIENT_TIMEOUT, SourceTransport, proxy

pytestmark = pytest.mark.daemon



def config_text(host: str, port: int, extra: str = "", agent_attrs: str = 'sample-interval="0.5"') -> str:
    shown = f"[{host}]" if ":" in host else host
    return textwrap.dedent("""\
        <?xml version="1.0"?>
        <lbaconfig>
          <agent listen="{listen}" {attrs}/>
        {extra}
        </lbaconfig>
        """).format(listen=f"{shown}:{port}", attrs=agent_attrs, extra=extra)


class Agent:
    """One foreground agent process and what a test needs to talk to it."""

    def __init__(self, procs, tmp_path, host: str, extra: str = "", agent_attrs: str = 'sample-interval="0.5"',
                 nofile: int | None = None, args: tuple[str, ...] = ()):
        self.host = host
        self.port = free_port(host)
        self.config = tmp_path / "lbaconfig.xml"
        self.config.write_text(config_text(host, self.port, extra, agent_attrs))
        self.log = tmp_path / "agent.log"
        kw = {}
        if nofile is not None:
            # Soft and hard: the agent cannot raise it, as under a small LimitNOFILE.
            kw["preexec_fn"] = lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
        self.proc = procs.start(python_cmd("lbagent", "-f", "-c", str(self.config), *args),
                                stderr=open(self.log, "w"), stdout=subprocess.DEVNULL, **kw)
        wait_for_port(host, self.port, proc=self.proc)

    def rpc(self, **kw) -> xmlrpc.client.ServerProxy:
        return proxy(self.host, self.port, **kw)

    def log_text(self) -> str:
        return self.log.read_text()


def raw_request(host: str, port: int, data: bytes, source: str | None = None) -> bytes:
    """Send ``data`` and read the whole answer (the agent closes after one request)."""
    with socket.create_connection((host, port), timeout=CLIENT_TIMEOUT,
                                  source_address=(source, 0) if source else None) as s:
        s.sendall(data)
        chunks = []
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


def post(path: str, body: bytes, headers: str = "") -> bytes:
    return (f"POST {path} HTTP/1.0\r\nHost: x\r\nContent-Type: text/xml\r\n"
            f"Content-Length: {len(body)}\r\n{headers}\r\n").encode() + body


def _stop_detached(pid: int, pidfile) -> None:
    """SIGTERM a daemonised agent; return once its pid file is gone and the process with it."""
    os.kill(pid, signal.SIGTERM)
    wait_until(lambda: not pidfile.exists(), timeout=10, what="pid file removed")
    wait_until(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE,
               timeout=10, what="daemon gone")


def _kill_left_over(pid: int | None, pidfile) -> None:
    """After a failed test: SIGKILL the daemon, found by its pid file when the test had not read it yet."""
    if pid is None and pidfile.exists():
        try:
            pid = int(pidfile.read_text().strip())
        except ValueError:
            pid = None
    if pid is not None and psutil.pid_exists(pid):
        os.kill(pid, signal.SIGKILL)


def test_state_matches_the_system_and_custom_variables(procs, tmp_path):
    marker = f"lbagent-proc-marker-{os.getpid()}"
    helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", marker])
    hang_marker = f"47.{os.getpid()}"
    (tmp_path / "queue").write_text("17\nignored\n")
    extra = f"""
      <variables>
        <variable name="ANSWER" type="command" command="echo 42"/>
        <variable name="HANG" type="command" command="sleep {hang_marker}" timeout="1.5"/>
        <variable name="GARBAGE" type="command" command="head -c 64 /dev/urandom; printf '\\001'"/>
        <variable name="FAILS" type="command" command="echo 1; exit 2"/>
        <variable name="HELPER" type="process" pattern="{marker}"/>
        <variable name="NOPROC" type="process" pattern="^no-such-process-[0-9]{{12}}$"/>
        <variable name="TMPDISK" type="disk" path="{tmp_path}"/>
        <variable name="NODISK" type="disk" path="{tmp_path}/absent"/>
        <variable name="QUEUE" type="file" path="{tmp_path}/queue"/>
        <variable name="NOFILE" type="file" path="{tmp_path}/absent"/>
        <variable name="ROOM" type="constant" value="B12"/>
        <variable name="READY" type="constant" value="true"/>
      </variables>"""
    try:
        agent = Agent(procs, tmp_path, "127.0.0.41", extra)
        # The port listens at once; the first answer waits for the first sample.
        state = agent.rpc().get_state()
        v = state["variables"]
        assert v["NBPROC"] == os.cpu_count()
        assert v["MEMTOTAL"] == pytest.approx(psutil.virtual_memory().total / 2 ** 20, rel=0.03)
        assert 0 <= v["MEMUSEDPCT"] <= 100 and 0 <= v["CPUUSED"] <= 100
        assert v["MEMUSED"] + v["MEMAVAIL"] == pytest.approx(v["MEMTOTAL"], abs=2)
        assert v["DISKUSEDPCT"] == pytest.approx(psutil.disk_usage("/").percent, abs=1)
        assert v["UPTIME"] == pytest.approx(psutil.time.time() - psutil.boot_time(), abs=30)
        assert v["LOADAVG15"] == pytest.approx(os.getloadavg()[2], abs=1)
        assert v["NBSESSIONS"] == len(psutil.users())
        assert state["users"] == sorted({u.name for u in psutil.users()})
        assert v["NBUSERS"] == len(state["users"])
        assert isinstance(v["CPUFREQ"], int) and v["CPUFREQ"] >= 0
        assert state["hostname"] == socket.gethostname()
        assert abs(state["sampled_at"] - psutil.time.time()) < 60
        from common.builtins import BUILTIN_VARIABLES
        assert set(BUILTIN_VARIABLES) <= set(v)

        assert v["ANSWER"] == 42
        assert v["HELPER"] is True and v["NOPROC"] is False
        assert v["TMPDISK"] == pytest.approx(psutil.disk_usage(str(tmp_path)).percent, abs=1)
        assert v["QUEUE"] == 17
        assert v["ROOM"] == "B12" and v["READY"] is True
        for absent in ("HANG", "GARBAGE", "FAILS", "NODISK", "NOFILE"):
            assert absent not in v

        helper.kill()
        helper.wait()
        # From now on the sampler spends 1.5 s of every sample in the hanging
        # command; requests are answered from the cache all the same.
        wait_until(lambda: agent.rpc().get_state()["variables"]["HELPER"] is False,
                   timeout=10, what="HELPER false once the process is gone")
        for _ in range(5):
            assert agent.rpc().get_state()["variables"]["ANSWER"] == 42
    finally:
        helper.kill()
        helper.wait()
    procs.stop_all()
    log = agent.log_text()
    hang_line = next(n for n, line in enumerate(agent.config.read_text().splitlines(), 1) if 'name="HANG"' in line)
    assert log.count(f"variable HANG (command, line {hang_line}) left out: timed out") == 1, log
    assert "variable GARBAGE" in log and "variable NOFILE" in log
    # Killed with its process group, the hanging command leaves nothing behind.
    wait_until(lambda: not any(hang_marker in " ".join(p.info["cmdline"] or ())
                               for p in psutil.process_iter(["cmdline"])),
               timeout=5, what="no leftover hanging command")


def test_allow_list_refuses_other_addresses(procs, tmp_path):
    agent = Agent(procs, tmp_path, "127.0.0.42", '<access><allow from="127.0.0.1/32"/></access>')
    assert agent.rpc(source="127.0.0.1").ping() is True
    for _ in range(3):
        with pytest.raises(xmlrpc.client.ProtocolError) as info:
            agent.rpc(source="127.0.0.9").get_state()
        assert info.value.errcode == 403
    answer = raw_request(agent.host, agent.port, post("/RPC2", xmlrpc.client.dumps((), "ping").encode()),
                         source="127.0.0.9")
    assert answer.startswith(b"HTTP/1.0 403 ") and b"access denied for 127.0.0.9" in answer
    assert agent.rpc(source="127.0.0.1").get_state()["variables"]["NBPROC"] == os.cpu_count()
    procs.stop_all()
    log = agent.log_text()
    assert log.count("refused query from 127.0.0.9") == 1, log  # not once per request


def test_bad_requests_do_not_hurt_the_agent(procs, tmp_path):
    agent = Agent(procs, tmp_path, "127.0.0.43", agent_attrs='sample-interval="1" max-request-bytes="4096"')
    host, port = agent.host, agent.port

    # Malformed XML: a fault, and the agent keeps answering.
    answer = raw_request(host, port, post("/RPC2", b"<methodCall><methodName>get_state</meth"))
    assert answer.startswith(b"HTTP/1.0 200 ")
    with pytest.raises(xmlrpc.client.Fault):
        xmlrpc.client.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert agent.rpc().ping() is True

    # Entity bomb: refused as a fault, quickly, without expanding anything.
    bomb = (b'<?xml version="1.0"?>\n<!DOCTYPE b [<!ENTITY a "aaaaaaaaaa">'
            + b"".join(b'<!ENTITY a%d "%s">' % (i + 1, (b"&a%d;" % i if i else b"&a;") * 10) for i in range(9))
            + b"]>\n<methodCall><methodName>&a9;</methodName></methodCall>")
    answer = raw_request(host, port, post("/", bomb))
    with pytest.raises(xmlrpc.client.Fault, match="DTDForbidden"):
        xmlrpc.client.loads(answer.split(b"\r\n\r\n", 1)[1])

    # Oversized body: 413 from the announced length alone, and from a real client.
    answer = raw_request(host, port, b"POST /RPC2 HTTP/1.0\r\nContent-Length: 50000000\r\n\r\n")
    assert answer.startswith(b"HTTP/1.0 413 ")
    with pytest.raises(xmlrpc.client.ProtocolError) as info:
        agent.rpc().ping("x" * 200_000)
    assert info.value.errcode == 413

    # Wrong path and wrong method.
    with pytest.raises(xmlrpc.client.ProtocolError) as info:
        agent.rpc(path="/other").ping()
    assert info.value.errcode == 404
    assert raw_request(host, port, b"GET / HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.0 405 ")
    assert raw_request(host, port, b"\x16\x03\x01garbage\r\n\r\n").startswith(b"HTTP/1.0 400 ")
    # Digits int() does not take ('\xb2' is a superscript two in latin-1): answered, not hung up on.
    for length in (b"\xb2", b"\xd9\xa3", b"1\xb9", b"-1", b"0x10"):
        answer = raw_request(host, port, b"POST /RPC2 HTTP/1.0\r\nContent-Length: " + length + b"\r\n\r\n")
        assert answer.startswith(b"HTTP/1.0 400 ") and b"bad Content-Length" in answer, (length, answer)

    # Both paths serve XML-RPC.
    assert agent.rpc(path="/").ping() is True
    assert agent.rpc(path="/RPC2").get_state()["hostname"] == socket.gethostname()
    assert agent.proc.poll() is None


def test_stuck_client_neither_blocks_others_nor_lingers(procs, tmp_path):
    agent = Agent(procs, tmp_path, "127.0.0.44", agent_attrs='sample-interval="1" request-timeout="1"')
    with socket.create_connection((agent.host, agent.port), timeout=CLIENT_TIMEOUT) as stuck:
        stuck.sendall(b"POST /RPC2 HTTP/1.0\r\nContent-Length: 100\r\n\r\n<methodCall>")  # and no more
        assert agent.rpc(timeout=2.0).get_state()["variables"]["NBPROC"] == os.cpu_count()
        # request-timeout bounds the whole connection: the agent hangs up on it.
        stuck.settimeout(CLIENT_TIMEOUT)
        assert stuck.recv(4096) == b""
    with socket.create_connection((agent.host, agent.port), timeout=CLIENT_TIMEOUT) as trickle:
        # A byte at a time, each within the per-read timeout, still ends at the deadline.
        def cut_off():
            try:
                trickle.sendall(b"P")
                return False
            except OSError:
                return True
        wait_until(cut_off, timeout=5, interval=0.3, what="trickling client cut off")


def test_ipv6_loopback(procs, tmp_path):
    agent = Agent(procs, tmp_path, "::1", '<access><allow from="::1"/></access>')
    state = agent.rpc().get_state()
    assert state["variables"]["NBPROC"] == os.cpu_count()


def test_reload_in_foreground_rebinds_and_applies_variables(procs, tmp_path):
    agent = Agent(procs, tmp_path, "127.0.0.45")
    assert "ROOM" not in agent.rpc().get_state()["variables"]
    new_port = free_port("127.0.0.45")
    agent.config.write_text(config_text("127.0.0.45", new_port, """
      <access><allow from="127.0.0.0/8"/></access>
      <variables><variable name="ROOM" type="constant" value="7"/></variables>"""))
    agent.proc.send_signal(signal.SIGHUP)
    wait_for_port("127.0.0.45", new_port, proc=agent.proc)
    moved = proxy("127.0.0.45", new_port)
    wait_until(lambda: moved.get_state()["variables"].get("ROOM") == 7, timeout=10, what="ROOM after reload")
    wait_until(lambda: _refused("127.0.0.45", agent.port), timeout=10, what="old port closed")


def _refused(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def test_daemon_lifecycle(tmp_path):
    """No -f: pid file, refusal of a second instance, SIGHUP reloads, SIGTERM cleans up."""
    host = "127.0.0.46"
    port = free_port(host)
    pidfile = tmp_path / "lbagent.pid"
    log = tmp_path / "agent.log"
    cfg = tmp_path / "lbaconfig.xml"
    log_el = f'<log file="{log}" level="info"/>'
    cfg.write_text(config_text(host, port, log_el))
    env = dict(os.environ, PYTHONPATH=str(os.path.dirname(os.path.dirname(__file__))))
    cmd = python_cmd("lbagent", "-c", str(cfg), "-p", str(pidfile))
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=30, env=env)
    assert first.returncode == 0, first.stderr
    pid = None
    try:
        pid = int(wait_until(lambda: pidfile.exists() and pidfile.read_text().strip(), what="pid file"))
        assert psutil.pid_exists(pid) and pid != os.getpid()
        wait_for_port(host, port)
        assert proxy(host, port).ping() is True

        second = subprocess.run(cmd, capture_output=True, text=True, timeout=30, env=env)
        assert second.returncode != 0
        assert "already running" in second.stderr and str(pid) in second.stderr
        assert int(pidfile.read_text()) == pid

        cfg.write_text(config_text(host, port, log_el + """
          <variables><variable name="ROOM" type="constant" value="12"/></variables>"""))
        os.kill(pid, signal.SIGHUP)
        wait_until(lambda: proxy(host, port).get_state()["variables"].get("ROOM") == 12,
                   timeout=10, what="new variable after SIGHUP")

        broken = config_text(host, port, log_el + """
          <variables><variable name="ROOM" type="constant"/></variables>""")
        cfg.write_text(broken)
        bad_line = broken.splitlines().index('          <variables><variable name="ROOM" type="constant"/></variables>') + 1
        os.kill(pid, signal.SIGHUP)
        wait_until(lambda: "reload refused" in log.read_text(), timeout=10, what="reload refusal logged")
        assert f"{cfg}:{bad_line}: " in log.read_text()
        assert "missing attribute value" in log.read_text()
        assert proxy(host, port).get_state()["variables"]["ROOM"] == 12  # old config still in force

        _stop_detached(pid, pidfile)
        pid = None
        assert "lbagent stopped" in log.read_text()
    finally:
        _kill_left_over(pid, pidfile)


def test_sigusr1_reopens_the_log_file_and_sighup_reloads(tmp_path):
    """Daemonised with a <log file>: SIGUSR1 reopens the file after logrotate's rename and never
    reads the configuration (neither a finished edit nor a half-written file); SIGHUP reloads,
    leaves the open log file alone, and moves to a new <log file> path."""
    host = "127.0.0.64"
    port = free_port(host)
    pidfile = tmp_path / "lbagent.pid"
    log = tmp_path / "agent.log"
    cfg = tmp_path / "lbaconfig.xml"

    def config(room: int, log_file=log) -> str:
        return config_text(host, port, f'<log file="{log_file}" level="info"/>'
                           f'<variables><variable name="ROOM" type="constant" value="{room}"/></variables>')

    def room() -> int:
        return proxy(host, port).get_state()["variables"]["ROOM"]

    def room_after_a_new_sample() -> int:
        """ROOM from a sample taken after this call (a reload shows in the next sample)."""
        before = proxy(host, port).get_state()["sampled_at"]
        state = wait_until(lambda: (s := proxy(host, port).get_state())["sampled_at"] > before and s,
                           timeout=10, what="a new sample")
        return state["variables"]["ROOM"]

    def rotate(to: str) -> None:
        """What logrotate does: rename the file, then SIGUSR1; return once a new file is written."""
        log.rename(tmp_path / to)
        os.kill(pid, signal.SIGUSR1)
        wait_until(lambda: log.exists() and f"SIGUSR1: log file {log} reopened" in log.read_text(),
                   timeout=10, what=f"a new {log.name} after the rename to {to}")

    cfg.write_text(config(1))
    env = dict(os.environ, PYTHONPATH=str(os.path.dirname(os.path.dirname(__file__))))
    started = subprocess.run(python_cmd("lbagent", "-c", str(cfg), "-p", str(pidfile)),
                             capture_output=True, text=True, timeout=30, env=env)
    assert started.returncode == 0, started.stderr
    pid = None
    try:
        pid = int(wait_until(lambda: pidfile.exists() and pidfile.read_text().strip(), what="pid file"))
        wait_for_port(host, port)
        wait_until(lambda: "started" in log.read_text(), what="agent logging to its file")
        assert room() == 1

        # A finished edit waits in the file: the rotation does not apply it.
        cfg.write_text(config(2))
        rotate("agent.log.1")
        assert "started" in (tmp_path / "agent.log.1").read_text()
        assert "started" not in log.read_text()
        assert room_after_a_new_sample() == 1

        # A half-written file: the rotation does not even read it.
        whole = config(3)
        cfg.write_text(whole[:len(whole) // 2])
        rotate("agent.log.2")
        assert room_after_a_new_sample() == 1
        assert psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        for name in ("agent.log.1", "agent.log.2", "agent.log"):
            text = (tmp_path / name).read_text()
            assert "reload" not in text and "ERROR" not in text, (name, text)

        # SIGHUP does read it: the broken file is refused, the running configuration stays.
        os.kill(pid, signal.SIGHUP)
        wait_until(lambda: "reload refused" in log.read_text(), timeout=10, what="reload refusal logged")
        assert f"{cfg}:" in log.read_text()
        assert room() == 1

        # SIGHUP reloads a good file and does not reopen the log: the renamed file gets the lines.
        log.rename(tmp_path / "agent.log.3")
        cfg.write_text(config(4))
        os.kill(pid, signal.SIGHUP)
        wait_until(lambda: room() == 4, timeout=10, what="ROOM=4 after SIGHUP")
        wait_until(lambda: "configuration reloaded" in (tmp_path / "agent.log.3").read_text(),
                   timeout=10, what="reload logged in the open file")
        assert not log.exists()

        # A new <log file> path is part of the configuration: SIGHUP switches to it.
        other = tmp_path / "other.log"
        cfg.write_text(config(5, other))
        os.kill(pid, signal.SIGHUP)
        wait_until(lambda: other.exists() and "configuration reloaded" in other.read_text(),
                   timeout=10, what="reload logged in the new log file")
        wait_until(lambda: room() == 5, timeout=10, what="ROOM=5 after SIGHUP")
        assert "SIGHUP: reloading" in (tmp_path / "agent.log.3").read_text()

        # A new log file that cannot be opened: the whole reload is refused.
        cfg.write_text(config(6, tmp_path / "no-such-dir" / "agent.log"))
        os.kill(pid, signal.SIGHUP)
        wait_until(lambda: "reload refused, keeping the running configuration: cannot open the new log"
                   in other.read_text(), timeout=10, what="reload refused for the log file")
        assert room_after_a_new_sample() == 5

        # A log path that cannot be reopened: the daemon keeps writing to the file it has.
        other.rename(tmp_path / "other.log.1")
        other.mkdir()
        os.kill(pid, signal.SIGUSR1)
        wait_until(lambda: "cannot reopen the log file, still writing to the old one"
                   in (tmp_path / "other.log.1").read_text(), timeout=10, what="reopen failure logged")
        other.rmdir()
        other = tmp_path / "other.log.1"

        _stop_detached(pid, pidfile)
        pid = None
        assert "lbagent stopped" in other.read_text()
        assert not log.exists()
    finally:
        _kill_left_over(pid, pidfile)


def test_sigusr1_in_the_foreground_is_harmless(procs, tmp_path):
    """-f logs to stderr: SIGUSR1 finds no file to reopen, reads no configuration, ends nothing."""
    agent = Agent(procs, tmp_path, "127.0.0.65", args=("-v",))
    agent.config.write_text("<?xml version=\"1.0\"?>\n<lbaconfig>\n  <agent listen=")  # half-written
    agent.proc.send_signal(signal.SIGUSR1)
    wait_until(lambda: "SIGUSR1: logging to stderr, no log file to reopen" in agent.log_text(),
               timeout=10, what="SIGUSR1 handled")
    assert agent.proc.poll() is None
    assert agent.rpc().ping() is True
    log = agent.log_text()
    assert "reload" not in log and "ERROR" not in log, log


def test_port_in_use_is_reported_before_detaching(tmp_path):
    host = "127.0.0.47"
    with socket.socket() as busy:
        busy.bind((host, 0))
        busy.listen()
        port = busy.getsockname()[1]
        cfg = tmp_path / "lbaconfig.xml"
        cfg.write_text(config_text(host, port))
        env = dict(os.environ, PYTHONPATH=str(os.path.dirname(os.path.dirname(__file__))))
        res = subprocess.run(python_cmd("lbagent", "-c", str(cfg), "-p", str(tmp_path / "pid")),
                             capture_output=True, text=True, timeout=30, env=env)
    assert res.returncode == 1
    assert f"cannot listen on {host}:{port}" in res.stderr
    assert not (tmp_path / "pid").exists()


def test_reload_onto_an_overlapping_address_on_the_same_port(procs, tmp_path):
    """127.0.0.49:P to [::ffff:127.0.0.49]:P: Linux refuses to bind the new address while the old
    one listens, exactly as for a move to 0.0.0.0:P or [::]:P (which tests must not listen on).
    The agent closes the old listener first, and serves on the new one."""
    agent = Agent(procs, tmp_path, "127.0.0.49")
    agent.config.write_text(config_text("::ffff:127.0.0.49", agent.port, """
      <variables><variable name="ROOM" type="constant" value="7"/></variables>"""))
    agent.proc.send_signal(signal.SIGHUP)
    # IPv4 clients reach the v4-mapped IPv6 socket on the same address and port.
    wait_until(lambda: agent.rpc().get_state()["variables"].get("ROOM") == 7, timeout=10, what="ROOM after reload")
    log = agent.log_text()
    assert f"overlaps 127.0.0.49:{agent.port}, which is listening" in log
    assert f"now listening on [::ffff:127.0.0.49]:{agent.port} (was 127.0.0.49:{agent.port})" in log
    assert "reload failed" not in log


def test_log_rate_limits_outlive_a_rebind(procs, tmp_path):
    secret = tmp_path / "agent.secret"
    secret.write_text("s3cret-for-the-test\n")
    secret.chmod(0o600)
    attrs = f'sample-interval="0.5" secret-file="{secret}"'
    agent = Agent(procs, tmp_path, "127.0.0.54", agent_attrs=attrs)

    def wrong_secret(port: int) -> None:
        with pytest.raises(xmlrpc.client.ProtocolError) as info:
            xmlrpc.client.ServerProxy(f"http://x:wrong@{agent.host}:{port}/RPC2").ping()
        assert info.value.errcode == 401

    wrong_secret(agent.port)
    new_port = free_port(agent.host)
    agent.config.write_text(config_text(agent.host, new_port, agent_attrs=attrs))
    agent.proc.send_signal(signal.SIGHUP)
    wait_for_port(agent.host, new_port, proc=agent.proc)
    wrong_secret(new_port)
    procs.stop_all()
    log = agent.log_text()
    assert f"now listening on {agent.host}:{new_port}" in log
    assert log.count("refused query from 127.0.0.1: a wrong secret") == 1, log


def test_refused_flood_leaves_workers_for_allowed_balancers(procs, tmp_path):
    """More refused peers than the agent has workers, all holding their connection open: each
    gets its 403 and allowed clients are still served, because refusals are answered in the
    accept loop and never wait on the peer in a worker."""
    agent = Agent(procs, tmp_path, "127.0.0.55", '<access><allow from="127.0.0.1/32"/></access>')
    flood = []
    try:
        for _ in range(300):  # more than MAX_CONNECTIONS (256)
            s = socket.create_connection((agent.host, agent.port), timeout=CLIENT_TIMEOUT,
                                         source_address=("127.0.0.9", 0))
            flood.append(s)
            # Read the answer before the next connection (this also keeps the accept backlog short).
            answer = s.recv(4096)
            assert answer.startswith(b"HTTP/1.0 403 ") and answer.endswith(b"access denied for 127.0.0.9\n"), \
                (len(flood), answer)
        assert agent.rpc(source="127.0.0.1").ping() is True
    finally:
        for s in flood:
            s.close()
    procs.stop_all()
    assert agent.log_text().count("refused query from 127.0.0.9") == 1


def test_refused_tls_peer_is_hung_up_on_before_the_handshake(procs, tmp_path):
    from tests.support.tls import make_ca
    leaf = make_ca(tmp_path / "pki").issue(tmp_path / "pki", "agent", ips=("127.0.0.56",))
    agent = Agent(procs, tmp_path, "127.0.0.56", '<access><allow from="127.0.0.1/32"/></access>',
                  agent_attrs=f'sample-interval="0.5" tls-cert="{leaf.cert}" tls-key="{leaf.key}"')
    with socket.create_connection((agent.host, agent.port), timeout=CLIENT_TIMEOUT,
                                  source_address=("127.0.0.9", 0)) as raw:
        ctx = ssl.create_default_context(cafile=str(tmp_path / "pki" / "test-ca.pem"))
        with pytest.raises((ssl.SSLError, ConnectionError)):
            ctx.wrap_socket(raw, server_hostname=agent.host)
    # An allowed peer completes its handshake and is served.
    ctx = ssl.create_default_context(cafile=str(tmp_path / "pki" / "test-ca.pem"))
    allowed = xmlrpc.client.ServerProxy(f"https://{agent.host}:{agent.port}/RPC2", context=ctx)
    assert allowed.ping() is True
    procs.stop_all()
    assert "refused query from 127.0.0.9" in agent.log_text()


def test_stop_does_not_wait_for_running_commands(procs, tmp_path):
    """SIGTERM while a command with a long timeout runs: the agent kills it and exits at once."""
    flag = tmp_path / "hang-now"
    marker = f"53.{os.getpid()}"
    extra = f"""
      <variables>
        <variable name="SLOW" type="command" timeout="60"
                  command="if [ -e {flag} ]; then sleep {marker}; fi; echo 1"/>
      </variables>"""
    agent = Agent(procs, tmp_path, "127.0.0.57", extra, agent_attrs='sample-interval="0.1"')
    assert agent.rpc().get_state()["variables"]["SLOW"] == 1
    flag.touch()

    def sleeping():
        return [p for p in psutil.process_iter(["cmdline"]) if marker in " ".join(p.info["cmdline"] or ())]
    wait_until(sleeping, timeout=10, what="the slow command running")
    agent.proc.send_signal(signal.SIGTERM)
    # Far less than the command's 60 s timeout (and than an init script's patience).
    assert agent.proc.wait(timeout=10) == 0
    assert not sleeping()
    assert "lbagent stopped" in agent.log_text()


def test_reload_onto_an_address_another_process_holds_keeps_the_listener(procs, tmp_path):
    """Same port, another address that someone else listens on: no overlap with the agent's own
    socket, so the reload fails at once and the old listener is never closed."""
    agent = Agent(procs, tmp_path, "127.0.0.58")
    with socket.create_server(("127.0.0.59", agent.port)):
        agent.config.write_text(config_text("127.0.0.59", agent.port))
        agent.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "reload failed" in agent.log_text(), timeout=10, what="the reload refused")
        assert agent.rpc().ping() is True
    log = agent.log_text()
    assert f"cannot listen on 127.0.0.59:{agent.port}" in log
    assert "overlaps" not in log and "listening on 127.0.0.58" not in log, log


def test_refused_peers_are_logged_a_few_lines_a_minute_in_all(procs, tmp_path):
    """A scan from many addresses: 20 lines, then one summary line, whatever the number of peers."""
    agent = Agent(procs, tmp_path, "127.0.0.60", '<access><allow from="127.0.0.1/32"/></access>')
    for i in range(1, 31):
        source = f"127.0.1.{i}"
        answer = raw_request(agent.host, agent.port, b"GET / HTTP/1.0\r\n\r\n", source=source)
        assert answer.startswith(b"HTTP/1.0 403 "), (source, answer)
    assert agent.rpc(source="127.0.0.1").ping() is True
    procs.stop_all()
    log = agent.log_text()
    assert log.count("refused query from 127.0.1.") == 20, log
    assert log.count("more refused peers") == 1, log


def test_out_of_descriptors_the_agent_pauses_accepting_then_recovers(procs, tmp_path):
    """Idle clients until the agent has no descriptor left (a 64-file limit it cannot raise):
    accept() fails with EMFILE while the connection stays queued. The agent logs it once and
    pauses instead of spinning, and serves again once descriptors are free."""
    agent = Agent(procs, tmp_path, "127.0.0.61", agent_attrs='sample-interval="60" request-timeout="30"',
                  nofile=64)
    idle = []
    try:
        for _ in range(90):  # more than 64 descriptors, fewer than that plus the listen backlog
            idle.append(socket.create_connection((agent.host, agent.port), timeout=CLIENT_TIMEOUT))
        wait_until(lambda: "cannot accept connections" in agent.log_text(), timeout=10, what="EMFILE logged")
        # A busy accept loop would take a whole core while the connections stay queued.
        cpu = psutil.Process(agent.proc.pid).cpu_percent(interval=1.0)
        assert cpu < 50, f"accept loop spinning: {cpu}% CPU"
    finally:
        for s in idle:
            s.close()
    wait_until(lambda: agent.rpc().ping(), timeout=10, what="served again")
    procs.stop_all()
    log = agent.log_text()
    assert log.count("cannot accept connections on port") == 1, log
    assert "Too many open files" in log


def test_refused_flood_under_a_small_descriptor_limit(procs, tmp_path):
    """With 64 descriptors, 100 refused peers that keep their connection open: only a quarter of
    the limit is held for lingering closes, the rest are closed at once, so the agent never runs
    out of descriptors and an allowed balancer is served."""
    agent = Agent(procs, tmp_path, "127.0.0.62", '<access><allow from="127.0.0.1/32"/></access>', nofile=64)
    flood = []
    try:
        for _ in range(100):
            s = socket.create_connection((agent.host, agent.port), timeout=CLIENT_TIMEOUT,
                                         source_address=("127.0.0.9", 0))
            flood.append(s)
            assert s.recv(4096).startswith(b"HTTP/1.0 403 "), len(flood)
        assert agent.rpc(source="127.0.0.1").ping() is True
    finally:
        for s in flood:
            s.close()
    procs.stop_all()
    assert "cannot accept connections" not in agent.log_text()
