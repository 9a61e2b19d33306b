#!/usr/bin/env python3
"""Login-storm benchmark: the shipped choice against the references, over many seeds.

Prints one detailed table (first seed), then for each algorithm the figure
(worst server's final load / its ideal share; 1.00 = perfect) as mean,
median and worst over the seeds. References measured in the same run:
"stale" (weights refreshed only at polls, the original design) and
"round-robin". ``--estimate F`` scales the rules' per-session figures by F
to show what a wrong estimate by the admin costs.

    python bench/bench_storm.py [--scenario FILE] [--seeds N] [--logins N] [--estimate F]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lbserver.tools.simulate import ALGORITHMS, SHIPPED, load_scenario, print_table, run_scenario  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scenario", default=str(ROOT / "bench" / "storm.scenario"))
    p.add_argument("--seeds", type=int, default=30)
    p.add_argument("--logins", type=int, help="override the scenario's number of logins")
    p.add_argument("--estimate", type=float, default=1.0,
                   help="scale the rules' per-session figures (1 = the true per-session load)")
    a = p.parse_args()
    scenario = load_scenario(a.scenario)
    if a.logins:
        scenario = dataclasses.replace(scenario, logins=a.logins)
    if a.estimate != 1.0:
        scenario = dataclasses.replace(scenario, rules=tuple(
            dataclasses.replace(r, per_session=r.per_session * a.estimate) for r in scenario.rules))
    print_table([run_scenario(None, scenario, alg, 1) for alg in ALGORITHMS], scenario)
    print()
    print(f"figure over seeds 1..{a.seeds} (worst server / ideal, 1.00 = perfect)")
    print(f"{'algorithm':<22} {'mean':>6} {'median':>6} {'worst':>6}")
    means = {}
    for alg in ALGORITHMS:
        figs = [run_scenario(None, scenario, alg, seed).worst for seed in range(1, a.seeds + 1)]
        means[alg] = statistics.mean(figs)
        label = alg + (" (shipped)" if alg == SHIPPED else "")
        print(f"{label:<22} {means[alg]:>6.3f} {statistics.median(figs):>6.3f} {max(figs):>6.3f}")
    ok = means[SHIPPED] <= 1.10 and means[SHIPPED] < means["stale"] and means[SHIPPED] < means["round-robin"]
    print(f"shipped mean {means[SHIPPED]:.3f}: {'meets' if ok else 'MISSES'} the target "
          "(<= 1.10 and better than both references)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
