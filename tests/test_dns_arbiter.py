"""The DNS arbiter against a real BIND: publishing, exclusions, no-op cycles, failures."""

from __future__ import annotations

import os
import time

import pytest

import dns.query
import dns.rcode
import dns.update

from tests.support.dns import NODES, write_config
from lbserver import config
from lbserver.dns.decide import Candidate
from lbserver.dns.addresses import resolve_node
from lbserver.dns.arbiter import DnsArbiter
from lbserver.dns.report import format_reports
from lbserver.dns.update import RRsets, needs_update, sort_addresses

GROUPS = {"WMS": tuple(NODES)}
WEIGHTS = {"wms01": 40.0, "wms02": 30.0, "wms03": 20.0, "wms04": 10.0}


def healthy(**override):
    """Candidates: all healthy with WEIGHTS; override name=False for unhealthy, name='drained'."""
    out = {}
    for n, w in WEIGHTS.items():
        state = override.get(n, True)
        if state == "drained":
            out[n] = Candidate(n, True, w, (), drained=True)
        elif state:
            out[n] = Candidate(n, True, w, ())
        else:
            out[n] = Candidate(n, False, float("nan"), ("agent not answering (3 failed polls)",))
    return out


def arbiter_for(tmp_path, named, aliases, **kw):
    cfg = config.load(str(write_config(tmp_path / "lbsconfig.xml", named, aliases, **kw)))
    return DnsArbiter(cfg.dns, cfg.nodes), cfg


ALICE = '    <alias name="wms-alice" group="WMS" num-out="1"/>'


@pytest.mark.system
def test_first_publish_leaves_the_worst_out(tmp_path, named_server):
    arb, _ = arbiter_for(tmp_path, named_server, ALICE)
    serial0 = named_server.soa_serial()
    [rep] = arb.run_cycle(healthy(), GROUPS)
    assert rep.result == "updated", rep.error
    assert named_server.dig("wms-alice") == ["192.0.2.11", "192.0.2.12", "192.0.2.13"]
    assert named_server.ttl("wms-alice") == 120
    assert named_server.soa_serial() > serial0
    assert rep.published_nodes == ("wms01", "wms02", "wms03") and rep.spare == ("wms04",)
    assert rep.fqdn == "wms-alice.lbtest.example"
    assert arb.reports()[0].to_dict()["published"] == ["192.0.2.11", "192.0.2.12", "192.0.2.13"]
    table = format_reports(arb.reports())
    assert "wms-alice.lbtest.example" in table and "192.0.2.11 (wms01)" in table and "wms04: spare" in table


@pytest.mark.system
def test_unchanged_set_sends_no_update(tmp_path, named_server):
    arb, _ = arbiter_for(tmp_path, named_server, ALICE)
    assert arb.run_cycle(healthy(), GROUPS)[0].result == "updated"
    serial = named_server.soa_serial()
    # Same set, different order of weights inside it: nothing to send.
    cands = healthy()
    cands["wms01"] = Candidate("wms01", True, 21.0, ())
    [rep] = arb.run_cycle(cands, GROUPS)
    assert rep.result == "unchanged"
    assert named_server.soa_serial() == serial


@pytest.mark.system
def test_unhealthy_node_leaves_and_comes_back(tmp_path, named_server):
    arb, _ = arbiter_for(tmp_path, named_server, ALICE)
    arb.run_cycle(healthy(), GROUPS)
    [rep] = arb.run_cycle(healthy(wms02=False), GROUPS)
    assert rep.result == "updated"
    assert named_server.dig("wms-alice") == ["192.0.2.11", "192.0.2.13"]
    assert rep.excluded == {"wms02": "agent not answering (3 failed polls)"}
    assert rep.previous == ("192.0.2.11", "192.0.2.12", "192.0.2.13")
    [rep] = arb.run_cycle(healthy(wms03="drained"), GROUPS)
    assert rep.excluded == {"wms03": "drained"}
    assert named_server.dig("wms-alice") == ["192.0.2.11", "192.0.2.12"]


@pytest.mark.system
def test_all_bad_keeps_one_address(tmp_path, named_server):
    arb, _ = arbiter_for(tmp_path, named_server, ALICE)
    arb.run_cycle(healthy(), GROUPS)
    [rep] = arb.run_cycle(healthy(wms01=False, wms02=False, wms03=False, wms04=False), GROUPS)
    assert rep.fallback
    # The one kept is one the DNS already published (less churn): the first by name among them.
    assert named_server.dig("wms-alice") == ["192.0.2.11"]
    assert set(rep.excluded) == set(NODES)
    assert "FALLBACK" in format_reports([rep])


