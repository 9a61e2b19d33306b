#!/usr/bin/env python3
"""DNS aliases at scale, against a real BIND: the quiet writer's cycles, serials per hour, takeover times.

    .venv/bin/python -m bench.bench_dns [--aliases 100,1000] [--changed 100] [--skip-takeover]

A private ``named`` (Debian bind9) serves one zone on a loopback port.

1. **Cycles.** The real DnsArbiter publishes ``--aliases`` aliases, each over
   5 nodes of its own (literal loopback addresses, no agents: the candidates
   are made up, as a poll cycle would hand them over). For each size it
   prints a cycle where nothing changed, one where the balancer's choice
   changed for ``--changed`` aliases, and one where someone else edited
   that many aliases in the zone (read, then corrected), each twice: the
   quiet writer (one SOA query, then an IXFR naming what changed, then only
   those aliases read) and, in the same run, today's per-alias reads (every
   alias read every cycle, the fall-back path where the server gives no
   differences); with the seconds of the cycle's DNS part
   (``lbserver_dns_cycle_seconds``), the whole cycle, the DNS messages sent
   and the ratio to the per-alias reads. Targets: nothing changed, DNS part
   at most 0.2 s; 100 changed, at most 1 s (1,000 aliases).
2. **Serials per hour, quiet zone, default settings.** One arbiter at the
   defaults (10 s cycles, 20-minute lease) runs an hour of cycles on a
   simulated clock against the real BIND; the zone's serial is counted
   (target: at most 6 an hour).
3. **Takeover times.** Two real lbservers with ``<peers>`` (poll interval
   2 s, heartbeat 0.4 s: the defaults' 10 s and 2 s, five times faster) and
   the default lease: the seconds, and poll intervals, from ``kill -9`` and
   from SIGSTOP of the writer until the standby holds the lease (target:
   within 3 poll intervals).
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dns.message
import dns.rdatatype

from bench.support import (NamedServer, child_env, free_port, status, stop_children, wait_for_port, wait_until,
                           write_config)
from lbserver import config as configmod
from lbserver.dns import update
from lbserver.dns import arbiter as arbitermod
from lbserver.dns.arbiter import DnsArbiter
from lbserver.dns.decide import Candidate
from tests.support.aliaswatch import lease_holder

PER_ALIAS = 5


def counting() -> dict:
    """Count every DNS message the arbiter sends on the cycle's channel (queries and updates alike)."""
    counter = {"n": 0}
    one, many = update.Channel.exchange, update.Channel.exchange_many

    def exchange(self, msg):
        counter["n"] += 1
        return one(self, msg)

    def exchange_many(self, msgs, window=64):
        counter["n"] += len(msgs)
        return many(self, msgs, window)
    ixfr = arbitermod.changed_names

    def changed_names(*args, **kw):
        counter["n"] += 1  # the IXFR, on a connection of its own
        return ixfr(*args, **kw)
    update.Channel.exchange, update.Channel.exchange_many = exchange, exchange_many
    arbitermod.changed_names = changed_names
    counter["restore"] = lambda: (setattr(update.Channel, "exchange", one),
                                  setattr(update.Channel, "exchange_many", many),
                                  setattr(arbitermod, "changed_names", ixfr))
    return counter


def floor(named: NamedServer, names: list[str]) -> float:
    """Seconds for one ANY query per name over one TCP connection (no processing)."""
    start = time.perf_counter()
    with update.channel("127.0.0.1", named.port, 5.0) as ch:
        for name in names:
            q = dns.message.make_query(f"{name}.{named.zone}", dns.rdatatype.ANY)
            ch.exchange(q)
    return time.perf_counter() - start


def serial(named: NamedServer) -> int:
    return named.soa_serial() or 0


