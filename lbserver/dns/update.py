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
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdata
import dns.rdatatype
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


def sort_addresses(addrs: Iterable[str]) -> tuple[str, ...]:
    """Addresses sorted IPv4 first, then numerically."""
    return tuple(sorted(set(addrs), key=lambda a: (ipaddress.ip_address(a).version, ipaddress.ip_address(a))))


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


def _classify(exc: BaseException, server: str, port: int, timeout: float, key: TsigKey | None) -> DnsError:
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


def _server_address(server: str) -> str:
    """dnspython needs an IP: resolve a server host name (TCP semantics, first address)."""
    try:
        ipaddress.ip_address(server)
        return server
    except ValueError:
        return socket.getaddrinfo(server, None, type=socket.SOCK_STREAM)[0][4][0]


def query_current(server: str, port: int, zone: str, alias: str, timeout: float) -> RRsets:
    """What the server holds for the alias now (empty sets when nothing); raise :class:`DnsError`."""
    try:
        name = alias_name(alias, zone)
    except ValueError as exc:
        raise DnsError("name", str(exc)) from None
    found: dict[int, set[str]] = {dns.rdatatype.A: set(), dns.rdatatype.AAAA: set()}
    ttls: dict[int, int] = {}
    try:
        where = _server_address(server)
        for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            q = dns.message.make_query(name, rdtype)
            q.flags &= ~dns.flags.RD  # ask the authoritative data, never a recursion
            resp = dns.query.tcp(q, where, timeout=timeout, port=port)
            rcode = resp.rcode()
            if rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
                if rcode == dns.rcode.REFUSED:
                    raise DnsError("REFUSED", f"the server refused to answer for zone {zone!r}: "
                                              "is it authoritative and does it allow queries from here?")
                raise DnsError(dns.rcode.to_text(rcode), f"query for {name} answered {dns.rcode.to_text(rcode)}")
            if not resp.flags & dns.flags.AA:
                raise DnsError("not-authoritative",
                               f"{server} port {port} answered for {name} without the authoritative (AA) flag: "
                               f"it does not serve zone {zone!r} itself (a cache or resolver?); set <dns> server "
                               "to the zone's primary server")
            # Before the NXDOMAIN shortcut: a CNAME to a missing in-zone name answers NXDOMAIN.
            for rrset in resp.answer:
                if rrset.rdtype == dns.rdatatype.CNAME and rrset.name == name:
                    raise DnsError("CNAME", f"{name} is a CNAME in the zone: address records cannot be "
                                            "added beside it (the server ignores them); remove the CNAME")
            if rcode == dns.rcode.NXDOMAIN:
                continue
            for rrset in resp.answer:
                if rrset.rdtype == rdtype and rrset.name == name:
                    found[rdtype].update(str(ipaddress.ip_address(r.address)) for r in rrset)
                    ttls[rdtype] = rrset.ttl
    except Exception as exc:  # classified into one clear message
        raise _classify(exc, server, port, timeout, None) from None
    return RRsets(a=frozenset(found[dns.rdatatype.A]), aaaa=frozenset(found[dns.rdatatype.AAAA]),
                  a_ttl=ttls.get(dns.rdatatype.A), aaaa_ttl=ttls.get(dns.rdatatype.AAAA))


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
        resp = dns.query.tcp(q, _server_address(server), timeout=timeout, port=port)
        rcode = resp.rcode()
        if rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            raise DnsError(dns.rcode.to_text(rcode), f"query for {qname} answered {dns.rcode.to_text(rcode)}")
        if not resp.flags & dns.flags.AA:
            raise DnsError("not-authoritative",
                           f"{server} port {port} answered for {qname} without the authoritative (AA) flag: "
                           f"it does not serve zone {zone!r} itself; set <dns> server to the zone's primary server")
        found: list[dns.rdata.Rdata] = []
        for rrset in resp.answer:
            if rrset.rdtype == dns.rdatatype.CNAME and rrset.name == qname:
                raise DnsError("CNAME", f"{qname} is a CNAME in the zone: remove the CNAME")
            if rrset.rdtype == wanted and rrset.name == qname:
                found.extend(rrset)
    except Exception as exc:  # classified into one clear message
        raise _classify(exc, server, port, timeout, None) from None
    return tuple(found)


def build_update(zone: str, alias: str, wanted: RRsets, key: TsigKey,
                 fence: Fence | None = None) -> dns.update.UpdateMessage:
    """One signed message replacing both RRsets (delete A, add A..., delete AAAA, add AAAA...).

    ``fence`` adds prerequisites (the DNS lease as this balancer holds it):
    the server then applies the whole message only while they hold.
    """
    try:
        name = alias_name(alias, zone)
    except ValueError as exc:
        raise DnsError("name", str(exc)) from None
    upd = new_update(zone, key)
    if fence is not None:
        fence(upd)
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
        resp = dns.query.tcp(msg, _server_address(server), timeout=timeout, port=port)
    except Exception as exc:  # classified into one clear message
        raise _classify(exc, server, port, timeout, key) from None
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
        raise DnsError(exc.code, f"the server answered the update with NOERROR, but reading the records back "
                                 f"failed: {exc.detail}") from None
    diff = differences(now, wanted)
    if diff:
        raise DnsError("not-applied", f"the server answered the update with NOERROR but did not apply it: "
                                      f"{'; '.join(diff)} (see the server's log)")
