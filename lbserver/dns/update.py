"""Reading and replacing an alias's A/AAAA records (RFC 2136 dynamic update).

:func:`query_current` asks the configured server directly (TCP, so large
RRsets and a stopped server are both handled promptly) what it holds for the
alias; :func:`build_update` makes one TSIG-signed update message that deletes
and re-adds both RRsets, which the server applies atomically (all or
nothing), optionally with prerequisites (a ``fence``: the DNS lease as this
balancer holds it, :mod:`lbserver.dns.lease`); :func:`send_update` sends it;
:func:`query_records` reads any record type of a name, with the same
rules. Every failure is raised as
:class:`DnsError` with a short code (``timeout``, ``unreachable``,
``REFUSED``, ``NOTAUTH``, ``BADSIG``, ``BADKEY``, ``CNAME``,
``not-authoritative``, ``not-applied``, ...) and a sentence an admin can act
on. Messages never contain the key's secret.

Answers without the AA flag are refused: only the zone's authoritative data
tells whether an update is needed (a cache may hold an old set). After an
update the records are read back: a server may answer NOERROR and still
ignore parts of an update (RFC 2136 3.4.2.2: address records beside a
CNAME).

A cycle sends all its messages over one TCP connection (:func:`channel`),
and reads the aliases' records with pipelined queries (:func:`query_many`):
with a thousand aliases a cycle costs a few round trips, not a thousand
handshakes. Used from the DNS arbiter's worker thread only.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import ipaddress
import socket
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from typing import TypeVar
from dataclasses import dataclass

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdata
import dns.rdatatype
import dns.rrset
import dns.tsig
import dns.update

from lbserver.config.tsigkey import TsigKey


@dataclass(frozen=True)
class RRsets:
    """The A and AAAA addresses of one name, and their TTLs.

    ``ttl`` is the TTL of both families (a wanted set); records read from a
    server carry each family's own TTL in ``a_ttl`` and ``aaaa_ttl``, which
    take precedence. A TTL is None when unknown (no records).
    """

    a: frozenset[str] = frozenset()
    aaaa: frozenset[str] = frozenset()
    ttl: int | None = None
    a_ttl: int | None = None
    aaaa_ttl: int | None = None

    @property
    def addresses(self) -> tuple[str, ...]:
        """All addresses, IPv4 first, each family sorted numerically."""
        return sort_addresses(self.a | self.aaaa)

    def ttl_of(self, family: str) -> int | None:
        """The TTL of the ``"A"`` or ``"AAAA"`` RRset."""
        own = self.a_ttl if family == "A" else self.aaaa_ttl
        return own if own is not None else self.ttl


@functools.lru_cache(maxsize=65536)
def _address_key(addr: str) -> tuple[int, int]:
    ip = ipaddress.ip_address(addr)
    return ip.version, int(ip)


def sort_addresses(addrs: Iterable[str]) -> tuple[str, ...]:
    """Addresses sorted IPv4 first, then numerically."""
    return tuple(sorted(set(addrs), key=_address_key))


def split_families(addrs: Iterable[str]) -> tuple[frozenset[str], frozenset[str]]:
    """(IPv4 addresses, IPv6 addresses), normalised (``2001:DB8::0001`` -> ``2001:db8::1``)."""
    v4, v6 = set(), set()
    for a in addrs:
        ip = ipaddress.ip_address(a)
        (v4 if ip.version == 4 else v6).add(str(ip))
    return frozenset(v4), frozenset(v6)


def differences(current: RRsets, wanted: RRsets) -> list[str]:
    """How the server's records differ from the wanted ones, one phrase per RRset (empty: identical).

    Each family is compared on its own: addresses, then (when it holds any) its TTL.
    """
    out: list[str] = []
    for family, have, want in (("A", current.a, wanted.a), ("AAAA", current.aaaa, wanted.aaaa)):
        if have != want:
            out.append(f"{family} holds {', '.join(sort_addresses(have)) or 'nothing'} "
                       f"instead of {', '.join(sort_addresses(want)) or 'nothing'}")
        elif have and current.ttl_of(family) != wanted.ttl_of(family):
            out.append(f"{family} TTL is {current.ttl_of(family)} instead of {wanted.ttl_of(family)}")
    return out


def needs_update(current: RRsets, wanted: RRsets) -> bool:
    """Whether the server's records differ from the wanted ones (addresses or a family's TTL)."""
    return bool(differences(current, wanted))


class DnsError(Exception):
    """A failed DNS exchange: ``code`` (short, e.g. ``BADSIG``) and ``detail`` (what to check)."""

    def __init__(self, code: str, detail: str) -> None:
        self.code = code
        self.detail = detail
        super().__init__(f"{code}: {detail}")


def alias_name(alias: str, zone: str) -> dns.name.Name:
    """The alias's absolute name: relative names are under ``zone``; ValueError when outside it."""
    origin = dns.name.from_text(zone)
    try:
        name = dns.name.from_text(alias, origin=origin)
    except dns.exception.DNSException as exc:
        raise ValueError(f"{alias!r} is not a valid DNS name ({exc})") from None
    if not name.is_subdomain(origin):
        raise ValueError(f"{alias!r} is not inside zone {zone!r}")
    return name


