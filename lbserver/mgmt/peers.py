"""Where the management service reads the peer exchange from, without importing it.

The composition root passes the peer service (which has this method), or
:class:`NoPeers` when the configuration has no ``<peers>``.
"""

from __future__ import annotations

from typing import Any, Protocol


class PeerSource(Protocol):
    """The state of the exchange with peer balancers."""

    def peers_status(self) -> dict[str, Any] | None:
        """``{"listen", "signed", "sent", "peers": [...], "refused_unknown": {...}}``, or None without peers."""


class NoPeers:
    """The :class:`PeerSource` of a balancer without ``<peers>``."""

    def peers_status(self) -> dict[str, Any] | None:
        """No peers."""
        return None
