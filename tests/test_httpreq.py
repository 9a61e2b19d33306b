"""Unit tests of the terminal service's HTTP request parser (no sockets)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lbserver.terminal.request import MAX_BODY, MAX_HEAD, HttpError, decode_query, find_head_end, parse_head

pytestmark = pytest.mark.unit


def parse(raw: bytes):
    start, end = find_head_end(raw)
    assert end > 0, "head not complete"
    return parse_head(raw[start:end])


def status_of(raw: bytes) -> int:
    with pytest.raises(HttpError) as info:
        parse(raw)
    return info.value.status


# -- framing -----------------------------------------------------------------

def test_find_head_end_crlf_and_pipelined():
    raw = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\n\r\n"
    start, end = find_head_end(raw)
    assert (start, raw[start:end]) == (0, b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
    start2, end2 = find_head_end(raw, end)
    assert raw[start2:end2] == b"GET /b HTTP/1.1\r\n\r\n" and end2 == len(raw)


def test_find_head_end_incomplete():
    assert find_head_end(b"GET / HTTP/1.1\r\nHost: x\r\n")[1] == -1
    assert find_head_end(b"")[1] == -1
    assert find_head_end(b"GET / HTTP/1.1\r\n\r")[1] == -1


def test_find_head_end_bare_lf_and_mixed():
    raw = b"GET / HTTP/1.0\nHost: x\n\nGET /next HTTP/1.0\r\n\r\n"
    start, end = find_head_end(raw)
    assert raw[start:end] == b"GET / HTTP/1.0\nHost: x\n\n"
    raw = b"GET / HTTP/1.0\r\nHost: x\n\r\n"
    assert find_head_end(raw) == (0, len(raw))


def test_leading_empty_lines_skipped():
    raw = b"\r\n\n\r\nGET / HTTP/1.1\r\n\r\n"
    start, end = find_head_end(raw)
    assert raw[start:end] == b"GET / HTTP/1.1\r\n\r\n"
    # a lone CR at the end may be the start of a CRLF: wait
    assert find_head_end(b"\r") == (0, -1)


# -- request line and versions ---------------------------------------------

def test_simple_get_http11_keeps_alive():
    req = parse(b"GET / HTTP/1.1\r\nHost: lb\r\n\r\n")
    assert (req.method, req.path, req.query, req.minor, req.keep_alive, req.content_length) == (
        b"GET", b"/", b"", 1, True, 0)


def test_http10_closes_unless_keep_alive():
    assert parse(b"GET / HTTP/1.0\r\n\r\n").keep_alive is False
    assert parse(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive is True
    assert parse(b"GET / HTTP/1.0\r\nconnection: keep-alive, close\r\n\r\n").keep_alive is False


def test_http11_connection_close_tokens():
    assert parse(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n").keep_alive is False
    assert parse(b"GET / HTTP/1.1\r\nConnection: Upgrade, CLOSE\r\n\r\n").keep_alive is False
    assert parse(b"GET / HTTP/1.1\r\nConnection: keep-alive\r\n\r\n").keep_alive is True
    # several Connection headers are combined
    assert parse(b"GET / HTTP/1.1\r\nConnection: foo\r\nConnection: close\r\n\r\n").keep_alive is False


def test_query_split_from_path():
    req = parse(b"GET /?group=PROD&user=bob HTTP/1.1\r\n\r\n")
    assert (req.path, req.query) == (b"/", b"group=PROD&user=bob")


def test_absolute_form_target():
    assert parse(b"GET http://lb.example:8008/?group=A HTTP/1.1\r\n\r\n").path == b"/"
    assert parse(b"GET http://lb.example HTTP/1.1\r\n\r\n").path == b"/"
    assert parse(b"GET HTTPS://lb/x HTTP/1.1\r\n\r\n").path == b"/x"


def test_future_minor_version_read_as_11():
    assert parse(b"GET / HTTP/1.7\r\n\r\n").minor == 1


@pytest.mark.parametrize("raw", [
    b"junk\r\n\r\n",
    b"GET /\r\n\r\n",                      # HTTP/0.9 style
    b"GET  / HTTP/1.1\r\n\r\n",            # double space
    b"GET / HTTP/1.1 \r\n\r\n",            # trailing space
    b"GET / http/1.1\r\n\r\n",
    b"GET / HTTP/11\r\n\r\n",
    b"G(T / HTTP/1.1\r\n\r\n",             # not a token
    b"GET /\x01 HTTP/1.1\r\n\r\n",         # control character in target
    b"GET /\xc3\xa9 HTTP/1.1\r\n\r\n",      # raw non-ASCII in target
    b"GET / HTTP/1.1\r\nHost\r\n\r\n",     # header without colon
    b"GET / HTTP/1.1\r\nHo st: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost : x\r\n\r\n",  # space before colon
    b"GET / HTTP/1.1\r\n: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n",  # bare CR
    b"GET / HTTP/1.1\r\nHost: a\x00b\r\n\r\n",
    b"GET / HTTP/1.1\r\n continued: x\r\n\r\n",  # folding with nothing to continue
])
def test_malformed_is_400(raw):
    assert status_of(raw) == 400


def test_http2_or_0x_version_is_505():
    assert status_of(b"GET / HTTP/2.0\r\n\r\n") == 505
    assert status_of(b"GET / HTTP/0.9\r\n\r\n") == 505


def test_header_folding_joined():
    req = parse(b"GET / HTTP/1.1\r\nX-Long: a\r\n  b\r\nConnection: keep-alive,\r\n\tclose\r\n\r\n")
    assert req.keep_alive is False


def test_folded_connection_tokens_stay_apart():
    # "foo" then "close" on a continuation line are two tokens, not "fooclose"
    assert parse(b"GET / HTTP/1.1\r\nConnection: foo\r\n close\r\n\r\n").keep_alive is False


def test_folded_framing_header_rejected():
    assert status_of(b"GET / HTTP/1.1\r\nContent-Length: 1\r\n 2\r\n\r\n") == 400


def test_bare_lf_request():
    req = parse(b"GET /?group=G HTTP/1.1\nHost: x\nConnection: close\n\n")
    assert (req.query, req.keep_alive) == (b"group=G", False)


# -- bodies ------------------------------------------------------------------

def test_content_length_reported():
    req = parse(b"POST / HTTP/1.1\r\nContent-Length: 12\r\n\r\n")
    assert (req.method, req.content_length) == (b"POST", 12)
    assert parse(b"GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n").content_length == 0


def test_content_length_duplicates_and_garbage():
    assert parse(b"POST / HTTP/1.1\r\nContent-Length: 3\r\ncontent-length: 3\r\n\r\n").content_length == 3
    assert status_of(b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n") == 400
    assert status_of(b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n") == 400
    assert status_of(b"POST / HTTP/1.1\r\nContent-Length: 1,1\r\n\r\n") == 400
    assert status_of(b"POST / HTTP/1.1\r\nContent-Length: 0x10\r\n\r\n") == 400
    assert status_of(b"POST / HTTP/1.1\r\nContent-Length: \x0b3\r\n\r\n") == 400  # only SP/HTAB are white space
    assert parse(b"POST / HTTP/1.1\r\nContent-Length: \t3 \r\n\r\n").content_length == 3


def test_body_over_limit_is_413():
    assert status_of(b"POST / HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY + 1)) == 413


def test_chunked_is_411():
    assert status_of(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n") == 411


def test_oversized_head_is_431():
    raw = b"GET / HTTP/1.1\r\nX-Big: " + b"a" * MAX_HEAD + b"\r\n\r\n"
    assert status_of(raw) == 431


# -- query decoding ----------------------------------------------------------

def test_decode_query_basic_and_escapes():
    assert decode_query(b"group=PROD") == ("PROD", None)
    assert decode_query(b"user=alice&group=LAB") == ("LAB", "alice")
    assert decode_query(b"group=lab%20one&user=J%C3%A9r%C3%B4me") == ("lab one", "Jérôme")
    assert decode_query(b"group=a+b") == ("a b", None)
    assert decode_query(b"group=%2B") == ("+", None)


def test_decode_query_empty_other_and_repeated():
    assert decode_query(b"") == (None, None)
    assert decode_query(b"group=&user=") == (None, None)
    assert decode_query(b"foo=1&group") == (None, None)
    assert decode_query(b"group=a&group=b") == ("b", None)


@pytest.mark.parametrize("query", [b"group=%zz", b"group=%4", b"user=%ff", b"group=a%0Ab", b"user=%00"])
def test_decode_query_bad_values(query):
    with pytest.raises(HttpError) as info:
        decode_query(query)
    assert info.value.status == 400


@given(st.binary(max_size=300))
def test_parser_never_crashes(junk):
    """Whatever arrives, parsing either succeeds or raises HttpError."""
    start, end = find_head_end(junk)
    assert 0 <= start <= len(junk)
    if end > 0:
        try:
            req = parse_head(junk[start:end])
        except HttpError as exc:
            assert exc.status in (400, 411, 413, 431, 505)
        else:
            assert req.minor in (0, 1)
            try:
                decode_query(req.query)
            except HttpError as exc:
                assert exc.status == 400


@given(st.text(min_size=1, max_size=40).filter(str.isprintable), st.text(min_size=1, max_size=40).filter(str.isprintable))
def test_urlencode_roundtrip(group, user):
    from urllib.parse import urlencode

    assert decode_query(urlencode({"group": group, "user": user}).encode()) == (group, user)
