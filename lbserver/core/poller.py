"""Concurrent polling of the agents over XML-RPC, on the balancer's event loop.

Each agent gets one short HTTP/1.0 POST of ``get_state``; the whole exchange
(connect, send, read, parse) is bounded by the poll timeout and the reply by
``max-reply-bytes``, so a dead, black-holed, slow or garbage-spewing agent
costs at most the timeout and never delays the others.

Replies are parsed by a fast path first (:mod:`lbserver.core.rpcreply`:
one regular expression and a short descent over the XML-RPC subset an
agent sends, with no XML tree). Anything outside that subset (an entity, a
DOCTYPE, a comment, a fault, an unusual type, any surprise) goes to the
reference path, xmlrpc.client with defusedxml's expat guards, which gives
the same values and the same errors: the fast path only saves time, never
changes a result.
Each exchange is one bare :class:`asyncio.Protocol` (no stream objects),
because at ten thousand agents per cycle every allocation counts.

A node whose reply body is byte for byte its last one (the agent has not
sampled since) keeps the state validated then, with no parsing at all; the
caller keeps those replies from one cycle to the next (:data:`Replies`).
The other replies are parsed by one task, in slices of a few milliseconds,
so the loop's other users (terminals) are served in between.

An ``https://`` node is polled over TLS with its configured context
(certificate and host name verified); a node with a shared secret sends it
as HTTP Basic authentication. The request bytes of a node are built once
and reused by every poll.
"""

from __future__ import annotations

import asyncio
import logging
import base64
import functools
import hashlib
import ssl
import time
import xmlrpc.client
from dataclasses import dataclass
from typing import Awaitable, Callable, Iterable, Iterator, Mapping

import defusedxml.xmlrpc

from common.tls import client_context
from lbserver.config import Node
from lbserver.core import rpcreply
from lbserver.core.slicing import Job, run_sliced

log = logging.getLogger(__name__)

# Make xmlrpc.client's parser refuse DTDs and entities for every reply we parse.
defusedxml.xmlrpc.monkey_patch()

_BODY = xmlrpc.client.dumps((), "get_state").encode()


class PollError(Exception):
    """Why one agent could not be polled, in words fit for the status page."""


@dataclass(frozen=True)
class PollResult:
    """Outcome of polling one node: ``state`` or ``error`` is set."""

    name: str
    state: dict | None
    error: str | None
    elapsed: float


AUTH_USER = "lbserver"


@functools.lru_cache(maxsize=16384)  # a Node is frozen: its request never changes
def build_request(node: Node) -> bytes:
    """The whole HTTP request polling ``node`` (with its Authorization header when it has a secret)."""
    host = f"[{node.host}]" if ":" in node.host else node.host
    auth = ""
    if node.secret is not None:
        token = base64.b64encode(f"{AUTH_USER}:{node.secret}".encode()).decode("ascii")
        auth = f"Authorization: Basic {token}\r\n"
    return (
        f"POST /RPC2 HTTP/1.0\r\nHost: {host}:{node.port}\r\nUser-Agent: lbserver\r\n{auth}"
        f"Content-Type: text/xml\r\nContent-Length: {len(_BODY)}\r\n\r\n"
    ).encode() + _BODY


@functools.lru_cache(maxsize=1)
def _system_context() -> ssl.SSLContext:
    return client_context(None)


