"""The composition root: plugs the terminal, DNS, management, peers, HAProxy and X2Go services into the core.

:class:`Daemon` is what :func:`common.runtime.run` drives (bind, start,
reload, stop, failure). It owns the listening sockets and one thread running
the asyncio loop on which the core, the terminal service and the management
service all live; the runtime's own thread reaches them only through that
loop (reload, stop). The DNS arbiter's network work runs on its own worker
thread (:mod:`lbserver.dns.service`), and so does the HAProxy session
map's sync (:mod:`lbserver.haproxy.mapservice`); the management service
renders its reads on the loop's executor threads (:mod:`lbserver.mgmt.frozen`).

It is the only module that knows every part: the core never imports the
services, and the services see the core only through
:mod:`lbserver.core.view`. The admin actions that are more than a drain
(reload signals this process, as SIGHUP does) live here.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import socket
import sys
import threading
from typing import Awaitable, Callable

from common.netutil import raise_nofile_limit
from common.sockets import bind_after_close, datagram_socket, listen_socket, open_replacement
from lbserver import config as configmod
from lbserver.config import HaproxyAgent, Peers, ServerConfig, X2goBroker, X2goLoadChecker
from lbserver.core.balancer import Balancer
from lbserver.core.view import ReloadRefused
from lbserver.dns.service import DnsService
from lbserver.haproxy.mapservice import SessionMapService
from lbserver.haproxy.service import HaproxyAgentService
from lbserver.mgmt.api import Api
from lbserver.mgmt.http import ManagementService
from lbserver.peers.service import PeerService
from lbserver.terminal.service import TerminalService, new_event_loop
from lbserver.x2go.farm import Farm
from lbserver.x2go.loadchecker import LoadAnswers, LoadCheckerService
from lbserver.x2go.service import X2goBrokerService

log = logging.getLogger("lbserver")

TERMINAL, MGMT, PEERS, HAPROXY, X2GO = "terminal", "mgmt", "peers", "haproxy", "x2go"

GC_THRESHOLDS = (5_000, 2, 1_000)
"""The cyclic garbage collector's thresholds (Python's defaults are 700, 10, 10).

