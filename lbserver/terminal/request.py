"""HTTP/1.0 and HTTP/1.1 request parsing for the terminal service (pure, no I/O).

The terminal service only needs the request line and the few headers that
frame the connection (Connection, Content-Length, Transfer-Encoding), so this
is a small, strict parser working on bytes:

* :func:`find_head_end` finds where one request head ends in a receive
  buffer (CRLF or bare LF line endings, leading empty lines skipped);
* :func:`parse_head` turns one head into a :class:`Request` or raises
  :class:`HttpError` carrying the status to answer (400, 411, 431, 501, 505);
* :func:`parse_query` extracts ``group``, ``user`` and ``format`` from the
  query string (:func:`decode_query` the first two), and :func:`wants_json`
  judges the format.

Everything is built for the hot path: one ``bytes.find`` per request to frame
it, one regular expression for the request line, and header names only
lower-cased when they could be one of the three that matter.
"""

from __future__ import annotations

import re
from typing import NamedTuple
from urllib.parse import unquote_to_bytes

MAX_HEAD = 8192
"""Largest request line plus headers accepted, in bytes (431 beyond)."""

MAX_BODY = 16384
"""Largest request body accepted (and discarded), in bytes (413 beyond)."""

# method SP request-target SP HTTP/x.y -- the target is visible ASCII only.
_REQUEST_LINE = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+) ([\x21-\x7e]+) HTTP/([0-9])\.([0-9])")
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_BAD_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")
_DIGITS = re.compile(rb"[0-9]{1,18}")
# Header names whose first letter could start one we act on (c, t: cheap prefilter).
_INTERESTING_FIRST = frozenset(b"CcTt")


class HttpError(Exception):
    """A request that cannot be served; ``status`` is the response code to send.

    The connection is always closed after answering one of these: once framing
    is in doubt, nothing later on the same connection can be trusted.
    """

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class Request(NamedTuple):
    """One parsed request head."""

    method: bytes
    """As sent (methods are case-sensitive), e.g. ``b"GET"``."""
    path: bytes
    """Path part of the target, still percent-encoded, e.g. ``b"/"``."""
    query: bytes
    """Query string without the ``?`` (``b""`` when absent)."""
    minor: int
    """HTTP/1.minor: 0 or 1."""
    keep_alive: bool
    """Whether the connection stays open after the response."""
    content_length: int
    """Body bytes following the head (to be read and discarded)."""


def find_head_end(buf: bytes, start: int = 0) -> tuple[int, int]:
    """Locate the request head beginning at or after ``start`` in ``buf``.

    Returns ``(head_start, head_end)``: the head is ``buf[head_start:head_end]``
    and includes the empty line that ends it. Empty lines before a request
    line are skipped (RFC 9112 section 2.2 asks servers to tolerate them).
    ``head_end`` is -1 when the head is not complete yet; ``head_start`` then
    tells where the incomplete head begins (bytes before it may be dropped).
    """
    n = len(buf)
    while start < n:
        c = buf[start]
        if c == 10:  # "\n"
            start += 1
        elif c == 13 and buf[start + 1:start + 2] in (b"\n", b""):
            if start + 1 == n:  # a lone CR so far: wait for what follows
                return start, -1
            start += 2
        else:
            break
    crlf = buf.find(b"\n\r\n", start)
    # A bare-LF blank line can only matter if it comes before the CRLF one.
    lf = buf.find(b"\n\n", start, crlf + 2 if crlf >= 0 else n)
    if lf >= 0 and (crlf < 0 or lf < crlf):
        return start, lf + 2
    if crlf >= 0:
        return start, crlf + 3
    return start, -1


