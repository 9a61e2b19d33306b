"""The DNS lease: one balancer at a time writes the aliases, the others stand by.

Balancers that publish the same aliases share one lease record in the zone:
a TXT record (``<dns lease>``, ``_lbserver-lease`` by default) naming the
writer and when its lease ends::

    _lbserver-lease.grid.example.org. 60 IN TXT "holder=boot1:8008 expires=1764500000"

Every change of the record is an RFC 2136 update whose prerequisite is what
the balancer just read, so the DNS server decides who holds it (an atomic
compare-and-set):

* free (no record): prerequisite "RRset does not exist", add ours;
* renewing ours, or taking over one that expired: prerequisite "RRset exists
  (value dependent)" on exactly the records read, replace them with ours;
* releasing ours (a clean stop): the same prerequisite on our record, delete it.

Of two balancers racing, the server applies one update and refuses the other
(YXRRSET or NXRRSET): the loser stands by. Every alias update of the holder
carries the prerequisite "the lease is exactly the TXT record I hold"
(:func:`fence`), so a holder that was frozen or cut off while another took
over can never write again: its update is refused as a whole and it stands
by. The lease decides who writes; the prerequisites make a stale writer
harmless, whatever the clocks say.

With ``<peers>``, a standby also takes over a lease that has not expired
once the holder's heartbeats, heard while it held the lease, have stopped
for :attr:`LeaseSettings.silence` (the same compare-and-set, so a holder
that is only cut off is fenced, not doubled). A holder never heard since it
took the lease is left to its expiry: across a partition each side would
otherwise take the lease back and forth. The lease can then be long and
renewed rarely (each renewal is a zone change, a NOTIFY and a transfer to
every secondary).

A record that cannot be read (not ``holder=... expires=...``, several TXT
records, no expiry) counts as held by an unknown balancer: nobody writes
while it changes, and a balancer takes it over once it has stayed the same
for a whole lease time (the safe side: a writer of some other format that
keeps renewing is never overruled; a stray record only delays the takeover).

:func:`parse` and :func:`decide_lease` are pure (the records, the time, who
I am -> what to do); :func:`build_take`, :func:`build_release` and
:func:`fence` make the update messages; :class:`LeaseKeeper` does one
balancer's reading and writing, cycle after cycle.
"""

from __future__ import annotations

import logging
import math
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TXT
import dns.update

from lbserver.config import Dns
from lbserver.config.tsigkey import TsigKey
from lbserver.dns.update import DnsError, Fence, alias_name, display_name, new_update, query_records, send_update

log = logging.getLogger("lbserver.dns")

# What to do with the lease this cycle (decide_lease).
ACQUIRE = "acquire"      # free: take it (prerequisite: no TXT record)
RENEW = "renew"          # ours, less than half of lease-time left: extend it
TAKEOVER = "takeover"    # another's that expired, or unreadable for a lease time: take it
HOLD = "hold"            # ours, more than half left: nothing to send
STANDBY = "standby"      # another's, still valid (or unreadable): do not write

# What this balancer is for the aliases (LeaseStatus.role).
WRITER, STANDBY_ROLE, UNKNOWN = "writer", "standby", "unknown"

LOST = ("YXRRSET", "NXRRSET")
"""Answer codes of an update whose prerequisite failed: another balancer changed the lease first."""

SHOWN = 120
"""Characters of an unreadable record shown in messages."""


DEFAULT_LEASE_TIME = 1200.0
"""Seconds a lease lasts by default: renewed every ten minutes, at most 6 zone changes an hour."""


@dataclass(frozen=True)
class LeaseSettings:
    """The lease of one ``<dns>``: the record's name (relative to the zone), its length and who I am.

    ``silence`` (with ``<peers>``): a valid lease of another balancer is
    taken over once that balancer's heartbeats, heard while it held the
    lease, have stopped for this long; None: only at its expiry.
    """

    name: str
    time: float
    holder: str
    silence: float | None = None


def lease_settings(dns_cfg: Dns, poll_interval: float, terminal_port: int,
                   heartbeat: float | None = None) -> LeaseSettings | None:
    """The lease of ``dns_cfg`` with its defaults filled in; None when ``lease=""`` turns it off.

    ``lease-time`` defaults to :data:`DEFAULT_LEASE_TIME` (at least three
    poll intervals), ``lease-holder`` to this host's name and the terminal
    port (two balancers on one host differ). ``heartbeat`` is the peers'
    heartbeat interval when ``<peers>`` is configured: a standby then takes
    over after two poll intervals (at least three heartbeats) of silence,
    so within about three poll intervals of the writer's end.
    """
    if not dns_cfg.lease:
        return None
    return LeaseSettings(name=dns_cfg.lease,
                         time=(dns_cfg.lease_time if dns_cfg.lease_time is not None
                               else max(DEFAULT_LEASE_TIME, 3 * poll_interval)),
                         holder=dns_cfg.lease_holder or f"{socket.gethostname()}:{terminal_port}",
                         silence=None if heartbeat is None else max(2 * poll_interval, 3 * heartbeat))


