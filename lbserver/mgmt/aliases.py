"""Where the management service reads the DNS aliases from, without importing the DNS arbiter.

The composition root passes the DNS service (which has these methods),
or :class:`NoAliases` when the configuration has no ``<dns>``.
"""

from __future__ import annotations

from typing import Mapping, Protocol


class AliasSource(Protocol):
    """Where the DNS aliases' state comes from."""

    def alias_status(self) -> list[dict]:
        """One JSON-ready report per alias, from the last DNS cycle."""

    def alias_counts(self) -> Mapping[tuple[str, str], int]:
        """Alias evaluations so far, by (alias, result)."""

    def dns_figures(self) -> dict | None:
        """``{"cycle_seconds", "queries", "updates"}``: the last cycle's DNS part, the DNS queries so far and the
        alias evaluations by result (None: no <dns>)."""


class NoAliases:
    """The :class:`AliasSource` of a balancer without ``<dns>``."""

    def alias_status(self) -> list[dict]:
        """No aliases."""
        return []

    def alias_counts(self) -> Mapping[tuple[str, str], int]:
        """No evaluations."""
        return {}

    def dns_figures(self) -> dict | None:
        """No DNS figures."""
        return None