def display_name(alias: str, zone: str) -> str:
    """The alias's full name for reports, without the final dot (as written when it is no valid name)."""
    try:
        return alias_name(alias, zone).to_text(omit_final_dot=True)
    except ValueError:
        return f"{alias}.{zone}"


def _rcode_error(rcode: int, zone: str, key: TsigKey | None) -> DnsError:
    text = dns.rcode.to_text(rcode)
    keyname = f"key {key.name!r}" if key else "the key"
    hints = {
        "REFUSED": f"the server refused the update: check that zone {zone!r} allows updates "
                   f"(allow-update / update-policy) with {keyname}",
        "NOTAUTH": f"the server is not authoritative for zone {zone!r} or did not accept {keyname}",
        "NOTZONE": f"the alias is not inside zone {zone!r} as the server knows it",
        "SERVFAIL": "the server failed to apply the update (see its log)",
        "FORMERR": "the server could not parse the message",
        "NOTIMP": "the server does not implement dynamic update",
        "YXRRSET": "a prerequisite failed: an RRset the update required to be absent exists",
        "NXRRSET": "a prerequisite failed: an RRset the update required does not exist or holds other records",
    }
    return DnsError(text, hints.get(text, f"the server answered {text}"))


def classify_error(exc: BaseException, server: str, port: int, timeout: float, key: TsigKey | None) -> DnsError:
    """``exc``, raised while talking to ``server``, as a named :class:`DnsError` with the admin's hint."""
    keyname = key.name if key else "?"
    if isinstance(exc, DnsError):
        return exc
    if isinstance(exc, dns.tsig.PeerBadKey):
        return DnsError("BADKEY", f"the server does not know key {keyname!r} with algorithm "
                                  f"{key.algorithm if key else '?'}")
    if isinstance(exc, dns.tsig.PeerBadSignature):
        return DnsError("BADSIG", f"the server rejected the signature of key {keyname!r}: "
                                  "the secret differs from the server's")
    if isinstance(exc, dns.tsig.PeerBadTime):
        return DnsError("BADTIME", "the server rejected the signature's time: check both clocks (NTP)")
    if isinstance(exc, dns.tsig.PeerError):
        return DnsError("TSIG", f"the server rejected the signature of key {keyname!r} ({exc})")
    if isinstance(exc, (dns.message.UnknownTSIGKey, dns.tsig.BadSignature, dns.message.BadTSIG)):
        return DnsError("TSIG", f"the server's answer is not signed with key {keyname!r} ({type(exc).__name__})")
    if isinstance(exc, dns.exception.Timeout):
        return DnsError("timeout", f"no answer from {server} port {port} within {timeout:g} s")
    if isinstance(exc, ConnectionRefusedError):
        return DnsError("unreachable", f"connection to {server} port {port} refused (is the DNS server running?)")
    if isinstance(exc, socket.gaierror):
        return DnsError("unreachable", f"cannot resolve DNS server name {server!r}: {exc.strerror or exc}")
    if isinstance(exc, (EOFError, ConnectionError)):
        return DnsError("unreachable", f"{server} port {port} closed the connection")
    if isinstance(exc, OSError):
        return DnsError("unreachable", f"{server} port {port}: {exc.strerror or exc}")
    if isinstance(exc, dns.exception.DNSException):
        return DnsError("error", f"bad answer from {server} port {port}: {type(exc).__name__}: {exc}")
    return DnsError("error", f"{type(exc).__name__}: {exc}")


