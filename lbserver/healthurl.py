"""Submission-test result pages (an alias's ``health-url``).

A page lists one result per line, as the WMS arbiter's submission tests
publish them::

    TIMESTAMP ERRORFLAG HOSTNAME

``TIMESTAMP`` is Unix time in seconds (``1718000000``) or ISO 8601
(``2024-06-10T08:00:00``, local time unless it carries ``Z`` or an offset);
``ERRORFLAG`` 0 means the test passed, any other number that it failed.
Blank lines and lines starting with ``#`` are ignored; the newest result of
each host counts; results older than the alias's ``health-max-age`` are
ignored.

:func:`parse_page` and :func:`match_nodes` are pure; :func:`fetch` reads the
page (http, https or file URLs) with a timeout and a size bound.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import http.client
import math
import socket
import ssl
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

MAX_PAGE_BYTES = 1024 * 1024
SCHEMES = ("http", "https", "file")


class HealthFetchError(Exception):
    """The page could not be read; the message names the URL and the cause."""


@dataclass(frozen=True)
class HealthResult:
    """One host's newest submission-test result."""

    host: str
    ok: bool
    timestamp: float
    flag: int
    line: int


@dataclass(frozen=True)
class HealthPage:
    """A parsed page: results by lower-case host name, and what was wrong with it."""

    results: Mapping[str, HealthResult]
    problems: tuple[str, ...] = ()
    stale: tuple[str, ...] = ()


def parse_timestamp(text: str) -> float:
    """Unix seconds or ISO 8601 -> Unix seconds; ValueError otherwise."""
    try:
        value = float(text)
    except ValueError:
        iso = text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text
        when = _dt.datetime.fromisoformat(iso)
        return when.timestamp()  # naive -> local time, as a cron job's `date` writes it
    if not math.isfinite(value):
        raise ValueError("not a finite number")
    return value


def _host_key(host: str) -> str:
    return host.strip().rstrip(".").lower()


def parse_page(text: str, now: float, max_age: float) -> HealthPage:
    """Parse a page's text; unparsable lines become ``problems`` (with line numbers), never exceptions."""
    results: dict[str, HealthResult] = {}
    problems: list[str] = []
    stale: dict[str, float] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        if len(fields) != 3:
            problems.append(f"line {lineno}: expected 'TIMESTAMP ERRORFLAG HOSTNAME', got {len(fields)} fields")
            continue
        ts_s, flag_s, host = fields
        try:
            ts = parse_timestamp(ts_s)
        except ValueError:
            problems.append(f"line {lineno}: bad timestamp {ts_s[:40]!r}")
            continue
        try:
            flag = int(flag_s)
        except ValueError:
            problems.append(f"line {lineno}: bad ERRORFLAG {flag_s[:40]!r} (expected 0 for passed, a number for failed)")
            continue
        key = _host_key(host)
        if now - ts > max_age:
            stale[key] = max(stale.get(key, 0.0), now - ts)
            continue
        prev = results.get(key)
        # Newest wins; on equal timestamps the later line does (appended logs).
        if prev is None or ts >= prev.timestamp:
            results[key] = HealthResult(host=key, ok=flag == 0, timestamp=ts, flag=flag, line=lineno)
    stale_notes = tuple(f"{h}: newest result is {age:.0f} s old (limit {max_age:g} s), ignored"
                        for h, age in sorted(stale.items()) if h not in results)
    return HealthPage(results=results, problems=tuple(problems), stale=stale_notes)


def _first_label(name: str) -> str:
    return name.split(".", 1)[0]


def match_nodes(page: HealthPage, nodes: Iterable[tuple[str, str]]) -> dict[str, HealthResult]:
    """Map node names to their result.

    ``nodes`` gives ``(node name, address host)`` pairs. A page HOSTNAME
    matches a node whose name or address host equals it (case-insensitive,
    trailing dot ignored); failing that, whose name's or host's first label
    equals the HOSTNAME's first label, when exactly one node does (so
    ``wms01.example.org`` matches node ``wms01``, and ``wms01`` matches
    ``http://wms01.example.org:8001``).
    """
    node_list = [(name, {_host_key(name), _host_key(host)}) for name, host in nodes]
    out: dict[str, HealthResult] = {}
    exact_taken: set[str] = set()
    for key, res in page.results.items():
        for name, keys in node_list:
            if key in keys:
                out[name] = res
                exact_taken.add(name)
    for key, res in page.results.items():
        if any(key in keys for _, keys in node_list):
            continue
        label = _first_label(key)
        hits = [name for name, keys in node_list if label in {_first_label(k) for k in keys}]
        if len(hits) == 1 and hits[0] not in exact_taken:
            prev = out.get(hits[0])
            if prev is None or res.timestamp >= prev.timestamp:
                out[hits[0]] = res
    return out


