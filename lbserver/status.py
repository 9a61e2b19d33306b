"""The balancer's state as plain data: the /status JSON and the --once table.

Pure functions over what the balancer holds; the management service, lbctl
and ``lbserver --once`` all present the same facts.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from common.version import __version__

if TYPE_CHECKING:
    from lbserver.app import Balancer

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


def why(view) -> str:
    """The reason a node is not selectable, or an empty string."""
    if view.drained:
        return "; ".join(("drained by admin", *view.reasons))
    return "; ".join(view.reasons)


def build_status(bal: "Balancer") -> dict[str, Any]:
    """The /status document (see README, "Management service")."""
    cfg = bal.config
    snap = bal.snapshot
    picks = bal.selector.pick_counts()
    groups: dict[str, Any] = {}
    node_groups: dict[str, list[str]] = {}
    for gname, members in snap.groups.items():
        ranked = snap.ranked(gname)
        total = sum(v.weight for v in ranked)
        groups[gname] = {
            "default": gname == snap.default_group,
            "nodes": list(members),
            "selectable": [v.name for v in ranked],
            "shares": {v.name: round(v.weight / total, 4) if total > 0 else 0.0 for v in ranked},
        }
        for n in members:
            node_groups.setdefault(n, []).append(gname)
    nodes: dict[str, Any] = {}
    for name, view in snap.nodes.items():
        rec = bal.records.get(name)
        node = cfg.nodes[name]
        nodes[name] = {
            "address": node.address,
            "groups": node_groups.get(name, []),
            "health": health_word(view),
            "why": why(view),
            "up": view.up,
            "healthy": view.healthy,
            "drained": view.drained,
            "weight": round(view.weight, 3),
            "size": round(view.size, 3),
            "reasons": list(view.reasons),
            "error": view.error,
            "last_success": view.last_success,
            "consecutive_failures": rec.consecutive_failed if rec else 0,
            "picks": picks.get(name, 0),
            "variables": dict(view.variables),
            "users": sorted(view.users),
        }
    cycle = bal.last_cycle
    return {
        "version": __version__,
        "config": cfg.path,
        "generated_at": time.time(),
        "started_at": bal.started_at,
        "default_group": snap.default_group,
        "poll": {"interval": cfg.poll.interval, "timeout": cfg.poll.timeout,
                 "rise": cfg.poll.rise, "fall": cfg.poll.fall},
        "last_poll": None if cycle is None else {
            "started": cycle.started, "duration": round(cycle.duration, 4),
            "polled": cycle.polled, "failed": cycle.failed},
        "errors": {n: v["error"] for n, v in nodes.items() if v["error"]},
        "groups": groups,
        "nodes": nodes,
        "aliases": [r.to_dict() for r in bal.dns_reports],
    }


def format_table(status: dict[str, Any]) -> str:
    """The nodes as a text table: name, health, weight, share, load, reason."""
    rows = [("NODE", "HEALTH", "WEIGHT", "LOAD", "MEM%", "SESS", "WHY")]
    for name, n in status["nodes"].items():
        v = n["variables"]
        rows.append((name, n["health"], f"{n['weight']:.2f}", _fmt(v.get("LOADAVG")),
                     _fmt(v.get("MEMUSEDPCT")), _fmt(v.get("NBSESSIONS")), n["why"]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:-1], widths)) + "  " + r[-1] for r in rows]
    return "\n".join(line.rstrip() for line in lines) + "\n"


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)
