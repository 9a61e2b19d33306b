"""Addresses and descriptor limits shared by the daemons."""

from __future__ import annotations

import ipaddress
import resource
from typing import Iterable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def raise_nofile_limit(wanted: int = 65536) -> int:
    """Raise the soft open-files limit towards ``wanted`` (capped by the hard limit); return it.

    The usual soft default of 1024 is too low for a daemon holding many
    connections at once (a balancer polling a thousand agents, an agent
    answering a flood of refused peers): past it, accept() fails with EMFILE.
    Returns the soft limit in force afterwards (``resource.RLIM_INFINITY`` if
    unlimited); a refusal to raise it (a sandbox) leaves it as it was.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def peer_address(host: str) -> IPAddress | None:
    """The address of a peer as accept() reported it, or None when it is not an IP address.

    An IPv4 client of a dual-stack ``[::]`` socket shows up as
    ``::ffff:a.b.c.d``; it is treated as the IPv4 address it is, so
    ``<allow from="10.0.0.0/8"/>`` matches it. A zone suffix (``%eth0``) is ignored.
    """
    try:
        addr = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def in_networks(host: str, networks: Iterable[Network]) -> bool:
    """Whether the peer ``host`` (as accept() reported it, see :func:`peer_address`) is inside one of ``networks``.

    A peer that is no IP address never is.
    """
    addr = peer_address(host)
    if addr is None:
        return False
    return any(addr.version == net.version and addr in net for net in networks)


def hosts_overlap(a: str, b: str) -> bool:
    """Whether listening on host ``a`` and host ``b`` (numeric addresses) on one port collide.

    True for the same address in two spellings (``::ffff:10.0.0.5`` and
    ``10.0.0.5``), for ``0.0.0.0`` and any IPv4 address, and for ``::``
    (dual-stack, as :func:`bind_listen` opens it) and any address. Distinct
    specific addresses never collide: if one of them is taken, it is taken by
    someone else.
    """
    x, y = peer_address(a), peer_address(b)
    if x is None or y is None:
        return False
    if x == y:
        return True
    for one, other in ((x, y), (y, x)):
        if one == ipaddress.IPv6Address("::"):
            return True
        if one == ipaddress.IPv4Address("0.0.0.0") and other.version == 4:
            return True
    return False
