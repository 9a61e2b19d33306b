"""The agent-check service in process on real sockets: framing, timeouts, the connection cap, the access list."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time

import pytest

from lbserver.config import HaproxyAgent
from lbserver.core.selection import NodeView, Snapshot
from lbserver.haproxy.service import HaproxyAgentService
from tests.support.doubles import SnapshotView

pytestmark = pytest.mark.unit

IO_TIMEOUT = 5.0


def _snapshot(drained: bool = False) -> Snapshot:
    views = {
        "a": NodeView(name="a", healthy=True, weight=60.0, size=1.0),
        "b": NodeView(name="b", healthy=True, weight=30.0, size=1.0, drained=drained,
                      drained_by=("admin",) if drained else ()),
    }
    return Snapshot(views, {"G": ("a", "b")}, "G", 0.0)


def _listening() -> tuple[socket.socket, int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    sock.setblocking(False)
    return sock, sock.getsockname()[1]


async def _ask(port: int, data: bytes, *, eof: bool = False) -> bytes:
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), IO_TIMEOUT)
    writer.write(data)
    if eof:
        writer.write_eof()
    try:
        return await asyncio.wait_for(reader.read(), IO_TIMEOUT)
    finally:
        writer.close()


def _run(scenario, config: HaproxyAgent | None = None, view: SnapshotView | None = None):
    view = view or SnapshotView(_snapshot())
    svc = HaproxyAgentService(view, config or HaproxyAgent(read_timeout=0.3))

    async def main():
        sock, port = _listening()
        await svc.start(sock)
        try:
            return await scenario(svc, port, view)
        finally:
            await asyncio.wait_for(svc.stop(), IO_TIMEOUT)
            sock.close()

    return asyncio.run(main())


def test_answers_follow_the_snapshot_in_force():
    async def scenario(svc, port, view):
        assert await _ask(port, b"a\n") == b"up ready 100%\n"
        assert await _ask(port, b"b\n") == b"up ready 50%\n"
        view.snapshot = _snapshot(drained=True)  # a drain installs a new snapshot
        assert await _ask(port, b"b\n") == b"up drain #drained by admin\n"
        assert await _ask(port, b"nope\n") == b"down #unknown node nope\n"
        assert svc.answered == 4

    _run(scenario)


def test_no_line_end_is_answered_without_waiting_for_one():
    async def scenario(svc, port, view):
        t0 = time.monotonic()
        assert await _ask(port, b"a\\n") == b"up ready 100%\n"     # single-quoted agent-send: literal \n
        assert await _ask(port, b"b", eof=True) == b"up ready 50%\n"  # printf b | nc
        assert time.monotonic() - t0 < 0.3 * 2   # neither waited for the read timeout
        assert await _ask(port, b"b") == b"up ready 50%\n"          # nothing else: answered at the timeout
        assert await _ask(port, b"") == b"down #no node name received (agent-send names the node)\n"

    _run(scenario)


def test_junk_long_lines_and_slow_clients_do_not_disturb_others():
    async def scenario(svc, port, view):
        assert (await _ask(port, b"\x00\xff" * 600)).startswith(b"down #unknown node ")
        # A client dripping one byte at a time, never ending its line: answered at the
        # read timeout with what it sent; meanwhile everyone else is served at once.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"x")
        await writer.drain()
        t0 = time.monotonic()
        for _ in range(20):
            assert await _ask(port, b"a\n") == b"up ready 100%\n"
        assert time.monotonic() - t0 < 2.0
        assert await asyncio.wait_for(reader.read(), IO_TIMEOUT) == b"down #unknown node x\n"
        writer.close()
        # Binary garbage, a half-open client that reads nothing, an abrupt reset.
        r2, w2 = await asyncio.open_connection("127.0.0.1", port)
        w2.transport.abort()
        assert await _ask(port, b"\r\n\r\n") == b"down #no node name received (agent-send names the node)\n"
        assert await _ask(port, b"b\n") == b"up ready 50%\n"

    _run(scenario)


async def eventually(predicate, what: str) -> None:
    """Wait on the loop until ``predicate()`` holds, at most IO_TIMEOUT seconds."""
    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.01)
    try:
        await asyncio.wait_for(poll(), IO_TIMEOUT)
    except asyncio.TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


def test_connection_cap_refuses_at_once_and_recovers():
    async def scenario(svc, port, view):
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
        await eventually(lambda: svc.connection_count() == 2, "both connections held")
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await asyncio.wait_for(reader.read(), IO_TIMEOUT) == b""  # closed, unanswered
        writer.close()
        assert svc.refused["busy"] == 1
        for r, w in held:
            w.write(b"a\n")
            assert await asyncio.wait_for(r.read(), IO_TIMEOUT) == b"up ready 100%\n"
            w.close()
        assert await _ask(port, b"b\n") == b"up ready 50%\n"

    _run(scenario, HaproxyAgent(read_timeout=5.0, max_connections=2))


def test_access_list_refuses_other_peers_and_reloads():
    async def scenario(svc, port, view):
        got = b""
        try:
            got = await _ask(port, b"a\n")
        except (ConnectionResetError, BrokenPipeError):
            pass
        assert got == b""
        assert svc.refused["access"] == 1
        svc.configure(HaproxyAgent(read_timeout=0.3, allow=(ipaddress.ip_network("127.0.0.0/8"),)))
        assert await _ask(port, b"a\n") == b"up ready 100%\n"
        svc.configure(HaproxyAgent(read_timeout=0.3))   # no <allow>: loopback
        assert await _ask(port, b"a\n") == b"up ready 100%\n"

    _run(scenario, HaproxyAgent(read_timeout=0.3, allow=(ipaddress.ip_network("10.0.0.0/8"),)))


def test_a_failing_reply_closes_unanswered_and_the_service_goes_on():
    class Broken:
        @property
        def snapshot(self):
            raise RuntimeError("boom")

    async def scenario(svc, port, view):
        assert await _ask(port, b"a\n") == b""
        assert svc.refused["error"] == 1
        svc._view = SnapshotView(_snapshot())
        assert await _ask(port, b"a\n") == b"up ready 100%\n"

    _run(scenario, view=Broken())


def test_stop_closes_open_connections_and_start_again():
    async def scenario(svc, port, view):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await eventually(lambda: svc.connection_count() == 1, "the connection held")
        await svc.stop()
        assert svc.connection_count() == 0
        try:
            assert await asyncio.wait_for(reader.read(), IO_TIMEOUT) == b""
        except ConnectionResetError:
            pass
        writer.close()
        sock, port2 = _listening()
        await svc.start(sock)
        assert await _ask(port2, b"a\n") == b"up ready 100%\n"

    _run(scenario, HaproxyAgent(read_timeout=5.0))
