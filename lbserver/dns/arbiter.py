"""The DNS arbiter: publishes each alias's best nodes after every poll cycle.

One cycle (:meth:`DnsArbiter.run_cycle`), for every enabled ``<alias>``:

1. read the alias's ``health-url`` page (once per URL per cycle) and note
   nodes whose newest submission test failed;
2. find each group member's addresses (``ip``/``ip6`` attributes, else the
   address host, resolved when it is a name);
3. ask the DNS server what it publishes now;
4. decide (:func:`lbserver.dns.decide.decide`) and, when the address set or TTL
   differs, replace the RRsets in one signed update;
5. compare the alert conditions with the previous cycle's and mail the
   changes, all in one mail.

Before the aliases, the DNS lease (:mod:`lbserver.dns.lease`) is read and
taken, renewed or left to its holder: only the balancer holding it writes,
every one of its alias updates carrying the lease as a prerequisite; the
others report ``standby``.

Nothing here raises on a bad peer: DNS, health page and SMTP failures end up
in the alias's :class:`AliasReport`, the log and the alerts, and the next
cycle tries again.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from lbserver.dns.decide import NO_ADDRESS, AliasDecision, Candidate, decide
from lbserver.config import Alias, Dns, Node
from lbserver.config.settings import LBSERVICE, POLL
from lbserver.dns.lease import LOST, STANDBY_ROLE, UNKNOWN, WRITER, LeaseKeeper, LeaseStatus, lease_settings
from lbserver.config.tsigkey import KeyFileError, TsigKey, load_key, permission_warning
from lbserver.dns.update import DnsError, RRsets, channel, display_name, needs_update, query_many, \
    replace_many, replace_rrsets, sort_addresses, split_families
from lbserver.dns.healthurl import HealthFetchError, HealthPage, fetch, format_time, match_hosts, match_nodes, parse_page
from lbserver.dns.notify import AlertTracker, Mailer, MailSettings, parse_contacts

log = logging.getLogger("lbserver.dns")

BATCH = 100
"""Aliases changed by one update message at most (each adds about 300 bytes; a message holds 64 KiB)."""

UPDATED, UNCHANGED, ERROR, DISABLED, STANDBY = "updated", "unchanged", "error", "disabled", "standby"


@dataclass(frozen=True)
class AliasReport:
    """The outcome of one alias in one cycle, for /status, ``--once`` and mails."""

    alias: str
    fqdn: str
    group: str
    enabled: bool
    result: str
    published: tuple[str, ...] = ()
    published_nodes: tuple[str, ...] = ()
    spare: tuple[str, ...] = ()
    excluded: Mapping[str, str] = field(default_factory=dict)
    fallback: bool = False
    error: str | None = None
    health_problem: str | None = None
    previous: tuple[str, ...] = ()
    checked_at: float = 0.0
    last_change: float | None = None
    node_addresses: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    lease: Mapping | None = None
    """The DNS lease as this cycle saw it (:meth:`LeaseStatus.to_dict`); None when off or the alias is disabled."""

    def to_dict(self) -> dict:
        """A JSON-ready dict."""
        return {
            "alias": self.alias,
            "fqdn": self.fqdn,
            "group": self.group,
            "enabled": self.enabled,
            "result": self.result,
            "published": list(self.published),
            "published_nodes": list(self.published_nodes),
            "spare": list(self.spare),
            "excluded": dict(self.excluded),
            "fallback": self.fallback,
            "error": self.error,
            "health_problem": self.health_problem,
            "previous": list(self.previous),
            "checked_at": self.checked_at,
            "last_change": self.last_change,
            "node_addresses": {n: list(a) for n, a in self.node_addresses.items()},
            "lease": dict(self.lease) if self.lease is not None else None,
        }


def _node_label(addr: str, report: AliasReport) -> str:
    names = [n for n, addrs in report.node_addresses.items() if addr in addrs]
    return f"{addr} ({', '.join(names)})" if names else f"{addr} (not a node of the group)"


def lease_line(lease: Mapping, now: float | None = None) -> str:
    """One line on the DNS lease: who writes the aliases, until when, and what this balancer is."""
    now = time.time() if now is None else now
    me, holder, expires = lease.get("me"), lease.get("holder"), lease.get("expires")
    if expires is None:
        until = ""
    elif expires > now:
        until = f" until {format_time(expires)} (in {expires - now:.0f} s)"
    else:
        until = f", expired at {format_time(expires)}"
    role = lease.get("role")
    if role == WRITER:
        what = f"held by this balancer ({me}){until}: it writes the aliases" if holder else \
            f"none held: this balancer ({me}) writes the aliases without a lease"
    elif role == STANDBY_ROLE:
        what = f"held by {holder or 'an unknown balancer'}{until}; this balancer ({me}) stands by"
    else:
        what = f"unknown; this balancer ({me}) does not publish"
    return f"DNS lease {lease.get('name')}: {what}"


def format_reports(reports: Sequence[AliasReport]) -> str:
    """A plain-text table: one block of rows per alias, problems on lines of their own.

    The DNS lease (one for all aliases) comes first, on a line of its own.
    """
    header = ("ALIAS", "RESULT", "PUBLISHED", "NOT PUBLISHED")
    rows: list[tuple[str, str, str, str]] = []
    notes: dict[int, list[str]] = {}
    for rep in reports:
        pub = [_node_label(a, rep) for a in rep.published] or ["-"]
        notpub = [f"{n}: spare (num-out/best-hosts)" for n in rep.spare]
        notpub += [f"{n}: {why}" for n, why in sorted(rep.excluded.items())]
        notpub = notpub or ["-"]
        result = rep.result + (" FALLBACK" if rep.fallback else "")
        for i in range(max(len(pub), len(notpub))):
            rows.append((rep.fqdn if i == 0 else "", result if i == 0 else "",
                         pub[i] if i < len(pub) else "", notpub[i] if i < len(notpub) else ""))
        extra = []
        if rep.fallback:
            extra.append("no good node: kept one address (at-least-one rule)")
        if rep.error:
            extra.append(f"error: {rep.error}")
        if rep.health_problem:
            extra.append(f"health-url: {rep.health_problem}")
        if extra:
            notes[len(rows) - 1] = extra
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(3)]
    out = []
    leases = [rep.lease for rep in reports if rep.lease is not None]
    for lease in leases[:1]:
        out.append(lease_line(lease))
        if lease.get("problem"):
            out.append(f"  ! lease: {lease['problem']}")
        out.append("")

    def fmt(r: tuple[str, ...]) -> str:
        return "  ".join(r[i].ljust(widths[i]) for i in range(3)) + "  " + r[3]

    out.append(fmt(header).rstrip())
    for i, r in enumerate(rows):
        out.append(fmt(r).rstrip())
        for note in notes.get(i, ()):
            out.append(f"  ! {note}")
    if not reports:
        out.append("(no aliases configured)")
    return "\n".join(out) + "\n"


def resolve_node(node: Node) -> tuple[str, ...]:
    """A node's addresses, each family on its own.

    A: the ``ip`` attribute, else the address host when it is an IPv4
    literal; AAAA: the ``ip6`` attribute, else the host when it is an IPv6
    literal. When the host is a name and neither attribute is given, it is
    resolved with getaddrinfo (all its A and AAAA). Raises OSError
    (socket.gaierror) when a name does not resolve. A zone id
    (``fe80::1%eth0``) is dropped: it means nothing to DNS clients.
    """
    out: list[str] = []
    for attr in (node.ip, node.ip6):
        if attr:
            out.extend(_literal_or_resolve(attr))
    host = node.host.strip("[]")
    try:
        lit = _plain_ip(host)
    except ValueError:
        if not out:
            out.extend(_literal_or_resolve(host))
    else:
        if not any(ipaddress.ip_address(a).version == lit.version for a in out):
            out.append(str(lit))
    return sort_addresses(out)


def _plain_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An IP literal without its zone id (``fe80::1%eth0`` -> ``fe80::1``); ValueError otherwise."""
    return ipaddress.ip_address(text.split("%", 1)[0])


