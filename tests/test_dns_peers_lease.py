"""Two real lbservers with <peers> share one DNS lease in a real BIND zone that a real secondary transfers.

The same runs with Knot DNS as the primary (no secondary, a shorter quiet
time), keeping no differences and then keeping them.

The lease is long (the default, 20 minutes) and renewed rarely, so a quiet
zone keeps its serial: the secondary's stays still for a quiet minute. A
standby takes the lease over when the writer's heartbeats stop (kill -9,
SIGSTOP), long before the lease expires; the peers talk through a UDP relay
(tests/support/relay.py) that can lose one direction: the balancer whose
heartbeats no longer arrive loses the lease once, to the other, and it stays
there. The two balancers see the group differently (the second cannot reach
xapp1), so every change of writer shows in the alias: it must change exactly
when expected, and never be empty. Times are printed (run with -s).
"""

from __future__ import annotations

import signal
import time
import urllib.request

import pytest

from tests.support import free_port, wait_until
from tests.support.aliaswatch import AliasWatch, lease_holder
from tests.support.cluster import Balancer, start_agent, start_balancer
from tests.support.dns import free_udp_tcp_port
from tests.support.faults import LogCapture
from tests.support.processes import python_cmd
from tests.support.relay import UdpRelay

pytestmark = pytest.mark.system

POLL_INTERVAL = 1.0
POLL = f'interval="{POLL_INTERVAL:g}" timeout="0.5" rise="1" fall="1"'
HEARTBEAT = 0.2
QUIET = 60.0
VIEW_A = ("127.0.0.2", "127.0.0.3")  # boot1 sees all three: the most loaded (xapp3) is left out
VIEW_B = ("127.0.0.3",)              # boot2 cannot reach xapp1: of xapp2 and xapp3, the best


def extra(named, holder: str, listen: int, peer: int) -> str:
    return (f'<peers listen="127.0.0.1:{listen}" heartbeat="{HEARTBEAT:g}"><peer address="127.0.0.1:{peer}"/></peers>'
            f'<dns server="127.0.0.1" port="{named.port}" zone="{named.zone}" ttl="60" timeout="2" '
            f'key-file="{named.key_file}" lease-holder="{holder}">'
            '<alias name="wms" group="PROD" num-out="1"/></dns>')


def role(bal: Balancer) -> str | None:
    aliases = bal.status()["aliases"]
    return aliases and (aliases[0].get("lease") or {}).get("role")


def metrics(bal: Balancer) -> dict[str, float]:
    with urllib.request.urlopen(bal.mgmt_url + "/metrics", timeout=5) as resp:
        lines = resp.read().decode().splitlines()
    return {ln.rsplit(" ", 1)[0]: float(ln.rsplit(" ", 1)[1]) for ln in lines
            if ln.startswith("lbserver_dns_") and not ln.startswith("#")}


def cycles_of(bal: Balancer, n: int) -> None:
    started = bal.status()["last_poll"]["started"]
    wait_until(lambda: bal.status()["last_poll"]["started"] >= started + n * POLL_INTERVAL, 10 + 2 * n,
               what=f"{n} cycles")


def takeover(named, watch: AliasWatch, holder: str, view: tuple[str, ...], t0: float, report: list[str],
             what: str) -> None:
    wait_until(lambda: lease_holder(named) == holder, 15, interval=0.02, what=f"{holder} takes the lease ({what})")
    t_lease = time.monotonic()
    wait_until(lambda: watch.since(t0) and watch.since(t0)[-1].addrs == view, 10, interval=0.02,
               what=f"{holder}'s view published")
    report.append(f"takeover after {what}: lease {t_lease - t0:.2f} s, alias {watch.first(t0, view) - t0:.2f} s "
                  f"(poll interval {POLL_INTERVAL:g} s, lease-time 1200 s)")


def test_peers_quiet_zone_and_takeovers_by_heartbeat(procs, tmp_path, named_pair):
    primary, secondary = named_pair
    scenario(procs, tmp_path, primary, secondary, QUIET)


def test_the_same_through_knot(procs, tmp_path, knot_server):
    """Knot as the primary, keeping no differences (every alias read when the serial moved), then keeping them."""
    scenario(procs, tmp_path, knot_server, None, 10.0)


