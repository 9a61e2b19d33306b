"""A node's addresses for DNS: which A and AAAA records stand for it, and which may be published.

:func:`resolve_node` reads them from the node's configuration, asking the
system resolver (getaddrinfo, blocking) only when the host is a name;
:func:`unpublishable` says why an address must stay out of an alias. No
threads of its own: the DNS arbiter calls it on its worker thread.
"""

from __future__ import annotations

import ipaddress
import socket

from lbserver.config import Node
from lbserver.dns.update import sort_addresses


def resolve_node(node: Node) -> tuple[str, ...]:
    """A node's addresses, each family on its own.

    A: the ``ip`` attribute, else the address host when it is an IPv4
    literal; AAAA: the ``ip6`` attribute, else the host when it is an IPv6
    literal. When the host is a name and neither attribute is given, it is
    resolved with getaddrinfo (all its A and AAAA). Raises OSError
    (socket.gaierror) when a name does not resolve. A zone id
    (``fe80::1%eth0``) is dropped: it means nothing to DNS clients.
    """
    out: list[str] = []
    for attr in (node.ip, node.ip6):
        if attr:
            out.extend(_literal_or_resolve(attr))
    host = node.host.strip("[]")
    try:
        lit = _plain_ip(host)
    except ValueError:
        if not out:
            out.extend(_literal_or_resolve(host))
    else:
        if not any(ipaddress.ip_address(a).version == lit.version for a in out):
            out.append(str(lit))
    return sort_addresses(out)


def _plain_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An IP literal without its zone id (``fe80::1%eth0`` -> ``fe80::1``); ValueError otherwise."""
    return ipaddress.ip_address(text.split("%", 1)[0])


def _literal_or_resolve(item: str) -> list[str]:
    try:
        return [str(_plain_ip(item.strip("[]")))]
    except ValueError:
        pass
    found = []
    for info in socket.getaddrinfo(item, None, type=socket.SOCK_STREAM):
        found.append(str(_plain_ip(info[4][0])))
    return found


def unpublishable(addr: str) -> str | None:
    """Why ``addr`` must not go into an alias (link-local, multicast, unspecified), or None.

    Loopback is allowed: a single-host setup may publish 127.0.0.1.
    """
    ip = _plain_ip(addr)
    if ip.is_link_local:
        return "link-local, only reachable on its own network link"
    if ip.is_multicast:
        return "multicast"
    if ip.is_unspecified:
        return "unspecified"
    return None
