"""The terminal service as a real process (tests.support.terminal_harness), talked to by curl and raw sockets."""

from __future__ import annotations

import asyncio
import select
import socket
import subprocess
import time

import pytest

from lbserver.terminal.service import HEAD_CACHE, TerminalService, UnknownGroup
from tests.support import Procs, free_port, python_cmd, wait_for_port, wait_until
from tests.support.terminal_harness import terminal_config

IO_TIMEOUT = 5.0


def start_harness(procs: Procs, *extra: str, host: str = "127.0.0.1") -> int:
    port = free_port(host)
    listen = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    proc = procs.start(python_cmd("tests.support.terminal_harness", "--listen", listen, "--hosts", "host-a,host-b",
                                  "--groups", "g1:x,y;g2:z", *extra))
    wait_for_port(host, port, proc=proc)
    return port


@pytest.fixture(scope="module")
def port():
    """One harness shared by the tests that do not depend on its counters or limits."""
    procs = Procs()
    try:
        yield start_harness(procs)
    finally:
        procs.stop_all()


def curl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", "--max-time", "5", *args], capture_output=True, text=True, timeout=10)


def curl_status(url: str, *args: str) -> tuple[int, str]:
    """(HTTP status, body) of one curl request."""
    out = curl("-o", "-", "-w", "\n%{http_code}", *args, url).stdout
    body, _, code = out.rpartition("\n")
    return int(code), body


