"""The DNS lease: its pure decisions and update messages, then two arbiters on one real BIND zone.

The arbiters here are in-process (no daemons) with their clocks given by the
test, so expiry, takeover, lost races and fencing are exact and fast; the
same behaviour between real lbserver processes is in test_dns_writers.py.
"""

from __future__ import annotations

import socket

import dns.query
import dns.rdataclass
import dns.rdatatype
import pytest

from tests.support.doubles import Clock
from tests.support.dns import NODES, write_config
from lbserver import config
from lbserver.config.tsigkey import load_key
from lbserver.dns import lease as leasemod
from lbserver.dns.addresses import resolve_node
from lbserver.dns.arbiter import DnsArbiter
from lbserver.dns.report import format_reports
from lbserver.dns.decide import Candidate
from lbserver.dns.lease import (ACQUIRE, HOLD, RENEW, STANDBY, TAKEOVER, Lease, build_release, build_take,
                                decide_lease, fence, lease_settings, lease_text, parse)
from lbserver.dns.update import RRsets, build_update

GROUPS = {"WMS": tuple(NODES)}
WEIGHTS = {"wms01": 40.0, "wms02": 30.0, "wms03": 20.0, "wms04": 10.0}
ALICE = '    <alias name="wms-alice" group="WMS" num-out="1"/>'
T0 = 1_800_000_000.0
LEASE_TIME = 30.0


def rec(text: str) -> tuple[bytes, ...]:
    return (text.encode(),)


# -- parsing -------------------------------------------------------------------

@pytest.mark.unit
def test_a_well_formed_record_is_read():
    lease = parse([rec("holder=boot1:8008 expires=1764500000")])
    assert (lease.holder, lease.expires, lease.problem) == ("boot1:8008", 1764500000.0, None)
    assert lease.text == "holder=boot1:8008 expires=1764500000" and not lease.absent
    # A TXT record may come as several strings; unknown fields are left for later versions.
    split = parse([(b"holder=boot1:8008 ", b"expires=1764500000 version=2")])
    assert (split.holder, split.expires, split.problem) == ("boot1:8008", 1764500000.0, None)
    assert parse([]).absent and parse([]).problem is None


@pytest.mark.parametrize("records,expected", [
    ([rec("garbage")], "not holder=NAME expires=SECONDS: 'garbage'"),
    ([rec("")], "no holder=: ''"),
    ([rec("holder=boot1:8008")], "no expires=: 'holder=boot1:8008'"),
    ([rec("holder= expires=5")], "no holder="),
    ([rec("holder=a expires=soon")], "expires= is not a time in seconds: 'holder=a expires=soon'"),
    ([rec("holder=a expires=nan")], "expires= is not a time in seconds"),
    ([rec("holder=a expires=-5")], "expires= is not a time in seconds"),
    ([rec("holder=a holder=b expires=5")], "holder= given twice"),
    ([rec("holder=\x1b[2J expires=5")], "holder= is not a printable name: 'holder=\\x1b[2J expires=5'"),
    ([(b"holder=\xff\x00 expires=5",)], "not ASCII text: 'holder=\\xff\\x00 expires=5'"),
    ([rec("holder=a expires=5"), rec("holder=b expires=6")],
     "2 TXT records at the lease name instead of one ('holder=a expires=5', 'holder=b expires=6')"),
])
@pytest.mark.unit
def test_a_malformed_record_is_a_problem_never_a_crash(records, expected):
    lease = parse(records)
    assert lease.problem is not None and lease.problem.startswith(expected), lease.problem
    assert not lease.absent
    # An unreadable record is never taken for the lease of anybody in particular.
    d = decide_lease(lease, "a", T0, LEASE_TIME)
    assert d.action == STANDBY and "unknown balancer" in d.reason


@pytest.mark.unit
def test_a_huge_record_is_shown_shortened():
    lease = parse([(b"x" * 200, b"y" * 200)])
    assert lease.problem is not None and len(lease.problem) < 200 and "..." in lease.problem


# -- decisions -----------------------------------------------------------------

def own(expires: float, holder: str = "boot1:8008") -> Lease:
    return parse([rec(lease_text(holder, expires))])