def server_address(server: str) -> str:
    """dnspython needs an IP: resolve a server host name (TCP semantics, first address)."""
    try:
        ipaddress.ip_address(server)
        return server
    except ValueError:
        return socket.getaddrinfo(server, None, type=socket.SOCK_STREAM)[0][4][0]


T = TypeVar("T")


class Channel:
    """One TCP connection to the DNS server, reused by every query and update of a cycle.

    Opening a connection per message would cost a handshake each, twice per
    alias and cycle; with a thousand aliases the cycle would be all
    handshakes. A message sent on a connection the server has meanwhile
    closed is sent once more on a new one (queries and these replace-style
    updates are idempotent). Used through :func:`channel`, by one thread.
    """

    def __init__(self, server: str, port: int, timeout: float) -> None:
        self.server, self.port, self.timeout = server, port, timeout
        self.where = ""  # the server's address, looked up on connecting (a failure is the message's error)
        self._sock: socket.socket | None = None
        self.queries = 0
        """Queries sent (updates not counted), for the figures of the cycle."""

    def exchange(self, msg: dns.message.Message) -> dns.message.Message:
        """Send ``msg`` and read its answer, on the open connection when there is one."""
        if msg.opcode() == dns.opcode.QUERY:
            self.queries += 1
        return self._retrying(lambda: dns.query.tcp(msg, self.where, timeout=self.timeout, port=self.port,
                                                    sock=self._sock))

    def exchange_many(self, msgs: list[dns.message.Message], window: int = 64) -> list[dns.message.Message]:
        """Answers to ``msgs``, in order, sending ``window`` of them before reading their answers.

        DNS over TCP allows pipelining (RFC 7766): with a thousand aliases
        the cycle then costs a few round trips instead of a thousand. The
        answers may come in any order; they are matched by message id.
        """
        out: list[dns.message.Message] = []
        self.queries += sum(1 for m in msgs if m.opcode() == dns.opcode.QUERY)
        for start in range(0, len(msgs), window):
            batch = msgs[start:start + window]
            out.extend(self._retrying(lambda: self._pipelined(batch)))
        return out

    def _retrying(self, send: Callable[[], T]) -> T:
        """``send()`` on the connection; once more on a new one when the server had closed it."""
        for attempt in (1, 2):
            self._connect()
            try:
                return send()
            except (EOFError, ConnectionError):
                self.close()
                if attempt == 2:
                    raise
            except Exception:
                self.close()
                raise
        raise AssertionError("unreachable")

    def _connect(self) -> None:
        if self._sock is None:
            self.where = server_address(self.server)
            family = socket.AF_INET6 if ":" in self.where else socket.AF_INET
            self._sock = socket.socket(family, socket.SOCK_STREAM)
            self._sock.settimeout(self.timeout)
            try:
                self._sock.connect((self.where, self.port))
            except OSError:
                self.close()
                raise

    def _pipelined(self, batch: list[dns.message.Message]) -> list[dns.message.Message]:
        expiration = time.time() + self.timeout
        for i, msg in enumerate(batch):
            msg.id = i
            dns.query.send_tcp(self._sock, msg, expiration)
        answers: dict[int, dns.message.Message] = {}
        while len(answers) < len(batch):
            resp, _ = dns.query.receive_tcp(self._sock, expiration)
            if resp.id < len(batch) and batch[resp.id].is_response(resp):
                answers[resp.id] = resp
        return [answers[i] for i in range(len(batch))]

    def close(self) -> None:
        """Close the connection (the next message opens a new one)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None


_CHANNEL: contextvars.ContextVar[Channel | None] = contextvars.ContextVar("dns_channel", default=None)


@contextlib.contextmanager
def channel(server: str, port: int, timeout: float) -> Iterator[Channel]:
    """Within the block, every message of this module to ``server:port`` goes over one connection."""
    ch = Channel(server, port, timeout)
    token = _CHANNEL.set(ch)
    try:
        yield ch
    finally:
        _CHANNEL.reset(token)
        ch.close()


def _open_channel(server: str, port: int) -> Channel | None:
    """The :func:`channel` open for ``server:port`` in this context, if any."""
    ch = _CHANNEL.get()
    return ch if ch is not None and (ch.server, ch.port) == (server, port) else None


def tcp_query(msg: dns.message.Message, server: str, port: int, timeout: float) -> dns.message.Message:
    """Send ``msg`` over TCP and return the answer, on this thread's open channel to ``server`` when there is one."""
    ch = _open_channel(server, port)
    if ch is not None:
        return ch.exchange(msg)
    return dns.query.tcp(msg, server_address(server), timeout=timeout, port=port)


