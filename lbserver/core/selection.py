"""Snapshots of the cluster and the choice of a server for each terminal.

A :class:`Snapshot` is built once per poll cycle from the config and the
poll records and never changes afterwards; the terminal service, the DNS
arbiter and the status pages all read the same one. A :class:`Selector`
holds the current snapshot plus what happened since it was built (the
terminals already sent to each node), and answers :meth:`Selector.pick`.

Threading: a Selector is meant to be used from one thread (the daemon's
asyncio loop), so it takes no locks; :meth:`Selector.install` replaces the
whole per-snapshot state (one frozen object) in one assignment. A poll
cycle builds and prepares the next snapshot as jobs
(:meth:`Snapshot.build_job`, :meth:`Selector.prepare_job`) run in slices
of the loop's time (:mod:`lbserver.core.slicing`), and picks go on
meanwhile; :meth:`Selector.commit` then swaps it in at once.
Snapshots themselves are immutable and may be shared freely.
"""

from __future__ import annotations

import bisect
import math
import random
import time
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Callable, Iterable, Mapping, NamedTuple

from lbserver.config import Require, Rule, ServerConfig
from lbserver.config.settings import ALGORITHMS
from lbserver.core.fenwick import Fenwick
from lbserver.core.health import NodeRecord
from lbserver.core.sessions import (Home, PendingHomes, Session, at_limit, index_homes, node_sessions, return_home,
                                    session_count)
from lbserver.core.slicing import Job, run_whole
from lbserver.core.weights import Compensation, RuleResult, Verdict, compensation, evaluate, rule_lag

REASONS = ("weighted", "user", "overflow", "last-good")
DEFAULT_ALGORITHM = ALGORITHMS[0]
MAX_SAMPLE_AGE = 60.0
"""An agent's ``sampled_at`` is taken as the time of its figures when it is at most this many seconds
before the poll's reply (on this balancer's clock); otherwise, a clock that differs, the reply's time."""
FORGET_AFTER = 3600.0
"""Seconds after which a terminal no figures have shown stops counting (figures that never come)."""
NEGLIGIBLE = 0.01
"""A lagging rest smaller than this many terminals is dropped."""
BUCKET = 0.1
"""Terminals sent to a node within this many seconds are kept as one entry (dated by the last)."""


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
    sampled_at: float | None = None
    """When the figures were measured, on this balancer's clock (None: never polled); see :data:`MAX_SAMPLE_AGE`."""
    sessions: tuple[Session, ...] = ()
    """The users' sessions its agent reports (see :mod:`lbserver.core.sessions`)."""
    session_count: int = 0
    """Its sessions as its agent counts them (:func:`~lbserver.core.sessions.session_count`)."""
    max_sessions: int | None = None
    """Its ``max-sessions`` (None: no limit)."""

    @property
    def selectable(self) -> bool:
        """May new terminals be sent here?"""
        return self.healthy and not self.drained


def _rank_key(v: NodeView) -> tuple:
    return (-v.weight, -v.size, v.name)