def run(named: NamedServer, tmp: Path, n_aliases: int, changed: int) -> dict:
    """The cycles of one size: {(label, mode): (DNS seconds, cycle seconds, messages, results, serial bumps)}."""
    # Each alias over nodes of its own, so that changing one node changes exactly one alias.
    n_nodes = n_aliases * PER_ALIAS
    nodes = {f"n{i}": f"127.1.{i // 250}.{i % 250 + 1}" for i in range(n_nodes)}
    groups = {f"G{a}": tuple(f"n{a * PER_ALIAS + k}" for k in range(PER_ALIAS)) for a in range(n_aliases)}
    alias_xml = "\n".join(f'    <alias name="b{n_aliases}-{a}" group="G{a}" num-out="1"/>' for a in range(n_aliases))
    path = write_config(tmp / f"lbs{n_aliases}.xml", named, alias_xml, nodes=nodes,
                        dns_attrs=f'lease="_lease-{n_aliases}" lease-holder="bench"')
    text = path.read_text()
    # one group per alias, as a site with many services would have
    group_xml = "".join(f'<group name="G{a}">' + "".join(f'<node name="{n}" address="http://{nodes[n]}:8001"/>'
                                                         for n in members) + "</group>"
                        for a, members in enumerate(groups.values()))
    text = text.replace("  </nodes>", group_xml + "\n  </nodes>")
    path.write_text(text)
    cfg = configmod.load(str(path))
    arbiter = DnsArbiter(cfg.dns, cfg.nodes)
    weights = {n: 100.0 + i for i, n in enumerate(nodes)}

    def cands() -> dict:
        return {n: Candidate(name=n, healthy=True, weight=w) for n, w in weights.items()}

    def flip() -> None:
        """The best node of ``changed`` aliases becomes their worst (or back): each of those aliases changes."""
        for a in range(changed):
            node = groups[f"G{a}"][-1]
            weights[node] = 1.0 if weights[node] > 1.0 else 100.0 + int(node[1:])

    out = {}
    counter = counting()
    try:
        arbiter.run_cycle(cands(), groups)   # everything published
        arbiter.run_cycle(cands(), groups)   # reads what the first cycle wrote
        for label in ("unchanged", "changed", "edited"):
            for mode in ("quiet", "per-alias"):
                arbiter.run_cycle(cands(), groups)  # settle: read the previous cycle's own changes
                if label == "changed":
                    flip()
                elif label == "edited":
                    # someone else adds an address to ``changed`` aliases (one update message): read and corrected
                    edits = [("add", f"b{n_aliases}-{a}", 120, "A", f"192.0.2.{mode == 'quiet' and 1 or 2}")
                             for a in range(changed)]
                    for start in range(0, len(edits), 100):
                        assert named.update(*edits[start:start + 100]) == 0
                if mode == "per-alias":
                    arbiter._zone = None  # forget what was read: every alias read, as before the quiet writer
                counter["n"] = 0
                before = serial(named)
                start = time.perf_counter()
                reports = arbiter.run_cycle(cands(), groups)
                elapsed = time.perf_counter() - start
                results: dict[str, int] = {}
                for r in reports:
                    results[r.result] = results.get(r.result, 0) + 1
                out[(label, mode)] = (arbiter.figures()[0], elapsed, counter["n"], results, serial(named) - before)
    finally:
        counter["restore"]()
    out["floor"] = floor(named, [f"b{n_aliases}-{a}" for a in range(n_aliases)])
    return out


class Clock:
    """A settable clock (the lease's expiry times) for an hour of cycles in a few seconds."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def serials_per_hour(named: NamedServer, tmp: Path) -> tuple[int, list[int]]:
    """Zone serial changes in an hour of 10 s cycles at the default lease, aliases unchanged; and the gaps."""
    path = write_config(tmp / "hour.xml", named, '    <alias name="hour" group="WMS" num-out="1"/>',
                        dns_attrs='lease="_lease-hour" lease-holder="bench"')
    cfg = configmod.load(str(path))
    clock = Clock(time.time())
    arbiter = DnsArbiter(cfg.dns, cfg.nodes, clock=clock)
    cands = {n: Candidate(name=n, healthy=True, weight=10.0 * i) for i, n in enumerate(cfg.nodes)}
    groups = {"WMS": tuple(cfg.nodes)}
    arbiter.run_cycle(cands, groups)
    arbiter.run_cycle(cands, groups)
    start, bumps, last = clock.now, [], serial(named)
    for k in range(1, 361):
        clock.now = start + 10 * k
        arbiter.run_cycle(cands, groups)
        now = serial(named)
        if now != last:
            bumps.append(k)
        last = now
    return len(bumps), [y - x for x, y in zip(bumps, bumps[1:])]


def lbserver_xml(named: NamedServer, holder: str, port: int, mgmt: int, peers: tuple[int, int], dead: int,
                 poll: float, heartbeat: float) -> str:
    return f"""<?xml version="1.0"?>
<lbsconfig>
  <lbservice listen="127.0.0.1:{port}" returns="$NAME"/>
  <mgmtservice listen="127.0.0.1:{mgmt}"/>
  <poll interval="{poll:g}" timeout="0.5" rise="1" fall="1"/>
  <nodes><group name="WMS" default="true">
    <node name="wms1" address="http://127.0.0.1:{dead}" ip="192.0.2.11"/>
    <node name="wms2" address="http://127.0.0.1:{dead}" ip="192.0.2.12"/>
  </group></nodes>
  <peers listen="127.0.0.1:{peers[0]}" heartbeat="{heartbeat:g}"><peer address="127.0.0.1:{peers[1]}"/></peers>
  <dns server="127.0.0.1" port="{named.port}" zone="{named.zone}" ttl="60" timeout="2" key-file="{named.key_file}"
       lease="_lease-takeover" lease-holder="{holder}"><alias name="takeover" group="WMS" num-out="1"/></dns>
</lbsconfig>
"""


def wait_holder(named: NamedServer, name: str, timeout: float) -> float:
    """Seconds until the lease names ``name``."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if lease_holder(named, "_lease-takeover") == name:
            return time.monotonic() - start
        time.sleep(0.02)
    raise SystemExit(f"the lease never passed to {name} within {timeout:g} s")


