"""The agent's XML-RPC service: get_state(), ping() and introspection over HTTP(S).

One worker thread per connection at a time, from a pool that grows while
all are busy (a stuck client cannot block others), each connection bounded by ``request-timeout`` in total, requests bounded by
``max-request-bytes``, and request bodies parsed with DTDs and entities
refused. The allow-list is checked in the accept loop, so refused peers get
their 403 at once and never occupy a worker. Requests only read the
sampler's current sample, whose marshalled reply is built once per sample.
A plain get_state() call (no TLS, no secret) already waiting whole when its
connection is accepted, as a balancer's usually is, is answered right there
in the accept loop, without a worker (a large reply, of many sessions, with
the connection's send buffer widened and what the kernel does not take at
once sent by a worker); anything else, or anything not there yet, goes to a
worker.

With ``tls-cert`` the TLS handshake runs in the connection's worker thread
under the same deadline (never in the accept loop, where one silent client
would stall every other). With ``secret-file`` every request must carry HTTP
Basic authentication whose password is the shared secret (any user name),
checked in constant time before the body is read.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import errno
import heapq
import hmac
import http.server
import itertools
import logging
import socket
import socketserver
import ssl
import sys
import threading
import time
import xmlrpc.client
from dataclasses import dataclass, field
from typing import Callable
from xmlrpc.server import SimpleXMLRPCDispatcher

from defusedxml.xmlrpc import DefusedExpatParser

from common.ratelimit import DenyLog, LogBudget
from common.version import __version__
from lbagent.access import is_allowed
from lbagent.config import AgentConfig
from lbagent.linger import LingeringCloser
from lbagent.sampler import Sample
from lbagent.workers import WorkerPool

log = logging.getLogger(__name__)

RPC_PATHS = ("/", "/RPC2")
GET_STATE_CALL = xmlrpc.client.dumps((), "get_state").encode()
"""The get_state() call as lbserver and xmlrpc.client send it, byte for byte."""
INLINE_PEEK_BYTES = 2048  # a plain get_state() call is about 300 bytes
INLINE_MAX_REPLY = 8192
"""Bytes of reply the accept loop sends as they are: half the smallest send buffer of a fresh connection, so
one non-blocking send always takes it whole."""
INLINE_LARGE_REPLY = 1024 * 1024
"""Up to this size (many sessions) the accept loop first widens the connection's send buffer to the reply's
size; what a non-blocking send still leaves is sent by a worker."""
DRAIN_BYTES = 1024 * 1024   # read and dropped after a refusal, so the client sees the answer
DRAIN_SECONDS = 1.0
AUTH_REALM = "lbagent"
DENIED_LINES_PER_MINUTE = 20  # refused-peer lines in total, whatever the number of addresses
# accept() failing for want of descriptors or memory: the connection stays
# queued and the socket readable, so retrying at once would spin.
ACCEPT_RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
ACCEPT_PAUSE = 0.1  # seconds without accepting after such a failure


def basic_auth_ok(header: str | None, secret: str) -> bool:
    """Whether an ``Authorization`` header is HTTP Basic with ``secret`` as password (any user).

    The comparison takes the same time wherever the first difference is, so
    the secret cannot be guessed byte by byte from response times.
    """
    if not header:
        return False
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    _, sep, password = decoded.partition(b":")
    return bool(sep) and hmac.compare_digest(password, secret.encode("utf-8"))


def safe_loads(data: bytes) -> tuple[tuple, str | None]:
    """Parse an XML-RPC request like ``xmlrpc.client.loads``, refusing DTDs and entities.

    Raises DTDForbidden / EntitiesForbidden / ExternalReferenceForbidden
    (defusedxml), ``xml.parsers.expat.ExpatError`` or
    ``xmlrpc.client.ResponseError`` for bad input.
    """
    target = xmlrpc.client.Unmarshaller(use_builtin_types=False)
    parser = DefusedExpatParser(target, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    parser.feed(data)
    parser.close()
    return target.close(), target.getmethodname()


class Deadlines:
    """One thread that shuts down sockets whose connection outlived its deadline.

    A per-operation socket timeout alone would let a client trickle one byte
    per timeout for ever; this bounds the whole connection.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, socket.socket]] = []
        self._live: set[int] = set()
        self._ids = itertools.count()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="lbagent-deadlines", daemon=True)
        self._thread.start()

    def add(self, sock: socket.socket, seconds: float) -> int:
        """Shut ``sock`` down ``seconds`` from now unless :meth:`cancel` comes first."""
        with self._cond:
            token = next(self._ids)
            entry = (time.monotonic() + seconds, token, sock)
            heapq.heappush(self._heap, entry)
            self._live.add(token)
            if self._heap[0] is entry:
                # Only a new earliest deadline needs the thread awake; with one
                # timeout for all, that is rare under load (saves a wake-up per call).
                self._cond.notify()
            return token

    def cancel(self, token: int) -> None:
        """The connection ended in time."""
        with self._cond:
            self._live.discard(token)

    def alive(self) -> bool:
        """Whether the deadline thread runs (False after :meth:`stop`)."""
        return self._thread.is_alive()

    def stop(self) -> None:
        """End the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        with self._cond:
            while not self._stopping:
                while self._heap and self._heap[0][1] not in self._live:
                    heapq.heappop(self._heap)  # finished in time
                if not self._heap:
                    self._cond.wait()
                    continue
                due, token, sock = self._heap[0]
                wait = due - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                heapq.heappop(self._heap)
                self._live.discard(token)
                try:
                    # The plain socket call also for a TLS socket: SSLSocket.shutdown
                    # would drop its TLS state under the worker thread using it.
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)
                except OSError:
                    pass


class Dispatcher(SimpleXMLRPCDispatcher):
    """get_state, ping and system.* over a sample source (a callable returning the current
    :class:`~lbagent.sampler.Sample` or None)."""

    def __init__(self, current_sample: Callable[[], Sample | None]) -> None:
        super().__init__(allow_none=False, encoding="utf-8", use_builtin_types=False)
        self._current = current_sample
        self.register_function(self.get_state, "get_state")
        self.register_function(self.ping, "ping")
        self.register_introspection_functions()

    def get_state(self) -> dict:
        """get_state() -> struct: hostname, agent_version, sampled_at (epoch seconds),
        variables {NAME: value}, users [name] and sessions [{user, kind, state, since, info}],
        as of the latest sample."""
        return self._sample().state

    def ping(self) -> bool:
        """ping() -> true: the agent is up."""
        return True

    def current(self) -> Sample | None:
        """The sample in force (None before the first one)."""
        return self._current()

    def _sample(self) -> Sample:
        sample = self._current()
        if sample is None:
            raise xmlrpc.client.Fault(2, "no sample taken yet")
        return sample

    def _marshaled_dispatch(self, data: bytes, dispatch_method=None, path=None) -> bytes:
        try:
            if data == GET_STATE_CALL:  # what every balancer sends: no XML to parse
                return self._sample().response
            params, method = safe_loads(data)
            if method is None:
                raise xmlrpc.client.Fault(1, "not an XML-RPC method call")
            if method == "get_state" and not params:
                return self._sample().response  # marshalled once per sample
            result = self._dispatch(method, params)
            response = xmlrpc.client.dumps((result,), methodresponse=True, encoding=self.encoding)
        except xmlrpc.client.Fault as fault:
            response = xmlrpc.client.dumps(fault, encoding=self.encoding)
        except Exception as exc:  # any bad request becomes a fault; the agent keeps serving
            response = xmlrpc.client.dumps(
                xmlrpc.client.Fault(1, f"{type(exc).__name__}: {exc}"[:300]), encoding=self.encoding)
        return response.encode(self.encoding, "xmlcharrefreplace")


def http_reply(code: int, body: bytes, ctype: str, extra: dict[str, str] | None = None) -> bytes:
    """A whole HTTP/1.0 reply: status line, Server, Date, Content-Type, Content-Length, ``extra``, body."""
    reason = http.server.BaseHTTPRequestHandler.responses.get(code, ("",))[0]
    lines = [f"HTTP/1.0 {code} {reason}", f"Server: {Handler.server_version}",
             f"Date: {email.utils.formatdate(usegmt=True)}", f"Content-Type: {ctype}",
             f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in (extra or {}).items()]
    return "\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + body


# Headers a plain get_state() call may carry and still be answered in the accept loop.
_PLAIN_HEADERS = frozenset((b"host", b"user-agent", b"content-type", b"content-length", b"accept-encoding",
                            b"connection"))
_PLAIN_LENGTH = str(len(GET_STATE_CALL)).encode()
_RPC_PATHS_BYTES = tuple(p.encode() for p in RPC_PATHS)


def plain_get_state(data: bytes) -> bool:
    """Whether ``data`` is one whole get_state() call that needs nothing of the full handler.

    That is: ``POST`` to an RPC path over HTTP/1.0 or 1.1, no header but
    Host, User-Agent, Content-Type, Content-Length (the body's), Accept-Encoding
    and Connection, and a body that is :data:`GET_STATE_CALL` byte for byte,
    nothing after it. Anything else (credentials, another call, a body still
    on its way) is for the full handler.
    """
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep or body != GET_STATE_CALL:
        return False
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or parts[0] != b"POST" or parts[1] not in _RPC_PATHS_BYTES \
            or parts[2] not in (b"HTTP/1.0", b"HTTP/1.1"):
        return False
    length = False
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        name = name.lower()
        if not sep or name not in _PLAIN_HEADERS:
            return False
        if name == b"content-length":
            if value.strip(b" \t") != _PLAIN_LENGTH:
                return False
            length = True
    return length


class Handler(http.server.BaseHTTPRequestHandler):
    """One connection: at most one request (HTTP/1.0 semantics)."""

    server_version = f"lbagent/{__version__}"
    sys_version = ""
    protocol_version = "HTTP/1.0"
    # Answer garbage with a status line too (the stdlib default, HTTP/0.9, has none).
    default_request_version = "HTTP/1.0"
    error_message_format = "%(code)d %(message)s\n"
    error_content_type = "text/plain; charset=utf-8"
    server: "AgentHTTPServer"

    def version_string(self) -> str:
        return self.server_version

    def setup(self) -> None:
        # One config for the whole connection, even across a reload.
        cfg = self._config = self.server.config
        self.timeout = cfg.request_timeout
        self._tls = cfg.ssl_context
        self._secret = cfg.secret
        self._answered = False
        if self._tls is not None:
            # Wrapping does no I/O; the timeout set first is inherited, and the
            # handshake happens in handle(), under the connection's deadline.
            self.request.settimeout(cfg.request_timeout)
            self.request = self._tls.wrap_socket(self.request, server_side=True,
                                                 do_handshake_on_connect=False)
        self._deadline = self.server.parts.deadlines.add(self.request, cfg.request_timeout)
        super().setup()

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.parts.deadlines.cancel(self._deadline)
            if self._tls is not None:
                # The server closes the plain socket it accepted, which wrapping detached.
                try:
                    socket.socket.shutdown(self.request, socket.SHUT_RDWR)
                except OSError:
                    pass
                self.request.close()

    def handle(self) -> None:
        # The allow-list was checked in the accept loop (AgentHTTPServer.process_request).
        host = self.client_address[0]
        try:
            if self._tls is not None and not self._handshake(host):
                return
            super().handle()
        except OSError as exc:  # a peer that vanished or timed out mid-request
            log.debug("connection from %s ended: %s", host, exc)
        except Exception as exc:  # an input nothing above foresaw: answer it and serve on
            self._failed(host, exc)

    def _failed(self, host: str, exc: Exception) -> None:
        """Answer a request whose handling raised: 400 for input that could not be
        parsed (ValueError), else 500; the peer never just sees the connection drop."""
        self.server.note_error(host, exc)
        self.close_connection = True
        if self._answered:
            return
        try:
            if isinstance(exc, ValueError):
                self._refuse(400, "malformed request\n")
            else:
                self._refuse(500, "internal error\n")
        except OSError:
            pass

    def send_response_only(self, code: int, message: str | None = None) -> None:
        # The stdlib's own error answers (bad request line, headers too long) come through here.
        self._answered = True
        super().send_response_only(code, message)

    def _handshake(self, host: str) -> bool:
        try:
            self.request.do_handshake()
            return True
        except ssl.SSLError as exc:
            reason = exc.reason or str(exc)
            self.server.note_tls_failure(host, "a plain HTTP request (the client must use https://)"
                                         if reason == "HTTP_REQUEST" else reason)
            if reason == "HTTP_REQUEST":
                # A plain HTTP client (a balancer with http:// for this node): tell it
                # in plain HTTP, outside TLS, so its error says what to change.
                try:
                    socket.socket.sendall(self.request, b"HTTP/1.0 400 TLS required (use https:// for this agent)"
                                                        b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                except OSError:
                    pass
                else:
                    # The TLS socket's shutdown() drops its (failed) TLS state, so this
                    # drains the rest of the plain request from the bare connection.
                    self._drain()
        except OSError as exc:  # timeout or a peer that went away mid-handshake
            log.debug("TLS handshake with %s ended: %s", host, exc)
        self.close_connection = True
        return False

    def _authorized(self) -> bool:
        """Whether the request carries the shared secret (always true without secret-file)."""
        if self._secret is None or basic_auth_ok(self.headers.get("Authorization"), self._secret):
            return True
        self.server.note_unauthorized(self.client_address[0], "Authorization" in self.headers)
        self._refuse(401, "authentication required\n",
                     extra={"WWW-Authenticate": f'Basic realm="{AUTH_REALM}", charset="UTF-8"'})
        return False

    def _drain(self) -> None:
        """Read and drop what the client still sends (bounded), so closing does not
        reset the connection before it has read our answer."""
        sock = self.request
        try:
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(DRAIN_SECONDS)
            end = time.monotonic() + DRAIN_SECONDS
            left = DRAIN_BYTES
            while left > 0 and time.monotonic() < end:
                data = sock.recv(min(65536, left))
                if not data:
                    break
                left -= len(data)
        except OSError:
            pass
        self.close_connection = True

    def _reply(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8",
               extra: dict[str, str] | None = None) -> None:
        # Status, headers and body in one write: one system call per reply, not two.
        self._answered = True
        self.log_request(code, len(body))
        self.wfile.write(http_reply(code, body, ctype, extra))

    def _refuse(self, code: int, text: str, extra: dict[str, str] | None = None) -> None:
        self._reply(code, text.encode("utf-8"), extra=dict(extra or {}, Connection="close"))
        self._drain()

    def do_POST(self) -> None:
        """An XML-RPC call."""
        if not self._authorized():
            return
        path = self.path.split("?", 1)[0]
        if path not in RPC_PATHS:
            self._refuse(404, f"not found: XML-RPC is served at {' and '.join(RPC_PATHS)}\n")
            return
        if self.headers.get("Transfer-Encoding"):
            self._refuse(411, "send the request with a Content-Length\n")
            return
        encoding = self.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            self._refuse(415, f"content encoding {encoding[:40]!r} not accepted\n")
            return
        raw = self.headers.get("Content-Length")
        if raw is None:
            self._refuse(411, "Content-Length required\n")
            return
        raw = raw.strip()
        # isdigit() alone admits '²' and other digits int() refuses (headers arrive as latin-1).
        if not (raw.isascii() and raw.isdigit()):
            self._refuse(400, "bad Content-Length\n")
            return
        length = int(raw)
        limit = self._config.max_request_bytes
        if length > limit:
            log.debug("request of %d bytes from %s refused (limit %d)", length, self.client_address[0], limit)
            self._refuse(413, f"request body larger than {limit} bytes\n")
            return
        data = self.rfile.read(length)
        if len(data) < length:
            log.debug("client %s closed before sending its request", self.client_address[0])
            self.close_connection = True
            return
        response = self.server.parts.dispatcher._marshaled_dispatch(data)
        self._reply(200, response, ctype="text/xml")

    def _not_post(self) -> None:
        if not self._authorized():
            return
        path = self.path.split("?", 1)[0]
        if path not in RPC_PATHS:
            self._refuse(404, "not found\n")
        else:
            self._refuse(405, "XML-RPC needs POST\n", extra={"Allow": "POST"})

    do_GET = do_HEAD = do_PUT = do_DELETE = do_OPTIONS = do_PATCH = _not_post

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - stdlib signature
        # One line per request at info level would flood the log at 1 poll/s per balancer.
        log.debug("%s %s", self.client_address[0], format % args)


def forbidden_response(host: str, server_version: str) -> bytes:
    """The complete HTTP 403 answer to a peer outside the allow-list."""
    body = f"access denied for {host}\n".encode("utf-8", "replace")
    return (f"HTTP/1.0 403 Forbidden\r\nServer: {server_version}\r\n"
            f"Content-Type: text/plain; charset=utf-8\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n").encode("ascii") + body


BUSY_RESPONSE = b"HTTP/1.0 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


@dataclass
class ServerParts:
    """What every AgentHTTPServer of a service shares, so a rebind starts none of it afresh
    (the rate limits of log lines included)."""

    dispatcher: Dispatcher
    deadlines: Deadlines
    workers: WorkerPool
    closer: LingeringCloser
    deny_log: DenyLog = field(default_factory=DenyLog)
    event_log: DenyLog = field(default_factory=DenyLog)
    deny_budget: LogBudget = field(default_factory=lambda: LogBudget(DENIED_LINES_PER_MINUTE, 60.0))


class AgentHTTPServer(socketserver.TCPServer):
    """Serves connections on an already bound, listening socket, each on a pooled worker thread.

    Refusals (a peer outside the allow-list, every worker busy) are answered
    in the accept loop without waiting on the peer, so they never hold a worker.
    """

    def __init__(self, sock: socket.socket, config: AgentConfig, parts: ServerParts) -> None:
        self.address_family = sock.family
        super().__init__(sock.getsockname(), Handler, bind_and_activate=False)
        self.socket.close()
        self.socket = sock
        self.config = config
        self.parts = parts

    def note_denied(self, host: str) -> None:
        """Log a refused peer, at most once a minute per address and
        :data:`DENIED_LINES_PER_MINUTE` lines a minute in all (this runs in the accept loop)."""
        now = time.monotonic()
        if not self.parts.deny_log.should_log(host, now):
            return
        verdict = self.parts.deny_budget.take(now)
        if verdict == LogBudget.LOG:
            log.warning("refused query from %s: not in <access> of %s (logged at most once a minute)",
                        host, self.config.path)
        elif verdict == LogBudget.SUMMARY:
            log.warning("more refused peers (not in <access> of %s): not logged for the rest of the minute, "
                        "at most %d such lines a minute", self.config.path, self.parts.deny_budget.limit)

    def note_accept_failure(self, exc: OSError) -> None:
        """Log that accept() failed for want of resources, at most once a minute."""
        if self.parts.event_log.should_log("accept", time.monotonic()):
            host, port = self.server_address[:2]
            log.error("cannot accept connections on port %d of %s: %s (pausing %g s between attempts; "
                      "logged at most once a minute)", port, host, exc.strerror or exc, ACCEPT_PAUSE)

    def get_request(self) -> tuple[socket.socket, tuple]:
        try:
            return self.socket.accept()
        except OSError as exc:
            if exc.errno in ACCEPT_RESOURCE_ERRORS:
                # Out of descriptors (EMFILE): the waiting connection stays queued and
                # the socket readable. Pause instead of spinning until some are freed
                # (lingering closes end within a second, requests within their timeout).
                self.note_accept_failure(exc)
                time.sleep(ACCEPT_PAUSE)
            raise  # socketserver drops the attempt and selects again

    def note_unauthorized(self, host: str, had_credentials: bool) -> None:
        """Log a request without the shared secret, at most once a minute per address (never the secret)."""
        if self.parts.event_log.should_log(f"auth {host}", time.monotonic()):
            what = "a wrong secret" if had_credentials else "no credentials"
            log.warning("refused query from %s: %s (secret-file of %s; logged at most once a minute)",
                        host, what, self.config.path)

    def note_tls_failure(self, host: str, reason: str) -> None:
        """Log a failed TLS handshake, at most once a minute per address."""
        if self.parts.event_log.should_log(f"tls {host}", time.monotonic()):
            log.warning("TLS handshake with %s failed: %s (logged at most once a minute)", host, reason)

    def note_error(self, host: str, exc: BaseException | None) -> None:
        """Log a request that failed unexpectedly, at most once a minute per address."""
        if self.parts.event_log.should_log(f"error {host}", time.monotonic()):
            log.warning("error while serving %s: %s: %s (logged at most once a minute)",
                        host, type(exc).__name__, exc, exc_info=log.isEnabledFor(logging.DEBUG))

    def process_request(self, request, client_address) -> None:
        host = client_address[0]
        if not is_allowed(host, self.config.allow):
            self.note_denied(host)
            self._answer_at_once(request, forbidden_response(host, Handler.server_version))
        elif self._answered_inline(request):
            log.debug("%s get_state answered in the accept loop", host)
        elif not self.parts.workers.submit(lambda: self._serve_connection(request, client_address)):
            # Every worker busy: answer at once rather than queue the connection.
            self._answer_at_once(request, BUSY_RESPONSE)

    def _answered_inline(self, request: socket.socket) -> bool:
        """Answer a plain get_state() call already waiting whole in ``request``, here in the accept loop.

        A balancer sends its call as soon as it is connected, so it is
        usually there by the time the connection is accepted: answering it
        at once, from the reply marshalled once per sample, saves handing
        the connection to a worker thread. Never waits for anything: a call
        not whole yet, over TLS, with a shared secret, before the first
        sample, or whose reply is over :data:`INLINE_LARGE_REPLY` goes to a
        worker as before (returns False). A reply over :data:`INLINE_MAX_REPLY`
        is started here only when a worker can take what the kernel does not.
        """
        if self.config.ssl_context is not None or self.config.secret is not None:
            return False
        try:
            data = request.recv(INLINE_PEEK_BYTES, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except OSError:
            return False
        sample = self.parts.dispatcher.current()
        if sample is None or not plain_get_state(data):
            return False
        answer = http_reply(200, sample.response, "text/xml")
        if len(answer) > INLINE_LARGE_REPLY:
            return False
        if len(answer) > INLINE_MAX_REPLY and not self.parts.workers.has_room:
            # Its end may need a worker: with none to be had, the worker path answers busy
            # rather than this one cutting the reply short.
            return False
        try:
            request.recv(len(data), socket.MSG_DONTWAIT)  # what the peek saw: it is all there
            if len(answer) > INLINE_MAX_REPLY:
                request.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, len(answer))
            request.setblocking(False)
            sent = request.send(answer)  # a fresh connection's send buffer takes a short answer whole
        except OSError as exc:
            log.debug("connection ended before its answer: %s", exc)
            sent = len(answer)
        if sent < len(answer) and self._send_rest(request, memoryview(answer)[sent:]):
            return True
        self.shutdown_request(request)
        return True

    def _send_rest(self, request: socket.socket, rest: memoryview) -> bool:
        """Hand the end of a large inline answer to a worker, under the request deadline; False when all are busy."""
        timeout = self.config.request_timeout

        def job() -> None:
            token = self.parts.deadlines.add(request, timeout)
            try:
                request.settimeout(timeout)
                request.sendall(rest)
            except OSError as exc:
                log.debug("answer to a plain get_state() not sent whole: %s", exc)
            finally:
                self.parts.deadlines.cancel(token)
                self.shutdown_request(request)

        return self.parts.workers.submit(job)

    def _answer_at_once(self, request: socket.socket, answer: bytes) -> None:
        """Send ``answer`` without blocking and leave the close to the lingerer.

        Over TLS the peer is hung up on before the handshake instead, which
        would cost CPU for a refusal.
        """
        if self.config.ssl_context is not None:
            self.shutdown_request(request)
            return
        try:
            request.setblocking(False)
            request.send(answer)  # a fresh connection's send buffer takes a short answer whole
        except OSError:
            self.shutdown_request(request)
            return
        self.parts.closer.close(request)

    def _serve_connection(self, request, client_address) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)

    def handle_error(self, request, client_address) -> None:
        # One bad peer must not spill tracebacks on stderr nor stop the server.
        self.note_error(client_address[0], sys.exc_info()[1])
