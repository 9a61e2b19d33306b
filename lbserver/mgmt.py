"""The management service: /status, /metrics, the dashboard and admin actions.

Low traffic, so it reads requests with asyncio streams and answers one
request per connection. Reads are open to whoever can reach the port (it
listens on loopback by default); admin actions (POST) are accepted from
loopback, or from elsewhere only with the token of ``token-file`` given as
``Authorization: Bearer TOKEN`` and compared in constant time.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import ipaddress
import json
import logging
import os
import signal
import socket
import urllib.parse
from typing import TYPE_CHECKING, Callable, Mapping

from common.secretfile import SecretFileError, permission_problem, read_secret_file
from common.netutil import peer_address
from common.xmlconfig import ConfigError
from lbserver import config as configmod
from lbserver.status import build_status

if TYPE_CHECKING:
    from lbserver.app import Balancer

log = logging.getLogger(__name__)

MAX_HEAD = 16384
MAX_BODY = 65536
REQUEST_TIMEOUT = 10.0
REASONS = {200: "OK", 202: "Accepted", 400: "Bad Request", 403: "Forbidden", 404: "Not Found",
           405: "Method Not Allowed", 413: "Payload Too Large", 500: "Internal Server Error"}

Response = tuple[int, str, bytes]


def _json(status: int, doc: object) -> Response:
    return status, "application/json", (json.dumps(doc, indent=1, sort_keys=False) + "\n").encode()


def _text(status: int, message: str) -> Response:
    return status, "text/plain; charset=utf-8", (message + "\n").encode()


def read_token(path: str | None) -> str | None:
    """The admin token from ``path`` (first line), or None; warns on loose permissions."""
    if not path:
        return None
    try:
        token = read_secret_file(path)
    except SecretFileError as exc:
        log.error("cannot read token file %s (%s); remote admin actions are refused", exc.path, exc.message)
        return None
    problem = permission_problem(path)
    if problem:
        log.warning("token file %s", problem)
    return token


class TokenFile:
    """The admin token of ``token-file``, re-read only when the file changes.

    Remote requests arrive at the network's pace; re-reading (and logging a
    broken file) on each one would let anyone flood the log.
    """

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._token: str | None = None

    def get(self, path: str | None) -> str | None:
        """The token, or None when no usable token file is configured."""
        try:
            st = os.stat(path) if path else None
            key = (path, st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size) if st else (path,)
        except OSError as exc:
            key = (path, exc.errno)
        if key != self._key:
            self._key, self._token = key, read_token(path)
        return self._token


@functools.lru_cache(maxsize=1)
def _own_names() -> frozenset[str]:
    # Looked up once: getfqdn may ask the resolver, which must not stall the loop per request.
    names = {"localhost", socket.gethostname().lower(), socket.getfqdn().lower()}
    return frozenset(n for n in names if n)


def host_allowed(peer: str, headers: Mapping[str, str]) -> bool:
    """Refuse DNS rebinding: a request from this host must be addressed to this host.

    A web page in a browser on the boot server can make a name of its own
    resolve to 127.0.0.1 and then read this service; the browser still sends
    that foreign name in ``Host``. Tools on this host (curl, lbctl,
    Prometheus, a local reverse proxy) address it by an IP literal,
    ``localhost`` or the machine's own name.
    """
    host = headers.get("host")
    if host is None or not is_loopback(peer):
        return True
    name = (host[1:host.find("]")] if host.startswith("[") else host.rsplit(":", 1)[0]).lower().rstrip(".")
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        pass
    return name in _own_names() or name.endswith(".localhost")


def is_loopback(peer: str) -> bool:
    """True for 127.0.0.0/8, ::1 and IPv4-mapped loopback."""
    addr = peer_address(peer)
    return addr is not None and addr.is_loopback


def _origin_is_loopback(origin: str) -> bool:
    host = urllib.parse.urlsplit(origin).hostname or ""
    return host == "localhost" or is_loopback(host)


def loopback_allowed(peer: str, headers: Mapping[str, str]) -> bool:
    """True when a request may act without a token because it comes from this host.

    A browser on this host also connects from loopback, on behalf of any web
    page it shows; it then sends ``Origin``. A request whose Origin is not a
    loopback page (another site, or a DNS-rebound name) gets no loopback
    trust, so no web page can drain nodes through an admin's browser.
    """
    if not is_loopback(peer):
        return False
    origin = headers.get("origin")
    return origin is None or _origin_is_loopback(origin)


def admin_allowed(peer: str, headers: Mapping[str, str], token: str | None) -> bool:
    """May this request use the admin actions (POST)?

    ``headers`` has lower-case names. Allowed from loopback (see
    :func:`loopback_allowed`), or from anywhere with ``Authorization: Bearer
    TOKEN`` matching ``token`` (compared in constant time). No token
    configured means no remote admin.
    """
    if loopback_allowed(peer, headers):
        return True
    given = headers.get("authorization", "")
    if not token or not given.startswith("Bearer "):
        return False
    return hmac.compare_digest(given[7:].strip().encode(), token.encode())


class ManagementService:
    """HTTP management endpoints over a :class:`~lbserver.app.Balancer`."""

    def __init__(self, bal: "Balancer") -> None:
        self.bal = bal
        self.server: asyncio.AbstractServer | None = None
        self._token = TokenFile()

    async def start(self, sock: socket.socket) -> None:
        """Serve on an already listening socket."""
        self.server = await asyncio.start_server(self._handle, sock=sock, limit=MAX_HEAD)

    async def stop(self) -> None:
        """Stop accepting; in-flight requests finish on their own timeout."""
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        peer_ip = peer[0] if peer else ""
        try:
            resp = await asyncio.wait_for(self._read_and_route(reader, peer_ip), REQUEST_TIMEOUT)
        except asyncio.TimeoutError:
            resp = _text(400, "request timed out")
        except (asyncio.LimitOverrunError, asyncio.IncompleteReadError, ValueError):
            resp = _text(400, "malformed request")
        except ConnectionError:
            writer.close()
            return
        except Exception:  # one bad request must never take the service down
            log.exception("management request from %s failed", peer_ip)
            resp = _text(500, "internal error (see the lbserver log)")
        status, ctype, body = resp
        head = (f"HTTP/1.1 {status} {REASONS.get(status, '')}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n"
                "X-Frame-Options: DENY\r\nReferrer-Policy: no-referrer\r\nConnection: close\r\n\r\n")
        try:
            writer.write(head.encode() + body)
            # A client that never reads must not hold the connection (nor a reload) open.
            await asyncio.wait_for(writer.drain(), REQUEST_TIMEOUT)
        except (ConnectionError, asyncio.TimeoutError):
            writer.transport.abort()
        finally:
            writer.close()

    async def _read_and_route(self, reader: asyncio.StreamReader, peer: str) -> Response:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            return _text(400, "malformed request line")
        method, target = parts[0], parts[1]
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                name, sep, value = line.partition(":")
                if not sep:
                    return _text(400, "malformed header")
                headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0") or 0)
        if length < 0:
            return _text(400, "bad Content-Length")
        if length > MAX_BODY:
            return _text(413, "request body too large")
        if length:
            await reader.readexactly(length)
        url = urllib.parse.urlsplit(target)
        return await self.route(method, url.path, urllib.parse.parse_qs(url.query), headers, peer)

    async def route(self, method: str, path: str, query: dict, headers: dict[str, str], peer: str) -> Response:
        """Dispatch one request; returns (status, content type, body)."""
        if not host_allowed(peer, headers):
            return _text(403, "this service answers requests addressed to localhost or a loopback address")
        if method == "GET":
            handler = self.GET_ROUTES.get(path)
            if handler is None:
                return _text(404, f"no such page: {path}")
            return handler(self, query)
        if method != "POST":
            return _text(405, "only GET and POST are served")
        if not self._authorised(headers, peer):
            log.warning("refused admin request %s from %s (not loopback, no valid token)", path, peer)
            return _text(403, "admin actions are allowed from loopback, or with the token of token-file "
                              "(Authorization: Bearer TOKEN; lbctl reads it from LBCTL_TOKEN)")
        segments = [s for s in path.split("/") if s]
        if segments == ["reload"]:
            return await self._reload()
        if len(segments) == 3 and segments[0] == "nodes" and segments[2] in ("drain", "enable"):
            return self._set_drain(urllib.parse.unquote(segments[1]), segments[2] == "drain")
        return _text(404, f"no such action: {path}")

    def _authorised(self, headers: dict[str, str], peer: str) -> bool:
        # The token file is read only when needed, so loopback admin works without one
        # and a new token takes effect without a restart.
        return admin_allowed(peer, headers, None if loopback_allowed(peer, headers)
                             else self._token.get(self.bal.config.token_file))

    # -- GET --------------------------------------------------------------

    def _status(self, query: dict) -> Response:
        return _json(200, build_status(self.bal))

    def _metrics(self, query: dict) -> Response:
        from lbserver.metrics import render_metrics  # noqa: PLC0415

        return 200, "text/plain; version=0.0.4; charset=utf-8", render_metrics(self.bal)

    def _dashboard(self, query: dict) -> Response:
        from lbserver.dashboard import render_dashboard  # noqa: PLC0415

        return 200, "text/html; charset=utf-8", render_dashboard(self.bal)

    def _history(self, query: dict) -> Response:
        since = None
        if "since" in query:
            try:
                since = float(query["since"][0])
            except ValueError:
                return _text(400, "since must be a number (seconds since the epoch)")
        return _json(200, self.bal.history.to_dict(since))

    GET_ROUTES: dict[str, Callable[["ManagementService", dict], Response]] = {
        "/status": _status,
        "/history": _history,
        "/metrics": _metrics,
        "/": _dashboard,
    }

    # -- POST -------------------------------------------------------------

    def _set_drain(self, node: str, drained: bool) -> Response:
        if node not in self.bal.config.nodes:
            return _text(404, f"no such node: {node}")
        changed = self.bal.drain.set(node, drained)
        if changed:
            self.bal.install_snapshot()
            log.info("node %s %s by admin", node, "drained" if drained else "enabled")
        word = "drained" if drained else "enabled"
        return _json(200, {"node": node, "drained": drained,
                           "message": f"node {node} {word}" + ("" if changed else " (no change)")})

    async def _reload(self) -> Response:
        path = self.bal.config.path
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, configmod.load, path)
        except ConfigError as exc:
            return _text(400, f"reload refused, configuration kept: {exc}")
        # The runtime's signal loop is the one place that reloads (as for SIGHUP).
        os.kill(os.getpid(), signal.SIGHUP)
        return _json(202, {"message": f"reloading {path}"})