def parse_head(head: bytes) -> Request:
    """Parse one complete request head (as delimited by :func:`find_head_end`).

    Accepts CRLF or bare LF line endings and obsolete header folding
    (continuation lines are joined with a space, RFC 9112 section 5.2).
    Raises :class:`HttpError` with the status to answer for anything else
    malformed.
    """
    if len(head) > MAX_HEAD:
        raise HttpError(431, "request head too large")
    text = head.replace(b"\r\n", b"\n")
    if b"\r" in text or b"\x00" in text:
        raise HttpError(400, "stray CR or NUL in request head")
    lines = text.split(b"\n")
    m = _REQUEST_LINE.fullmatch(lines[0])
    if m is None:
        raise HttpError(400, "malformed request line")
    method, target, major, minor_b = m.groups()
    if major != b"1":
        raise HttpError(505, "HTTP version not supported")
    minor = 0 if minor_b == b"0" else 1  # HTTP/1.2+ are read as 1.1 (RFC 9110 section 6.2)

    connection = b""
    content_length = -1
    chunked = False
    last_name = b""
    # lines[-2:] are the two empties produced by the final blank line
    for line in lines[1:-2]:
        first = line[0]
        if first == 32 or first == 9:  # obs-fold: continuation of the previous header
            if not last_name:
                raise HttpError(400, "header continuation without a header")
            if last_name == b"connection":
                connection += b"," + line.strip(b" \t")  # a fold separates tokens
            elif last_name in (b"content-length", b"transfer-encoding"):
                # framing headers folded over lines are a smuggling vector
                raise HttpError(400, "folded framing header")
            continue
        name, sep, value = line.partition(b":")
        if not sep or _TOKEN.fullmatch(name) is None:
            raise HttpError(400, "malformed header line")
        if first not in _INTERESTING_FIRST:
            last_name = b"other"
            continue
        last_name = name = name.lower()
        if name == b"connection":
            connection += b"," + value
        elif name == b"content-length":
            value = value.strip(b" \t")  # optional white space is SP and HTAB only
            if _DIGITS.fullmatch(value) is None:
                raise HttpError(400, "invalid Content-Length")
            length = int(value)
            if content_length >= 0 and length != content_length:
                raise HttpError(400, "conflicting Content-Length headers")
            content_length = length
        elif name == b"transfer-encoding":
            chunked = True

    if chunked:
        # Bodies are never needed here; refusing chunked keeps framing trivial.
        raise HttpError(411, "chunked request bodies are not accepted")
    if content_length > MAX_BODY:
        raise HttpError(413, "request body too large")

    if connection:
        tokens = connection.lower().replace(b" ", b"").replace(b"\t", b"").split(b",")
        if b"close" in tokens:
            keep_alive = False
        else:
            keep_alive = minor == 1 or b"keep-alive" in tokens
    else:
        keep_alive = minor == 1

    path, _, query = target.partition(b"?")
    if path[:1] != b"/":
        path = _origin_path(path)
    return Request(method, path, query, minor, keep_alive, content_length if content_length > 0 else 0)


def _origin_path(target: bytes) -> bytes:
    """The path of an absolute-form target (``http://host/path``); servers must accept it."""
    lower = target.lower()
    for scheme in (b"http://", b"https://"):
        if lower.startswith(scheme):
            slash = target.find(b"/", len(scheme))
            return target[slash:] if slash >= 0 else b"/"
    return target  # "*" or garbage: never matches a served path, so 404


def decode_query(query: bytes) -> tuple[str | None, str | None]:
    """Return ``(group, user)`` from a query string; absent or empty values are None.

    ``+`` means a space and ``%XX`` escapes are decoded as UTF-8, as produced by
    HTML forms and ``urllib.parse.urlencode``. Other parameters are ignored;
    when one is repeated, the last wins. Raises :class:`HttpError` (400) for a
    broken escape, invalid UTF-8 or control characters in a value.
    """
    return parse_query(query)[:2]


def parse_query(query: bytes) -> tuple[str | None, str | None, str | None]:
    """Return ``(group, user, format)`` from a query string, decoded as :func:`decode_query` says.

    One pass over the parameters, so the plain answer pays nothing for the
    ``format`` it does not give.
    """
    group = user = fmt = None
    for pair in query.split(b"&"):
        key, _, value = pair.partition(b"=")
        if key == b"group":
            group = _decode_value(value)
        elif key == b"user":
            user = _decode_value(value)
        elif key == b"format":
            fmt = _decode_value(value)
    return group, user, fmt


def wants_json(fmt: str | None) -> bool:
    """Whether a ``format`` value asks for the JSON answer: ``json``; ``text`` or none: plain text.

    Any other value raises :class:`HttpError` (400).
    """
    if fmt is None or fmt == "text":
        return False
    if fmt == "json":
        return True
    raise HttpError(400, "unknown format (json or text)")


def _decode_value(raw: bytes) -> str | None:
    if b"%" in raw:
        if _BAD_ESCAPE.search(raw):
            raise HttpError(400, "invalid percent-escape in query")
        raw = unquote_to_bytes(raw.replace(b"+", b" "))
    elif b"+" in raw:
        raw = raw.replace(b"+", b" ")
    try:
        value = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise HttpError(400, "query value is not UTF-8") from None
    if not value.isprintable():
        raise HttpError(400, "control character in query value")
    return value or None


__all__ = ["HttpError", "MAX_BODY", "MAX_HEAD", "Request", "decode_query", "find_head_end", "parse_head",
           "parse_query", "wants_json"]
