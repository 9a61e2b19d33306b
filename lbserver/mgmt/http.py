"""The management service's HTTP adapter: parse, authorise, route, and turn API results into responses.

Low traffic, so it reads requests with asyncio streams and answers one
request per connection, each bounded as a whole by a timeout. Routing comes
from :mod:`lbserver.mgmt.routes`, authorisation from :mod:`lbserver.mgmt.auth`,
and the answers from :class:`~lbserver.mgmt.api.Api`, which knows nothing of
HTTP. Runs on the daemon's loop thread, except the rendering of reads
(``/status``, ``/metrics``, the dashboard, ``/history``): they are rendered
from a copy taken on the loop (:mod:`lbserver.mgmt.frozen`) on a worker
thread of the loop's default executor.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import urllib.parse

from lbserver.mgmt import routes
from lbserver.mgmt.api import FORBIDDEN, HTTP_STATUS, INTERNAL, METHOD_NOT_ALLOWED, NOT_FOUND, TOO_LARGE, Api, ApiError
from lbserver.mgmt.auth import TokenFile, admin_allowed, host_allowed, loopback_allowed

log = logging.getLogger("lbserver.mgmt")

MAX_HEAD = 16384
MAX_BODY = 65536
REQUEST_TIMEOUT = 10.0
REASONS = {200: "OK", 202: "Accepted", 400: "Bad Request", 403: "Forbidden", 404: "Not Found",
           405: "Method Not Allowed", 413: "Payload Too Large", 500: "Internal Server Error"}
CONTENT_TYPES = {"metrics": "text/plain; version=0.0.4; charset=utf-8", "dashboard": "text/html; charset=utf-8"}

Response = tuple[int, str, bytes]


def _json(status: int, doc: object) -> Response:
    return status, "application/json", (_dumps(doc) + "\n").encode()


def _dumps(doc: object) -> str:
    """``doc`` as JSON, an object's members one per line and those of an object member one per line too.

    Each line is written by the json module's C encoder: ``/status`` of ten
    thousand nodes takes a quarter of the time an indenting (pure Python)
    encoder takes, and the interpreter is let go between two lines, where
    one call for the whole document would hold it throughout.
    """
    if not isinstance(doc, dict) or not doc:
        return json.dumps(doc)
    lines = []
    for key, value in doc.items():
        if isinstance(value, dict) and value:
            inner = ",\n".join(f"  {json.dumps(str(k))}: {json.dumps(v)}" for k, v in value.items())
            lines.append(f" {json.dumps(str(key))}: {{\n{inner}\n }}")
        else:
            lines.append(f" {json.dumps(str(key))}: {json.dumps(value)}")
    return "{\n" + ",\n".join(lines) + "\n}"


def _text(status: int, message: str) -> Response:
    return status, "text/plain; charset=utf-8", (message + "\n").encode()


def _error(exc: ApiError) -> Response:
    # Plain text: lbctl and curl users read the message as is.
    return _text(HTTP_STATUS.get(exc.code, 500), exc.message)


def _read(api: Api, route: routes.Route, params: dict, query: dict) -> Response:
    """One GET route's response, rendered from ``api`` (a frozen copy: safe on any thread)."""
    if route.action == "history":
        result = api.history(query["since"][0] if "since" in query else None)
    else:
        result = getattr(api, route.action)(**params)
    if isinstance(result, bytes):
        return route.ok, CONTENT_TYPES[route.action], result
    return _json(route.ok, result)


class ManagementService:
    """Serves an :class:`~lbserver.mgmt.api.Api` over HTTP on a listening socket."""

    def __init__(self, api: Api) -> None:
        self.api = api
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
            resp = _error(ApiError(INTERNAL, "internal error (see the lbserver log)"))
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
            return _error(ApiError(TOO_LARGE, "request body too large"))
        if length:
            await reader.readexactly(length)
        url = urllib.parse.urlsplit(target)
        return await self.route(method, url.path, urllib.parse.parse_qs(url.query), headers, peer)

    async def route(self, method: str, path: str, query: dict, headers: dict[str, str], peer: str) -> Response:
        """Dispatch one request; returns (status, content type, body)."""
        try:
            return await self._dispatch(method, path, query, headers, peer)
        except ApiError as exc:
            return _error(exc)

    async def _dispatch(self, method: str, path: str, query: dict, headers: dict[str, str], peer: str) -> Response:
        if not host_allowed(peer, headers):
            raise ApiError(FORBIDDEN, "this service answers requests addressed to localhost or a loopback address")
        if method not in ("GET", "POST"):
            raise ApiError(METHOD_NOT_ALLOWED, "only GET and POST are served")
        route, params, known = routes.resolve(method, path)
        if route is None:
            if known:
                raise ApiError(METHOD_NOT_ALLOWED, f"{path} does not take {method}")
            raise ApiError(NOT_FOUND, f"no such {'page' if method == 'GET' else 'action'}: {path}")
        if route.admin and not self._authorised(headers, peer):
            log.warning("refused admin request %s from %s (not loopback, no valid token)", path, peer)
            raise ApiError(FORBIDDEN, "admin actions are allowed from loopback, or with the token of token-file "
                                      "(Authorization: Bearer TOKEN; lbctl reads it from LBCTL_TOKEN)")
        if method == "GET":
            # A read renders a copy on a worker thread: at ten thousand nodes
            # it is seconds of work the terminals must not wait for.
            reader = self.api.frozen()
            return await asyncio.get_running_loop().run_in_executor(None, _read, reader, route, params, query)
        if route.action == "reload":
            result = await self.api.reload()
        else:
            result = getattr(self.api, route.action)(**params)
        return _json(route.ok, result)

    def _authorised(self, headers: dict[str, str], peer: str) -> bool:
        # The token file is read only when needed, so loopback admin works without one
        # and a new token takes effect without a restart.
        return admin_allowed(peer, headers, None if loopback_allowed(peer, headers)
                             else self._token.get(self.api.view.config.token_file))


__all__ = ["ManagementService", "Response"]
