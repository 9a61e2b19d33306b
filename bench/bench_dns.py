#!/usr/bin/env python3
"""DNS aliases at scale: arbiter cycles against a real BIND, from 100 to 1,000 aliases.

    .venv/bin/python -m bench.bench_dns [--aliases 100,300,1000] [--changed 100]

A private ``named`` (Debian bind9) serves one zone on a loopback port; the
real DnsArbiter publishes ``--aliases`` aliases, each over 5 nodes of its
own (nodes with literal loopback addresses, no agents: the candidates are
made up, as a poll cycle would hand them over). For each size it prints:

* the first cycle (every alias published: one update, one read-back each);
* a cycle where nothing changed (target: no update, at most one query per
  alias), with the DNS messages it sent;
* a cycle where ``--changed`` aliases changed (target: within 2 s);

each as seconds and DNS messages per alias. The reference, measured in the
same run, is the floor of the same number of bare query exchanges on one
TCP connection with dnspython: what any design pays to look at the aliases.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import dns.message
import dns.query
import dns.rdatatype

from bench.support import NamedServer, write_config
from lbserver import config as configmod
from lbserver.dns import update
from lbserver.dns.arbiter import DnsArbiter
from lbserver.dns.decide import Candidate

PER_ALIAS = 5


def counting() -> dict:
    """Count every DNS message the arbiter sends (on the cycle's channel, one at a time or pipelined)."""
    counter = {"n": 0}
    one, many = update.Channel.exchange, update.Channel.exchange_many

    def exchange(self, msg):
        counter["n"] += 1
        return one(self, msg)

    def exchange_many(self, msgs, window=64):
        counter["n"] += len(msgs)
        return many(self, msgs, window)
    update.Channel.exchange, update.Channel.exchange_many = exchange, exchange_many
    counter["restore"] = lambda: (setattr(update.Channel, "exchange", one),
                                  setattr(update.Channel, "exchange_many", many))
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
    # Each alias over nodes of its own, so that changing one node changes exactly one alias.
    n_nodes = n_aliases * PER_ALIAS
    nodes = {f"n{i}": f"127.1.{i // 250}.{i % 250 + 1}" for i in range(n_nodes)}
    groups = {f"G{a}": tuple(f"n{a * PER_ALIAS + k}" for k in range(PER_ALIAS)) for a in range(n_aliases)}
    alias_xml = "\n".join(f'    <alias name="b{n_aliases}-{a}" group="G{a}" num-out="1"/>' for a in range(n_aliases))
    path = write_config(tmp / f"lbs{n_aliases}.xml", named, alias_xml, nodes=nodes, dns_attrs='lease=""')
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

    grp = {g: m for g, m in groups.items()}
    out = {}
    counter = counting()
    try:
        for label in ("first", "unchanged", "changed"):
            if label == "changed":
                # the best node of `changed` aliases becomes their worst: each of those aliases changes
                for a in range(changed):
                    weights[groups[f"G{a}"][-1]] = 1.0
            counter["n"] = 0
            before = serial(named)
            start = time.perf_counter()
            reports = arbiter.run_cycle(cands(), grp)
            elapsed = time.perf_counter() - start
            bumps = serial(named) - before
            results = {}
            for r in reports:
                results[r.result] = results.get(r.result, 0) + 1
            out[label] = (elapsed, counter["n"], results, bumps)
    finally:
        counter["restore"]()
    out["floor"] = floor(named, [f"b{n_aliases}-{a}" for a in range(n_aliases)])
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--aliases", default="100,300,1000", help="alias counts to run (default 100,300,1000)")
    parser.add_argument("--changed", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-dns-") as tmp:
        named = NamedServer(Path(tmp) / "named")
        named.start()
        try:
            print(f"{'aliases':>7} {'cycle':<10} {'seconds':>8} {'msgs':>6} {'msgs/alias':>10} {'serial+':>7} "
                  f"{'floor s':>8} {'ratio':>6}  results")
            for n in (int(x) for x in args.aliases.split(",")):
                res = run(named, Path(tmp), n, min(args.changed, n))
                for label in ("first", "unchanged", "changed"):
                    secs, msgs, results, bumps = res[label]
                    ratio = secs / res["floor"] if label == "unchanged" else float("nan")
                    print(f"{n:>7} {label:<10} {secs:>8.3f} {msgs:>6} {msgs / n:>10.2f} {bumps:>7} "
                          f"{res['floor']:>8.3f} {ratio:>6.2f}  {results}")
        finally:
            named.stop()
    print("targets: unchanged cycle sends no update and at most one query per alias; "
          f"a cycle with {args.changed} changed aliases within 2 s. floor: one bare ANY query per alias on one "
          "TCP connection, same run.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
