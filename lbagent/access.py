"""Who may query the agent: the <access> allow-list, and quiet logging of refusals.

Pure logic (no sockets): the RPC server passes the peer address it got from
accept() and a clock.
"""

from __future__ import annotations

import threading
from typing import Iterable

from common.netutil import Network, in_networks



def is_allowed(host: str, allow: Iterable[Network] | None) -> bool:
    """Whether the peer ``host`` may query, given the allow-list (None: everyone may)."""
    return allow is None or in_networks(host, allow)


class DenyLog:
    """Decides when a refused peer is worth a log line: at most once per ``period`` per address.

    Safe to share between threads: every connection's thread may ask at once.
    """

    def __init__(self, period: float = 60.0, max_entries: int = 4096) -> None:
        self.period = period
        self.max_entries = max_entries
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def should_log(self, host: str, now: float) -> bool:
        """True when ``host`` was not logged within the last ``period`` seconds (and records it)."""
        with self._lock:
            return self._should_log(host, now)

    def _should_log(self, host: str, now: float) -> bool:
        last = self._last.get(host)
        if last is not None and now - last < self.period:
            return False
        if len(self._last) >= self.max_entries:
            # Forget addresses whose period is over; a scan from many
            # addresses must not grow this without bound.
            self._last = {h: t for h, t in self._last.items() if now - t < self.period}
            if len(self._last) >= self.max_entries:
                return False
        self._last[host] = now
        return True


class LogBudget:
    """A cap on log lines of one kind in total: at most ``limit`` per ``period`` seconds.

    :class:`DenyLog` limits lines per address; a scan from many addresses
    would still write one line each, from the accept loop, which must not
    wait on a slow syslog. Windows are fixed: the first line opens one.
    Safe to share between threads.
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
