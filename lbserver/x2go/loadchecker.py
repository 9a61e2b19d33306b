"""x2gobroker's load-checker socket, answered from this balancer's weights (greater = less loaded).

x2gobroker (``x2gobroker.loadchecker.check_load``) connects to a UNIX
socket and sends one line: ``BACKEND\\rPROFILE\\rHOST\\n`` for one server,
answered by an integer load factor or ``LOAD-UNAVAILABLE`` (the only word
x2gobroker takes there); or
``BACKEND\\rPROFILE\\r\\n`` for a profile, answered by ``HOST:FACTOR`` lines
(``HOST:HOST-UNREACHABLE`` for a server that must get no new session).
x2gobroker divides a server's factor by its session count plus one and
starts a new session on the greatest quotient, ignoring any server whose
answer is not an integer.

:func:`load_factor` maps a node to that answer: 1 + its weight in the
last snapshot times 100 for a selectable node, so every usable server has a factor of
at least 1 (x2gobroker divides by it); ``HOST-UNREACHABLE`` (``LOAD-UNAVAILABLE`` when
asked for that one server) for a node drained, down, unhealthy or at its
session limit. A profile's servers are
the nodes of the group named like the profile, else of the default group;
a server is found by node name, then by the host of its address or its
``ip``. Runs on the daemon's loop.
"""

from __future__ import annotations

import asyncio
import grp
import logging
import os
import stat

from lbserver.config import X2goLoadChecker
from lbserver.core.selection import NodeView
from lbserver.core.sessions import at_limit
from lbserver.core.view import BalancerView

log = logging.getLogger("lbserver.x2go")

UNAVAILABLE = "LOAD-UNAVAILABLE"
UNREACHABLE = "HOST-UNREACHABLE"
MAX_QUESTION = 4096
"""Bytes of one question at most; a longer one is answered as unknown and the connection closed."""
READ_TIMEOUT = 5.0
"""Seconds a connection may take to send its question."""


def load_factor(view: NodeView | None, weight: float, sessions: int, refused: str = UNREACHABLE) -> str:
    """A node's answer: ``1 + round(weight * 100)`` when it may take a new session, else ``refused``."""
    if view is None or not view.selectable or at_limit(sessions, view.max_sessions):
        return refused
    return str(1 + round(max(weight, 0.0) * 100))


class LoadAnswers:
    """What x2gobroker's questions are answered with, from the balancer's current snapshot."""

    def __init__(self, view: BalancerView) -> None:
        self._view = view

    def _node(self, host: str) -> str | None:
        cfg = self._view.config
        if host in cfg.nodes:
            return host
        for name, node in cfg.nodes.items():
            if host in (node.host, node.ip, node.answer_ip):
                return name
        return None

    def _factor(self, name: str, refused: str = UNREACHABLE) -> str:
        view = self._view.snapshot.nodes.get(name)
        return load_factor(view, view.weight if view is not None else 0.0, self._view.sessions_now(name), refused)

    def answer(self, question: bytes) -> bytes:
        """The reply to one question line (without its line end)."""
        parts = question.decode("utf-8", "replace").split("\r")
        if len(parts) != 3:
            return UNAVAILABLE.encode()
        _backend, profile, host = parts
        if host:
            name = self._node(host)
            return (self._factor(name, UNAVAILABLE) if name is not None else UNAVAILABLE).encode()
        snap = self._view.snapshot
        group = profile if profile in snap.groups else snap.default_group
        lines = [f"{name}:{self._factor(name)}\n" for name in snap.group_nodes(group)]
        return ("".join(lines) or "\n").encode()


class LoadCheckerService:
    """Listens on ``<x2go-loadchecker socket>`` and answers each connection's question lines."""

    def __init__(self, answers: LoadAnswers, config: X2goLoadChecker) -> None:
        self._answers = answers
        self.config = config
        self._server: asyncio.base_events.Server | None = None
        self.questions = 0

    async def start(self) -> None:
        """Create the socket (replacing a stale socket, never another file), set its mode and group, and serve."""
        path = self.config.socket
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        try:
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                os.unlink(path)  # a stale socket of an earlier run (or x2gobroker-loadchecker's)
        except FileNotFoundError:
            pass  # anything else at that path stays, and binding says so
        self._server = await asyncio.start_unix_server(self._serve, path=path)
        os.chmod(path, int(self.config.mode, 8))
        if self.config.socket_group:
            os.chown(path, -1, grp.getgrnam(self.config.socket_group).gr_gid)

    async def stop(self) -> None:
        """Stop serving and remove the socket."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        await server.wait_closed()
        try:
            os.unlink(self.config.socket)
        except OSError:
            pass

    def status(self) -> dict:
        """What /status shows: the socket and the questions answered since it was made."""
        return {"socket": self.config.socket, "questions": self.questions}

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    line = await asyncio.wait_for(reader.readuntil(b"\n"), READ_TIMEOUT)
                except asyncio.LimitOverrunError:
                    writer.write(UNAVAILABLE.encode())
                    return
                except (asyncio.IncompleteReadError, asyncio.TimeoutError):
                    return
                if len(line) > MAX_QUESTION:
                    writer.write(UNAVAILABLE.encode())
                    return
                self.questions += 1
                try:
                    reply = self._answers.answer(line.rstrip(b"\n"))
                except Exception:  # never a dead socket: x2gobroker treats this as no load figure
                    log.exception("x2gobroker load check %r failed", line[:200])
                    reply = UNAVAILABLE.encode()
                writer.write(reply)
                await writer.drain()
        except (ConnectionError, OSError):
            return
        finally:
            writer.close()


__all__ = ["LoadAnswers", "LoadCheckerService", "UNAVAILABLE", "UNREACHABLE", "load_factor"]
