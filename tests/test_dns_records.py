"""Reading and replacing alias records against a real BIND: CNAMEs, per-family TTLs,
read-back after an update, non-authoritative servers, and odd node addresses."""

from __future__ import annotations

import time

import dns.message
import dns.query
import dns.rcode
import pytest

from tests.support.dns import NODES, NamedServer, write_config
from lbserver import config
from lbserver.dns.decide import NO_ADDRESS, Candidate
from lbserver.dns.addresses import resolve_node, unpublishable
from lbserver.dns.arbiter import DnsArbiter
from lbserver.config.tsigkey import load_key
from lbserver.dns.update import DnsError, RRsets, differences, needs_update, query_current, replace_rrsets

GROUPS = {"WMS": tuple(NODES)}
ALICE = '    <alias name="wms-alice" group="WMS" num-out="1"/>'


def healthy() -> dict[str, Candidate]:
    return {n: Candidate(n, True, w, ()) for n, w in zip(NODES, (40.0, 30.0, 20.0, 10.0))}


def arbiter_for(tmp_path, named, aliases=ALICE, **kw):
    cfg = config.load(str(write_config(tmp_path / "lbsconfig.xml", named, aliases, **kw)))
    return DnsArbiter(cfg.dns, cfg.nodes), cfg


def signed_update(named: NamedServer, *changes: tuple) -> None:
    """Apply ``(method, name, ttl, type, data)`` changes to the zone with the test key; they must succeed."""
    assert named.update(*changes) == dns.rcode.NOERROR


# -- CNAME at the alias --------------------------------------------------------

@pytest.mark.system
def test_cname_to_a_missing_name_is_reported_not_updated(tmp_path, named_server):
    # The server answers NXDOMAIN (the target does not exist) with the CNAME in the answer.
    signed_update(named_server, ("add", "wms-alice", 300, "CNAME", "gone.lbtest.example."))
    with pytest.raises(DnsError) as exc:
        query_current("127.0.0.1", named_server.port, named_server.zone, "wms-alice", 3)
    assert exc.value.code == "CNAME" and "remove the CNAME" in exc.value.detail
    arb, _ = arbiter_for(tmp_path, named_server)
    for _ in range(2):  # every cycle says so; none claims an update
        [rep] = arb.run_cycle(healthy(), GROUPS)
        assert rep.result == "error" and "CNAME" in rep.error and "wms-alice.lbtest.example" in rep.error
    assert named_server.dig("wms-alice") == ["gone.lbtest.example."]  # still only the CNAME, no address


@pytest.mark.system
def test_update_is_read_back_and_a_silently_ignored_one_is_an_error(named_server):
    # The server answers NOERROR to address records beside a CNAME but ignores them (RFC 2136 3.4.2.2).
    signed_update(named_server, ("add", "wms-alice", 300, "CNAME", "gone.lbtest.example."))
    key = load_key(str(named_server.key_file))
    wanted = RRsets(a=frozenset({"192.0.2.11"}), ttl=60)
    with pytest.raises(DnsError) as exc:
        replace_rrsets("127.0.0.1", named_server.port, named_server.zone, "wms-alice", wanted, key, 3)
    assert exc.value.code == "CNAME" and "answered the update with NOERROR" in exc.value.detail
    # A normal update reads back what it sent.
    replace_rrsets("127.0.0.1", named_server.port, named_server.zone, "wms-bob", wanted, key, 3)
    assert named_server.dig("wms-bob") == ["192.0.2.11"]


@pytest.mark.unit
def test_differences_name_each_rrset():
    a = frozenset({"192.0.2.1"})
    assert differences(RRsets(a, a_ttl=60), RRsets(a, ttl=60)) == []
    assert differences(RRsets(), RRsets(a, ttl=60)) == ["A holds nothing instead of 192.0.2.1"]
    assert differences(RRsets(a, a_ttl=30), RRsets(a, ttl=60)) == ["A TTL is 30 instead of 60"]


# -- TTL per family ------------------------------------------------------------

@pytest.mark.unit
def test_ttl_is_compared_per_family():
    a, aaaa = frozenset({"192.0.2.1"}), frozenset({"2001:db8::1"})
    wanted = RRsets(a, aaaa, ttl=60)
    assert not needs_update(RRsets(a, aaaa, a_ttl=60, aaaa_ttl=60), wanted)
    assert needs_update(RRsets(a, aaaa, a_ttl=60, aaaa_ttl=3600), wanted)
    assert needs_update(RRsets(a, aaaa, a_ttl=3600, aaaa_ttl=60), wanted)
    assert not needs_update(RRsets(a, a_ttl=60), RRsets(a, ttl=60))  # an empty family has no TTL to compare


