"""Runs the DNS arbiter after each poll cycle, off the loop, and keeps what it reported.

The composition root registers :meth:`DnsService.kick` as an after-cycle
observer of the core. A cycle's DNS work (health pages, queries, signed
updates, mail) blocks on the network, so it runs on one worker thread; a
kick while the previous cycle is still running is skipped rather than
queued, so a slow DNS server never builds a backlog. The reports and counts
are replaced on the loop thread when a cycle ends, and read there too.

:meth:`DnsService.close` gives the DNS lease back (unless in ``--once``
mode, where the lease outlives the run), so a standby balancer takes over
at its next cycle instead of waiting for the lease to expire.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from typing import Callable, Mapping

from lbserver.config import ServerConfig
from lbserver.core.view import BalancerView
from lbserver.dns.arbiter import DnsArbiter
from lbserver.dns.decide import Candidate

log = logging.getLogger("lbserver.dns")


def candidates(view: BalancerView) -> dict[str, Candidate]:
    """The arbiter's view of every node of the current snapshot."""
    return {
        # A dead node has no figures: None keeps it behind nodes that still answer.
        name: Candidate(name=name, healthy=v.healthy, weight=v.weight if v.up is True else None,
                        reasons=v.reasons, drained=v.drained)
        for name, v in view.snapshot.nodes.items()
    }


class DnsService:
    """The DNS arbiter of one balancer (idle while the config has no ``<dns>``)."""

    def __init__(self, view: BalancerView, *, once: bool = False,
                 heard: Callable[[str], float | None] | None = None) -> None:
        """``heard(holder)``: when a peer last said it is that DNS lease-holder (see the peers service)."""
        self._view = view
        self._heard = heard
        self._once = once
        self._arbiter: DnsArbiter | None = None
        self._busy = False
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="dns")
        self.reports: list = []
        """The last cycle's :class:`~lbserver.dns.report.AliasReport` per alias."""
        self.update_counts: dict[tuple[str, str], int] = {}
        """Alias evaluations so far, by (alias, result)."""

    def configure(self, config: ServerConfig) -> None:
        """Follow ``config``'s ``<dns>`` element (none: stop publishing)."""
        lease = dict(poll_interval=config.poll.interval, terminal_port=config.listen[1],
                     heartbeat=config.peers.heartbeat if config.peers is not None and config.peers.peers else None)
        if config.dns is None:
            if self._arbiter is not None:
                self._pool.submit(self._arbiter.release)  # after a cycle in progress, on the worker
            self._arbiter = None
        elif self._arbiter is None:
            self._arbiter = DnsArbiter(config.dns, config.nodes, once=self._once, heard=self._heard, **lease)
        else:
            self._arbiter.reconfigure(config.dns, config.nodes, **lease)

    def holder(self) -> str | None:
        """This balancer's DNS lease-holder name (None: no aliases, or no lease), told to the peers."""
        arbiter = self._arbiter
        return arbiter.holder() if arbiter is not None else None

    def dns_figures(self) -> dict | None:
        """The last cycle's seconds of DNS exchanges, the DNS queries sent so far and the alias evaluations by
        result, all aliases together (``lbserver_dns_updates``); None: no <dns>."""
        arbiter = self._arbiter
        if arbiter is None:
            return None
        seconds, queries = arbiter.figures()
        updates: dict[str, int] = {}
        for (_, result), n in self.update_counts.items():
            updates[result] = updates.get(result, 0) + n
        return {"cycle_seconds": None if seconds is None else round(seconds, 6), "queries": queries,
                "updates": updates}

    def kick(self) -> None:
        """Start one arbiter cycle on the worker thread from the current snapshot (skipped while one runs)."""
        if self._arbiter is None or self._busy:
            return
        self._busy = True
        view = self._view
        fut = asyncio.get_running_loop().run_in_executor(self._pool, self._arbiter.run_cycle, candidates(view),
                                                         view.snapshot.groups, view.config.nodes)
        fut.add_done_callback(self._done)

    def run_once(self) -> list:
        """One arbiter cycle, in this thread (``--once``); returns the reports."""
        if self._arbiter is not None:
            self._record(self._arbiter.run_cycle(candidates(self._view), self._view.snapshot.groups,
                                                 self._view.config.nodes))
        return self.reports

    def _done(self, fut: asyncio.Future) -> None:
        self._busy = False
        exc = fut.exception()
        if exc is not None:
            log.error("DNS arbiter cycle failed: %s", exc, exc_info=exc)
        else:
            self._record(fut.result())

    def _record(self, reports: list) -> None:
        self.reports = reports
        for report in reports:
            key = (report.alias, report.result)
            self.update_counts[key] = self.update_counts.get(key, 0) + 1

    def alias_status(self) -> list[dict]:
        """The last reports as JSON-ready dicts (the management service's view of the aliases)."""
        return [r.to_dict() for r in self.reports]

    def alias_counts(self) -> Mapping[tuple[str, str], int]:
        """Alias evaluations so far, by (alias, result)."""
        return dict(self.update_counts)

    def close(self) -> None:
        """Give the DNS lease back (not in ``--once`` mode) and stop the worker thread.

        The release waits for a cycle in progress, within a bound; past it the
        cycle is abandoned and the lease ends by itself at its expiry.
        """
        arbiter = self._arbiter
        if arbiter is not None and not self._once:
            try:
                self._pool.submit(arbiter.release).result(timeout=arbiter.release_timeout)
            except Exception as exc:  # never stop the shutdown for it
                log.warning("DNS lease not released: %s", exc or type(exc).__name__)
        self._pool.shutdown(wait=False, cancel_futures=True)
