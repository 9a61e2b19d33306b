"""Who may use the management service: the DNS-rebinding guard, loopback trust and the admin token.

Pure functions of the peer address and the request headers (plus the token
file, re-read only when it changes), so they are tested without sockets.
Reads are open to whoever can reach the port (it listens on loopback by
default); admin actions (POST) are accepted from loopback, or from elsewhere
only with the token of ``token-file`` given as ``Authorization: Bearer
TOKEN`` and compared in constant time.
"""

from __future__ import annotations

import functools
import hmac
import ipaddress
import logging
import os
import socket
import urllib.parse
from typing import Mapping

from common.netutil import peer_address
from common.secretfile import SecretFileError, permission_problem, read_secret_file

log = logging.getLogger("lbserver.mgmt")


def read_token(path: str | None) -> str | None:
    """The admin token from ``path`` (first line), or None; warns on loose permissions."""
    if not path:
        return None
    try:
        token = read_secret_file(path)
    except SecretFileError as exc:
        log.error("cannot read token file %s (%s); remote admin actions are refused", exc.path, exc.message)
        return None
    problem = permission_problem(path)
    if problem:
        log.warning("token file %s", problem)
    return token


class TokenFile:
    """The admin token of ``token-file``, re-read only when the file changes.

    Remote requests arrive at the network's pace; re-reading (and logging a
    broken file) on each one would let anyone flood the log.
    """

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._token: str | None = None

    def get(self, path: str | None) -> str | None:
        """The token, or None when no usable token file is configured."""
        try:
            st = os.stat(path) if path else None
            key = (path, st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size) if st else (path,)
        except OSError as exc:
            key = (path, exc.errno)
        if key != self._key:
            self._key, self._token = key, read_token(path)
        return self._token


@functools.lru_cache(maxsize=1)
def _own_names() -> frozenset[str]:
    # Looked up once: getfqdn may ask the resolver, which must not stall the loop per request.
    names = {"localhost", socket.gethostname().lower(), socket.getfqdn().lower()}
    return frozenset(n for n in names if n)


def host_allowed(peer: str, headers: Mapping[str, str]) -> bool:
    """Refuse DNS rebinding: a request from this host must be addressed to this host.

    A web page in a browser on the boot server can make a name of its own
    resolve to 127.0.0.1 and then read this service; the browser still sends
    that foreign name in ``Host``. Tools on this host (curl, lbctl,
    Prometheus, a local reverse proxy) address it by an IP literal,
    ``localhost`` or the machine's own name.
    """
    host = headers.get("host")
    if host is None or not is_loopback(peer):
        return True
    name = (host[1:host.find("]")] if host.startswith("[") else host.rsplit(":", 1)[0]).lower().rstrip(".")
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        pass
    return name in _own_names() or name.endswith(".localhost")


def is_loopback(peer: str) -> bool:
    """True for 127.0.0.0/8, ::1 and IPv4-mapped loopback."""
    addr = peer_address(peer)
    return addr is not None and addr.is_loopback


def _origin_is_loopback(origin: str) -> bool:
    host = urllib.parse.urlsplit(origin).hostname or ""
    return host == "localhost" or is_loopback(host)


def loopback_allowed(peer: str, headers: Mapping[str, str]) -> bool:
    """True when a request may act without a token because it comes from this host.

    A browser on this host also connects from loopback, on behalf of any web
    page it shows; it then sends ``Origin``. A request whose Origin is not a
    loopback page (another site, or a DNS-rebound name) gets no loopback
    trust, so no web page can drain nodes through an admin's browser.
    """
    if not is_loopback(peer):
        return False
    origin = headers.get("origin")
    return origin is None or _origin_is_loopback(origin)


def admin_allowed(peer: str, headers: Mapping[str, str], token: str | None) -> bool:
    """May this request use the admin actions (POST)?

    ``headers`` has lower-case names. Allowed from loopback (see
    :func:`loopback_allowed`), or from anywhere with ``Authorization: Bearer
    TOKEN`` matching ``token`` (compared in constant time). No token
    configured means no remote admin.
    """
    if loopback_allowed(peer, headers):
        return True
    given = headers.get("authorization", "")
    if not token or not given.startswith("Bearer "):
        return False
    return hmac.compare_digest(given[7:].strip().encode(), token.encode())
