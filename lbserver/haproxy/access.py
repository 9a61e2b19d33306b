"""Who may ask the agent-check port: the ``<allow>`` networks, loopback when none are given (pure)."""

from __future__ import annotations

import ipaddress
from typing import Iterable

from common.netutil import Network, in_networks

LOOPBACK: tuple[Network, ...] = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
"""Who may ask when ``<haproxy-agent>`` has no ``<allow>``."""


def effective_allow(allow: Iterable[Network]) -> tuple[Network, ...]:
    """The configured networks, or :data:`LOOPBACK` when there are none."""
    nets = tuple(allow)
    return nets or LOOPBACK


def is_allowed(host: str, allow: Iterable[Network]) -> bool:
    """Whether the peer ``host`` (as accept() reported it) is inside one of ``allow``.

    An IPv4 client of a dual-stack socket (``::ffff:a.b.c.d``) is matched
    as the IPv4 address it is; a peer that is no IP address never matches.
    """
    return in_networks(host, allow)


__all__ = ["LOOPBACK", "Network", "effective_allow", "is_allowed"]
