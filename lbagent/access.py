"""Who may query the agent: the <access> allow-list.

Pure logic (no sockets): the RPC server passes the peer address it got from
accept(). The rate limits on logging refusals are in :mod:`common.ratelimit`.
"""

from __future__ import annotations

from typing import Iterable

from common.netutil import Network, in_networks


def is_allowed(host: str, allow: Iterable[Network] | None) -> bool:
    """Whether the peer ``host`` may query, given the allow-list (None: everyone may)."""
    return allow is None or in_networks(host, allow)