@pytest.mark.unit
def test_free_lease_is_acquired():
    assert decide_lease(Lease(), "boot1:8008", T0, LEASE_TIME).action == ACQUIRE


@pytest.mark.unit
def test_own_lease_is_renewed_only_when_half_is_gone():
    lease = own(T0 + 20)
    mine = frozenset({lease.text})
    assert decide_lease(lease, "boot1:8008", T0, LEASE_TIME, mine=mine).action == HOLD       # 20 s of 30 left
    assert decide_lease(lease, "boot1:8008", T0 + 5.1, LEASE_TIME, mine=mine).action == RENEW  # 14.9 s left
    expired = decide_lease(lease, "boot1:8008", T0 + 60, LEASE_TIME, mine=mine)
    assert expired.action == RENEW  # still exactly what we wrote: nobody took it, renew it


@pytest.mark.unit
def test_another_balancer_lease_is_respected_until_it_expires():
    lease = own(T0 + 20, holder="boot2:8008")
    d = decide_lease(lease, "boot1:8008", T0, LEASE_TIME)
    assert d.action == STANDBY and "boot2:8008" in d.reason and not d.conflict
    assert decide_lease(lease, "boot1:8008", T0 + 19.9, LEASE_TIME).action == STANDBY
    d = decide_lease(lease, "boot1:8008", T0 + 20, LEASE_TIME)
    assert d.action == TAKEOVER and "expired" in d.reason


@pytest.mark.unit
def test_a_valid_lease_is_taken_over_when_its_holders_heartbeats_stopped():
    other = parse([rec(f"holder=boot1 expires={T0 + 1000:.0f}")])
    kw = dict(silence=20.0)
    assert decide_lease(other, "boot2", T0, 1200.0, silent_for=None, **kw).action == STANDBY
    assert decide_lease(other, "boot2", T0, 1200.0, silent_for=19.9, **kw).action == STANDBY
    d = decide_lease(other, "boot2", T0, 1200.0, silent_for=20.0, **kw)
    assert d.action == TAKEOVER and "no heartbeat from boot1 for 20.0 s" in d.reason
    # Without peers (no silence configured), only the expiry counts.
    assert decide_lease(other, "boot2", T0, 1200.0, silent_for=500.0).action == STANDBY


@pytest.mark.unit
def test_heartbeats_count_only_once_heard_while_the_holder_held_the_lease():
    """A holder never heard since it took the lease (across a partition, say) keeps it until it expires."""
    mono = {"now": 100.0}
    heard: dict[str, float] = {}
    keeper = leasemod.LeaseKeeper(leasemod.LeaseSettings("_l", 1200.0, "boot2", silence=20.0),
                                  heard=heard.get, mono=lambda: mono["now"])
    lease = parse([rec(f"holder=boot1 expires={T0 + 1000:.0f}")])
    heard["boot1"] = 90.0  # heard before boot1 was seen holding the lease
    assert keeper._silent_for(lease) is None
    mono["now"] = 200.0
    assert keeper._silent_for(lease) is None  # still not heard since: no takeover before expiry
    heard["boot1"] = 201.0
    mono["now"] = 215.0
    assert keeper._silent_for(lease) == 14.0
    # Another holder: counted from when it is first seen holding it.
    assert keeper._silent_for(parse([rec(f"holder=boot3 expires={T0 + 1000:.0f}")])) is None
    assert keeper._silent_for(parse([rec(f"holder=boot2 expires={T0 + 1000:.0f}")])) is None  # my own


@pytest.mark.unit
def test_a_record_naming_me_that_i_did_not_write():
    lease = own(T0 + 20)
    # A restart: claimed at once, with a fresh record, so that this process wrote the one it holds.
    assert decide_lease(lease, "boot1:8008", T0, LEASE_TIME, trust_name=True).action == RENEW
    # --once (a new process every run): held as it is while more than half is left.
    assert decide_lease(lease, "boot1:8008", T0, LEASE_TIME, trust_name=True, adopt=True).action == HOLD
    # After this process wrote a lease: another balancer uses the same name. Stand by and say so.
    d = decide_lease(lease, "boot1:8008", T0, LEASE_TIME, mine=frozenset({"other"}), trust_name=False)
    assert d.action == STANDBY and d.conflict and "same lease-holder" in d.reason
    assert decide_lease(lease, "boot1:8008", T0 + 21, LEASE_TIME, trust_name=False).action == TAKEOVER