def _any_query(name: dns.name.Name) -> dns.message.Message:
    # One ANY query over TCP: the server answers every RRset at the name (minimal
    # ANY answers are a UDP measure), so A, AAAA and a CNAME come in one exchange.
    q = dns.message.make_query(name, dns.rdatatype.ANY)
    q.flags &= ~dns.flags.RD  # ask the authoritative data, never a recursion
    return q


def query_current(server: str, port: int, zone: str, alias: str, timeout: float) -> RRsets:
    """What the server holds for the alias now (empty sets when nothing); raise :class:`DnsError`."""
    try:
        name = alias_name(alias, zone)
    except ValueError as exc:
        raise DnsError("name", str(exc)) from None
    try:
        resp = tcp_query(_any_query(name), server, port, timeout)
    except Exception as exc:  # classified into one clear message
        raise classify_error(exc, server, port, timeout, None) from None
    return _rrsets(resp, name, server, port, zone, timeout)


def query_many(server: str, port: int, zone: str, aliases: Iterable[str], timeout: float
               ) -> dict[str, RRsets | DnsError]:
    """:func:`query_current` for many aliases at once, pipelined on one connection; errors are returned."""
    out: dict[str, RRsets | DnsError] = {}
    names: dict[str, dns.name.Name] = {}
    for alias in aliases:
        try:
            names[alias] = alias_name(alias, zone)
        except ValueError as exc:
            out[alias] = DnsError("name", str(exc))
    if not names:
        return out
    ch = _open_channel(server, port)
    own = ch is None
    if own:
        ch = Channel(server, port, timeout)
    try:
        answers = ch.exchange_many([_any_query(n) for n in names.values()])
    except Exception as exc:  # the whole batch failed: every alias says why
        err = classify_error(exc, server, port, timeout, None)
        return {**out, **{alias: err for alias in names}}
    finally:
        if own:
            ch.close()
    for (alias, name), resp in zip(names.items(), answers):
        try:
            out[alias] = _rrsets(resp, name, server, port, zone, timeout)
        except DnsError as exc:
            out[alias] = exc
    return out


