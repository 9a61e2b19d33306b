"""Peer messages on the wire: encoding, the HMAC, and the replay guard (pure, no sockets).

One UDP datagram is one message::

    b"LBP1" | 32-byte HMAC-SHA256 of the body (zeros when no secret) | body

The body is compact JSON: ``{"id": sender's boot id, "seq": n, "ts": time,
"picks": {node: count}, "homes": {user: node}, "drains": {"nodes": [...], "at": time}}``;
picks, homes and drains are optional; ``"dns"`` is the sender's DNS
lease-holder name (see :mod:`lbserver.dns.lease`), in every message of a
balancer that publishes DNS aliases, so its peers know it is alive and may
take its DNS lease over once its messages stop. ``homes`` names the users among the
picks (those a terminal named), so a user sent somewhere by one balancer
goes back there through the other; a balancer of an older version ignores
the key, and one that sends none is simply not followed there. What does not fit one datagram is split by its encoded
size (:func:`split_picks`, :func:`split_drains`): picks simply go in several
messages, and a drained set too large for one goes in parts, each marked
``"part": k, "of": n`` beside ``"at"``, which the receiver puts back
together (:class:`DrainParts`) before it takes the set. A sender numbers its messages from 1 under a boot id
drawn at start, so a receiver refuses a message it has seen (same id, seq
not greater) and, with a secret, one whose timestamp is more than
:data:`WINDOW` seconds away from its own clock: a replayed message is
refused either way. Anything malformed raises :class:`BadMessage` with a
reason from :data:`REASONS`, counted per peer; nothing here trusts the
bytes it is given.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Mapping, NamedTuple, TypeVar

MAGIC = b"LBP1"
MAC_SIZE = 32
MAX_MESSAGE = 8192
"""Bytes in one datagram at most; larger ones are refused unread (and never sent)."""
WINDOW = 30.0
"""Seconds a signed message's timestamp may differ from the receiver's clock."""
MAX_NAMES = 1000
"""Node names one message may carry."""
MAX_PARTS = 256
"""Messages one drained set may span (about 34,000 names of 56 characters)."""
HEADER_ROOM = 256
"""Bytes of a datagram kept for everything but the names (id, seq, ts, at, part, of)."""
_ROOM = MAX_MESSAGE - len(MAGIC) - MAC_SIZE - HEADER_ROOM

GARBAGE, OVERSIZED, BAD_MAC, UNSIGNED, STALE, REPLAYED, MALFORMED, UNKNOWN_SENDER, FLOOD = (
    "garbage", "oversized", "bad-mac", "unsigned", "stale", "replayed", "malformed", "unknown-sender", "flood")
REASONS = (GARBAGE, OVERSIZED, BAD_MAC, UNSIGNED, STALE, REPLAYED, MALFORMED, UNKNOWN_SENDER, FLOOD)
"""Why a datagram was refused (the label of the refusal counters)."""

_ZERO_MAC = bytes(MAC_SIZE)


class BadMessage(ValueError):
    """A datagram that is not a message to apply; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class Drains(NamedTuple):
    """A balancer's drained set as of ``at``, or its part ``part`` of ``parts`` (0 of 1: the whole set)."""

    nodes: frozenset[str]
    at: float
    part: int = 0
    parts: int = 1


@dataclass(frozen=True)
class Message:
    """One decoded message."""

    sender: str
    seq: int
    ts: float
    picks: Mapping[str, int] = field(default_factory=dict)
    drains: Drains | None = None
    homes: Mapping[str, str] = field(default_factory=dict)
    dns: str | None = None


def _mac(secret: bytes | None, body: bytes) -> bytes:
    return hmac.new(secret, body, hashlib.sha256).digest() if secret else _ZERO_MAC