@pytest.mark.unit
def test_an_unreadable_record_is_taken_over_once_it_stayed_the_same_for_a_lease_time():
    lease = parse([rec("garbage")])
    assert decide_lease(lease, "a", T0, LEASE_TIME, unreadable_for=LEASE_TIME - 1).action == STANDBY
    d = decide_lease(lease, "a", T0, LEASE_TIME, unreadable_for=LEASE_TIME)
    assert d.action == TAKEOVER and "garbage" in d.reason


@pytest.mark.unit
def test_lease_text_and_settings():
    assert lease_text("boot1:8008", 1764500000.2) == "holder=boot1:8008 expires=1764500001"
    base = dict(server="127.0.0.1", port=53, zone="example.org", key_file="k")
    on = lease_settings(config.Dns(**base), poll_interval=10.0, terminal_port=8008)
    assert on == leasemod.LeaseSettings("_lbserver-lease", 1200.0, f"{socket.gethostname()}:8008")
    # With peers: the same long lease, and a takeover after two poll intervals (three heartbeats) of silence.
    assert lease_settings(config.Dns(**base), 10.0, 8008, heartbeat=2.0).silence == 20.0
    assert lease_settings(config.Dns(**base), 1.0, 8008, heartbeat=2.0).silence == 6.0
    assert lease_settings(config.Dns(**base), 1000.0, 8008).time == 3000.0  # never under three poll intervals
    given = config.Dns(**base, lease="lock", lease_time=90.0, lease_holder="boot1")
    assert lease_settings(given, 10.0, 8008) == leasemod.LeaseSettings("lock", 90.0, "boot1")
    assert lease_settings(config.Dns(**base, lease=""), 10.0, 8008) is None


# -- update messages (no sockets) ------------------------------------------------

@pytest.fixture
def key(tmp_path):
    path = tmp_path / "k.key"
    path.write_text('key "lbkey" { algorithm hmac-sha256; secret "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"; };\n')
    return load_key(str(path))


def _rr(rrset) -> tuple:
    """An RRset of an update message as it goes on the wire (a deletion has class ANY, no data)."""
    rdclass = rrset.deleting if rrset.deleting is not None else rrset.rdclass
    return (rrset.name.to_text(), dns.rdataclass.to_text(rdclass), dns.rdatatype.to_text(rrset.rdtype),
            rrset.ttl, sorted(r.to_text() for r in rrset))


@pytest.mark.unit
def test_take_from_nothing_requires_that_no_record_exists(key):
    upd = build_take("example.org", "_lbserver-lease", key, Lease(), "holder=a expires=5", 60)
    assert [_rr(r) for r in upd.prerequisite] == [("_lbserver-lease.example.org.", "NONE", "TXT", 0, [])]
    assert [_rr(r) for r in upd.update] == [("_lbserver-lease.example.org.", "IN", "TXT", 60,
                                             ['"holder=a expires=5"'])]


@pytest.mark.unit
def test_take_over_requires_exactly_the_records_read(key):
    seen = parse([rec("holder=b expires=5"), (b"junk", b"more")])
    upd = build_take("example.org", "_lbserver-lease", key, seen, "holder=a expires=9", 60)
    # "RRset exists (value dependent)": class IN, TTL 0, every record read, string for string
    # (on the wire, one RR each; the server compares them as one RRset).
    assert sorted(_rr(r) for r in upd.prerequisite) == [
        ("_lbserver-lease.example.org.", "IN", "TXT", 0, ['"holder=b expires=5"']),
        ("_lbserver-lease.example.org.", "IN", "TXT", 0, ['"junk" "more"'])]
    assert [_rr(r) for r in upd.update] == [
        ("_lbserver-lease.example.org.", "ANY", "TXT", 0, []),                          # delete the RRset
        ("_lbserver-lease.example.org.", "IN", "TXT", 60, ['"holder=a expires=9"'])]    # add ours


