"""An in-memory ring buffer of each node's weight and load over the last hour."""

from __future__ import annotations

import collections
from typing import Any, Iterable

from lbserver.core.slicing import Job, run_whole

WINDOW_SECONDS = 3600.0
MAX_POINTS = 720


class History:
    """Per poll cycle, one point per node: (time, weight, LOADAVG, selectable)."""

    def __init__(self) -> None:
        self.points: collections.deque[tuple[float, dict[str, tuple[float, float | None, bool]]]] = \
            collections.deque()
        self._last = 0.0

    def add(self, snapshot: Any, now: float, interval: float) -> None:
        """Record the snapshot; keep at most one point per hour/MAX_POINTS so memory stays bounded."""
        run_whole(self.add_job(snapshot, now, interval))

    def add_job(self, snapshot: Any, now: float, interval: float) -> Job[None]:
        """:meth:`add` as a :class:`~lbserver.core.slicing.Job` over the snapshot's nodes."""
        if now - self._last < max(interval, WINDOW_SECONDS / MAX_POINTS) * 0.999 and self.points:
            return Job((), lambda nodes: None, lambda: None)  # too soon after the last point
        self._last = now
        row: dict[str, tuple[float, float | None, bool]] = {}

        def take(nodes: Iterable[tuple[str, Any]]) -> None:
            for name, v in nodes:
                load = v.variables.get("LOADAVG")
                row[name] = (round(v.weight, 3), load if isinstance(load, (int, float)) else None, v.selectable)

        def append() -> None:
            self.points.append((now, row))
            while self.points and self.points[0][0] < now - WINDOW_SECONDS:
                self.points.popleft()

        return Job(snapshot.nodes.items(), take, append)

    def copy(self) -> "History":
        """A copy holding this history's points as they are now (a point never changes once added)."""
        other = History()
        other.points = collections.deque(self.points)
        other._last = self._last
        return other

    def to_dict(self, since: float | None = None) -> dict[str, Any]:
        """``{"t": [times], "nodes": {name: {"weight": [...], "load": [...], "selectable": [...]}}}``.

        With ``since``, only the points recorded after that time, so a page
        that refreshes every few seconds fetches what is new, not the hour.
        """
        points = [p for p in self.points if since is None or p[0] > since]
        times = [t for t, _ in points]
        names = sorted({n for _, row in points for n in row})
        nodes = {}
        for n in names:
            series = [row.get(n, (None, None, False)) for _, row in points]
            nodes[n] = {"weight": [s[0] for s in series], "load": [s[1] for s in series],
                        "selectable": [s[2] for s in series]}
        return {"t": times, "nodes": nodes}
