"""Speaking to HAProxy in tests: stand-in application servers, an RDP client's first packet, the runtime API."""

from __future__ import annotations

import asyncio
import socket
import threading
from pathlib import Path


class AppServers:
    """TCP servers that greet with their name and hold the connection until the client closes it."""

    def __init__(self, addresses: dict[str, tuple[str, int]]) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.servers = [asyncio.run_coroutine_threadsafe(self._serve(name, addr), self.loop).result(10)
                        for name, addr in addresses.items()]

    async def _serve(self, name: str, addr: tuple[str, int]):
        async def handle(reader, writer):
            try:
                writer.write(name.encode() + b"\n")
                await writer.drain()
                while await reader.read(4096):
                    pass
            except OSError:
                pass  # HAProxy's health checks connect and leave at once
            finally:
                writer.close()
        return await asyncio.start_server(handle, *addr, backlog=512)

    def close(self) -> None:
        for server in self.servers:
            self.loop.call_soon_threadsafe(server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def rdp_request(user: str) -> bytes:
    """TPKT + X.224 connection request carrying ``Cookie: mstshash=USER`` (what mstsc and xfreerdp send first)."""
    cookie = f"Cookie: mstshash={user}\r\n".encode()
    x224 = bytes([6 + len(cookie), 0xE0, 0, 0, 0, 0, 0]) + cookie
    return bytes([3, 0]) + (4 + len(x224)).to_bytes(2, "big") + x224


def rdp_connect(port: int, user: str) -> tuple[socket.socket, str]:
    """Open a session through HAProxy as ``user``; the open socket and the server that greeted it."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(rdp_request(user))
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(64)
        assert chunk, f"HAProxy closed the connection of {user} without a server"
        data += chunk
    return sock, data.decode().strip()


def haproxy_cli(sock: Path, command: str) -> str:
    """One command on HAProxy's stats socket; its whole answer."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(str(sock))
        s.sendall(command.encode() + b"\n")
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out.decode()


__all__ = ["AppServers", "haproxy_cli", "rdp_connect", "rdp_request"]
