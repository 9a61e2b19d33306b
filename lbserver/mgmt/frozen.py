"""What a read of the management service needs, copied on the loop thread so it can be rendered elsewhere.

At ten thousand nodes, ``/status`` and ``/metrics`` are megabytes of text
and seconds of CPU. Rendered on the daemon's loop, each would hold every
terminal waiting that long; so the HTTP adapter takes a :class:`FrozenView`
copy on the loop (a few milliseconds: the snapshot is immutable already,
the rest is small or a shallow copy) and renders from it on a worker
thread, where the loop gets the interpreter back every millisecond
(``SWITCH_INTERVAL`` in :mod:`lbserver.daemon`).
Nothing in a copy changes after it is taken, so the worker reads it
without locks.
"""

from __future__ import annotations

from typing import Any, Mapping

from lbserver.config import ServerConfig
from lbserver.core.counters import CycleInfo, DurationHistogram
from lbserver.core.history import History
from lbserver.core.selection import Snapshot
from lbserver.core.view import BalancerView
from lbserver.mgmt.aliases import AliasSource
from lbserver.mgmt.peers import PeerSource
from lbserver.mgmt.x2go import X2goSource


class FrozenView:
    """A :class:`~lbserver.core.view.BalancerView` as it was when taken; read-only, safe on any thread."""

    def __init__(self, view: BalancerView) -> None:
        self.config: ServerConfig = view.config
        self.snapshot: Snapshot = view.snapshot
        self.started_at: float = view.started_at
        self.last_cycle: CycleInfo | None = view.last_cycle
        self.history: History = view.history.copy()
        self.poll_histogram: DurationHistogram = view.poll_histogram.copy()
        self._picks = dict(view.pick_counts())
        self._failures = {n: view.consecutive_failures(n) for n in self.snapshot.nodes}
        self._responses = dict(view.response_counts())
        self._sessions = {n: view.sessions_now(n) for n in self.snapshot.nodes}
        self._group_errors = dict(view.group_errors())

    def group_errors(self) -> Mapping[str, str]:
        """Why each group read at each poll could not be read at the last poll."""
        return self._group_errors

    def pick_counts(self) -> Mapping[str, int]:
        """Terminals sent to each node since start."""
        return self._picks

    def consecutive_failures(self, node: str) -> int:
        """Polls of ``node`` failed in a row."""
        return self._failures.get(node, 0)

    def response_counts(self) -> Mapping[int, int]:
        """Terminal requests answered, by HTTP status."""
        return self._responses

    def sessions_now(self, node: str) -> int:
        """``node``'s sessions as its ``max-sessions`` counts them."""
        return self._sessions.get(node, 0)


class FrozenAliases:
    """An :class:`~lbserver.mgmt.aliases.AliasSource` as it was when taken."""

    def __init__(self, aliases: AliasSource) -> None:
        self._status = aliases.alias_status()
        self._counts = dict(aliases.alias_counts())
        self._figures = aliases.dns_figures()

    def alias_status(self) -> list[dict]:
        """One report per alias, from the last DNS cycle."""
        return self._status

    def alias_counts(self) -> Mapping[tuple[str, str], int]:
        """Alias evaluations so far, by (alias, result)."""
        return self._counts

    def dns_figures(self) -> dict | None:
        """The DNS cycle's figures as they were."""
        return self._figures


class FrozenPeers:
    """A :class:`~lbserver.mgmt.peers.PeerSource` as it was when taken."""

    def __init__(self, peers: PeerSource) -> None:
        self._status = peers.peers_status()

    def peers_status(self) -> dict[str, Any] | None:
        """The exchange with peer balancers."""
        return self._status


class FrozenSessionMap:
    """A :class:`~lbserver.mgmt.sessionmap.SessionMapSource` as it was when taken."""

    def __init__(self, source: SessionMapSource) -> None:
        self._status = source.session_map_status()

    def session_map_status(self) -> dict[str, Any] | None:
        """The HAProxy session map."""
        return self._status


class FrozenX2go:
    """An :class:`~lbserver.mgmt.x2go.X2goSource` as it was when taken."""

    def __init__(self, source: X2goSource) -> None:
        self._status = source.x2go_status()

    def x2go_status(self) -> dict[str, Any] | None:
        """The X2Go services."""
        return self._status


__all__ = ["FrozenAliases", "FrozenPeers", "FrozenSessionMap", "FrozenView", "FrozenX2go"]
