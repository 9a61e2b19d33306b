"""Prometheus exposition of the balancer's state (``GET /metrics``).

Nothing is counted through prometheus_client on the hot paths: the terminal
service and the poll loop keep plain counters, and a custom collector turns
them into metric families at scrape time.
"""

from __future__ import annotations

import bisect
from typing import TYPE_CHECKING, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from common.version import __version__

if TYPE_CHECKING:
    from lbserver.app import Balancer

POLL_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class DurationHistogram:
    """Cumulative histogram of durations in seconds (poll cycles)."""

    def __init__(self, buckets: tuple[float, ...] = POLL_BUCKETS) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        """Record one duration."""
        self.counts[bisect.bisect_left(self.buckets, seconds)] += 1
        self.total += seconds

    def cumulative(self) -> list[tuple[str, int]]:
        """(upper bound, cumulative count) pairs, ``+Inf`` last."""
        out, running = [], 0
        for bound, count in zip([*map(str, self.buckets), "+Inf"], self.counts):
            running += count
            out.append((bound, running))
        return out


class _Collector:
    """Metric families built at scrape time from the balancer's plain counters.

    Names follow the Prometheus conventions: ``lbserver_`` prefix, base
    units in the name (``_seconds``), counters exposed with ``_total``
    (prometheus_client appends it to CounterMetricFamily names).
    """

    def __init__(self, bal: "Balancer") -> None:
        self.bal = bal

    def collect(self) -> Iterator[Metric]:
        bal = self.bal
        yield from self._process(bal)
        yield from self._nodes(bal)
        yield from self._polls(bal)
        yield from self._dns(bal)

    @staticmethod
    def _process(bal: "Balancer") -> Iterator[Metric]:
        info = GaugeMetricFamily("lbserver_build_info", "always 1; the version in a label", labels=["version"])
        info.add_metric([__version__], 1.0)
        yield info
        yield GaugeMetricFamily("lbserver_start_time_seconds", "when lbserver started, seconds since the epoch",
                                value=bal.started_at)

    @staticmethod
    def _nodes(bal: "Balancer") -> Iterator[Metric]:
        snap = bal.snapshot
        up = GaugeMetricFamily("lbserver_node_up", "1 when the node's agent answers polls (after rise/fall)",
                               labels=["node"])
        healthy = GaugeMetricFamily("lbserver_node_healthy", "1 when the node is up and passes the rules",
                                    labels=["node"])
        selectable = GaugeMetricFamily("lbserver_node_selectable", "1 when the node may receive new terminals "
                                       "(healthy and not drained)", labels=["node"])
        drained = GaugeMetricFamily("lbserver_node_drained", "1 when an admin drained the node", labels=["node"])
        weight = GaugeMetricFamily("lbserver_node_weight", "current weight (greater = less loaded)", labels=["node"])
        variable = GaugeMetricFamily("lbserver_node_variable", "numeric variables reported by the node's agent",
                                     labels=["node", "variable"])
        seen = GaugeMetricFamily("lbserver_node_last_success_timestamp_seconds",
                                 "when the node's agent last answered a poll, seconds since the epoch",
                                 labels=["node"])
        picks = CounterMetricFamily("lbserver_node_picks", "terminals sent to the node", labels=["node"])
        counts = bal.selector.pick_counts()
        nodes = snap.nodes.items() if snap is not None else ()
        for name, v in nodes:
            up.add_metric([name], 1.0 if v.up else 0.0)
            healthy.add_metric([name], 1.0 if (v.up and v.healthy) else 0.0)
            selectable.add_metric([name], 1.0 if (v.up and v.selectable) else 0.0)
            drained.add_metric([name], 1.0 if v.drained else 0.0)
            weight.add_metric([name], v.weight)
            picks.add_metric([name], counts.get(name, 0))
            if v.last_success is not None:
                seen.add_metric([name], v.last_success)
            for var, value in v.variables.items():
                if isinstance(value, (int, float)):
                    variable.add_metric([name, var], float(value))
        yield from (up, healthy, selectable, drained, weight, variable, seen, picks)

    @staticmethod
    def _polls(bal: "Balancer") -> Iterator[Metric]:
        hist = HistogramMetricFamily("lbserver_poll_duration_seconds", "duration of a full poll cycle")
        hist.add_metric([], bal.poll_histogram.cumulative(), bal.poll_histogram.total)
        yield hist
        if bal.last_cycle is not None:
            yield GaugeMetricFamily("lbserver_last_poll_timestamp_seconds",
                                    "when the last poll cycle started, seconds since the epoch",
                                    value=bal.last_cycle.started)
        req = CounterMetricFamily("lbserver_terminal_requests", "terminal requests answered, by HTTP status",
                                  labels=["code"])
        for code, n in sorted(bal.response_counts.items()):
            req.add_metric([str(code)], n)
        yield req

    @staticmethod
    def _dns(bal: "Balancer") -> Iterator[Metric]:
        size = GaugeMetricFamily("lbserver_dns_alias_published_addresses",
                                 "addresses published behind the DNS alias", labels=["alias"])
        excluded = GaugeMetricFamily("lbserver_dns_alias_excluded_nodes",
                                     "nodes of the alias's group left out for a health reason", labels=["alias"])
        fallback = GaugeMetricFamily("lbserver_dns_alias_fallback",
                                     "1 when no node was good and one was kept published (at-least-one rule)",
                                     labels=["alias"])
        updates = CounterMetricFamily("lbserver_dns_updates", "DNS alias evaluations by result "
                                      "(updated, unchanged, error, ...)", labels=["alias", "result"])
        for report in bal.dns_reports or ():
            d = report.to_dict()
            alias = str(d.get("alias", ""))
            size.add_metric([alias], len(d.get("published") or ()))
            excluded.add_metric([alias], len(d.get("excluded") or {}))
            fallback.add_metric([alias], 1.0 if d.get("fallback") else 0.0)
        for (alias, result), n in sorted((bal.dns_update_counts or {}).items()):
            updates.add_metric([alias, result], n)
        yield from (size, excluded, fallback, updates)


def render_metrics(bal: "Balancer") -> bytes:
    """The Prometheus text exposition of ``bal``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(bal))
    return generate_latest(registry)