class Snapshot:
    """The state of every node and group at one poll cycle (immutable)."""

    __slots__ = ("nodes", "groups", "default_group", "built_at", "rules", "requires", "unreported", "_homes",
                 "_members")

    def __init__(self, nodes: Mapping[str, NodeView], groups: Mapping[str, tuple[str, ...]],
                 default_group: str, built_at: float, rules: tuple[Rule, ...] = (),
                 requires: tuple[Require, ...] = ()) -> None:
        self.nodes: Mapping[str, NodeView] = MappingProxyType(dict(nodes))
        self.groups: Mapping[str, tuple[str, ...]] = MappingProxyType({g: tuple(m) for g, m in groups.items()})
        self._members = {g: frozenset(m) for g, m in self.groups.items()}  # membership tests per terminal
        self.default_group = default_group
        self.built_at = built_at
        self.rules = tuple(rules)
        self.requires = tuple(requires)
        self._homes = index_homes((v.name, v.sessions) for v in self.nodes.values())
        reporting = [v.variables for v in self.nodes.values() if v.up]
        self.unreported: tuple[str, ...] = tuple(sorted(
            r.name for r in self.rules if reporting and not any(r.name in vs for vs in reporting)))
        """Rule variables that no node's agent reports (a typo, or an agent profile missing everywhere)."""

    @classmethod
    def build(cls, config: ServerConfig, records: Mapping[str, NodeRecord],
              drained: frozenset[str] = frozenset(), now: float | None = None,
              weighings: dict[str, Weighing] | None = None) -> Snapshot:
        """Weigh every configured node from its poll record.

        A node without a record counts as never polled. ``drained`` names
        nodes an admin took out of rotation (they keep their figures); a
        node whose agent reports ``DRAINED`` is drained as well.

        ``weighings`` (kept by the caller from one build to the next) saves
        weighing again a node whose state and rules are the very objects
        of the last build; it is left holding this build's.
        """
        return run_whole(cls.build_job(config, records, drained, now, weighings))

    @classmethod
    def build_job(cls, config: ServerConfig, records: Mapping[str, NodeRecord],
                  drained: frozenset[str] = frozenset(), now: float | None = None,
                  weighings: dict[str, Weighing] | None = None) -> Job[Snapshot]:
        """:meth:`build` as a :class:`~lbserver.core.slicing.Job` over the configured nodes."""
        views: dict[str, NodeView] = {}
        rules, requires = config.rules, config.requires
        memo = weighings if weighings is not None else {}
        kept: dict[str, Weighing] = {}

        def weigh_nodes(names: Iterable[str]) -> None:
            for name in names:
                rec = records.get(name)
                state = rec.last_state if rec is not None else None
                w = memo.get(name)
                if w is None or w.state is not state or w.rules is not rules or w.requires is not requires:
                    w = weigh(state, rules, requires)
                kept[name] = w
                views[name] = node_view(name, rec, w, name in drained, config.nodes[name].max_sessions)

        def snapshot() -> Snapshot:
            if weighings is not None:
                weighings.clear()
                weighings.update(kept)
            groups = {g.name: g.nodes for g in config.groups.values()}
            return cls(views, groups, config.default_group, time.time() if now is None else now, rules, requires)

        return Job(config.nodes, weigh_nodes, snapshot)

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

    def members(self, group: str) -> frozenset[str]:
        """The node names of ``group``, as a set (KeyError for an unknown group)."""
        return self._members[group]

    def nodes_with_user(self, user: str) -> tuple[str, ...]:
        """Nodes whose agent reports a session of ``user`` (selectable or not)."""
        return tuple(dict.fromkeys(h.node for h in self.homes(user)))

    def homes(self, user: str) -> tuple[Home, ...]:
        """The sessions of ``user`` on every node, as :func:`~lbserver.core.sessions.return_home` takes them."""
        return self._homes.get(user, ())


def source_drain(variables: Mapping) -> str | None:
    """The agent's ``DRAIN_REASON`` when it reports ``DRAINED`` = true (drain at the source), else None."""
    if variables.get("DRAINED") is not True:
        return None
    reason = variables.get("DRAIN_REASON")
    return reason.strip() if isinstance(reason, str) else ""


class Weighing(NamedTuple):
    """What :func:`node_view` derives from one agent state under one rule set (pure, so it can be kept)."""

    state: dict | None
    rules: tuple[Rule, ...]
    requires: tuple[Require, ...]
    variables: Mapping
    users: frozenset
    verdict: Verdict
    sessions: tuple[Session, ...] = ()


def weigh(state: dict | None, rules: tuple[Rule, ...], requires: tuple[Require, ...]) -> Weighing:
    """Judge one validated agent ``state`` (None: no reply yet) under ``rules`` and ``requires``."""
    variables: Mapping = MappingProxyType(dict(state["variables"])) if state else MappingProxyType({})
    users = frozenset(state["users"]) if state else frozenset()
    return Weighing(state, rules, requires, variables, users, evaluate(variables, rules, requires),
                    node_sessions(state))


def node_view(name: str, rec: NodeRecord | None, weighing: Weighing, drained: bool = False,
              max_sessions: int | None = None) -> NodeView:
    """One node from its poll record (None: never polled) and :func:`weigh` of its state.

    ``drained``: by an admin; ``max_sessions``: its session limit (None: none).
    """
    state = weighing.state
    variables, users, verdict = weighing.variables, weighing.users, weighing.verdict
    up = rec.up if rec is not None else None
    error = rec.last_error if rec is not None else None
    if error is None and state:
        error = state.get("sessions_error")  # bad session entries left out: named, the node kept
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
                    rules=verdict.rules if state else (), sampled_at=figures_time(rec),
                    sessions=weighing.sessions, session_count=session_count(state),
                    max_sessions=max_sessions)


