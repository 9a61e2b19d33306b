"""The X2Go broker under bad input: each gets a clear error, no password reaches the log, everyone keeps being served.

A real lbserver and lbagent on loopback; the broker is sent malformed,
oversized and unknown requests, passwords it must refuse, a client too slow
and one from an address it does not allow, while the terminal port and a
well-behaved broker client keep getting their answers.
"""

from __future__ import annotations

import socket
import time

import pytest

from tests.support import free_port, wait_until
from tests.support.cluster import start_agent, start_balancer

pytestmark = pytest.mark.daemon

SECRET = "hunter2-not-in-any-log"


def exchange(port: int, raw: bytes, source: str = "127.0.0.1", timeout: float = 10.0) -> bytes:
    """Send ``raw`` on a new connection from ``source``; everything the broker sent until it closed."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0)) as s:
        s.sendall(raw)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def post(path: str, body: bytes, extra: bytes = b"") -> bytes:
    return (b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n%s"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n" % (path.encode(), extra, len(body))) + body


def status_and_body(reply: bytes) -> tuple[int, str]:
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body.decode()


@pytest.fixture
def broker(procs, tmp_path):
    agent = start_agent(procs, tmp_path, "n1", "127.0.0.2")
    port = free_port()
    extra = (f'<x2gobroker listen="127.0.0.1:{port}" timeout="1" max-connections="4">\n'
             '    <allow from="127.0.0.1/32"/>\n'
             '    <profile name="Lab desktop" group="LAB"/>\n  </x2gobroker>')
    bal = start_balancer(procs, tmp_path, {"LAB": [("n1", agent.url)]}, extra=extra)
    bal.wait_health("n1", "up")
    return bal, port


def test_bad_requests_get_clear_errors_and_the_service_keeps_serving(broker):
    bal, port = broker
    good = post("/plain/", b"task=selectsession&sid=Lab+desktop&user=alice")
    cases = [
        (post("/plain/", b"\xff\xfe&password=" + SECRET.encode()), 400, "not a URL-encoded form"),
        (post("/plain/", b"task=a&task=b&password=" + SECRET.encode()), 400, "given twice"),
        (post("/plain/", b"user=" + b"a" * 5000), 400, "longer than 4096"),
        (post("/plain/", b"x" * 20000), 413, "request body too large"),
        (b"POST /plain/ HTTP/1.1\r\nX: " + b"a" * 9000 + b"\r\n\r\n", 431, "request head too large"),
        (b"POST /plain/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 411, "chunked"),
        (b"GET /plain/?task=listsessions HTTP/1.1\r\nConnection: close\r\n\r\n", 405, "POST"),
        (post("/uccs/", b"task=listsessions"), 404, "/plain/"),
        (post("/json/", b"task=setpass&newpass=x&password=" + SECRET.encode()), 400, "unknown task 'setpass'"),
        (post("/plain/", b"task=selectsession&sid=Nope&user=alice"), 404, "no session profile 'Nope'"),
        (b"NONSENSE\r\n\r\n", 400, "malformed request line"),
    ]
    for raw, status, words in cases:
        got = status_and_body(exchange(port, raw))
        assert got[0] == status and words in got[1], (raw[:60], got)
        assert status_and_body(exchange(port, good)) == (200, "Access granted\nSERVER:n1:22\n")
    assert bal.ask() == "n1"


def test_a_slow_client_is_answered_408_and_others_are_served_meanwhile(broker):
    _bal, port = broker
    with socket.create_connection(("127.0.0.1", port), timeout=10) as slow:
        slow.sendall(b"POST /plain/ HTTP/1.1\r\nContent-Length: 40\r\n")  # and nothing more
        started = time.monotonic()
        reply = exchange(port, post("/plain/", b"task=selectsession&sid=Lab+desktop&user=bob"))
        assert status_and_body(reply)[0] == 200 and time.monotonic() - started < 1.0
        rest = slow.recv(65536)
    assert status_and_body(rest) == (408, "the request was not received in time\n")


def test_an_address_not_allowed_is_refused(broker):
    _bal, port = broker
    got = status_and_body(exchange(port, post("/plain/", b"task=listsessions&user=eve"), source="127.0.0.9"))
    assert got == (403, "this address may not use the X2Go broker\n")


def test_no_password_reaches_the_log(broker, procs):
    bal, port = broker
    for raw in (post("/plain/", b"task=listsessions&user=alice&password=" + SECRET.encode()),
                post("/json/", b"task=bogus&user=alice&password=" + SECRET.encode()),
                post("/plain/", b"\xffpassword=" + SECRET.encode())):
        exchange(port, raw)
    bal.proc.terminate()
    bal.proc.wait(timeout=15)
    log = bal.proc.stderr.read() + bal.proc.stdout.read()
    assert " started (config " in log  # the log was read at all
    assert SECRET not in log


def test_connections_past_max_connections_are_closed_and_the_broker_recovers(broker):
    bal, port = broker
    idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(4)]

    def one_more_is_closed() -> bool:
        extra = socket.create_connection(("127.0.0.1", port), timeout=5)
        extra.settimeout(0.5)
        try:
            closed = extra.recv(65536) == b""
        except ConnectionResetError:
            closed = True
        except socket.timeout:  # held: the broker had not counted the others yet
            idle.append(extra)
            return False
        extra.close()
        return closed

    try:
        wait_until(one_more_is_closed, what="a connection past max-connections closed unanswered")
    finally:
        for s in idle:
            s.close()
    got = wait_until(lambda: status_and_body(exchange(port, post("/plain/", b"task=selectsession&sid=Lab+desktop"
                                                                                  b"&user=alice"))))
    assert got == (200, "Access granted\nSERVER:n1:22\n") and bal.ask() == "n1"
