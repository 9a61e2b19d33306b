"""Who has a session here: the sources of ``<sessions>``, each read bounded in time.

Three sources, each a function returning session structs as ``get_state()``
sends them (``user``, ``kind``, ``state``, ``since``, ``info``):

* utmp: the USER_PROCESS records of a utmp file, read whole-record by
  whole-record (no libc call, so a private file can be read too);
* process: the owners of processes of given names; an Xvnc or an Xorg of
  xrdp is disconnected when no viewer is attached, which /proc/net tells
  without any credential;
* x2go: x2goserver's SQLite session database, opened read-only, its lines
  built by the same query as x2golistsessions_sql's.

:class:`SessionSampler` runs the sources of one sample side by side on its
own threads, each bounded by its timeout (a source still stuck from an
earlier sample is not started again), and logs a source's problem once per
change of outcome; a failing source leaves the others' sessions reported.
At most :data:`MAX_SESSIONS` sessions are reported.
"""

from __future__ import annotations

import logging
import os
import pwd
import re
import socket
import sqlite3
import stat
import struct
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Callable, Sequence

import psutil

from common.ratelimit import ProblemLog
from lbagent.config import SessionSource
from lbagent.variables import Stopped

log = logging.getLogger(__name__)

MAX_SESSIONS = 10_000
"""Sessions reported at most, all sources together, so that a reply stays bounded."""
MAX_INFO = 1024          # characters of a session's info kept
MAX_UTMP_RECORDS = 200_000   # records of a utmp file read at most (dead ones included)
SOURCE_MARGIN = 2.0      # seconds a sample waits for a source beyond its timeout (a busy pool)
_CHECK_EVERY = 256       # records or processes between two looks at the clock

ACTIVE, DISCONNECTED = "active", "disconnected"

# struct utmp of glibc on Linux (x86_64 and the other 64-bit ABIs): type, pid, line, id, user, host,
# exit status, session, tv_sec, tv_usec, addr_v6, padding.
UTMP_RECORD = struct.Struct("=h2xi32s4s32s256shhiii16x20x")
USER_PROCESS = 7
# Characters XML 1.0 cannot carry: one in a reply would make it unreadable for every balancer.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ufffe\uffff]")


class SourceProblem(Exception):
    """Why a source has no sessions this time (a stable, loggable reason)."""


def session(user: str, kind: str, state: str, since: float, info: str = "") -> dict:
    """One session struct as ``get_state()`` sends it."""
    return {"user": user, "kind": kind, "state": state, "since": round(since, 3), "info": info}


def _usable_user(raw: str) -> bool:
    return bool(raw) and not _NOT_XML.search(raw)


