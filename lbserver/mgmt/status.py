"""The balancer's state as plain data: the /status JSON, and the node table lbctl and ``--once`` print.

Pure functions over a :class:`~lbserver.core.view.BalancerView`; the
management service, lbctl and ``lbserver --once`` all present the same
facts. The table formatter works on the /status document alone (standard
library only), so lbctl can import it without the daemon's dependencies.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

from common.version import __version__
from lbserver.core.sessions import at_limit, limit_words, state_counts

if TYPE_CHECKING:
    from lbserver.core.view import BalancerView

KEY_VARIABLES = ("NBPROC", "LOADAVG", "MEMUSEDPCT", "NBSESSIONS")


def health_word(view) -> str:
    """One word for a node's state: up, down, unhealthy, drained or unknown."""
    if view.up is None:
        return "unknown"
    if not view.up:
        return "down"
    if view.drained:
        return "drained"
    return "up" if view.healthy else "unhealthy"


def source_drain_words(view) -> str:
    """``drained at the source``, with the agent's ``: REASON`` when it gave one."""
    return f"drained at the source: {view.drain_reason}" if view.drain_reason else "drained at the source"


def drain_words(view) -> tuple[str, ...]:
    """Who drained a node, in words: ``drained by admin``, ``drained at the source: REASON``."""
    if not view.drained:
        return ()
    words = ["drained by admin"] if "admin" in view.drained_by else []
    if "agent" in view.drained_by:
        words.append(source_drain_words(view))
    return tuple(words)


def why(view, sessions_now: int | None = None) -> str:
    """Why a node is passed over for new sessions, or an empty string.

    ``sessions_now``: its sessions as its ``max-sessions`` counts them
    (None: not known, the limit is not judged).
    """
    limit = (limit_words(sessions_now, view.max_sessions),) \
        if sessions_now is not None and view.healthy and at_limit(sessions_now, view.max_sessions) else ()
    return "; ".join((*drain_words(view), *view.reasons, *limit))


def build_status(bal: "BalancerView", aliases: list[dict] | None = None,
                 peers: dict[str, Any] | None = None, haproxy_map: dict[str, Any] | None = None,
                 x2go: dict[str, Any] | None = None, dns: dict[str, Any] | None = None) -> dict[str, Any]:
    """The /status document (schema in the manual's API chapter).

    ``dns`` is the DNS arbiter's figures (:meth:`~lbserver.mgmt.aliases.AliasSource.dns_figures`).
    ``aliases`` are the DNS reports, ``peers`` the state of the exchange with peer balancers (None: no ``<peers>``),
    ``haproxy_map`` the HAProxy session map's (None: no ``<haproxy-map>``), ``x2go`` the X2Go services'
    (None: neither ``<x2gobroker>`` nor ``<x2go-loadchecker>``).
    """
    cfg = bal.config
    snap = bal.snapshot
    picks = bal.pick_counts()
    groups: dict[str, Any] = {}
    group_errors = bal.group_errors()
    node_groups: dict[str, list[str]] = {}
    for gname, members in snap.groups.items():
        ranked = snap.ranked(gname)
        total = sum(v.weight for v in ranked)
        groups[gname] = {
            "default": gname == snap.default_group,
            "nodes": list(members),
            "selectable": [v.name for v in ranked],
            "shares": {v.name: round(v.weight / total, 4) if total > 0 else 0.0 for v in ranked},
            "error": group_errors.get(gname),
        }
        for n in members:
            node_groups.setdefault(n, []).append(gname)
    nodes: dict[str, Any] = {}
    for name, view in snap.nodes.items():
        node = cfg.nodes[name]
        active, disconnected = state_counts(view.sessions)
        counted = bal.sessions_now(name)
        nodes[name] = {
            "address": node.address,
            "ip": node.answer_ip,
            "groups": node_groups.get(name, []),
            "health": health_word(view),
            "why": why(view, counted),
            "up": view.up,
            "healthy": view.healthy,
            "drained": view.drained,
            "drained_by": list(view.drained_by),
            "weight": round(view.weight, 3),
            "size": round(view.size, 3),
            "reasons": list(view.reasons),
            "error": view.error,
            "last_success": view.last_success,
            "consecutive_failures": bal.consecutive_failures(name),
            "picks": picks.get(name, 0),
            "variables": dict(view.variables),
            "users": sorted(view.users),
            "sessions": {"active": active, "disconnected": disconnected, "counted": counted},
            "max_sessions": view.max_sessions,
            "at_session_limit": at_limit(counted, view.max_sessions),
            "rules": [r.to_dict() for r in view.rules],
        }
    cycle = bal.last_cycle
    return {
        "version": __version__,
        "config": cfg.path,
        "generated_at": time.time(),
        "started_at": bal.started_at,
        "default_group": snap.default_group,
        "unreported_variables": list(snap.unreported),
        "poll": {"interval": cfg.poll.interval, "timeout": cfg.poll.timeout,
                 "rise": cfg.poll.rise, "fall": cfg.poll.fall},
        "last_poll": None if cycle is None else {
            "started": cycle.started, "duration": round(cycle.duration, 4),
            "polled": cycle.polled, "failed": cycle.failed},
        "errors": {n: v["error"] for n, v in nodes.items() if v["error"]},
        "groups": groups,
        "nodes": nodes,
        "aliases": list(aliases or ()),
        "dns": dns,
        "peers": peers,
        "haproxy_map": haproxy_map,
        "x2go": x2go,
    }