@pytest.mark.unit
def test_release_and_fence_require_our_record(key):
    upd = build_release("example.org", "_lbserver-lease", key, "holder=a expires=9")
    assert [_rr(r) for r in upd.prerequisite] == [
        ("_lbserver-lease.example.org.", "IN", "TXT", 0, ['"holder=a expires=9"'])]
    assert [_rr(r) for r in upd.update] == [("_lbserver-lease.example.org.", "ANY", "TXT", 0, [])]
    alias = build_update("example.org", "wms", RRsets(a=frozenset({"192.0.2.1"}), ttl=60), key,
                         fence("example.org", "_lbserver-lease", "holder=a expires=9"))
    assert [_rr(r) for r in alias.prerequisite] == [
        ("_lbserver-lease.example.org.", "IN", "TXT", 0, ['"holder=a expires=9"'])]
    assert ("wms.example.org.", "IN", "A", 60, ["192.0.2.1"]) in [_rr(r) for r in alias.update]


# -- configuration ---------------------------------------------------------------

def _load(tmp_path, named, dns_attrs: str, poll: str = ""):
    path = write_config(tmp_path / "lbsconfig.xml", named, ALICE, dns_attrs=dns_attrs)
    if poll:
        path.write_text(path.read_text().replace("<nodes>", f"<poll {poll}/>\n  <nodes>"))
    return config.load(str(path))


@pytest.mark.system
def test_lease_configuration(tmp_path, named_server):
    cfg = _load(tmp_path, named_server, "")
    assert (cfg.dns.lease, cfg.dns.lease_time, cfg.dns.lease_holder) == ("_lbserver-lease", None, None)
    cfg = _load(tmp_path, named_server, 'lease="locks.lb" lease-time="45" lease-holder="boot1.example.org:8008"',
                poll='interval="15"')
    assert (cfg.dns.lease, cfg.dns.lease_time, cfg.dns.lease_holder) == ("locks.lb", 45.0, "boot1.example.org:8008")
    assert _load(tmp_path, named_server, 'lease=""').dns.lease == ""


@pytest.mark.parametrize("attrs,message", [
    ('lease="bad name!"', "lease='bad name!': not a valid DNS name"),
    ('lease="lock.other.example."', "not inside zone"),
    ('lease="wms-alice"', "needs a name of its own, not alias 'wms-alice'"),
    ('lease-holder="boot 1"', "lease-holder='boot 1': use 1 to 100 letters"),
    ('lease-holder="a=b"', "lease-holder='a=b'"),
    ('lease-time="0"', "lease-time"),
    ('lease-time="15"', "lease-time=15 must be at least twice the poll interval (10 s)"),
])
@pytest.mark.system
def test_bad_lease_configuration_is_refused(tmp_path, named_server, attrs, message):
    with pytest.raises(config.ConfigError, match=r"lbsconfig.xml:\d+: ") as exc:
        _load(tmp_path, named_server, attrs)
    assert message in str(exc.value)


# -- two arbiters on one real zone -------------------------------------------------

def healthy(**override) -> dict[str, Candidate]:
    return {n: (Candidate(n, True, w, ()) if override.get(n, True)
                else Candidate(n, False, float("nan"), ("agent not answering",)))
            for n, w in WEIGHTS.items()}


def arbiter(tmp_path, named, holder: str, clock: Clock, dns_attrs: str = "", **kw):
    path = write_config(tmp_path / f"{holder}.xml", named, ALICE,
                        dns_attrs=f'lease-holder="{holder}" lease-time="{LEASE_TIME:g}" {dns_attrs}')
    cfg = config.load(str(path))
    return DnsArbiter(cfg.dns, cfg.nodes, clock=clock, **kw)


def lease_records(named) -> list[str]:
    q = dns.message.make_query(f"_lbserver-lease.{named.zone}", "TXT")
    resp = dns.query.tcp(q, "127.0.0.1", port=named.port, timeout=3)
    return sorted(b"".join(r.strings).decode() for rrset in resp.answer for r in rrset)


