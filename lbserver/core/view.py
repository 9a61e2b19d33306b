"""What the outer layers may see of the balancer core, and what they may ask of it.

The terminal service, the DNS arbiter and the management service never touch
:class:`~lbserver.core.balancer.Balancer` itself: they read the core through
:class:`BalancerView` and act through :class:`AdminActions`, and the
composition root (:mod:`lbserver.daemon`) hands them the objects that
implement both. Everything a view returns is either immutable (snapshots,
configs) or a copy, so a reader on another thread never sees half an update.
"""

from __future__ import annotations

from typing import Mapping, Protocol

from lbserver.config import ServerConfig
from lbserver.core.counters import CycleInfo, DurationHistogram
from lbserver.core.history import History
from lbserver.core.selection import Snapshot


class UnknownNode(LookupError):
    """An admin action named a node the configuration does not have."""

    def __init__(self, node: str) -> None:
        super().__init__(node)
        self.node = node

    def __str__(self) -> str:
        return f"no such node: {self.node}"


class ReloadRefused(Exception):
    """A reload was asked for, but the new file does not load (the running configuration stays)."""


class BalancerView(Protocol):
    """Read-only access to the running balancer."""

    @property
    def config(self) -> ServerConfig:
        """The configuration in force."""

    @property
    def snapshot(self) -> Snapshot:
        """The snapshot of the last poll cycle (or of the last drain or reload)."""

    @property
    def started_at(self) -> float:
        """When the balancer started, seconds since the epoch."""

    @property
    def last_cycle(self) -> CycleInfo | None:
        """The last completed poll cycle, None before the first."""

    @property
    def history(self) -> History:
        """Recent weights and health per node (the dashboard's graphs)."""

    @property
    def poll_histogram(self) -> DurationHistogram:
        """Durations of all poll cycles so far."""

    def pick_counts(self) -> Mapping[str, int]:
        """Terminals sent to each node since start."""

    def consecutive_failures(self, node: str) -> int:
        """Polls of ``node`` failed in a row (0 when the last one succeeded)."""

    def response_counts(self) -> Mapping[int, int]:
        """Terminal requests answered, by HTTP status."""

    def sessions_now(self, node: str) -> int:
        """``node``'s sessions: its agent's count plus the terminals sent there for a new one since its figures."""

    def group_errors(self) -> Mapping[str, str]:
        """Why each group read at each poll (another balancer, Prometheus) could not be read at the last poll."""


class SharedState(Protocol):
    """What balancers serving the same terminals share (:mod:`lbserver.peers`)."""

    def count_remote_picks(self, picks: Mapping[str, int]) -> None:
        """Weigh terminals a peer sent to these nodes as if sent here, until their figures show them."""

    def count_remote_homes(self, homes: Mapping[str, str]) -> None:
        """Take ``{user: node}`` a peer sent for new sessions as those users' homes, until the figures show them."""

    def drain_state(self) -> tuple[frozenset[str], float]:
        """The admin-drained nodes and when that set last changed (seconds since the epoch)."""

    def adopt_drains(self, nodes: frozenset[str], changed_at: float, source: str) -> bool:
        """Take a peer's drained set when it is newer than ours; True when ours changed."""


class AdminActions(Protocol):
    """The admin's levers on a running balancer."""

    def set_drained(self, node: str, drained: bool) -> bool:
        """Drain (or enable) ``node``; True when that changed something. Raises :class:`UnknownNode`."""

    async def request_reload(self) -> str:
        """Re-read the configuration file (its path is returned). Raises :class:`ReloadRefused`."""


__all__ = ["AdminActions", "BalancerView", "ReloadRefused", "SharedState", "UnknownNode"]
