"""Reading the zone's differences (IXFR): every answer a server may give, including broken ones.

A loopback TCP listener in this process plays a DNS server that answers the
IXFR with crafted bytes (real servers do not send truncated or malformed
answers on demand; BIND's and Knot's real answers are in test_dns_quiet.py).
Anything but well-formed differences raises NoDifferences, so the arbiter
reads every alias instead.
"""

from __future__ import annotations

import socket

import dns.message
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest

from lbserver.dns.changes import NoDifferences, changed_names
from tests.support.dns import OneAnswer, framed

pytestmark = pytest.mark.unit

ZONE = "lbtest.example."


def soa(serial: int) -> dns.rrset.RRset:
    return dns.rrset.from_text(ZONE, 300, "IN", "SOA", f"ns.{ZONE} hostmaster.{ZONE} {serial} 3600 600 86400 60")


def a(name: str, addr: str) -> dns.rrset.RRset:
    return dns.rrset.from_text(f"{name}.{ZONE}", 60, "IN", "A", addr)


def answer(*rrsets: dns.rrset.RRset, rcode: int = dns.rcode.NOERROR):
    def reply(q: dns.message.Message) -> bytes:
        r = dns.message.make_response(q)
        r.set_rcode(rcode)
        r.answer.extend(rrsets)  # in this order, one RRset each (as an IXFR is laid out)
        return framed(r)
    return reply


def ask(reply, serial: int = 5):
    server = OneAnswer(reply)
    return changed_names("127.0.0.1", server.port, ZONE, serial, None, 2.0)


def test_incremental_differences_name_the_changed_names():
    names, new = ask(answer(soa(7), soa(5), a("old", "192.0.2.1"), soa(6), a("new", "192.0.2.2"),
                            soa(6), soa(7), a("two", "192.0.2.3"), soa(7)))
    assert new == 7 and {n.to_text() for n in names} == {f"old.{ZONE}", f"new.{ZONE}", f"two.{ZONE}"}


def test_up_to_date_is_no_change():
    assert ask(answer(soa(5))) == (set(), 5)


@pytest.mark.parametrize("reply, why", [
    (answer(soa(7), a("x", "192.0.2.1"), a("y", "192.0.2.2"), soa(7)), "AXFR-style"),
    (answer(rcode=dns.rcode.REFUSED), "REFUSED"),
    (answer(rcode=dns.rcode.NOTIMP), "NOTIMP"),
    (answer(soa(7)), "its SOA only"),
    (answer(a("x", "192.0.2.1")), "does not start with the SOA"),
    (lambda q: b"\x00\x20" + b"\xff" * 32, "malformed"),
    (lambda q: framed(dns.message.make_response(q))[:-3], "failed"),                      # cut short
    (lambda q: answer(soa(7), soa(5), a("old", "192.0.2.1"))(q), "failed"),              # no closing SOA
    (lambda q: b"", "failed"),                                                           # closed at once
])
def test_anything_but_the_differences_means_read_everything(reply, why):
    with pytest.raises(NoDifferences) as exc:
        ask(reply)
    assert why in str(exc.value)
    assert not exc.value.normal or why == "AXFR-style"


def test_nothing_listening_means_read_everything():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(NoDifferences, match="unreachable"):
        changed_names("127.0.0.1", port, ZONE, 5, None, 1.0)