@pytest.mark.system
def test_one_writer_the_other_stands_by_then_takes_over_at_expiry(tmp_path, named_server):
    clock = Clock(T0)
    a = arbiter(tmp_path, named_server, "boot1", clock)
    b = arbiter(tmp_path, named_server, "boot2", clock)
    [rep] = a.run_cycle(healthy(), GROUPS)
    assert rep.result == "updated" and rep.lease["role"] == "writer" and rep.lease["holder"] == "boot1"
    assert lease_records(named_server) == [f"holder=boot1 expires={T0 + LEASE_TIME:.0f}"]
    assert named_server.dig("wms-alice") == ["192.0.2.11", "192.0.2.12", "192.0.2.13"]
    serial = named_server.soa_serial()
    # b sees wms01 down: it would publish another set, but it stands by and sends nothing.
    [rep] = b.run_cycle(healthy(wms01=False), GROUPS)
    assert rep.result == "standby" and rep.error is None
    assert rep.lease == {"name": "_lbserver-lease.lbtest.example", "holder": "boot1", "expires": T0 + LEASE_TIME,
                         "me": "boot2", "role": "standby", "problem": None}
    assert rep.published == ("192.0.2.11", "192.0.2.12", "192.0.2.13")  # what the DNS holds: the writer's choice
    assert rep.published_nodes == ("wms01", "wms02", "wms03") and "wms01" in rep.excluded
    table = format_reports([rep])
    assert table.startswith("DNS lease _lbserver-lease.lbtest.example: held by boot1 until ")
    assert "this balancer (boot2) stands by" in table and "standby" in table.splitlines()[3]
    assert named_server.soa_serial() == serial
    # a renews when half of the lease is gone, and only then.
    clock.now = T0 + 10
    assert a.run_cycle(healthy(), GROUPS)[0].result == "unchanged" and named_server.soa_serial() == serial
    clock.now = T0 + 16
    assert a.run_cycle(healthy(), GROUPS)[0].lease["expires"] == T0 + 16 + LEASE_TIME
    assert named_server.soa_serial() == serial + 1
    # a goes silent; b takes over once the lease has expired, and publishes its own view.
    clock.now = T0 + 16 + LEASE_TIME - 1
    assert b.run_cycle(healthy(wms01=False), GROUPS)[0].result == "standby"
    clock.now = T0 + 16 + LEASE_TIME
    [rep] = b.run_cycle(healthy(wms01=False), GROUPS)
    assert rep.result == "updated" and rep.lease["role"] == "writer" and rep.lease["holder"] == "boot2"
    assert named_server.dig("wms-alice") == ["192.0.2.12", "192.0.2.13"]
    # a comes back: it reads b's lease and stands by.
    [rep] = a.run_cycle(healthy(), GROUPS)
    assert rep.result == "standby" and rep.lease["holder"] == "boot2"
    assert named_server.dig("wms-alice") == ["192.0.2.12", "192.0.2.13"]


@pytest.mark.system
def test_a_frozen_writer_that_resumes_cannot_write(tmp_path, named_server):
    """Fencing: a's cycle is interrupted between reading its lease and writing; b takes over meanwhile."""
    clock_a, clock_b = Clock(T0), Clock(T0)
    b = arbiter(tmp_path, named_server, "boot2", clock_b)
    frozen = {"armed": False}

    def resolver(node):
        if frozen["armed"]:  # a is "frozen" here: its lease expires and b takes over
            frozen["armed"] = False
            clock_b.now = T0 + 10 * LEASE_TIME
            [rep_b] = b.run_cycle(healthy(), GROUPS)
            assert rep_b.lease["role"] == "writer", rep_b
        return resolve_node(node)

    a = arbiter(tmp_path, named_server, "boot1", clock_a, resolver=resolver)
    assert a.run_cycle(healthy(), GROUPS)[0].lease["role"] == "writer"
    assert named_server.dig("wms-alice") == ["192.0.2.11", "192.0.2.12", "192.0.2.13"]
    frozen["armed"] = True
    serial = named_server.soa_serial()
    [rep] = a.run_cycle(healthy(wms01=False, wms02=False), GROUPS)  # a now wants 192.0.2.13 alone
    # Its update carried the lease it held: refused as a whole, so the alias is b's and a stands by.
    assert rep.result == "standby" and rep.lease["role"] == "standby" and rep.lease["holder"] == "boot2"
    assert named_server.dig("wms-alice") == ["192.0.2.11", "192.0.2.12", "192.0.2.13"]
    assert named_server.soa_serial() == serial + 1  # b's takeover of the lease, nothing else
    assert lease_records(named_server)[0].startswith("holder=boot2 ")