@pytest.mark.system
def test_aaaa_ttl_differing_from_a_ttl_is_corrected(tmp_path, named_server):
    attrs = {"wms01": 'ip6="2001:db8::11"'}
    arb, _ = arbiter_for(tmp_path, named_server, '    <alias name="wms-alice" group="WMS" best-hosts="1"/>',
                         extra_node_attrs=attrs)
    # What the arbiter wants (TTL 120), except that the AAAA TTL is 3600.
    signed_update(named_server, ("add", "wms-alice", 120, "A", "192.0.2.11"),
                  ("add", "wms-alice", 3600, "AAAA", "2001:db8::11"))
    cur = query_current("127.0.0.1", named_server.port, named_server.zone, "wms-alice", 3)
    assert (cur.ttl_of("A"), cur.ttl_of("AAAA")) == (120, 3600)
    [rep] = arb.run_cycle(healthy(), GROUPS)
    assert rep.result == "updated", rep.error
    assert named_server.ttl("wms-alice", "AAAA") == 120 and named_server.ttl("wms-alice", "A") == 120
    assert arb.run_cycle(healthy(), GROUPS)[0].result == "unchanged"


# -- authoritative answers only ------------------------------------------------

class CachingServer(NamedServer):
    """A named that is not authoritative for the zone: it forwards queries for it to ``primary``."""

    def __init__(self, workdir, primary: NamedServer) -> None:
        super().__init__(workdir)
        self.write_conf(
            "  recursion yes;\n  allow-query-cache { 127.0.0.1; };\n  allow-recursion { 127.0.0.1; };\n",
            f'zone "{primary.zone}" {{ type forward; forward only; '
            f"forwarders {{ 127.0.0.1 port {primary.port}; }}; }};\n")


@pytest.mark.system
def test_answers_of_a_caching_server_are_refused(tmp_path, named_server):
    signed_update(named_server, ("add", "wms-alice", 120, "A", "192.0.2.11"))
    cache = CachingServer(tmp_path / "cache", named_server)
    cache.start()
    try:
        # Prime its cache the way any client would (recursion desired): it now answers from the cache.
        q = dns.message.make_query(f"wms-alice.{named_server.zone}", "A")
        assert dns.query.tcp(q, "127.0.0.1", port=cache.port, timeout=3).answer
        with pytest.raises(DnsError) as exc:
            query_current("127.0.0.1", cache.port, named_server.zone, "wms-alice", 3)
    finally:
        cache.stop()
    assert exc.value.code == "not-authoritative"
    assert "AA" in exc.value.detail and f"port {cache.port}" in exc.value.detail
    assert "primary server" in exc.value.detail


# -- node addresses ------------------------------------------------------------

@pytest.mark.system
def test_link_local_node_is_excluded_not_published(tmp_path, named_server):
    nodes = {**NODES, "wms05": "[fe80::1%eth0]"}
    arb, cfg = arbiter_for(tmp_path, named_server, '    <alias name="wms-alice" group="WMS" best-hosts="-1"/>',
                           nodes=nodes)
    assert resolve_node(cfg.nodes["wms05"]) == ("fe80::1",)  # the zone id means nothing in DNS
    [rep] = arb.run_cycle({**healthy(), "wms05": Candidate("wms05", True, 99.0, ())},
                          {"WMS": tuple(nodes)})
    assert rep.result == "updated", rep.error
    assert rep.excluded["wms05"].startswith(NO_ADDRESS) and "fe80::1 is link-local" in rep.excluded["wms05"]
    assert named_server.dig("wms-alice", "AAAA") == []
    assert named_server.dig("wms-alice") == sorted(NODES.values())


@pytest.mark.unit
def test_unpublishable_addresses():
    assert "link-local" in unpublishable("fe80::1")
    assert "link-local" in unpublishable("169.254.1.1")
    assert unpublishable("ff02::1") == "multicast" and unpublishable("0.0.0.0") == "unspecified"
    assert unpublishable("127.0.0.2") is None and unpublishable("::1") is None  # loopback: test setups
    assert unpublishable("2001:db8::1") is None


# -- submission test page ------------------------------------------------------

@pytest.mark.system
def test_future_and_stale_page_lines_do_not_break_the_alias(tmp_path, named_server):
    page = tmp_path / "submission.txt"
    now = int(time.time())
    page.write_text(f"1e30 1 wms01\n9999999999 0 wms02\n{now - 10} 1 wms02\n{now - 99999} 1 wms03\n")
    alias = f'    <alias name="wms-alice" group="WMS" best-hosts="-1" health-url="{page.as_uri()}"/>'
    arb, _ = arbiter_for(tmp_path, named_server, alias)
    [rep] = arb.run_cycle(healthy(), GROUPS)
    assert rep.result == "updated", rep.error
    # The far-future lines are skipped: wms02's real, recent failure counts; wms01 has no result.
    assert set(rep.excluded) == {"wms02"} and "submission test failed" in rep.excluded["wms02"]
    assert "line 1: " in rep.health_problem and "line 2: " in rep.health_problem
    assert "in the future" in rep.health_problem
    # wms03's only result is too old: said, but the node stays in.
    assert "no recent submission test result for node wms03" in rep.health_problem
    assert named_server.dig("wms-alice") == ["192.0.2.11", "192.0.2.13", "192.0.2.14"]