def lease_text(holder: str, expires: float) -> str:
    """The TXT record's text: ``holder=boot1:8008 expires=1764500000`` (whole seconds, rounded up)."""
    return f"holder={holder} expires={math.ceil(expires)}"


def _shown(raw: bytes) -> str:
    text = raw.decode("utf-8", "backslashreplace")
    text = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)
    return "'" + (text if len(text) <= SHOWN else text[:SHOWN] + "...") + "'"


@dataclass(frozen=True)
class Lease:
    """The lease record as read: its TXT records (each a tuple of strings) and what they say.

    ``problem`` says why the record cannot be read (None: absent or well formed).
    """

    records: tuple[tuple[bytes, ...], ...] = ()
    holder: str | None = None
    expires: float | None = None
    problem: str | None = None

    @property
    def absent(self) -> bool:
        """Whether there is no lease record at all (the lease is free)."""
        return not self.records

    @property
    def text(self) -> str | None:
        """The text of a single TXT record (its strings joined); None for none or several."""
        if len(self.records) != 1:
            return None
        return b"".join(self.records[0]).decode("utf-8", "backslashreplace")


def parse(records: Sequence[Sequence[bytes]]) -> Lease:
    """What a lease record says. Never raises: a malformed one gets a ``problem``."""
    # Sorted: a server may rotate the records of an RRset from one answer to the next.
    recs = tuple(sorted(tuple(bytes(s) for s in r) for r in records))
    if not recs:
        return Lease()
    if len(recs) > 1:
        shown = ", ".join(_shown(b"".join(r)) for r in recs[:3])
        return Lease(recs, problem=f"{len(recs)} TXT records at the lease name instead of one ({shown})")
    raw = b"".join(recs[0])
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        return Lease(recs, problem=f"not ASCII text: {_shown(raw)}")
    fields: dict[str, str] = {}
    for token in text.split():
        key, eq, value = token.partition("=")
        if not eq:
            return Lease(recs, problem=f"not holder=NAME expires=SECONDS: {_shown(raw)}")
        if key in fields:
            return Lease(recs, problem=f"{key}= given twice: {_shown(raw)}")
        fields[key] = value
    holder = fields.get("holder") or None
    if holder is None:
        return Lease(recs, problem=f"no holder=: {_shown(raw)}")
    if not holder.isprintable() or len(holder) > SHOWN:
        # Shown on terminals and pages: no control characters, nothing huge.
        return Lease(recs, problem=f"holder= is not a printable name: {_shown(raw)}")
    if "expires" not in fields:
        return Lease(recs, holder=holder, problem=f"no expires=: {_shown(raw)}")
    try:
        expires = float(fields["expires"])
    except ValueError:
        expires = math.nan
    if not math.isfinite(expires) or expires < 0:
        return Lease(recs, holder=holder, problem=f"expires= is not a time in seconds: {_shown(raw)}")
    return Lease(recs, holder=holder, expires=expires)


@dataclass(frozen=True)
class LeaseDecision:
    """What to do with the lease (one of the actions above), why, and whether my name is used by another."""

    action: str
    reason: str
    conflict: bool = False