def encode(msg: Message, secret: bytes | None) -> bytes:
    """The datagram for ``msg``; raises ValueError when it would exceed :data:`MAX_MESSAGE`."""
    doc: dict = {"id": msg.sender, "seq": msg.seq, "ts": round(msg.ts, 6)}
    if msg.picks:
        doc["picks"] = dict(msg.picks)
    if msg.homes:
        doc["homes"] = dict(msg.homes)
    if msg.dns:
        doc["dns"] = msg.dns
    if msg.drains is not None:
        doc["drains"] = {"nodes": sorted(msg.drains.nodes), "at": msg.drains.at}
        if msg.drains.parts > 1:
            doc["drains"].update(part=msg.drains.part, of=msg.drains.parts)
    body = json.dumps(doc, separators=(",", ":")).encode()
    data = MAGIC + _mac(secret, body) + body
    if len(data) > MAX_MESSAGE:
        raise ValueError(f"peer message of {len(data)} bytes exceeds {MAX_MESSAGE}")
    return data


_T = TypeVar("_T")


def _runs(items: Iterable[_T], cost: Callable[[_T], int]) -> Iterator[list[_T]]:
    """``items`` in runs of at most :data:`MAX_NAMES` whose encoded ``cost`` fits one datagram."""
    run: list[_T] = []
    size = 0
    for item in items:
        c = cost(item)
        if run and (size + c > _ROOM or len(run) == MAX_NAMES):
            yield run
            run, size = [], 0
        run.append(item)
        size += c
    if run:
        yield run


def split_picks(picks: Mapping[str, int]) -> list[dict[str, int]]:
    """``picks`` in as many chunks as it takes for each to fit one message."""
    return [dict(run) for run in _runs(picks.items(), lambda kv: len(json.dumps(kv[0])) + len(str(kv[1])) + 2)]


def split_homes(homes: Mapping[str, str]) -> list[dict[str, str]]:
    """``homes`` ({user: node}) in as many chunks as it takes for each to fit one message."""
    return [dict(run) for run in _runs(homes.items(), lambda kv: len(json.dumps(kv[0])) + len(json.dumps(kv[1])) + 2)]


def split_drains(nodes: Iterable[str], at: float) -> list[Drains]:
    """The drained set ``nodes`` as of ``at``, in as many parts as it takes for each to fit one message.

    Raises ValueError when that is more than :data:`MAX_PARTS`.
    """
    runs = list(_runs(sorted(nodes), lambda name: len(json.dumps(name)) + 1)) or [[]]
    if len(runs) > MAX_PARTS:
        raise ValueError(f"{sum(map(len, runs))} drained nodes need {len(runs)} messages (at most {MAX_PARTS})")
    return [Drains(frozenset(run), at, i, len(runs)) for i, run in enumerate(runs)]


class DrainParts:
    """One peer's drained set put back together from its parts (one per peer; pure, no sockets).

    Only the newest set is collected: a part of an older one is ignored, a
    part of a newer one starts over. A part that comes again is simply
    kept, so a sender can repeat parts until every one has come.
    """

    def __init__(self) -> None:
        self._key: tuple[float, int] | None = None  # (at, parts) of the set being collected
        self._got: dict[int, frozenset[str]] = {}

    def add(self, drains: Drains) -> Drains | None:
        """Take one part; the whole set once its last part has come, else None."""
        if drains.parts == 1:
            return drains
        key = (drains.at, drains.parts)
        if self._key is not None and key != self._key:
            if drains.at < self._key[0]:
                return None
            self._got = {}
        self._key = key
        self._got[drains.part] = drains.nodes
        if len(self._got) < drains.parts:
            return None
        whole = Drains(frozenset().union(*self._got.values()), drains.at)
        self._key, self._got = None, {}
        return whole


def _name(value: object) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= 255:
        raise BadMessage(MALFORMED, "a node name is not a short string")
    return value


