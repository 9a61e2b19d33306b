"""The pure plan of one alias (lbserver.dns.plan): what it publishes and reports, given the cycle's facts."""

from __future__ import annotations

from dataclasses import replace

import pytest

from lbserver.config import Alias, Dns, Node
from lbserver.dns.decide import Candidate
from lbserver.dns.healthurl import parse_page
from lbserver.dns.lease import LeaseStatus
from lbserver.dns.plan import AliasPlan, CycleFacts, plan_alias, settle
from lbserver.dns.update import DnsError, RRsets

pytestmark = pytest.mark.unit

NOW = 1_700_000_000.0
ALIAS = Alias(name="wms-alice", group="WMS")
DNS = Dns(server="127.0.0.1", port=5300, zone="lbtest.example", key_file="dns.key", ttl=60, aliases=(ALIAS,))
WHERE = "server 127.0.0.1:5300 zone lbtest.example alias wms-alice"
NODES = {f"wms0{i}": Node(name=f"wms0{i}", address=f"http://wms0{i}.lbtest.example:8000/",
                          host=f"wms0{i}.lbtest.example", port=8000) for i in (1, 2, 3)}
ADDRESSES = {"wms01": ("192.0.2.11", "2001:db8::11"), "wms02": ("192.0.2.12",), "wms03": ("192.0.2.13",)}
WEIGHTS = {"wms01": 30.0, "wms02": 20.0, "wms03": 10.0}


def facts(**changes) -> CycleFacts:
    """Three healthy nodes (wms01 best); the DNS holds wms02 and wms03; no lease, a usable key."""
    base = CycleFacts(
        dns=DNS, candidates={n: Candidate(n, True, w) for n, w in WEIGHTS.items()},
        groups={"WMS": ("wms01", "wms02", "wms03")}, nodes=NODES, addresses=ADDRESSES, pages={},
        records={"wms-alice": RRsets(a=frozenset({"192.0.2.12", "192.0.2.13"}), a_ttl=60)},
        known={}, last_change={"wms-alice": NOW - 600}, lease=None, key_error=None, now=NOW)
    return replace(base, **changes)


def test_a_change_plans_one_update_and_the_reports_of_each_answer():
    plan = plan_alias(ALIAS, facts())
    assert plan.records == RRsets(a=frozenset({"192.0.2.11", "192.0.2.12", "192.0.2.13"}),
                                  aaaa=frozenset({"2001:db8::11"}), ttl=60)
    assert plan.warning is None
    done = plan.report
    assert (done.result, done.fqdn, done.enabled) == ("updated", "wms-alice.lbtest.example", True)
    assert done.published == ("192.0.2.11", "192.0.2.12", "192.0.2.13", "2001:db8::11")
    assert done.previous == ("192.0.2.12", "192.0.2.13")
    assert done.published_nodes == ("wms01", "wms02", "wms03")
    assert (done.checked_at, done.last_change, done.error) == (NOW, NOW, None)
    assert done.node_addresses == ADDRESSES
    # Should it fail, the records stay as they are and the last change is the old one.
    assert plan.if_failed.result == "error" and plan.if_failed.published == ("192.0.2.12", "192.0.2.13")
    assert plan.if_failed.last_change == NOW - 600 and plan.if_failed.previous == ()
    # Should the lease be gone, the alias shows what the DNS holds, by node.
    assert plan.if_fenced.result == "standby" and plan.if_fenced.published_nodes == ("wms02", "wms03")
    assert plan.if_fenced.spare == () and plan.if_fenced.published == ("192.0.2.12", "192.0.2.13")


def test_settle_picks_the_report_the_server_answer_calls_for():
    plan = plan_alias(ALIAS, facts())
    assert settle(plan, None, fenced=True) is plan.report
    refused = DnsError("YXRRSET", "prerequisite failed")
    assert settle(plan, refused, fenced=True) is plan.if_fenced
    # Without the lease as a prerequisite, the same code is a plain failure.
    failed = settle(plan, refused, fenced=False)
    assert failed.result == "error" and failed.error == f"update failed ({WHERE}): YXRRSET: prerequisite failed"
    badsig = settle(plan, DnsError("BADSIG", "the secret differs"), fenced=True)
    assert badsig.error == f"update failed ({WHERE}): BADSIG: the secret differs"
    assert badsig.published == ("192.0.2.12", "192.0.2.13")


def test_nothing_to_send_when_the_records_are_as_wanted():
    held = RRsets(a=frozenset({"192.0.2.11", "192.0.2.12", "192.0.2.13"}), aaaa=frozenset({"2001:db8::11"}),
                  a_ttl=60, aaaa_ttl=60)
    plan = plan_alias(ALIAS, facts(records={"wms-alice": held}))
    assert plan.records is None and plan.report.result == "unchanged"
    assert plan.report.last_change == NOW - 600 and plan.report.published == held.addresses
    # A TTL that differs is a change.
    assert plan_alias(ALIAS, facts(records={"wms-alice": replace(held, aaaa_ttl=300)})).records is not None


def test_num_out_and_exclusions_shape_the_records():
    alias = replace(ALIAS, num_out=1)
    cands = dict(facts().candidates, wms01=Candidate("wms01", False, None, ("agent not answering",)))
    plan = plan_alias(alias, facts(candidates=cands))
    assert plan.records.a == frozenset({"192.0.2.12"}) and plan.records.aaaa == frozenset()
    assert plan.report.spare == ("wms03",) and plan.report.excluded == {"wms01": "agent not answering"}


