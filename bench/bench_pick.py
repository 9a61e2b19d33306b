#!/usr/bin/env python3
"""Cost of one choice (Selector.pick) on the terminal hot path, for each algorithm.

Builds a snapshot of N nodes of mixed sizes under the default rules (two of
which predict a per-session rise, so every pick updates a weight and a
projected load), then times picks in batches, keeping the fastest batch of
each (the least disturbed by other work on the machine). The reference is
weighted-random, the original balancer's choice, measured in the same run.

    .venv/bin/python -m bench.bench_pick [--nodes 5,50,1000] [--repeat 40]
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import time

from lbserver.config import DEFAULT_RULES, Group, Node, ServerConfig  # noqa: E402
from lbserver.core.health import NodeRecord, record_success  # noqa: E402
from lbserver.core.selection import ALGORITHMS, Selector, Snapshot  # noqa: E402

REFERENCE = "weighted-random"


def snapshot(n: int, at: float) -> Snapshot:
    """``n`` healthy nodes with 2 to 16 processors, a third to two thirds full."""
    rng = random.Random(n)
    nodes = {f"n{i}": Node(f"n{i}", f"http://10.0.{i // 250}.{i % 250 + 1}:8001", "h", 8001) for i in range(n)}
    cfg = ServerConfig(path="bench", nodes=nodes, groups={"G": Group("G", tuple(nodes), True)}, default_group="G",
                       rules=DEFAULT_RULES)
    records = {}
    for name in nodes:
        cpus = rng.choice([2, 4, 8, 16])
        rec = NodeRecord(name)
        record_success(rec, {"hostname": name, "agent_version": "bench", "sampled_at": at, "users": [],
                             "variables": {"NBPROC": cpus, "CPUFREQ": 2400, "LOADAVG": rng.uniform(0, cpus * 0.3),
                                           "MEMUSEDPCT": rng.uniform(10, 50), "NBSESSIONS": rng.randint(0, 3 * cpus)}},
                       at, 2)
        records[name] = rec
    return Snapshot.build(cfg, records, now=at)


def per_pick(snap: Snapshot, algorithm: str, picks: int, repeat: int) -> float:
    """Microseconds per pick, fastest batch of ``repeat``."""
    best = float("inf")
    gc.disable()
    try:
        for r in range(repeat):
            sel = Selector(random.Random(r), algorithm=algorithm)
            sel.install(snap)
            t0 = time.perf_counter()
            for _ in range(picks):
                sel.pick()
            best = min(best, (time.perf_counter() - t0) / picks)
    finally:
        gc.enable()
    return best * 1e6


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nodes", default="5,50,1000", help="group sizes, comma-separated")
    p.add_argument("--repeat", type=int, default=40, help="batches per figure (the fastest counts)")
    a = p.parse_args()
    print(f"{'nodes':>6} " + " ".join(f"{alg:>16}" for alg in ALGORITHMS) + "   ratio to " + REFERENCE)
    for n in (int(x) for x in a.nodes.split(",")):
        snap = snapshot(n, time.time() - 5)
        picks = max(20, n)  # enough picks to cross a node many times, not so many that all are full
        us = {alg: per_pick(snap, alg, picks, a.repeat) for alg in ALGORITHMS}
        ratios = ", ".join(f"{alg} {us[alg] / us[REFERENCE]:.2f}x" for alg in ALGORITHMS if alg != REFERENCE)
        print(f"{n:>6} " + " ".join(f"{us[alg]:>13.2f} us" for alg in ALGORITHMS) + f"   {ratios}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