@pytest.mark.system
def test_a_lost_race_means_standby(tmp_path, named_server, monkeypatch):
    clock = Clock(T0)
    a = arbiter(tmp_path, named_server, "boot1", clock)
    b = arbiter(tmp_path, named_server, "boot2", clock)
    real_read = leasemod.read_lease
    race = {"on": True}

    def read_then_lose(dns_cfg, name):
        seen = real_read(dns_cfg, name)
        if race["on"] and dns_cfg.lease_holder == "boot1":
            race["on"] = False
            assert b.run_cycle(healthy(wms01=False), GROUPS)[0].lease["role"] == "writer"  # b gets there first
        return seen

    monkeypatch.setattr(leasemod, "read_lease", read_then_lose)
    [rep] = a.run_cycle(healthy(), GROUPS)  # a read "free", but its "RRset does not exist" failed
    assert rep.result == "standby" and rep.lease["holder"] == "boot2" and rep.lease["problem"] is None
    assert named_server.dig("wms-alice") == ["192.0.2.12", "192.0.2.13"]


@pytest.mark.system
def test_release_lets_the_standby_take_over_at_once(tmp_path, named_server):
    clock = Clock(T0)
    a = arbiter(tmp_path, named_server, "boot1", clock)
    b = arbiter(tmp_path, named_server, "boot2", clock)
    a.run_cycle(healthy(), GROUPS)
    assert b.run_cycle(healthy(wms01=False), GROUPS)[0].result == "standby"
    assert a.release() and lease_records(named_server) == []
    assert not a.release()  # nothing held any more
    [rep] = b.run_cycle(healthy(wms01=False), GROUPS)
    assert rep.result == "updated" and rep.lease["holder"] == "boot2"
    # A release never deletes another balancer's lease, even with a stale idea of ours.
    a.run_cycle(healthy(), GROUPS)
    assert lease_records(named_server)[0].startswith("holder=boot2 ")


@pytest.mark.system
@pytest.mark.parametrize("records", [["garbage"], ["holder=boot9"], ["holder=boot9 expires=1", "x"]])
def test_an_unreadable_lease_record_blocks_for_one_lease_time_then_is_taken_over(tmp_path, named_server, records):
    assert named_server.update(*[("add", "_lbserver-lease", 60, "TXT", f'"{r}"') for r in records]) == 0
    clock = Clock(T0)
    a = arbiter(tmp_path, named_server, "boot1", clock)
    [rep] = a.run_cycle(healthy(), GROUPS)
    assert rep.result == "standby" and named_server.dig("wms-alice") == []
    assert "unreadable lease record" in rep.lease["problem"] and rep.lease["holder"] in (None, "boot9")
    assert a._tracker.active["lease"].startswith("DNS lease _lbserver-lease.lbtest.example: unreadable")
    assert "  ! lease: unreadable lease record" in format_reports([rep])
    clock.now = T0 + LEASE_TIME
    [rep] = a.run_cycle(healthy(), GROUPS)
    assert rep.result == "updated" and rep.lease["role"] == "writer" and rep.lease["problem"] is None
    assert lease_records(named_server) == [f"holder=boot1 expires={clock.now + LEASE_TIME:.0f}"]
    assert "lease" not in a._tracker.active


@pytest.mark.system
def test_two_balancers_with_one_name_do_not_both_write(tmp_path, named_server):
    clock = Clock(T0)
    a = arbiter(tmp_path, named_server, "boot1", clock)
    (tmp_path / "twin").mkdir()
    twin = arbiter(tmp_path / "twin", named_server, "boot1", clock)
    assert a.run_cycle(healthy(), GROUPS)[0].lease["role"] == "writer"
    # The twin starts: a record naming it is taken for its own from before a restart, and claimed.
    assert twin.run_cycle(healthy(wms01=False), GROUPS)[0].lease["role"] == "writer"
    # a sees its name on a record it did not write: another process uses it. It stands by and says so.
    [rep] = a.run_cycle(healthy(), GROUPS)
    assert rep.result == "standby" and "same lease-holder" in rep.lease["problem"]
    assert named_server.dig("wms-alice") == ["192.0.2.12", "192.0.2.13"]


