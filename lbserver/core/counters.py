"""Plain counters the core keeps on its hot paths: poll-cycle facts and durations.

Nothing here knows Prometheus: the management service turns these into
metric families at scrape time, so a poll or a terminal answer only bumps
an integer.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

POLL_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True)
class CycleInfo:
    """Facts about the last completed poll cycle."""

    started: float
    duration: float
    polled: int
    failed: int


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

    def copy(self) -> "DurationHistogram":
        """A copy of the counts as they are now."""
        other = DurationHistogram(self.buckets)
        other.counts, other.total = list(self.counts), self.total
        return other

    def cumulative(self) -> list[tuple[str, int]]:
        """(upper bound, cumulative count) pairs, ``+Inf`` last."""
        out, running = [], 0
        for bound, count in zip([*map(str, self.buckets), "+Inf"], self.counts):
            running += count
            out.append((bound, running))
        return out
