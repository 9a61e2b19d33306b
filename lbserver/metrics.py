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
    def __init__(self, bal: "Balancer") -> None:
        self.bal = bal

    def collect(self) -> Iterator[Metric]:
        bal = self.bal
        snap = bal.snapshot
        up = GaugeMetricFamily("lbserver_node_up", "1 when the node's agent answers polls (after rise/fall)", labels=["node"])
        healthy = GaugeMetricFamily("lbserver_node_selectable", "1 when the node may receive terminals", labels=["node"])
        drained = GaugeMetricFamily("lbserver_node_drained", "1 when an admin drained the node", labels=["node"])
        weight = GaugeMetricFamily("lbserver_node_weight", "current weight (greater = less loaded)", labels=["node"])
        variable = GaugeMetricFamily("lbserver_node_variable", "numeric variables reported by the node's agent",
                                     labels=["node", "variable"])
        picks = CounterMetricFamily("lbserver_node_picks", "terminals sent to the node", labels=["node"])
        counts = bal.selector.pick_counts()
        for name, v in snap.nodes.items():
            up.add_metric([name], 1.0 if v.up else 0.0)
            healthy.add_metric([name], 1.0 if (v.up and v.healthy and not v.drained) else 0.0)
            drained.add_metric([name], 1.0 if v.drained else 0.0)
            weight.add_metric([name], v.weight)
            picks.add_metric([name], counts.get(name, 0))
            for var, value in v.variables.items():
                if isinstance(value, (int, float)):
                    variable.add_metric([name, var], float(value))
        yield from (up, healthy, drained, weight, variable, picks)

        hist = HistogramMetricFamily("lbserver_poll_duration_seconds", "duration of a full poll cycle")
        hist.add_metric([], bal.poll_histogram.cumulative(), bal.poll_histogram.total)
        yield hist

        req = CounterMetricFamily("lbserver_terminal_requests", "terminal requests answered, by HTTP status",
                                  labels=["code"])
        for code, n in sorted(bal.response_counts.items()):
            req.add_metric([str(code)], n)
        yield req

        size = GaugeMetricFamily("lbserver_alias_published", "addresses published behind the DNS alias",
                                 labels=["alias"])
        updates = CounterMetricFamily("lbserver_dns_updates", "DNS update attempts by result",
                                      labels=["alias", "result"])
        for report in bal.dns_reports:
            d = report.to_dict()
            size.add_metric([d["alias"]], len(d.get("published", [])))
        for (alias, result), n in sorted(bal.dns_update_counts.items()):
            updates.add_metric([alias, result], n)
        yield size
        yield updates


def render_metrics(bal: "Balancer") -> bytes:
    """The Prometheus text exposition of ``bal``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(bal))
    return generate_latest(registry)