def figures_time(rec: NodeRecord | None) -> float | None:
    """When ``rec``'s figures were measured, on this balancer's clock (None without any reply).

    The agent's ``sampled_at`` when it is plausible (at most
    :data:`MAX_SAMPLE_AGE` seconds before the reply arrived), else the time
    the reply arrived: an agent whose clock is ahead or far behind must not
    make terminals count forever, nor stop counting too soon.
    """
    if rec is None or rec.last_state is None or rec.last_success is None:
        return None
    sampled = rec.last_state.get("sampled_at")
    if isinstance(sampled, (int, float)) and rec.last_success - MAX_SAMPLE_AGE <= sampled <= rec.last_success:
        return float(sampled)
    return rec.last_success


class Pick(NamedTuple):
    """The answer to one terminal: which node, and why (one of :data:`REASONS`).

    A named tuple rather than a frozen dataclass: one is made per terminal,
    on the hot path, and a tuple is made in half the time.
    """

    node: str
    reason: str
    group: str = ""
    new_session: bool = True
    """Whether the terminal opens a new session there (not a return to its own, nor a last resort)."""


# Pick(...) goes through a generated Python __new__; the tuple's own costs a third of that, per terminal.
_new_pick = tuple.__new__


class _GroupState:
    """Per-group sampling structures over the group's selectable nodes.

    ``tree`` holds the weights (compensated), ``loads`` each node's
    projected load once one more terminal weighs on it, in the same order.
    Filled a node at a time by :meth:`add`, then :meth:`seal` builds the
    tree (in one go: it is O(n)).
    """

    __slots__ = ("names", "tree", "cum_sizes", "loads", "_weights")

    def __init__(self) -> None:
        self.names: list[str] = []
        self.loads: list[float] = []
        self.cum_sizes: list[float] = []
        self._weights: list[float] = []
        self.tree = Fenwick()

    def add(self, view: NodeView, load: float) -> int:
        """Take one more selectable node, whose projected load is ``load``; return its index."""
        cum = self.cum_sizes
        cum.append((cum[-1] if cum else 0.0) + view.size)
        self.names.append(view.name)
        self.loads.append(load)
        self._weights.append(view.weight)
        return len(cum) - 1

    def seal(self) -> None:
        """Build the tree of the weights added."""
        self.tree = Fenwick(self._weights)
        self._weights = []

    def by_size(self, rng: random.Random) -> int:
        """An index drawn in proportion to size (weighted-random's overflow rule)."""
        i = bisect.bisect_right(self.cum_sizes, rng.random() * self.cum_sizes[-1])
        return min(i, len(self.names) - 1)


class _Unseen:
    """The terminals sent to one node that its figures do not show yet, or only in part.

    ``times`` and ``counts`` (in time order) hold the terminals sent after
    the node's figures were sampled: its figures cannot show them, so they
    count in full (``fresh`` is their sum). Once newer figures are sampled
    after them, a variable that shows a session at once (lag 0) shows them
    whole, and they no longer count on its rules; a lagging average
    (lag > 0) shows ``1 - exp(-t/lag)`` of each, ``t`` being how long before
    the figures it was sent, so the rest, ``carried[lag]``, still counts on
    the rules of that lag. The rest is kept as of the figures time ``at``:
    the next figures, ``d`` seconds later, show all but ``exp(-d/lag)`` of
    it. Terminals sent within :data:`BUCKET` seconds share one entry, dated
    by the last of them, so a storm costs a bounded list.
    """

    __slots__ = ("times", "counts", "fresh", "carried", "at")

    def __init__(self) -> None:
        self.times: list[float] = []
        self.counts: list[int] = []
        self.fresh = 0
        self.carried: dict[float, float] = {}
        self.at: float | None = None

    def add(self, now: float, count: int) -> None:
        times = self.times
        if times and now - BUCKET <= times[-1] <= now:
            times[-1] = now
            self.counts[-1] += count
        else:
            times.append(now)
            self.counts.append(count)
        self.fresh += count

    def settle(self, figures_at: float | None, lags: frozenset[float], now: float) -> None:
        """Account for figures sampled at ``figures_at`` (None: the node never answered)."""
        times, counts = self.times, self.counts
        if figures_at is None:
            gone = bisect.bisect_left(times, now - FORGET_AFTER)
            if gone:
                del times[:gone], counts[:gone]
                self.fresh = sum(counts)
            return
        i = len(times)
        while i and times[i - 1] > now:  # the clock went back: what was sent "later" was sent by now
            i -= 1
            times[i] = now
        if self.at is not None and figures_at > self.at:
            carried = {lag: m * math.exp((self.at - figures_at) / lag)
                       for lag, m in self.carried.items() if lag in lags}
        else:
            carried = {lag: m for lag, m in self.carried.items() if lag in lags}
        shown = bisect.bisect_left(times, max(figures_at, now - FORGET_AFTER))
        if shown:
            oldest = bisect.bisect_left(times, now - FORGET_AFTER, 0, shown)
            for lag in lags:
                carried[lag] = carried.get(lag, 0.0) + sum(
                    counts[k] * math.exp((times[k] - figures_at) / lag) for k in range(oldest, shown))
            del times[:shown], counts[:shown]
            self.fresh = sum(counts)
        self.carried = {lag: m for lag, m in carried.items() if m >= NEGLIGIBLE}
        self.at = figures_at if self.at is None else max(self.at, figures_at)

    def empty(self) -> bool:
        return not self.times and not self.carried


