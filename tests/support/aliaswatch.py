"""Watching a DNS alias through a takeover: every answer, the SOA serial beside it, and who holds the lease.

:class:`AliasWatch` queries the alias's A records and the zone's SOA serial
in a loop on a thread (dnspython, TCP, about 50 times a second) and keeps
every answer, so a test can assert that the alias was never empty and count
how often its set changed.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import dns.message
import dns.query
import dns.rdatatype

from lbserver.dns.lease import parse
from tests.support.processes import wait_until


@dataclass
class Sample:
    t: float
    addrs: tuple[str, ...]
    serial: int | None


@dataclass
class AliasWatch:
    """Queries the alias's A records and the SOA serial in a loop, keeping every answer."""

    named: object
    name: str = "wms"
    samples: list[Sample] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "AliasWatch":
        self._thread.start()
        wait_until(lambda: self.samples, 10, what="first watched answer")
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        qname = f"{self.name}.{self.named.zone}"
        while not self._stop.is_set():
            t = time.monotonic()
            try:
                resp = dns.query.tcp(dns.message.make_query(qname, "A"), self.named.address, port=self.named.port,
                                     timeout=2)
                addrs = tuple(sorted(r.address for rrset in resp.answer if rrset.rdtype == dns.rdatatype.A
                                     for r in rrset))
                self.samples.append(Sample(t, addrs, self.named.soa_serial()))
            except Exception as exc:  # noqa: BLE001 (recorded; the test asserts there are none)
                self.failures.append(f"{t:.3f}: {exc!r}")
            self._stop.wait(0.02)

    def since(self, t0: float) -> list[Sample]:
        return [s for s in list(self.samples) if s.t >= t0]

    def first(self, t0: float, addrs: tuple[str, ...]) -> float:
        """When the alias first held ``addrs`` at or after ``t0`` (monotonic)."""
        return next(s.t for s in self.since(t0) if s.addrs == addrs)


def lease_holder(named, lease: str = "_lbserver-lease") -> str | None:
    """The holder named by the lease record ``lease`` as ``named`` serves it (None: no record)."""
    resp = dns.query.tcp(dns.message.make_query(f"{lease}.{named.zone}", "TXT"), named.address,
                         port=named.port, timeout=2)
    return parse([r.strings for rrset in resp.answer for r in rrset]).holder
