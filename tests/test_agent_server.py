"""The agent's server and service in this process, on loopback: paths a real peer cannot reach.

A request handler that fails unexpectedly, and a reload whose new address
cannot be bound even after the old listener was closed, are provoked here
with a dispatcher that raises and a bind that fails on cue.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import select
import socket
import threading
import xmlrpc.client
from contextlib import contextmanager

import pytest

from tests.support import free_port, wait_until
from lbagent import daemon as agent_daemon
from lbagent.config import AgentConfig
from lbagent.linger import LingeringCloser, linger_capacity
from lbagent.rpc import INLINE_LARGE_REPLY, AgentHTTPServer, Deadlines, Dispatcher, ServerParts
from common.netutil import hosts_overlap
import common.sockets
from common.sockets import listen_socket
from lbagent.daemon import AgentService
from lbagent.sampler import make_sample
from lbagent.workers import WorkerPool
from lbserver.config import Node
from lbserver.core.poller import build_request

pytestmark = pytest.mark.unit


class Exploding(Dispatcher):
    """A dispatcher whose every call raises ``exc``, like a bug would."""

    def __init__(self, exc: Exception) -> None:
        super().__init__(lambda: None)
        self.exc = exc

    def _marshaled_dispatch(self, data, dispatch_method=None, path=None):
        raise self.exc


class CountingPool(WorkerPool):
    """A worker pool that counts the connections handed to it."""

    submitted = 0

    def submit(self, job) -> bool:
        self.submitted += 1
        return super().submit(job)


@contextmanager
def serving(host: str, dispatcher: Dispatcher, secret: str | None = None, workers: WorkerPool | None = None):
    """An AgentHTTPServer on ``host`` (a free port) in a background thread; yields the port."""
    sock = listen_socket((host, 0))
    port = sock.getsockname()[1]
    config = AgentConfig(path="lbaconfig.xml", listen=(host, port), secret=secret)
    parts = ServerParts(dispatcher=dispatcher, deadlines=Deadlines(), workers=workers or WorkerPool(max_workers=4),
                        closer=LingeringCloser())
    server = AgentHTTPServer(sock, config, parts)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        server.shutdown()
        server.server_close()
        parts.workers.close()
        parts.closer.stop()
        parts.deadlines.stop()


def ask(host: str, port: int) -> bytes:
    """POST a ping and read the whole answer."""
    body = xmlrpc.client.dumps((), "ping").encode()
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(b"POST /RPC2 HTTP/1.0\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize("exc, status, text", [
    (RuntimeError("boom"), b"500", b"internal error"),
    (ValueError("unparsable"), b"400", b"malformed request"),
])
def test_unexpected_error_is_answered_and_logged_once(caplog, exc, status, text):
    host = "127.0.0.52"
    with caplog.at_level(logging.WARNING, logger="lbagent.rpc"), serving(host, Exploding(exc)) as port:
        for _ in range(3):
            answer = ask(host, port)
            assert answer.startswith(b"HTTP/1.0 " + status + b" ") and text in answer, answer
    lines = [r.getMessage() for r in caplog.records if "error while serving" in r.getMessage()]
    assert len(lines) == 1, lines  # rate-limited: once a minute per address
    assert f"{type(exc).__name__}: {exc}" in lines[0]


def exchange(host: str, port: int, *pieces: bytes, between=lambda: None) -> bytes:
    """Send ``pieces``, calling ``between()`` before each but the first; read the answer."""
    with socket.create_connection((host, port), timeout=5) as s:
        for i, piece in enumerate(pieces):
            if i:
                between()
            s.sendall(piece)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def accept_once_readable(monkeypatch) -> None:
    """Make the agent take each connection only once its first bytes are there (as is usual)."""
    accept = AgentHTTPServer.get_request

    def get_request(server):
        conn, address = accept(server)
        select.select([conn], [], [], 5)
        return conn, address

    monkeypatch.setattr(AgentHTTPServer, "get_request", get_request)


def test_plain_get_state_answered_in_the_accept_loop_as_a_worker_answers_it(monkeypatch):
    host = "127.0.0.53"
    sample = make_sample("app1", 1700000000.25, {"NBPROC": 4}, ["alice"])
    pool = CountingPool(max_workers=4)
    request = build_request(Node("app1", "http://127.0.0.53:1", "127.0.0.53", 1))  # what lbserver sends
    accept_once_readable(monkeypatch)
    with serving(host, Dispatcher(lambda: sample), workers=pool) as port:
        whole = [exchange(host, port, request) for _ in range(20)]
        assert pool.submitted == 0  # every whole call answered in the accept loop
        # Not whole when accepted: handed to a worker, which then reads the rest.
        split = exchange(host, port, request[:40], request[40:],
                         between=lambda: wait_until(lambda: pool.submitted == 1, 5, what="handed to a worker"))
    assert pool.submitted == 1
    for answer in whole + [split]:
        head, _, body = answer.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        assert lines[0] == b"HTTP/1.0 200 OK"
        assert sorted(line.split(b":")[0] for line in lines[1:]) == \
            [b"Content-Length", b"Content-Type", b"Date", b"Server"]
        assert xmlrpc.client.loads(body)[0][0]["users"] == ["alice"]
        assert body == sample.response


class ResetAfterPeek(socket.socket):
    """A connection whose peer is gone by the time the peeked call is read (ECONNRESET)."""

    def recv(self, size, flags=0):
        if flags & socket.MSG_PEEK:
            return super().recv(size, flags)
        raise ConnectionResetError(104, "Connection reset by peer")


def test_peer_gone_between_peek_and_read_costs_only_its_connection(caplog, monkeypatch):
    host = "127.0.0.55"
    sample = make_sample("app1", 1.0, {}, [])
    request = build_request(Node("app1", "http://127.0.0.55:1", "127.0.0.55", 1))
    accept_once_readable(monkeypatch)
    accept = AgentHTTPServer.get_request
    broken = []

    def get_request(server):
        conn, address = accept(server)
        if not broken:  # the first connection only
            broken.append(conn)
            conn = ResetAfterPeek(conn.family, conn.type, fileno=conn.detach())
        return conn, address

    monkeypatch.setattr(AgentHTTPServer, "get_request", get_request)
    with caplog.at_level(logging.DEBUG, logger="lbagent.rpc"), \
            serving(host, Dispatcher(lambda: sample)) as port:
        with socket.create_connection((host, port), timeout=5) as s:
            s.sendall(request)
            assert s.recv(65536) == b""  # closed without an answer
        assert exchange(host, port, request).startswith(b"HTTP/1.0 200 ")  # the agent serves on
    assert any("connection ended before its answer" in r.getMessage() for r in caplog.records)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # nothing unforeseen


def test_plain_call_without_the_secret_is_refused_not_answered_inline(monkeypatch):
    host = "127.0.0.54"
    sample = make_sample("app1", 1.0, {}, [])
    request = build_request(Node("app1", "http://127.0.0.54:1", "127.0.0.54", 1))
    pool = CountingPool(max_workers=4)
    accept_once_readable(monkeypatch)  # whole when accepted: only the secret keeps it from the accept loop
    with serving(host, Dispatcher(lambda: sample), secret="s3cret", workers=pool) as port:
        assert exchange(host, port, request).startswith(b"HTTP/1.0 401 ")
        assert pool.submitted == 1
        authed = build_request(Node("app1", "http://127.0.0.54:1", "127.0.0.54", 1, secret="s3cret"))
        assert exchange(host, port, authed).startswith(b"HTTP/1.0 200 ")


def test_a_large_reply_arrives_whole_and_one_over_the_inline_limit_goes_through_a_worker(monkeypatch):
    host = "127.0.0.56"
    request = build_request(Node("app1", "http://127.0.0.56:1", "127.0.0.56", 1))
    accept_once_readable(monkeypatch)
    large = make_sample("app1", 1.0, {}, [f"user{i:05d}" for i in range(5000)])  # about 200 KB of sessions
    huge = make_sample("app1", 1.0, {}, [f"user{i:05d}" for i in range(30000)])  # over INLINE_LARGE_REPLY
    assert len(large.response) < INLINE_LARGE_REPLY < len(huge.response)
    for sample in (large, huge):
        pool = CountingPool(max_workers=4)
        with serving(host, Dispatcher(lambda: sample), workers=pool) as port:
            answers = [exchange(host, port, request) for _ in range(3)]
        if sample is huge:
            assert pool.submitted == 3
        for answer in answers:
            assert answer.partition(b"\r\n\r\n")[2] == sample.response


def test_reload_that_cannot_bind_an_overlapping_address_keeps_the_old_one(tmp_path, monkeypatch, caplog):
    """Old 127.0.0.53:P, new [::ffff:127.0.0.53]:P: Linux refuses the new bind while the old
    socket listens (as it does for 0.0.0.0:P or [::]:P), so the service closes the old one and
    binds again; when that second bind fails too, the old address must listen again."""
    host = "127.0.0.53"
    port = free_port(host)
    old = AgentConfig(path=str(tmp_path / "lbaconfig.xml"), listen=(host, port), sample_interval=60)
    new = dataclasses.replace(old, listen=(f"::ffff:{host}", port))
    attempts: list[tuple[str, int]] = []

    def bind(listen, backlog=1024):
        attempts.append(listen)
        if listen == new.listen and attempts.count(listen) == 2:
            raise OSError(errno.EADDRINUSE, f"cannot listen on [{listen[0]}]:{port}: taken meanwhile")
        return listen_socket(listen, backlog)

    monkeypatch.setattr(agent_daemon, "listen_socket", bind)
    monkeypatch.setattr(common.sockets, "listen_socket", bind)
    service = AgentService()
    service.start(old)
    proxy = xmlrpc.client.ServerProxy(f"http://{host}:{port}/RPC2")
    try:
        with caplog.at_level(logging.INFO), pytest.raises(OSError, match="taken meanwhile"):
            service.reload(new)
        # The first new bind failed for real (the old socket held the port), the second on cue.
        assert attempts == [old.listen, new.listen, new.listen, old.listen]
        assert proxy.ping() is True
        assert service.failure() is None
        assert f"overlaps {host}:{port}, which is listening" in caplog.text
        assert f"listening on {host}:{port} again" in caplog.text
    finally:
        service.stop()


def test_lingering_close_lets_the_peer_finish_its_request_then_lets_go():
    closer = LingeringCloser(seconds=0.5)
    try:
        with socket.create_server(("127.0.0.52", 0)) as listener, \
                socket.create_connection(listener.getsockname(), timeout=5) as client:
            conn, _ = listener.accept()
            client.sendall(b"POST /RPC2 HTTP/1.0\r\nContent-Length: 5\r\n\r\n")  # unread by the server
            conn.setblocking(False)
            conn.send(b"HTTP/1.0 403 Forbidden\r\n\r\n")
            closer.close(conn)  # a plain close() here resets the connection: the next send fails
            assert client.recv(100) == b"HTTP/1.0 403 Forbidden\r\n\r\n"
            client.sendall(b"hello")  # the rest of the request, after the answer: still accepted
            assert client.recv(100) == b""

            # After `seconds` the socket is closed for good: the peer's sends start failing.
            def refused():
                try:
                    client.sendall(b"x")
                except OSError:
                    return True
                return False
            wait_until(refused, timeout=5, interval=0.1, what="lingering socket closed")
    finally:
        closer.stop()


def test_linger_capacity_follows_the_open_files_limit():
    assert linger_capacity(1024) == 256
    assert linger_capacity(65536) == 1024
    assert linger_capacity(40) == 16  # never so few that refusals cannot linger at all
    assert linger_capacity(-1) == 1024  # unlimited


@contextmanager
def connected_pair(host: str = "127.0.0.52"):
    """A client socket and the server side of its connection."""
    with socket.create_server((host, 0)) as listener:
        client = socket.create_connection(listener.getsockname(), timeout=5)
        conn, _ = listener.accept()
        try:
            yield client, conn
        finally:
            client.close()
            conn.close()


def test_lingering_closer_at_capacity_closes_at_once():
    closer = LingeringCloser(seconds=30, max_sockets=1)
    try:
        with connected_pair() as (client1, conn1), connected_pair() as (client2, conn2):
            closer.close(conn1)
            assert closer.held == 1
            closer.close(conn2)  # over capacity: closed now, not queued
            assert conn2.fileno() == -1 and closer.held == 1
            assert client2.recv(100) == b""
            assert conn1.fileno() != -1  # the first still lingers
    finally:
        closer.stop()
    assert closer.held == 0 and not closer.alive()


class FailingDrain(LingeringCloser):
    """A closer whose first drain raises, like a bug would."""

    failed = False

    def _drain(self, sock, state):
        if not self.failed:
            self.failed = True
            raise RuntimeError("drain broke")
        return super()._drain(sock, state)


def test_lingering_closer_logs_an_error_and_goes_on(caplog):
    closer = FailingDrain(seconds=0.3)
    try:
        with caplog.at_level(logging.ERROR, logger="lbagent.linger"), \
                connected_pair() as (client1, conn1), connected_pair() as (client2, conn2):
            closer.close(conn1)
            client1.sendall(b"rest of the request")  # wakes the drain, which raises
            wait_until(lambda: closer.failed, timeout=5, what="the failing drain")
            wait_until(lambda: closer.held == 0, timeout=5, what="the socket closed at its deadline")
            assert closer.alive()
            closer.close(conn2)  # and the next one lingers as usual
            client2.sendall(b"more")
            assert client2.recv(100) == b""
            wait_until(lambda: closer.held == 0, timeout=5, what="the second socket closed")
        assert "lingering close failed; going on" in caplog.text and "drain broke" in caplog.text
    finally:
        closer.stop()


class Ending(LingeringCloser):
    """A closer whose thread ends at once, as if its loop had died."""

    def _turn(self, sel, held):
        return False


def test_closer_whose_thread_ended_closes_at_once_and_fails_the_service(tmp_path, monkeypatch):
    closer = Ending()
    wait_until(lambda: not closer.alive(), timeout=5, what="the closer thread ended")
    with connected_pair() as (client, conn):
        closer.close(conn)  # neither raises (its wake-up socket is closed) nor leaks the socket
        assert conn.fileno() == -1 and closer.held == 0
        assert client.recv(100) == b""

    monkeypatch.setattr(agent_daemon, "LingeringCloser", Ending)
    host = "127.0.0.52"
    service = AgentService()
    service.start(AgentConfig(path=str(tmp_path / "lbaconfig.xml"), listen=(host, free_port(host)),
                              sample_interval=60))
    try:
        wait_until(service.failure, timeout=5, what="failure reported")
        assert service.failure() == "the lingering-close thread ended"
    finally:
        service.stop()
    assert service.failure() is None  # stopping on purpose is no failure


@pytest.mark.parametrize("a, b, overlap", [
    ("127.0.0.1", "127.0.0.1", True),
    ("127.0.0.1", "::ffff:127.0.0.1", True),
    ("0.0.0.0", "10.0.0.5", True),
    ("0.0.0.0", "::ffff:10.0.0.5", True),
    ("::", "10.0.0.5", True),
    ("::", "::1", True),
    ("fe80::1%eth0", "fe80::1", True),
    ("127.0.0.1", "127.0.0.2", False),  # taken by someone else, never by us
    ("0.0.0.0", "::1", False),
    ("::1", "::2", False),
    ("not-an-address", "127.0.0.1", False),
])
def test_hosts_overlap(a, b, overlap):
    assert hosts_overlap(a, b) is overlap
    assert hosts_overlap(b, a) is overlap