def _tls_error(exc: ssl.SSLError) -> str:
    """Words for a failed TLS exchange, saying what to check."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (f"TLS certificate verification failed: {exc.verify_message or exc.reason} "
                "(check tls-ca and that the certificate names the address)")
    reason = exc.reason or str(exc)
    if reason == "WRONG_VERSION_NUMBER":
        return "TLS error: the agent did not answer in TLS (is tls-cert set in its lbaconfig.xml?)"
    return f"TLS error: {reason}"


def reply_body(raw: bytes, max_bytes: int, server: str = "agent") -> bytes:
    """The body of a whole HTTP reply, checked to be a 200 of at most ``max_bytes``.

    Raises :class:`PollError` for a reply that is not HTTP, a status other
    than 200 (with the first line of its body, where the server says why),
    or a body that is too large. ``server`` names who answered.
    """
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        raise PollError("reply is not HTTP (no header end)")
    lines = head.split(b"\r\n")
    parts = lines[0].split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        raise PollError(f"reply is not HTTP: {lines[0][:60]!r}")
    status = int(parts[1])
    if status != 200:
        reason = parts[2].decode("latin-1", "replace")[:60] if len(parts) > 2 else ""
        hint = " (check secret-file: the agent wants its shared secret)" if status == 401 and server == "agent" else ""
        said = body.split(b"\n", 1)[0].strip()[:160].decode("utf-8", "replace") if server != "agent" else ""
        raise PollError(f"{server} answered HTTP {status} {reason}".rstrip() + hint + (f": {said}" if said else ""))
    if len(body) > max_bytes:
        raise PollError(f"reply larger than {max_bytes} bytes")
    return body


def loads_body(body: bytes) -> object:
    """The one value of an XML-RPC response body; raises :class:`PollError` for a fault or bad XML."""
    try:
        return rpcreply.loads(body)
    except Exception:  # noqa: BLE001 (the reference path below gives the verdict and the words)
        pass
    try:
        values, _ = xmlrpc.client.loads(body)
    except xmlrpc.client.Fault as exc:
        raise PollError(f"agent fault {exc.faultCode}: {str(exc.faultString)[:120]}") from None
    except Exception as exc:  # expat, defusedxml and xmlrpc raise many kinds
        raise PollError(f"malformed XML-RPC reply: {type(exc).__name__}: {str(exc)[:120]}") from None
    if len(values) != 1:
        raise PollError("malformed XML-RPC reply: expected one value")
    return values[0]


def parse_reply(raw: bytes, max_bytes: int) -> object:
    """Parse a whole HTTP reply carrying an XML-RPC response; return the value.

    Raises :class:`PollError` with a specific message on any HTTP or XML-RPC
    problem (bad status line, non-200 status, fault, malformed XML).
    """
    return loads_body(reply_body(raw, max_bytes))


class _Exchange(asyncio.Protocol):
    """One request, the whole reply until the agent closes; ``done`` holds the bytes or the error."""

    __slots__ = ("request", "limit", "chunks", "size", "done", "transport")

    def __init__(self, request: bytes, limit: int, done: asyncio.Future) -> None:
        self.request, self.limit, self.done = request, limit, done
        self.chunks: list[bytes] = []
        self.size = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limit:
            if not self.done.done():
                self.done.set_exception(PollError(f"reply larger than {self.limit - 16384} bytes"))
            self.transport.abort()
            return
        self.chunks.append(data)

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        if self.done.done():
            return
        if exc is not None:
            self.done.set_exception(exc)
        else:
            self.done.set_result(b"".join(self.chunks))


async def _exchange(host: str, port: int, request: bytes, limit: int, ssl_ctx: ssl.SSLContext | None) -> bytes:
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    transport, _ = await loop.create_connection(lambda: _Exchange(request, limit, done), host, port, ssl=ssl_ctx)
    try:
        return await done
    finally:
        transport.abort()  # after a whole reply the server has closed: nothing to flush


# A deadline on the calling task (Python 3.11+); Python 3.10 has only wait_for, a task per call.
_deadline = getattr(asyncio, "timeout", None)


async def exchange(host: str, port: int, request: bytes, timeout: float, max_bytes: int,
                   ssl_ctx: ssl.SSLContext | None = None, server: str = "agent") -> bytes:
    """Send ``request`` and read the whole reply, until the server closes; return its bytes.

    The whole exchange is bounded by ``timeout`` and the reply by
    ``max_bytes`` (with room for the HTTP header). Raises
    :class:`PollError` in words for the status page; ``server`` names what
    should be listening there (for a refused connection). The timeout is a
    deadline on the calling task, not a task of its own (from Python
    3.11): at ten thousand agents a cycle, a task per exchange shows in the
    profile.
    """
    limit = max_bytes + 16384
    try:
        if _deadline is not None:
            async with _deadline(timeout):
                return await _exchange(host, port, request, limit, ssl_ctx)
        return await asyncio.wait_for(_exchange(host, port, request, limit, ssl_ctx), timeout)
    except asyncio.TimeoutError:  # the built-in TimeoutError from Python 3.11 on
        raise PollError(f"no answer within {timeout:g} s") from None
    except ConnectionRefusedError:
        raise PollError(f"connection refused ({server} not running?)") from None
    except ssl.SSLError as exc:
        raise PollError(_tls_error(exc)) from None
    except OSError as exc:
        raise PollError(f"network error: {exc.strerror or exc}") from None


async def fetch_body(node: Node, timeout: float, max_bytes: int, ssl_ctx: ssl.SSLContext | None = None) -> bytes:
    """Fetch one agent's ``get_state`` reply body (HTTP checked, XML not parsed yet).

    Raises :class:`PollError` on any failure. ``ssl_ctx`` defaults to the
    node's own context (set for ``https://`` addresses).
    """
    if ssl_ctx is None:
        ssl_ctx = node.ssl_context
        if ssl_ctx is None and node.tls:  # a Node built outside the config loader
            ssl_ctx = _system_context()
    raw = await exchange(node.host, node.port, build_request(node), timeout, max_bytes, ssl_ctx)
    if not raw:
        raise PollError("agent closed the connection without answering")
    return reply_body(raw, max_bytes)


Replies = dict[str, tuple[bytes, dict]]
"""Per node, a digest of its last reply body and the state validated from it."""


def _digest(body: bytes) -> bytes:
    return hashlib.blake2b(body, digest_size=16).digest()


Fetch = Callable[[Node, float, int], Awaitable[bytes]]
"""How one node's reply body is fetched: (node, timeout, max_bytes) -> body, raising PollError."""
Decode = Callable[[str, bytes], object]
"""How a reply body becomes the value ``validate`` checks: (node name, body) -> value, raising PollError."""