def takeovers(named: NamedServer, tmp: Path, poll: float, heartbeat: float) -> dict[str, float]:
    """Seconds from kill -9 and from SIGSTOP of the writer until the standby holds the lease."""
    udp = (free_port(), free_port())
    dead = free_port()
    children: list[subprocess.Popen] = []
    out: dict[str, float] = {}

    def start(name: str, peers: tuple[int, int]) -> tuple[subprocess.Popen, int]:
        port, mgmt = free_port(), free_port()
        cfg = tmp / f"{name}.xml"
        cfg.write_text(lbserver_xml(named, name, port, mgmt, peers, dead, poll, heartbeat))
        proc = subprocess.Popen([sys.executable, "-m", "lbserver", "-f", "-c", str(cfg)], env=child_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        children.append(proc)
        wait_for_port("127.0.0.1", mgmt, proc, timeout=30)
        return proc, mgmt

    def standing_by(mgmt: int) -> None:
        """Return once that balancer stands by, hears its peer, and has begun a cycle since: the writer's
        heartbeats count only once heard after the standby first read the lease."""
        def ready() -> float | None:
            doc = status(mgmt)
            lease = (doc["aliases"] or [{}])[0].get("lease") or {}
            heard = lease.get("role") == "standby" and all(p["reachable"] for p in doc["peers"]["peers"])
            return doc["last_poll"]["started"] if heard else None
        since = wait_until(ready, 30, what="the standby hearing the writer")
        wait_until(lambda: status(mgmt)["last_poll"]["started"] > since, 30, what="the standby's next cycle")

    try:
        a, _ = start("boot1", udp)
        wait_holder(named, "boot1", 30)
        b, b_mgmt = start("boot2", udp[::-1])
        standing_by(b_mgmt)
        a.send_signal(signal.SIGKILL)
        a.wait()
        out["kill -9"] = wait_holder(named, "boot2", 60)
        a, a_mgmt = start("boot1", udp)
        standing_by(a_mgmt)
        b.send_signal(signal.SIGSTOP)
        try:
            out["SIGSTOP"] = wait_holder(named, "boot1", 60)
        finally:
            b.send_signal(signal.SIGCONT)
    finally:
        stop_children(children)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--aliases", default="100,1000", help="alias counts to run (default 100,1000)")
    parser.add_argument("--changed", type=int, default=100)
    parser.add_argument("--skip-takeover", action="store_true", help="do not start two lbservers")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-dns-") as tmp:
        named = NamedServer(Path(tmp) / "named")
        named.start()
        try:
            print("1. cycles: the quiet writer (SOA, IXFR, changed aliases only) against per-alias reads, same run")
            print(f"{'aliases':>7} {'cycle':<12} {'mode':<9} {'dns s':>7} {'cycle s':>8} {'msgs':>6} "
                  f"{'msgs/alias':>10} {'serial+':>7} {'vs per-alias':>12}  results")
            for n in (int(x) for x in args.aliases.split(",")):
                res = run(named, Path(tmp), n, min(args.changed, n))
                for label in ("unchanged", "changed", "edited"):
                    ref = res[(label, "per-alias")][0]
                    for mode in ("quiet", "per-alias"):
                        dns_s, secs, msgs, results, bumps = res[(label, mode)]
                        name = label if label == "unchanged" else f"{min(args.changed, n)} {label}"
                        print(f"{n:>7} {name:<12} {mode:<9} {dns_s:>7.3f} {secs:>8.3f} {msgs:>6} {msgs / n:>10.2f} "
                              f"{bumps:>7} {dns_s / ref:>12.3f}  {results}")
                print(f"{n:>7} floor: {res['floor']:.3f} s for one bare ANY query per alias on one TCP connection")
            print("changed: the balancer's choice changed for that many aliases (it updates them); edited: someone "
                  "else changed them in the zone (read, then corrected). dns s: the cycle's DNS part "
                  "(lbserver_dns_cycle_seconds); msgs: DNS messages, IXFR and updates included.")
            print("targets (1,000 aliases): DNS part at most 0.2 s when nothing changed, at most 1 s with 100 changed")
            count, gaps = serials_per_hour(named, Path(tmp))
            print(f"2. serials per hour, quiet zone, defaults (10 s cycles, 20-minute lease; an hour of cycles on a "
                  f"simulated clock, real BIND): {count} (renewals {sorted(set(gaps))} cycles apart); target at most 6")
            if not args.skip_takeover:
                poll, heartbeat = 2.0, 0.4
                times = takeovers(named, Path(tmp), poll, heartbeat)
                for what, secs in times.items():
                    print(f"3. takeover after {what} of the writer (peers, poll interval {poll:g} s, heartbeat "
                          f"{heartbeat:g} s, 20-minute lease): {secs:.2f} s = {secs / poll:.2f} poll intervals; "
                          "target within 3")
        finally:
            named.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