def _rrsets(resp: dns.message.Message, name: dns.name.Name, server: str, port: int, zone: str,
            timeout: float) -> RRsets:
    """The alias's A and AAAA records in an answer to its ANY query; raise :class:`DnsError`."""
    found: dict[int, set[str]] = {dns.rdatatype.A: set(), dns.rdatatype.AAAA: set()}
    ttls: dict[int, int] = {}
    try:
        for rrset in _checked_answer(resp, name, found.keys(), server, port, zone, addresses=True):
            found[rrset.rdtype].update(str(ipaddress.ip_address(r.address)) for r in rrset)
            ttls[rrset.rdtype] = rrset.ttl
    except Exception as exc:  # classified into one clear message
        raise classify_error(exc, server, port, timeout, None) from None
    return RRsets(a=frozenset(found[dns.rdatatype.A]), aaaa=frozenset(found[dns.rdatatype.AAAA]),
                  a_ttl=ttls.get(dns.rdatatype.A), aaaa_ttl=ttls.get(dns.rdatatype.AAAA))


def _checked_answer(resp: dns.message.Message, name: dns.name.Name, rdtypes: Collection[int], server: str,
                    port: int, zone: str, *, addresses: bool) -> list[dns.rrset.RRset]:
    """The RRsets of ``name`` with a type in ``rdtypes`` in the answer to a query for it; raise :class:`DnsError`.

    The answer must be NOERROR or NXDOMAIN, carry the AA flag, and hold no
    CNAME at ``name``. ``addresses`` (a query for an alias's A and AAAA
    records) makes the messages more specific: what a REFUSED answer
    suggests, that a non-authoritative server may be a cache, and why a
    CNAME is in the way of address records.
    """
    rcode = resp.rcode()
    if rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
        if addresses and rcode == dns.rcode.REFUSED:
            raise DnsError("REFUSED", f"the server refused to answer for zone {zone!r}: "
                                      "is it authoritative and does it allow queries from here?")
        raise DnsError(dns.rcode.to_text(rcode), f"query for {name} answered {dns.rcode.to_text(rcode)}")
    if not resp.flags & dns.flags.AA:
        cache = " (a cache or resolver?)" if addresses else ""
        raise DnsError("not-authoritative",
                       f"{server} port {port} answered for {name} without the authoritative (AA) flag: "
                       f"it does not serve zone {zone!r} itself{cache}; set <dns> server to the zone's primary server")
    found: list[dns.rrset.RRset] = []
    # A CNAME to a missing in-zone name answers NXDOMAIN: such an answer still holds the CNAME.
    for rrset in resp.answer:
        if rrset.name != name:
            continue
        if rrset.rdtype == dns.rdatatype.CNAME:
            beside = "address records cannot be added beside it (the server ignores them); " if addresses else ""
            raise DnsError("CNAME", f"{name} is a CNAME in the zone: {beside}remove the CNAME")
        if rrset.rdtype in rdtypes:
            found.append(rrset)
    return found


Fence = Callable[[dns.update.UpdateMessage], None]
"""Adds prerequisites to an update message (the DNS lease, :mod:`lbserver.dns.lease`)."""


def new_update(zone: str, key: TsigKey) -> dns.update.UpdateMessage:
    """An empty update message for ``zone``, to be signed with ``key``."""
    tkey = key.dns_key()
    return dns.update.UpdateMessage(zone, keyring={tkey.name: tkey}, keyname=tkey.name,
                                    keyalgorithm=tkey.algorithm)


def query_records(server: str, port: int, zone: str, name: str, rdtype: str,
                  timeout: float) -> tuple[dns.rdata.Rdata, ...]:
    """The ``rdtype`` records of ``name`` (relative to ``zone``) as the server holds them; raise :class:`DnsError`.

    The same rules as :func:`query_current`: TCP, no recursion, authoritative
    answers only, a CNAME at the name is an error.
    """
    try:
        qname = alias_name(name, zone)
    except ValueError as exc:
        raise DnsError("name", str(exc)) from None
    wanted = dns.rdatatype.from_text(rdtype)
    try:
        q = dns.message.make_query(qname, wanted)
        q.flags &= ~dns.flags.RD
        resp = tcp_query(q, server, port, timeout)
        found = [rdata for rrset in _checked_answer(resp, qname, (wanted,), server, port, zone, addresses=False)
                 for rdata in rrset]
    except Exception as exc:  # classified into one clear message
        raise classify_error(exc, server, port, timeout, None) from None
    return tuple(found)