def _literal_or_resolve(item: str) -> list[str]:
    try:
        return [str(_plain_ip(item.strip("[]")))]
    except ValueError:
        pass
    found = []
    for info in socket.getaddrinfo(item, None, type=socket.SOCK_STREAM):
        found.append(str(_plain_ip(info[4][0])))
    return found


def unpublishable(addr: str) -> str | None:
    """Why ``addr`` must not go into an alias (link-local, multicast, unspecified), or None.

    Loopback is allowed: a single-host setup may publish 127.0.0.1.
    """
    ip = _plain_ip(addr)
    if ip.is_link_local:
        return "link-local, only reachable on its own network link"
    if ip.is_multicast:
        return "multicast"
    if ip.is_unspecified:
        return "unspecified"
    return None


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
    gives the time of the lease decisions.
    """

    def __init__(self, dns: Dns, nodes: Mapping[str, Node], *, state_file: str | None = None,
                 resolver=resolve_node, poll_interval: float = POLL.interval.default,
                 terminal_port: int = LBSERVICE.listen.default[1], once: bool = False, clock=time.time) -> None:
        self._lock = threading.Lock()
        self._cycle_lock = threading.Lock()
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
        settings = lease_settings(dns, poll_interval, terminal_port)
        self._lease: LeaseKeeper | None = LeaseKeeper(settings, once=once) if settings else None
        self._old_lease: tuple[LeaseKeeper, Dns, TsigKey | None] | None = None

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
                    terminal_port: int = LBSERVICE.listen.default[1]) -> None:
        """Use a reloaded configuration; alert state, last-change times and the lease held are kept.

        When the lease's record, zone, server or holder changes, the old lease
        is released at the start of the next cycle.
        """
        key, key_error = self._load_key(dns)
        settings = lease_settings(dns, poll_interval, terminal_port)
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
                self._lease = LeaseKeeper(settings, once=self._once) if settings else None
            self._dns = dns
            self._nodes = dict(nodes)
            self._key, self._key_error = key, key_error
            if dns.alert_state_file and dns.alert_state_file != self._state_file:
                self._state_file = dns.alert_state_file
            pending = self._mailer.pending
            self._mailer = Mailer(_mail_settings(dns))
            self._mailer.pending = pending

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

    def _lease_cycle(self, keeper: LeaseKeeper | None, dns: Dns, key: TsigKey | None,
                     key_error: str | None) -> LeaseStatus | None:
        """This cycle's lease: read, then taken, renewed or left (None: no lease, publish freely)."""
        self._release_old()
        if keeper is None:
            return None
        if not any(a.enabled for a in dns.aliases):
            keeper.release(dns, key)  # nothing to write: let another balancer have it
            return None
        return keeper.cycle(dns, key, key_error, self._clock())

    def _run_alias_safely(self, dns: Dns, alias: Alias, *args) -> "AliasReport | _Pending":
        try:
            return self._run_alias(dns, alias, *args)
        except Exception as exc:  # a bug must not stop the other aliases or the daemon
            log.exception("DNS arbiter: alias %s failed unexpectedly", alias.name)
            return AliasReport(alias=alias.name, fqdn=f"{alias.name}.{dns.zone}", group=alias.group,
                               enabled=alias.enabled, result=ERROR,
                               error=f"internal error: {type(exc).__name__}: {exc}", checked_at=time.time())

    def run_cycle(self, candidates: Mapping[str, Candidate], groups: Mapping[str, tuple[str, ...]],
                  nodes: Mapping[str, Node] | None = None) -> list[AliasReport]:
        """Evaluate and publish every alias once; return the reports. Never raises for peer failures.

        ``nodes`` are the nodes in force when they differ from the configuration's (the members of
        groups fed by another balancer change at each poll).
        """
        with self._cycle_lock:
            with self._lock:
                dns, key, key_error = self._dns, self._key, self._key_error
                nodes = dict(self._nodes if nodes is None else nodes)
                mailer, keeper = self._mailer, self._lease
            if key is None:
                # The file may have been fixed since the last (re)load.
                key, key_error = self._load_key(dns, key_error)
                with self._lock:
                    self._key, self._key_error = key, key_error
            # Forget aliases removed by a reload; only this thread touches these two maps.
            names = {a.name for a in dns.aliases}
            for memo in (self._last_change, self._known):
                for gone in [k for k in memo if k not in names]:
                    del memo[gone]
            pages: dict[str, HealthPage | str] = {}
            conditions: dict[str, str] = {}
            lease = _CycleLease(keeper)
            # One connection to the DNS server carries the whole cycle's queries and updates.
            with channel(dns.server, dns.port, dns.timeout):
                try:
                    lease.status = self._lease_cycle(keeper, dns, key, key_error)
                except Exception as exc:  # a bug must not stop the daemon; nothing is written without a lease
                    log.exception("DNS arbiter: the DNS lease failed unexpectedly")
                    lease.status = LeaseStatus(name=dns.lease, me=keeper.settings.holder if keeper else "?",
                                               role=UNKNOWN, problem=f"internal error: {type(exc).__name__}: {exc}")
                # The submission test pages first (they may be slow), then every alias's records in one
                # pipelined batch, read as late as possible before deciding; a failure goes to its alias.
                for alias in dns.aliases:
                    if alias.enabled and alias.health_url:
                        self._health_page(alias, dns.timeout, pages)
                current = query_many(dns.server, dns.port, dns.zone, [a.name for a in dns.aliases if a.enabled],
                                     dns.timeout)
                outcomes = [self._run_alias_safely(dns, alias, nodes, candidates, groups, key, key_error, pages,
                                                   lease, current.get(alias.name)) for alias in dns.aliases]
                pending = [o for o in outcomes if isinstance(o, _Pending)]
                try:
                    done = self._flush(dns, key, pending, lease) if pending else {}
                except Exception as exc:  # a bug must not stop the daemon: these aliases report it
                    log.exception("DNS arbiter: sending the updates failed unexpectedly")
                    done = {p.alias: p.finish(DnsError("internal", f"{type(exc).__name__}: {exc}")) for p in pending}
                reports = [done[o.alias] if isinstance(o, _Pending) else o for o in outcomes]
            for rep in reports:
                if rep.enabled and rep.result == STANDBY:
                    # The writer reports the aliases' problems: keep ours as they were, neither new nor cleared.
                    conditions.update({k: v for k, v in self._tracker.active.items()
                                       if k.split("/")[1:2] == [rep.alias] and not k.startswith("dns/")})
                elif rep.enabled:
                    conditions.update(self._conditions(dns, rep))
            final = lease.status
            if final is not None:
                reports = [replace(r, lease=final.to_dict()) if r.enabled else r for r in reports]
                if final.alert and final.problem:
                    conditions["lease"] = f"DNS lease {final.name}: {final.problem}"
            enabled = {a.name for a in dns.aliases if a.enabled}
            for key_ in list(self._tracker.active):
                parts = key_.split("/")
                if len(parts) > 1 and parts[1] not in enabled:
                    self._tracker.forget(key_)
            cleared = {k: _cleared_text(k, v) for k, v in self._tracker.active.items() if k not in conditions}
            changes = self._tracker.update(conditions, cleared)
            for ch in changes:
                log.log(logging.WARNING if ch.raised else logging.INFO, "DNS arbiter: %s%s",
                        "" if ch.raised else "resolved: ", ch.message)
            if changes or mailer.pending:
                mailer.send(changes, format_reports(reports))
            if changes and self._state_file:
                try:
                    self._tracker.save(self._state_file)
                except OSError as exc:
                    log.warning("cannot save alert state to %s: %s", self._state_file, exc.strerror or exc)
            with self._lock:
                self._reports = tuple(reports)
            return reports

    @staticmethod
    def _health_page(alias: Alias, timeout: float, pages: dict[str, HealthPage | str]) -> HealthPage | str:
        """The alias's submission test page, read once per URL and cycle (an error: its text)."""
        key = f"{alias.health_url}\0{alias.health_max_age}"
        if key not in pages:
            try:
                text = fetch(alias.health_url, timeout)
                pages[key] = parse_page(text, time.time(), alias.health_max_age)
            except HealthFetchError as exc:
                pages[key] = str(exc)
        return pages[key]

    def _health_exclusions(self, alias: Alias, members: Sequence[str], nodes: Mapping[str, Node],
                           timeout: float, pages: dict[str, HealthPage | str]) -> tuple[dict[str, str], str | None]:
        if not alias.health_url:
            return {}, None
        page = self._health_page(alias, timeout, pages)
        if isinstance(page, str):
            return {}, f"cannot read the submission test page: {page} (results ignored this cycle)"
        notes: list[str] = []
        if page.problems:
            shown = "; ".join(page.problems[:3]) + (f"; and {len(page.problems) - 3} more" if len(page.problems) > 3 else "")
            notes.append(f"{alias.health_url}: unparsable lines ignored: {shown}")
        pairs = [(m, nodes[m].host) for m in members if m in nodes]
        excl: dict[str, str] = {}
        matched = match_nodes(page, pairs)
        for name, res in matched.items():
            if not res.ok:
                excl[name] = f"submission test failed (ERRORFLAG {res.flag} at {format_time(res.timestamp)})"
        # A node whose tests stopped arriving stays in (no news is not a failure), but it is said.
        for name, hosts in sorted(match_hosts(page.stale, pairs).items()):
            if name not in matched:
                age = min(page.stale[h] for h in hosts)
                shown_age = f"{age:.0f} s" if age < 1e9 else "decades"
                notes.append(f"no recent submission test result for node {name} (newest is {shown_age} old, "
                             f"limit {alias.health_max_age:g} s): counted as passed")
        problem = "; ".join(notes) or None
        return excl, problem

    def _run_alias(self, dns: Dns, alias: Alias, nodes: Mapping[str, Node], candidates: Mapping[str, Candidate],
                   groups: Mapping[str, tuple[str, ...]], key: TsigKey | None, key_error: str | None,
                   pages: dict[str, HealthPage | str], lease: _CycleLease,
                   prefetched: RRsets | DnsError | None = None) -> "AliasReport | _Pending":
        fqdn = display_name(alias.name, dns.zone)
        now = time.time()
        base = dict(alias=alias.name, fqdn=fqdn, group=alias.group, checked_at=now,
                    last_change=self._last_change.get(alias.name))
        if not alias.enabled:
            return AliasReport(enabled=False, result=DISABLED, **base)
        where = f"server {dns.server}:{dns.port} zone {dns.zone} alias {alias.name}"
        members = tuple(groups.get(alias.group, ()))
        extra, health_problem = self._health_exclusions(alias, members, nodes, dns.timeout, pages)
        addresses: dict[str, tuple[str, ...]] = {}
        for m in members:
            node = nodes.get(m)
            if node is None:
                extra.setdefault(m, f"{NO_ADDRESS}: not a configured node")
                continue
            try:
                addresses[m] = self._resolver(node)
            except (OSError, UnicodeError) as exc:
                extra[m] = f"{NO_ADDRESS}: cannot resolve {node.host!r} ({getattr(exc, 'strerror', None) or exc})"
                continue
            if not addresses[m]:
                extra[m] = f"{NO_ADDRESS}: {node.host!r} has no address"
                continue
            bad = {a: why for a in addresses[m] if (why := unpublishable(a))}
            if bad:
                addresses[m] = tuple(a for a in addresses[m] if a not in bad)
                if not addresses[m]:
                    extra[m] = f"{NO_ADDRESS}: " + "; ".join(f"{a} is {why}" for a, why in bad.items())
        if health_problem:
            log.debug("DNS arbiter: alias %s: %s", alias.name, health_problem)

        def report(result: str, decision: AliasDecision | None, published: tuple[str, ...],
                   error: str | None = None, previous: tuple[str, ...] = ()) -> AliasReport:
            return AliasReport(enabled=True, result=result, published=published,
                               published_nodes=decision.published if decision else (),
                               spare=decision.spare if decision else (),
                               excluded=dict(decision.excluded) if decision else {},
                               fallback=decision.fallback if decision else False,
                               error=error, health_problem=health_problem, previous=previous,
                               node_addresses=addresses, **base)

        if isinstance(prefetched, DnsError):
            msg = f"cannot read the current records ({where}): {prefetched}"
            log.warning("DNS arbiter: %s", msg)
            # Decide anyway so the report shows what would be published.
            decision = decide(alias.name, members, candidates, num_out=alias.num_out, best_hosts=alias.best_hosts,
                              extra_exclusions=extra)
            return report(ERROR, decision, self._known.get(alias.name, ()), msg)
        current = prefetched  # the cycle's pipelined query (None only for a disabled alias, returned above)
        held = set(current.a | current.aaaa)
        self._known[alias.name] = current.addresses
        current_nodes = [m for m, addrs in addresses.items() if held & set(addrs)]
        decision = decide(alias.name, members, candidates, num_out=alias.num_out, best_hosts=alias.best_hosts,
                          extra_exclusions=extra, current=current_nodes)
        wanted_addrs = [a for n in decision.published for a in addresses.get(n, ())]
        if not wanted_addrs:
            msg = (f"nothing to publish ({where}): group {alias.group!r} has no node with an address; "
                   "the records stay as they are")
            log.warning("DNS arbiter: %s", msg)
            return report(ERROR, decision, current.addresses, msg)
        v4, v6 = split_families(wanted_addrs)
        wanted = RRsets(a=v4, aaaa=v6, ttl=dns.ttl)
        role = lease.role

        def standby() -> AliasReport:
            # What the DNS holds (the writer's choice), and this balancer's own view of the exclusions.
            return replace(report(STANDBY, decision, current.addresses), published_nodes=tuple(current_nodes),
                           spare=())

        if role == STANDBY_ROLE:
            return standby()
        if role == UNKNOWN:
            msg = f"not publishing ({where}): {lease.status.problem}"
            return report(ERROR, decision, current.addresses, msg)
        if not needs_update(current, wanted):
            return report(UNCHANGED, decision, current.addresses)
        if key is None:
            msg = f"cannot update ({where}): {key_error}"
            return report(ERROR, decision, current.addresses, msg)
        fenced = lease.keeper is not None and lease.status is not None

        def finish(exc: DnsError | None) -> AliasReport:
            """The report once the update's outcome is known."""
            if exc is not None:
                if fenced and exc.code in LOST:
                    # Fenced: another balancer took the lease while we were away. Not one record was written.
                    if lease.role != STANDBY_ROLE:
                        lease.status = lease.keeper.lost(dns)
                    return standby()
                msg = f"update failed ({where}): {exc}"
                log.warning("DNS arbiter: %s; the records stay as they are, retrying next cycle", msg)
                return report(ERROR, decision, current.addresses, msg)
            self._last_change[alias.name] = now
            self._known[alias.name] = wanted.addresses
            base["last_change"] = now
            log.info("DNS arbiter: %s now publishes %s (was %s)%s", fqdn, ", ".join(wanted.addresses),
                     ", ".join(current.addresses) or "nothing",
                     " [fallback: no good node]" if decision.fallback else "")
            return report(UPDATED, decision, wanted.addresses, previous=current.addresses)

        return _Pending(alias.name, wanted, finish)

    def _flush(self, dns: Dns, key: TsigKey, pending: list["_Pending"], lease: _CycleLease) -> dict[str, AliasReport]:
        """Send the cycle's changes in fenced update messages, read them back; each alias's report.

        The changes go together, :data:`BATCH` aliases to a message (a DNS
        message holds at most 64 KiB): one message is one zone change, one
        serial, however many aliases moved. When the server refuses a batch
        for another reason than the lease (say, an update policy that refuses
        one of the names), each of its aliases is sent on its own, so one bad
        alias does not hold the others back.
        """
        fence = lease.keeper.fence(dns) if lease.keeper is not None and lease.status is not None else None
        outcomes: dict[str, DnsError | None] = {}
        for start in range(0, len(pending), BATCH):
            chunk = pending[start:start + BATCH]
            try:
                outcomes.update(replace_many(dns.server, dns.port, dns.zone, {p.alias: p.wanted for p in chunk},
                                             key, dns.timeout, fence))
            except DnsError as exc:
                if len(chunk) == 1 or (fence is not None and exc.code in LOST):
                    outcomes.update((p.alias, exc) for p in chunk)
                    continue
                log.warning("DNS arbiter: the update of %d aliases together failed (%s); sending each alone",
                            len(chunk), exc)
                for p in chunk:
                    try:
                        replace_rrsets(dns.server, dns.port, dns.zone, p.alias, p.wanted, key, dns.timeout, fence)
                        outcomes[p.alias] = None
                    except DnsError as one:
                        outcomes[p.alias] = one
        return {p.alias: p.finish(outcomes[p.alias]) for p in pending}

    @staticmethod
    def _conditions(dns: Dns, rep: AliasReport) -> dict[str, str]:
        out: dict[str, str] = {}
        for node, why in rep.excluded.items():
            out[f"excluded/{rep.alias}/{node}"] = f"{rep.fqdn}: node {node} excluded ({why})"
        if rep.fallback and rep.published_nodes:
            out[f"fallback/{rep.alias}"] = (f"{rep.fqdn}: no good node left; keeping {', '.join(rep.published_nodes)} "
                                            "published (at-least-one rule)")
        if rep.error:
            out[f"dns/{rep.alias}"] = f"{rep.fqdn}: {rep.error}"
        if rep.health_problem:
            out[f"health/{rep.alias}"] = f"{rep.fqdn}: {rep.health_problem}"
        return out