@pytest.mark.system
def test_best_hosts_and_several_aliases(tmp_path, named_server):
    aliases = ('    <alias name="wms-best" group="WMS" best-hosts="2"/>\n'
               '    <alias name="wms-all" group="WMS" best-hosts="-1"/>\n'
               '    <alias name="wms-two-out" group="WMS" num-out="2"/>\n'
               '    <alias name="wms-off" group="WMS" enabled="false"/>')
    arb, _ = arbiter_for(tmp_path, named_server, aliases)
    reps = {r.alias: r for r in arb.run_cycle(healthy(), GROUPS)}
    assert named_server.dig("wms-best") == ["192.0.2.11", "192.0.2.12"]
    assert named_server.dig("wms-all") == sorted(NODES.values())
    assert named_server.dig("wms-two-out") == ["192.0.2.11", "192.0.2.12"]
    assert named_server.dig("wms-off") == []
    assert reps["wms-off"].result == "disabled"


@pytest.mark.system
def test_a_and_aaaa_replaced_together(tmp_path, named_server):
    arb, _ = arbiter_for(tmp_path, named_server, ALICE,
                         extra_node_attrs={"wms01": 'ip="192.0.2.111" ip6="2001:db8::11"',
                                           "wms02": 'ip6="2001:db8::12"'})
    arb.run_cycle(healthy(), GROUPS)
    # wms02's A comes from its address host, its AAAA from ip6.
    assert named_server.dig("wms-alice") == ["192.0.2.111", "192.0.2.12", "192.0.2.13"]
    assert named_server.dig("wms-alice", "AAAA") == ["2001:db8::11", "2001:db8::12"]
    arb.run_cycle(healthy(wms01=False, wms02=False), GROUPS)
    assert named_server.dig("wms-alice", "AAAA") == []
    assert named_server.dig("wms-alice") == ["192.0.2.13"]


@pytest.mark.system
def test_failed_submission_test_excludes_its_node(tmp_path, named_server):
    page = tmp_path / "submission.txt"
    now = int(time.time())
    page.write_text(f"{now - 100} 0 wms01.example.org\n{now - 50} 1 wms02.example.org\n{now - 99999} 1 wms03\n")
    alias = f'    <alias name="wms-alice" group="WMS" num-out="1" health-url="{page.as_uri()}"/>'
    arb, _ = arbiter_for(tmp_path, named_server, alias)
    [rep] = arb.run_cycle(healthy(), GROUPS)
    assert "submission test failed" in rep.excluded["wms02"]
    assert named_server.dig("wms-alice") == ["192.0.2.11", "192.0.2.13"]  # wms03's failure is too old
    # An unreadable page is reported and excludes nobody.
    page.unlink()
    [rep] = arb.run_cycle(healthy(), GROUPS)
    assert rep.excluded == {} and "cannot read the submission test page" in rep.health_problem
    assert named_server.dig("wms-alice") == ["192.0.2.11", "192.0.2.12", "192.0.2.13"]


def write_key(path, name, secret_b64, algorithm="hmac-sha256"):
    path.write_text(f'key "{name}" {{ algorithm {algorithm}; secret "{secret_b64}"; }};\n')
    os.chmod(path, 0o600)
    return path


@pytest.mark.system
def test_wrong_key_gives_clear_error_and_no_change(tmp_path, named_server):
    arb, _ = arbiter_for(tmp_path, named_server, ALICE)
    arb.run_cycle(healthy(), GROUPS)
    before, serial = named_server.dig("wms-alice"), named_server.soa_serial()
    bad_secret = write_key(tmp_path / "bad.key", "lbkey", "d3Jvbmd3cm9uZ3dyb25nd3Jvbmc=")
    arb, _ = arbiter_for(tmp_path, named_server, ALICE, key_file=bad_secret)
    [rep] = arb.run_cycle(healthy(wms01=False), GROUPS)
    assert rep.result == "error"
    assert "BADSIG" in rep.error and "zone lbtest.example" in rep.error and "alias wms-alice" in rep.error
    assert f"server 127.0.0.1:{named_server.port}" in rep.error
    assert "d3Jvbmd3" not in rep.error
    bad_name = write_key(tmp_path / "other.key", "nosuchkey", named_server.secret_b64)
    arb, _ = arbiter_for(tmp_path, named_server, ALICE, key_file=bad_name)
    [rep] = arb.run_cycle(healthy(wms01=False), GROUPS)
    assert "BADKEY" in rep.error and "nosuchkey" in rep.error
    assert named_server.secret_b64 not in rep.error
    assert named_server.dig("wms-alice") == before and named_server.soa_serial() == serial


