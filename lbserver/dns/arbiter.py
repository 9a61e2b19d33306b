"""The DNS arbiter: publishes each alias's best nodes after every poll cycle.

One cycle (:meth:`DnsArbiter.run_cycle`) goes top to bottom:

1. one SOA query says whether the zone changed since the cycle before
   (:mod:`lbserver.dns.changes`): if not, nothing is read from it this
   cycle; if so, an IXFR names what changed, and only that is read (every
   name when the server gives no differences);
2. the DNS lease (:mod:`lbserver.dns.lease`), as read or remembered, is
   taken, renewed or left to its holder: only the balancer holding it
   writes, every one of its alias updates carrying the lease as a
   prerequisite; the others report ``standby``. With ``<peers>``, a
   standby takes it over once the holder's heartbeats stopped (``heard``);
3. the facts (:class:`lbserver.dns.plan.CycleFacts`) are gathered: each
   enabled alias's ``health-url`` page (once per URL), the group members'
   addresses (``ip``/``ip6`` attributes, else the address host, resolved
   when it is a name; once per node), then what the DNS server publishes
   now: the aliases that changed, read in one pipelined batch, the others
   as remembered;
4. each alias is planned (:func:`lbserver.dns.plan.plan_alias`, pure): the
   records to publish, if they differ, and its report;
5. the plans are applied: the changes go out in signed update messages,
   :data:`BATCH` aliases to a message, and each alias's report is settled
   by the server's answer;
6. the alert conditions (:mod:`lbserver.dns.report`) are compared with the
   previous cycle's and the changes mailed, all in one mail.

Nothing here raises on a bad peer: DNS, health page and SMTP failures end up
in the alias's :class:`~lbserver.dns.report.AliasReport`, the log and the
alerts, and the next cycle tries again. Threads: a cycle runs on the
caller's thread (the DNS service's worker); :meth:`DnsArbiter.reconfigure`
may come from another, see the locks in :class:`DnsArbiter`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

from dns.name import Name as DnsName

from lbserver.config import Alias, Dns, Node
from lbserver.config.settings import LBSERVICE, POLL
from lbserver.config.tsigkey import KeyFileError, TsigKey, load_key, permission_warning
from lbserver.dns.addresses import resolve_node
from lbserver.dns.changes import FULL_READ_INTERVAL, NoDifferences, ZoneCache, changed_names, soa_serial
from lbserver.dns.decide import Candidate
from lbserver.dns.healthurl import HealthFetchError, HealthPage, fetch, parse_page
from lbserver.dns.lease import LOST, UNKNOWN, Lease, LeaseKeeper, LeaseStatus, lease_settings
from lbserver.dns.notify import AlertTracker, Mailer, MailSettings, parse_contacts
from lbserver.dns.plan import AliasPlan, CycleFacts, plan_alias, settle
from lbserver.dns.report import ERROR, UPDATED, AliasReport, alert_conditions, cleared_text, format_reports
from lbserver.dns.update import (DnsError, Fence, RRsets, alias_name, channel, query_many, replace_many,
                                 replace_rrsets)

log = logging.getLogger("lbserver.dns")

RECHECK_AFTER = 1.0
"""Seconds after the cycle's SOA query past which it is asked again before the aliases are read (the health
pages were slow): the records a plan compares with are never older than that."""

BATCH = 100
"""Aliases changed by one update message at most (each adds about 300 bytes; a message holds 64 KiB)."""


def _mail_settings(dns: Dns) -> MailSettings:
    return MailSettings(contact=parse_contacts(dns.contact), smtp_host=dns.smtp_host, smtp_port=dns.smtp_port,
                        starttls=dns.smtp_starttls, user=dns.smtp_user, password_file=dns.smtp_password_file,
                        mail_from=dns.mail_from, timeout=max(dns.timeout, 10.0))


class DnsArbiter:
    """Publishes aliases from the balancer's candidates; thread-safe.

    ``run_cycle`` blocks (DNS, HTTP and SMTP exchanges, each bounded by the
    ``<dns>`` timeout) and is meant for a worker thread; cycles never overlap.
    ``state_file`` (default: ``<dns alert-state-file>``), when set, keeps the
    alert state across processes (cron mode) so a condition is mailed once,
    not on every run. ``poll_interval`` and ``terminal_port`` give the DNS
    lease its defaults (lease-time, lease-holder); ``once`` is a ``--once``
    run, which keeps a valid lease naming this balancer as it is. ``clock``
    gives the time of the lease decisions. ``heartbeat`` (the peers'
    heartbeat interval, None without ``<peers>``) and ``heard`` (when a peer
    last said it holds a lease-holder name, monotonic time) let a standby
    take the lease over from a writer whose heartbeats stopped.
    """

    def __init__(self, dns: Dns, nodes: Mapping[str, Node], *, state_file: str | None = None,
                 resolver=resolve_node, poll_interval: float = POLL.interval.default,
                 terminal_port: int = LBSERVICE.listen.default[1], once: bool = False, clock=time.time,
                 heartbeat: float | None = None, heard: Callable[[str], float | None] | None = None) -> None:
        # Held for a whole cycle (seconds when a peer is slow): cycles never overlap, and release() waits for
        # the one in progress. The lease's exchanges, the alert tracker and the two memo maps below are
        # only used under it.
        self._cycle_lock = threading.Lock()
        # Held for an instant, to read or swap the configuration, key and mailer (reconfigure() runs on the
        # event loop's thread, which must never wait for a cycle) and the last reports; never held while
        # waiting for _cycle_lock: when both are needed, _cycle_lock comes first (no deadlock).
        self._lock = threading.Lock()
        self._resolver = resolver
        state_file = state_file or dns.alert_state_file
        self._state_file = state_file
        self._tracker = AlertTracker.load(state_file) if state_file else AlertTracker()
        self._reports: tuple[AliasReport, ...] = ()
        self._last_change: dict[str, float] = {}
        self._known: dict[str, tuple[str, ...]] = {}
        self._dns = dns
        self._nodes: dict[str, Node] = dict(nodes)
        self._key, self._key_error = self._load_key(dns)
        self._mailer = Mailer(_mail_settings(dns))
        self._clock = clock
        self._once = once
        self._heard = heard
        settings = lease_settings(dns, poll_interval, terminal_port, heartbeat)
        self._lease: LeaseKeeper | None = LeaseKeeper(settings, once=once, heard=heard) if settings else None
        self._old_lease: tuple[LeaseKeeper, Dns, TsigKey | None] | None = None
        # What was read of the zone, by (server, port, zone); only used under _cycle_lock.
        self._zone: tuple[tuple[str, int, str], ZoneCache] | None = None
        self.cycle_seconds: float | None = None
        """Seconds the last cycle spent on DNS exchanges (the SOA, IXFR, reads, updates)."""
        self.queries = 0
        """DNS queries sent so far (SOA, IXFR, record reads; updates are counted in the reports)."""

    @staticmethod
    def _load_key(dns: Dns, previous_error: str | None = None) -> tuple[TsigKey | None, str | None]:
        try:
            key = load_key(dns.key_file, dns.key_name, dns.key_algorithm)
        except KeyFileError as exc:
            # Retried every cycle: say it once, not every cycle.
            log.log(logging.DEBUG if str(exc) == previous_error else logging.ERROR,
                    "DNS arbiter: TSIG key unusable: %s", exc)
            return None, str(exc)
        if previous_error:
            log.info("DNS arbiter: TSIG key file %s is usable again", dns.key_file)
        warning = permission_warning(dns.key_file)
        if warning:
            log.warning("DNS arbiter: TSIG key file %s", warning)
        return key, None

    def reconfigure(self, dns: Dns, nodes: Mapping[str, Node], *, poll_interval: float = POLL.interval.default,
                    terminal_port: int = LBSERVICE.listen.default[1], heartbeat: float | None = None) -> None:
        """Use a reloaded configuration; alert state, last-change times and the lease held are kept.

        When the lease's record, zone, server or holder changes, the old lease
        is released at the start of the next cycle.
        """
        key, key_error = self._load_key(dns)
        settings = lease_settings(dns, poll_interval, terminal_port, heartbeat)
        with self._lock:
            old, old_dns = self._lease, self._dns
            same = (old is not None and settings is not None and (old.settings.name, old.settings.holder) ==
                    (settings.name, settings.holder) and (old_dns.server, old_dns.port, old_dns.zone) ==
                    (dns.server, dns.port, dns.zone))
            if same:
                old.settings = settings  # a new lease-time applies from the next renewal
            else:
                if old is not None:
                    self._old_lease = (old, old_dns, self._key)
                self._lease = LeaseKeeper(settings, once=self._once, heard=self._heard) if settings else None
            self._dns = dns
            self._nodes = dict(nodes)
            self._key, self._key_error = key, key_error
            if dns.alert_state_file and dns.alert_state_file != self._state_file:
                self._state_file = dns.alert_state_file
            pending = self._mailer.pending
            self._mailer = Mailer(_mail_settings(dns))
            self._mailer.pending = pending

    def holder(self) -> str | None:
        """This balancer's name in the lease (None: no lease)."""
        with self._lock:
            return self._lease.settings.holder if self._lease is not None else None

    def figures(self) -> tuple[float | None, int]:
        """The last cycle's seconds of DNS exchanges, and the DNS queries sent so far."""
        with self._lock:
            return self.cycle_seconds, self.queries

    def reports(self) -> list[AliasReport]:
        """The reports of the last cycle (empty before the first)."""
        with self._lock:
            return list(self._reports)

    @property
    def release_timeout(self) -> float:
        """How long :meth:`release` may take, a cycle in progress included (about two DNS exchanges more)."""
        with self._lock:
            return 3 * self._dns.timeout + 5

    def release(self) -> bool:
        """Give the DNS lease back if this balancer holds it (a clean stop); True when released.

        Waits for a cycle in progress; the deletion has the prerequisite that
        the lease is still ours, so it never removes another balancer's.
        """
        with self._cycle_lock:
            self._release_old()
            with self._lock:
                dns, key, keeper = self._dns, self._key, self._lease
            return keeper.release(dns, key) if keeper is not None else False

    def _release_old(self) -> None:
        with self._lock:
            old, self._old_lease = self._old_lease, None
        if old is not None:
            keeper, dns, key = old
            keeper.release(dns, key)

    def run_cycle(self, candidates: Mapping[str, Candidate], groups: Mapping[str, tuple[str, ...]],
                  nodes: Mapping[str, Node] | None = None) -> list[AliasReport]:
        """Evaluate and publish every alias once; return the reports. Never raises for peer failures.

        ``nodes`` are the nodes in force when they differ from the configuration's (the members of
        groups fed by another balancer change at each poll).
        """
        with self._cycle_lock:
            with self._lock:  # one consistent copy of what reconfigure() may swap while this cycle runs
                dns, key, key_error, keeper = self._dns, self._key, self._key_error, self._lease
                mailer, state_file = self._mailer, self._state_file
                nodes = dict(self._nodes if nodes is None else nodes)
            if key is None:  # the file may have been fixed since the last (re)load
                key, key_error = self._load_key(dns, key_error)
                with self._lock:
                    if self._dns is dns:  # unless a reload brought its own key meanwhile
                        self._key, self._key_error = key, key_error
            self._forget_removed(dns)
            # One connection to the DNS server carries the whole cycle's queries and updates.
            with channel(dns.server, dns.port, dns.timeout) as ch:
                t0 = time.monotonic()
                cache, serial, stale, ixfr = self._zone_changes(dns, key)
                lease_read = self._read_lease(dns, keeper, cache, stale)
                lease = self._lease_cycle(keeper, dns, key, key_error, lease_read)
                dns_seconds = time.monotonic() - t0
                enabled = [a for a in dns.aliases if a.enabled]
                pages = self._health_pages(enabled, dns.timeout)
                addresses = self._addresses(enabled, groups, nodes)
                t1 = time.monotonic()
                if serial is not None and t1 - t0 > RECHECK_AFTER:
                    # The pages took a while: what the aliases hold is read as late as possible before deciding.
                    _, serial, again, more = self._zone_changes(dns, key)
                    ixfr += more
                    if again is None or (keeper is not None and self._owner(keeper.settings.name, dns.zone) in again):
                        lease_read = None  # changed since it was read: not kept, read again next cycle
                    stale = None if stale is None or again is None else stale | again
                facts = self._gather(dns, lease, key_error, candidates, groups, nodes, cache, stale, pages,
                                     addresses)
                t2 = time.monotonic()
                plans = [self._plan(alias, facts) for alias in dns.aliases]
                t3 = time.monotonic()
                reports, lease = self._apply(dns, key, keeper, lease, plans)
                dns_seconds += (t2 - t1) + (time.monotonic() - t3)  # the planning is not the DNS's
                queries = ch.queries + ixfr  # the IXFR has its own connection
            self._keep(cache, serial, stale, lease_read, facts.records)
            with self._lock:
                self.cycle_seconds = dns_seconds
                self.queries += queries
            self._remember(reports, facts.records)
            if lease is not None:
                reports = [replace(r, lease=lease.to_dict()) if r.enabled else r for r in reports]
            self._alert(dns, reports, lease, mailer, state_file)
            with self._lock:
                self._reports = tuple(reports)
            return reports

    def _forget_removed(self, dns: Dns) -> None:
        """Forget the aliases a reload removed."""
        names = {a.name for a in dns.aliases}
        for memo in (self._last_change, self._known):
            for gone in [k for k in memo if k not in names]:
                del memo[gone]

    def _zone_changes(self, dns: Dns, key: TsigKey | None
                      ) -> tuple[ZoneCache, int | None, set[DnsName] | None, int]:
        """The zone's cache, its serial now, the names to read again (None: every name), IXFR queries sent.

        One SOA query; when the serial moved since the cache's, an IXFR lists
        the names that changed. Whenever that cannot be known, every name is
        read (and why is logged once).
        """
        where = (dns.server, dns.port, dns.zone)
        if self._zone is None or self._zone[0] != where:
            self._zone = (where, ZoneCache())
        cache = self._zone[1]
        try:
            serial = soa_serial(dns.server, dns.port, dns.zone, dns.timeout)
        except DnsError as exc:
            log.debug("DNS arbiter: SOA of %s not read (%s): reading every name", dns.zone, exc)
            return cache, None, None, 0
        if cache.serial is None or time.monotonic() - cache.full_at >= FULL_READ_INTERVAL:
            return cache, serial, None, 0
        if serial == cache.serial:
            return cache, serial, set(), 0
        try:
            names, serial = changed_names(dns.server, dns.port, dns.zone, cache.serial, key, dns.timeout)
        except NoDifferences as exc:
            if str(exc) != cache.problem:
                log.log(logging.INFO if exc.normal else logging.WARNING,
                        "DNS arbiter: zone %s changed (serial %d -> %d) but the differences could not be read "
                        "from %s port %d: %s; reading every alias instead (said once)", dns.zone, cache.serial,
                        serial, dns.server, dns.port, exc)
            cache.problem = str(exc)
            return cache, serial, None, 1
        if cache.problem is not None:
            log.info("DNS arbiter: zone %s: the differences (IXFR) can be read again", dns.zone)
            cache.problem = None
        return cache, serial, names, 1

    def _read_lease(self, dns: Dns, keeper: LeaseKeeper | None, cache: ZoneCache,
                    stale: set | None) -> Lease | DnsError | None:
        """The lease record this cycle: from the cache when it did not change, else read (None: not needed)."""
        if keeper is None or not any(a.enabled for a in dns.aliases):
            return None
        owner = self._owner(keeper.settings.name, dns.zone)
        if owner is None:
            return None  # the keeper reads it and says why
        if stale is not None and owner not in stale and isinstance(cache.lease, Lease):
            return cache.lease
        try:
            return keeper.read(dns)
        except DnsError as exc:
            return exc

    @staticmethod
    def _keep(cache: ZoneCache, serial: int | None, stale: set | None, lease: Lease | DnsError | None,
              records: Mapping[str, RRsets | DnsError]) -> None:
        """Remember what this cycle read, valid at ``serial`` (None: the SOA was not read, forget all)."""
        if serial is None:
            cache.forget()
            return
        cache.lease = lease if isinstance(lease, Lease) else None
        for alias, rec in records.items():
            if isinstance(rec, RRsets):
                cache.records[alias] = rec
            else:
                cache.records.pop(alias, None)
        if stale is None:  # every name was read: forget the aliases no longer published
            cache.records = {k: v for k, v in cache.records.items() if k in records}
            cache.full_at = time.monotonic()
        cache.serial = serial

    def _lease_cycle(self, keeper: LeaseKeeper | None, dns: Dns, key: TsigKey | None,
                     key_error: str | None, lease_read: Lease | DnsError | None = None) -> LeaseStatus | None:
        """This cycle's lease: read, then taken, renewed or left (None: no lease, publish freely)."""
        try:
            self._release_old()
            if keeper is None:
                return None
            if not any(a.enabled for a in dns.aliases):
                keeper.release(dns, key)  # nothing to write: let another balancer have it
                return None
            return keeper.cycle(dns, key, key_error, self._clock(), lease=lease_read)
        except Exception as exc:  # a bug must not stop the daemon; nothing is written without a lease
            log.exception("DNS arbiter: the DNS lease failed unexpectedly")
            return LeaseStatus(name=dns.lease, me=keeper.settings.holder if keeper else "?",
                               role=UNKNOWN, problem=f"internal error: {type(exc).__name__}: {exc}")

    def _gather(self, dns: Dns, lease: LeaseStatus | None, key_error: str | None,
                candidates: Mapping[str, Candidate], groups: Mapping[str, tuple[str, ...]],
                nodes: Mapping[str, Node], cache: ZoneCache, stale: set | None,
                pages: Mapping[str, HealthPage | str], addresses: Mapping[str, tuple[str, ...] | str]) -> CycleFacts:
        """What the plans read: the records of the aliases that changed since the cache (``stale``; None:
        all) are read, in one pipelined batch; the others are the cache's."""
        enabled = [a for a in dns.aliases if a.enabled]
        records: dict[str, RRsets | DnsError] = {}
        to_read = []
        for a in enabled:
            cached = cache.records.get(a.name)
            # (the alias's DNS name is only worked out when some names changed: a quiet cycle costs no parsing)
            if stale is None or cached is None or (stale and self._owner(a.name, dns.zone) in stale):
                to_read.append(a.name)
            else:
                records[a.name] = cached
        records.update(query_many(dns.server, dns.port, dns.zone, to_read, dns.timeout))
        records = {a.name: records[a.name] for a in enabled}
        return CycleFacts(dns=dns, candidates=candidates, groups=groups, nodes=nodes, addresses=addresses,
                          pages=pages, records=records, known=dict(self._known), last_change=dict(self._last_change),
                          lease=lease, key_error=key_error, now=time.time())

    @staticmethod
    def _owner(name: str, zone: str) -> DnsName | None:
        """The absolute DNS name of ``name`` in ``zone`` (None when it is none: its reads say why)."""
        try:
            return alias_name(name, zone)
        except ValueError:
            return None

    @staticmethod
    def _health_pages(aliases: Sequence[Alias], timeout: float) -> dict[str, HealthPage | str]:
        """By alias, its submission test page, read once per URL (an error: its text)."""
        by_url: dict[tuple[str, float], HealthPage | str] = {}
        out: dict[str, HealthPage | str] = {}
        for alias in aliases:
            if not alias.health_url:
                continue
            url = (alias.health_url, alias.health_max_age)
            if url not in by_url:
                try:
                    by_url[url] = parse_page(fetch(alias.health_url, timeout), time.time(), alias.health_max_age)
                except HealthFetchError as exc:
                    by_url[url] = str(exc)
            out[alias.name] = by_url[url]
        return out

    def _addresses(self, aliases: Sequence[Alias], groups: Mapping[str, tuple[str, ...]],
                   nodes: Mapping[str, Node]) -> dict[str, tuple[str, ...] | str]:
        """Each member node's addresses, resolved once per cycle (a failure: why, as a string)."""
        out: dict[str, tuple[str, ...] | str] = {}
        for alias in aliases:
            for name in groups.get(alias.group, ()):
                node = nodes.get(name)
                if node is None or name in out:
                    continue
                try:
                    out[name] = self._resolver(node)
                except (OSError, UnicodeError) as exc:
                    out[name] = f"cannot resolve {node.host!r} ({getattr(exc, 'strerror', None) or exc})"
                except Exception as exc:  # a bug must not stop the cycle: this node goes unpublished
                    log.exception("DNS arbiter: resolving node %s failed unexpectedly", name)
                    out[name] = f"cannot resolve {node.host!r} (internal error: {type(exc).__name__}: {exc})"
        return out

    @staticmethod
    def _plan(alias: Alias, facts: CycleFacts) -> AliasPlan:
        try:
            return plan_alias(alias, facts)
        except Exception as exc:  # a bug must not stop the other aliases or the daemon
            log.exception("DNS arbiter: alias %s failed unexpectedly", alias.name)
            return AliasPlan(AliasReport(alias=alias.name, fqdn=f"{alias.name}.{facts.dns.zone}", group=alias.group,
                                         enabled=alias.enabled, result=ERROR,
                                         error=f"internal error: {type(exc).__name__}: {exc}",
                                         checked_at=time.time()))

    def _apply(self, dns: Dns, key: TsigKey | None, keeper: LeaseKeeper | None, lease: LeaseStatus | None,
               plans: Sequence[AliasPlan]) -> tuple[list[AliasReport], LeaseStatus | None]:
        """Send the plans' records and settle their reports; returns them and the lease as the cycle leaves it.

        The lease turns to standby when the server refused a fenced update:
        another balancer took it while this cycle ran.
        """
        for plan in plans:
            if plan.report.health_problem:
                log.debug("DNS arbiter: alias %s: %s", plan.alias, plan.report.health_problem)
            if plan.warning:
                log.warning("DNS arbiter: %s", plan.warning)
        changes = {p.alias: p.records for p in plans if p.records is not None}
        if not changes:
            return [p.report for p in plans], lease
        fence = None
        try:
            fence = keeper.fence(dns) if keeper is not None and lease is not None else None
            outcomes = self._send(dns, key, changes, fence)
        except Exception as exc:  # a bug must not stop the daemon: these aliases report it
            log.exception("DNS arbiter: sending the updates failed unexpectedly")
            outcomes = dict.fromkeys(changes, DnsError("internal", f"{type(exc).__name__}: {exc}"))
        if fence is not None and any(e is not None and e.code in LOST for e in outcomes.values()):
            lease = keeper.lost(dns)
        reports = []
        for plan in plans:
            if plan.records is None:
                reports.append(plan.report)
                continue
            rep = settle(plan, outcomes[plan.alias], fence is not None)
            if rep.result == UPDATED:
                log.info("DNS arbiter: %s now publishes %s (was %s)%s", rep.fqdn, ", ".join(rep.published),
                         ", ".join(rep.previous) or "nothing", " [fallback: no good node]" if rep.fallback else "")
            elif rep.result == ERROR:
                log.warning("DNS arbiter: %s; the records stay as they are, retrying next cycle", rep.error)
            reports.append(rep)
        return reports, lease

    @staticmethod
    def _send(dns: Dns, key: TsigKey, changes: Mapping[str, RRsets], fence: Fence | None
              ) -> dict[str, DnsError | None]:
        """Send the cycle's changes in fenced update messages, read them back; each alias's error or None.

        The changes go together, :data:`BATCH` aliases to a message (a DNS
        message holds at most 64 KiB): one message is one zone change, one
        serial, however many aliases moved. When the server refuses a batch
        for another reason than the lease (say, an update policy that refuses
        one of the names), each of its aliases is sent on its own, so one bad
        alias does not hold the others back.
        """
        items = list(changes.items())
        outcomes: dict[str, DnsError | None] = {}
        for start in range(0, len(items), BATCH):
            chunk = dict(items[start:start + BATCH])
            try:
                outcomes.update(replace_many(dns.server, dns.port, dns.zone, chunk, key, dns.timeout, fence))
            except DnsError as exc:
                if len(chunk) == 1 or (fence is not None and exc.code in LOST):
                    outcomes.update(dict.fromkeys(chunk, exc))
                    continue
                log.warning("DNS arbiter: the update of %d aliases together failed (%s); sending each alone",
                            len(chunk), exc)
                for alias, records in chunk.items():
                    try:
                        replace_rrsets(dns.server, dns.port, dns.zone, alias, records, key, dns.timeout, fence)
                        outcomes[alias] = None
                    except DnsError as one:
                        outcomes[alias] = one
        return outcomes

    def _remember(self, reports: Sequence[AliasReport], records: Mapping[str, RRsets | DnsError]) -> None:
        """Keep, for the next cycles, when each alias changed and what it holds (shown when it cannot be read)."""
        for rep in reports:
            if rep.result == UPDATED:
                self._last_change[rep.alias] = rep.last_change
                self._known[rep.alias] = rep.published
            elif isinstance(current := records.get(rep.alias), RRsets):
                self._known[rep.alias] = current.addresses

    def _alert(self, dns: Dns, reports: Sequence[AliasReport], lease: LeaseStatus | None, mailer: Mailer,
               state_file: str | None) -> None:
        """Log and mail the alert conditions that appeared or cleared this cycle (one mail); keep the state."""
        conditions = alert_conditions(reports, self._tracker.active, lease)
        enabled = {a.name for a in dns.aliases if a.enabled}
        for key in list(self._tracker.active):
            parts = key.split("/")
            if len(parts) > 1 and parts[1] not in enabled:
                self._tracker.forget(key)
        cleared = {k: cleared_text(k, v) for k, v in self._tracker.active.items() if k not in conditions}
        changes = self._tracker.update(conditions, cleared)
        for ch in changes:
            log.log(logging.WARNING if ch.raised else logging.INFO, "DNS arbiter: %s%s",
                    "" if ch.raised else "resolved: ", ch.message)
        if changes or mailer.pending:
            mailer.send(changes, format_reports(reports))
        if changes and state_file:
            try:
                self._tracker.save(state_file)
            except OSError as exc:
                log.warning("cannot save alert state to %s: %s", state_file, exc.strerror or exc)
