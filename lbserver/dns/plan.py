"""One alias's part of a DNS cycle, decided before anything is sent: a plain value.

:func:`plan_alias` turns an ``<alias>`` and what the cycle found
(:class:`CycleFacts`: the balancer's candidates and groups, the nodes'
addresses, the submission test pages, the records the DNS server holds, the
DNS lease) into an :class:`AliasPlan`: the records to publish, or none, and
the alias's report. A plan with records also carries the report to give
should the update fail or be refused for the lease; :func:`settle` picks
the one the server's answer calls for. The alert conditions follow from the
report (:func:`lbserver.dns.report.alert_conditions`).

Pure: no I/O, no clock, no threads. :mod:`lbserver.dns.arbiter` gathers the
facts, applies the plans and sends the mail.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from lbserver.config import Alias, Dns, Node
from lbserver.dns.addresses import unpublishable
from lbserver.dns.decide import NO_ADDRESS, AliasDecision, Candidate, decide
from lbserver.dns.healthurl import HealthPage, format_time, match_hosts, match_nodes
from lbserver.dns.lease import LOST, STANDBY_ROLE, UNKNOWN, WRITER, LeaseStatus
from lbserver.dns.report import DISABLED, ERROR, STANDBY, UNCHANGED, UPDATED, AliasReport
from lbserver.dns.update import DnsError, RRsets, display_name, needs_update, split_families


@dataclass(frozen=True)
class CycleFacts:
    """What one cycle knows before deciding any alias: everything :func:`plan_alias` reads."""

    dns: Dns
    candidates: Mapping[str, Candidate]
    """The balancer's view of each node (:func:`lbserver.dns.service.candidates`)."""
    groups: Mapping[str, tuple[str, ...]]
    """Each group's member nodes."""
    nodes: Mapping[str, Node]
    """The nodes in force."""
    addresses: Mapping[str, tuple[str, ...] | str]
    """Each member node's addresses as resolved, or (a string) why they could not be."""
    pages: Mapping[str, HealthPage | str]
    """By alias name, its submission test page, or (a string) why it could not be read."""
    records: Mapping[str, RRsets | DnsError]
    """By alias name, what the DNS server holds now, or why it could not be read."""
    known: Mapping[str, tuple[str, ...]]
    """By alias name, the addresses it last held as far as the previous cycles know."""
    last_change: Mapping[str, float]
    """By alias name, when this balancer last changed its records."""
    lease: LeaseStatus | None
    """The DNS lease this cycle (None: no lease, publish freely)."""
    key_error: str | None
    """Why updates cannot be signed; None when the TSIG key is usable."""
    now: float
    """The time of the decisions."""

    @property
    def role(self) -> str:
        """``writer`` (also without a lease), ``standby`` or ``unknown``."""
        return self.lease.role if self.lease is not None else WRITER


@dataclass(frozen=True)
class AliasPlan:
    """An alias's decision for this cycle.

    Without ``records`` nothing is sent and ``report`` is final. With them,
    ``report`` is the outcome should the server apply them, ``if_failed``
    should the update fail (its error to be completed with the server's)
    and ``if_fenced`` should it be refused because another balancer took
    the lease.
    """

    report: AliasReport
    records: RRsets | None = None
    if_failed: AliasReport | None = None
    if_fenced: AliasReport | None = None
    warning: str | None = None
    """A problem to log when the plan is applied."""

    @property
    def alias(self) -> str:
        """The alias's name."""
        return self.report.alias


def health_exclusions(alias: Alias, members: Sequence[str], nodes: Mapping[str, Node],
                      page: HealthPage | str | None) -> tuple[dict[str, str], str | None]:
    """The members a submission test page excludes, with why, and the page's problems in one line (or None).

    ``page`` is the alias's page, a string saying why it could not be read,
    or None when the alias has no ``health-url``.
    """
    if page is None:
        return {}, None
    if isinstance(page, str):
        return {}, f"cannot read the submission test page: {page} (results ignored this cycle)"
    notes: list[str] = []
    if page.problems:
        more = len(page.problems) - 3
        shown = "; ".join(page.problems[:3]) + (f"; and {more} more" if more > 0 else "")
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
    return excl, "; ".join(notes) or None


def member_addresses(members: Sequence[str], nodes: Mapping[str, Node], resolved: Mapping[str, tuple[str, ...] | str]
                     ) -> tuple[dict[str, tuple[str, ...]], dict[str, str]]:
    """Each member's publishable addresses, and the members left without any, with why.

    A member that resolved keeps its entry even when none of its addresses
    may be published (link-local, multicast, unspecified): /status shows it.
    """
    addresses: dict[str, tuple[str, ...]] = {}
    none: dict[str, str] = {}
    for m in members:
        node = nodes.get(m)
        found = resolved.get(m, ())
        if node is None:
            none[m] = f"{NO_ADDRESS}: not a configured node"
        elif isinstance(found, str):
            none[m] = f"{NO_ADDRESS}: {found}"
        elif not found:
            addresses[m] = ()
            none[m] = f"{NO_ADDRESS}: {node.host!r} has no address"
        else:
            bad = {a: why for a in found if (why := unpublishable(a))}
            addresses[m] = tuple(a for a in found if a not in bad)
            if not addresses[m]:
                none[m] = f"{NO_ADDRESS}: " + "; ".join(f"{a} is {why}" for a, why in bad.items())
    return addresses, none


