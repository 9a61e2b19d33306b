"""Two real lbservers publish the same alias into one real BIND zone: one writes, the other stands by.

The two balancers see the group differently (the second one's address for
xapp1 refuses connections), so each would publish another set: without the
lease they would rewrite the alias at every cycle. The alias is queried all
along (dnspython, TCP, ~50 times a second) and must never be empty; the zone's
SOA serial may only move for the lease renewals, whose rate is measured.
Takeover times after SIGTERM (the lease is released) and SIGSTOP (the lease
must expire) are measured and printed (run with -s to see them).
"""

from __future__ import annotations

import signal
import subprocess
import time
import urllib.request

import lxml.html
import pytest

from tests.support.aliaswatch import AliasWatch, lease_holder
from tests.support.faults import LogCapture
from tests.support.browser import chromium
from tests.support.cluster import Balancer, PageServer, lbctl, server_xml, start_agent, start_balancer
from tests.support import ROOT, free_port, python_cmd, wait_until

pytestmark = pytest.mark.system

POLL_INTERVAL = 1.0
POLL = f'interval="{POLL_INTERVAL:g}" timeout="0.5" rise="1" fall="1"'
LEASE_TIME = 3 * POLL_INTERVAL  # short, so that takeover by expiry (no <peers>) is quick
VIEW_A = ("127.0.0.2", "127.0.0.3")  # boot1 sees all three: the most loaded (xapp3) is left out
VIEW_B = ("127.0.0.3",)              # boot2 cannot reach xapp1: of xapp2 and xapp3, the best


def dns_element(named, holder: str, extra: str = "", alias_attrs: str = "") -> str:
    if "lease-time" not in extra:
        extra = f'lease-time="{LEASE_TIME:g}" {extra}'
    return (f'<dns server="127.0.0.1" port="{named.port}" zone="{named.zone}" ttl="60" timeout="2" '
            f'key-file="{named.key_file}" lease-holder="{holder}" {extra}>'
            f'<alias name="wms" group="PROD" num-out="1" {alias_attrs}/></dns>')


def lease_of(bal: Balancer) -> dict:
    return bal.status()["aliases"][0]["lease"] or {}


def restart(procs, bal: Balancer) -> LogCapture:
    """Start ``bal`` again on its ports; return once its management service answers."""
    bal.proc = procs.start(python_cmd("lbserver", "-f", "-c", str(bal.config)))
    logs = LogCapture(bal.proc)

    def serving() -> dict:
        if bal.proc.poll() is not None:
            raise AssertionError(f"lbserver exited with {bal.proc.returncode}: " + "\n".join(logs.lines[-20:]))
        return bal.status()

    wait_until(serving, 20, what="the restarted lbserver serving")
    return logs


@pytest.fixture
def held_page():
    """A submission test page (no results) whose next request can be held open.

    Holding it freezes a balancer's DNS cycle after it read the lease and
    before it writes the alias: the moment fencing is for.
    """
    page = PageServer(b"# TIMESTAMP ERRORFLAG HOSTNAME\n", "/alice.txt")
    yield page
    page.close()