COLUMNS = ("NODE", "HEALTH", "WEIGHT", "SHARE", "LOAD", "MEM%", "SESS", "PICKS", "WHY")
COLUMN_VARIABLES = ("LOADAVG", "MEMUSEDPCT", "NBSESSIONS")
"""The variables of LOAD, MEM% and SESS; every other rule variable gets a column of its own.

SESS shows the sessions as ``active/disconnected`` when the document has
them, ``/limit`` added for a node with ``max-sessions``."""


def rule_columns(status: dict[str, Any], names: Iterable[str]) -> list[str]:
    """The rule variables of nodes ``names`` that no fixed column shows, in rule order.

    A site weighing servers on a variable of its own must see that figure,
    since it is the one the weights differ by.
    """
    extra: list[str] = []
    for name in names:
        for rule in status["nodes"][name].get("rules", ()):
            if rule["name"] not in COLUMN_VARIABLES and rule["name"] not in extra:
                extra.append(rule["name"])
    return extra


def node_table(status: dict[str, Any], names: Iterable[str], shares: Mapping[str, float] | None = None,
               paint: Callable[[str], str] | None = None) -> list[str]:
    """The nodes ``names`` of a /status document as aligned text lines, a header first.

    ``shares`` (a group's) fills the SHARE column; ``paint`` may colour the
    health word (its width is measured before painting). The variables of
    :func:`rule_columns` come after SESS.
    """
    names = list(names)
    extra = rule_columns(status, names)
    head = COLUMNS.index("PICKS")
    rows = [(*COLUMNS[:head], *extra, *COLUMNS[head:])]
    for name in names:
        n = status["nodes"][name]
        v = n["variables"]
        share = (shares or {}).get(name)
        rows.append((name, n["health"], f"{n['weight']:.1f}", "-" if share is None else f"{share * 100:.0f}%",
                     _fmt(v.get("LOADAVG")), _fmt(v.get("MEMUSEDPCT")), _sessions_cell(n),
                     *(_fmt(v.get(x)) for x in extra), str(n["picks"]), n["why"]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for i, r in enumerate(rows):
        cells = [c.ljust(w) for c, w in zip(r, widths)]
        if i and paint is not None:
            cells[1] = paint(r[1]) + " " * (widths[1] - len(r[1]))
        lines.append("  ".join(cells).rstrip())
    return lines


def format_table(status: dict[str, Any]) -> str:
    """Every node of a /status document as one text table (``lbserver --once``)."""
    return "\n".join(node_table(status, status["nodes"])) + "\n"


def _sessions_cell(node: dict[str, Any]) -> str:
    """``active/disconnected`` (and ``/max-sessions``), or NBSESSIONS from a document without sessions."""
    s = node.get("sessions")
    if not s:
        return _fmt(node["variables"].get("NBSESSIONS"))
    limit = node.get("max_sessions")
    return f"{s['active']}/{s['disconnected']}" + (f" of {limit}" if limit else "")


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)
