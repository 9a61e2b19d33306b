"""The agent-check service: HAProxy connects, names a node, reads one line of state and weight.

An asyncio :class:`asyncio.Protocol`, like the terminal service: a question
is framed by :func:`lbserver.haproxy.reply.line_end` and answered from the
snapshot in force through a :class:`~lbserver.haproxy.reply.Replies` kept
per snapshot, with one ``transport.write``; then the connection is closed,
as HAProxy expects.

Bounds: a peer outside ``<allow>`` (loopback when there is none) is
disconnected at once, and so is any connection beyond ``max-connections``
(HAProxy counts a failed agent connection as no news and keeps the
server's last state, so a flood cannot take servers down); a question is
read up to :data:`~lbserver.haproxy.reply.MAX_LINE` bytes, and a client
that has not ended its line within ``read-timeout`` seconds is answered
with what it sent (an ``agent-send`` without a line end still works) and
closed. Refusals are logged at most once a minute per address.

Threading: everything runs on the daemon's loop thread.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import Counter

from common.ratelimit import DenyLog
from common.sockets import close_listener
from lbserver.config import HaproxyAgent
from lbserver.core.view import BalancerView
from lbserver.haproxy.access import effective_allow, is_allowed
from lbserver.haproxy.reply import MAX_LINE, Replies, line_end, parse_question

log = logging.getLogger("lbserver.haproxy")

LOG_INTERVAL = 60.0
"""Seconds between two log lines about refused connections from one address, or about failed replies."""
MAX_LOGGED = 1024
"""(cause, address) pairs remembered for :data:`LOG_INTERVAL`; when that many were logged within it, others are not."""


class HaproxyAgentService:
    """Answers HAProxy's agent checks from the balancer's current snapshot."""

    def __init__(self, view: BalancerView, config: HaproxyAgent) -> None:
        self._view = view
        self.conns: set[_Connection] = set()
        self._server: asyncio.base_events.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._replies: Replies | None = None
        self._refusal_log = DenyLog(LOG_INTERVAL, MAX_LOGGED)  # keyed by (cause, address)
        self._last_error_log = -1e18
        self.answered = 0
        """Questions answered since start."""
        self.refused: Counter[str] = Counter()
        """Connections closed unanswered, by cause: ``access`` (not allowed), ``busy`` (max-connections), ``error``."""
        self.configure(config)

    # -- lifecycle ----------------------------------------------------------

    def configure(self, config: HaproxyAgent) -> None:
        """Follow a reloaded ``<haproxy-agent>`` (the daemon moves the socket when ``listen`` changed)."""
        self.allow = effective_allow(config.allow)
        self.read_timeout = float(config.read_timeout)
        self.max_connections = int(config.max_connections)

    async def start(self, sock: socket.socket) -> None:
        """Serve on ``sock``, an already bound and listening TCP socket."""
        if self._server is not None:
            raise RuntimeError("agent-check service already started")
        self._loop = asyncio.get_running_loop()
        backlog = max(128, min(self.max_connections, 4096))
        self._server = await self._loop.create_server(lambda: _Connection(self), sock=sock, backlog=backlog)

    async def stop(self) -> None:
        """Stop accepting and close every connection; the service may be started again."""
        server, self._server = self._server, None
        await close_listener(server, self.conns, _Connection.abort)

    def connection_count(self) -> int:
        """Open agent-check connections right now."""
        return len(self.conns)

    # -- answering ----------------------------------------------------------

    def answer(self, data: bytes) -> bytes:
        """The reply line to the question ``data``, from the snapshot in force."""
        snapshot = self._view.snapshot
        replies = self._replies
        if replies is None or replies.snapshot is not snapshot:
            replies = self._replies = Replies(snapshot)
        self.answered += 1
        return replies.answer(parse_question(data))

    def _refuse(self, cause: str, host: str) -> None:
        """Count a connection closed unanswered, and log it at most once a minute per cause and address."""
        self.refused[cause] += 1
        if not self._refusal_log.should_log((cause, host), self._loop.time()):
            return
        if cause == "access":
            log.warning("agent-check connection from %s refused: not in <haproxy-agent> <allow> (without any "
                        "<allow>, loopback only)", host)
        else:
            log.warning("agent-check connection from %s refused: %d connections open (max-connections)",
                        host, len(self.conns))

    def _failed(self) -> None:
        self.refused["error"] += 1
        now = self._loop.time()
        if now - self._last_error_log >= LOG_INTERVAL:
            self._last_error_log = now
            log.exception("answering an agent check failed; the connection was closed unanswered")


class _Connection(asyncio.Protocol):
    """One agent check: read the question, answer one line, close."""

    __slots__ = ("svc", "transport", "buf", "timer", "done")

    def __init__(self, svc: HaproxyAgentService) -> None:
        self.svc = svc
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.timer: asyncio.TimerHandle | None = None
        self.done = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # type: ignore[override]
        self.transport = transport  # type: ignore[assignment]
        svc = self.svc
        peer = transport.get_extra_info("peername")
        host = str(peer[0]) if peer else ""
        if not is_allowed(host, svc.allow):
            self._drop("access", host)
            return
        if len(svc.conns) >= svc.max_connections:
            self._drop("busy", host)
            return
        svc.conns.add(self)
        self.timer = svc._loop.call_later(svc.read_timeout, self._timed_out)

    def _drop(self, cause: str, host: str) -> None:
        self.done = True
        self.transport.abort()
        self.svc._refuse(cause, host)

    def data_received(self, data: bytes) -> None:
        if self.done:
            return
        buf = self.buf = self.buf + data
        end = line_end(buf)
        if end >= 0:
            self._answer(buf[:end])
        elif len(buf) >= MAX_LINE:
            self._answer(buf[:MAX_LINE])

    def eof_received(self) -> bool:
        # A client that sends its question without a line end and shuts
        # down its side (printf xapp1 | nc) still gets its answer.
        if not self.done:
            self._answer(self.buf)
        return True

    def _timed_out(self) -> None:
        self.timer = None
        if not self.done:
            self._answer(self.buf)

    def _answer(self, question: bytes) -> None:
        self.done = True
        self._forget()
        self.buf = b""
        try:
            line = self.svc.answer(question)
        except Exception:  # never a crash: HAProxy keeps the server's last state
            self.svc._failed()
            self.transport.abort()
            return
        self.transport.write(line)
        self.transport.close()

    def _forget(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.svc.conns.discard(self)

    def abort(self) -> None:
        self.done = True
        self._forget()
        self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.done = True
        self._forget()


__all__ = ["HaproxyAgentService"]
