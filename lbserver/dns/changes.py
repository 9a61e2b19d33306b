"""What changed in the zone since the arbiter last read it: one SOA query, then IXFR, else a full read.

The arbiter keeps what it read of the zone (the lease record, each alias's
records) together with the zone's SOA serial at the time (:class:`ZoneCache`).
A cycle starts with one SOA query (:func:`soa_serial`):

* the serial is the one the cache holds: nothing in the zone changed, and
  nothing is read;
* it moved: :func:`changed_names` asks the server for the differences since
  the cached serial (IXFR, RFC 1995, signed with the TSIG key; BIND serves
  it from the zone's journal) and only the names it lists are read again;
* the server cannot say (no cached serial yet, the IXFR refused or not
  implemented, an AXFR-style answer without the differences, a malformed
  or truncated answer): every name is read, as before this module existed.
  Why is returned as :class:`NoDifferences`, and the arbiter says it once in
  its log, not at every cycle.

Names are read after the IXFR, so what is read is at least as new as the
serial the IXFR ended at: a change made meanwhile bumps the serial again and
is seen at the next cycle. The IXFR is only used to learn *which* names
changed; their records are still read with the ordinary authoritative
queries (:mod:`lbserver.dns.update`), with all their checks (AA flag, CNAME).

Used from the DNS arbiter's worker thread only.
"""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass, field

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype

from lbserver.config.tsigkey import TsigKey
from lbserver.dns.update import DnsError, RRsets, classify_error, server_address, tcp_query

MAX_RECORDS = 200_000
"""Records of one IXFR answer read at most; a longer history is not worth reading (a full read is cheaper)."""

FULL_READ_INTERVAL = 3600.0
"""Seconds after which every name is read again even when the serial did not move (a safety net for a
zone reloaded from its file with an unchanged serial)."""


class NoDifferences(Exception):
    """The server did not give the differences since a serial: every name must be read (``str``: why).

    ``normal``: the server chose to (an AXFR-style answer: BIND sends one when the differences would be larger
    than the zone, see its ``max-ixfr-ratio``, or when its journal does not reach back that far).
    """

    def __init__(self, why: str, normal: bool = False) -> None:
        super().__init__(why)
        self.normal = normal


def soa_serial(server: str, port: int, zone: str, timeout: float) -> int:
    """The zone's SOA serial, asked of ``server`` itself (authoritative answers only); raise :class:`DnsError`."""
    origin = dns.name.from_text(zone)
    q = dns.message.make_query(origin, dns.rdatatype.SOA)
    q.flags &= ~dns.flags.RD
    try:
        resp = tcp_query(q, server, port, timeout)
    except Exception as exc:  # classified into one clear message
        raise classify_error(exc, server, port, timeout, None) from None
    if resp.rcode() != dns.rcode.NOERROR:
        raise DnsError(dns.rcode.to_text(resp.rcode()), f"SOA query for {zone} answered "
                                                        f"{dns.rcode.to_text(resp.rcode())}")
    if not resp.flags & dns.flags.AA:
        raise DnsError("not-authoritative", f"{server} port {port} answered the SOA of {zone} without the AA flag")
    for rrset in resp.answer:
        if rrset.rdtype == dns.rdatatype.SOA and rrset.name == origin:
            return int(rrset[0].serial)
    raise DnsError("error", f"{server} port {port} answered no SOA record for {zone}")


def _read_exact(sock: socket.socket, n: int, expiration: float) -> bytes:
    buf = b""
    while len(buf) < n:
        left = expiration - time.monotonic()
        if left <= 0:
            raise dns.exception.Timeout
        sock.settimeout(left)
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError("the server closed the connection in the middle of the transfer")
        buf += chunk
    return buf


def _ixfr_query(zone: dns.name.Name, serial: int, key: TsigKey | None) -> dns.message.QueryMessage:
    q = dns.message.make_query(zone, dns.rdatatype.IXFR)
    q.flags &= ~dns.flags.RD
    soa = q.find_rrset(q.authority, zone, dns.rdataclass.IN, dns.rdatatype.SOA, create=True)
    soa.add(dns.rdata.from_text("IN", "SOA", f". . {serial} 0 0 0 0"), 0)
    if key is not None:
        tkey = key.dns_key()
        q.use_tsig({tkey.name: tkey}, keyname=tkey.name, algorithm=tkey.algorithm)
    return q


