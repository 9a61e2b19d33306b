"""The running balancer: one asyncio loop that polls, weighs, answers and publishes.

Data flows one way: every ``poll interval`` all agents are polled at once
(:mod:`lbserver.poller`), each node's record is updated (:mod:`lbserver.health`),
one immutable :class:`~lbserver.selection.Snapshot` is built and installed in
the :class:`~lbserver.selection.Selector` (the atomic swap), then the DNS
arbiter, if configured, runs on a worker thread from the same snapshot.
Terminal requests and the management service only read what the last cycle
built. Everything but the DNS work runs on the loop's thread; the runtime's
thread reaches it only through the loop (reload, stop), so the balancer's
own state needs no locks.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import logging
import socket
import threading
import time
from dataclasses import dataclass

from common.netutil import hosts_overlap
from lbserver import health
from lbserver.config import Node, ServerConfig
from lbserver.history import History
from lbserver.metrics import DurationHistogram
from lbserver.netutil import listen_socket, raise_nofile_limit
from lbserver.poller import poll_all
from lbserver.selection import Selector, Snapshot, UnknownGroup
from lbserver.statefile import DrainState
from lbserver.terminal import TerminalService, new_event_loop

log = logging.getLogger("lbserver")

LAST_GOOD_LOG_INTERVAL = 60.0


@dataclass(frozen=True)
class CycleInfo:
    """Facts about the last completed poll cycle."""

    started: float
    duration: float
    polled: int
    failed: int


def answer_for(node: Node, returns: str) -> str:
    """What the terminal service sends for ``node`` (the ``returns`` setting)."""
    if returns == "$NAME":
        return node.name
    if returns == "$ADDRESS":
        return node.host
    return node.answer_ip


class Balancer:
    """The lbserver service (see :class:`common.runtime.Service`)."""

    def __init__(self) -> None:
        self.config: ServerConfig | None = None
        self.records: dict[str, health.NodeRecord] = {}
        self.selector = Selector()
        self.snapshot: Snapshot | None = None
        self.drain: DrainState | None = None
        self.last_cycle: CycleInfo | None = None
        self.arbiter = None  # lbserver.dnsarbiter.DnsArbiter when <dns> is configured
        self.dns_reports: list = []
        self.terminal: TerminalService | None = None
        self.mgmt = None
        self.started_at = time.time()
        self._sockets: dict[str, socket.socket] = {}
        self._bound: dict[str, tuple[str, int]] = {}  # what each socket really listens on
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stopping: asyncio.Event | None = None
        self._wake: asyncio.Event | None = None
        self._failure: str | None = None
        self._dns_busy = False
        self._dns_pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="dns")
        self._last_good_logged: dict[str, float] = {}
        self._answers: dict[str, str] = {}  # node -> what terminals receive, per config
        self._cycle_mono = time.monotonic()
        self.poll_histogram = DurationHistogram()
        self.history = History()
        self.response_counts: dict[int, int] = {}
        self.dns_update_counts: dict[tuple[str, str], int] = {}

    # -- runtime interface ------------------------------------------------

    def bind(self, config: ServerConfig) -> list[socket.socket]:
        """Open the terminal and management sockets (before daemonising)."""
        self._sockets["terminal"] = listen_socket(*config.listen)
        self._bound["terminal"] = config.listen
        if config.mgmt_listen:
            self._sockets["mgmt"] = listen_socket(*config.mgmt_listen)
            self._bound["mgmt"] = config.mgmt_listen
        return list(self._sockets.values())

    def start(self, config: ServerConfig) -> None:
        """Start the loop thread; return once the first poll is done and terminals are served."""
        raise_nofile_limit()
        self._apply_config(config)
        self._thread = threading.Thread(target=self._run, name="balancer", daemon=True)
        self._thread.start()
        self._ready.wait(config.poll.timeout + 30)

    def reload(self, config: ServerConfig) -> None:
        """Apply a validated new config on the loop; wait until it is in force."""
        fut = asyncio.run_coroutine_threadsafe(self._reload(config), self._loop)
        fut.result(timeout=30)

    def stop(self) -> None:
        """Stop serving, close sockets, join the loop thread."""
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stopping.set)
            self._thread.join(timeout=15)
        self._dns_pool.shutdown(wait=False, cancel_futures=True)
        for sock in self._sockets.values():
            sock.close()

    def failure(self) -> str | None:
        """Why the loop thread died, if it did."""
        if self._failure:
            return self._failure
        if self._thread is not None and self._ready.is_set() and not self._thread.is_alive():
            return "balancer loop thread exited"
        return None

    # -- loop --------------------------------------------------------------

    def _run(self) -> None:
        self._loop = new_event_loop()
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        except Exception as exc:  # surfaced by failure(); the runtime exits
            log.exception("balancer loop failed")
            self._failure = f"{type(exc).__name__}: {exc}"
        finally:
            self._ready.set()
            self._loop.close()

    async def _serve(self) -> None:
        from lbserver.mgmt import ManagementService  # noqa: PLC0415 (imports app types)

        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        await self.cycle()
        self.terminal = TerminalService(self.answer, idle_timeout=self.config.idle_timeout,
                                        max_connections=self.config.max_connections,
                                        on_response=self._count_response)
        await self.terminal.start(self._sockets["terminal"])
        if "mgmt" in self._sockets:
            self.mgmt = ManagementService(self)
            await self.mgmt.start(self._sockets["mgmt"])
        self._ready.set()
        poller = asyncio.ensure_future(self._poll_loop())
        await self._stopping.wait()
        poller.cancel()
        await asyncio.gather(poller, return_exceptions=True)
        await self.terminal.stop()
        if self.mgmt is not None:
            await self.mgmt.stop()

    async def _poll_loop(self) -> None:
        while True:
            interval = self.config.poll.interval
            elapsed = time.monotonic() - self._cycle_mono
            try:
                await asyncio.wait_for(self._wake.wait(), max(0.0, interval - elapsed))
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.cycle()
            except Exception:  # one bad cycle must not end polling
                log.exception("poll cycle failed")

    def poll_now(self) -> None:
        """Ask the loop for an immediate cycle (reload, drain)."""
        self._wake.set()

    async def cycle(self, publish: bool = True) -> None:
        """Poll every node once, rebuild and install the snapshot, kick the DNS arbiter."""
        cfg = polled = self.config
        self._cycle_mono = time.monotonic()
        started = time.time()
        results = await poll_all(cfg.nodes.values(), cfg.poll.timeout, cfg.poll.max_reply_bytes,
                                 validate=health.validate_state)
        now = time.time()
        failed = 0
        if self.config is not polled:  # reloaded while polling: keep nodes still configured as polled
            cfg = self.config
            results = {n: r for n, r in results.items() if cfg.nodes.get(n) == polled.nodes[n]}
        for name, res in results.items():
            rec = self.records.setdefault(name, health.NodeRecord(name=name))
            if res.state is not None:
                change = health.record_success(rec, res.state, now, cfg.poll.rise)
            else:
                failed += 1
                change = health.record_failure(rec, res.error, now, cfg.poll.fall)
            if change == "down":
                log.warning("node %s is down: %s", name, rec.last_error)
            elif change == "up":
                log.info("node %s is up", name)
        self.install_snapshot(now, frozenset(n for n, r in results.items() if r.state is not None))
        self.last_cycle = CycleInfo(started, time.time() - started, len(results), failed)
        self.poll_histogram.observe(self.last_cycle.duration)
        self.history.add(self.snapshot, now, cfg.poll.interval)
        if publish:
            self._kick_dns()

    def install_snapshot(self, now: float | None = None, refreshed: frozenset[str] = frozenset()) -> None:
        """Build a snapshot from the current records and drained set, and swap it in.

        Only nodes ``refreshed`` by a successful poll forget the terminals
        counted since their last figures; a drain or reload in the middle of
        a storm keeps every count.
        """
        drained = frozenset(self.drain.nodes) if self.drain else frozenset()
        self.snapshot = Snapshot.build(self.config, self.records, drained, now or time.time())
        self.selector.install(self.snapshot, refreshed)

    def _candidates(self) -> dict:
        from lbserver.arbiter import Candidate  # noqa: PLC0415

        return {
            # A dead node has no figures: None keeps it behind nodes that still answer.
            name: Candidate(name=name, healthy=v.healthy, weight=v.weight if v.up is True else None,
                            reasons=v.reasons, drained=v.drained)
            for name, v in self.snapshot.nodes.items()
        }

    def _kick_dns(self) -> None:
        if self.arbiter is None or self._dns_busy:
            return
        self._dns_busy = True
        fut = self._loop.run_in_executor(self._dns_pool, self.arbiter.run_cycle, self._candidates(),
                                         self.snapshot.groups)
        fut.add_done_callback(self._dns_done)

    async def cycle_once(self) -> None:
        """One poll and, when configured, one DNS publication, both awaited (``--once``)."""
        await self.cycle(publish=False)
        if self.arbiter is not None:
            self.dns_reports = self.arbiter.run_cycle(self._candidates(), self.snapshot.groups)

    def _dns_done(self, fut: asyncio.Future) -> None:
        self._dns_busy = False
        exc = fut.exception()
        if exc is not None:
            log.error("DNS arbiter cycle failed: %s", exc, exc_info=exc)
        else:
            self.dns_reports = fut.result()
            for report in self.dns_reports:
                key = (report.alias, report.result)
                self.dns_update_counts[key] = self.dns_update_counts.get(key, 0) + 1

    # -- configuration ----------------------------------------------------

    def _apply_config(self, config: ServerConfig) -> None:
        old = self.config
        self.config = config
        self._answers = {name: answer_for(node, config.returns) for name, node in config.nodes.items()}
        for name in list(self.records):
            if name not in config.nodes:
                del self.records[name]
        if self.drain is None or (old and old.state_file != config.state_file):
            self.drain = DrainState.load(config.state_file)
        if config.dns is not None:
            from lbserver.dnsarbiter import DnsArbiter  # noqa: PLC0415

            if self.arbiter is None:
                self.arbiter = DnsArbiter(config.dns, config.nodes)
            else:
                self.arbiter.reconfigure(config.dns, config.nodes)
        else:
            self.arbiter = None
        if old is not None:
            self.install_snapshot()

    async def _reload(self, config: ServerConfig) -> None:
        if config.listen != self._bound["terminal"]:
            await self._rebind("terminal", config.listen, self.terminal)
        if config.mgmt_listen != self._bound.get("mgmt"):
            await self._rebind_mgmt(config.mgmt_listen)
        self.terminal.idle_timeout = config.idle_timeout
        self.terminal.max_connections = config.max_connections
        self._apply_config(config)
        self.poll_now()

    async def _rebind(self, key: str, address: tuple[str, int], service) -> None:
        """Move ``service`` to ``address``; on failure keep the old socket (retried at the next reload)."""
        old = self._bound[key]
        try:
            sock = listen_socket(*address)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE or address[1] != old[1] or not hosts_overlap(address[0], old[0]):
                log.error("keeping the old %s address: %s", key, exc)
                return
            # The new address overlaps our own socket (127.0.0.1:8008 -> 0.0.0.0:8008): free it first.
            log.warning("%s: %s overlaps the address in use; closing it before binding", key, exc)
            await service.stop()
            self._sockets[key].close()
            try:
                sock = listen_socket(*address)
            except OSError as exc2:
                log.error("keeping the old %s address: %s", key, exc2)
                try:
                    sock, address = listen_socket(*old), old
                except OSError as exc3:
                    self._failure = f"{key} service has no listening socket: {exc3}"
                    return
        else:
            await service.stop()
            self._sockets[key].close()
        self._sockets[key] = sock
        self._bound[key] = address
        await service.start(sock)

    async def _rebind_mgmt(self, address: tuple[str, int] | None) -> None:
        from lbserver.mgmt import ManagementService  # noqa: PLC0415

        if self.mgmt is not None and address is not None:
            await self._rebind("mgmt", address, self.mgmt)
        elif self.mgmt is not None:
            await self.mgmt.stop()
            self._sockets.pop("mgmt").close()
            self._bound.pop("mgmt")
            self.mgmt = None
        else:
            try:
                self._sockets["mgmt"] = listen_socket(*address)
            except OSError as exc:
                log.error("management service not started: %s", exc)
                return
            self._bound["mgmt"] = address
            self.mgmt = ManagementService(self)
            await self.mgmt.start(self._sockets["mgmt"])

    # -- terminals --------------------------------------------------------

    def _count_response(self, code: int) -> None:
        self.response_counts[code] = self.response_counts.get(code, 0) + 1

    def answer(self, group: str | None, user: str | None) -> str:
        """Choose a server for one terminal request (raises UnknownGroup)."""
        pick = self.selector.pick(group, user)
        if pick.reason == "last-good":
            now = time.monotonic()
            if now - self._last_good_logged.get(pick.group, -1e9) > LAST_GOOD_LOG_INTERVAL:
                self._last_good_logged[pick.group] = now
                log.warning("no healthy node in group %s: answering the last known good node %s",
                            pick.group, pick.node)
        return self._answers[pick.node]


__all__ = ["Balancer", "CycleInfo", "UnknownGroup", "answer_for"]