def scenario(procs, tmp_path, primary, secondary, quiet: float) -> None:
    """Two balancers with peers on ``primary`` (and its ``secondary``): a quiet time, then three takeovers."""
    agents = [start_agent(procs, tmp_path, f"xapp{i + 1}", f"127.0.0.{i + 2}", load)
              for i, load in enumerate((10, 40, 70))]
    members = [(a.name, a.url) for a in agents]
    refused = [("xapp1", f"http://127.0.0.2:{free_port('127.0.0.2')}")] + members[1:]  # nothing listens there
    port_a, port_b = free_udp_tcp_port(), free_udp_tcp_port()
    relay = UdpRelay(("127.0.0.1", port_a), ("127.0.0.1", port_b))
    report: list[str] = []
    try:
        for d in ("boot1", "boot2"):
            (tmp_path / d).mkdir()
        a = start_balancer(procs, tmp_path / "boot1", {"PROD": members}, poll=POLL,
                           extra=extra(primary, "boot1", port_a, relay.a_port))
        wait_until(lambda: tuple(primary.dig("wms")) == VIEW_A, 20, what="boot1 publishes")
        b = start_balancer(procs, tmp_path / "boot2", {"PROD": refused}, poll=POLL,
                           extra=extra(primary, "boot2", port_b, relay.b_port))
        logs_b = LogCapture(b.proc)
        wait_until(lambda: b.status()["nodes"]["xapp1"]["health"] == "down", 15, what="boot2 sees xapp1 down")
        wait_until(lambda: role(b) == "standby", 15, what="boot2 stands by")
        wait_until(lambda: all(p["reachable"] for p in b.status()["peers"]["peers"]), 10, what="boot2 hears boot1")
        if secondary is not None:
            wait_until(lambda: secondary.soa_serial() == primary.soa_serial(), 15, what="the secondary up to date")
        else:
            secondary = primary  # the quiet time watches the primary alone

        with AliasWatch(primary) as watch:
            # 1. A quiet minute: no serial moves, on the primary or the secondary; each cycle one query.
            cycles_of(a, 2)  # the writer has read back its own first changes
            t0, serial = time.monotonic(), secondary.soa_serial()
            before = metrics(a)
            time.sleep(quiet)  # the property is the absence of change over this bounded time
            after = metrics(a)
            assert secondary.soa_serial() == serial == primary.soa_serial()
            assert {s.serial for s in watch.since(t0)} == {serial}
            assert {s.addrs for s in watch.since(t0)} == {VIEW_A}
            unchanged = 'lbserver_dns_updates_total{alias="wms",result="unchanged"}'
            cycles = after[unchanged] - before.get(unchanged, 0)
            queries = after["lbserver_dns_queries_total"] - before["lbserver_dns_queries_total"]
            assert cycles >= quiet / POLL_INTERVAL / 2 and queries <= cycles + 1, (cycles, queries)
            assert 0 < after["lbserver_dns_cycle_seconds"]
            figures = a.status()["dns"]
            assert figures["queries"] >= queries and figures["updates"]["unchanged"] >= cycles
            assert figures["cycle_seconds"] > 0
            watched = "secondary" if secondary is not primary else "primary"
            report.append(f"{type(primary).__name__}: quiet {quiet:g} s: "
                          f"{watched} serial {serial} -> {secondary.soa_serial()}, "
                          f"{cycles:.0f} writer cycles, {queries:.0f} DNS queries, last cycle's DNS part "
                          f"{after['lbserver_dns_cycle_seconds'] * 1000:.1f} ms")

            # 2. kill -9 of the writer: its heartbeats stop, boot2 takes the (unexpired) lease over.
            t_kill = time.monotonic()
            a.proc.send_signal(signal.SIGKILL)
            a.proc.wait(timeout=10)
            takeover(primary, watch, "boot2", VIEW_B, t_kill, report, "kill -9")
            wait_until(lambda: secondary.soa_serial() == primary.soa_serial(), 15, what="the secondary follows")
            wait_until(lambda: tuple(secondary.dig("wms")) == VIEW_B, 10, what="the secondary serves boot2's view")

            # 3. boot1 comes back and stands by; boot2 freezes (SIGSTOP): boot1 takes over, boot2 resumes
            #    and stands by without writing.
            a.proc = procs.start(python_cmd("lbserver", "-f", "-c", str(a.config)))
            wait_until(lambda: role(a) == "standby", 20, what="boot1 stands by after its restart")
            wait_until(lambda: all(p["reachable"] for p in a.status()["peers"]["peers"]), 10, what="boot1 hears")
            t_stop = time.monotonic()
            b.proc.send_signal(signal.SIGSTOP)
            try:
                takeover(primary, watch, "boot1", VIEW_A, t_stop, report, "SIGSTOP")
            finally:
                b.proc.send_signal(signal.SIGCONT)
            wait_until(lambda: role(b) == "standby", 15, what="boot2 stands by after SIGCONT")
            cycles_of(b, 3)
            assert lease_holder(primary) == "boot1" and watch.samples[-1].addrs == VIEW_A

            # 4. One-way partitions. The standby's heartbeats are lost: nothing changes.
            relay.drop_b_to_a = True
            t4 = time.monotonic()
            cycles_of(a, 5)
            assert lease_holder(primary) == "boot1" and {s.addrs for s in watch.since(t4)} == {VIEW_A}
            assert (role(a), role(b)) == ("writer", "standby")
            # The writer's heartbeats are lost instead: boot2 takes over once, and it stays so, as boot1
            # still hears boot2.
            relay.drop_b_to_a, relay.drop_a_to_b = False, True
            t5 = time.monotonic()
            takeover(primary, watch, "boot2", VIEW_B, t5, report, "the writer's heartbeats lost (one way)")
            wait_until(lambda: role(a) == "standby", 10, what="boot1 stands by")
            t6 = time.monotonic()
            cycles_of(a, 8)
            assert lease_holder(primary) == "boot2" and {s.addrs for s in watch.since(t6)} == {VIEW_B}
            assert (role(a), role(b)) == ("standby", "writer")
            assert relay.dropped["a_to_b"] > 0
    finally:
        relay.close()

    # Throughout: every answer held addresses, and the set changed exactly at the three takeovers.
    assert watch.failures == []
    assert all(s.addrs for s in watch.samples), [s for s in watch.samples if not s.addrs][:3]
    views = [s.addrs for s in watch.samples]
    flips = sum(1 for x, y in zip(views, views[1:]) if x != y)
    assert flips == 3, flips
    assert logs_b.count("Traceback") == 0
    report.append(f"alias answers watched: {len(watch.samples)}, empty: 0, changes of the set: {flips}")
    print("\n" + "\n".join(report))
