"""Peer messages on the wire: encoding, the HMAC, and the replay guard (pure, no sockets).

One UDP datagram is one message::

    b"LBP1" | 32-byte HMAC-SHA256 of the body (zeros when no secret) | body

The body is compact JSON: ``{"id": sender's boot id, "seq": n, "ts": time,
"picks": {node: count}, "drains": {"nodes": [...], "at": time}}``; picks and
drains are optional. A sender numbers its messages from 1 under a boot id
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
from typing import Mapping

MAGIC = b"LBP1"
MAC_SIZE = 32
MAX_MESSAGE = 8192
"""Bytes in one datagram at most; larger ones are refused unread (and never sent)."""
WINDOW = 30.0
"""Seconds a signed message's timestamp may differ from the receiver's clock."""
MAX_NAMES = 1000
"""Node names one message may carry."""

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


@dataclass(frozen=True)
class Message:
    """One decoded message."""

    sender: str
    seq: int
    ts: float
    picks: Mapping[str, int] = field(default_factory=dict)
    drains: tuple[frozenset[str], float] | None = None


def _mac(secret: bytes | None, body: bytes) -> bytes:
    return hmac.new(secret, body, hashlib.sha256).digest() if secret else _ZERO_MAC


def encode(msg: Message, secret: bytes | None) -> bytes:
    """The datagram for ``msg``; raises ValueError when it would exceed :data:`MAX_MESSAGE`."""
    doc: dict = {"id": msg.sender, "seq": msg.seq, "ts": round(msg.ts, 6)}
    if msg.picks:
        doc["picks"] = dict(msg.picks)
    if msg.drains is not None:
        doc["drains"] = {"nodes": sorted(msg.drains[0]), "at": msg.drains[1]}
    body = json.dumps(doc, separators=(",", ":")).encode()
    data = MAGIC + _mac(secret, body) + body
    if len(data) > MAX_MESSAGE:
        raise ValueError(f"peer message of {len(data)} bytes exceeds {MAX_MESSAGE}")
    return data


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
    drains = None
    raw_drains = doc.get("drains")
    if raw_drains is not None:
        if not isinstance(raw_drains, dict) or not isinstance(raw_drains.get("nodes"), list) \
                or len(raw_drains["nodes"]) > MAX_NAMES:
            raise BadMessage(MALFORMED, "drains is not {nodes, at}")
        drains = (frozenset(_name(n) for n in raw_drains["nodes"]), _time(raw_drains.get("at")))
    return Message(sender=sender, seq=seq, ts=ts, picks=picks, drains=drains)


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
