#!/usr/bin/env python3
"""What telling a peer balancer about each pick costs on the terminal path.

    .venv/bin/python -m bench.bench_peers [--duration 5] [--rounds 3] [--connections 50]

Three real lbagents on 127.0.0.2-4; two real lbservers over them that are
peers of each other (A is measured, B receives A's picks), and a third, C,
with the same nodes and no <peers> (the reference). wrk -t1 runs against A
and C in turn, ``--rounds`` times with keep-alive; the script prints the
median requests/s of each, the ratio A/C, the cost per pick in microseconds
(the difference of the per-request times, the server being one loop on one
core), and how many datagrams A sent per pick (picks are batched while the
loop is busy). Needs wrk in PATH.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.support import child_env, free_port, run_wrk, start_cluster, stop_children, wait_for_port
from bench.support import status as balancer_status


def _server(tmp: str, base: str, name: str, peers: str, env: dict, children: list) -> tuple[int, int]:
    """Start one lbserver over the cluster of ``base`` on ports of its own; return (terminal, mgmt) ports."""
    port, mgmt = free_port(), free_port()
    text = re.sub(r'<lbservice listen="127.0.0.1:\d+"', f'<lbservice listen="127.0.0.1:{port}"', Path(base).read_text())
    text = re.sub(r'<mgmtservice listen="127.0.0.1:\d+" state-file="[^"]*"',
                  f'<mgmtservice listen="127.0.0.1:{mgmt}" state-file="{tmp}/{name}.state"', text)
    cfg = Path(tmp, f"{name}.xml")
    cfg.write_text(text.replace("</lbsconfig>", peers + "</lbsconfig>"))
    proc = subprocess.Popen([sys.executable, "-m", "lbserver", "-f", "-c", str(cfg)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    children.append(proc)
    wait_for_port("127.0.0.1", port, proc)
    wait_for_port("127.0.0.1", mgmt, proc)
    return port, mgmt


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=50)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk not found in PATH (Debian package wrk)")
    # Placement left to the scheduler, as the balancers are.
    wrk = {"threads": 1, "connections": args.connections, "duration": args.duration}
    env = child_env()
    children: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory(prefix="bench-peers-") as tmp:
        try:
            base = start_cluster(tmp, env, children)
            pa, pb = free_port(), free_port()
            a_port, a_mgmt = _server(tmp, base, "a", f'<peers listen="127.0.0.1:{pa}"><peer address="127.0.0.1:{pb}"/>'
                                     "</peers>", env, children)
            _server(tmp, base, "b", f'<peers listen="127.0.0.1:{pb}"><peer address="127.0.0.1:{pa}"/></peers>',
                    env, children)
            c_port, c_mgmt = _server(tmp, base, "c", "", env, children)
            with_peers, alone = [], []
            for _ in range(args.rounds):
                with_peers.append(run_wrk(f"http://127.0.0.1:{a_port}/", **wrk)[0])
                alone.append(run_wrk(f"http://127.0.0.1:{c_port}/", **wrk)[0])
            a, c = statistics.median(with_peers), statistics.median(alone)
            status = balancer_status(a_mgmt)
            picks = sum(n["picks"] for n in status["nodes"].values())
            sent = status["peers"]["sent"]
            print(f"wrk -t1 -c{args.connections} -d{args.duration}s, keep-alive, {args.rounds} rounds alternated")
            print(f"with one peer: {a:10.0f} req/s (median of {', '.join(f'{x:.0f}' for x in with_peers)})")
            print(f"no peers:      {c:10.0f} req/s (median of {', '.join(f'{x:.0f}' for x in alone)})")
            print(f"ratio with/without: {a / c:.3f}; cost per pick: {(1 / a - 1 / c) * 1e6:+.1f} us")
            print(f"datagrams sent: {sent} for {picks} picks ({sent / max(picks, 1):.4f} per pick, heartbeats included)")
        finally:
            stop_children(children)
    return 0


if __name__ == "__main__":
    sys.exit(main())