def _report(base: AliasReport, result: str, decision: AliasDecision, published: tuple[str, ...], *,
            error: str | None = None, previous: tuple[str, ...] = ()) -> AliasReport:
    return replace(base, result=result, published=published, published_nodes=decision.published,
                   spare=decision.spare, excluded=dict(decision.excluded), fallback=decision.fallback,
                   error=error, previous=previous)


def _standby(base: AliasReport, decision: AliasDecision, current: RRsets, current_nodes: tuple[str, ...]
             ) -> AliasReport:
    # What the DNS holds (the writer's choice), and this balancer's own view of the exclusions.
    return _report(base, STANDBY, replace(decision, published=current_nodes, spare=()), current.addresses)


def plan_alias(alias: Alias, facts: CycleFacts) -> AliasPlan:
    """What ``alias`` publishes and reports this cycle, given ``facts``."""
    dns = facts.dns
    fqdn = display_name(alias.name, dns.zone)
    last_change = facts.last_change.get(alias.name)
    if not alias.enabled:
        return AliasPlan(AliasReport(alias=alias.name, fqdn=fqdn, group=alias.group, enabled=False, result=DISABLED,
                                     checked_at=facts.now, last_change=last_change))
    where = f"server {dns.server}:{dns.port} zone {dns.zone} alias {alias.name}"
    members = tuple(facts.groups.get(alias.group, ()))
    failed_tests, health_problem = health_exclusions(alias, members, facts.nodes, facts.pages.get(alias.name))
    addresses, no_address = member_addresses(members, facts.nodes, facts.addresses)
    extra = {**failed_tests, **no_address}  # no address outweighs a failed test: it can never be published
    base = AliasReport(alias=alias.name, fqdn=fqdn, group=alias.group, enabled=True, result=ERROR,
                       health_problem=health_problem, checked_at=facts.now, last_change=last_change,
                       node_addresses=addresses)
    current = facts.records[alias.name]
    if isinstance(current, DnsError):
        msg = f"cannot read the current records ({where}): {current}"
        # Decide anyway so the report shows what would be published.
        decision = decide(alias.name, members, facts.candidates, num_out=alias.num_out, best_hosts=alias.best_hosts,
                          extra_exclusions=extra)
        return AliasPlan(_report(base, ERROR, decision, facts.known.get(alias.name, ()), error=msg), warning=msg)
    held = set(current.a | current.aaaa)
    current_nodes = tuple(m for m, addrs in addresses.items() if held & set(addrs))
    decision = decide(alias.name, members, facts.candidates, num_out=alias.num_out, best_hosts=alias.best_hosts,
                      extra_exclusions=extra, current=current_nodes)
    wanted_addrs = [a for n in decision.published for a in addresses.get(n, ())]
    if not wanted_addrs:
        msg = (f"nothing to publish ({where}): group {alias.group!r} has no node with an address; "
               "the records stay as they are")
        return AliasPlan(_report(base, ERROR, decision, current.addresses, error=msg), warning=msg)
    v4, v6 = split_families(wanted_addrs)
    wanted = RRsets(a=v4, aaaa=v6, ttl=dns.ttl)
    if facts.role == STANDBY_ROLE:
        return AliasPlan(_standby(base, decision, current, current_nodes))
    if facts.role == UNKNOWN:
        msg = f"not publishing ({where}): {facts.lease.problem if facts.lease else None}"
        return AliasPlan(_report(base, ERROR, decision, current.addresses, error=msg))
    if not needs_update(current, wanted):
        return AliasPlan(_report(base, UNCHANGED, decision, current.addresses))
    if facts.key_error is not None:
        msg = f"cannot update ({where}): {facts.key_error}"
        return AliasPlan(_report(base, ERROR, decision, current.addresses, error=msg))
    return AliasPlan(
        report=_report(replace(base, last_change=facts.now), UPDATED, decision, wanted.addresses,
                       previous=current.addresses),
        records=wanted,
        if_failed=_report(base, ERROR, decision, current.addresses, error=f"update failed ({where})"),
        if_fenced=_standby(base, decision, current, current_nodes))


def settle(plan: AliasPlan, error: DnsError | None, fenced: bool) -> AliasReport:
    """The report of a plan whose records were sent: ``error`` is the update's (None: applied).

    ``fenced`` says the update carried the lease as its prerequisite: a
    refusal of that prerequisite means another balancer took the lease
    meanwhile, not one record was written, and the alias stands by.
    """
    if error is None:
        return plan.report
    if fenced and error.code in LOST:
        return plan.if_fenced
    return replace(plan.if_failed, error=f"{plan.if_failed.error}: {error}")
