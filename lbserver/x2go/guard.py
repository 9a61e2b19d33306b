"""Wrong passwords, counted per source address: past ``limit`` within ``window`` seconds the source is refused.

Pure and bounded: at most :data:`MAX_SOURCES` addresses are remembered
(the oldest forgotten first), so a flood of sources cannot grow it. Used
from the daemon's loop thread only.
"""

from __future__ import annotations

from collections import OrderedDict, deque

MAX_SOURCES = 10_000
"""Source addresses whose recent failures are remembered."""
WINDOW = 60.0
"""Seconds a wrong password counts against its source."""


class FailureLimit:
    """Failures per source within a sliding window, and whether a source is over its limit."""

    def __init__(self, limit: int, window: float = WINDOW, max_sources: int = MAX_SOURCES) -> None:
        self.limit = limit
        self.window = window
        self._max = max_sources
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, source: str, now: float) -> deque[float] | None:
        times = self._failures.get(source)
        if times is None:
            return None
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._failures[source]
            return None
        return times

    def blocked(self, source: str, now: float) -> bool:
        """Whether ``source`` has had ``limit`` failures within the window (its requests are refused)."""
        times = self._recent(source, now)
        return times is not None and len(times) >= self.limit

    def fail(self, source: str, now: float) -> None:
        """Count one wrong password from ``source``."""
        times = self._recent(source, now)
        if times is None:
            times = self._failures[source] = deque(maxlen=self.limit)
            if len(self._failures) > self._max:
                self._failures.popitem(last=False)
        else:
            self._failures.move_to_end(source)
        times.append(now)

    def sources(self) -> list[str]:
        """The addresses with recent failures remembered."""
        return list(self._failures)

    def __len__(self) -> int:
        return len(self._failures)


__all__ = ["FailureLimit", "MAX_SOURCES", "WINDOW"]
