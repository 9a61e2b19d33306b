"""A quiet DNS writer: a cycle with nothing new costs one SOA query, and hand edits are still noticed.

In-process arbiters against a real BIND primary (IXFR from its journal) and a
real Knot DNS primary, keeping no differences (the fall-back path: every
alias is read when the serial moved) and then keeping them (IXFR). The zone is edited by hand with the
real ``nsupdate``. The daemons, peers and takeovers are in
test_dns_peers_lease.py.
"""

from __future__ import annotations

import logging

import pytest

from tests.support.doubles import Clock
from tests.support.dns import NODES, write_config
from lbserver import config
from lbserver.dns.arbiter import DnsArbiter
from lbserver.dns.decide import Candidate

pytestmark = pytest.mark.system

GROUPS = {"WMS": tuple(NODES)}
WEIGHTS = {"wms01": 40.0, "wms02": 30.0, "wms03": 20.0, "wms04": 10.0}
ALIASES = ('    <alias name="wms-alice" group="WMS" num-out="1"/>\n'
           '    <alias name="wms-cms" group="WMS" best-hosts="1"/>')
T0 = 1_800_000_000.0
ALICE = ["192.0.2.11", "192.0.2.12", "192.0.2.13"]


def healthy() -> dict[str, Candidate]:
    return {n: Candidate(n, True, w, ()) for n, w in WEIGHTS.items()}


def arbiter(tmp_path, server, holder: str, clock: Clock) -> DnsArbiter:
    path = write_config(tmp_path / f"{holder}.xml", server, ALIASES, dns_attrs=f'lease-holder="{holder}"')
    cfg = config.load(str(path))
    return DnsArbiter(cfg.dns, cfg.nodes, clock=clock)


def cycle(arb: DnsArbiter) -> tuple[dict[str, str], int]:
    """One cycle: each alias's result, and the DNS queries it cost."""
    before = arb.figures()[1]
    reports = arb.run_cycle(healthy(), GROUPS)
    return {r.alias: r.result for r in reports}, arb.figures()[1] - before


def test_bind_quiet_cycles_cost_one_query_and_hand_edits_are_read_from_the_differences(tmp_path, named_server,
                                                                                      caplog):
    caplog.set_level(logging.INFO, logger="lbserver.dns")
    clock = Clock(T0)
    a = arbiter(tmp_path, named_server, "boot1", clock)
    b = arbiter(tmp_path, named_server, "boot2", clock)
    assert cycle(a)[0] == {"wms-alice": "updated", "wms-cms": "updated"}
    # The next cycle reads what the first one changed (SOA, IXFR, then the lease and both aliases) ...
    assert cycle(a) == ({"wms-alice": "unchanged", "wms-cms": "unchanged"}, 5)
    serial = named_server.soa_serial()
    # ... and from then on, nothing new: the SOA query only, for the writer and the standby alike.
    for _ in range(3):
        clock.now += 10
        assert cycle(a) == ({"wms-alice": "unchanged", "wms-cms": "unchanged"}, 1)
    assert cycle(b)[0] == {"wms-alice": "standby", "wms-cms": "standby"}
    assert cycle(b)[1] == 1
    assert named_server.soa_serial() == serial
    seconds, _ = a.figures()
    assert seconds is not None and seconds > 0

    # An admin edits another name: the SOA and the IXFR show that no alias changed; nothing else is read.
    named_server.nsupdate("update add printer.lbtest.example. 300 A 192.0.2.200")
    assert cycle(a) == ({"wms-alice": "unchanged", "wms-cms": "unchanged"}, 2)
    assert cycle(a)[1] == 1
    # An admin adds an address to an alias: only that alias is read again, and corrected (SOA, IXFR, the
    # alias, and its read-back after the update).
    named_server.nsupdate("update add wms-alice.lbtest.example. 120 A 192.0.2.99")
    assert cycle(a) == ({"wms-alice": "updated", "wms-cms": "unchanged"}, 4)
    assert named_server.dig("wms-alice") == ALICE
    # The standby notices the same edits through the differences and reports what the zone holds.
    result, queries = cycle(b)
    assert result == {"wms-alice": "standby", "wms-cms": "standby"} and queries == 3  # SOA, IXFR, wms-alice
    assert b.reports()[0].published == tuple(ALICE)
    assert not [r for r in caplog.records if "differences could not be read" in r.getMessage()]


