"""Submission-test result pages (an alias's ``health-url``).

A page lists one result per line, as the WMS arbiter's submission tests
publish them::

    TIMESTAMP ERRORFLAG HOSTNAME

``TIMESTAMP`` is Unix time in seconds (``1718000000``) or ISO 8601
(``2024-06-10T08:00:00``, local time unless it carries ``Z`` or an offset);
``ERRORFLAG`` 0 means the test passed, any other number that it failed.
Blank lines and lines starting with ``#`` are ignored; the newest result of
each host counts; results older than the alias's ``health-max-age`` are
ignored, and results dated more than :data:`MAX_CLOCK_SKEW` seconds in the
future are problem lines (a bogus date must not win "newest" for ever).

:func:`parse_page` and :func:`match_nodes` are pure; :func:`fetch` reads the
page (http, https or file URLs) with a timeout and a size bound.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import http.client
import ipaddress
import math
import socket
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from lbserver.config.settings import HEALTH_URL_SCHEMES as SCHEMES

MAX_PAGE_BYTES = 1024 * 1024
#: How far in the future a result may be dated (clocks of the test host and ours differ a little).
MAX_CLOCK_SKEW = 300.0


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
    """A parsed page: results by lower-case host name, and what was wrong with it.

    ``stale`` maps hosts whose every result is older than the page's
    ``max-age`` to the age in seconds of their newest one.
    """

    results: Mapping[str, HealthResult]
    problems: tuple[str, ...] = ()
    stale: Mapping[str, float] = field(default_factory=dict)


def parse_timestamp(text: str) -> float:
    """Unix seconds or ISO 8601 -> Unix seconds; ValueError otherwise."""
    try:
        value = float(text)
    except ValueError:
        iso = text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text
        when = _dt.datetime.fromisoformat(iso)
        try:
            return when.timestamp()  # naive -> local time, as a cron job's `date` writes it
        except (OverflowError, OSError):  # year 1 or 9999 in some time zones
            raise ValueError("date out of range") from None
    if not math.isfinite(value):
        raise ValueError("not a finite number")
    return value


def format_time(ts: float) -> str:
    """``YYYY-MM-DD HH:MM:SS`` local time; never raises (odd values are shown as numbers)."""
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))
    except (OverflowError, OSError, ValueError):
        return f"{ts:g} (Unix time)"


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
        if ts > now + MAX_CLOCK_SKEW:
            ahead = f"{ts - now:.0f} s" if ts - now < 1e9 else "decades"
            problems.append(f"line {lineno}: timestamp {ts_s[:40]!r} is {ahead} in the future "
                            "(check the clock of the host writing the page), ignored")
            continue
        key = _host_key(host)
        if now - ts > max_age:
            stale[key] = min(stale.get(key, math.inf), now - ts)  # the newest one's age
            continue
        prev = results.get(key)
        # Newest wins; on equal timestamps the later line does (appended logs).
        if prev is None or ts >= prev.timestamp:
            results[key] = HealthResult(host=key, ok=flag == 0, timestamp=ts, flag=flag, line=lineno)
    return HealthPage(results=results, problems=tuple(problems),
                      stale={h: age for h, age in sorted(stale.items()) if h not in results})


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name.strip("[]"))
        return True
    except ValueError:
        return False


def _short_match(page_host: str, node_key: str) -> bool:
    """A short name (one label) matches a full name whose first label it is; never IP literals."""
    if not page_host or not node_key or _is_ip(page_host) or _is_ip(node_key):
        return False
    if "." not in page_host:
        return node_key.split(".", 1)[0] == page_host
    return "." not in node_key and page_host.split(".", 1)[0] == node_key


def match_hosts(hosts: Iterable[str], nodes: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    """Map node names to the page host names (lower case, as in ``results``) that name them.

    ``nodes`` gives ``(node name, address host)`` pairs. A page HOSTNAME
    matches a node whose name or address host equals it (case-insensitive,
    trailing dot ignored). Failing that, a short name matches a full one
    whose first label it is, when exactly one node matches so: HOSTNAME
    ``wms01.example.org`` matches node name ``wms01``, and HOSTNAME ``wms01``
    matches a node whose name or address host is ``wms01.example.org``. Two
    full names never match on their first label alone (``wms01.a.org`` is
    not ``wms01.b.org``), and IP addresses only ever match exactly. A node
    with an exact match takes no short-name match.
    """
    node_list = [(name, {_host_key(name), _host_key(host)}) for name, host in nodes]
    exact: dict[str, list[str]] = {}
    short: dict[str, list[str]] = {}
    for key in (_host_key(h) for h in hosts):
        hits = [name for name, keys in node_list if key in keys]
        for name in hits:
            exact.setdefault(name, []).append(key)
        if hits:
            continue
        hits = [name for name, keys in node_list if any(_short_match(key, k) for k in keys)]
        if len(hits) == 1:
            short.setdefault(hits[0], []).append(key)
    return {**{n: ks for n, ks in short.items() if n not in exact}, **exact}


def match_nodes(page: HealthPage, nodes: Iterable[tuple[str, str]]) -> dict[str, HealthResult]:
    """Map node names to their newest result, matching hosts as :func:`match_hosts` does."""
    out: dict[str, HealthResult] = {}
    for name, keys in match_hosts(page.results, nodes).items():
        # Newest wins; on equal timestamps the later line does, as within one host.
        out[name] = max((page.results[k] for k in keys), key=lambda r: (r.timestamp, r.line))
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