def test_an_unreadable_alias_shows_what_was_last_known_and_warns():
    err = DnsError("timeout", "no answer")
    plan = plan_alias(ALIAS, facts(records={"wms-alice": err}, known={"wms-alice": ("192.0.2.99",)}))
    assert plan.records is None and plan.report.result == "error"
    assert plan.report.published == ("192.0.2.99",)
    assert plan.report.error == plan.warning == f"cannot read the current records ({WHERE}): timeout: no answer"
    assert plan.report.published_nodes == ("wms01", "wms02", "wms03")  # what would be published


@pytest.mark.parametrize("lease, result, error", [
    (LeaseStatus(name="lease", me="boot1", role="standby", holder="boot2"), "standby", None),
    (LeaseStatus(name="lease", me="boot1", role="unknown", problem="SERVFAIL"), "error",
     f"not publishing ({WHERE}): SERVFAIL"),
])
def test_a_balancer_without_the_lease_sends_nothing(lease, result, error):
    plan = plan_alias(ALIAS, facts(lease=lease))
    assert plan.records is None
    assert (plan.report.result, plan.report.error) == (result, error)
    assert plan.report.published == ("192.0.2.12", "192.0.2.13")


def test_a_writer_with_a_lease_plans_the_update():
    lease = LeaseStatus(name="lease", me="boot1", role="writer", holder="boot1", fence_text="holder=boot1")
    assert plan_alias(ALIAS, facts(lease=lease)).records is not None


def test_no_usable_key_means_an_error_not_an_update():
    plan = plan_alias(ALIAS, facts(key_error="dns.key: no such file"))
    assert plan.records is None and plan.report.result == "error"
    assert plan.report.error == f"cannot update ({WHERE}): dns.key: no such file"


def test_addresses_unknown_unpublishable_or_unconfigured_exclude_the_node():
    addresses = {"wms01": ("fe80::1", "ff02::1"), "wms02": "cannot resolve 'wms02.lbtest.example' (Name unknown)",
                 "wms03": ()}
    groups = {"WMS": ("wms01", "wms02", "wms03", "wms09")}
    cands = dict(facts().candidates, wms09=Candidate("wms09", True, 50.0))
    plan = plan_alias(ALIAS, facts(addresses=addresses, groups=groups, candidates=cands))
    assert plan.report.excluded == {
        "wms01": "no address: fe80::1 is link-local, only reachable on its own network link; ff02::1 is multicast",
        "wms02": "no address: cannot resolve 'wms02.lbtest.example' (Name unknown)",
        "wms03": "no address: 'wms03.lbtest.example' has no address",
        "wms09": "no address: not a configured node",
    }
    # The nodes that resolved are shown, even when nothing of theirs may be published.
    assert plan.report.node_addresses == {"wms01": (), "wms03": ()}
    assert plan.records is None and plan.report.result == "error"
    assert plan.report.error == plan.warning == (
        f"nothing to publish ({WHERE}): group 'WMS' has no node with an address; the records stay as they are")
    assert plan.report.published == ("192.0.2.12", "192.0.2.13")


def test_a_link_local_address_is_dropped_and_the_rest_published():
    plan = plan_alias(ALIAS, facts(addresses=dict(ADDRESSES, wms01=("192.0.2.11", "fe80::11"))))
    assert plan.report.node_addresses["wms01"] == ("192.0.2.11",)
    assert plan.records.aaaa == frozenset() and "192.0.2.11" in plan.records.a


def test_a_failed_submission_test_excludes_and_an_unreadable_page_does_not():
    alias = replace(ALIAS, health_url="http://127.0.0.1:1/tests", health_max_age=3600)
    page = parse_page(f"{NOW - 60:.0f} 1 wms01.lbtest.example\n{NOW - 60:.0f} 0 wms02.lbtest.example\nbad line\n",
                      NOW, 3600)
    plan = plan_alias(alias, facts(pages={"wms-alice": page}))
    assert list(plan.report.excluded) == ["wms01"]
    assert plan.report.excluded["wms01"].startswith("submission test failed (ERRORFLAG 1 at ")
    assert plan.report.health_problem.startswith("http://127.0.0.1:1/tests: unparsable lines ignored: line 3:")
    assert plan.records is None and plan.report.published_nodes == ("wms02", "wms03")  # as the DNS holds
    unread = plan_alias(alias, facts(pages={"wms-alice": "connection refused"}))
    assert unread.report.excluded == {}
    assert unread.report.health_problem == ("cannot read the submission test page: connection refused "
                                            "(results ignored this cycle)")
    # No address outweighs a failed test: it says why the node can never be published.
    both = plan_alias(alias, facts(pages={"wms-alice": page}, addresses=dict(ADDRESSES, wms01="cannot resolve x")))
    assert both.report.excluded["wms01"] == "no address: cannot resolve x"


def test_no_good_node_keeps_the_one_published():
    cands = {n: Candidate(n, False, None, ("down",)) for n in WEIGHTS}
    plan = plan_alias(ALIAS, facts(candidates=cands))
    assert plan.report.fallback and plan.report.published_nodes == ("wms02",)  # already published, no churn
    assert plan.records == RRsets(a=frozenset({"192.0.2.12"}), ttl=60)


def test_a_disabled_alias_is_reported_and_left_alone():
    plan = plan_alias(replace(ALIAS, enabled=False), facts(records={}))
    assert plan == AliasPlan(plan.report)
    assert (plan.report.result, plan.report.enabled, plan.report.last_change) == ("disabled", False, NOW - 600)