def test_refused_ixfr_falls_back_to_reading_every_alias_and_says_so_once(tmp_path, named_server, caplog):
    named_server.stop()
    named_server.write_conf(
        "  recursion no;\n  notify no;\n",
        f'zone "{named_server.zone}" {{ type primary; file "{named_server.dir}/{named_server.zone}.db"; '
        f'allow-update {{ key "lbkey"; }}; allow-transfer {{ none; }}; }};\n',
        named_server.key_statement())
    named_server.start()
    caplog.set_level(logging.INFO, logger="lbserver.dns")
    clock = Clock(T0)
    a = arbiter(tmp_path, named_server, "boot1", clock)
    cycle(a)
    # Every cycle after a change reads everything: SOA, the refused IXFR, the lease, both aliases.
    assert cycle(a) == ({"wms-alice": "unchanged", "wms-cms": "unchanged"}, 5)
    assert cycle(a)[1] == 1  # still one query when nothing changed
    named_server.nsupdate("update add wms-alice.lbtest.example. 120 A 192.0.2.99")
    assert cycle(a) == ({"wms-alice": "updated", "wms-cms": "unchanged"}, 6)  # and the read-back
    assert named_server.dig("wms-alice") == ALICE
    cycle(a)
    said = [r for r in caplog.records if "differences could not be read" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.WARNING, [r.getMessage() for r in said]
    assert "REFUSED" in said[0].getMessage()


def test_knot_primary_with_and_without_differences(tmp_path, knot_server, caplog):
    caplog.set_level(logging.INFO, logger="lbserver.dns")
    ixfr = knot_server.journal == "changes"
    clock = Clock(T0)
    a = arbiter(tmp_path, knot_server, "boot1", clock)
    b = arbiter(tmp_path, knot_server, "boot2", clock)
    assert cycle(a)[0] == {"wms-alice": "updated", "wms-cms": "updated"}
    assert knot_server.dig("wms-alice") == ALICE
    # After its own change: SOA, IXFR, then the lease and both aliases (named by the differences, or all).
    assert cycle(a) == ({"wms-alice": "unchanged", "wms-cms": "unchanged"}, 5)
    serial = knot_server.soa_serial()
    for _ in range(3):
        clock.now += 10
        assert cycle(a) == ({"wms-alice": "unchanged", "wms-cms": "unchanged"}, 1)
    assert cycle(b)[0] == {"wms-alice": "standby", "wms-cms": "standby"}
    assert cycle(b)[1] == 1 and knot_server.soa_serial() == serial
    # Hand edits: another name (nothing to correct: with the differences nothing is read), then an alias.
    knot_server.nsupdate("update add printer.lbtest.example. 300 A 192.0.2.200")
    assert cycle(a) == ({"wms-alice": "unchanged", "wms-cms": "unchanged"}, 2 if ixfr else 5)
    knot_server.nsupdate("update delete wms-alice.lbtest.example. A 192.0.2.11")
    assert cycle(a)[0] == {"wms-alice": "updated", "wms-cms": "unchanged"}
    assert knot_server.dig("wms-alice") == ALICE
    # The writer's lease expires unrenewed (it stopped): the standby takes over through Knot too.
    clock.now += 1300
    assert cycle(b)[0]["wms-alice"] in ("updated", "unchanged")
    assert b.reports()[0].lease["role"] == "writer"
    assert cycle(a)[0] == {"wms-alice": "standby", "wms-cms": "standby"}
    said = [r.getMessage() for r in caplog.records if "differences could not be read" in r.getMessage()]
    if ixfr:
        assert said == []
    else:
        assert len(said) == 2 and all("AXFR-style" in m for m in said), said  # once by each arbiter
