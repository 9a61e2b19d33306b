"""The peer exchange: tell peer balancers each pick as it happens and the admin's drains; apply theirs.

Messages are UDP datagrams (:mod:`lbserver.peers.message`), sent from the
socket they are received on, so a peer's datagrams come from the very
address and port another balancer names in its ``<peer>``: a datagram from
any other source is refused. Sending never waits:
picks are collected while the loop answers terminals and sent as one
datagram per peer once the loop is free (``call_soon``), so a login storm
costs a counter increment per pick, and a dead, slow or flooding peer costs
the terminal path nothing (a datagram to a dead peer is simply lost).

A pick whose terminal named a user carries the user too (``homes``), so
the peers send him to the same node until its figures show his session.

Every ``heartbeat`` each peer also gets the drained set with its time, so a
peer that missed a drain (it was down, a datagram was lost) catches up, and
the silence of a peer shows as "unreachable". A set too large for one
datagram goes in parts: all of them when it changes, then
:data:`PARTS_PER_HEARTBEAT` in turn at each heartbeat, so a burst the
receiver could not take in whole is filled in within a few heartbeats
without ever sending more than that many datagrams at once. A datagram from an address
that is no peer, over the rate limit, malformed, unsigned or badly signed
(with a secret), stale or replayed is dropped and counted, never applied.

Every message carries this balancer's DNS lease-holder name when it
publishes DNS aliases (:attr:`PeerService.dns_holder`), and :meth:`PeerService.heard`
says when a peer last sent a message under a given name: the DNS arbiter's
standby takes the lease over once the writer's messages have stopped.

Threading: everything runs on the daemon's loop thread, except the name
resolution of peers, done on a worker thread.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

from common.netutil import peer_address
from common.ratelimit import DenyLog
from common.sockets import format_listen
from lbserver.config import Peer, Peers
from lbserver.core.view import SharedState
from lbserver.peers.message import (FLOOD, UNKNOWN_SENDER, BadMessage, DrainParts, Drains, Message, ReplayGuard,
                                    decode, encode, split_drains, split_homes, split_picks)

log = logging.getLogger("lbserver.peers")

RATE = 2000.0
"""Messages per second accepted from one peer (a burst of as many is allowed)."""
RESOLVE_INTERVAL = 300.0
"""Seconds between two look-ups of the peers' names."""
LOG_INTERVAL = 60.0
"""Seconds between two log lines about refused datagrams from one source."""
MAX_LOGGED = 1000
"""(source, reason) pairs remembered for :data:`LOG_INTERVAL`; when that many were logged within it, others are not."""
PARTS_PER_HEARTBEAT = 8
"""Parts of a many-part drained set sent at each heartbeat (about 64 KiB, well within a receive buffer)."""


@dataclass
class PeerState:
    """What is known of one configured peer."""

    peer: Peer
    addresses: tuple[tuple[str, int], ...] = ()
    resolve_error: str | None = None
    last_message: float | None = None
    messages: int = 0
    picks_received: int = 0
    refused: Counter = field(default_factory=Counter)
    dns_holder: str | None = None
    """The DNS lease-holder name its last message gave, and when (monotonic)."""
    dns_heard: float | None = None
    drain_parts: DrainParts = field(default_factory=DrainParts)
    tokens: float = RATE
    refilled: float = field(default_factory=time.monotonic)

    def allow(self, now: float) -> bool:
        """Token bucket: False when the peer sends faster than :data:`RATE`."""
        self.tokens = min(RATE, self.tokens + (now - self.refilled) * RATE)
        self.refilled = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


def _normal(addr: tuple) -> tuple[str, int]:
    """(ip, port) of a datagram's source, IPv4-mapped IPv6 written as IPv4."""
    ip = peer_address(addr[0])
    return (str(ip) if ip is not None else addr[0]), addr[1]


def _resolve(peer: Peer) -> tuple[tuple[str, int], ...]:
    infos = socket.getaddrinfo(peer.host, peer.port, type=socket.SOCK_DGRAM)
    return tuple(dict.fromkeys(_normal(info[4][:2]) for info in infos))


