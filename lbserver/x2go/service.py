"""The X2Go broker's HTTP(S) transport: who may ask, framing, authentication, then :mod:`lbserver.x2go.broker`.

Requests are read with asyncio streams on the daemon's loop, several per
connection when the client keeps it open (X2Go Client does), each one
bounded as a whole by ``timeout`` (a client too slow gets 408 and is
closed). Heads are parsed by the terminal port's parser
(:mod:`lbserver.terminal.request`), so both ports refuse alike; bodies
are read up to its ``MAX_BODY``.

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
from typing import Callable, Mapping

from common.ratelimit import DenyLog
from common.tls import server_context
from lbserver.config import X2goBroker, X2goProfile
from lbserver.haproxy.access import effective_allow, is_allowed
from lbserver.terminal.request import MAX_BODY, MAX_HEAD, HttpError, find_head_end, parse_head
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

Placer = Callable[[X2goProfile, str], Placement]
Lister = Callable[[X2goProfile, str], list[str]]
Checker = Callable[[str, str, str], tuple[bool, str]]


class _Close(Exception):
    """The connection ends here without a reply (the client went away)."""


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
        self._conns: set[asyncio.StreamWriter] = set()
        self._denials = DenyLog()
        self._pam_slots = asyncio.Semaphore(MAX_PAM_CHECKS)
        self.counts: dict[int, int] = {}
        """Replies sent, by HTTP status."""
        self.configure(config)

    def configure(self, config: X2goBroker) -> None:
        """Take ``config`` (a reload); open connections keep being served. The TLS files are read again."""
        self.config = config
        self._allow = effective_allow(config.allow)
        self._profiles = {p.name: p for p in config.profiles}
        self._tls: ssl.SSLContext | None = server_context(config.tls_cert, config.tls_key) if config.tls_cert else None
        old = getattr(self, "failures", None)
        if old is None or old.limit != config.max_failures:
            self.failures = FailureLimit(config.max_failures)

    async def start(self, sock: socket.socket) -> None:
        """Serve on ``sock``, a bound and listening TCP socket."""
        self._server = await asyncio.start_server(self._serve, sock=sock, ssl=self._tls,
                                                  ssl_handshake_timeout=self.config.timeout if self._tls else None)

    async def stop(self) -> None:
        """Stop accepting and close every connection."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for writer in list(self._conns):
            writer.transport.abort()
        await server.wait_closed()

    # -- one connection ---------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        host = str(peer[0]) if peer else ""
        if not is_allowed(host, self._allow):
            if self._denials.should_log(("access", host), time.monotonic()):
                log.warning("X2Go broker: request from %s refused: not in <x2gobroker> <allow> (without any "
                            "<allow>, loopback only)", host)
            await self._send(writer, error(403, "this address may not use the X2Go broker"), False)
            writer.close()
            return
        if len(self._conns) >= self.config.max_connections:
            writer.transport.abort()
            return
        self._conns.add(writer)
        buf = b""
        try:
            while True:
                try:
                    keep, reply, buf = await asyncio.wait_for(self._one(reader, host, buf), self.config.timeout)
                except asyncio.TimeoutError:
                    keep, reply = False, error(408, "the request was not received in time")
                except _Close:
                    return
                await self._send(writer, reply, keep)
                if not keep:
                    return
        except (ConnectionError, ssl.SSLError, OSError):
            return
        finally:
            self._conns.discard(writer)
            writer.close()

    async def _read(self, reader: asyncio.StreamReader, buf: bytes) -> tuple[bytes, bytes, bool, bytes]:
        """One request's head and body from ``buf`` and the stream; the bytes after it; and keep-alive."""
        while True:
            start, end = find_head_end(buf)
            if end >= 0:
                break
            if len(buf) - start > MAX_HEAD:
                raise HttpError(431, "request head too large")
            chunk = await reader.read(65536)
            if not chunk:
                raise _Close()
            buf += chunk
        req = parse_head(buf[start:end])
        rest = buf[end:]
        while len(rest) < req.content_length:
            chunk = await reader.read(65536)
            if not chunk:
                raise _Close()
            rest += chunk
        return bytes(req.method) + b" " + bytes(req.path), rest[:req.content_length], req.keep_alive, rest[req.content_length:]

    async def _one(self, reader: asyncio.StreamReader, host: str, buf: bytes) -> tuple[bool, Reply, bytes]:
        try:
            line, body, keep, rest = await self._read(reader, buf)
        except HttpError as exc:
            return False, error(exc.status, exc.reason), b""
        method, _, path = line.partition(b" ")
        if method != b"POST":
            return keep, error(405, "the X2Go broker answers POST requests (as X2Go clients send them)"), rest
        frontend = frontend_of(path.decode("ascii", "replace"))
        if frontend is None:
            return keep, error(404, "no such broker page: use /plain/ (X2Go Client) or /json/ (Python X2Go)"), rest
        try:
            form = parse_form(frontend, body)
        except BadRequest as exc:
            return keep, error(400, str(exc)), rest
        return keep, await self._answer(form, host), rest

    async def _answer(self, form: Form, host: str) -> Reply:
        refused = await self._authenticate(form, host)
        if refused is not None:
            return refused
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
        if cfg.auth == "none":
            return None
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

    async def _send(self, writer: asyncio.StreamWriter, reply: Reply, keep: bool) -> None:
        self.counts[reply.status] = self.counts.get(reply.status, 0) + 1
        head = (f"HTTP/1.1 {reply.status} {REASONS.get(reply.status, 'Error')}\r\nServer: lbserver\r\n"
                f"Content-Type: {reply.content_type}\r\nContent-Length: {len(reply.body)}\r\nExpires: +1h\r\n"
                f"Connection: {'keep-alive' if keep else 'close'}\r\n\r\n")
        writer.write(head.encode() + reply.body)
        await writer.drain()

    def connection_count(self) -> int:
        """Broker connections open now."""
        return len(self._conns)


__all__ = ["Checker", "Lister", "Placer", "X2goBrokerService"]
