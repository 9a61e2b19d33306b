"""Snapshots of the cluster and the choice of a server for each terminal.

A :class:`Snapshot` is built once per poll cycle from the config and the
poll records and never changes afterwards; the terminal service, the DNS
arbiter and the status pages all read the same one. A :class:`Selector`
holds the current snapshot plus what happened since it was built (the
terminals already sent to each node), and answers :meth:`Selector.pick`.

Threading: a Selector is meant to be used from one thread (the daemon's
asyncio loop), so it takes no locks; :meth:`Selector.install` replaces the
whole per-snapshot state in one assignment. Snapshots themselves are
immutable and may be shared freely.
"""

from __future__ import annotations

import bisect
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Collection, Mapping

from lbserver.config import Require, Rule, ServerConfig
from lbserver.core.fenwick import Fenwick
from lbserver.core.health import NodeRecord
from lbserver.core.weights import Compensation, RuleResult, compensates, compensation, evaluate

REASONS = ("weighted", "user", "overflow", "last-good")
ALGORITHMS = ("weighted", "p2c")


class UnknownGroup(LookupError):
    """A pick or ranking named a group the current snapshot does not have."""

    def __init__(self, group: str | None) -> None:
        super().__init__(group)
        self.group = group

    def __str__(self) -> str:
        return f"unknown group {self.group!r}"


class EmptyGroup(UnknownGroup):
    """A group with no node at all: there is nothing to answer.

    A kind of UnknownGroup so that a service answering "no such group" for
    the one answers the same for the other.
    """

    def __str__(self) -> str:
        return f"group {self.group!r} has no nodes"


@dataclass(frozen=True)
class NodeView:
    """One node as seen by a snapshot.

    ``healthy`` is the whole verdict: the agent is up (see
    :mod:`lbserver.core.health`) *and* its variables pass the rules; ``reasons``
    says why not. ``weight`` is 0 for an unhealthy node. A node is
    selectable when healthy and not drained. ``drained`` is true for a drain
    by an admin (lbctl) or at the source (its agent reports ``DRAINED``);
    ``drained_by`` says which (``"admin"``, ``"agent"``) and
    ``drain_reason`` is the agent's ``DRAIN_REASON``.
    """

    name: str
    healthy: bool
    weight: float
    size: float
    reasons: tuple[str, ...] = ()
    drained: bool = False
    drained_by: tuple[str, ...] = ()
    drain_reason: str = ""
    variables: Mapping = field(default_factory=dict)
    users: frozenset = frozenset()
    up: bool | None = None
    error: str | None = None
    last_success: float | None = None
    rules: tuple[RuleResult, ...] = ()
    """Each rule's figures on this node (empty until the agent answered once)."""

    @property
    def selectable(self) -> bool:
        """May new terminals be sent here?"""
        return self.healthy and not self.drained


def _rank_key(v: NodeView) -> tuple:
    return (-v.weight, -v.size, v.name)