class PeerService(asyncio.DatagramProtocol):
    """The exchange of one balancer with its ``<peer>`` balancers."""

    def __init__(self, shared: SharedState, config: Peers) -> None:
        self._shared = shared
        self._config = config
        self._secret = config.secret.encode() if config.secret else None
        self._states: dict[Peer, PeerState] = {p: PeerState(p) for p in config.peers}
        self._by_addr: dict[tuple[str, int], PeerState] = {}
        self._guard = ReplayGuard()
        self._boot_id = os.urandom(8).hex()
        self._seq = 0
        self._outbox: Counter[str] = Counter()
        self._homes_out: dict[str, str] = {}
        self._drained: tuple[frozenset[str], float] | None = None  # the drained set as last split ...
        self._drains: list[Drains] = []                              # ... and its parts
        self._turn = 0                   # the next part a heartbeat sends
        self._flush_scheduled = False
        self._transport: asyncio.DatagramTransport | None = None
        self._task: asyncio.Task | None = None
        self._wake: asyncio.Event | None = None
        self._resolved_at = -RESOLVE_INTERVAL
        self.refused_unknown: Counter = Counter()
        self._refusal_log = DenyLog(LOG_INTERVAL, MAX_LOGGED)  # keyed by (source, reason)
        self.sent = 0
        self.dns_holder: Callable[[], str | None] | None = None
        """This balancer's DNS lease-holder name, sent in every message (None: no DNS aliases)."""

    # -- lifecycle ----------------------------------------------------------

    async def start(self, sock: socket.socket) -> None:
        """Receive on ``sock`` (bound UDP) and start the heartbeat."""
        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.create_datagram_endpoint(lambda: self, sock=sock)
        self._wake = asyncio.Event()
        self._task = asyncio.ensure_future(self._heartbeat())

    async def stop(self) -> None:
        """Stop sending and receiving (the socket is closed)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def configure(self, config: Peers) -> None:
        """Follow a reloaded ``<peers>`` (same listen address; the daemon rebinds otherwise)."""
        self._config = config
        self._secret = config.secret.encode() if config.secret else None
        self._states = {p: self._states.get(p) or PeerState(p) for p in config.peers}
        self._resolved_at = -RESOLVE_INTERVAL
        self._index()
        if self._wake is not None:
            self._wake.set()  # resolve and greet the new peers now

    # -- sending ------------------------------------------------------------

    def note_pick(self, node: str, user: str | None = None) -> None:
        """Tell the peers that a terminal was sent to ``node`` (batched until the loop is free).

        ``user``, when the terminal named one, goes with it: the peers then
        send him to ``node`` too (:meth:`SharedState.count_remote_homes
        <lbserver.core.view.SharedState.count_remote_homes>`). A name a peer
        would refuse (over 255 characters) is not sent.
        """
        self._outbox[node] += 1
        if user and len(user) <= 255:
            self._homes_out[user] = node
        if not self._flush_scheduled and self._transport is not None:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def send_drains(self) -> None:
        """Send the whole drained set to every peer now (after an admin drain or enable)."""
        for part in self._drain_parts():
            self._send(drains=part)

    def _send_drains_in_turn(self) -> None:
        """The heartbeat's share: the whole set, or its next :data:`PARTS_PER_HEARTBEAT` parts."""
        parts = self._drain_parts()
        for i in range(min(len(parts), PARTS_PER_HEARTBEAT)):
            self._send(drains=parts[(self._turn + i) % len(parts)])
        self._turn += PARTS_PER_HEARTBEAT

    def _drain_parts(self) -> list[Drains]:
        """The drained set in parts, split again only when it changed (and a refusal logged once)."""
        state = self._shared.drain_state()
        if state != self._drained:
            self._drained = state
            try:
                self._drains = split_drains(*state)
            except ValueError as exc:
                log.error("drained set not shared with the peers: %s", exc)
                self._drains = []
        return self._drains

    def _flush(self) -> None:
        self._flush_scheduled = False
        picks, self._outbox = self._outbox, Counter()
        homes, self._homes_out = self._homes_out, {}
        # The users first: a peer that has counted a pick then knows where its user went.
        for chunk in split_homes(homes):
            self._send(homes=chunk)
        for chunk in split_picks(picks):
            self._send(picks=chunk)

    def _send(self, picks: dict[str, int] | None = None, drains: Drains | None = None,
              homes: dict[str, str] | None = None) -> None:
        if self._transport is None:
            return
        self._seq += 1
        holder = self.dns_holder() if self.dns_holder is not None else None
        msg = Message(sender=self._boot_id, seq=self._seq, ts=time.time(), picks=picks or {}, drains=drains,
                      homes=homes or {}, dns=holder)
        try:
            data = encode(msg, self._secret)
        except ValueError as exc:  # cannot happen: split_picks and split_drains leave room
            log.error("peer message not sent: %s", exc)
            return
        for state in self._states.values():
            for addr in state.addresses[:1]:
                self._transport.sendto(data, addr)
                self.sent += 1

    async def _heartbeat(self) -> None:
        while True:
            if time.monotonic() - self._resolved_at >= RESOLVE_INTERVAL:
                await self._resolve_all()
            self._send_drains_in_turn()
            try:
                await asyncio.wait_for(self._wake.wait(), self._config.heartbeat)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()

    async def _resolve_all(self) -> None:
        loop = asyncio.get_running_loop()
        self._resolved_at = time.monotonic()
        for state in list(self._states.values()):
            try:
                state.addresses = await loop.run_in_executor(None, _resolve, state.peer)
                state.resolve_error = None
            except OSError as exc:
                if state.resolve_error is None:
                    log.error("peer %s: cannot resolve its name: %s", state.peer.address, exc)
                state.resolve_error = str(exc)
        self._index()

    def _index(self) -> None:
        self._by_addr = {addr: state for state in self._states.values() for addr in state.addresses}

    # -- receiving ----------------------------------------------------------

    def datagram_received(self, data: bytes, addr: tuple) -> None:  # noqa: D401 (asyncio's API)
        """Check one datagram and apply it; anything wrong is counted and dropped."""
        source = _normal(addr)
        state = self._by_addr.get(source)
        if state is None:
            self._refuse(None, f"{source[0]}:{source[1]}", BadMessage(UNKNOWN_SENDER, "not a configured peer"))
            return
        if not state.allow(time.monotonic()):
            state.refused[FLOOD] += 1
            return
        try:
            msg = decode(data, self._secret)
            self._guard.check(msg, time.time(), signed=self._secret is not None)
        except BadMessage as exc:
            self._refuse(state, state.peer.address, exc)
            return
        state.last_message = time.time()
        state.messages += 1
        if msg.dns is not None:
            state.dns_holder, state.dns_heard = msg.dns, time.monotonic()
        if msg.picks:
            state.picks_received += sum(msg.picks.values())
            self._shared.count_remote_picks(msg.picks)
        if msg.homes:
            self._shared.count_remote_homes(msg.homes)
        if msg.drains is not None:
            whole = state.drain_parts.add(msg.drains)
            if whole is not None:
                self._shared.adopt_drains(whole.nodes, whole.at, state.peer.address)

    def error_received(self, exc: Exception) -> None:  # noqa: D401 (asyncio's API)
        """An ICMP error for a datagram sent earlier (a peer down): its silence shows in the status."""
        log.debug("peer datagram error: %s", exc)

    def _refuse(self, state: PeerState | None, source: str, exc: BadMessage) -> None:
        """Count a dropped datagram, and log it at most once a minute per source and reason."""
        if state is None:
            self.refused_unknown[exc.reason] += 1
        else:
            state.refused[exc.reason] += 1
        if self._refusal_log.should_log((source, exc.reason), time.monotonic()):
            log.warning("refused a peer message from %s: %s", source, exc)

    def heard(self, holder: str) -> float | None:
        """When (``time.monotonic()``) a peer last sent a message as DNS lease-holder ``holder``; None: never.

        Read from the DNS worker thread: a float read, safe without a lock.
        """
        times = [s.dns_heard for s in list(self._states.values()) if s.dns_holder == holder and s.dns_heard]
        return max(times) if times else None

    # -- status ---------------------------------------------------------------

    def peers_status(self) -> dict[str, Any]:
        """The exchange as JSON-ready data (the management service's view of the peers)."""
        now = time.time()
        horizon = 3 * self._config.heartbeat
        peers = []
        for state in self._states.values():
            peers.append({
                "address": state.peer.address,
                "resolved": [f"{ip}:{port}" for ip, port in state.addresses],
                "error": state.resolve_error,
                "reachable": state.last_message is not None and now - state.last_message <= horizon,
                "last_message": state.last_message,
                "messages": state.messages,
                "picks_received": state.picks_received,
                "refused": dict(state.refused),
            })
        return {"listen": format_listen(self._config.listen), "signed": self._secret is not None,
                "sent": self.sent, "peers": peers, "refused_unknown": dict(self.refused_unknown)}
