"""<sessions>: real agents with each source, queried with xmlrpc.client.

utmp entries are written with libc's own calls (pututxline, updwtmpx) into
a private file; display servers are real processes of another user;
x2goserver's session database is created and filled by x2goserver's own
scripts, in a mount namespace of the test's so the machine's is untouched.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import grp
import os
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from tests.support import free_port, python_cmd, require_program, wait_for_port, wait_until
from tests.support.agentclient import proxy

HOST = "127.0.0.71"
NOBODY = 65534

USER_PROCESS, DEAD_PROCESS = 7, 8


class ExitStatus(ctypes.Structure):
    _fields_ = [("e_termination", ctypes.c_short), ("e_exit", ctypes.c_short)]


class Utmpx(ctypes.Structure):
    """glibc's struct utmpx (the same as struct utmp) on Linux."""

    _fields_ = [("ut_type", ctypes.c_short), ("ut_pid", ctypes.c_int), ("ut_line", ctypes.c_char * 32),
                ("ut_id", ctypes.c_char * 4), ("ut_user", ctypes.c_char * 32), ("ut_host", ctypes.c_char * 256),
                ("ut_exit", ExitStatus), ("ut_session", ctypes.c_int32), ("ut_tv_sec", ctypes.c_int32),
                ("ut_tv_usec", ctypes.c_int32), ("ut_addr_v6", ctypes.c_int32 * 4), ("unused", ctypes.c_char * 20)]


LIBC = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
LIBC.pututxline.restype = ctypes.c_void_p


def utmp_entry(kind: int, user: str, line: str, since: float) -> Utmpx:
    entry = Utmpx(ut_type=kind, ut_pid=os.getpid(), ut_line=line.encode(), ut_id=line[-4:].encode(),
                  ut_user=user.encode(), ut_host=b"10.0.0.9")
    entry.ut_tv_sec, entry.ut_tv_usec = int(since), int(since % 1 * 1e6)
    return entry


def put_utmp(path: Path, *entries: Utmpx) -> None:
    """Write ``entries`` into the utmp file ``path`` as login(1) does: pututxline, replacing a tty's record."""
    path.touch()
    assert LIBC.utmpxname(str(path).encode()) == 0
    LIBC.setutxent()
    try:
        for entry in entries:
            assert LIBC.pututxline(ctypes.byref(entry)), os.strerror(ctypes.get_errno())
    finally:
        LIBC.endutxent()
        LIBC.utmpxname(b"/var/run/utmp")


def config(port: int, sessions: str, interval: float = 0.3) -> str:
    return f"""<?xml version="1.0"?>
<lbaconfig>
  <agent listen="{HOST}:{port}" sample-interval="{interval}" drain-file="" nologin-file=""/>
  <sessions>
{sessions}
  </sessions>
</lbaconfig>
"""


def start_agent(procs, tmp_path: Path, sessions: str, prefix: tuple[str, ...] = (), interval: float = 0.3):
    """A real lbagent with ``sessions`` as its <sessions>; returns (process, proxy, log file)."""
    port = free_port(HOST)
    cfg = tmp_path / "lbaconfig.xml"
    cfg.write_text(config(port, sessions, interval))
    log = tmp_path / "agent.log"
    proc = procs.start([*prefix, *python_cmd("lbagent", "-f", "-c", str(cfg))], stderr=open(log, "w"),
                       stdout=subprocess.DEVNULL)
    wait_for_port(HOST, port, timeout=20, proc=proc)
    return proc, proxy(HOST, port), log


def sessions_of(state: dict) -> list[tuple]:
    return sorted((s["user"], s["kind"], s["state"]) for s in state["sessions"])