class Snapshot:
    """The state of every node and group at one poll cycle (immutable)."""

    __slots__ = ("nodes", "groups", "default_group", "built_at", "rules", "requires", "unreported", "_users")

    def __init__(self, nodes: Mapping[str, NodeView], groups: Mapping[str, tuple[str, ...]],
                 default_group: str, built_at: float, rules: tuple[Rule, ...] = (),
                 requires: tuple[Require, ...] = ()) -> None:
        self.nodes: Mapping[str, NodeView] = MappingProxyType(dict(nodes))
        self.groups: Mapping[str, tuple[str, ...]] = MappingProxyType({g: tuple(m) for g, m in groups.items()})
        self.default_group = default_group
        self.built_at = built_at
        self.rules = tuple(rules)
        self.requires = tuple(requires)
        users: dict[str, list[str]] = {}
        for view in self.nodes.values():
            for u in view.users:
                users.setdefault(u, []).append(view.name)
        self._users = MappingProxyType({u: tuple(ns) for u, ns in users.items()})
        reporting = [v.variables for v in self.nodes.values() if v.up]
        self.unreported: tuple[str, ...] = tuple(sorted(
            r.name for r in self.rules if reporting and not any(r.name in vs for vs in reporting)))
        """Rule variables that no node's agent reports (a typo, or an agent profile missing everywhere)."""

    @classmethod
    def build(cls, config: ServerConfig, records: Mapping[str, NodeRecord],
              drained: frozenset[str] = frozenset(), now: float | None = None) -> Snapshot:
        """Weigh every configured node from its poll record.

        A node without a record counts as never polled. ``drained`` names
        nodes an admin took out of rotation (they keep their figures); a
        node whose agent reports ``DRAINED`` is drained as well.
        """
        views: dict[str, NodeView] = {}
        for name in config.nodes:
            views[name] = node_view(name, records.get(name), config.rules, config.requires,
                                    name in drained)
        groups = {g.name: g.nodes for g in config.groups.values()}
        return cls(views, groups, config.default_group, time.time() if now is None else now,
                   config.rules, config.requires)

    def group_nodes(self, group: str | None = None) -> tuple[str, ...]:
        """The node names of ``group`` (default group when None), in file order."""
        g = self.default_group if group is None else group
        try:
            return self.groups[g]
        except KeyError:
            raise UnknownGroup(g) from None

    def ranked(self, group: str | None = None) -> list[NodeView]:
        """Selectable nodes of ``group``, best weight first (ties: bigger, then by name)."""
        views = [self.nodes[n] for n in self.group_nodes(group)]
        return sorted((v for v in views if v.selectable), key=_rank_key)

    def nodes_with_user(self, user: str) -> tuple[str, ...]:
        """Nodes whose agent reports a session of ``user`` (selectable or not)."""
        return self._users.get(user, ())


def source_drain(variables: Mapping) -> str | None:
    """The agent's ``DRAIN_REASON`` when it reports ``DRAINED`` = true (drain at the source), else None."""
    if variables.get("DRAINED") is not True:
        return None
    reason = variables.get("DRAIN_REASON")
    return reason.strip() if isinstance(reason, str) else ""


def node_view(name: str, rec: NodeRecord | None, rules: tuple[Rule, ...],
              requires: tuple[Require, ...], drained: bool = False) -> NodeView:
    """Weigh one node from its poll record (None: never polled); ``drained``: by an admin."""
    state = rec.last_state if rec is not None else None
    variables: Mapping = MappingProxyType(dict(state["variables"])) if state else MappingProxyType({})
    users = frozenset(state["users"]) if state else frozenset()
    verdict = evaluate(variables, rules, requires)
    up = rec.up if rec is not None else None
    error = rec.last_error if rec is not None else None
    # Without any reply the rules have nothing to judge: say only why there is none.
    reasons = list(verdict.reasons) if state else []
    if up is None:
        reasons.insert(0, "not polled yet")
    elif not up:
        reasons.insert(0, f"agent down: {error}" if error else "agent down")
    healthy = bool(up) and verdict.healthy
    # The agent's last word stands, as an admin drain does, while it does not answer.
    at_source = source_drain(variables)
    drained_by = (("admin",) if drained else ()) + (("agent",) if at_source is not None else ())
    return NodeView(name=name, healthy=healthy, weight=verdict.weight if healthy else 0.0,
                    size=verdict.size, reasons=tuple(reasons), drained=bool(drained_by),
                    drained_by=drained_by, drain_reason=at_source or "",
                    variables=variables, users=users, up=up, error=error,
                    last_success=rec.last_success if rec is not None else None,
                    rules=verdict.rules if state else ())


@dataclass(frozen=True)
class Pick:
    """The answer to one terminal: which node, and why (one of :data:`REASONS`)."""

    node: str
    reason: str
    group: str = ""
    new_session: bool = True
    """Whether the terminal opens a new session there (not a return to its own, nor a last resort)."""