@dataclass(frozen=True)
class _Pending:
    """An alias whose records must change: sent with the cycle's other changes, then ``finish`` reports."""

    alias: str
    wanted: RRsets
    finish: Callable[[DnsError | None], AliasReport]


class _CycleLease:
    """The lease during one cycle: its keeper, and what this balancer is (changed when a fenced update is refused)."""

    def __init__(self, keeper: LeaseKeeper | None, status: LeaseStatus | None = None) -> None:
        self.keeper = keeper
        self.status = status

    @property
    def role(self) -> str:
        """``writer`` (also without a lease), ``standby`` or ``unknown``."""
        return self.status.role if self.status is not None else WRITER


def _cleared_text(key: str, old: str) -> str:
    kind, _, rest = key.partition("/")
    alias, _, node = rest.partition("/")
    if kind == "excluded":
        return f"alias {alias}: node {node} is good again (no longer excluded)"
    if kind == "fallback":
        return f"alias {alias}: good nodes are back (at-least-one rule no longer needed)"
    if kind == "dns":
        return f"alias {alias}: DNS works again (records read and updated)"
    if kind == "health":
        return f"alias {alias}: submission test page problems are gone (page readable and parsable, results recent)"
    if kind == "lease":
        return "the DNS lease problem is gone (the lease record is readable and ours to write, or another's)"
    return f"resolved: {old}"
