#!/usr/bin/env python3
"""Benchmark of the HAProxy session map: 5,000 users on 100 nodes, synced with a real HAProxy 2.6.

Starts Debian's haproxy on loopback with a runtime socket and a map, builds
snapshots in memory (100 nodes of one group, 5,000 users with one session
each; node ``i`` answers 10.0.i/256.i%256), and times
:meth:`lbserver.haproxy.mapservice.SessionMapService.sync`, the whole of
one cycle's work on the worker thread (the map computed from the snapshot,
the file compared and rewritten, one runtime API connection), for:

* the reference, in the same run: a full load into an empty map (every
  entry sent), and a full comparison as after an HAProxy restart
  (``show map`` read back, nothing to send);
* a cycle where nothing changed;
* a cycle where 1 % of the users changed (a third moved to another node,
  a third logged out, a third new).

Each figure is the median of ``--rounds``. Targets: the 1 % cycle sends
only the differences (at most 2 commands per changed user: his name and
its truncated form) and takes less time than the full load. Most of a
cycle is computing the map from the snapshot (the cycle where nothing
changed), so the 1 % cycle costs about that plus its few commands.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from bench.support import stop_children
from lbserver.config import Group, HaproxyMap, Node, ServerConfig
from lbserver.core.health import NodeRecord, record_success
from lbserver.core.selection import Snapshot
from lbserver.core.sessions import check_sessions
from lbserver.haproxy.mapservice import SessionMapService

NODES, USERS = 100, 5000
HAPROXY_CFG = """global
    stats socket {sock} level admin
defaults
    mode tcp
    timeout connect 1s
    timeout client 5s
    timeout server 5s
frontend rdp
    bind 127.0.0.1:{port}
    tcp-request inspect-delay 5s
    tcp-request content accept if RDP_COOKIE
    use_backend home if {{ rdp_cookie(mstshash),lower,field(-1,\\\\),map({map}) -m found }}
    default_backend home
backend home
    tcp-request content set-dst rdp_cookie(mstshash),lower,field(-1,\\\\),map({map})
    server home 0.0.0.0:3389
"""


def config(names: list[str]) -> ServerConfig:
    nodes = {n: Node(n, f"http://10.0.{i // 256}.{i % 256}:8001", f"10.0.{i // 256}.{i % 256}", 8001)
             for i, n in enumerate(names)}
    return ServerConfig(path="bench.xml", nodes=nodes, groups={"RDP": Group("RDP", tuple(names), True)},
                        default_group="RDP")


def snapshot(cfg: ServerConfig, placement: dict[str, str]) -> Snapshot:
    """A snapshot whose nodes report one active session per user placed on them."""
    by_node: dict[str, list[dict]] = {n: [] for n in cfg.nodes}
    for user, node in placement.items():
        by_node[node].append({"user": user, "kind": "x2go", "state": "active", "since": 1.0e9, "info": ""})
    records = {}
    for name, sessions in by_node.items():
        rec = NodeRecord(name)
        state = {"hostname": name, "agent_version": "b", "sampled_at": 0.0,
                 "variables": {"NBPROC": 4, "CPUFREQ": 2000, "LOADAVG": 0.5, "MEMUSEDPCT": 20},
                 "users": sorted({s["user"] for s in sessions}), "sessions": check_sessions(sessions)[0]}
        record_success(rec, state, 0.0, 1)
        records[name] = rec
    return Snapshot.build(cfg, records, now=0.0)


def changed(placement: dict[str, str], names: list[str], rng: random.Random, serial: list[int]) -> dict[str, str]:
    """``placement`` with 1 % of the users changed: a third moved, a third gone, a third new."""
    out = dict(placement)
    victims = rng.sample(sorted(out), USERS // 100)
    for i, user in enumerate(victims):
        if i % 3 == 0:
            out[user] = rng.choice([n for n in names if n != out[user]])
        elif i % 3 == 1:
            del out[user]
        else:
            serial[0] += 1
            out[f"newuser{serial[0]:06d}"] = rng.choice(names)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="rounds of each measure (default 7)")
    args = parser.parse_args()
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    rng = random.Random(7)
    names = [f"xapp{i:03d}" for i in range(NODES)]
    cfg = config(names)
    tmp = tempfile.mkdtemp(prefix="bench-map-")
    sock, mapfile = os.path.join(tmp, "admin.sock"), os.path.join(tmp, "sessions.map")
    open(mapfile, "w").close()
    with open(os.path.join(tmp, "haproxy.cfg"), "w") as fh:
        fh.write(HAPROXY_CFG.format(sock=sock, map=mapfile, port=23999))
    children = [subprocess.Popen([haproxy, "-db", "-f", os.path.join(tmp, "haproxy.cfg")],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(sock):
            if time.monotonic() > deadline:
                raise SystemExit("HAProxy did not open its runtime socket")
            time.sleep(0.05)
        mconf = HaproxyMap("RDP", sock, mapfile, 10.0)
        placement = {f"user{i:05d}": rng.choice(names) for i in range(USERS)}
        serial = [0]
        full, resync, same, one = [], [], [], []
        sent_full = sent_one = 0
        for _ in range(args.rounds):
            svc = SessionMapService(None)  # a fresh service: nothing known of HAProxy
            empty = snapshot(cfg, {})
            svc.sync(empty, cfg, mconf)  # HAProxy's map emptied
            snap = snapshot(cfg, placement)
            state = svc.sync(snap, cfg, mconf)
            assert state["in_sync"], state
            full.append(state["seconds"])
            sent_full = state["commands"]
            svc._pid = None  # as after an HAProxy restart: read the map back
            state = svc.sync(snap, cfg, mconf)
            assert state["in_sync"] and state["commands"] == 0, state
            resync.append(state["seconds"])
            state = svc.sync(snap, cfg, mconf)
            same.append(state["seconds"])
            placement = changed(placement, names, rng, serial)
            state = svc.sync(snapshot(cfg, placement), cfg, mconf)
            assert state["in_sync"], state
            one.append(state["seconds"])
            sent_one = max(sent_one, state["commands"])
            svc.close()
        med = statistics.median
        print(f"session map, {USERS} users on {NODES} nodes, median of {args.rounds} rounds (seconds per cycle):")
        print(f"  reference: full load into an empty map   {med(full):.4f} s, {sent_full} commands")
        print(f"  reference: full comparison (show map)    {med(resync):.4f} s, 0 commands")
        print(f"  nothing changed                          {med(same):.4f} s, 0 commands")
        print(f"  1 % of the users changed                 {med(one):.4f} s, at most {sent_one} commands")
        ok = sent_one <= 2 * (USERS // 100) and med(one) < med(full)
        print("target met" if ok else "TARGET MISSED")
        return 0 if ok else 1
    finally:
        stop_children(children, 5.0)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