Each poll cycle replaces every node's figures, objects that live one cycle
and so reach the oldest generation: with the defaults, a balancer of 10,000
agents ran three full collections per cycle, over a second of the loop's
time, during which no terminal is answered. Garbage here is nearly all freed
by reference counting; the collector only looks for cycles. These
thresholds make a full collection about a hundred times rarer (every ten
million allocations, every few minutes at that scale), and keep the middle
generation small, so that one of its collections, which stops the loop
too, lasts at most about 30 ms at that scale (over 100 ms with 10,000, 10).
"""


SWITCH_INTERVAL = 0.001
"""Seconds a thread holds the interpreter before another that waits gets it (Python's default is 0.005).

The loop thread answers terminals while a worker thread renders a large
management read (``/status`` of ten thousand nodes is seconds of work):
every time the loop comes back from waiting for the network, it waits this
long at most for the interpreter.
"""


class Daemon:
    """The lbserver service (see :class:`common.runtime.Service`)."""

    def __init__(self) -> None:
        self.core: Balancer | None = None
        self.dns: DnsService | None = None
        self.terminal: TerminalService | None = None
        self.mgmt: ManagementService | None = None
        self.peers: PeerService | None = None
        self.haproxy: HaproxyAgentService | None = None
        self.sessionmap: SessionMapService | None = None
        self.x2go: X2goBrokerService | None = None
        self.loadchecker: LoadCheckerService | None = None
        self._sockets: dict[str, socket.socket] = {}
        self._bound: dict[str, tuple[str, int]] = {}  # what each socket really listens on
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stopping: asyncio.Event | None = None
        self._failure: str | None = None

    # -- runtime interface ------------------------------------------------

    def bind(self, config: ServerConfig) -> list[socket.socket]:
        """Open the terminal, management, peers, agent-check and X2Go broker sockets (before daemonising)."""
        self._listen(TERMINAL, config.listen)
        if config.mgmt_listen:
            self._listen(MGMT, config.mgmt_listen)
        if config.haproxy is not None:
            self._listen(HAPROXY, config.haproxy.listen)
        if config.x2gobroker is not None:
            self._listen(X2GO, config.x2gobroker.listen)
        if config.peers is not None:
            self._sockets[PEERS], self._bound[PEERS] = datagram_socket(config.peers.listen), config.peers.listen
        return list(self._sockets.values())

    def start(self, config: ServerConfig) -> None:
        """Start the loop thread; return once the first poll is done and terminals are served."""
        raise_nofile_limit()
        gc.set_threshold(*GC_THRESHOLDS)
        sys.setswitchinterval(SWITCH_INTERVAL)
        self.core = Balancer(config)
        self.dns = DnsService(self.core, heard=self._heard)
        self.dns.configure(config)
        self.core.after_cycle(self.dns.kick)
        self.sessionmap = SessionMapService(self.core)
        self.sessionmap.configure(config.haproxy_map)
        self.core.after_cycle(self.sessionmap.kick)
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
        if self.dns is not None:
            self.dns.close()
        if self.sessionmap is not None:
            self.sessionmap.close()
        for sock in self._sockets.values():
            sock.close()

    def failure(self) -> str | None:
        """Why the loop thread died, if it did."""
        if self._failure:
            return self._failure
        if self._thread is not None and self._ready.is_set() and not self._thread.is_alive():
            return "balancer loop thread exited"
        return None

    # -- admin actions (lbserver.core.view.AdminActions) ------------------

    def set_drained(self, node: str, drained: bool) -> bool:
        """Drain or enable ``node`` in the core, and tell the peers at once."""
        changed = self.core.set_drained(node, drained)
        if changed and self.peers is not None:
            self.peers.send_drains()
        return changed

    async def request_reload(self) -> str:
        """Check the configuration file, then reload it the way SIGHUP does; returns its path."""
        path = self.core.config.path
        try:
            await asyncio.get_running_loop().run_in_executor(None, configmod.load, path)
        except configmod.ConfigError as exc:
            raise ReloadRefused(str(exc)) from None
        # The runtime's signal loop is the one place that reloads.
        os.kill(os.getpid(), signal.SIGHUP)
        return path

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
        core = self.core
        self._stopping = asyncio.Event()
        await core.cycle()
        self.terminal = TerminalService(core.answer, core.config, responses=core.terminal_responses,
                                        details=core.answer_details)
        await self.terminal.start(self._sockets[TERMINAL])
        if HAPROXY in self._sockets:
            await self._start_haproxy(core.config.haproxy)
        if X2GO in self._sockets:
            await self._start_x2go(core.config.x2gobroker)
        await self._move_loadchecker(core.config.x2go_loadchecker)
        if PEERS in self._sockets:
            await self._start_peers(core.config.peers)
        if MGMT in self._sockets:
            await self._start_mgmt()
        self._ready.set()
        poller = asyncio.ensure_future(core.poll_forever())
        await self._stopping.wait()
        poller.cancel()
        await asyncio.gather(poller, return_exceptions=True)
        await self.terminal.stop()
        if self.mgmt is not None:
            await self.mgmt.stop()
        if self.peers is not None:
            await self.peers.stop()
        if self.haproxy is not None:
            await self.haproxy.stop()
        if self.x2go is not None:
            await self.x2go.stop()
        await self._move_loadchecker(None)

    async def _start_mgmt(self) -> None:
        self.mgmt = ManagementService(Api(self.core, self, self.dns, self, self, self))
        await self.mgmt.start(self._sockets[MGMT])

    def _heard(self, holder: str) -> float | None:
        """When a peer last said it is DNS lease-holder ``holder`` (the DNS standby's takeover; any thread)."""
        peers = self.peers
        return peers.heard(holder) if peers is not None else None

    async def _start_peers(self, config: Peers) -> None:
        self.peers = PeerService(self.core, config)
        if self.dns is not None:
            self.peers.dns_holder = self.dns.holder
        self.core.on_pick(self.peers.note_pick)
        await self.peers.start(self._sockets[PEERS])

    async def _start_haproxy(self, config: HaproxyAgent) -> None:
        self.haproxy = HaproxyAgentService(self.core, config)
        await self.haproxy.start(self._sockets[HAPROXY])

    async def _start_x2go(self, config: X2goBroker) -> None:
        farm = Farm(self.core, self.core.answer_details)
        self.x2go = X2goBrokerService(config, farm.place, farm.listing)
        await self.x2go.start(self._sockets[X2GO])

    def x2go_status(self) -> dict | None:
        """The X2Go broker's and load checker's state for the management service (None without either)."""
        if self.x2go is None and self.loadchecker is None:
            return None
        return {"broker": self.x2go.status() if self.x2go is not None else None,
                "loadchecker": self.loadchecker.status() if self.loadchecker is not None else None}

    def peers_status(self) -> dict | None:
        """The peer exchange's state for the management service (None without <peers>)."""
        return self.peers.peers_status() if self.peers is not None else None

    def session_map_status(self) -> dict | None:
        """The HAProxy session map's state for the management service (None without <haproxy-map>)."""
        return self.sessionmap.status() if self.sessionmap is not None else None

    # -- configuration ----------------------------------------------------

    async def _reload(self, config: ServerConfig) -> None:
        if config.listen != self._bound[TERMINAL]:
            await self._rebind(TERMINAL, config.listen, self.terminal)
        if config.mgmt_listen != self._bound.get(MGMT):
            await self._move_mgmt(config.mgmt_listen)
        self.terminal.configure(config)
        await self._move_peers(config.peers)
        await self._move_haproxy(config.haproxy)
        await self._move_x2go(config.x2gobroker)
        await self._move_loadchecker(config.x2go_loadchecker)
        self.core.apply_config(config)
        self.dns.configure(config)
        self.sessionmap.configure(config.haproxy_map)
        self.core.poll_now()

    def _listen(self, key: str, address: tuple[str, int]) -> None:
        sock = listen_socket(address)
        sock.setblocking(False)
        self._sockets[key], self._bound[key] = sock, address

    async def _rebind(self, key: str, address: tuple[str, int], service) -> None:
        """Move ``service`` to ``address``; on failure keep the old address (retried at the next reload)."""
        old = self._bound[key]
        try:
            sock = open_replacement(address, old)
        except OSError as exc:
            log.error("keeping the old %s address: %s", key, exc)
            return
        await service.stop()
        self._sockets[key].close()
        if sock is None:  # overlapping our own socket: bound once the old one is closed
            try:
                sock, error = bind_after_close(address, old)
            except OSError as lost:
                self._failure = f"{key} service has no listening socket: {lost}"
                return
            if error is not None:
                address = old
        sock.setblocking(False)
        self._sockets[key], self._bound[key] = sock, address
        await service.start(sock)

    async def _move_mgmt(self, address: tuple[str, int] | None) -> None:
        if self.mgmt is not None and address is not None:
            await self._rebind(MGMT, address, self.mgmt)
        elif self.mgmt is not None:
            await self.mgmt.stop()
            self._sockets.pop(MGMT).close()
            self._bound.pop(MGMT)
            self.mgmt = None
        else:
            try:
                self._listen(MGMT, address)
            except OSError as exc:
                log.error("management service not started: %s", exc)
                return
            await self._start_mgmt()

    async def _move_haproxy(self, config: HaproxyAgent | None) -> None:
        """Follow a reloaded <haproxy-agent>: start, stop, move (keeping the old address on failure), reconfigure."""
        await self._move_listener(HAPROXY, "HAProxy agent-check service", config, self._start_haproxy)

    async def _move_x2go(self, config: X2goBroker | None) -> None:
        """Follow a reloaded <x2gobroker>, as <haproxy-agent>; a switch between HTTP and HTTPS restarts it."""
        await self._move_listener(X2GO, "X2Go broker", config, self._start_x2go)
        if self.x2go is not None and self.x2go.needs_restart:
            await self._rebind(X2GO, self._bound[X2GO], self.x2go)

    async def _move_listener(self, key: str, what: str, config: HaproxyAgent | X2goBroker | None,
                             start: Callable[..., Awaitable[None]]) -> None:
        """Start, stop, move (keeping the old address on failure) or reconfigure the TCP service ``key``.

        ``key`` names both the socket and the attribute holding the service (``haproxy``, ``x2go``).
        """
        service = getattr(self, key)
        if service is not None and config is not None:
            if config.listen != self._bound[key]:
                await self._rebind(key, config.listen, service)
            service.configure(config)
        elif service is not None:
            await service.stop()
            self._sockets.pop(key).close()
            self._bound.pop(key)
            setattr(self, key, None)
        elif config is not None:
            try:
                self._listen(key, config.listen)
            except OSError as exc:
                log.error("%s not started: %s", what, exc)
                return
            await start(config)

    async def _move_loadchecker(self, config: X2goLoadChecker | None) -> None:
        """Start, stop or move x2gobroker's load-checker socket (a socket that cannot be made is logged)."""
        if self.loadchecker is not None and self.loadchecker.config == config:
            return
        if self.loadchecker is not None:
            await self.loadchecker.stop()
            self.loadchecker = None
        if config is None:
            return
        service = LoadCheckerService(LoadAnswers(self.core), config)
        try:
            await service.start()
        except (OSError, KeyError) as exc:
            log.error("x2gobroker load-checker socket %s not started: %s", config.socket, exc)
            return
        self.loadchecker = service

    async def _move_peers(self, config: Peers | None) -> None:
        """Follow a reloaded <peers>: start, stop, or move to a new UDP address (keeping the old on failure)."""
        if self.peers is not None and (config is None or config.listen != self._bound[PEERS]):
            try:
                sock = datagram_socket(config.listen) if config is not None else None
            except OSError as exc:
                log.error("keeping the old peers address: %s", exc)
                self.peers.configure(config)
                return
            await self.peers.stop()
            self._sockets.pop(PEERS).close()
            self._bound.pop(PEERS)
            self.core.on_pick(None)
            self.peers = None
            if sock is not None:
                self._sockets[PEERS], self._bound[PEERS] = sock, config.listen
                await self._start_peers(config)
        elif self.peers is not None:
            self.peers.configure(config)
        elif config is not None:
            try:
                self._sockets[PEERS], self._bound[PEERS] = datagram_socket(config.listen), config.listen
            except OSError as exc:
                log.error("peer exchange not started: %s", exc)
                return
            await self._start_peers(config)


__all__ = ["Daemon"]
