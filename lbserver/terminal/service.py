"""The terminal-facing HTTP service: ``GET /?group=G&user=U`` answers one host name.

Built on an asyncio :class:`asyncio.Protocol` rather than streams because it
is the hot path of a login storm: each request is framed with one
``bytes.find``, parsed by :mod:`lbserver.terminal.request`, answered by a synchronous
callback and written with one ``transport.write`` of a cached, pre-encoded
response. Nothing is logged per request.

Terminals of one site send the same few request heads again and again, so
what a head means (the parsed request and its decoded query) is cached by
its bytes: a connection whose read holds exactly one known head costs one
dictionary lookup before the choice, and no framing or parsing at all.

Idle connections (including those that never send anything, or drip bytes
slowly) are closed by one periodic sweep over all connections rather than
one timer each: a connection's clock starts when it opens or when its last
request was answered, and bytes of an unfinished request do not restart it,
so a request must be complete within ``idle_timeout`` seconds.

Its settings, ``idle-timeout`` and ``max-connections`` of ``<lbservice>``,
come from the :class:`~lbserver.config.ServerConfig` it is given (and given
again on a reload): it keeps no default of its own.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from email.utils import formatdate
from typing import Callable, Mapping, NamedTuple, Optional

from common.sockets import close_listener
from lbserver.config import ServerConfig
from lbserver.terminal.request import (MAX_HEAD, HttpError, Request, find_head_end, parse_head, parse_query,
                                       wants_json)
from lbserver.core.selection import UnknownGroup

log = logging.getLogger(__name__)

Answer = Callable[[Optional[str], Optional[str]], str]
Details = Callable[[Optional[str], Optional[str]], Mapping]

SERVER_NAME = b"lbserver"
ERROR_LOG_INTERVAL = 60.0
"""Seconds between two log lines about a failing answer callback."""

_REASONS = {
    200: b"OK", 400: b"Bad Request", 404: b"Not Found", 405: b"Method Not Allowed",
    408: b"Request Timeout", 411: b"Length Required", 413: b"Content Too Large",
    431: b"Request Header Fields Too Large", 500: b"Internal Server Error",
    501: b"Not Implemented", 503: b"Service Unavailable", 505: b"HTTP Version Not Supported",
}
MAX_BACKLOG = 4096
"""The deepest listen queue asked for, whatever max-connections allows (the kernel caps it too)."""
HEAD_CACHE = 256
"""Distinct request heads whose meaning is kept (the cache is emptied when full)."""

# Indexed by _variant(): how the response tells the client about the connection.
_CONN_HEADERS = (b"Connection: close\r\n", b"", b"Connection: keep-alive\r\n")
_CLOSE, _KEEP11, _KEEP10 = 0, 1, 2


class Route(NamedTuple):
    """What one request head asks: the request, and its query decoded (or why it could not be)."""

    req: Request
    group: Optional[str] = None
    user: Optional[str] = None
    error: Optional[HttpError] = None
    """A query that did not decode: answered with this status, the connection kept."""
    slot: int = -1
    """For a plain ``GET /`` or ``HEAD /`` answered with a host: which cache of responses holds its answers
    (see :func:`_slot`); -1 for any other request."""


def _variant(req: Request) -> int:
    if not req.keep_alive:
        return _CLOSE
    return _KEEP11 if req.minor else _KEEP10


def _slot(req: Request) -> int:
    """The cache of pre-encoded answers for ``req``: one per connection variant, doubled for HEAD."""
    return _variant(req) + (3 if req.method == b"HEAD" else 0)


class TerminalService:
    """Answers terminals over HTTP/1.x with the host chosen by ``answer``.

    ``answer(group, user)`` returns the host to send (without newline) and
    raises :class:`UnknownGroup` for a 404; any other exception becomes a 503
    (logged at most once a minute). ``details(group, user)`` chooses like
    ``answer`` but returns what ``GET /?format=json`` sends (host, node,
    group, weight, why); without it that answer holds the host alone.
    Every response sent is counted by status in ``responses``, a dict the
    caller may pass in and read, for metrics (a count in place rather than
    a callback: it is on every terminal's path).
    """

    def __init__(self, answer: Answer, config: ServerConfig, *, responses: dict[int, int] | None = None,
                 details: Details | None = None) -> None:
        self._answer = answer
        self._details = details
        self.configure(config)
        self.responses: dict[int, int] = {} if responses is None else responses
        """Responses sent, by HTTP status (the dict passed in, which the caller may read at any time)."""
        self.conns: set[_Connection] = set()
        self.now = 0.0
        """Loop time of the last sweep: a coarse clock, so requests never read the time."""
        self._server: asyncio.base_events.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._date = b""
        self._date_sec = -1
        # one cache per (variant, HEAD?): host -> full response bytes
        self._cache: list[dict[str, bytes]] = [{} for _ in range(6)]
        self.routes: dict[bytes, Route] = {}
        """Request head bytes -> :class:`Route`, for every head that framed."""
        self._errors_suppressed = 0
        self._last_error_log = -1e18
        self.refused = 0
        """Connections closed on arrival because of ``max_connections``."""

    # -- public API --------------------------------------------------------

    def configure(self, config: ServerConfig) -> None:
        """Take the settings of ``<lbservice>`` from ``config``; connections open now keep being served."""
        self.idle_timeout = config.idle_timeout
        self.max_connections = config.max_connections

    async def start(self, sock: socket.socket) -> None:
        """Serve on ``sock``, an already bound and listening TCP socket (IPv4 or IPv6)."""
        if self._server is not None:
            raise RuntimeError("terminal service already started")
        loop = asyncio.get_running_loop()
        self._loop = loop
        self.now = loop.time()
        self._refresh_date()
        # create_server() calls listen() again: keep the queue deep enough for a storm
        backlog = max(128, min(self.max_connections, MAX_BACKLOG))
        self._server = await loop.create_server(lambda: _Connection(self), sock=sock, backlog=backlog)
        self._sweeper = loop.call_at(self.now + self._sweep_interval(), self._sweep)

    async def stop(self) -> None:
        """Stop accepting, close every connection; the service may be started again."""
        server, self._server = self._server, None
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        await close_listener(server, self.conns, lambda conn: conn.close(abort=True))

    def set_answer(self, answer: Answer) -> None:
        """Use ``answer`` for requests from now on (config reload)."""
        self._answer = answer

    def connection_count(self) -> int:
        """Open terminal connections right now."""
        return len(self.conns)

    # -- internals ---------------------------------------------------------

    def _sweep_interval(self) -> float:
        return max(0.02, min(1.0, self.idle_timeout / 10))

    def _sweep(self) -> None:
        """Close connections idle for longer than idle_timeout; refresh the clocks."""
        loop = self._loop
        assert loop is not None
        now = self.now = loop.time()
        self._refresh_date()
        # ``since`` comes from this coarse clock, so it may be up to one interval
        # early: allow for it, so that nobody is closed before idle_timeout.
        limit = now - self.idle_timeout - self._sweep_interval()
        stale = [c for c in self.conns if c.since < limit]
        for conn in stale:
            conn.close(abort=True)
        self._sweeper = loop.call_at(now + self._sweep_interval(), self._sweep)

    def _refresh_date(self) -> None:
        sec = int(time.time())
        if sec != self._date_sec:
            self._date_sec = sec
            self._date = b"Date: " + formatdate(sec, usegmt=True).encode() + b"\r\n"
            for cache in self._cache:
                cache.clear()  # cached responses carry the Date header

    def _build(self, status: int, body: bytes, variant: int, head: bool, extra: bytes = b"",
               ctype: bytes = b"text/plain; charset=utf-8") -> bytes:
        return b"".join((
            b"HTTP/1.1 %d %s\r\nServer: %s\r\n" % (status, _REASONS[status], SERVER_NAME),
            self._date,
            b"Content-Type: %s\r\nContent-Length: %d\r\n"
            b"Cache-Control: no-store\r\n" % (ctype, len(body)),
            extra, _CONN_HEADERS[variant], b"\r\n",
            b"" if head else body,
        ))

    def _simple(self, status: int, text: str, req: Request | None, extra: bytes = b"") -> bytes:
        """A short text response; ``req`` None means the connection will be closed."""
        self.responses[status] = self.responses.get(status, 0) + 1
        variant = _variant(req) if req is not None else _CLOSE
        head = req is not None and req.method == b"HEAD"
        return self._build(status, text.encode() + b"\n", variant, head, extra)

    def route(self, head: bytes) -> Route:
        """What ``head`` asks (cached by its bytes).

        Raises :class:`HttpError` for a head that cannot be framed (the
        connection is then closed); a query that does not decode is the
        route's ``error``, answered on a connection that stays open.
        """
        route = self.routes.get(head)
        if route is not None:
            return route
        req = parse_head(head)
        group = user = error = None
        as_json = False
        if req.query:
            try:
                group, user, fmt = parse_query(req.query)
                as_json = wants_json(fmt)
            except HttpError as exc:  # the request itself was framed fine: keep the connection
                error = exc.with_traceback(None)
        plain = req.path == b"/" and req.method in (b"GET", b"HEAD") and error is None and not as_json
        route = Route(req, group, user, error, _slot(req) if plain else -1)
        if len(self.routes) >= HEAD_CACHE:
            self.routes.clear()
        self.routes[head] = route
        return route

    def respond(self, route: Route) -> bytes:
        """The response bytes for one routed request."""
        slot = route.slot
        if slot < 0:
            return self._other(route)
        try:
            host = self._answer(route.group, route.user)
        except UnknownGroup:
            return self._simple(404, "unknown group", route.req)
        except Exception:  # any failure of the selection: answer 503, keep serving
            self._answer_failed()
            return self._simple(503, "no server available", route.req)
        resp = self._cache[slot].get(host)
        if resp is None:
            resp = self._cache_answer(slot, host)
        counts = self.responses
        counts[200] = counts.get(200, 0) + 1
        return resp

    def _cache_answer(self, slot: int, host: str) -> bytes:
        """Encode the answer ``host`` for requests of ``slot`` (see :func:`_slot`) and keep it."""
        cache = self._cache[slot]
        if len(cache) > 1024:  # answers are node names, so this only trips on odd callbacks
            cache.clear()
        cache[host] = resp = self._build(200, host.encode() + b"\n", slot % 3, slot >= 3)
        return resp

    def _other(self, route: Route) -> bytes:
        """Any request but a plain ``GET /`` or ``HEAD /``: not found, bad method, bad query, or the JSON answer.

        What :meth:`route` left without a slot once the first three are
        ruled out asks for ``format=json``.
        """
        req = route.req
        if req.path != b"/":
            return self._simple(404, "not found", req)
        if req.method not in (b"GET", b"HEAD"):
            return self._simple(405, "method not allowed", req, b"Allow: GET, HEAD\r\n")
        if route.error is not None:
            return self._simple(route.error.status, route.error.reason, req)
        return self._json(req, route.group, route.user)

    def _json(self, req: Request, group: str | None, user: str | None) -> bytes:
        """``GET /?format=json``: the pick and why, for scripts (not cached: every answer differs)."""
        try:
            if self._details is not None:
                doc = dict(self._details(group, user))
            else:
                doc = {"host": self._answer(group, user)}
        except UnknownGroup:
            return self._simple(404, "unknown group", req)
        except Exception:
            self._answer_failed()
            return self._simple(503, "no server available", req)
        self.responses[200] = self.responses.get(200, 0) + 1
        body = json.dumps(doc, separators=(", ", ": ")).encode() + b"\n"
        return self._build(200, body, _variant(req), req.method == b"HEAD", ctype=b"application/json")

    def _answer_failed(self) -> None:
        assert self._loop is not None
        now = self._loop.time()
        if now - self._last_error_log >= ERROR_LOG_INTERVAL:
            more = f" ({self._errors_suppressed} more since the last report)" if self._errors_suppressed else ""
            log.exception("choosing a server for a terminal failed; answering 503%s", more)
            self._last_error_log = now
            self._errors_suppressed = 0
        else:
            self._errors_suppressed += 1


MAX_BATCH = 64  # pipelined answers written per batch


class _Connection(asyncio.Protocol):
    """One terminal connection: frames requests, answers them in order."""

    __slots__ = ("svc", "transport", "buf", "since", "skip", "closed", "draining", "write_paused", "backlog")

    def __init__(self, svc: TerminalService) -> None:
        self.svc = svc
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.since = svc.now
        self.skip = 0  # body bytes still to discard
        self.closed = False
        self.draining = False  # answered an error: discard input until the client closes
        self.write_paused = False
        self.backlog = False  # pipelined requests left in buf, answered as the client reads

    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # type: ignore[override]
        self.transport = transport  # type: ignore[assignment]
        svc = self.svc
        if len(svc.conns) >= svc.max_connections:
            svc.refused += 1
            self.closed = True
            transport.abort()
            return
        svc.conns.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.svc.conns.discard(self)

    def close(self, abort: bool = False) -> None:
        if not self.closed:
            self.closed = True
            self.svc.conns.discard(self)
            if abort:
                self.transport.abort()
            else:
                self.transport.close()

    def pause_writing(self) -> None:
        # A client that sends requests without reading answers: stop reading
        # it; the idle sweep closes it if it never catches up.
        self.write_paused = True
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.closed:
            return
        if self.backlog:
            self._more()
        else:
            self.transport.resume_reading()

    def _more(self) -> None:
        """Answer the next batch of pipelined requests left in the buffer."""
        if self.closed or self.write_paused or not self.backlog:
            return
        self.backlog = False
        self.transport.resume_reading()
        self.data_received(b"")

    def eof_received(self) -> bool:
        return False  # half-closed client: answers already written, then close

    def data_received(self, data: bytes) -> None:
        if self.closed or self.draining:
            return
        svc = self.svc
        if not self.buf and not self.skip:
            # The common case: the read is exactly one head seen before.
            route = svc.routes.get(data)
            if route is not None:
                resp = svc.respond(route)
                if not route.req.keep_alive:
                    self._finish([resp])
                    return
                self.skip = route.req.content_length
                self.since = svc.now
                self.transport.write(resp)
                return
        buf = self.buf + data if self.buf else data
        pos = 0
        end = len(buf)
        out = []
        while True:
            if self.skip:
                avail = end - pos
                if avail <= self.skip:
                    self.skip -= avail
                    pos = end
                    break
                pos += self.skip
                self.skip = 0
            if pos == end:
                break
            start, stop = find_head_end(buf, pos)
            if stop < 0:
                pos = start
                if end - pos > MAX_HEAD:
                    out.append(svc._simple(431, "request head too large", None))
                    self._fail(out)
                    return
                break
            try:
                route = svc.route(buf[start:stop])
            except HttpError as exc:
                out.append(svc._simple(exc.status, exc.reason, None))
                self._fail(out)
                return
            pos = stop
            req = route.req
            out.append(svc.respond(route))
            if not req.keep_alive:
                self._finish(out)
                return
            self.skip = req.content_length
            if len(out) >= MAX_BATCH and pos < end:
                # A read can hold thousands of tiny pipelined requests: answer
                # them in batches as the client drains its answers, so memory
                # stays bounded by what it sent, not ten times more.
                self.backlog = True
                self.transport.pause_reading()
                if not self.write_paused:
                    svc._loop.call_soon(self._more)
                break
        self.buf = buf[pos:] if pos < end else b""
        if out:
            self.since = svc.now
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))

    def _finish(self, out: list[bytes]) -> None:
        """Write the last answers and close (after they are flushed)."""
        self.transport.write(b"".join(out))
        self.buf = b""
        self.close()

    def _fail(self, out: list[bytes]) -> None:
        """Answer an error and close without losing the answer.

        Closing a socket with unread input makes the kernel send a reset,
        which can destroy the error response before the client reads it; so
        shut down our side only, and discard input until the client closes
        (or the idle sweep does).
        """
        transport = self.transport
        transport.write(b"".join(out))
        self.buf = b""
        if transport.can_write_eof():
            self.draining = True
            self.since = self.svc.now
            transport.write_eof()
        else:
            self.close()


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A new event loop, from uvloop when it is installed (faster), else asyncio's."""
    try:
        import uvloop  # noqa: PLC0415 (optional dependency)
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


__all__ = ["TerminalService", "UnknownGroup", "new_event_loop"]