@pytest.mark.daemon
def test_utmp_logins_and_logouts_written_by_libc(procs, tmp_path):
    utmp = tmp_path / "utmp"
    now = time.time()
    put_utmp(utmp, utmp_entry(USER_PROCESS, "alice", "pts/1", now - 60),
             utmp_entry(USER_PROCESS, "bob", "pts/2", now - 30),
             utmp_entry(USER_PROCESS, "alice", "pts/3", now - 10),
             utmp_entry(USER_PROCESS, "carol", "pts/4", now - 5))
    put_utmp(utmp, utmp_entry(DEAD_PROCESS, "", "pts/4", now))  # carol logged out
    _, rpc, _ = start_agent(procs, tmp_path, f'<utmp file="{utmp}"/>')
    state = rpc.get_state()
    assert sessions_of(state) == [("alice", "utmp", "active")] * 2 + [("bob", "utmp", "active")]
    assert state["users"] == ["alice", "bob"]
    assert state["variables"]["NBSESSIONS"] == 3 and state["variables"]["NBUSERS"] == 2
    bob = next(s for s in state["sessions"] if s["user"] == "bob")
    assert bob["since"] == pytest.approx(now - 30, abs=1e-3) and bob["info"] == ""

    put_utmp(utmp, utmp_entry(DEAD_PROCESS, "", "pts/2", time.time()))  # bob logs out
    wait_until(lambda: rpc.get_state()["users"] == ["alice"], what="bob's logout seen")


@pytest.mark.daemon
def test_ten_thousand_sessions_stay_bounded_and_fast(procs, tmp_path):
    utmp = tmp_path / "utmp"
    utmp.touch()  # updwtmpx appends to an existing file only
    entry = utmp_entry(USER_PROCESS, "", "pts/0", time.time())
    for i in range(12_000):  # updwtmpx appends: what a huge utmp file holds, written by libc
        entry.ut_user, entry.ut_line = f"u{i:05d}".encode(), f"pts/{i}".encode()
        LIBC.updwtmpx(str(utmp).encode(), ctypes.byref(entry))
    assert utmp.stat().st_size == 12_000 * ctypes.sizeof(Utmpx)
    _, rpc, _ = start_agent(procs, tmp_path, f'<utmp file="{utmp}"/>', interval=0.5)
    first = rpc.get_state()
    assert len(first["sessions"]) == 10_000 and len(first["users"]) == 10_000
    assert first["variables"]["NBSESSIONS"] == 10_000
    # The reply is marshalled once per sample: a request only sends it.
    for _ in range(3):
        started = time.monotonic()
        raw = exchange(HOST, rpc)
        assert time.monotonic() - started < 1.0 and len(raw) < 6_000_000
    wait_until(lambda: rpc.get_state()["sampled_at"] > first["sampled_at"], what="sampling goes on")