def read_utmp(path: str, timeout: float, cap: int = MAX_SESSIONS) -> list[dict]:
    """The login sessions of utmp file ``path``: its USER_PROCESS records with a user, active.

    A file that is not there holds no sessions (as for libc: a system
    without logins may have none). Raises :class:`SourceProblem` when the
    file cannot be read, is not a regular file, or reading it takes more
    than ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    try:
        # O_NONBLOCK: a FIFO put at the path must not stall the reader.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise SourceProblem(f"cannot read {path}: {exc.strerror or exc}") from None
    out: list[dict] = []
    size = UTMP_RECORD.size
    with os.fdopen(fd, "rb", buffering=0) as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise SourceProblem(f"{path} is not a regular file")
        for n in range(MAX_UTMP_RECORDS):
            record = fh.read(size)
            if len(record) < size:
                break
            if n % _CHECK_EVERY == 0 and time.monotonic() > deadline:
                raise SourceProblem(f"still reading {path} after {timeout:g} s")
            fields = UTMP_RECORD.unpack(record)
            if fields[0] != USER_PROCESS:
                continue
            user = fields[4].split(b"\0", 1)[0].decode("utf-8", "replace")
            if _usable_user(user):
                out.append(session(user, "utmp", ACTIVE, fields[9] + fields[10] / 1e6))
                if len(out) >= cap:
                    break
    return out


def _display(cmdline: Sequence[str]) -> int | None:
    for arg in cmdline[1:]:
        if arg.startswith(":") and arg[1:].isdigit():
            return int(arg[1:])
    return None


def _option(cmdline: Sequence[str], name: str) -> str | None:
    for i, arg in enumerate(cmdline[:-1]):
        if arg == name:
            return cmdline[i + 1]
    return None


class ViewerTable:
    """Which viewer connections exist now, read once per sample from /proc/net (no credential needed).

    A TCP connection is ESTABLISHED (state 01) with its local port the
    server's; an accepted Unix connection is CONNECTED (state 03) and shows
    the path of the socket that accepted it.
    """

    def __init__(self, proc_net: str = "/proc/net") -> None:
        self._proc_net = proc_net
        self._ports: set[int] | None = None
        self._paths: set[str] | None = None

    def tcp_ports(self) -> set[int]:
        """Local ports with an established TCP connection."""
        if self._ports is None:
            self._ports = set()
            for name in ("tcp", "tcp6"):
                for fields in self._rows(name):
                    if len(fields) > 3 and fields[3] == "01":
                        self._ports.add(int(fields[1].rsplit(":", 1)[1], 16))
        return self._ports

    def unix_paths(self) -> set[str]:
        """Paths of Unix sockets with a connection."""
        if self._paths is None:
            self._paths = {fields[7] for fields in self._rows("unix") if len(fields) > 7 and fields[5] == "03"}
        return self._paths

    def _rows(self, name: str) -> list[list[str]]:
        try:
            with open(os.path.join(self._proc_net, name), encoding="ascii", errors="replace") as fh:
                next(fh, None)
                return [line.split() for line in fh]
        except OSError:
            return []


XRDP_DISPLAY_SOCKET = "/run/xrdp/sockdir/xrdp_display_{}"
"""Where xorgxrdp listens for xrdp (xrdp 0.9, Debian 12); xrdp holds a connection while a client is attached."""
VNC_BASE_PORT = 5900


def viewer_state(name: str, cmdline: Sequence[str], viewers: ViewerTable) -> str:
    """Whether a display server of a session has a viewer attached (active) or not (disconnected).

    An Xvnc serves its viewer on ``-rfbport`` (5900 plus its display by
    default); an Xorg started by xrdp (``-config xrdp/xorg.conf``) on
    xrdp's display socket. Any other process is active.
    """
    display = _display(cmdline)
    if name == "Xvnc":
        port = _option(cmdline, "-rfbport")
        if port is not None and port.isdigit():
            return ACTIVE if int(port) in viewers.tcp_ports() else DISCONNECTED
        if display is not None:
            return ACTIVE if VNC_BASE_PORT + display in viewers.tcp_ports() else DISCONNECTED
    elif name == "Xorg" and display is not None and (_option(cmdline, "-config") or "").startswith("xrdp/"):
        return ACTIVE if XRDP_DISPLAY_SOCKET.format(display) in viewers.unix_paths() else DISCONNECTED
    return ACTIVE


def _user_name(uid: int, cache: dict[int, str]) -> str:
    name = cache.get(uid)
    if name is None:
        try:
            name = pwd.getpwuid(uid).pw_name
        except KeyError:
            name = str(uid)
        cache[uid] = name
    return name


def process_sessions(names: Sequence[str], timeout: float, cap: int = MAX_SESSIONS,
                     viewers: ViewerTable | None = None) -> list[dict]:
    """One session per process named one of ``names`` not owned by root: its owner's, since it started."""
    deadline = time.monotonic() + timeout
    wanted = frozenset(names)
    viewers = viewers or ViewerTable()
    users: dict[int, str] = {}
    out: list[dict] = []
    try:
        for n, proc in enumerate(psutil.process_iter(["name", "uids", "create_time", "cmdline"])):
            if n % _CHECK_EVERY == 0 and time.monotonic() > deadline:
                raise SourceProblem(f"still listing processes after {timeout:g} s")
            info = proc.info
            if info["name"] not in wanted or info["uids"] is None or info["uids"].real == 0:
                continue
            user = _user_name(info["uids"].real, users)
            if not _usable_user(user):
                continue
            state = viewer_state(info["name"], info["cmdline"] or (), viewers)
            out.append(session(user, "process", state, info["create_time"] or 0.0))
            if len(out) >= cap:
                break
    except psutil.Error as exc:
        raise SourceProblem(f"cannot list processes: {exc}") from None
    return out


# The columns and formats of x2golistsessions_sql's query (X2Go::Server::DB::SQLite3, dbsys_listsessionsroot):
# its lines are these, joined by '|', NULL as empty.
X2GO_QUERY = """select agent_pid, session_id, display, server, status,
    strftime('%Y-%m-%dT%H:%M:%S',init_time), cookie, client, gr_port, sound_port,
    strftime('%Y-%m-%dT%H:%M:%S',last_time), uname,
    strftime('%s','now','localtime') - strftime('%s',init_time), fs_port, tekictrl_port, tekidata_port
    from sessions where server=? and status in ('R', 'S') order by status desc limit ?"""
X2GO_STATE_FILES = ("/tmp-inst/{user}/.x2go-{user}/C-{sid}/state", "/tmp/.x2go-{user}/C-{sid}/state")
"""Where x2goagent writes its state (X2Go::Server::Agent::NX), the private /tmp of pam_namespace first."""


def _agent_state(user: str, sid: str) -> str | None:
    """What x2goagent says of its session (RUNNING, SUSPENDED, ...), when its state file is readable."""
    if "/" in user or "/" in sid:
        return None
    for pattern in X2GO_STATE_FILES:
        path = pattern.format(user=user, sid=sid)
        if pattern.startswith("/tmp-inst/") and not os.path.isdir(os.path.dirname(os.path.dirname(path))):
            continue
        # The user owns this path: never follow a link nor wait on a FIFO he put there.
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                continue
            return os.read(fd, 64).decode("ascii", "replace").strip()
        except OSError:
            continue
        finally:
            os.close(fd)
    return None


