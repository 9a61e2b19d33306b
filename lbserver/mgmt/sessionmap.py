"""Where the management service reads the HAProxy session map's state from, without importing it.

The composition root passes itself (it has this method), or
:class:`NoSessionMap` serves when nothing is passed.
"""

from __future__ import annotations

from typing import Any, Protocol


class SessionMapSource(Protocol):
    """The state of the HAProxy session map."""

    def session_map_status(self) -> dict[str, Any] | None:
        """``{"group", "entries", "last_sync", "in_sync", "errors", "error", ...}``; None without ``<haproxy-map>``."""


class NoSessionMap:
    """The :class:`SessionMapSource` of a balancer without ``<haproxy-map>``."""

    def session_map_status(self) -> dict[str, Any] | None:
        """No session map."""
        return None