class Prepared(NamedTuple):
    """A snapshot made ready for a :class:`Selector` (see :meth:`Selector.prepare_job`)."""

    snapshot: Snapshot
    groups: dict[str, _GroupState]
    members: dict[str, list[tuple[_GroupState, int]]]
    base: dict[str, tuple[Mapping, tuple[Rule, ...], Compensation]]
    best: dict[str, str]  # per group, its best node: the last good one from now on


@dataclass(frozen=True, slots=True)
class _State:
    """What a :class:`Selector`'s picks read, for one snapshot: built aside, installed by one assignment.

    Frozen: it is replaced whole, never attribute by attribute, so a pick
    sees all of one snapshot's state or all of the next's, never a mix.
    What it holds does change with each pick (the terminals sent, the
    weights and loads they make), and :meth:`Selector.commit` carries that
    over to the next state.
    """

    snapshot: Snapshot | None
    groups: dict[str, _GroupState]
    members: dict[str, list[tuple[_GroupState, int]]]  # node -> its place in each group's sampling structures
    unseen: dict[str, _Unseen]
    weights: dict[str, float]  # node -> weight with the terminals its figures do not show
    compensation: dict[str, Compensation]  # selectable node -> its compensation, carrying what lagging rules miss
    base: dict[str, tuple[Mapping, tuple[Rule, ...], Compensation]]  # the same as figures and rules gave it
    last_good: dict[str, str]
    limits: dict[str, int]  # selectable node with a max-sessions -> it
    full: set[str]  # ... those at it: weight 0 in the trees, passed over in an overflow
    below: dict[str, tuple[list[int], list[float]] | None]  # group -> see Selector._below_limit, filled on demand