def _local_epoch(text: str) -> float:
    # x2goserver writes its times as local time (datetime('now','localtime')).
    try:
        return time.mktime(time.strptime(text, "%Y-%m-%dT%H:%M:%S"))
    except (TypeError, ValueError, OverflowError):
        return 0.0


def x2go_sessions(db: str, timeout: float, cap: int = MAX_SESSIONS, server: str | None = None) -> list[dict]:
    """The running (active) and suspended (disconnected) sessions of x2goserver's database ``db``.

    Only the sessions of ``server`` (this host's name by default, as
    x2golistsessions takes it) are read; ``since`` is the last change of the
    session's status. A session the database says running whose x2goagent
    says suspended (x2goserver updates its database only when asked) is
    disconnected, as x2golistsessions would report it.
    """
    server = server or socket.gethostname()
    if not os.path.exists(db):
        raise SourceProblem(f"{db} does not exist (is x2goserver installed with its SQLite backend?)")
    try:
        # Read-only, and never creating the file; the timeout covers x2goserver's own write locks.
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=timeout, check_same_thread=False)
        try:
            rows = conn.execute(X2GO_QUERY, (server, cap)).fetchall()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        hint = " (the agent must run as root or in the group x2gouser)" if "unable to open" in str(exc) else ""
        raise SourceProblem(f"cannot read {db}: {exc}{hint}") from None
    out: list[dict] = []
    for row in rows:
        line = "|".join("" if v is None else str(v) for v in row)
        sid, status, user = str(row[1]), row[4], str(row[11])
        if not _usable_user(user):
            continue
        agent = _agent_state(user, sid)
        if agent in ("SUSPENDING", "SUSPENDED"):
            status = "S"
        elif agent in ("STARTING", "RESUMING", "RUNNING"):
            status = "R"
        out.append(session(user, "x2go", ACTIVE if status == "R" else DISCONNECTED, _local_epoch(row[10]),
                           _NOT_XML.sub("\ufffd", line[:MAX_INFO])))
    return out


def read_source(source: SessionSource, cap: int = MAX_SESSIONS) -> list[dict]:
    """The sessions ``source`` finds now (at most ``cap``); raises :class:`SourceProblem`."""
    if source.kind == "utmp":
        return read_utmp(source.path, source.timeout, cap)
    if source.kind == "process":
        return process_sessions(source.names, source.timeout, cap)
    if source.kind == "x2go":
        return x2go_sessions(source.path, source.timeout, cap)
    raise SourceProblem(f"unknown source {source.kind!r}")


class SessionSampler:
    """Reads every session source for one sample; remembers outcomes for logging."""

    def __init__(self, read: Callable[[SessionSource, int], list[dict]] = read_source) -> None:
        self._read = read
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="lbagent-sessions")
        self._problems = ProblemLog(log)
        # Sources submitted and not finished: one stuck (a hung file system) is not started again.
        self._running: dict[str, Future] = {}
        self._closed = False

    def close(self) -> None:
        """Stop the threads without waiting for a source still reading."""
        self._closed = True
        self._pool.shutdown(wait=False, cancel_futures=True)

    def sample(self, sources: Sequence[SessionSource]) -> list[dict]:
        """The sessions of every source that could be read this time, at most :data:`MAX_SESSIONS`.

        Raises :class:`~lbagent.variables.Stopped` once :meth:`close` has been called.
        """
        if self._closed:
            raise Stopped
        futures: dict[str, Future] = {}
        outcomes: dict[str, str | None] = {}
        for source in sources:
            previous = self._running.get(source.kind)
            if previous is not None and not previous.done():
                outcomes[source.kind] = "the previous reading has not finished (a file system not answering?)"
            else:
                futures[source.kind] = self._running[source.kind] = self._pool.submit(self._read, source,
                                                                                        MAX_SESSIONS)
        found: list[dict] = []
        for source in sources:
            future = futures.get(source.kind)
            if future is None:
                continue
            try:
                found.extend(future.result(timeout=source.timeout + SOURCE_MARGIN))
            except SourceProblem as exc:
                outcomes[source.kind] = str(exc)
            except FutureTimeout:
                outcomes[source.kind] = f"no answer after {source.timeout + SOURCE_MARGIN:g} s"
            except Exception as exc:  # never let one source break the sample
                outcomes[source.kind] = f"unexpected error: {exc!r}"
        for source in sources:
            self._problems.note(source.kind, outcomes.get(source.kind),
                                f"sessions of <{source.kind}> (line {source.line})",
                                f"sessions of <{source.kind}> are read again")
        self._problems.keep(s.kind for s in sources)
        self._running = {k: f for k, f in self._running.items() if not f.done()}
        return found[:MAX_SESSIONS]


__all__ = ["ACTIVE", "DISCONNECTED", "MAX_SESSIONS", "SessionSampler", "SourceProblem", "ViewerTable",
           "process_sessions", "read_source", "read_utmp", "session", "viewer_state", "x2go_sessions"]
