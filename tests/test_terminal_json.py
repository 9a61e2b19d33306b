"""``GET /?format=json`` on the terminal port: the pick and why, for scripts; the plain answer unchanged."""

from __future__ import annotations

import asyncio
import json
import socket
from collections import Counter

import pytest

from tests.support.cluster import offline_balancer
from lbserver.terminal.request import HttpError, decode_query, parse_query, wants_json
from lbserver.terminal.service import TerminalService, UnknownGroup
from tests.support.terminal_harness import terminal_config

pytestmark = pytest.mark.unit

IO_TIMEOUT = 5.0


@pytest.mark.parametrize("query,json_wanted", [
    (b"format=json", True), (b"group=G&format=json&user=u", True), (b"format=text", False), (b"format=", False),
    (b"group=G", False), (b"format=json&format=text", False), (b"format=%6Ason", True),
])
def test_wants_json(query, json_wanted):
    assert wants_json(parse_query(query)[2]) is json_wanted
    assert parse_query(query)[:2] == decode_query(query)


@pytest.mark.parametrize("query", [b"format=xml", b"format=JSON", b"format=%zz", b"format=js%00on"])
def test_wants_json_refuses_other_formats(query):
    with pytest.raises(HttpError) as info:
        wants_json(parse_query(query)[2])
    assert info.value.status == 400


def _serve(answer, details, requests: list[bytes]) -> list[tuple[int, dict, bytes]]:
    """Send ``requests`` on one keep-alive connection; (status, headers, body) of each answer."""
    statuses: dict[int, int] = {}

    async def scenario():
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        port = sock.getsockname()[1]
        svc = TerminalService(answer, terminal_config(), details=details, responses=statuses)
        await svc.start(sock)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        out = []
        for req in requests:
            writer.write(req)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IO_TIMEOUT)
            lines = head.decode().split("\r\n")
            headers = dict(line.split(": ", 1) for line in lines[1:] if line)
            body = await asyncio.wait_for(reader.readexactly(int(headers["Content-Length"])), IO_TIMEOUT) \
                if not req.startswith(b"HEAD") else b""
            out.append((int(lines[0].split()[1]), headers, body))
        writer.close()
        await svc.stop()
        return out

    result = asyncio.run(scenario())
    assert statuses == Counter(r[0] for r in result)
    return result


def _get(query: str, method: str = "GET") -> bytes:
    return f"{method} /{query} HTTP/1.1\r\nHost: x\r\n\r\n".encode()


def test_json_answer_from_the_details_callback():
    calls = []

    def details(group, user):
        calls.append((group, user))
        if group == "missing":
            raise UnknownGroup(group)
        if group == "boom":
            raise RuntimeError("selection exploded")
        return {"host": "10.0.0.1", "node": "xapp1", "group": group or "PROD", "weight": 12.5, "why": "weighted"}

    got = _serve(lambda g, u: "plain", details, [
        _get("?format=json"), _get("?group=LAB&user=bob&format=json"), _get(""), _get("?format=json&group=missing"),
        _get("?format=json&group=boom"), _get("?format=json", "HEAD"), _get("?format=xml"),
    ])
    status, headers, body = got[0]
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert json.loads(body) == {"host": "10.0.0.1", "node": "xapp1", "group": "PROD", "weight": 12.5,
                                "why": "weighted"}
    assert body.endswith(b"}\n")
    assert json.loads(got[1][2])["group"] == "LAB"
    assert got[2][0] == 200 and got[2][2] == b"plain\n" and got[2][1]["Content-Type"].startswith("text/plain")
    assert (got[3][0], got[3][2]) == (404, b"unknown group\n")
    assert (got[4][0], got[4][2]) == (503, b"no server available\n")
    assert got[5][0] == 200 and got[5][1]["Content-Type"] == "application/json" and got[5][2] == b""
    assert (got[6][0], got[6][2]) == (400, b"unknown format (json or text)\n")
    assert calls[:2] == [(None, None), ("LAB", "bob")]


def test_json_without_a_details_callback_holds_the_host():
    got = _serve(lambda g, u: "only-host", None, [_get("?format=json")])
    assert json.loads(got[0][2]) == {"host": "only-host"}


def test_balancer_answer_details_says_what_and_why(tmp_path):
    bal = offline_balancer(tmp_path)
    bal.install_snapshot()
    doc = bal.answer_details(None, None)
    assert set(doc) == {"host", "node", "group", "weight", "why"}
    # Never polled: every node is down, so the answer is the group's first node as a last resort.
    assert doc["node"] in ("xapp1", "xapp2") and doc["group"] == "PROD"
    assert doc["host"] == {"xapp1": "127.0.0.2", "xapp2": "127.0.0.3"}[doc["node"]]
    assert doc["why"] == "last-good" and doc["weight"] == 0.0
    assert bal.answer(None, None) in ("127.0.0.2", "127.0.0.3")
    with pytest.raises(UnknownGroup):
        bal.answer_details("NOPE", None)