def decide_lease(lease: Lease, me: str, now: float, lease_time: float, *, mine: frozenset[str] = frozenset(),
                 trust_name: bool = True, adopt: bool = False, unreadable_for: float = 0.0,
                 silent_for: float | None = None, silence: float | None = None) -> LeaseDecision:
    """The lease's next step for balancer ``me`` at ``now`` (Unix time).

    ``mine`` are the record texts this process wrote that may be current.
    ``trust_name``: a record naming ``me`` that this process did not write
    is claimed as mine (renewed at once, so that the record becomes one this
    process wrote); that is a restart. Once this process has written a lease,
    such a record was written by another balancer using the same name and
    counts as another's. ``adopt`` (``--once``, where every run is a new
    process) holds such a record as it is, renewing it only when due.
    ``unreadable_for`` is how long an unreadable record has stayed the same.
    ``silent_for`` is how long the holder's heartbeats have stopped (None:
    not heard since it became the holder, or no peers): at ``silence`` or
    more, its valid lease is taken over (the compare-and-set on the record
    as read fences it if it is only cut off, not gone).
    """
    if lease.absent:
        return LeaseDecision(ACQUIRE, "the lease is free")
    if lease.problem is not None:
        if unreadable_for >= lease_time:
            return LeaseDecision(TAKEOVER, f"unreadable lease record unchanged for {unreadable_for:.0f} s "
                                           f"({lease.problem}): taking it over")
        return LeaseDecision(STANDBY, f"unreadable lease record ({lease.problem}): counted as held by an unknown "
                                      f"balancer until it stays unchanged for {lease_time:g} s")
    assert lease.expires is not None
    left = lease.expires - now
    named = lease.holder == me
    if lease.text in mine or (named and trust_name and adopt):
        if left < lease_time / 2:
            return LeaseDecision(RENEW, f"renewing our lease ({max(left, 0):.0f} s left)")
        return LeaseDecision(HOLD, f"our lease, {left:.0f} s left")
    if named and trust_name:
        return LeaseDecision(RENEW, "the lease names this balancer (written before this process started): "
                                    "renewing it")
    if left <= 0:
        return LeaseDecision(TAKEOVER, f"the lease of {lease.holder} expired {-left:.0f} s ago", named)
    if not named and silence is not None and silent_for is not None and silent_for >= silence:
        return LeaseDecision(TAKEOVER, f"no heartbeat from {lease.holder} for {silent_for:.1f} s "
                                       f"(its lease had {left:.0f} s left)")
    if named:
        return LeaseDecision(STANDBY, f"the lease names this balancer ({me}) but another process wrote it: "
                                      "two balancers use the same lease-holder; give each its own", True)
    return LeaseDecision(STANDBY, f"held by {lease.holder} for {left:.0f} s more")


# -- update messages ------------------------------------------------------

def _txt(strings: Sequence[bytes]) -> dns.rdtypes.ANY.TXT.TXT:
    return dns.rdtypes.ANY.TXT.TXT(dns.rdataclass.IN, dns.rdatatype.TXT, tuple(strings))


def _our_txt(text: str) -> dns.rdtypes.ANY.TXT.TXT:
    return _txt((text.encode("ascii"),))


def build_take(zone: str, name: str, key: TsigKey, lease: Lease, text: str, ttl: int) -> dns.update.UpdateMessage:
    """The compare-and-set that makes ``text`` the lease: from nothing, or from exactly ``lease``'s records."""
    owner = alias_name(name, zone)
    upd = new_update(zone, key)
    if lease.absent:
        upd.absent(owner, dns.rdatatype.TXT)
    else:
        upd.present(owner, *(_txt(r) for r in lease.records))
        upd.delete(owner, dns.rdatatype.TXT)
    upd.add(owner, ttl, _our_txt(text))
    return upd


def build_release(zone: str, name: str, key: TsigKey, text: str) -> dns.update.UpdateMessage:
    """Delete the lease while it is still exactly ``text`` (ours)."""
    owner = alias_name(name, zone)
    upd = new_update(zone, key)
    upd.present(owner, _our_txt(text))
    upd.delete(owner, dns.rdatatype.TXT)
    return upd


def fence(zone: str, name: str, text: str) -> Fence:
    """The prerequisite "the lease is exactly ``text``", to add to an alias update."""
    owner: dns.name.Name = alias_name(name, zone)

    def add(upd: dns.update.UpdateMessage) -> None:
        upd.present(owner, _our_txt(text))

    return add


def read_lease(dns_cfg: Dns, name: str) -> Lease:
    """The lease record as the server holds it; raise :class:`DnsError`."""
    rdatas = query_records(dns_cfg.server, dns_cfg.port, dns_cfg.zone, name, "TXT", dns_cfg.timeout)
    return parse([r.strings for r in rdatas])


# -- one balancer's lease, cycle after cycle --------------------------------

@dataclass(frozen=True)
class LeaseStatus:
    """The lease as this balancer last saw it, and what that makes this balancer.

    ``role`` is ``writer`` (publish; ``fence_text`` is the record held, None
    when the server refused the lease and publishing goes on without it),
    ``standby`` (another holds it) or ``unknown`` (the lease could not be
    read or written: do not publish). ``alert`` marks a ``problem`` that the
    admin must fix (mailed), as opposed to a passing one.
    """

    name: str
    me: str
    role: str
    holder: str | None = None
    expires: float | None = None
    problem: str | None = None
    fence_text: str | None = None
    alert: bool = False

    def to_dict(self) -> dict:
        """A JSON-ready dict (the alias reports' ``lease``)."""
        return {"name": self.name, "holder": self.holder, "expires": self.expires, "me": self.me,
                "role": self.role, "problem": self.problem}