def test_two_balancers_one_writer_takeovers_and_fencing(procs, tmp_path, named_server, held_page):
    agents = [start_agent(procs, tmp_path, f"xapp{i + 1}", f"127.0.0.{i + 2}", load)
              for i, load in enumerate((10, 40, 70))]
    members = [(a.name, a.url) for a in agents]
    refused = [("xapp1", f"http://127.0.0.2:{free_port('127.0.0.2')}")] + members[1:]  # nothing listens there
    for d in ("boot1", "boot2"):
        (tmp_path / d).mkdir()
    a = start_balancer(procs, tmp_path / "boot1", {"PROD": members}, poll=POLL,
                       extra=dns_element(named_server, "boot1"))
    logs_a = LogCapture(a.proc)
    wait_until(lambda: tuple(named_server.dig("wms")) == VIEW_A, 20, what="boot1 publishes")
    assert lease_of(a)["role"] == "writer" and lease_holder(named_server) == "boot1"
    b = start_balancer(procs, tmp_path / "boot2", {"PROD": refused}, poll=POLL,
                       extra=dns_element(named_server, "boot2", alias_attrs=f'health-url="{held_page.url}"'))
    logs_b = LogCapture(b.proc)
    wait_until(lambda: b.status()["nodes"]["xapp1"]["health"] == "down", 15, what="boot2 sees xapp1 down")
    wait_until(lambda: lease_of(b).get("role") == "standby", 15, what="boot2 stands by")
    report = []

    with AliasWatch(named_server) as watch:
        # 1. Both running, views differ: the alias never changes; the serial moves only for renewals.
        t0, serial0 = time.monotonic(), named_server.soa_serial()
        started = b.status()["last_poll"]["started"]
        wait_until(lambda: b.status()["last_poll"]["started"] >= started + 8 * POLL_INTERVAL, 20,
                   what="8 cycles of boot2")
        window, bumps = time.monotonic() - t0, named_server.soa_serial() - serial0
        assert {s.addrs for s in watch.since(t0)} == {VIEW_A}
        assert lease_holder(named_server) == "boot1"
        aliases_b = b.status()["aliases"][0]
        assert aliases_b["result"] == "standby" and aliases_b["lease"]["holder"] == "boot1"
        assert aliases_b["published"] == list(VIEW_A) and "xapp1" in aliases_b["excluded"]
        # Renewed when less than half of the lease is left: about every LEASE_TIME/2 rounded up to a cycle.
        assert 1 <= bumps <= window / (LEASE_TIME / 2) + 1, (bumps, window)
        seen = watch.since(t0)
        bumped = [y.t for x, y in zip(seen, seen[1:]) if y.serial != x.serial]
        gaps = [y - x for x, y in zip(bumped, bumped[1:])] or [window]
        report.append(f"renewals: {bumps} serial bumps in {window:.1f} s, one every {min(gaps):.1f} to "
                      f"{max(gaps):.1f} s (lease-time {LEASE_TIME:g} s, poll interval {POLL_INTERVAL:g} s)")

        # 2. boot1 stops cleanly: it gives the lease back, boot2 takes over at its next cycle.
        t_kill = time.monotonic()
        a.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: lease_holder(named_server) == "boot2", 15, interval=0.02, what="boot2 takes the lease")
        t_lease = time.monotonic()
        wait_until(lambda: watch.since(t_kill) and watch.since(t_kill)[-1].addrs == VIEW_B, 15, interval=0.02,
                   what="boot2's view published")
        assert a.proc.wait(timeout=15) == 0
        assert logs_a.matching("DNS lease _lbserver-lease.lbtest.example released by boot1")
        report.append(f"takeover after SIGTERM (lease released): lease {t_lease - t_kill:.2f} s, "
                      f"alias {watch.first(t_kill, VIEW_B) - t_kill:.2f} s")

        # 3. boot1 comes back: boot2's lease is valid, so boot1 stands by; the alias stays boot2's.
        logs_a = restart(procs, a)
        wait_until(lambda: lease_of(a).get("role") == "standby", 15, what="boot1 stands by after its restart")
        t3, serial3 = time.monotonic(), named_server.soa_serial()
        started = a.status()["last_poll"]["started"]
        wait_until(lambda: a.status()["last_poll"]["started"] >= started + 4 * POLL_INTERVAL, 15,
                   what="4 cycles of boot1")
        assert {s.addrs for s in watch.since(t3)} == {VIEW_B}
        assert named_server.soa_serial() - serial3 <= (time.monotonic() - t3) / (LEASE_TIME / 2) + 1

        # 4. boot2 freezes (SIGSTOP) in the middle of a cycle, after reading its lease and before writing
        #    (held on its health page): its lease expires and boot1 takes over.
        held_page.armed.set()
        assert held_page.got.wait(10), "boot2 never fetched its health page"
        t_stop = time.monotonic()
        b.proc.send_signal(signal.SIGSTOP)
        try:
            wait_until(lambda: lease_holder(named_server) == "boot1", 20, interval=0.02,
                       what="boot1 takes the expired lease")
            t_lease = time.monotonic()
            wait_until(lambda: lease_of(a).get("role") == "writer", 10, interval=0.02, what="boot1 writer")
            wait_until(lambda: watch.since(t_stop)[-1].addrs == VIEW_A, 10, interval=0.02,
                       what="boot1's view published")
            t_alias = watch.first(t_stop, VIEW_A)
            report.append(f"takeover after SIGSTOP (lease expires): lease {t_lease - t_stop:.2f} s, "
                          f"alias {t_alias - t_stop:.2f} s (lease-time {LEASE_TIME:g} s)")
            assert t_lease - t_stop <= LEASE_TIME + 2 * POLL_INTERVAL + 1.5
        finally:
            # 5. boot2 resumes where it stopped: it tries to write its view with the lease it held. The server
            #    refuses the whole update (the lease changed): nothing written, and boot2 stands by.
            t_cont = time.monotonic()
            b.proc.send_signal(signal.SIGCONT)
            held_page.release.set()
        wait_until(lambda: logs_b.matching("the server refused an alias update of boot2 because the lease changed"),
                   15, what="boot2's fenced update refused")
        wait_until(lambda: lease_of(b).get("role") == "standby" and lease_of(b).get("holder") == "boot1", 15,
                   what="boot2 stands by after SIGCONT")
        t_standby = time.monotonic()
        started = b.status()["last_poll"]["started"]
        wait_until(lambda: b.status()["last_poll"]["started"] >= started + 3 * POLL_INTERVAL, 15,
                   what="3 cycles of boot2 after SIGCONT")
        assert {s.addrs for s in watch.since(t_alias)} == {VIEW_A}, "the resumed balancer wrote"
        assert lease_holder(named_server) == "boot1"
        report.append(f"after SIGCONT boot2 reported standby within {t_standby - t_cont:.2f} s; "
                      "the alias stayed boot1's")

    # Throughout: every answer held addresses, and the server always answered.
    assert watch.failures == []
    assert all(s.addrs for s in watch.samples), [s for s in watch.samples if not s.addrs][:3]
    views = [s.addrs for s in watch.samples]
    flips = sum(1 for x, y in zip(views, views[1:]) if x != y)
    assert flips == 2, views  # boot1's view -> boot2's (SIGTERM) -> boot1's (SIGSTOP), and no other change
    for logs in (logs_a, logs_b):
        assert logs.count("Traceback") == 0
    report.append(f"alias answers watched: {len(watch.samples)}, empty: 0, changes of the set: {flips}")
    print("\n" + "\n".join(report))


