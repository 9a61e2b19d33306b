"""Where the management service reads the X2Go services' state from, without importing them.

The composition root passes itself (it has this method), or :class:`NoX2go`
serves when nothing is passed.
"""

from __future__ import annotations

from typing import Any, Protocol


class X2goSource(Protocol):
    """The state of the X2Go broker and of x2gobroker's load-checker socket."""

    def x2go_status(self) -> dict[str, Any] | None:
        """``{"broker": {...} or None, "loadchecker": {...} or None}``; None without either."""


class NoX2go:
    """The :class:`X2goSource` of a balancer without ``<x2gobroker>`` or ``<x2go-loadchecker>``."""

    def x2go_status(self) -> dict[str, Any] | None:
        """No X2Go service."""
        return None