@pytest.mark.system
def test_refused_lease_publishes_without_it_and_says_so(tmp_path, named_server):
    named_server.stop()
    named_server.write_conf(
        "  recursion no;\n  notify no;\n",
        f'zone "{named_server.zone}" {{ type primary; file "{named_server.dir}/{named_server.zone}.db"; '
        f'update-policy {{ grant lbkey name wms-alice.{named_server.zone}. A AAAA; }}; }};\n',
        f'key "lbkey" {{ algorithm hmac-sha256; secret "{named_server.secret_b64}"; }};\n')
    named_server.start()
    a = arbiter(tmp_path, named_server, "boot1", Clock(T0))
    [rep] = a.run_cycle(healthy(), GROUPS)
    assert rep.result == "updated" and named_server.dig("wms-alice") == ["192.0.2.11", "192.0.2.12", "192.0.2.13"]
    assert rep.lease["role"] == "writer" and rep.lease["holder"] is None
    assert "REFUSED" in rep.lease["problem"] and "lease=\"\"" in rep.lease["problem"]
    assert "allow key 'lbkey' to update TXT records at _lbserver-lease.lbtest.example" in rep.lease["problem"]
    assert "lease" in a._tracker.active
    assert "writes the aliases without a lease" in format_reports([rep])


@pytest.mark.system
def test_no_lease_when_turned_off(tmp_path, named_server):
    a = arbiter(tmp_path, named_server, "boot1", Clock(T0), dns_attrs='lease=""')
    [rep] = a.run_cycle(healthy(), GROUPS)
    assert rep.result == "updated" and rep.lease is None and rep.to_dict()["lease"] is None
    assert lease_records(named_server) == []
    assert format_reports([rep]).startswith("ALIAS")


@pytest.mark.system
def test_no_enabled_alias_holds_no_lease(tmp_path, named_server):
    clock = Clock(T0)
    a = arbiter(tmp_path, named_server, "boot1", clock)
    a.run_cycle(healthy(), GROUPS)
    assert lease_records(named_server)
    cfg = config.load(str(write_config(tmp_path / "off.xml", named_server,
                                       '    <alias name="wms-alice" group="WMS" enabled="false"/>',
                                       dns_attrs='lease-holder="boot1"')))
    a.reconfigure(cfg.dns, cfg.nodes)
    [rep] = a.run_cycle(healthy(), GROUPS)
    assert rep.result == "disabled" and rep.lease is None
    assert lease_records(named_server) == []  # given back: another balancer may publish


@pytest.mark.system
def test_renewals_with_the_defaults_change_the_zone_at_most_six_times_an_hour(tmp_path, named_server):
    """An hour of 10 s cycles (the default poll interval and lease-time), with up to 0.9 s of jitter.

    Every quiet cycle costs one query (the SOA); a cycle after a renewal reads what changed (IXFR, then the
    lease record).
    """
    clock = Clock(T0)
    path = write_config(tmp_path / "boot1.xml", named_server, ALICE, dns_attrs='lease-holder="boot1"')
    cfg = config.load(str(path))
    a = DnsArbiter(cfg.dns, cfg.nodes, clock=clock)
    a.run_cycle(healthy(), GROUPS)
    a.run_cycle(healthy(), GROUPS)  # reads what its first cycle wrote
    serial, published = named_server.soa_serial(), named_server.dig("wms-alice")
    bumps, last, quiet = [], serial, []
    for k in range(1, 361):
        clock.now = T0 + 10 * k + (k * 7919 % 10) / 10  # deterministic jitter, 0 to 0.9 s
        before = a.figures()[1]
        [rep] = a.run_cycle(healthy(), GROUPS)
        assert rep.result == "unchanged" and rep.lease["role"] == "writer"
        now = named_server.soa_serial()
        if now != last:
            bumps.append(k)
        elif k - 1 not in bumps:
            quiet.append(a.figures()[1] - before)
        last = now
    gaps = {y - x for x, y in zip(bumps, bumps[1:])}
    print(f"\n{len(bumps)} renewals in 360 cycles of 10 s (one hour), every {sorted(gaps)} cycles")
    assert 5 <= len(bumps) <= 6 and min(gaps) >= 60  # one zone change per 10 minutes at most
    assert set(quiet) == {1}  # a cycle with nothing new: the SOA query only
    assert named_server.dig("wms-alice") == published
