"""The X2Go services in-process: the broker's transport with a stand-in password check, the load-checker socket."""

from __future__ import annotations

import asyncio
import ipaddress
import re
import time

import pytest

from common.sockets import listen_socket
from lbserver.config import X2goBroker, X2goLoadChecker, X2goProfile
from lbserver.core.selection import EmptyGroup
from lbserver.x2go import pam, service
from lbserver.x2go.broker import Placement
from lbserver.x2go.loadchecker import LoadCheckerService
from lbserver.x2go.service import X2goBrokerService

pytestmark = pytest.mark.unit

PROFILE = X2goProfile(name="Lab desktop", group="LAB")


def form(password: str, user: str = "alice") -> bytes:
    body = f"task=selectsession&sid=Lab+desktop&user={user}&password={password}".encode()
    return b"POST /plain/ HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


async def serve(check, requests: bytes, **cfg) -> tuple[bytes, X2goBrokerService]:
    config = X2goBroker(listen=("127.0.0.1", 0), auth="pam", password_over_http=True, profiles=(PROFILE,), **cfg)
    svc = X2goBrokerService(config, lambda p, u: Placement("n1"), lambda p, u: ["n1"], check=check)
    sock = listen_socket(("127.0.0.1", 0))
    sock.setblocking(False)
    await svc.start(sock)
    try:
        reader, writer = await asyncio.open_connection(*sock.getsockname()[:2])
        writer.write(requests)
        await writer.drain()
        writer.write_eof()
        data = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        return data, svc
    finally:
        await svc.stop()


def statuses(data: bytes) -> list[int]:
    return [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3}) ", data)]


def test_pipelined_requests_behind_password_checks_are_answered_in_order():
    seen = []

    def check(svc: str, user: str, password: str) -> tuple[bool, str]:
        seen.append((svc, user, password))
        time.sleep(0.05)  # a PAM module taking its time: the next request waits for this one's answer
        return password == "right", "" if password == "right" else "Authentication failure"

    data, svc = asyncio.run(serve(check, form("right") + form("wrong") + form("right", "bob")))
    assert statuses(data) == [200, 401, 200]
    assert data.count(b"SERVER:n1:22") == 2
    assert seen == [("mille-xterm-x2go", "alice", "right"), ("mille-xterm-x2go", "alice", "wrong"),
                    ("mille-xterm-x2go", "bob", "right")]
    assert svc.counts == {200: 2, 401: 1}


def test_a_broken_or_silent_pam_is_a_503_not_a_crash(monkeypatch):
    def unavailable(*_):
        raise pam.PamUnavailable("cannot load libpam")

    data, _ = asyncio.run(serve(unavailable, form("x") + form("y")))
    assert statuses(data) == [503, 503] and b"passwords cannot be checked" in data
    monkeypatch.setattr(service, "PAM_TIMEOUT", 0.1)

    def silent(*_):
        time.sleep(0.5)
        return True, ""

    data, _ = asyncio.run(serve(silent, form("x")))
    assert statuses(data) == [503] and b"did not answer in time" in data


def test_connections_from_refused_sources_count_against_max_connections():
    async def flood() -> tuple[list[bytes], int]:
        config = X2goBroker(listen=("127.0.0.1", 0), allow=(ipaddress.ip_network("10.0.0.0/8"),), max_connections=3)
        svc = X2goBrokerService(config, lambda p, u: Placement("n1"), lambda p, u: ["n1"])
        sock = listen_socket(("127.0.0.1", 0))
        sock.setblocking(False)
        await svc.start(sock)
        conns = []
        try:
            for _ in range(8):  # none of them sends anything, none closes
                conns.append(await asyncio.open_connection(*sock.getsockname()[:2]))
            replies = [await asyncio.wait_for(reader.read(200), 5) for reader, _ in conns]
            return replies, svc.connection_count()
        finally:
            for _, writer in conns:
                writer.close()
            await svc.stop()

    replies, held = asyncio.run(flood())
    assert held == 3
    assert sum(b" 403 " in r for r in replies) == 3 and replies.count(b"") == 5  # the rest closed unanswered


def test_the_failure_limit_is_per_source_and_a_reload_keeps_it():
    data, svc = asyncio.run(serve(lambda *_: (False, "no"), form("a") + form("b") + form("c"), max_failures=2))
    assert statuses(data) == [401, 401, 429]
    blocked = svc.failures
    svc.configure(svc.config)  # a reload with the same limit keeps the count
    assert svc.failures is blocked and blocked.blocked("127.0.0.1", time.monotonic())


def test_the_load_checker_never_removes_a_file_that_is_not_a_socket(tmp_path):
    precious = tmp_path / "precious"
    precious.write_text("keep me")
    svc = LoadCheckerService(None, X2goLoadChecker(socket=str(precious)))
    with pytest.raises(OSError):
        asyncio.run(svc.start())
    assert precious.read_text() == "keep me"


def test_a_failing_pick_is_an_error_reply_and_the_connection_goes_on():
    async def run() -> bytes:
        calls = []

        def place(profile, user):
            calls.append(user)
            if len(calls) == 1:
                raise EmptyGroup("LAB")
            if len(calls) == 2:
                raise RuntimeError("boom")
            return Placement("n1")

        config = X2goBroker(listen=("127.0.0.1", 0), profiles=(PROFILE,))
        svc = X2goBrokerService(config, place, lambda p, u: ["n1"])
        sock = listen_socket(("127.0.0.1", 0))
        sock.setblocking(False)
        await svc.start(sock)
        try:
            reader, writer = await asyncio.open_connection(*sock.getsockname()[:2])
            writer.write(form("") * 3)
            writer.write_eof()
            data = await asyncio.wait_for(reader.read(), 10)
            writer.close()
            return data
        finally:
            await svc.stop()

    data = asyncio.run(run())
    assert statuses(data) == [503, 500, 200]
    assert b"no server to offer: group 'LAB' has no nodes" in data and data.endswith(b"SERVER:n1:22\n")
