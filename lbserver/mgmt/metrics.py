"""Prometheus exposition of the balancer's state (``GET /metrics``).

Nothing is counted through prometheus_client on the hot paths: the terminal
service and the poll loop keep plain counters (:mod:`lbserver.core.counters`),
and a custom collector turns them into metric families at scrape time, from
the core's read-only view and the DNS service's alias reports. The per-node
families, nearly all the samples of a large balancer, are written directly
in the text format (:func:`_node_exposition`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from common.version import __version__
from lbserver.core.sessions import STATES, state_counts

if TYPE_CHECKING:
    from lbserver.core.view import BalancerView
    from lbserver.mgmt.aliases import AliasSource
    from lbserver.mgmt.peers import PeerSource

class _Collector:
    """Metric families built at scrape time from the balancer's plain counters.

    Names follow the Prometheus conventions: ``lbserver_`` prefix, base
    units in the name (``_seconds``), counters exposed with ``_total``
    (prometheus_client appends it to CounterMetricFamily names).
    """

    def __init__(self, view: "BalancerView", aliases: "AliasSource", peers: "PeerSource") -> None:
        self.view = view
        self.aliases = aliases
        self.peers = peers

    def collect(self) -> Iterator[Metric]:
        yield from self._process(self.view)
        yield from self._polls(self.view)
        yield from self._dns(self.aliases)
        yield from _peer_families(self.peers.peers_status())

    @staticmethod
    def _process(view: "BalancerView") -> Iterator[Metric]:
        info = GaugeMetricFamily("lbserver_build_info", "always 1; the version in a label", labels=["version"])
        info.add_metric([__version__], 1.0)
        yield info
        yield GaugeMetricFamily("lbserver_start_time_seconds", "when lbserver started, seconds since the epoch",
                                value=view.started_at)

    @staticmethod
    def _polls(view: "BalancerView") -> Iterator[Metric]:
        hist = HistogramMetricFamily("lbserver_poll_duration_seconds", "duration of a full poll cycle")
        hist.add_metric([], view.poll_histogram.cumulative(), view.poll_histogram.total)
        yield hist
        if view.last_cycle is not None:
            yield GaugeMetricFamily("lbserver_last_poll_timestamp_seconds",
                                    "when the last poll cycle started, seconds since the epoch",
                                    value=view.last_cycle.started)
            yield GaugeMetricFamily("lbserver_last_poll_seconds_per_node",
                                    "the last poll cycle's duration divided by the nodes it polled",
                                    value=view.last_cycle.duration / max(1, view.last_cycle.polled))
        req = CounterMetricFamily("lbserver_terminal_requests", "terminal requests answered, by HTTP status",
                                  labels=["code"])
        for code, n in sorted(view.response_counts().items()):
            req.add_metric([str(code)], n)
        yield req

    @staticmethod
    def _dns(aliases: "AliasSource") -> Iterator[Metric]:
        size = GaugeMetricFamily("lbserver_dns_alias_published_addresses",
                                 "addresses published behind the DNS alias", labels=["alias"])
        excluded = GaugeMetricFamily("lbserver_dns_alias_excluded_nodes",
                                     "nodes of the alias's group left out for a health reason", labels=["alias"])
        fallback = GaugeMetricFamily("lbserver_dns_alias_fallback",
                                     "1 when no node was good and one was kept published (at-least-one rule)",
                                     labels=["alias"])
        updates = CounterMetricFamily("lbserver_dns_updates", "DNS alias evaluations by result "
                                      "(updated, unchanged, error, ...)", labels=["alias", "result"])
        held = GaugeMetricFamily("lbserver_dns_lease_held", "1 when this balancer holds the DNS lease and writes "
                                 "the alias, 0 when it stands by or cannot tell (no sample: lease off)",
                                 labels=["alias"])
        for d in aliases.alias_status():
            alias = str(d.get("alias", ""))
            size.add_metric([alias], len(d.get("published") or ()))
            excluded.add_metric([alias], len(d.get("excluded") or {}))
            fallback.add_metric([alias], 1.0 if d.get("fallback") else 0.0)
            lease = d.get("lease")
            if isinstance(lease, dict):
                held.add_metric([alias], 1.0 if lease.get("role") == "writer" else 0.0)
        for (alias, result), n in sorted(aliases.alias_counts().items()):
            updates.add_metric([alias, result], n)
        yield from (size, excluded, fallback, updates, held)
        figures = aliases.dns_figures()
        if figures is not None:
            queries = CounterMetricFamily("lbserver_dns_queries", "DNS queries sent by the arbiter (SOA, IXFR, "
                                          "record reads; updates not counted)")
            queries.add_metric([], figures["queries"])
            yield queries
            if figures["cycle_seconds"] is not None:
                yield GaugeMetricFamily("lbserver_dns_cycle_seconds", "seconds the last DNS arbiter cycle spent "
                                        "on DNS exchanges (SOA, IXFR, reads, updates)",
                                        value=figures["cycle_seconds"])


def _peer_families(status: dict | None) -> Iterator[Metric]:
    reachable = GaugeMetricFamily("lbserver_peer_reachable", "1 when a message came from the peer within three "
                                  "heartbeats", labels=["peer"])
    seen = GaugeMetricFamily("lbserver_peer_last_message_timestamp_seconds",
                             "when the peer's last accepted message arrived, seconds since the epoch", labels=["peer"])
    picks = CounterMetricFamily("lbserver_peer_picks_received", "terminals the peer reported sending",
                                labels=["peer"])
    refused = CounterMetricFamily("lbserver_peer_messages_refused", "peer datagrams dropped, by sender and reason "
                                  "(sender \"unknown\": not a configured peer)", labels=["peer", "reason"])
    for p in (status or {}).get("peers", ()):
        reachable.add_metric([p["address"]], 1.0 if p["reachable"] else 0.0)
        if p["last_message"] is not None:
            seen.add_metric([p["address"]], p["last_message"])
        picks.add_metric([p["address"]], p["picks_received"])
        for reason, n in sorted(p["refused"].items()):
            refused.add_metric([p["address"], reason], n)
    for reason, n in sorted((status or {}).get("refused_unknown", {}).items()):
        refused.add_metric(["unknown", reason], n)
    yield from (reachable, seen, picks, refused)


NODE_FAMILIES = (
    ("lbserver_node_up", "gauge", "1 when the node's agent answers polls (after rise/fall)"),
    ("lbserver_node_healthy", "gauge", "1 when the node is up and passes the rules"),
    ("lbserver_node_selectable", "gauge", "1 when the node may receive new terminals (healthy and not drained)"),
    ("lbserver_node_drained", "gauge", "1 when the node is drained, by an admin or at the source"),
    ("lbserver_node_weight", "gauge", "current weight (greater = less loaded)"),
    ("lbserver_node_variable", "gauge", "numeric variables reported by the node's agent"),
    ("lbserver_node_last_success_timestamp_seconds", "gauge",
     "when the node's agent last answered a poll, seconds since the epoch"),
    ("lbserver_node_picks_total", "counter", "terminals sent to the node"),
    ("lbserver_node_sessions", "gauge", "users' sessions the node's agent reports, by state (active, disconnected)"),
)
"""The per-node families: (name as exposed, type, help)."""


def _label(value: str) -> str:
    """A label value escaped as the text format wants it."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _node_exposition(view: "BalancerView") -> str:
    """The per-node families in the text format, written directly.

    They are nearly all of a large balancer's samples (ten thousand nodes
    and their variables: a quarter of a million), and building a sample
    object for each through prometheus_client costs about 16 µs, over
    ten times writing its line. Same names, types, help and number
    formatting as the client's own exposition.
    """
    snap = view.snapshot
    counts = view.pick_counts()
    lines: list[list[str]] = [[] for _ in NODE_FAMILIES]
    up, healthy, selectable, drained, weight, variable, seen, picks, sessions = lines
    for name, v in (snap.nodes.items() if snap is not None else ()):
        node = _label(name)
        labels = f'{{node="{node}"}} '
        up.append(f"lbserver_node_up{labels}{'1.0' if v.up else '0.0'}")
        healthy.append(f"lbserver_node_healthy{labels}{'1.0' if v.up and v.healthy else '0.0'}")
        selectable.append(f"lbserver_node_selectable{labels}{'1.0' if v.up and v.selectable else '0.0'}")
        drained.append(f"lbserver_node_drained{labels}{'1.0' if v.drained else '0.0'}")
        weight.append(f"lbserver_node_weight{labels}{floatToGoString(v.weight)}")
        picks.append(f"lbserver_node_picks_total{labels}{floatToGoString(counts.get(name, 0))}")
        for state, n in zip(STATES, state_counts(v.sessions)):
            sessions.append(f'lbserver_node_sessions{{node="{node}",state="{state}"}} {floatToGoString(n)}')
        if v.last_success is not None:
            seen.append(f"lbserver_node_last_success_timestamp_seconds{labels}{floatToGoString(v.last_success)}")
        for var, value in v.variables.items():
            if isinstance(value, (int, float)):
                variable.append(f'lbserver_node_variable{{node="{node}",variable="{_label(var)}"}} '
                                f"{floatToGoString(value)}")
    out = []
    for (name, kind, text), samples in zip(NODE_FAMILIES, lines):
        out.append(f"# HELP {name} {text}\n# TYPE {name} {kind}\n")
        if samples:
            out.append("\n".join(samples) + "\n")
    return "".join(out)


def render_metrics(view: "BalancerView", aliases: "AliasSource", peers: "PeerSource") -> bytes:
    """The Prometheus text exposition of the balancer and its DNS aliases."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(view, aliases, peers))
    return generate_latest(registry) + _node_exposition(view).encode()
