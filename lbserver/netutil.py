"""Listening sockets and descriptor limits for the balancer's services."""

from __future__ import annotations

import socket

# Shared with the agent; re-exported so the balancer's modules import it from here.
from common.netutil import raise_nofile_limit

__all__ = ["listen_socket", "raise_nofile_limit"]


def listen_socket(host: str, port: int, backlog: int = 1024) -> socket.socket:
    """A bound, listening, non-blocking TCP socket on ``host:port`` (IPv4 or IPv6).

    Raises OSError whose message names the address, so the daemon can print it.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6 and host == "::":
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        raise OSError(exc.errno, f"cannot listen on {shown}: {exc.strerror}") from None
    return sock
