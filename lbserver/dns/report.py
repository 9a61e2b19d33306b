"""What the DNS arbiter says about its aliases: reports, the ``--once`` table, alert texts.

:class:`AliasReport` is the outcome of one alias in one cycle, as /status,
``lbserver --once`` and the alert mails show it. :func:`format_reports` is
the plain-text table (``--once`` and the mails' summary), :func:`lease_line`
its first line; :func:`alert_conditions` and :func:`cleared_text` word the
alert conditions a cycle's reports raise and their clearing (the mail itself is
composed by :mod:`lbserver.dns.notify`). Pure text: no I/O, no threads.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from lbserver.dns.healthurl import format_time
from lbserver.dns.lease import STANDBY_ROLE, WRITER, LeaseStatus

UPDATED, UNCHANGED, ERROR, DISABLED, STANDBY = "updated", "unchanged", "error", "disabled", "standby"
"""An alias's ``result`` in a cycle."""


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


def _alias_conditions(rep: AliasReport) -> dict[str, str]:
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


def alert_conditions(reports: Sequence[AliasReport], active: Mapping[str, str],
                     lease: LeaseStatus | None) -> dict[str, str]:
    """The alert conditions that hold after a cycle, as ``{key: message}`` (key ``kind/alias[/node]``).

    ``active`` are the conditions held so far: an alias on standby keeps
    its own as they were, neither new nor cleared (the writer reports the
    aliases' problems), but for a DNS error: its records were read, so that
    one is over.
    """
    out: dict[str, str] = {}
    for rep in reports:
        if rep.enabled and rep.result == STANDBY:
            out.update({k: v for k, v in active.items()
                        if k.split("/")[1:2] == [rep.alias] and not k.startswith("dns/")})
        elif rep.enabled:
            out.update(_alias_conditions(rep))
    if lease is not None and lease.alert and lease.problem:
        out["lease"] = f"DNS lease {lease.name}: {lease.problem}"
    return out


def cleared_text(key: str, old: str) -> str:
    """How the mail words the end of condition ``key``, raised with the message ``old``."""
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
