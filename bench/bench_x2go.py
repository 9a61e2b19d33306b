#!/usr/bin/env python3
"""Benchmark of the X2Go broker: selectsession answers per second against terminal answers, same run.

Starts three real agents and a real lbserver on loopback with
``<x2gobroker>``, then runs wrk (same threads, connections and keep-alive)
alternately against the terminal port (``GET /?user=alice``, a returning
user's answer) and against the broker (``POST /plain/`` with
``task=selectsession&sid=Lab+desktop&user=alice``, as X2Go Client sends
it). Each figure is the median of the rounds. Target: the broker answers
at least half as many requests per second as the terminal port.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

from bench.support import child_env, cpu_sets, free_port, pinned, run_wrk, start_cluster, stop_children, wait_for_port

TARGET_RATIO = 0.5
LUA = """wrk.method = "POST"
wrk.body = "task=selectsession&sid=Lab+desktop&user=alice&password="
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=5, help="seconds of each wrk run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--no-pin", action="store_true", help="do not pin the balancer and wrk to separate CPUs")
    args = parser.parse_args()
    env = child_env()
    children: list[subprocess.Popen] = []
    server_cpus, wrk_cpus = cpu_sets(not args.no_pin)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            config = Path(start_cluster(tmp, env, children))
            broker_port = free_port()
            text = config.read_text().replace("</lbsconfig>", (
                f'<x2gobroker listen="127.0.0.1:{broker_port}"><profile name="Lab desktop" group="PROD"/>'
                '</x2gobroker><log level="warning"/></lbsconfig>'))
            config.write_text(text)
            Path(tmp, "select.lua").write_text(LUA)
            port = int(text.split('<lbservice listen="127.0.0.1:')[1].split('"')[0])
            server = subprocess.Popen([sys.executable, "-m", "lbserver", "-f", "-c", str(config)], env=env,
                                      preexec_fn=pinned(server_cpus))
            children.append(server)
            wait_for_port("127.0.0.1", port, server, timeout=30)
            wait_for_port("127.0.0.1", broker_port, server, timeout=30)
            terminal_url = f"http://127.0.0.1:{port}/?user=alice"
            broker_url = f"http://127.0.0.1:{broker_port}/plain/"
            req = urllib.request.Request(broker_url, data=b"task=selectsession&sid=Lab+desktop&user=alice",
                                         method="POST")
            with urllib.request.urlopen(req, timeout=5) as resp:
                print(f"broker answers: {resp.read().decode().splitlines()[1]}")
            terminal, broker = [], []
            for _ in range(args.rounds):
                terminal.append(run_wrk(terminal_url, threads=2, connections=args.connections,
                                        duration=args.duration, cpus=wrk_cpus))
                broker.append(run_wrk(broker_url, threads=2, connections=args.connections, duration=args.duration,
                                      cpus=wrk_cpus, script=str(Path(tmp, "select.lua"))))
        finally:
            stop_children(children, 5.0)
    t = statistics.median(r for r, _ in terminal)
    b = statistics.median(r for r, _ in broker)
    print(f"terminal ?user=   {t:10.0f} answers/s  (p99 {terminal[-1][1]})")
    print(f"selectsession     {b:10.0f} answers/s  (p99 {broker[-1][1]})")
    ratio = b / t
    print(f"ratio selectsession/terminal: {ratio:.2f} (target >= {TARGET_RATIO})")
    return 0 if ratio >= TARGET_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())