@pytest.mark.system
def test_server_down_then_back(tmp_path, named_server):
    arb, _ = arbiter_for(tmp_path, named_server, ALICE)
    arb.run_cycle(healthy(), GROUPS)
    named_server.stop()
    [rep] = arb.run_cycle(healthy(wms01=False), GROUPS)
    assert rep.result == "error"
    assert "refused" in rep.error and f"127.0.0.1:{named_server.port}" in rep.error
    assert "wms-alice" in rep.error and "lbtest.example" in rep.error
    assert rep.published == ("192.0.2.11", "192.0.2.12", "192.0.2.13")  # last known
    assert "  ! error: cannot read the current records" in format_reports([rep])
    named_server.start()
    [rep] = arb.run_cycle(healthy(wms01=False), GROUPS)
    assert rep.result == "updated"
    assert named_server.dig("wms-alice") == ["192.0.2.12", "192.0.2.13"]


@pytest.mark.system
def test_cname_at_alias_is_reported(tmp_path, named_server):
    arb, cfg = arbiter_for(tmp_path, named_server, ALICE)
    from lbserver.config.tsigkey import load_key
    k = load_key(str(named_server.key_file)).dns_key()
    upd = dns.update.UpdateMessage(named_server.zone, keyring={k.name: k}, keyname=k.name)
    upd.add("wms-alice", 300, "CNAME", "ns.lbtest.example.")
    assert dns.query.tcp(upd, "127.0.0.1", port=named_server.port, timeout=3).rcode() == dns.rcode.NOERROR
    [rep] = arb.run_cycle(healthy(), GROUPS)
    assert rep.result == "error" and "CNAME" in rep.error


@pytest.mark.system
def test_reconfigure_keeps_working(tmp_path, named_server):
    arb, _ = arbiter_for(tmp_path, named_server, ALICE)
    arb.run_cycle(healthy(), GROUPS)
    cfg = config.load(str(write_config(tmp_path / "new.xml", named_server,
                                       '    <alias name="wms-alice" group="WMS" best-hosts="1"/>')))
    arb.reconfigure(cfg.dns, cfg.nodes)
    [rep] = arb.run_cycle(healthy(), GROUPS)
    assert rep.result == "updated" and named_server.dig("wms-alice") == ["192.0.2.11"]


@pytest.mark.system
def test_resolve_node_uses_attributes_then_host(tmp_path, named_server):
    cfg = config.load(str(write_config(tmp_path / "c.xml", named_server, ALICE,
                                       nodes={"wms01": "localhost", "wms02": "192.0.2.12"},
                                       extra_node_attrs={"wms02": 'ip6="2001:DB8:0::12"'})))
    assert "127.0.0.1" in resolve_node(cfg.nodes["wms01"])
    assert resolve_node(cfg.nodes["wms02"]) == ("192.0.2.12", "2001:db8::12")


@pytest.mark.system
def test_key_file_vanishing_is_reported_then_recovered(tmp_path, named_server):
    key = tmp_path / "k.key"
    key.write_text(named_server.key_file.read_text())
    os.chmod(key, 0o600)
    arb, cfg = arbiter_for(tmp_path, named_server, ALICE, key_file=key)
    saved = key.read_text()
    key.unlink()  # removed after the config was checked: the arbiter must cope
    arb.reconfigure(cfg.dns, cfg.nodes)
    [rep] = arb.run_cycle(healthy(), GROUPS)
    assert rep.result == "error" and "cannot read key file" in rep.error
    assert named_server.dig("wms-alice") == []
    key.write_text(saved)
    [rep] = arb.run_cycle(healthy(), GROUPS)
    assert rep.result == "updated" and len(named_server.dig("wms-alice")) == 3


@pytest.mark.unit
def test_needs_update_compares_sets_and_ttl():
    a = frozenset({"192.0.2.1", "192.0.2.2"})
    assert not needs_update(RRsets(a, ttl=60), RRsets(frozenset(sorted(a)), ttl=60))
    assert needs_update(RRsets(a, ttl=60), RRsets(a, ttl=120))
    assert needs_update(RRsets(a, ttl=60), RRsets(a, frozenset({"2001:db8::1"}), ttl=60))
    assert sort_addresses(["2001:db8::1", "192.0.2.10", "192.0.2.9"]) == ("192.0.2.9", "192.0.2.10", "2001:db8::1")