class Raw:
    """A raw client socket with bounded operations and an HTTP response reader."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.sock = socket.create_connection((host, port), timeout=IO_TIMEOUT)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        self.buf += chunk
        return bool(chunk)

    def response(self, head_request: bool = False) -> tuple[int, dict[str, str], bytes]:
        """Read one response: (status, lower-cased headers, body)."""
        while b"\r\n\r\n" not in self.buf:
            if not self._fill():
                raise AssertionError(f"connection closed before a full response: {self.buf!r}")
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = 0 if head_request else int(headers["content-length"])
        while len(self.buf) < length:
            if not self._fill():
                raise AssertionError("connection closed in a body")
        body, self.buf = self.buf[:length], self.buf[length:]
        return status, headers, body

    def closed_by_server(self) -> bool:
        """True when the server closes (EOF or reset) within IO_TIMEOUT without sending more."""
        try:
            data = self.sock.recv(1)
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False
        assert data == b"", f"unexpected data {data!r}"
        return True

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def raw(port):
    clients: list[Raw] = []

    def make(p: int = port, host: str = "127.0.0.1") -> Raw:
        c = Raw(p, host)
        clients.append(c)
        return c

    yield make
    for c in clients:
        c.close()


# -- the contract, through curl ---------------------------------------------

@pytest.mark.system
def test_default_group_round_robin(port):
    url = f"http://127.0.0.1:{port}/"
    result = curl("-i", url)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("HTTP/1.1 200 OK\n")  # text mode: CRLF read as LF
    assert "Content-Type: text/plain" in result.stdout
    bodies = {curl(url).stdout for _ in range(4)}
    assert bodies == {"host-a\n", "host-b\n"}


@pytest.mark.system
def test_group_user_and_both(port):
    base = f"http://127.0.0.1:{port}/"
    assert curl_status(base + "?group=g2") == (200, "z\n")
    assert {curl(base + "?group=g1").stdout for _ in range(3)} == {"x\n", "y\n"}
    assert curl_status(base + "?user=alice") == (200, "alice-host\n")
    assert curl_status(base + "?group=g2&user=alice") == (200, "alice-host\n")
    assert curl_status(base + "?user=alice&group=g2") == (200, "alice-host\n")


@pytest.mark.system
def test_query_decoding_end_to_end(port):
    status, body = curl_status(f"http://127.0.0.1:{port}/", "-G", "--data-urlencode", "group=echo",
                               "--data-urlencode", "user=Jé rôme+1")
    assert (status, body) == (200, "echo|Jé rôme+1\n")


@pytest.mark.system
def test_unknown_group_is_404_and_failing_answer_is_503(port):
    base = f"http://127.0.0.1:{port}/"
    status, body = curl_status(base + "?group=nosuch")
    assert status == 404 and "unknown group" in body
    status, body = curl_status(base + "?group=boom")
    assert status == 503 and body.strip()
    assert curl_status(base + "?group=g2") == (200, "z\n")  # still serving


@pytest.mark.system
def test_other_paths_and_methods(port):
    base = f"http://127.0.0.1:{port}"
    assert curl_status(base + "/favicon.ico")[0] == 404
    assert curl_status(base + "/", "-X", "POST", "-d", "x=1")[0] == 405
    assert curl_status(base + "/", "-X", "DELETE")[0] == 405
    assert curl_status(base + "/?group=%zz")[0] == 400


@pytest.mark.system
def test_head(port):
    result = curl("-I", f"http://127.0.0.1:{port}/?user=alice")
    assert result.stdout.startswith("HTTP/1.1 200")
    assert "Content-Length: 11" in result.stdout
    assert "alice-host" not in result.stdout


@pytest.mark.system
def test_ipv6_listener(procs):
    port = start_harness(procs, host="::1")
    assert curl("-g", f"http://[::1]:{port}/?group=g2").stdout == "z\n"


# -- connection handling, through raw sockets -------------------------------

@pytest.mark.daemon
def test_keep_alive_http11_then_close(raw):
    c = raw()
    for expected in (b"z\n", b"z\n"):
        c.send(b"GET /?group=g2 HTTP/1.1\r\nHost: lb\r\n\r\n")
        status, headers, body = c.response()
        assert (status, body) == (200, expected)
        assert "connection" not in headers
    c.send(b"GET /?group=g2 HTTP/1.1\r\nHost: lb\r\nConnection: close\r\n\r\n")
    status, headers, body = c.response()
    assert (status, headers["connection"], body) == (200, "close", b"z\n")
    assert c.closed_by_server()


@pytest.mark.daemon
def test_http10_default_close_and_keep_alive(raw):
    c = raw()
    c.send(b"GET /?group=g2 HTTP/1.0\r\n\r\n")
    assert c.response()[2] == b"z\n"
    assert c.closed_by_server()
    c = raw()
    c.send(b"GET /?group=g2 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    status, headers, body = c.response()
    assert headers["connection"].lower() == "keep-alive"
    c.send(b"GET /?user=alice HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    assert c.response()[2] == b"alice-host\n"


@pytest.mark.daemon
def test_pipelined_answers_in_order(raw):
    c = raw()
    c.send(b"GET /?group=g2 HTTP/1.1\r\n\r\n"
           b"GET /?user=alice HTTP/1.1\r\n\r\n"
           b"GET /nothing HTTP/1.1\r\n\r\n"
           b"HEAD /?group=g2 HTTP/1.1\r\n\r\n"
           b"GET /?group=echo&user=b%20c HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert c.response()[::2] == (200, b"z\n")
    assert c.response()[::2] == (200, b"alice-host\n")
    assert c.response()[0] == 404
    status, headers, body = c.response(head_request=True)
    assert (status, headers["content-length"], body) == (200, "2", b"")
    assert c.response()[::2] == (200, b"echo|b c\n")
    assert c.closed_by_server()


@pytest.mark.daemon
def test_pipelined_across_segments(raw):
    c = raw()
    c.send(b"GET /?group=g2 HTTP/1.1\r\n\r\nGET /?user=al")
    assert c.response()[2] == b"z\n"
    time.sleep(0.05)  # make the second half arrive in another segment
    c.send(b"ice HTTP/1.1\r\n\r\n")
    assert c.response()[2] == b"alice-host\n"


@pytest.mark.daemon
def test_thousands_pipelined_in_one_write_all_answered_in_order(port):
    """More pipelined requests than one batch: all answered, in order, as the client reads."""
    n = 5000
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET /?group=g2 HTTP/1.1\r\n\r\n" * (n - 1) + b"GET /?group=g2 HTTP/1.1\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    assert data.count(b"HTTP/1.1 200 ") == n
    assert data.count(b"\r\n\r\nz\n") == n


@pytest.mark.system
def test_junk_gets_400_and_next_connection_served(raw, port):
    c = raw()
    c.send(b"\x16\x03\x01\x02\x00junk that is not http\r\n\r\n")
    status, headers, _ = c.response()
    assert status == 400 and headers["connection"] == "close"
    assert c.closed_by_server()
    assert curl_status(f"http://127.0.0.1:{port}/?group=g2") == (200, "z\n")


@pytest.mark.system
def test_silent_client_does_not_delay_others(raw, port):
    silent = raw()
    dripping = raw()
    dripping.send(b"GET /?gro")
    started = time.monotonic()
    assert curl_status(f"http://127.0.0.1:{port}/?group=g2") == (200, "z\n")
    assert time.monotonic() - started < 3  # far below the harness's 10 s idle timeout
    silent.send(b"GET /?group=g2 HTTP/1.1\r\n\r\n")  # the silent one is still served afterwards
    assert silent.response()[2] == b"z\n"


@pytest.mark.daemon
def test_oversized_head_rejected(raw):
    c = raw()
    c.send(b"GET / HTTP/1.1\r\nX-Pad: " + b"a" * 9000)  # never-ending header
    status = c.response()[0]
    assert status == 431
    assert c.closed_by_server()
    c = raw()
    c.send(b"GET / HTTP/1.1\r\n" + b"X-Pad: aaaaaaaaaa\r\n" * 600 + b"\r\n")
    assert c.response()[0] == 431


@pytest.mark.daemon
def test_body_discarded_then_next_request(raw):
    c = raw()
    body = b"x" * 5000
    c.send(b"POST / HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(body) + body[:100])
    assert c.response()[0] == 405
    c.send(body[100:] + b"GET /?group=g2 HTTP/1.1\r\n\r\n")
    assert c.response()[::2] == (200, b"z\n")


@pytest.mark.daemon
def test_known_head_alone_in_a_read_then_its_body(raw):
    """A head seen before takes the cached path; its body, read later, is still discarded."""
    c = raw()
    for _ in range(3):  # the first parses the head, the next ones find it cached
        c.send(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n")
        assert c.response()[0] == 405
        c.send(b"hello")
        c.send(b"GET /?group=g2 HTTP/1.1\r\n\r\n")
        assert c.response()[::2] == (200, b"z\n")


@pytest.mark.daemon
def test_repeated_bad_query_answered_each_time_on_an_open_connection(raw):
    c = raw()
    for _ in range(3):
        c.send(b"GET /?group=%zz HTTP/1.1\r\n\r\n")
        assert c.response()[0] == 400
    c.send(b"GET /?group=g2 HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert c.response()[::2] == (200, b"z\n")
    assert c.closed_by_server()


@pytest.mark.daemon
def test_chunked_and_huge_bodies_refused(raw):
    c = raw()
    c.send(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    assert c.response()[0] == 411
    assert c.closed_by_server()
    c = raw()
    c.send(b"POST / HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n")
    assert c.response()[0] == 413


@pytest.mark.daemon
def test_lbclient_against_harness(port):
    out = subprocess.run(python_cmd("lbclient", "-s", f"127.0.0.1:{port}", "-g", "g2"),
                         capture_output=True, text=True, timeout=10)
    assert (out.returncode, out.stdout) == (0, "z\n")


# -- timeouts and limits (own harness each) ---------------------------------

@pytest.mark.daemon
def test_idle_timeouts(procs, raw):
    port = start_harness(procs, "--idle-timeout", "0.5")
    silent = raw(port)
    answered = raw(port)
    answered.send(b"GET /?group=g2 HTTP/1.1\r\n\r\n")
    assert answered.response()[2] == b"z\n"
    drip = raw(port)
    started = time.monotonic()
    closed_while_dripping = False
    # bytes keep coming, but the request never completes: it must still time out
    for byte in b"GET /?group=g2 HTTP/1.1\r\n" + b"X" * 200:
        readable, _, _ = select.select([drip.sock], [], [], 0.05)
        if readable or time.monotonic() - started > 6:  # the whole drip would take 11 s
            closed_while_dripping = bool(readable)
            break
        try:
            drip.send(bytes([byte]))
        except OSError:  # reset by the server
            closed_while_dripping = True
            break
    assert closed_while_dripping, "drip-feeding client kept its connection"
    assert drip.closed_by_server()
    assert silent.closed_by_server()
    assert answered.closed_by_server()  # idle keep-alive connection closed too
    assert time.monotonic() - started < 8


@pytest.mark.daemon
def test_max_connections(procs, raw):
    port = start_harness(procs, "--max-connections", "3")

    def served() -> Raw:
        # the readiness probe's connection may still count for a moment: retry
        c = raw(port)
        c.send(b"GET /?group=g2 HTTP/1.1\r\n\r\n")
        assert c.response()[2] == b"z\n"
        return c

    held = [wait_until(served, timeout=5, what="connection served") for _ in range(3)]
    extra = raw(port)
    assert extra.closed_by_server()
    held[0].close()
    assert wait_until(served, timeout=5, what="a new connection served after one closed")
    held[1].send(b"GET /?user=alice HTTP/1.1\r\n\r\n")  # the held ones still work
    assert held[1].response()[2] == b"alice-host\n"


# -- the Python API, in process on a real socket ------------------------------

@pytest.mark.unit
def test_service_api_in_process():
    statuses: dict[int, int] = {}

    async def scenario() -> None:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        port = sock.getsockname()[1]

        def first(group, user):
            if group == "missing":
                raise UnknownGroup(group)
            return "one"

        svc = TerminalService(first, terminal_config(idle_timeout=5), responses=statuses)
        await svc.start(sock)
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), IO_TIMEOUT)

        async def ask(query: str) -> bytes:
            writer.write(f"GET /{query} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IO_TIMEOUT)
            length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
            return await asyncio.wait_for(reader.readexactly(length), IO_TIMEOUT)

        assert await ask("") == b"one\n"
        assert svc.connection_count() == 1
        svc.set_answer(lambda group, user: "two")
        assert await ask("?group=g") == b"two\n"
        svc.set_answer(first)
        assert await ask("?group=missing") == b"unknown group\n"
        await asyncio.wait_for(svc.stop(), IO_TIMEOUT)
        assert svc.connection_count() == 0
        assert await asyncio.wait_for(reader.read(), IO_TIMEOUT) == b""  # closed by stop()
        writer.close()

    asyncio.run(scenario())
    assert statuses == {200: 2, 404: 1}


@pytest.mark.unit
def test_head_cache_stays_bounded_and_answers_each_head():
    async def scenario() -> None:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        port = sock.getsockname()[1]
        svc = TerminalService(lambda group, user: f"{group}-{user}", terminal_config(idle_timeout=5))
        await svc.start(sock)
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), IO_TIMEOUT)
        try:
            for i in range(HEAD_CACHE + 50):
                writer.write(f"GET /?group=g&user=u{i % (HEAD_CACHE + 10)} HTTP/1.1\r\n\r\n".encode())
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IO_TIMEOUT)
                length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
                body = await asyncio.wait_for(reader.readexactly(length), IO_TIMEOUT)
                assert body == f"g-u{i % (HEAD_CACHE + 10)}\n".encode()
                assert len(svc.routes) <= HEAD_CACHE
        finally:
            writer.close()
            await asyncio.wait_for(svc.stop(), IO_TIMEOUT)

    asyncio.run(scenario())
