"""The X2Go broker's HTTP(S) transport: who may ask, framing, authentication, then :mod:`lbserver.x2go.broker`.

An :class:`asyncio.Protocol` on the daemon's loop frames requests as they
arrive, several per connection when the client keeps it open (X2Go Client
does), and answers each one synchronously unless a password must be
checked. Each request must be complete within ``timeout`` seconds of the
connection opening or of the previous reply (one periodic sweep over all
connections: a late one gets 408 and is closed, an idle one is closed).
Heads are parsed by the terminal port's parser
(:mod:`lbserver.terminal.request`), cached by their bytes as there, so
both ports refuse alike; bodies are taken up to its ``MAX_BODY``.

Order of checks, as x2gobroker's: the source address (``<allow>``, 403),
the method (POST only, 405), the path (``/plain/`` or ``/json/``, 404),
the form (400), the credentials (401; with ``auth="pam"`` a password over
plain HTTP is refused, 403, unless ``password-over-http``; a source past
``max-failures`` wrong passwords a minute gets 429), then the task
(none: the login check clients make first, answered ``Access granted``;
unknown: 400) and its profile (unknown: 404). Error replies are one plain
line saying what was wrong. No form is ever logged; a failed login is
logged with the user name and the source, at most once a minute per source.

PAM checks block, so they run on the loop's default executor; everything
else runs on the loop thread.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from typing import Awaitable, Callable, Mapping

from common.ratelimit import DenyLog
from common.sockets import close_listener
from common.tls import server_context
from lbserver.config import X2goBroker, X2goProfile
from lbserver.core.selection import UnknownGroup
from lbserver.haproxy.access import effective_allow, is_allowed
from lbserver.terminal.request import MAX_BODY, MAX_HEAD, HttpError, Request, find_head_end, parse_head
from lbserver.x2go import pam
from lbserver.x2go.broker import (TASKS, BadRequest, Form, Placement, Reply, answer, error, frontend_of, parse_form,
                                  profile_fields)
from lbserver.x2go.guard import FailureLimit

log = logging.getLogger("lbserver.x2go")

REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
           405: "Method Not Allowed", 408: "Request Timeout", 411: "Length Required", 413: "Content Too Large",
           429: "Too Many Requests", 431: "Request Header Fields Too Large", 500: "Internal Server Error",
           501: "Not Implemented", 503: "Service Unavailable", 505: "HTTP Version Not Supported"}
PAM_TIMEOUT = 20.0
"""Seconds a PAM check may take before the request is answered 503 (the check itself cannot be stopped)."""
MAX_PAM_CHECKS = 8
"""PAM checks running at once; more requests wait for one to end."""
SWEEP = 0.25
"""Seconds between two looks for late requests and idle connections."""
HEAD_CACHE = 256
"""Distinct request heads whose parse is kept (the cache is emptied when full)."""
FORM_CACHE = 4096
"""Distinct request bodies without a password whose form is kept (a site's users asking again; emptied when full)."""

Placer = Callable[[X2goProfile, str], Placement]
Lister = Callable[[X2goProfile, str], list[str]]
Checker = Callable[[str, str, str], tuple[bool, str]]


class X2goBrokerService:
    """Serves X2Go clients: ``/plain/`` and ``/json/`` on one listening socket, HTTP or HTTPS.

    ``place(profile, user)`` and ``listing(profile, user)`` come from
    :class:`lbserver.x2go.farm.Farm`; ``check(service, user, password)``
    is :func:`lbserver.x2go.pam.authenticate` unless a test gives another.
    """

    def __init__(self, config: X2goBroker, place: Placer, listing: Lister, check: Checker = pam.authenticate) -> None:
        self._place = place
        self._listing = listing
        self._check = check
        self._server: asyncio.base_events.Server | None = None
        self._conns: set[_Connection] = set()
        self._tls: ssl.SSLContext | None = None
        self.needs_restart = False
        """A reload switched between HTTP and HTTPS: the listener must be started again (the daemon does)."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._heads: dict[bytes, Request] = {}
        self._forms: dict[tuple[str, bytes], Form] = {}
        self._reply_heads: dict[tuple[int, str, bool], bytes] = {}
        self._denials = DenyLog()
        self._pam_slots = asyncio.Semaphore(MAX_PAM_CHECKS)
        self.counts: dict[int, int] = {}
        """Replies sent, by HTTP status."""
        self.failures = FailureLimit(config.max_failures)
        """Wrong passwords by source address (kept across reloads that keep max-failures)."""
        self.configure(config)

    def configure(self, config: X2goBroker) -> None:
        """Take ``config`` (a reload); open connections keep being served. The TLS files are read again."""
        self.config = config
        self._allow = effective_allow(config.allow)
        self._profiles = {p.name: p for p in config.profiles}
        tls = server_context(config.tls_cert, config.tls_key) if config.tls_cert else None
        if self._server is None or (tls is None) != (self._tls is None):
            # Not serving yet, or HTTP <-> HTTPS: the daemon starts the listener again (needs_restart).
            self.needs_restart = self._server is not None
            self._tls = tls
        elif tls is not None and self._tls is not None:
            # The certificate may have been renewed: new connections present the new one.
            self._tls.load_cert_chain(config.tls_cert, config.tls_key)
        if self.failures.limit != config.max_failures:
            self.failures = FailureLimit(config.max_failures)

    async def start(self, sock: socket.socket) -> None:
        """Serve on ``sock``, a bound and listening TCP socket."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        self.needs_restart = False
        self._server = await loop.create_server(lambda: _Connection(self), sock=sock, ssl=self._tls,
                                                ssl_handshake_timeout=self.config.timeout if self._tls else None)
        self._sweeper = loop.call_later(SWEEP, self._sweep)

    async def stop(self) -> None:
        """Stop accepting and close every connection."""
        server, self._server = self._server, None
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        await close_listener(server, self._conns, _Connection.abort)

    def _sweep(self) -> None:
        """Answer 408 to connections whose request is late, close idle ones (one timer for all of them)."""
        now = self._loop.time()
        for conn in [c for c in self._conns if not c.busy and now - c.since > self.config.timeout]:
            conn.late()
        self._sweeper = self._loop.call_later(SWEEP, self._sweep)

    def _refuse(self, host: str) -> bool:
        """Whether a new connection from ``host`` is refused (logged at most once a minute per address)."""
        if is_allowed(host, self._allow):
            return False
        if self._denials.should_log(("access", host), time.monotonic()):
            log.warning("X2Go broker: request from %s refused: not in <x2gobroker> <allow> (without any "
                        "<allow>, loopback only)", host)
        return True

    def _head(self, head: bytes) -> Request:
        """``head`` parsed, from the cache of the heads seen (clients send the same few again and again)."""
        req = self._heads.get(head)
        if req is None:
            req = parse_head(head)  # HttpError propagates: nothing is cached for a bad head
            if len(self._heads) >= HEAD_CACHE:
                self._heads.clear()
            self._heads[head] = req
        return req

    def _request(self, req: Request, body: bytes, host: str) -> Reply | Awaitable[Reply]:
        """The reply to one framed request: at once, or an awaitable when a password must be checked."""
        if req.method != b"POST":
            return error(405, "the X2Go broker answers POST requests (as X2Go clients send them)")
        frontend = frontend_of(req.path.decode("ascii", "replace"))
        if frontend is None:
            return error(404, "no such broker page: use /plain/ (X2Go Client) or /json/ (Python X2Go)")
        key = (frontend, body)
        form = self._forms.get(key)
        if form is None:
            try:
                form = parse_form(frontend, body)
            except BadRequest as exc:
                return error(400, str(exc))
            if not form.has_password:  # a password is never kept, not even in a cache
                if len(self._forms) >= FORM_CACHE:
                    self._forms.clear()
                self._forms[key] = form
        if self.config.auth == "none":
            return self._safe_answer(form)
        return self._checked(form, host)

    def _safe_answer(self, form: Form) -> Reply:
        """:meth:`_answer`, a failure turned into an error reply (logged at most once a minute)."""
        try:
            return self._answer(form)
        except UnknownGroup as exc:  # a group without nodes (EmptyGroup) or gone
            return error(503, f"no server to offer: {exc}")
        except Exception:
            if self._denials.should_log(("failure",), time.monotonic()):
                log.exception("X2Go broker: answering a %s request failed", form.task or "login")
            return error(500, "the broker failed to answer")

    async def _checked(self, form: Form, host: str) -> Reply:
        refused = await self._authenticate(form, host)
        return refused if refused is not None else self._safe_answer(form)

    def _answer(self, form: Form) -> Reply:
        """The reply to a request whose user may be answered."""
        if form.task and form.task not in TASKS:  # no task at all: the clients' login check
            return error(400, f"unknown task {form.task[:40]!r} (this broker answers {', '.join(TASKS)})")
        if form.task == "selectsession" and form.profile_id and form.profile_id not in self._profiles:
            return error(404, f"no session profile {form.profile_id[:200]!r}")
        return answer(form, lambda: self._profile_list(form.user), lambda pid: self._select(pid, form.login))

    def _profile_list(self, user: str) -> Mapping[str, Mapping[str, object]]:
        out = {}
        for name, profile in self._profiles.items():
            out[name] = profile_fields(profile, user, self._listing(profile, user))
        return out

    def _select(self, profile_id: str, user: str) -> tuple[Placement, int] | None:
        profile = self._profiles.get(profile_id)
        if profile is None:
            return None
        return self._place(profile, user), profile.sshport

    async def _authenticate(self, form: Form, host: str) -> Reply | None:
        """None when the request may be answered; else the refusal."""
        cfg = self.config
        now = time.monotonic()
        if self.failures.blocked(host, now):
            return error(429, "too many wrong passwords from this address: try again in a minute")
        if form.has_password and self._tls is None and not cfg.password_over_http:
            self._log_once(("http", host), "X2Go broker: a password from %s was refused: passwords are accepted "
                                           "over HTTPS only (tls-cert), or with password-over-http", host)
            return error(403, "passwords are accepted over HTTPS only")
        if not form.user or not form.has_password:
            return error(401, "a user name and a password are required")
        async with self._pam_slots:
            loop = asyncio.get_running_loop()
            try:
                ok, reason = await asyncio.wait_for(
                    loop.run_in_executor(None, self._check, cfg.pam_service, form.user, form.password), PAM_TIMEOUT)
            except asyncio.TimeoutError:
                log.error("X2Go broker: PAM service %s did not answer within %g s", cfg.pam_service, PAM_TIMEOUT)
                return error(503, "the password check did not answer in time")
            except pam.PamUnavailable as exc:
                log.error("X2Go broker: %s", exc)
                return error(503, "passwords cannot be checked on this broker")
        if ok:
            return None
        self.failures.fail(host, time.monotonic())
        self._log_once(("auth", host), "X2Go broker: login of %r from %s refused: %s", form.user[:64], host,
                       reason or "wrong password")
        return error(401, "login failed")

    def _log_once(self, key: tuple, message: str, *args: object) -> None:
        if self._denials.should_log(key, time.monotonic()):
            log.warning(message, *args)

    def _encode(self, reply: Reply, keep: bool) -> bytes:
        self.counts[reply.status] = self.counts.get(reply.status, 0) + 1
        key = (reply.status, reply.content_type, keep)
        head = self._reply_heads.get(key)
        if head is None:
            head = self._reply_heads[key] = (
                f"HTTP/1.1 {reply.status} {REASONS.get(reply.status, 'Error')}\r\nServer: lbserver\r\n"
                f"Content-Type: {reply.content_type}\r\nExpires: +1h\r\n"
                f"Connection: {'keep-alive' if keep else 'close'}\r\nContent-Length: ").encode()
        return b"%s%d\r\n\r\n%s" % (head, len(reply.body), reply.body)

    def connection_count(self) -> int:
        """Broker connections open now."""
        return len(self._conns)

    def status(self) -> dict:
        """What /status shows: settings in force, connections, replies by status, sources past max-failures."""
        now = time.monotonic()
        return {"listen": f"{self.config.listen[0]}:{self.config.listen[1]}", "auth": self.config.auth,
                "https": self._tls is not None, "profiles": sorted(self._profiles), "connections": len(self._conns),
                "replies": {str(k): v for k, v in sorted(self.counts.items())},
                "blocked_sources": sum(1 for src in self.failures.sources() if self.failures.blocked(src, now))}


class _Connection(asyncio.Protocol):
    """One client connection: requests framed as they arrive, answered in order, one at a time."""

    def __init__(self, svc: X2goBrokerService) -> None:
        self.svc = svc
        self.transport: asyncio.Transport | None = None
        self.host = ""
        self.buf = b""
        self.busy = False
        """A password check is running: no other request of this connection is read meanwhile."""
        self.since = 0.0
        """Loop time the current request's clock started: the connection opened, or the last reply went out."""
        self.closed = False
        self.eof = False
        """The client shut its side: answer what it sent, then close."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # type: ignore[override]
        self.transport = transport  # type: ignore[assignment]
        svc = self.svc
        peer = transport.get_extra_info("peername")
        self.host = str(peer[0]) if peer else ""
        self.since = svc._loop.time()
        if len(svc._conns) >= svc.config.max_connections:
            # Refused sources count too: held until they close or the sweep, they must not add up without bound.
            self.abort()
            return
        if svc._refuse(self.host):
            # Said, then this side shut: what the client sent is read and dropped (closing on unread
            # bytes would reset the connection before the client reads why), until it closes or the sweep.
            transport.write(svc._encode(error(403, "this address may not use the X2Go broker"), False))
            transport.write_eof()
            self.closed = True
            svc._conns.add(self)
            return
        svc._conns.add(self)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self.buf += data
        if self.busy and len(self.buf) > MAX_HEAD + MAX_BODY:  # pipelining behind a password check: bounded
            self.abort()
            return
        if not self.busy:
            self._serve()

    def _serve(self) -> None:
        """Answer every complete request in the buffer (until one needs a password check)."""
        svc = self.svc
        while not self.closed and not self.busy:
            start, end = find_head_end(self.buf)
            if end < 0:
                if len(self.buf) - start > MAX_HEAD:
                    self._reply(error(431, "request head too large"), False)
                return
            try:
                req = svc._head(self.buf[start:end])
            except HttpError as exc:
                self._reply(error(exc.status, exc.reason), False)
                return
            if len(self.buf) - end < req.content_length:
                return
            body = self.buf[end:end + req.content_length]
            self.buf = self.buf[end + req.content_length:]
            reply = svc._request(req, body, self.host)
            if isinstance(reply, Reply):
                self._reply(reply, req.keep_alive)
            else:
                self.busy = True
                svc._loop.create_task(reply).add_done_callback(lambda t, keep=req.keep_alive: self._checked(t, keep))

    def eof_received(self) -> bool:
        # A client may shut its side once it has sent its requests (pipelined, behind a password
        # check): keep the connection to answer them, then close it.
        self.eof = True
        if not self.busy:
            self._finish()
        return True

    def _finish(self) -> None:
        if not self.closed:
            self.closed = True
            self.svc._conns.discard(self)
            self.transport.close()

    def _checked(self, task: asyncio.Task, keep: bool) -> None:
        self.busy = False
        if self.closed or task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("X2Go broker: answering failed: %s", exc)
            self._reply(error(500, "the broker failed to answer"), False)
            return
        self._reply(task.result(), keep)
        self._serve()
        if self.eof and not self.busy:
            self._finish()

    def _reply(self, reply: Reply, keep: bool) -> None:
        self.transport.write(self.svc._encode(reply, keep))
        self.since = self.svc._loop.time()
        if not keep:
            self._finish()

    def late(self) -> None:
        """The request did not arrive in time: 408 for a started one, a silent close for an idle connection."""
        if self.buf.strip() and not self.closed:
            self._reply(error(408, "the request was not received in time"), False)
        else:
            self.abort()

    def abort(self) -> None:
        """Close at once, unanswered (over max-connections, pipelining past the bound, an idle connection)."""
        self.closed = True
        self.svc._conns.discard(self)
        self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.svc._conns.discard(self)


__all__ = ["Checker", "Lister", "Placer", "X2goBrokerService"]