def _time(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise BadMessage(MALFORMED, "a time is not a finite positive number")
    return float(value)


def decode(data: bytes, secret: bytes | None) -> Message:
    """Check and parse one datagram; raises :class:`BadMessage`."""
    if len(data) > MAX_MESSAGE:
        raise BadMessage(OVERSIZED, f"{len(data)} bytes")
    if len(data) < len(MAGIC) + MAC_SIZE or not data.startswith(MAGIC):
        raise BadMessage(GARBAGE, "not a peer message")
    mac, body = data[len(MAGIC):len(MAGIC) + MAC_SIZE], data[len(MAGIC) + MAC_SIZE:]
    if secret:
        if mac == _ZERO_MAC:
            raise BadMessage(UNSIGNED, "no HMAC, but a secret-file is configured")
        if not hmac.compare_digest(mac, _mac(secret, body)):
            raise BadMessage(BAD_MAC, "HMAC does not match (another secret?)")
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        raise BadMessage(GARBAGE, "body is not JSON") from None
    if not isinstance(doc, dict):
        raise BadMessage(MALFORMED, "body is not an object")
    sender, seq = doc.get("id"), doc.get("seq")
    if not isinstance(sender, str) or not 0 < len(sender) <= 64:
        raise BadMessage(MALFORMED, "no sender id")
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 1:
        raise BadMessage(MALFORMED, "no sequence number")
    ts = _time(doc.get("ts"))
    picks: dict[str, int] = {}
    raw_picks = doc.get("picks", {})
    if not isinstance(raw_picks, dict) or len(raw_picks) > MAX_NAMES:
        raise BadMessage(MALFORMED, "picks is not a small object")
    for node, count in raw_picks.items():
        if isinstance(count, bool) or not isinstance(count, int) or not 0 < count <= 100000:
            raise BadMessage(MALFORMED, "a pick count is not a positive whole number")
        picks[_name(node)] = count
    raw_homes = doc.get("homes", {})
    if not isinstance(raw_homes, dict) or len(raw_homes) > MAX_NAMES:
        raise BadMessage(MALFORMED, "homes is not a small object")
    homes = {_name(user): _name(node) for user, node in raw_homes.items()}
    drains = None
    raw_drains = doc.get("drains")
    if raw_drains is not None:
        if not isinstance(raw_drains, dict) or not isinstance(raw_drains.get("nodes"), list) \
                or len(raw_drains["nodes"]) > MAX_NAMES:
            raise BadMessage(MALFORMED, "drains is not {nodes, at}")
        part, parts = raw_drains.get("part", 0), raw_drains.get("of", 1)
        if any(isinstance(v, bool) or not isinstance(v, int) for v in (part, parts)) \
                or not 0 <= part < parts <= MAX_PARTS:
            raise BadMessage(MALFORMED, "drains part is not k of n")
        drains = Drains(frozenset(_name(n) for n in raw_drains["nodes"]), _time(raw_drains.get("at")), part, parts)
    holder = doc.get("dns")
    if holder is not None:
        holder = _name(holder)
    return Message(sender=sender, seq=seq, ts=ts, picks=picks, drains=drains, homes=homes, dns=holder)


class ReplayGuard:
    """Remembers the last sequence number of each sender, to refuse repeats (and, signed, stale messages)."""

    def __init__(self, window: float = WINDOW, max_senders: int = 1024) -> None:
        self.window = window
        self.max_senders = max_senders
        self._last: dict[str, tuple[int, float]] = {}  # sender -> (seq, when seen)

    def check(self, msg: Message, now: float, signed: bool) -> None:
        """Raise :class:`BadMessage` for a repeated or (when ``signed``) stale message, else remember it."""
        if signed and abs(now - msg.ts) > self.window:
            raise BadMessage(STALE, f"timestamp {now - msg.ts:+.0f} s off (clocks out of step, or a replay)")
        last = self._last.get(msg.sender)
        if last is not None and msg.seq <= last[0]:
            raise BadMessage(REPLAYED, f"sequence {msg.seq} already seen")
        if last is None and len(self._last) >= self.max_senders:
            # Boot ids of restarted peers pile up; the oldest are past the window anyway.
            oldest = min(self._last, key=lambda s: self._last[s][1])
            del self._last[oldest]
        self._last[msg.sender] = (msg.seq, now)