def test_once_mode_honours_the_lease(procs, tmp_path, named_server):
    agents = [start_agent(procs, tmp_path, f"xapp{i + 1}", f"127.0.0.{i + 2}", load)
              for i, load in enumerate((10, 40, 70))]
    members = [(a.name, a.url) for a in agents]
    refused = [("xapp1", f"http://127.0.0.2:{free_port('127.0.0.2')}")] + members[1:]

    def once(holder: str, group) -> subprocess.CompletedProcess:
        cfg = tmp_path / f"{holder}.xml"
        cfg.write_text(server_xml(free_port(), free_port(), {"PROD": group}, tmp_path,
                                  extra=dns_element(named_server, holder, 'lease-time="600"')))
        return subprocess.run(python_cmd("lbserver", "--once", "-c", str(cfg)), capture_output=True, text=True,
                              timeout=60, env={"PYTHONPATH": str(ROOT)})

    res = once("cron1", members)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "DNS lease _lbserver-lease.lbtest.example: held by this balancer (cron1) until " in res.stdout
    assert tuple(named_server.dig("wms")) == VIEW_A
    serial = named_server.soa_serial()
    # Another holder, another view: it stands by while cron1's lease is valid, says so, and exits 0.
    res = once("cron2", refused)
    assert res.returncode == 0, res.stdout + res.stderr
    line = next(ln for ln in res.stdout.splitlines() if ln.startswith("DNS lease"))
    assert "held by cron1 until " in line and "this balancer (cron2) stands by" in line, line
    assert any(ln.startswith("wms.lbtest.example") and " standby " in ln for ln in res.stdout.splitlines())
    assert tuple(named_server.dig("wms")) == VIEW_A and named_server.soa_serial() == serial
    # cron1 again: its lease, more than half left: held as it is, nothing sent.
    res = once("cron1", members)
    assert res.returncode == 0 and "held by this balancer (cron1)" in res.stdout, res.stdout
    assert " unchanged " in res.stdout and named_server.soa_serial() == serial
    assert lease_holder(named_server) == "cron1"


