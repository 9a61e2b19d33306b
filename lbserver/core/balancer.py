"""The balancer core: poll every agent, weigh the nodes, install a snapshot, pick for terminals.

Data flows one way: every ``poll interval`` all agents are polled at once
(:mod:`lbserver.core.poller`), each node's record is updated
(:mod:`lbserver.core.health`), one immutable
:class:`~lbserver.core.selection.Snapshot` is built and installed in the
:class:`~lbserver.core.selection.Selector` (the atomic swap), then the
observers registered with :meth:`Balancer.after_cycle` run (the DNS
arbiter). Terminal requests and the management service only read what the
last cycle built. The cycle's long work (parsing, records, the build and
the install) gives the loop back every few milliseconds
(:mod:`lbserver.core.slicing`), so terminals are answered meanwhile, from
the snapshot in force until the new one is swapped in whole.

Threading: everything here runs on the daemon's asyncio loop thread, so the
balancer's own state needs no locks; other threads reach it only through the
loop. The class implements :class:`~lbserver.core.view.BalancerView`,
:class:`~lbserver.core.view.SharedState` and the drain half of
:class:`~lbserver.core.view.AdminActions`; outer layers use those
protocols, never this class.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Callable, Iterable, Mapping

from lbserver.config import Node, Poll, ServerConfig
from lbserver.config.model import answer_for
from lbserver.core import health
from lbserver.core.counters import CycleInfo, DurationHistogram
from lbserver.core.agentless import promgroup
from lbserver.core.agentless.exposition import CpuCounters
from lbserver.core.agentless.scrape import scrape_all
from lbserver.core.drainstate import DrainState
from lbserver.core.history import History
from lbserver.core.poller import PollError, PollResult, Replies, poll_all
from lbserver.core.remote import RemoteNode, fetch_group
from lbserver.core.selection import Pick, Prepared, Selector, Snapshot, Weighing
from lbserver.core.slicing import Job, run_sliced, run_whole
from lbserver.core.view import UnknownNode

log = logging.getLogger("lbserver")

LAST_GOOD_LOG_INTERVAL = 60.0


class Balancer:
    """Polls, weighs and picks for one configuration at a time."""

    def __init__(self, config: ServerConfig) -> None:
        self._base = config
        self._config = config
        self._remote: dict[str, tuple[Node, ...]] = {}
        self._remote_errors: dict[str, str] = {}
        self._records: dict[str, health.NodeRecord] = {}
        # What the last cycle parsed and weighed, so an unchanged node costs neither again.
        self._replies: Replies = {}
        self._cpu_counters: CpuCounters = {}  # each node_exporter node's CPU counters at its last scrape (CPUUSED)
        self._weighings: dict[str, Weighing] = {}
        self._selector = Selector(algorithm=config.algorithm)
        self._snapshot: Snapshot | None = None
        self._installs = 0  # snapshots installed so far: a sliced build started before another is stale
        self._drain: DrainState | None = None
        self._last_cycle: CycleInfo | None = None
        self._answers: dict[str, str] = {}  # node -> what terminals receive, per config
        self._last_good_logged: dict[str, float] = {}
        self.terminal_responses: dict[int, int] = {}
        """Terminal answers by HTTP status, counted by the terminal service (see :meth:`response_counts`)."""
        self._observers: list[Callable[[], None]] = []
        self._pick_observer: Callable[[str, str | None], None] | None = None
        self._unreported_logged: set[str] = set()
        self._cycle_mono = time.monotonic()
        self._wake: asyncio.Event | None = None
        self.started_at = time.time()
        self.poll_histogram = DurationHistogram()
        self.history = History()
        self.apply_config(config)

    # -- the view (lbserver.core.view.BalancerView) ---------------------

    @property
    def config(self) -> ServerConfig:
        """The configuration in force."""
        return self._config

    @property
    def snapshot(self) -> Snapshot:
        """The snapshot in force."""
        return self._snapshot

    @property
    def last_cycle(self) -> CycleInfo | None:
        """The last completed poll cycle."""
        return self._last_cycle

    def pick_counts(self) -> Mapping[str, int]:
        """Terminals sent to each node since start."""
        return self._selector.pick_counts()

    def consecutive_failures(self, node: str) -> int:
        """Polls of ``node`` failed in a row."""
        rec = self._records.get(node)
        return rec.consecutive_failed if rec else 0

    def response_counts(self) -> Mapping[int, int]:
        """Terminal requests answered, by HTTP status."""
        return dict(self.terminal_responses)

    def group_errors(self) -> Mapping[str, str]:
        """Why each group fed by another balancer or Prometheus could not be read at the last poll."""
        return dict(self._remote_errors)

    def sessions_now(self, node: str) -> int:
        """A node's sessions as its ``max-sessions`` counts them: its agent's count plus the new ones sent since."""
        return self._selector.sessions_now(node)

    # -- admin ------------------------------------------------------------

    def set_drained(self, node: str, drained: bool) -> bool:
        """Drain or enable ``node`` (persisted in the state file); True when it changed."""
        if node not in self._config.nodes:
            raise UnknownNode(node)
        changed = self._drain.set(node, drained)
        if changed:
            self.install_snapshot()
            log.info("node %s %s by admin", node, "drained" if drained else "enabled")
        return changed

    # -- shared with peer balancers (lbserver.core.view.SharedState) -------

    def on_pick(self, observer: Callable[[str, str | None], None] | None) -> None:
        """Call ``observer(node, user)`` for every terminal sent to a node for a new session (None: stop).

        ``user`` is the user the terminal named (None: none).
        """
        self._pick_observer = observer

    def count_remote_picks(self, picks: Mapping[str, int]) -> None:
        """Weigh terminals a peer sent to these nodes as if sent here, until their figures show them."""
        for node, count in picks.items():
            self._selector.add_pending(node, count)

    def count_remote_homes(self, homes: Mapping[str, str]) -> None:
        """Send each user back to the node a peer sent him to for a new session, until its figures show it."""
        for user, node in homes.items():
            self._selector.add_home(user, node)

    def drain_state(self) -> tuple[frozenset[str], float]:
        """The admin-drained nodes and when that set last changed."""
        return frozenset(self._drain.nodes), self._drain.changed_at

    def adopt_drains(self, nodes: frozenset[str], changed_at: float, source: str) -> bool:
        """Take a peer's drained set when it is newer than ours; True when ours changed."""
        before = set(self._drain.nodes)
        if not self._drain.adopt(set(nodes), changed_at):
            return False
        self.install_snapshot()
        for node in sorted(before - nodes):
            log.info("node %s enabled by peer %s", node, source)
        for node in sorted(nodes - before):
            log.info("node %s drained by peer %s", node, source)
        return True

    # -- configuration ----------------------------------------------------

    def apply_config(self, config: ServerConfig) -> None:
        """Put ``config`` in force: nodes no longer configured are forgotten, the snapshot rebuilt."""
        old = self._base if self._snapshot is not None else None
        self._base = config
        self._remote = {g: members for g, members in self._remote.items()
                        if g in config.groups and old is not None and config.groups[g].feed is not None
                        and g in old.groups and config.groups[g].feed == old.groups[g].feed}
        self._remote_errors = {g: e for g, e in self._remote_errors.items()
                               if g in config.groups and config.groups[g].feed is not None}
        self._set_effective()
        if self._drain is None or (old and old.state_file != config.state_file):
            self._drain = DrainState.load(config.state_file)
        self._selector.algorithm = config.algorithm
        self.install_snapshot()

    def _set_effective(self) -> None:
        """The configuration in force: the file's, with the nodes of remote groups as last read."""
        base = self._base
        if self._remote:
            nodes, groups = dict(base.nodes), dict(base.groups)
            for gname, members in self._remote.items():
                nodes.update((n.name, n) for n in members)
                # A prometheus group may have nodes of its own too (agents, node_exporters): they come first.
                own = groups[gname].nodes
                groups[gname] = dataclasses.replace(
                    groups[gname], nodes=own + tuple(n.name for n in members if n.name not in own))
            self._config = dataclasses.replace(base, nodes=nodes, groups=groups)
        else:
            self._config = base
        self._answers = {name: answer_for(node, base.returns) for name, node in self._config.nodes.items()}
        for name in list(self._records):
            if name not in self._config.nodes:
                del self._records[name]

    # -- polling ----------------------------------------------------------

    def after_cycle(self, observer: Callable[[], None]) -> None:
        """Call ``observer`` (on the loop thread) after every poll cycle."""
        self._observers.append(observer)

    async def poll_forever(self) -> None:
        """Poll every ``poll interval`` (sooner after :meth:`poll_now`) until cancelled."""
        self._wake = asyncio.Event()
        while True:
            elapsed = time.monotonic() - self._cycle_mono
            try:
                await asyncio.wait_for(self._wake.wait(), max(0.0, self._config.poll.interval - elapsed))
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.cycle()
            except Exception:  # one bad cycle must not end polling
                log.exception("poll cycle failed")

    def poll_now(self) -> None:
        """Ask :meth:`poll_forever` for an immediate cycle (reload)."""
        if self._wake is not None:
            self._wake.set()

    async def cycle(self) -> None:
        """Poll every node once, rebuild and install the snapshot, then tell the observers."""
        cfg = polled = self._base
        self._cycle_mono = time.monotonic()
        started = time.time()
        agents = [n for n in cfg.nodes.values() if n.source == "agent"]
        exporters = [n for n in cfg.nodes.values() if n.source == "node-exporter"]
        results, scraped, fetched = await asyncio.gather(
            poll_all(agents, cfg.poll.timeout, cfg.poll.max_reply_bytes, validate=health.validate_state,
                     replies=self._replies),
            scrape_all(exporters, cfg.poll.timeout, cfg.poll.max_reply_bytes, self._cpu_counters,
                       validate=health.validate_state),
            self._fetch_remote(cfg))
        results = {**results, **scraped}
        now = time.time()
        if self._base is not polled:  # reloaded while polling: keep nodes still configured as polled
            cfg = self._base
            results = {n: r for n, r in results.items() if cfg.nodes.get(n) == polled.nodes[n]}
            fetched = {g: f for g, f in fetched.items()
                       if g in cfg.groups and cfg.groups[g].feed == polled.groups[g].feed}
        results = {**results, **self._merge_remote(fetched)}
        failed = await run_sliced(self._record_job(results, now, cfg.poll))
        await self._install_sliced(now)
        self._last_cycle = CycleInfo(started, time.time() - started, len(results), failed)
        self.poll_histogram.observe(self._last_cycle.duration)
        await run_sliced(self.history.add_job(self._snapshot, now, cfg.poll.interval))
        for name in set(self._snapshot.unreported) - self._unreported_logged:
            log.warning("rule variable %s is reported by no agent (a typo in lbsconfig.xml, or missing from every "
                        "lbaconfig.xml): the rule makes every node unhealthy", name)
        self._unreported_logged = set(self._snapshot.unreported)
        for observer in self._observers:
            try:
                observer()
            except Exception:  # an observer's bug must not stop polling
                log.exception("after-cycle observer failed")

    def _record_job(self, results: Mapping[str, PollResult], now: float, poll: Poll) -> Job[int]:
        """Update each node's record from its poll result (logging ups and downs); return how many failed."""
        failed = 0

        def record(polled: Iterable[tuple[str, PollResult]]) -> None:
            nonlocal failed
            for name, res in polled:
                if name not in self._config.nodes:  # reloaded while this was sliced, and no longer configured
                    continue
                rec = self._records.setdefault(name, health.NodeRecord(name=name))
                if res.state is not None:
                    if res.state is not rec.last_state:
                        self._weighings.pop(name, None)  # new figures: weigh again, and let the old ones go now
                    change = health.record_success(rec, res.state, now, poll.rise)
                else:
                    failed += 1
                    change = health.record_failure(rec, res.error, now, poll.fall)
                if change == "down":
                    log.warning("node %s is down: %s", name, rec.last_error)
                elif change == "up":
                    log.info("node %s is up", name)

        return Job(results.items(), record, lambda: failed)

    async def _fetch_remote(self, cfg: ServerConfig) -> dict[str, list[RemoteNode] | PollError]:
        """Read every remote group's site balancer at once; a failure is returned, not raised."""
        groups = [g for g in cfg.groups.values() if g.feed is not None]
        if not groups:
            return {}
        poll = cfg.poll
        outcomes = await asyncio.gather(*(
            fetch_group(g, poll.timeout, poll.max_reply_bytes) if g.source is not None else
            promgroup.fetch_group(g, cfg.promql, poll.timeout, poll.max_reply_bytes, poll.fall * poll.interval)
            for g in groups), return_exceptions=True)
        fetched: dict[str, list[RemoteNode] | PollError] = {}
        for group, outcome in zip(groups, outcomes):
            if isinstance(outcome, BaseException) and not isinstance(outcome, PollError):
                where = group.feed_url
                log.error("reading %s for group %s failed unexpectedly", where, group.name, exc_info=outcome)
                outcome = PollError(f"group {group.name}: {where}: {type(outcome).__name__}: {outcome}")
            fetched[group.name] = outcome
        return fetched

    def _merge_remote(self, fetched: dict[str, list[RemoteNode] | PollError]) -> dict[str, PollResult]:
        """Take the remote groups' new members; their poll results, as if their agents had been polled."""
        results: dict[str, PollResult] = {}
        taken = dict(self._base.nodes)
        changed = False
        for gname, outcome in fetched.items():
            if isinstance(outcome, PollError):
                if self._remote_errors.get(gname) != str(outcome):
                    log.warning("group %s: %s", gname, outcome)
                self._remote_errors[gname] = str(outcome)
                for node in self._remote.get(gname, ()):
                    results[node.name] = PollResult(node.name, None, str(outcome), 0.0)
                continue
            if self._remote_errors.pop(gname, None) is not None:
                log.info("group %s: %s answers again", gname, self._base.groups[gname].feed_url)
            members = []
            for rn in outcome:
                other = taken.get(rn.node.name)
                if other is not None and other.address != rn.node.address:
                    log.warning("group %s: node %s of %s left out: its name is taken by another node (%s)", gname,
                                rn.node.name, self._base.groups[gname].feed_url, other.address)
                    continue
                taken[rn.node.name] = rn.node
                members.append(rn.node)
                results[rn.node.name] = PollResult(rn.node.name, rn.state, rn.error, 0.0)
            if self._remote.get(gname) != tuple(members):
                self._remote[gname] = tuple(members)
                changed = True
        if changed:  # the configuration in force is rebuilt only when a remote group's members changed
            self._set_effective()
        return results

    def install_snapshot(self, now: float | None = None) -> None:
        """Build a snapshot from the current records and drained set, and swap it in.

        Terminals sent to a node stop counting only as its figures show them
        (see :class:`~lbserver.core.selection.Selector`); a drain or reload
        in the middle of a storm keeps every count.
        """
        snapshot = run_whole(self._build_job(now))
        self._install(run_whole(self._selector.prepare_job(snapshot)))

    def _build_job(self, now: float | None) -> Job[Snapshot]:
        return Snapshot.build_job(self._config, self._records, frozenset(self._drain.nodes), now or time.time(),
                                  self._weighings)

    def _install(self, prepared: Prepared) -> None:
        self._installs += 1
        self._snapshot = prepared.snapshot
        self._selector.commit(prepared)

    async def _install_sliced(self, now: float) -> None:
        """:meth:`install_snapshot` after a poll, giving the loop back every few milliseconds.

        Terminals are answered meanwhile from the snapshot in force (see
        :mod:`lbserver.core.slicing`). A drain, an enable or a reload can
        install a snapshot meanwhile; this build read the drained set and
        the configuration before it, so installing it would undo that.
        It is dropped instead, and nothing is lost: the snapshot installed
        meanwhile was built from the same records (this cycle wrote them
        before this build began), with the newer drained set or
        configuration.
        """
        installs = self._installs
        snapshot = await run_sliced(self._build_job(now))
        prepared = await run_sliced(self._selector.prepare_job(snapshot))
        if installs == self._installs:
            self._install(prepared)

    # -- terminals --------------------------------------------------------

    def _choose(self, group: str | None, user: str | None) -> Pick:
        """Pick for one terminal, tell the pick observer, log a last resort (raises UnknownGroup)."""
        pick = self._selector.pick(group, user)
        if pick.new_session and self._pick_observer is not None:
            self._pick_observer(pick.node, user)
        if pick.reason == "last-good":
            self._log_last_good(pick)
        return pick

    def answer(self, group: str | None, user: str | None) -> str:
        """Choose a server for one terminal request (raises UnknownGroup)."""
        return self._answers[self._choose(group, user).node]

    def answer_details(self, group: str | None, user: str | None) -> dict:
        """Choose like :meth:`answer`, and say what was chosen and why (the terminal port's JSON answer).

        ``{"host", "node", "group", "weight", "why"}``: what a terminal
        receives, the node's name, the group chosen from, the node's weight
        in the snapshot, and one of :data:`~lbserver.core.selection.REASONS`.
        """
        pick = self._choose(group, user)
        view = self._snapshot.nodes.get(pick.node)
        return {"host": self._answers[pick.node], "node": pick.node, "group": pick.group,
                "weight": round(view.weight, 3) if view is not None else 0.0, "why": pick.reason}

    def _log_last_good(self, pick: Pick) -> None:
        now = time.monotonic()
        if now - self._last_good_logged.get(pick.group, -1e9) > LAST_GOOD_LOG_INTERVAL:
            self._last_good_logged[pick.group] = now
            log.warning("no healthy node in group %s: answering the last known good node %s",
                        pick.group, pick.node)


__all__ = ["Balancer", "answer_for"]