class LeaseKeeper:
    """Reads, takes, renews and releases one balancer's lease; one cycle at a time (not thread-safe)."""

    def __init__(self, settings: LeaseSettings, *, once: bool = False,
                 heard: Callable[[str], float | None] | None = None, mono: Callable[[], float] = time.monotonic
                 ) -> None:
        self.settings = settings
        self.heard = heard
        """``heard(holder)``: when (``mono`` time) a peer last said it is that lease-holder; None: never."""
        self._mono = mono
        self._holder_since: tuple[str, float] | None = None  # the other holder read, since when (mono)
        self.once = once
        """One run of ``--once``: a valid record naming this balancer is held as it is (see decide_lease)."""
        self._mine: frozenset[str] = frozenset()
        self._written = False
        self._unreadable: tuple[tuple, float] | None = None
        self.status: LeaseStatus | None = None

    def _fqdn(self, dns_cfg: Dns) -> str:
        return display_name(self.settings.name, dns_cfg.zone)

    def _set(self, status: LeaseStatus) -> LeaseStatus:
        old = self.status
        if old is None or (old.role, old.holder) != (status.role, status.holder):
            level = logging.INFO if status.role != UNKNOWN else logging.WARNING
            if status.role == WRITER:
                what = "this balancer writes the aliases" + ("" if status.fence_text else " (without a lease)")
            elif status.role == STANDBY_ROLE:
                what = f"standing by, the lease is held by {status.holder or 'an unknown balancer'}"
            else:
                what = "not publishing"
            log.log(level, "DNS lease %s (%s): %s%s", status.name, status.me, what,
                    f": {status.problem}" if status.problem else "")
        self.status = status
        return status

    def read(self, dns_cfg: Dns) -> Lease:
        """The lease record as the server holds it now; raise :class:`DnsError`."""
        return read_lease(dns_cfg, self.settings.name)

    def _silent_for(self, lease: Lease) -> float | None:
        """How long the holder's heartbeats have stopped, counted only once heard while it held the lease."""
        holder = lease.holder if lease.problem is None else None
        if holder is None or holder == self.settings.holder or self.heard is None:
            self._holder_since = None
            return None
        now = self._mono()
        if self._holder_since is None or self._holder_since[0] != holder:
            self._holder_since = (holder, now)
        last = self.heard(holder)
        # A holder never heard since it took the lease may be cut off from us, not gone (the other side of
        # a partition, or the balancer that took the lease from us): only its expiry ends its lease.
        if last is None or last < self._holder_since[1]:
            return None
        return now - last

    def cycle(self, dns_cfg: Dns, key: TsigKey | None, key_error: str | None, now: float | None = None,
              lease: Lease | DnsError | None = None) -> LeaseStatus:
        """Read the lease (unless ``lease`` gives it as read this cycle) and take, renew or leave it.

        Returns what this balancer is this cycle.
        """
        now = time.time() if now is None else now
        s = self.settings
        fq = self._fqdn(dns_cfg)
        base = dict(name=fq, me=s.holder)
        try:
            if isinstance(lease, DnsError):
                raise lease
            if lease is None:
                lease = read_lease(dns_cfg, s.name)
        except DnsError as exc:
            return self._set(LeaseStatus(role=UNKNOWN, problem=f"cannot read the lease {fq}: {exc}", **base))
        if lease.problem is not None:
            if self._unreadable is None or self._unreadable[0] != lease.records:
                self._unreadable = (lease.records, now)
            unreadable_for = now - self._unreadable[1]
        else:
            self._unreadable, unreadable_for = None, 0.0
        d = decide_lease(lease, s.holder, now, s.time, mine=self._mine, trust_name=not self._written,
                         adopt=self.once, unreadable_for=unreadable_for, silent_for=self._silent_for(lease),
                         silence=s.silence)
        seen = dict(holder=lease.holder, expires=lease.expires, **base)
        if d.action == HOLD:
            self._mine = frozenset({lease.text})
            return self._set(LeaseStatus(role=WRITER, fence_text=lease.text, **seen))
        if d.action == STANDBY:
            problem = d.reason if (lease.problem or d.conflict) else None
            return self._set(LeaseStatus(role=STANDBY_ROLE, problem=problem, alert=problem is not None, **seen))
        if key is None:
            return self._set(LeaseStatus(role=UNKNOWN, problem=f"cannot write the lease {fq}: {key_error}", **seen))
        expires = float(math.ceil(now + s.time))
        if lease_text(s.holder, expires) == lease.text:
            expires += 1  # always a new record: another process with the same name then tells it is not its own
        text = lease_text(s.holder, expires)
        try:
            send_update(build_take(dns_cfg.zone, s.name, key, lease, text, dns_cfg.ttl), dns_cfg.server,
                        dns_cfg.port, dns_cfg.zone, dns_cfg.timeout, key)
        except DnsError as exc:
            if exc.code in LOST:
                self._mine = frozenset()
                return self._set(self._after_loss(dns_cfg, fq))
            if exc.code == "REFUSED":
                return self._set(LeaseStatus(
                    role=WRITER, alert=True,
                    problem=f"the server refused the lease update ({exc}): publishing without a lease, so two "
                            f"balancers with the same aliases would both write; allow key "
                            f"{key.name!r} to update TXT records at {fq}, or set <dns lease=\"\">", **base))
            # The update may or may not have been applied: either record may be ours next cycle.
            self._mine = self._mine | {text}
            return self._set(LeaseStatus(role=UNKNOWN, problem=f"cannot write the lease {fq}: {exc}", **seen))
        self._mine, self._written = frozenset({text}), True
        if d.action != RENEW:
            log.info("DNS lease %s: %s (%s)", fq, d.action, d.reason)
        return self._set(LeaseStatus(role=WRITER, holder=s.holder, expires=expires, fence_text=text, **base))

    def _after_loss(self, dns_cfg: Dns, fq: str) -> LeaseStatus:
        """Standby after a refused prerequisite; the record is read again to say who holds it."""
        base = dict(name=fq, me=self.settings.holder, role=STANDBY_ROLE)
        try:
            lease = read_lease(dns_cfg, self.settings.name)
        except DnsError:
            return LeaseStatus(**base)
        return LeaseStatus(holder=lease.holder, expires=lease.expires, **base)

    def lost(self, dns_cfg: Dns) -> LeaseStatus:
        """An alias update fenced with our lease was refused: another balancer holds it now. Stand by."""
        self._mine = frozenset()
        fq = self._fqdn(dns_cfg)
        log.warning("DNS lease %s: the server refused an alias update of %s because the lease changed "
                    "(another balancer took over): standing by", fq, self.settings.holder)
        return self._set(self._after_loss(dns_cfg, fq))

    def release(self, dns_cfg: Dns, key: TsigKey | None) -> bool:
        """Give the lease back if this balancer holds it (a clean stop); True when it was deleted."""
        status = self.status
        if status is None or status.role != WRITER or not status.fence_text or key is None:
            return False
        fq = self._fqdn(dns_cfg)
        try:
            send_update(build_release(dns_cfg.zone, self.settings.name, key, status.fence_text), dns_cfg.server,
                        dns_cfg.port, dns_cfg.zone, dns_cfg.timeout, key)
        except DnsError as exc:
            if exc.code in LOST:  # not ours any more: nothing to give back
                self._mine = frozenset()
                self.status = LeaseStatus(name=fq, me=self.settings.holder, role=STANDBY_ROLE)
                return False
            # Still ours as far as we know (tried again if asked again); otherwise it ends at its expiry.
            log.warning("DNS lease %s: not released (%s); it ends by itself at its expiry", fq, exc)
            return False
        self._mine = frozenset()
        self.status = LeaseStatus(name=fq, me=self.settings.holder, role=STANDBY_ROLE)
        log.info("DNS lease %s released by %s", fq, self.settings.holder)
        return True

    def fence(self, dns_cfg: Dns) -> Fence | None:
        """The prerequisite for alias updates this cycle (None: no lease held, publish without it)."""
        status = self.status
        if status is None or status.fence_text is None:
            return None
        return fence(dns_cfg.zone, self.settings.name, status.fence_text)


__all__ = ["ACQUIRE", "DEFAULT_LEASE_TIME", "HOLD", "LOST", "Lease", "LeaseDecision", "LeaseKeeper", "LeaseSettings",
           "LeaseStatus", "RENEW", "STANDBY", "STANDBY_ROLE", "TAKEOVER", "UNKNOWN", "WRITER", "build_release",
           "build_take", "decide_lease", "fence", "lease_settings", "lease_text", "parse", "read_lease"]