class _GroupState:
    """Per-group sampling structures over the group's selectable nodes."""

    __slots__ = ("names", "tree", "cum_sizes", "sizes")

    def __init__(self, views: list[NodeView]) -> None:
        self.names = [v.name for v in views]
        self.tree = Fenwick(v.weight for v in views)
        self.sizes = [v.size for v in views]
        acc, cum = 0.0, []
        for s in self.sizes:
            acc += s
            cum.append(acc)
        self.cum_sizes = cum

    def by_size(self, rng: random.Random) -> int:
        """An index drawn in proportion to size (the overflow rule)."""
        i = bisect.bisect_right(self.cum_sizes, rng.random() * self.cum_sizes[-1])
        return min(i, len(self.names) - 1)


class Selector:
    """Weighted-random choice over the current snapshot, with per-session compensation.

    After each pick the chosen node's count of terminals sent since the
    snapshot grows by one and, when a rule has ``per-session``, its weight
    is recomputed with that many extra sessions and updated in every group
    holding it, so a login storm between two polls spreads out instead of
    piling onto the node that looked emptiest at the last poll.

    ``algorithm``: ``"weighted"`` (default: one weighted-random draw) or
    ``"p2c"`` (two weighted draws, keep the one with more free capacity per
    unit of size; sharper, see the storm simulator).
    """

    def __init__(self, rng: random.Random | None = None, algorithm: str = "weighted") -> None:
        if algorithm not in ALGORITHMS:
            raise ValueError(f"unknown algorithm {algorithm!r}; expected one of {', '.join(ALGORITHMS)}")
        self._rng = rng or random.Random()
        self._algorithm = algorithm
        self._snapshot: Snapshot | None = None
        self._groups: dict[str, _GroupState] = {}
        self._members: dict[str, list[tuple[_GroupState, int]]] = {}
        self._pending: Counter[str] = Counter()
        self._weights: dict[str, float] = {}
        self._compensation: dict[str, Compensation] = {}
        self._last_good: dict[str, str] = {}
        self._counts: Counter[str] = Counter()

    @property
    def snapshot(self) -> Snapshot | None:
        """The snapshot in force (None before the first install)."""
        return self._snapshot

    def install(self, snapshot: Snapshot, refreshed: Collection[str] | None = None) -> None:
        """Put a new snapshot in force.

        Nodes in ``refreshed`` (all when None) bring new figures, which
        include the terminals sent so far: their counts restart. Other nodes
        (a failed poll, or a rebuild after a drain) keep their counts, which
        still weigh on them.
        """
        groups: dict[str, _GroupState] = {}
        members: dict[str, list[tuple[_GroupState, int]]] = {}
        last_good = {g: n for g, n in self._last_good.items()
                     if n in snapshot.groups.get(g, ())}
        for g, names in snapshot.groups.items():
            ranked = snapshot.ranked(g)
            if ranked:
                last_good[g] = ranked[0].name
            views = [snapshot.nodes[n] for n in names if snapshot.nodes[n].selectable]
            state = _GroupState(views)
            groups[g] = state
            for i, v in enumerate(views):
                members.setdefault(v.name, []).append((state, i))
        weights = {n: v.weight for n, v in snapshot.nodes.items()}
        comp = {n: compensation(snapshot.nodes[n].variables, snapshot.rules) for n in members} \
            if compensates(snapshot.rules) else {}
        pending = Counter() if refreshed is None else Counter(
            {n: c for n, c in self._pending.items() if n in snapshot.nodes and n not in refreshed})
        for node, count in pending.items():
            if node in comp:
                w = comp[node].weight(count)
                weights[node] = w
                for state, i in members[node]:
                    state.tree.set(i, w)
        # Swap everything at once so a pick never sees half of each snapshot.
        (self._snapshot, self._groups, self._members, self._pending, self._weights,
         self._compensation, self._last_good) = (
            snapshot, groups, members, pending, weights, comp, last_good)

    def pick(self, group: str | None = None, user: str | None = None) -> Pick:
        """Choose a node of ``group`` (the default group when None) for a new terminal.

        Raises UnknownGroup for a group the snapshot does not know and
        EmptyGroup for a group without nodes; otherwise always answers.
        """
        snap = self._snapshot
        if snap is None:
            raise RuntimeError("no snapshot installed yet")
        g = snap.default_group if group is None else group
        state = self._groups.get(g)
        if state is None:
            raise UnknownGroup(g)
        if user is not None:
            node = self._user_node(snap, g, user)
            if node is not None:
                return self._done(g, node, "user", new_session=False)
        if not state.names:
            node = self._last_good.get(g)
            if node is None:
                members = snap.groups[g]
                if not members:
                    raise EmptyGroup(g)
                node = members[0]
            return self._done(g, node, "last-good", new_session=False)
        i = state.tree.sample(self._rng)
        if i is None:
            return self._done(g, state.names[state.by_size(self._rng)], "overflow")
        if self._algorithm == "p2c":
            j = state.tree.sample(self._rng)
            if j is not None and j != i and self._free(state, j) > self._free(state, i):
                i = j
        return self._done(g, state.names[i], "weighted")

    @staticmethod
    def _free(state: _GroupState, i: int) -> float:
        # Weight per unit of size: the node's free capacity whatever its size.
        return state.tree[i] / state.sizes[i]

    def _user_node(self, snap: Snapshot, group: str, user: str) -> str | None:
        # A drain stops new sessions only: a user going back to his own session
        # may, so a drained node of the group counts as long as it is healthy.
        members = snap.groups[group]
        candidates = [n for n in snap.nodes_with_user(user) if n in members and snap.nodes[n].healthy]
        if not candidates:
            return None
        return max(candidates, key=lambda n: (snap.nodes[n].selectable, self._weights.get(n, 0.0), n))

    def _done(self, group: str, node: str, reason: str, new_session: bool = True) -> Pick:
        self._counts[node] += 1
        if reason != "last-good":
            self._last_good[group] = node
        if new_session:
            self._pending[node] += 1
            comp = self._compensation.get(node)
            if comp is not None:
                self._recompute(node, comp)
        return Pick(node=node, reason=reason, group=group, new_session=new_session)

    def add_pending(self, node: str, count: int = 1) -> bool:
        """Count ``count`` terminals sent to ``node`` elsewhere (by a peer balancer) as if sent here.

        They weigh on the node until its next refreshed poll, like this
        balancer's own picks, but are not counted in :meth:`pick_counts`.
        Returns False for a node the snapshot does not know.
        """
        if self._snapshot is None or node not in self._snapshot.nodes:
            return False
        self._pending[node] += count
        comp = self._compensation.get(node)
        if comp is not None:
            self._recompute(node, comp)
        return True

    def _recompute(self, node: str, comp: Compensation) -> None:
        weight = comp.weight(self._pending[node])
        self._weights[node] = weight
        for state, i in self._members[node]:
            state.tree.set(i, weight)

    def pending(self) -> dict[str, int]:
        """Terminals sent to each node since the snapshot in force was built."""
        return dict(self._pending)

    def weight_now(self, node: str) -> float:
        """A node's weight including the terminals sent since the snapshot (0 if unknown)."""
        return self._weights.get(node, 0.0)

    def last_good(self) -> dict[str, str]:
        """Each group's last known good node."""
        return dict(self._last_good)

    def pick_counts(self) -> dict[str, int]:
        """Total picks per node since this Selector was created (for metrics)."""
        return dict(self._counts)


__all__ = ["ALGORITHMS", "EmptyGroup", "NodeView", "Pick", "REASONS", "Selector", "Snapshot",
           "UnknownGroup", "node_view", "source_drain"]