class Selector:
    """The choice of a node for each terminal over the current snapshot, with per-session compensation.

    After each pick the chosen node's count of terminals not yet shown by its
    figures grows by one and, when a rule has ``per-session``, its weight and
    projected load are recomputed with that many extra sessions and updated
    in every group holding it, so a login storm between two polls spreads
    out instead of piling onto the node that looked emptiest at the last
    poll. A terminal counts until the node's figures can show it: in full
    until figures sampled after it arrive, then, on rules whose variable is
    a lagging average (see :func:`~lbserver.core.weights.rule_lag`), for the
    part that average does not show yet (:class:`_Unseen`).

    ``algorithm`` (one of :data:`ALGORITHMS`):

    * ``"two-choices"`` (the default): two nodes drawn in proportion to
      their weight, keeping the one with the lower projected load once this
      terminal weighs on it (:meth:`Compensation.load
      <lbserver.core.weights.Compensation.load>`); once every node is full,
      two nodes drawn alike, same rule. O(log n) per pick.
    * ``"weighted-random"``: one node drawn in proportion to its weight;
      once every node is full, one in proportion to its size.

    A node with ``max-sessions`` whose sessions (its agent's count plus the
    terminals sent since its figures) reach it weighs 0 in the draw and is
    passed over in an overflow, until a snapshot shows room again. A
    terminal naming a user goes back to his session first
    (:meth:`pick`).

    ``clock`` gives the time of each pick, on the clock of the snapshots'
    ``sampled_at`` (wall-clock seconds; the simulator passes its own).
    """

    def __init__(self, rng: random.Random | None = None, algorithm: str = DEFAULT_ALGORITHM,
                 clock: Callable[[], float] = time.time) -> None:
        self._rng = rng or random.Random()
        self.algorithm = algorithm
        self._clock = clock
        self._state = _State(None, {}, {}, {}, {}, {}, {}, {}, {}, set(), {})
        self._counts: dict[str, int] = {}  # a plain dict: a Counter's += costs twice as much per pick
        self._pending_homes = PendingHomes()

    @property
    def algorithm(self) -> str:
        """How nodes are chosen (one of :data:`ALGORITHMS`); may be changed at any time (a reload)."""
        return self._algorithm

    @algorithm.setter
    def algorithm(self, algorithm: str) -> None:
        if algorithm not in ALGORITHMS:
            raise ValueError(f"unknown algorithm {algorithm!r}; expected one of {', '.join(ALGORITHMS)}")
        self._algorithm = algorithm
        self._two = algorithm == "two-choices"

    @property
    def snapshot(self) -> Snapshot | None:
        """The snapshot in force (None before the first install)."""
        return self._state.snapshot

    def install(self, snapshot: Snapshot) -> None:
        """Put a new snapshot in force.

        Each node's figures (its ``sampled_at``) say which of the terminals
        sent to it they may show: those sent earlier stop counting, or, on
        a lagging rule, count for what the average does not show yet; those
        sent later keep counting in full. A rebuild without new figures (a
        failed poll, a drain, a reload) changes no count.
        """
        self.commit(run_whole(self.prepare_job(snapshot)))

    def prepare_job(self, snapshot: Snapshot) -> Job[Prepared]:
        """The work of :meth:`install` that picks do not change, as a :class:`~lbserver.core.slicing.Job`.

        It goes through each group's members. Picks may go on while it is
        run in slices (they use the snapshot in force); :meth:`commit` then
        accounts for every terminal sent until then.
        """
        nodes, rules = snapshot.nodes, snapshot.rules
        known = self._state.base
        groups = {g: _GroupState() for g in snapshot.groups}
        members: dict[str, list[tuple[_GroupState, int]]] = {}
        base: dict[str, tuple[Mapping, tuple[Rule, ...], Compensation]] = {}
        best: dict[str, NodeView] = {}  # what snapshot.ranked(g)[0] is, without the sort

        def base_of(view: NodeView) -> tuple[Mapping, tuple[Rule, ...], Compensation]:
            k = known.get(view.name)
            if k is not None and k[0] is view.variables and k[1] is rules:
                return k  # the same figures under the same rules (see Snapshot.build's weighings)
            return view.variables, rules, compensation(view.variables, rules)

        def take(pairs: Iterable[tuple[str, str]]) -> None:
            for g, name in pairs:
                view = nodes[name]
                if not view.selectable:
                    continue
                if name not in base:
                    base[name] = base_of(view)
                state = groups[g]
                load = base[name][2].load(1)  # with no terminal pending; commit redoes the nodes that have some
                members.setdefault(name, []).append((state, state.add(view, load)))
                if g not in best or _rank_key(view) < _rank_key(best[g]):
                    best[g] = view

        def prepared() -> Prepared:
            for state in groups.values():
                state.seal()
            return Prepared(snapshot, groups, members, base, {g: v.name for g, v in best.items()})

        return Job(((g, n) for g, names in snapshot.groups.items() for n in names), take, prepared)

    def commit(self, prepared: Prepared) -> None:
        """Put a prepared snapshot in force, with the terminals sent to each node until now."""
        snapshot, members, base = prepared.snapshot, prepared.members, prepared.base
        old = self._state
        now = self._clock()
        last_good = {g: n for g, n in old.last_good.items() if g in snapshot.groups and n in snapshot.members(g)}
        last_good.update(prepared.best)
        lags = frozenset(lag for lag in (rule_lag(r) for r in snapshot.rules if r.per_session > 0) if lag > 0)
        unseen: dict[str, _Unseen] = {}
        for name, u in old.unseen.items():
            view = snapshot.nodes.get(name)
            if view is None:
                continue
            u.settle(view.sampled_at, lags, now)
            if not u.empty():
                unseen[name] = u
        weights = {n: v.weight for n, v in snapshot.nodes.items()}
        comp = {node: known[2] for node, known in base.items()}
        for node, u in unseen.items():
            c = comp.get(node)
            if c is None or not c.terms:
                continue
            c = comp[node] = c.carrying(u.carried)
            weight = weights[node] = c.weight(u.fresh)
            load = c.load(u.fresh + 1)
            for state, i in members[node]:
                if weight != state.tree[i]:
                    state.tree.set(i, weight)
                state.loads[i] = load
        limits = {n: v.max_sessions for n, v in snapshot.nodes.items() if v.max_sessions is not None and n in members}
        full = {n for n, limit in limits.items()
                if at_limit(snapshot.nodes[n].session_count + (unseen[n].fresh if n in unseen else 0), limit)}
        for node in full:
            for state, i in members[node]:
                state.tree.set(i, 0.0)
        self._pending_homes.settle(lambda n: snapshot.nodes[n].sampled_at)
        self._state = _State(snapshot, prepared.groups, members, unseen, weights, comp, base, last_good, limits, full, {})

    def pick(self, group: str | None = None, user: str | None = None) -> Pick:
        """Choose a node of ``group`` (the default group when None) for a new terminal.

        A ``user`` with a session in the group goes back to it, by
        :func:`~lbserver.core.sessions.return_home` (his sessions in the
        snapshot, and the node he was last sent to for a new session until
        its figures can show it); otherwise, once placed, that node is his.

        Raises UnknownGroup for a group the snapshot does not know and
        EmptyGroup for a group without nodes; otherwise always answers.
        """
        cur = self._state
        snap = cur.snapshot
        if snap is None:
            raise RuntimeError("no snapshot installed yet")
        g = snap.default_group if group is None else group
        state = cur.groups.get(g)
        if state is None:
            raise UnknownGroup(g)
        if user is not None:
            node = self._user_node(cur, g, user)
            if node is not None:
                return self._returning(cur, g, node, "user")
        if not state.names:
            node = cur.last_good.get(g)
            if node is None:
                members = snap.groups[g]
                if not members:
                    raise EmptyGroup(g)
                node = members[0]
            return self._returning(cur, g, node, "last-good")
        rng = self._rng
        if self._two:
            pair = state.tree.sample_pair(rng)
            if pair is None:
                below = self._below_limit(cur, g, state)
                if below is None:
                    n = len(state.names)
                    i, j, reason = int(rng.random() * n), int(rng.random() * n), "overflow"
                else:
                    ks = below[0]
                    i, j, reason = ks[int(rng.random() * len(ks))], ks[int(rng.random() * len(ks))], "overflow"
            else:
                (i, j), reason = pair, "weighted"
            loads = state.loads
            if loads[j] < loads[i]:
                i = j
        else:
            i, reason = state.tree.sample(rng), "weighted"
            if i is None:
                below = self._below_limit(cur, g, state)
                if below is None:
                    i, reason = state.by_size(rng), "overflow"
                else:
                    i, reason = rng.choices(below[0], below[1])[0], "overflow"
        # Counted as _returning counts, and weighing on the node: written out, as every new terminal comes here.
        node = state.names[i]
        counts = self._counts
        counts[node] = counts.get(node, 0) + 1
        cur.last_good[g] = node
        now = self._clock()
        self._add(cur, node, 1, now)
        if user is not None:
            self._pending_homes.add(user, node, now)
        return _new_pick(Pick, (node, reason, g, True))

    def _user_node(self, cur: _State, group: str, user: str) -> str | None:
        """The user's home in ``group`` by :func:`~lbserver.core.sessions.return_home`, or None."""
        snap = cur.snapshot
        found = snap.homes(user)
        pending = self._pending_homes.get(user)
        if pending is not None:
            found = (*found, pending)
        if not found:
            return None
        # A drain and a session limit stop new sessions only: a user going back to his own
        # session may, so such a node of the group counts as long as it is healthy.
        members, nodes, weights = snap.members(group), snap.nodes, cur.weights
        return return_home(found, lambda n: n in members and nodes[n].healthy,
                           lambda n: (nodes[n].selectable, weights.get(n, 0.0)))

    @staticmethod
    def _below_limit(cur: _State, group: str, state: _GroupState) -> tuple[list[int], list[float]] | None:
        """The places in ``state`` of the nodes below their session limit, with their sizes, for an overflow.

        None when none of the group is at its limit (draw among all, as
        always) or every one is: then the terminal still gets an answer, an
        overflow among all, as when every node is at capacity.
        """
        if not cur.full:
            return None
        if group not in cur.below:
            full, cum = cur.full, state.cum_sizes
            ks = [k for k, n in enumerate(state.names) if n not in full]
            cur.below[group] = (ks, [cum[k] - (cum[k - 1] if k else 0.0) for k in ks]) \
                if ks and len(ks) < len(state.names) else None
        return cur.below[group]


    def _returning(self, cur: _State, group: str, node: str, reason: str) -> Pick:
        """A pick that opens no new session: back to the user's own, or a last resort."""
        counts = self._counts
        counts[node] = counts.get(node, 0) + 1
        if reason != "last-good":
            cur.last_good[group] = node
        return _new_pick(Pick, (node, reason, group, False))

    def add_pending(self, node: str, count: int = 1) -> bool:
        """Count ``count`` terminals sent to ``node`` elsewhere (by a peer balancer) as if sent here now.

        They weigh on the node until its figures can show them, like this
        balancer's own picks, but are not counted in :meth:`pick_counts`.
        Returns False for a node the snapshot does not know.
        """
        cur = self._state
        if cur.snapshot is None or node not in cur.snapshot.nodes:
            return False
        if count > 0:
            self._add(cur, node, count, self._clock())
        return True

    def add_home(self, user: str, node: str) -> bool:
        """Take ``node`` as ``user``'s home (a peer sent him there for a new session) until its figures can show it.

        Returns False for a node the snapshot does not know.
        """
        snapshot = self._state.snapshot
        if snapshot is None or node not in snapshot.nodes:
            return False
        self._pending_homes.add(user, node, self._clock())
        return True

    def sessions_now(self, node: str) -> int:
        """A node's sessions: its agent's count plus the terminals sent there for a new one since its figures."""
        cur = self._state
        view = cur.snapshot.nodes.get(node) if cur.snapshot is not None else None
        if view is None:
            return 0
        u = cur.unseen.get(node)
        return view.session_count + (u.fresh if u is not None else 0)

    def _add(self, cur: _State, node: str, count: int, now: float) -> None:
        u = cur.unseen.get(node)
        if u is None:
            u = cur.unseen[node] = _Unseen()
        u.add(now, count)
        comp = cur.compensation.get(node)
        if comp is not None and comp.terms:
            weight, load = comp.state(u.fresh)
            cur.weights[node] = weight
            for state, i in cur.members[node]:
                state.tree.set(i, weight)
                state.loads[i] = load
        limit = cur.limits.get(node)
        if limit is not None and at_limit(cur.snapshot.nodes[node].session_count + u.fresh, limit):
            if node not in cur.full:
                cur.full.add(node)
                cur.below.clear()
            for state, i in cur.members[node]:
                state.tree.set(i, 0.0)

    def pending(self) -> dict[str, int]:
        """Terminals sent to each node after its figures were sampled (they count in full)."""
        return {n: u.fresh for n, u in self._state.unseen.items() if u.fresh}

    def carried(self) -> dict[str, dict[float, float]]:
        """Per node and lag, the part of earlier terminals its lagging averages do not show yet."""
        return {n: dict(u.carried) for n, u in self._state.unseen.items() if u.carried}

    def weight_now(self, node: str) -> float:
        """A node's weight including the terminals its figures do not show (0 if unknown)."""
        return self._state.weights.get(node, 0.0)

    def projected_load(self, node: str, extra: int = 0) -> float | None:
        """A selectable node's projected load with ``extra`` more terminals (None if not selectable)."""
        cur = self._state
        comp = cur.compensation.get(node)
        if comp is None:
            return None
        u = cur.unseen.get(node)
        return comp.load((u.fresh if u is not None and comp.terms else 0) + extra)

    def last_good(self) -> dict[str, str]:
        """Each group's last known good node."""
        return dict(self._state.last_good)

    def pick_counts(self) -> dict[str, int]:
        """Total picks per node since this Selector was created (for metrics)."""
        return dict(self._counts)


__all__ = ["ALGORITHMS", "DEFAULT_ALGORITHM", "EmptyGroup", "NodeView", "Pick", "Prepared", "REASONS", "Selector",
           "Snapshot", "UnknownGroup", "Weighing", "node_view", "source_drain", "weigh"]
