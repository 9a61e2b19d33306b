"""Rate limits on log lines, so that a flood of refused peers cannot flood the log.

:class:`DenyLog` allows one line per key (an address, or a cause and an
address) per period; :class:`LogBudget` caps the lines of one kind in total;
:class:`ProblemLog` says a thing's problem once when it changes, not at
every sample.
Pure logic: callers pass the time, from a monotonic clock of their choice.

Threading: each :class:`DenyLog` and :class:`LogBudget` is safe to share
between threads (a lock each), as the agent's connection threads do; a
:class:`ProblemLog` belongs to the one thread that samples; the balancer's asyncio services use
theirs from the loop thread only, where the lock is never contended.
"""

from __future__ import annotations

import threading
import logging
from collections.abc import Hashable, Iterable


class DenyLog:
    """Decides when an event is worth a log line: at most once per ``period`` per key.

    At most ``max_entries`` keys are remembered: when that many were logged
    within the period, other keys stay quiet until some of those expire.
    Safe to share between threads: every connection's thread may ask at once.
    """

    def __init__(self, period: float = 60.0, max_entries: int = 4096) -> None:
        self.period = period
        self.max_entries = max_entries
        self._last: dict[Hashable, float] = {}
        self._lock = threading.Lock()

    def should_log(self, key: Hashable, now: float) -> bool:
        """True when ``key`` was not logged within the last ``period`` seconds (and records it)."""
        with self._lock:
            return self._should_log(key, now)

    def _should_log(self, key: Hashable, now: float) -> bool:
        last = self._last.get(key)
        if last is not None and now - last < self.period:
            return False
        if len(self._last) >= self.max_entries:
            # Forget keys whose period is over; a scan from many
            # addresses must not grow this without bound.
            self._last = {k: t for k, t in self._last.items() if now - t < self.period}
            if len(self._last) >= self.max_entries:
                return False
        self._last[key] = now
        return True


class LogBudget:
    """A cap on log lines of one kind in total: at most ``limit`` per ``period`` seconds.

    :class:`DenyLog` limits lines per key; a scan from many addresses
    would still write one line each, and a caller that must not wait on a
    slow syslog (the agent's accept loop) needs a bound on the total.
    Windows are fixed: the first line opens one. Safe to share between threads.
    """

    LOG = "log"
    SUMMARY = "summary"  # the first line over the cap: say that more are not logged
    SKIP = "skip"

    def __init__(self, limit: int = 20, period: float = 60.0) -> None:
        self.limit = limit
        self.period = period
        self._window_start = float("-inf")
        self._used = 0
        self._lock = threading.Lock()

    def take(self, now: float) -> str:
        """:attr:`LOG` within the budget, :attr:`SUMMARY` once when it is spent, then :attr:`SKIP`."""
        with self._lock:
            if now - self._window_start >= self.period:
                self._window_start, self._used = now, 0
            self._used += 1
            if self._used <= self.limit:
                return self.LOG
            return self.SUMMARY if self._used == self.limit + 1 else self.SKIP


class ProblemLog:
    """The problem of each of several things (variables, session sources), logged when it changes.

    A thing's problem is warned about once when it appears or changes, and
    an info line says when it is gone; a problem that stays says nothing
    more, however often the thing is sampled.
    """

    def __init__(self, logger: logging.Logger) -> None:
        self._log = logger
        self._problems: dict[Hashable, str | None] = {}

    def note(self, key: Hashable, problem: str | None, what: str, recovered: str) -> None:
        """Record ``key``'s ``problem`` (None: none).

        ``what`` names the thing left out; ``recovered`` is the line logged when it is back.
        """
        before = self._problems.get(key, "")
        if problem == before:
            return
        if problem is not None:
            self._log.warning("%s left out: %s", what, problem)
        elif before:
            self._log.info("%s", recovered)
        self._problems[key] = problem

    def keep(self, keys: Iterable[Hashable]) -> None:
        """Forget the things no longer configured."""
        keys = set(keys)
        self._problems = {k: v for k, v in self._problems.items() if k in keys}