def _decode_xmlrpc(name: str, body: bytes) -> object:
    return loads_body(body)


async def poll_all(nodes: Iterable[Node], timeout: float, max_bytes: int, concurrency: int = 512,
                   validate=None, replies: Replies | None = None, fetch: Fetch | None = None,
                   decode: Decode = _decode_xmlrpc) -> Mapping[str, PollResult]:
    """Poll every node concurrently (at most ``concurrency`` exchanges at once).

    ``validate`` turns a raw reply into a state dict or raises ValueError
    (kept out of this module so it stays about the network); it must be a
    pure function, and the states it returns are never changed by anyone.

    ``replies`` (kept by the caller from one cycle to the next) lets a node
    whose reply body is byte for byte the one of its previous poll keep the
    state validated then: an agent answers the same sample until it takes
    the next one, so polling faster than it samples, or by several
    balancers, costs no parsing. Nodes not polled are dropped from it.
    Without it (None) no reply is compared with anything, nor digested.

    ``concurrency`` workers take the nodes in turn, rather than a task per
    node behind a semaphore: fewer tasks, the same bound. They only fetch:
    new replies are parsed by one task in slices of the loop's time
    (:mod:`lbserver.core.slicing`), so ten thousand new samples at once
    never keep a terminal waiting more than a few milliseconds. A result's
    ``elapsed`` is the exchange's, until its reply was read.

    ``fetch`` and ``decode`` default to an agent's XML-RPC poll; nodes of
    another kind (node_exporter pages, :mod:`lbserver.core.agentless.scrape`)
    give their own and share the rest: the bounds, the slicing, the memo.
    """
    fetch = fetch or fetch_body
    nodes = list(nodes)
    todo = iter(nodes)
    results: dict[str, PollResult] = {}
    memo = replies if replies is not None else {}
    fresh: Replies = {}
    # New replies wait here for the one parser task, so parsing is done in
    # slices of the loop's time however many replies come in at once; the
    # queue is bounded, so fetching waits for parsing and memory stays flat.
    unparsed: asyncio.Queue[tuple[str, bytes, bytes, float] | None] = asyncio.Queue(concurrency)

    def parse(name: str, key: bytes, body: bytes) -> tuple[dict | None, str | None]:
        try:
            value = decode(name, body)
            state = validate(value) if validate else value
        except PollError as exc:
            return None, str(exc)
        except ValueError as exc:
            return None, f"invalid agent reply: {exc}"
        except Exception as exc:  # one node's surprise must not cost the others their cycle
            log.exception("parsing the reply of %s failed unexpectedly", name)
            return None, f"poll failed: {type(exc).__name__}: {exc}"
        fresh[name] = (key, state)
        return state, None

    def parse_each(items: Iterable[tuple[str, bytes, bytes, float]]) -> None:
        for name, key, body, elapsed in items:
            results[name] = PollResult(name, *parse(name, key, body), elapsed)

    ended = False

    def waiting(item: tuple[str, bytes, bytes, float] | None) -> Iterator[tuple[str, bytes, bytes, float]]:
        """``item`` and the replies queued after it, until the queue is empty or the end mark (None) is met."""
        nonlocal ended
        while item is not None:
            yield item
            if unparsed.empty():
                return
            item = unparsed.get_nowait()
        ended = True

    async def parser() -> None:
        # One reply per chunk: a large one may take milliseconds to parse.
        while not ended:
            await run_sliced(Job(waiting(await unparsed.get()), parse_each, lambda: None, step=1))

    async def worker() -> None:
        for node in todo:  # one iterator shared by the workers: each node is polled once
            start = time.monotonic()
            state = None
            try:
                body = await fetch(node, timeout, max_bytes)
            except PollError as exc:
                error = str(exc)
            except Exception as exc:  # one node's surprise must not cost the others their cycle
                log.exception("polling %s failed unexpectedly", node.name)
                error = f"poll failed: {type(exc).__name__}: {exc}"
            else:
                key = _digest(body) if replies is not None else b""
                known = memo.get(node.name)
                if known is None or known[0] != key:  # new figures: the parser records the result
                    await unparsed.put((node.name, key, body, time.monotonic() - start))
                    continue
                fresh[node.name] = known
                state, error = known[1], None
            results[node.name] = PollResult(node.name, state, error, time.monotonic() - start)

    parsing = asyncio.ensure_future(parser())
    try:
        await asyncio.gather(*(worker() for _ in range(min(concurrency, len(nodes)))))
    except BaseException:  # cancelled (the daemon stops): the parser goes too
        parsing.cancel()
        raise
    await unparsed.put(None)
    await parsing
    if replies is not None:
        replies.clear()
        replies.update(fresh)
    return {n.name: results[n.name] for n in nodes}