def changed_names(server: str, port: int, zone: str, serial: int, key: TsigKey | None,
                  timeout: float) -> tuple[set[dns.name.Name], int]:
    """The names changed since ``serial`` (IXFR) and the serial they lead to.

    Raises :class:`NoDifferences` when the server does not give them (then
    every name must be read). Its own TCP connection, closed as soon as the
    answer shows it is not the differences (an AXFR-style answer is never
    read to its end).
    """
    origin = dns.name.from_text(zone)
    q = _ixfr_query(origin, serial, key)
    expiration = time.monotonic() + timeout
    try:
        where = server_address(server)
        family = socket.AF_INET6 if ":" in where else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect((where, port))
            wire = q.to_wire()
            sock.sendall(struct.pack("!H", len(wire)) + wire)
            return _read_differences(sock, q, origin, serial, expiration)
    except NoDifferences:
        raise
    except Exception as exc:  # any failure of the transfer: read everything instead
        raise NoDifferences(f"the IXFR failed: {classify_error(exc, server, port, timeout, key)}") from None


def _read_differences(sock: socket.socket, q: dns.message.Message, origin: dns.name.Name, serial: int,
                      expiration: float) -> tuple[set[dns.name.Name], int]:
    """Read the IXFR answer: ``SOA(new) [SOA(old) deleted... SOA(next) added...]... SOA(new)``."""
    names: set[dns.name.Name] = set()
    tsig_ctx = None
    first = True
    new: int | None = None
    soas = 0          # SOA records after the first: even ones open a deletion part, odd ones an addition part
    seen = 0
    while True:
        (length,) = struct.unpack("!H", _read_exact(sock, 2, expiration))
        wire = _read_exact(sock, length, expiration)
        try:
            msg = dns.message.from_wire(wire, keyring=q.keyring, request_mac=q.mac, xfr=True, origin=None,
                                        tsig_ctx=tsig_ctx, multi=True, one_rr_per_rrset=True)
        except dns.exception.DNSException as exc:
            raise NoDifferences(f"malformed IXFR answer ({type(exc).__name__}: {exc})") from None
        tsig_ctx = msg.tsig_ctx
        if msg.rcode() != dns.rcode.NOERROR:
            raise NoDifferences(f"the server answered the IXFR {dns.rcode.to_text(msg.rcode())}")
        if first and msg.id != q.id:
            raise NoDifferences("the IXFR answer does not match the query")
        first = False
        for rrset in msg.answer:
            for rdata in rrset:
                seen += 1
                if seen > MAX_RECORDS:
                    raise NoDifferences(f"the differences hold more than {MAX_RECORDS} records")
                is_soa = rrset.rdtype == dns.rdatatype.SOA
                if new is None:
                    if not is_soa or rrset.name != origin:
                        raise NoDifferences("malformed IXFR answer (it does not start with the SOA)")
                    new = int(rdata.serial)
                    if new == serial:
                        return names, new  # nothing changed since
                    continue
                if seen == 2 and not (is_soa and int(rdata.serial) == serial):
                    raise NoDifferences("the server answered with the whole zone (AXFR-style), not the differences "
                                        "(they would be larger than the zone, or its journal does not reach back "
                                        "to the serial asked)", normal=True)
                if is_soa and rrset.name == origin:
                    if soas % 2 == 0 and int(rdata.serial) == new:
                        return names, new  # the closing SOA
                    soas += 1
                    continue
                names.add(rrset.name)
        if not msg.answer:
            raise NoDifferences("malformed IXFR answer (an empty message)")
        if seen == 1:
            # A lone SOA with another serial (RFC 1995 4: "do a full transfer"): waiting for more would only
            # wait for the timeout.
            raise NoDifferences("the server answered the IXFR with its SOA only, not the differences")


@dataclass
class ZoneCache:
    """What the arbiter last read of the zone and at which SOA serial (None: nothing known yet)."""

    serial: int | None = None
    lease: object | None = None
    """The lease record as last read (:class:`lbserver.dns.lease.Lease`), None: to be read."""
    records: dict[str, RRsets] = field(default_factory=dict)
    """Each alias's records as last read (an alias missing here is read at the next cycle)."""
    full_at: float = 0.0
    """When every name was last read (monotonic)."""
    problem: str | None = None
    """Why the last serial move could not be followed with an IXFR (logged once)."""

    def forget(self) -> None:
        """Read every name again at the next cycle."""
        self.serial, self.lease, self.records = None, None, {}


__all__ = ["FULL_READ_INTERVAL", "MAX_RECORDS", "NoDifferences", "ZoneCache", "changed_names", "soa_serial"]
