"""Listening sockets of both daemons: open one, and move to a new address.

Both daemons bind before daemonising (so "address in use" reaches the
terminal) and rebind on reload. Linux refuses to bind ``0.0.0.0:P`` or
``[::]:P`` (or another spelling of the same address) while the daemon's own
socket listens on port P, so a move onto an overlapping address closes the
old listener first; :func:`open_replacement` and :func:`bind_after_close`
are the two halves of that move, around the caller's own way of closing.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from typing import Any, Callable

from common.netutil import hosts_overlap

log = logging.getLogger(__name__)

Address = tuple[str, int]


def format_listen(listen: Address) -> str:
    """``host:port``, with IPv6 hosts in brackets."""
    host, port = listen
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _resolve(listen: Address, kind: int = socket.SOCK_STREAM) -> tuple:
    """The first getaddrinfo() entry for listening on ``listen`` (OSError, worded by the callers)."""
    host, port = listen
    try:
        return socket.getaddrinfo(host, port, type=kind, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise OSError(exc.errno, exc.strerror) from None


def _bound(listen: Address, kind: int) -> socket.socket:
    """A socket of ``kind`` bound to ``listen``, ``[::]`` dual-stack where the system allows it."""
    family, _, proto, _, addr = _resolve(listen, kind)
    sock = socket.socket(family, kind, proto)
    try:
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6 and addr[0] == "::":
            try:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            except OSError:
                pass
        sock.bind(addr)
    except OSError:
        sock.close()
        raise
    return sock


def listen_socket(listen: Address, backlog: int = 1024) -> socket.socket:
    """A bound, listening TCP socket on ``listen`` (IPv4 or IPv6); OSError names the address.

    ``[::]`` is dual-stack where the system allows it, so IPv4 clients reach
    a daemon listening on all IPv6 addresses too.
    """
    try:
        sock = _bound(listen, socket.SOCK_STREAM)
        try:
            sock.listen(backlog)
        except OSError:
            sock.close()
            raise
    except OSError as exc:
        raise OSError(exc.errno, f"cannot listen on {format_listen(listen)}: {exc.strerror or exc}") from None
    return sock


def datagram_socket(listen: Address) -> socket.socket:
    """A bound, non-blocking UDP socket on ``listen``; OSError names the address."""
    try:
        sock = _bound(listen, socket.SOCK_DGRAM)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot listen on {format_listen(listen)} (UDP): {exc.strerror or exc}") from None
    sock.setblocking(False)
    return sock


def overlaps(new: Address, current: Address) -> bool:
    """Whether listening on ``new`` collides with our own listener on ``current`` (same port, overlapping host)."""
    try:
        host = _resolve(new)[4][0]
    except OSError:
        return False
    return new[1] == current[1] and hosts_overlap(host, current[0])


def open_replacement(new: Address, current: Address, backlog: int = 1024) -> socket.socket | None:
    """A socket listening on ``new`` while ``current`` still listens, or None when ``current`` must close first.

    None means ``new`` overlaps our own listener (127.0.0.1:8008 -> 0.0.0.0:8008):
    close it, then call :func:`bind_after_close`. Any other failure raises
    OSError, and the current listener is untouched.
    """
    try:
        return listen_socket(new, backlog)
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE or not overlaps(new, current):
            raise
        log.warning("%s overlaps %s, which is listening: closing it to bind the new address",
                    format_listen(new), format_listen(current))
        return None


def bind_after_close(new: Address, old: Address, backlog: int = 1024) -> tuple[socket.socket, OSError | None]:
    """After the old listener closed: a socket on ``new``, or on ``old`` again with the reason ``new`` failed.

    Raises OSError when neither can be bound (the daemon has lost its port).
    """
    try:
        return listen_socket(new, backlog), None
    except OSError as exc:
        log.error("%s; listening on %s again", exc, format_listen(old))
        try:
            return listen_socket(old, backlog), exc
        except OSError as lost:
            raise OSError(lost.errno, f"no listening socket: {lost} (after {exc})") from None


async def close_listener(server: "asyncio.AbstractServer | None", conns: set, abort: Callable[[Any], None]) -> None:
    """Stop ``server`` accepting, ``abort`` each of its connections in ``conns`` (emptied), and wait until it is
    closed; nothing if ``server`` is None. The services' ``stop()``: they may be started again after it."""
    if server is None:
        return
    server.close()
    for conn in list(conns):
        abort(conn)
    conns.clear()
    await server.wait_closed()