def build_update(zone: str, alias: str, wanted: RRsets, key: TsigKey,
                 fence: Fence | None = None) -> dns.update.UpdateMessage:
    """One signed message replacing both RRsets (delete A, add A..., delete AAAA, add AAAA...).

    ``fence`` adds prerequisites (the DNS lease as this balancer holds it):
    the server then applies the whole message only while they hold.
    """
    return build_batch_update(zone, [(alias, wanted)], key, fence)


def build_batch_update(zone: str, changes: Iterable[tuple[str, RRsets]], key: TsigKey,
                       fence: Fence | None = None) -> dns.update.UpdateMessage:
    """One signed message replacing the RRsets of several aliases: applied all together or not at all."""
    upd = new_update(zone, key)
    if fence is not None:
        fence(upd)
    for alias, wanted in changes:
        try:
            name = alias_name(alias, zone)
        except ValueError as exc:
            raise DnsError("name", str(exc)) from None
        upd.delete(name, dns.rdatatype.A)
        for addr in sort_addresses(wanted.a):
            upd.add(name, wanted.ttl_of("A") or 60, dns.rdatatype.A, addr)
        upd.delete(name, dns.rdatatype.AAAA)
        for addr in sort_addresses(wanted.aaaa):
            upd.add(name, wanted.ttl_of("AAAA") or 60, dns.rdatatype.AAAA, addr)
    return upd


def send_update(msg: dns.update.UpdateMessage, server: str, port: int, zone: str,
                timeout: float, key: TsigKey) -> None:
    """Send an update over TCP and check the answer; raise :class:`DnsError` on any failure."""
    try:
        resp = tcp_query(msg, server, port, timeout)
    except Exception as exc:  # classified into one clear message
        raise classify_error(exc, server, port, timeout, key) from None
    if resp.rcode() != dns.rcode.NOERROR:
        raise _rcode_error(resp.rcode(), zone, key)


def replace_rrsets(server: str, port: int, zone: str, alias: str, wanted: RRsets,
                   key: TsigKey, timeout: float, fence: Fence | None = None) -> None:
    """Replace the alias's records with ``wanted``, then read them back.

    Raises :class:`DnsError` when the update fails (``YXRRSET`` or
    ``NXRRSET`` when a prerequisite added by ``fence`` does not hold), or when
    the server answered NOERROR but does not hold what was sent (code
    ``not-applied``, or the read-back's own code such as ``CNAME``).
    """
    send_update(build_update(zone, alias, wanted, key, fence), server, port, zone, timeout, key)
    try:
        now = query_current(server, port, zone, alias, timeout)
    except DnsError as exc:
        now = exc
    _check_applied(now, wanted)


def replace_many(server: str, port: int, zone: str, changes: Mapping[str, RRsets], key: TsigKey, timeout: float,
                 fence: Fence | None = None) -> dict[str, DnsError | None]:
    """Replace several aliases' records in one update message, then read them all back (pipelined).

    Raises :class:`DnsError` when the update itself fails (nothing was
    applied); otherwise returns, per alias, None when the server holds what
    was sent, or the :class:`DnsError` its read-back gives.
    """
    send_update(build_batch_update(zone, changes.items(), key, fence), server, port, zone, timeout, key)
    out: dict[str, DnsError | None] = {}
    for alias, now in query_many(server, port, zone, changes, timeout).items():
        try:
            _check_applied(now, changes[alias])
            out[alias] = None
        except DnsError as exc:
            out[alias] = exc
    return out


def _check_applied(now: RRsets | DnsError, wanted: RRsets) -> None:
    if isinstance(now, DnsError):
        raise DnsError(now.code, f"the server answered the update with NOERROR, but reading the records back "
                                 f"failed: {now.detail}")
    diff = differences(now, wanted)
    if diff:
        raise DnsError("not-applied", f"the server answered the update with NOERROR but did not apply it: "
                                      f"{'; '.join(diff)} (see the server's log)")