class _Watchdog:
    """Cuts every connection an opener made once ``timeout`` has passed.

    ``urlopen``'s timeout bounds each socket operation, not the exchange: a
    server dripping its status line, headers or body one byte at a time could
    hold the DNS cycle for ever. Shutting the sockets down ends any read.
    """

    def __init__(self, timeout: float) -> None:
        self.expired = False
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(timeout, self._expire)
        self._timer.daemon = True

    def opener(self) -> urllib.request.OpenerDirector:
        """An opener whose connections this watchdog can cut."""
        watch = self

        class Http(urllib.request.HTTPHandler):
            def http_open(self, req):
                return self.do_open(watch.track(http.client.HTTPConnection), req)

        class Https(urllib.request.HTTPSHandler):
            def https_open(self, req):
                return self.do_open(watch.track(http.client.HTTPSConnection), req,
                                    context=ssl.create_default_context())

        return urllib.request.build_opener(Http, Https)

    def track(self, cls: type) -> Callable[..., http.client.HTTPConnection]:
        """A factory of ``cls`` connections whose sockets are recorded as they connect."""
        def make(host: str, **kw) -> http.client.HTTPConnection:
            conn = cls(host, **kw)
            connect = conn.connect

            def recorded_connect() -> None:
                connect()
                # Kept here: the connection forgets its socket once the response owns it.
                with self._lock:
                    self._socks.append(conn.sock)
                    if self.expired:
                        conn.sock.shutdown(socket.SHUT_RDWR)

            conn.connect = recorded_connect
            return conn
        return make

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._socks:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> "_Watchdog":
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()


def _read_http(url: str, timeout: float, max_bytes: int) -> bytes:
    req = urllib.request.Request(url, headers={"User-Agent": "lbserver-dns-arbiter"})
    with _Watchdog(timeout) as watch:
        try:
            with watch.opener().open(req, timeout=timeout) as resp:
                data = resp.read(max_bytes + 1)
        except (OSError, http.client.HTTPException):
            if watch.expired:
                raise TimeoutError from None
            raise
    if watch.expired:  # cut short: what was read is not the whole page
        raise TimeoutError
    return data


def fetch(url: str, timeout: float, max_bytes: int = MAX_PAGE_BYTES) -> str:
    """Read a page (http, https or file URL) within ``timeout`` seconds in all.

    Raises :class:`HealthFetchError` naming the URL and the cause.
    """
    try:
        scheme = urllib.parse.urlsplit(url).scheme.lower()
    except ValueError:  # "http://[bad"
        raise HealthFetchError(f"{url}: not a valid URL") from None
    if scheme not in SCHEMES:
        raise HealthFetchError(f"{url}: unsupported URL scheme {scheme!r} (use http, https or file)")
    try:
        if scheme == "file":
            path = urllib.request.url2pathname(urllib.parse.urlsplit(url).path)
            with open(path, "rb") as fh:
                data = fh.read(max_bytes + 1)
        else:
            data = _read_http(url, timeout, max_bytes)
    except urllib.error.HTTPError as exc:
        raise HealthFetchError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except TimeoutError:
        raise HealthFetchError(f"{url}: no complete answer within {timeout:g} s") from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, TimeoutError):
            raise HealthFetchError(f"{url}: no complete answer within {timeout:g} s") from None
        raise HealthFetchError(f"{url}: {getattr(reason, 'strerror', None) or reason}") from None
    except OSError as exc:
        raise HealthFetchError(f"{url}: {exc.strerror or exc}") from None
    except http.client.HTTPException as exc:
        raise HealthFetchError(f"{url}: bad HTTP answer ({type(exc).__name__})") from None
    except ValueError as exc:  # malformed URL (bad port etc.)
        raise HealthFetchError(f"{url}: {exc}") from None
    if len(data) > max_bytes:
        raise HealthFetchError(f"{url}: page is larger than {max_bytes} bytes")
    return data.decode("utf-8", errors="replace")