HOSTILE = "<img/src=x/onerror=document.title='pwned'>"


def test_the_lease_in_status_lbctl_metrics_and_dashboard(procs, tmp_path, named_server):

    # Another "balancer" holds the lease for an hour, under a name that is markup: it must stay text.
    expires = int(time.time()) + 3600
    assert named_server.update(("add", "_lbserver-lease", 60, "TXT", f'"holder={HOSTILE} expires={expires}"')) == 0
    agent = start_agent(procs, tmp_path, "xapp1", "127.0.0.2", 10)
    bal = start_balancer(procs, tmp_path, {"PROD": [(agent.name, agent.url)]}, poll=POLL,
                         extra=dns_element(named_server, "boot2").replace('num-out="1"', 'best-hosts="-1"'))
    alias = wait_until(lambda: (a := bal.status()["aliases"]) and a[0]["lease"] and a[0], 15, what="alias report")
    assert alias["result"] == "standby" and named_server.dig("wms") == []
    assert alias["lease"] == {"name": "_lbserver-lease.lbtest.example", "holder": HOSTILE, "expires": expires,
                              "me": "boot2", "role": "standby", "problem": None}

    def metric() -> str:
        with urllib.request.urlopen(bal.mgmt_url + "/metrics", timeout=5) as resp:
            return next(ln for ln in resp.read().decode().splitlines()
                        if ln.startswith("lbserver_dns_lease_held{"))

    assert metric() == 'lbserver_dns_lease_held{alias="wms"} 0.0'
    ctl = lbctl(bal.mgmt_url, "status")
    assert ctl.returncode == 0, ctl.stderr
    assert (f"  DNS writer: standby (boot2); lease _lbserver-lease.lbtest.example held by {HOSTILE} until "
            in ctl.stdout), ctl.stdout
    dom = chromium(tmp_path, "--virtual-time-budget=3000", "--dump-dom", bal.mgmt_url + "/").stdout
    tree = lxml.html.fromstring(dom)
    [card] = tree.xpath('//div[@data-alias="wms"]')
    line = card.xpath('.//div[contains(@class, "lease")]')[0].text_content()
    assert line.startswith("DNS writer: standby boot2; lease held by " + HOSTILE + " until "), line
    assert tree.xpath("//img") == [] and tree.findtext(".//title") != "pwned"

    # The holder gives it up (deleted): this balancer takes it at its next cycle and writes.
    assert named_server.update(("delete", "_lbserver-lease", "TXT")) == 0
    wait_until(lambda: named_server.dig("wms") == ["127.0.0.2"], 15, what="published by boot2")
    assert bal.status()["aliases"][0]["lease"]["role"] == "writer"
    assert metric() == 'lbserver_dns_lease_held{alias="wms"} 1.0'
    ctl = lbctl(bal.mgmt_url, "status")
    assert "  DNS writer: writer (boot2); lease _lbserver-lease.lbtest.example held by this balancer until " \
        in ctl.stdout, ctl.stdout
