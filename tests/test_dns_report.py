"""The DNS arbiter's alert conditions and their wording (lbserver.dns.report)."""

from __future__ import annotations

import pytest

from lbserver.dns.lease import LeaseStatus
from lbserver.dns.report import AliasReport, alert_conditions, cleared_text

pytestmark = pytest.mark.unit


def report(alias: str, result: str, **kw) -> AliasReport:
    return AliasReport(alias=alias, fqdn=f"{alias}.lbtest.example", group="WMS", enabled=True, result=result, **kw)


def test_each_problem_of_a_report_is_one_condition():
    rep = report("wms-alice", "error", excluded={"wms01": "drained"}, fallback=True, published_nodes=("wms02",),
                 error="update failed (x): BADSIG: y", health_problem="cannot read the page")
    assert alert_conditions([rep], {}, None) == {
        "excluded/wms-alice/wms01": "wms-alice.lbtest.example: node wms01 excluded (drained)",
        "fallback/wms-alice": "wms-alice.lbtest.example: no good node left; keeping wms02 published "
                              "(at-least-one rule)",
        "dns/wms-alice": "wms-alice.lbtest.example: update failed (x): BADSIG: y",
        "health/wms-alice": "wms-alice.lbtest.example: cannot read the page",
    }


def test_a_standby_alias_keeps_its_conditions_but_its_dns_error():
    active = {"excluded/wms-alice/wms01": "old", "dns/wms-alice": "old error", "excluded/wms-bob/wms03": "bob's"}
    standby = report("wms-alice", "standby", excluded={"wms04": "drained"})  # new exclusions: the writer's to say
    disabled = AliasReport(alias="wms-bob", fqdn="wms-bob.lbtest.example", group="WMS", enabled=False,
                           result="disabled")
    assert alert_conditions([standby, disabled], active, None) == {"excluded/wms-alice/wms01": "old"}


def test_only_a_lease_problem_to_fix_is_a_condition():
    passing = LeaseStatus(name="lease.lbtest.example", me="boot1", role="unknown", problem="timeout")
    assert alert_conditions([], {}, passing) == {}
    to_fix = LeaseStatus(name="lease.lbtest.example", me="boot1", role="writer", problem="REFUSED", alert=True)
    assert alert_conditions([], {}, to_fix) == {"lease": "DNS lease lease.lbtest.example: REFUSED"}


def test_cleared_conditions_say_what_is_good_again():
    assert cleared_text("excluded/wms-alice/wms01", "x") == "alias wms-alice: node wms01 is good again (no longer excluded)"
    assert cleared_text("dns/wms-alice", "x") == "alias wms-alice: DNS works again (records read and updated)"
    assert cleared_text("other", "it was bad") == "resolved: it was bad"