def exchange(host: str, rpc) -> bytes:
    """One get_state() on a raw socket: the reply's bytes, unparsed."""
    port = int(rpc._ServerProxy__host.rsplit(":", 1)[1])
    body = b"<?xml version='1.0'?>\n<methodCall>\n<methodName>get_state</methodName>\n<params>\n</params>\n</methodCall>\n"
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(b"POST /RPC2 HTTP/1.0\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        chunks = []
        while chunk := s.recv(1 << 20):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.daemon
def test_a_hanging_source_leaves_the_others_and_sampling_alone(procs, tmp_path):
    utmp = tmp_path / "utmp"
    put_utmp(utmp, utmp_entry(USER_PROCESS, "alice", "pts/1", time.time()))
    db = tmp_path / "x2go_sessions"
    lock = sqlite3.connect(db, isolation_level=None)
    lock.execute("create table sessions(x)")
    lock.execute("begin exclusive")  # x2goserver in the middle of a write that never ends
    try:
        _, rpc, log = start_agent(procs, tmp_path, f'<utmp file="{utmp}"/>\n    <x2go db="{db}" timeout="0.3"/>')
        first = rpc.get_state()
        assert sessions_of(first) == [("alice", "utmp", "active")]
        wait_until(lambda: rpc.get_state()["sampled_at"] > first["sampled_at"] + 1, timeout=15,
                   what="samples taken while the database stays locked")
        text = log.read_text()
        assert text.count("sessions of <x2go> (line 6) left out") == 1, text
        assert "database is locked" in text
    finally:
        lock.close()
    # The lock gone, the source reads again; this table is no x2goserver's, so its problem changes.
    wait_until(lambda: "no such column" in log.read_text(), what="the next problem logged")


@pytest.mark.daemon
def test_sessions_errors_name_file_and_line(tmp_path):
    cfg = tmp_path / "lbaconfig.xml"
    cfg.write_text('<?xml version="1.0"?>\n<lbaconfig>\n  <sessions>\n    <utmp/>\n'
                   '    <process names="Xvnc gnome-session-binary"/>\n  </sessions>\n</lbaconfig>\n')
    out = subprocess.run(python_cmd("lbagent", "--check-config", "-c", str(cfg)), capture_output=True, text=True)
    assert out.returncode == 1 and f"{cfg}:5: <process> name 'gnome-session-binary' is longer" in out.stderr


def display_server(procs, directory: Path, name: str, uid: int, code: str, *args: str) -> subprocess.Popen:
    """A process called ``name`` (a Python run through a link of that name), as user ``uid``, running ``code``."""
    link = directory / name
    if not link.exists():
        link.symlink_to(os.path.realpath(sys.executable))
    who = [] if uid == 0 else [require_program("setpriv"), f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
    return procs.start([*who, str(link), "-c", code, *args], env={"PYTHONPATH": ""})


LISTEN_AND_WAIT = """
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.71", int(sys.argv[sys.argv.index("-rfbport") + 1]))); s.listen()
print("listening", flush=True)
while True:
    c, _ = s.accept(); c.recv(1); c.close()
"""


@pytest.mark.system
def test_display_servers_of_users_and_their_viewers(procs, tmp_path):
    assert os.geteuid() == 0, "runs display servers as another user"
    bin_dir = Path(tempfile.mkdtemp(prefix="lbagent-sessions-"))
    bin_dir.chmod(0o755)
    try:
        port = free_port(HOST)
        xvnc = display_server(procs, bin_dir, "Xvnc", NOBODY, LISTEN_AND_WAIT, ":17", "-rfbport", str(port))
        assert xvnc.stdout.readline().strip() == "listening"
        display_server(procs, bin_dir, "x2goagent", 1, "import time; time.sleep(300)")
        display_server(procs, bin_dir, "Xorg", 0, "import time; time.sleep(300)")  # a display manager's: root
        _, rpc, _ = start_agent(procs, tmp_path, '<process names="Xvnc Xorg x2goagent nxagent"/>')
        wait_until(lambda: sessions_of(rpc.get_state()) == [("daemon", "process", "active"),
                                                            ("nobody", "process", "disconnected")],
                   what="nobody's Xvnc without a viewer, daemon's x2goagent")
        state = rpc.get_state()
        assert state["users"] == ["daemon", "nobody"]
        nobody = next(s for s in state["sessions"] if s["user"] == "nobody")
        assert nobody["since"] == pytest.approx(psutil.Process(xvnc.pid).create_time(), abs=0.01)
        with socket.create_connection((HOST, port)):  # a viewer attaches
            wait_until(lambda: ("nobody", "process", "active") in sessions_of(rpc.get_state()),
                       what="the Xvnc with a viewer active")
        wait_until(lambda: ("nobody", "process", "disconnected") in sessions_of(rpc.get_state()),
                   what="the Xvnc disconnected again")
    finally:
        for link in bin_dir.iterdir():
            link.unlink()
        bin_dir.rmdir()


X2GO = Path("/usr/lib/x2go")


def x2go_as(agent_pid: int, uid: int, script: str, *args: str) -> str:
    """Run one of x2goserver's scripts as user ``uid`` in the agent's mount namespace (its x2go database)."""
    who = [] if uid == 0 else ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
    out = subprocess.run(["nsenter", f"--target={agent_pid}", "--mount", *who, script, *args],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.mark.system
def test_x2go_sessions_from_x2goservers_own_database(procs, tmp_path):
    assert os.geteuid() == 0, "x2goserver's database belongs to root and x2gouser"
    require_program("x2godbadmin")
    db_dir = tmp_path / "x2go"
    db_dir.mkdir()
    os.chown(db_dir, 0, grp.getgrnam("x2gouser").gr_gid)
    db_dir.chmod(0o770)
    tmp_path.chmod(0o755)
    # The agent, and x2goserver's scripts after it, see db_dir as /var/lib/x2go: the machine's is left alone.
    prefix = ("unshare", "--mount", "--propagation", "private", "sh", "-c",
              f'mount --bind "{db_dir}" /var/lib/x2go && x2godbadmin --createdb >&2 && exec "$@"', "sh")
    proc, rpc, log = start_agent(procs, tmp_path, "<utmp/>\n    <x2go/>", prefix=prefix)
    host = socket.gethostname()
    mine = {"nobody": "nobody-50-1700000000_stDxfce_dp24", "daemon": "daemon-51-1700000100_stDxfce_dp24",
            "bin": "bin-52-1700000200_stDxfce_dp24"}
    for (user, sid), uid in zip(mine.items(), (NOBODY, 1, 2)):
        assert x2go_as(proc.pid, uid, str(X2GO / "x2goinsertsession"), sid.split("-")[1], host, sid) == "inserted"
        x2go_as(proc.pid, uid, str(X2GO / "x2gocreatesession"), sid, "0123456789abcdef0123456789abcdef", "4242",
                "10.0.0.9", "30001", "30002", "30003", "30004", "30005")
    x2go_as(proc.pid, 1, str(X2GO / "x2gochangestatus"), "S", mine["daemon"])  # daemon suspends
    x2go_as(proc.pid, 2, str(X2GO / "x2gochangestatus"), "F", mine["bin"])      # bin's session ended
    wait_until(lambda: sessions_of(rpc.get_state()) == [("daemon", "x2go", "disconnected"),
                                                        ("nobody", "x2go", "active")],
               what="nobody's running and daemon's suspended session")
    listed = {line.split("|")[1]: line.split("|") for line in
              x2go_as(proc.pid, 0, "/usr/sbin/x2golistsessions_root").splitlines()}
    state = rpc.get_state()
    for s in state["sessions"]:
        fields = s["info"].split("|")
        theirs = listed[fields[1]]
        # The same line but for field 12, the session's age in seconds, which moves on between the two.
        assert fields[:12] + fields[13:] == theirs[:12] + theirs[13:]
        assert fields[11] == s["user"] and fields[7] == "10.0.0.9"
    daemon = next(s for s in state["sessions"] if s["user"] == "daemon")
    assert abs(daemon["since"] - time.time()) < 60
    assert state["variables"]["NBSESSIONS"] == 2 and state["users"] == ["daemon", "nobody"]
    assert "left out" not in log.read_text()


@pytest.mark.unit
def test_an_x2go_state_file_the_user_made_a_fifo_or_a_link_is_not_read(tmp_path):
    """The agent (root) reads x2goagent's state file from a directory the user owns: no FIFO, no link, no hang."""
    from lbagent.sessions import _agent_state

    user = f"lbtest{os.getpid()}"
    base = Path(f"/tmp/.x2go-{user}")
    try:
        (base / "C-fifo").mkdir(parents=True)
        os.mkfifo(base / "C-fifo" / "state")
        (base / "C-link").mkdir()
        (tmp_path / "secret").write_text("RUNNING\n")
        (base / "C-link" / "state").symlink_to(tmp_path / "secret")
        (base / "C-file").mkdir()
        (base / "C-file" / "state").write_text("SUSPENDED\n")
        started = time.monotonic()
        assert _agent_state(user, "fifo") is None
        assert _agent_state(user, "link") is None
        assert _agent_state(user, "file") == "SUSPENDED"
        assert time.monotonic() - started < 1.0
    finally:
        for sid in ("fifo", "link", "file"):
            (base / f"C-{sid}" / "state").unlink(missing_ok=True)
            if (base / f"C-{sid}").exists():
                (base / f"C-{sid}").rmdir()
        if base.exists():
            base.rmdir()
