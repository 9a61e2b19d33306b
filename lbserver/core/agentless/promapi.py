"""A Prometheus server's HTTP API, as the balancer uses it: bounded instant queries.

One query is one HTTP/1.0 GET of ``/api/v1/query`` through the agents'
exchange (:func:`lbserver.core.poller.exchange`): the whole of it within the
poll timeout, the answer within a byte bound, and at most ``max_series``
series kept. The bearer token or Basic credentials, when the group has them, go
in the ``Authorization`` header and nowhere else (never in a message or a log).
Errors are :class:`~lbserver.core.poller.PollError` in words for the status
page, naming the server and, for a query Prometheus refused, its own error.
Runs on the balancer's loop thread.
"""

from __future__ import annotations

import base64
import functools
import json
import math
import re
import ssl
import urllib.parse
from dataclasses import dataclass, field
from typing import NamedTuple

from common.tls import client_context
from lbserver.core.poller import PollError, exchange

SERVER = "Prometheus"


class Sample(NamedTuple):
    """One series of an instant vector: its labels (as sent: check a value's type before use), value, and the
    evaluation time Prometheus answered for. A tuple: ten thousand nodes make hundreds of thousands a poll."""

    labels: dict
    value: float
    at: float


@dataclass(frozen=True)
class Server:
    """Where a group's Prometheus is (its base URL) and its credentials.

    ``token`` is a bearer token, or with ``user`` the password of HTTP Basic
    authentication (None: none). Neither is ever part of a message.
    """

    url: str
    token: str | None = field(default=None, repr=False)
    user: str | None = None

    def request(self, query: str) -> tuple[str, int, bytes]:
        """(host, port, the whole GET) asking ``query`` as an instant query."""
        parts = urllib.parse.urlsplit(self.url)
        host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
        path = parts.path.rstrip("/") + "/api/v1/query?" + urllib.parse.urlencode({"query": query})
        auth = ""
        if self.token and self.user:
            auth = f"Authorization: Basic {base64.b64encode(f'{self.user}:{self.token}'.encode()).decode()}\r\n"
        elif self.token:
            auth = f"Authorization: Bearer {self.token}\r\n"
        shown = f"[{host}]" if ":" in host else host
        return host, port, (f"GET {path} HTTP/1.0\r\nHost: {shown}:{port}\r\nUser-Agent: lbserver\r\n"
                            f"Accept: application/json\r\n{auth}\r\n").encode()


@functools.lru_cache(maxsize=1)
def _system_context() -> ssl.SSLContext:
    return client_context(None)


def _api_error(status: bytes, body: bytes) -> str:
    try:
        doc = json.loads(body)
        said = f"{doc.get('errorType', '')}: {doc.get('error', '')}"[:300]
    except (ValueError, AttributeError):
        said = body[:120].decode("utf-8", "replace")
    hint = " (check token-file)" if status in (b"401", b"403") else ""
    return f"HTTP {status.decode('latin-1')[:3]}{hint}: {said}"


# The answer to a query aggregated ``by (instance)``, byte for byte as Prometheus writes it: the fast path.
_PLAIN_HEAD = '{"status":"success","data":{"resultType":"vector","result":['
_PLAIN_TAIL = "]}}"
_PLAIN_SERIES = re.compile(r'\{"metric":\{"instance":"([^"\\\x00-\x1f]*)"\},"value":\[([-+0-9.eE]+),"([-+0-9.eEInfNa]+)"\]\}(,?)')


def plain_by_instance(body: bytes, max_series: int) -> tuple[dict[str, float], float] | None:
    """({instance: value}, evaluation time) of an answer whose every series has the one label ``instance``.

    None for any other answer. Such answers (every built-in's: at ten
    thousand nodes a megabyte each) are read by one regular expression
    instead of a JSON tree, straight into what the group needs: a fifth of
    the time, the same values. Anything else (another label, an escape, an
    instance twice, evaluation times that differ, a warning, an error, a
    surprise) is for :func:`json.loads` to judge (:func:`parse_vector`).
    """
    try:
        text = body.decode()
    except UnicodeDecodeError:
        return None
    if not text.startswith(_PLAIN_HEAD) or not text.endswith(_PLAIN_TAIL):
        return None
    end = len(text) - len(_PLAIN_TAIL)
    pos, values, comma, first = len(_PLAIN_HEAD), {}, ",", None
    try:
        for m in _PLAIN_SERIES.finditer(text, pos, end):
            instance, at, value, following = m.groups()
            if m.start() != pos or not comma or instance in values or (at != first and first is not None):
                return None
            values[instance] = float(value)
            first, comma, pos = at, following, m.end()
        at = float(first) if first is not None else 0.0
    except ValueError:
        return None
    if pos != end or (values and comma) or not math.isfinite(at):
        return None
    if len(values) > max_series:
        raise PollError(f"the query gives {len(values)} series (more than {max_series}: see max-series)")
    return values, at


def parse_vector(body: bytes, max_series: int) -> list[Sample]:
    """The instant vector of a query's JSON answer; raises :class:`PollError` for anything else.

    More than ``max_series`` series is an error, not a silent cut: a group
    whose nodes were dropped would look smaller than it is.
    """
    plain = plain_by_instance(body, max_series)
    if plain is not None:
        values, at = plain
        return [Sample({"instance": instance}, value, at) for instance, value in values.items()]
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        raise PollError("answer is not JSON") from None
    if not isinstance(doc, dict) or doc.get("status") != "success" or not isinstance(doc.get("data"), dict):
        error = doc.get("error") if isinstance(doc, dict) else None
        raise PollError(f"query failed: {str(error)[:300]}" if error else "answer is not a query result")
    data = doc["data"]
    if data.get("resultType") != "vector" or not isinstance(data.get("result"), list):
        raise PollError(f"the query gives a {data.get('resultType')!s:.20}, not an instant vector")
    result = data["result"]
    if len(result) > max_series:
        raise PollError(f"the query gives {len(result)} series (more than {max_series}: see max-series)")
    out: list[Sample] = []
    append = out.append  # one loop, no more: at ten thousand nodes it runs 200,000 times a poll
    try:
        for entry in result:
            at, text = entry["value"]
            labels = entry["metric"]
            if type(labels) is not dict:
                raise TypeError
            append(Sample(labels, float(text), float(at)))
    except (TypeError, KeyError, ValueError):
        raise PollError("a series of the answer is malformed") from None
    if not all(map(math.isfinite, (s.at for s in out))):
        raise PollError("a series of the answer is malformed")
    return out


async def answer(server: Server, promql: str, timeout: float, max_bytes: int) -> bytes:
    """The body of Prometheus's answer to ``promql`` as an instant query, HTTP checked (JSON not read yet)."""
    host, port, request = server.request(promql)
    ssl_ctx = _system_context() if server.url.lower().startswith("https:") else None
    raw = await exchange(host, port, request, timeout, max_bytes, ssl_ctx, server=SERVER)
    head, sep, body = raw.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].split()
    if not sep or len(status) < 2 or not status[0].startswith(b"HTTP/"):
        raise PollError("answer is not HTTP")
    if status[1] != b"200":
        raise PollError(_api_error(status[1], body))
    return body


async def query(server: Server, promql: str, timeout: float, max_bytes: int, max_series: int) -> list[Sample]:
    """Ask ``promql`` as an instant query; raises :class:`PollError` saying what went wrong."""
    return parse_vector(await answer(server, promql, timeout, max_bytes), max_series)


__all__ = ["SERVER", "Sample", "Server", "answer", "parse_vector", "plain_by_instance", "query"]
