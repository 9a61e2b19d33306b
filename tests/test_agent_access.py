"""Allow-list matching and rate-limited refusal logging (pure)."""

import ipaddress
import sys
import threading

import pytest

from common.netutil import peer_address
from common.ratelimit import DenyLog, LogBudget
from lbagent.access import is_allowed

pytestmark = pytest.mark.unit

NETS = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1/128"))


def test_everyone_allowed_without_access_element():
    assert is_allowed("203.0.113.5", None)


def test_allow_list_matching():
    assert is_allowed("10.1.2.3", NETS)
    assert not is_allowed("11.0.0.1", NETS)
    assert is_allowed("::1", NETS)
    assert not is_allowed("::2", NETS)


def test_ipv4_mapped_ipv6_peer_is_matched_as_ipv4():
    assert peer_address("::ffff:10.0.0.7") == ipaddress.ip_address("10.0.0.7")
    assert is_allowed("::ffff:10.0.0.7", NETS)
    assert not is_allowed("::ffff:192.168.0.1", NETS)


def test_scoped_and_garbage_addresses():
    assert peer_address("fe80::1%eth0") == ipaddress.ip_address("fe80::1")
    assert not is_allowed("not-an-address", NETS)


def test_empty_allow_list_denies_all():
    assert not is_allowed("127.0.0.1", ())


def test_deny_log_once_per_period_per_address():
    d = DenyLog(period=60)
    assert d.should_log("10.9.9.9", 1000.0)
    assert not d.should_log("10.9.9.9", 1030.0)
    assert d.should_log("10.9.9.8", 1030.0)
    assert d.should_log("10.9.9.9", 1060.5)


def test_deny_log_is_bounded():
    d = DenyLog(period=60, max_entries=3)
    assert all(d.should_log(f"10.0.0.{i}", 0.0) for i in range(3))
    assert not d.should_log("10.0.0.99", 1.0)      # table full, nothing expired: stay quiet
    assert d.should_log("10.0.0.99", 100.0)        # old entries expired and were dropped



def test_deny_log_shared_by_threads():
    """Threads asking at once: each address is logged exactly once, and the bound holds."""
    d = DenyLog(period=60, max_entries=256)
    hosts = [f"10.0.{i // 256}.{i % 256}" for i in range(400)]  # more than the table holds
    logged: list[str] = []
    start = threading.Barrier(4)

    def ask() -> None:
        start.wait()
        logged.extend(h for h in hosts if d.should_log(h, 1.0))

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads often, to mix the calls
    try:
        threads = [threading.Thread(target=ask) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
    finally:
        sys.setswitchinterval(old)
    assert sorted(logged) == sorted(hosts[:256])  # once each, none beyond the bound


def test_log_budget_caps_lines_in_total_then_summarises_once():
    budget = LogBudget(limit=3, period=60.0)
    verdicts = [budget.take(100.0 + i) for i in range(6)]
    assert verdicts == [LogBudget.LOG] * 3 + [LogBudget.SUMMARY, LogBudget.SKIP, LogBudget.SKIP]
    # A new window (60 s after the first line of the previous one) has the whole budget again.
    assert budget.take(160.0) == LogBudget.LOG
    assert [budget.take(161.0) for _ in range(3)] == [LogBudget.LOG, LogBudget.LOG, LogBudget.SUMMARY]
