#!/usr/bin/env python3
"""Soak: lbserver under a long run of terminal answers and poll cycles; is anything growing?

    .venv/bin/python -m bench.soak [--answers 1000000] [--cycles 10000] [--plot soak.png]

Three real lbagents on 127.0.0.2-4 and a real ``lbserver -f`` polling them
every 20 ms (so ``--cycles`` poll cycles take a few minutes). Meanwhile two
client processes ask for a server over keep-alive connections until
``--answers`` answers arrived; one agent flaps (stopped and started every
few seconds) and every agent is restarted now and then. Every second the
script samples the balancer's RSS, open descriptors and poll-cycle count,
and the clients report their answers and latencies per second.

It prints a table per tenth of the run (RSS, descriptors, answers/s, p50 and
p99 latency, failed answers) and the verdict: RSS growth from the first to
the last tenth under 5 MiB, and zero failed answers. With ``--plot`` (needs
matplotlib) the curves are drawn to a PNG.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.support import child_env, free_port, poll_histogram, proc_rss_mib, stop_children, wait_for_port

AGENT = """<lbaconfig><agent listen="{ip}:{port}" sample-interval="0.5"/>
<access><allow from="127.0.0.0/8"/></access><log level="warning"/></lbaconfig>"""
SERVER = """<lbsconfig>
  <lbservice listen="127.0.0.1:{port}" returns="$NAME"/>
  <mgmtservice listen="127.0.0.1:{mgmt}" state-file="{tmp}/state"/>
  <poll interval="0.02" timeout="0.015" rise="1" fall="1"/>
  <log level="warning"/>
  <nodes><group name="PROD" default="true">{nodes}</group></nodes>
</lbsconfig>"""


def client(port: int, quota: int, queue) -> None:
    """Ask until ``quota`` answers; every second put (answers, failures, sorted latencies in ms) on ``queue``."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    done, fails, lat, tick = 0, 0, [], time.monotonic() + 1
    while done < quota:
        start = time.perf_counter()
        try:
            conn.request("GET", "/")
            resp = conn.getresponse()
            body = resp.read()
            ok = resp.status == 200 and body.strip() in (b"xapp1", b"xapp2", b"xapp3")
        except (OSError, http.client.HTTPException):
            ok = False
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        lat.append((time.perf_counter() - start) * 1000)
        done += 1
        fails += not ok
        if time.monotonic() >= tick:
            queue.put((len(lat), fails, sorted(lat)))
            lat, fails, tick = [], 0, tick + 1
    queue.put((len(lat), fails, sorted(lat)))
    queue.put(None)


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def cycles(mgmt: int) -> int:
    """Poll cycles done so far, from the balancer's own histogram."""
    return poll_histogram(mgmt)[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--answers", type=int, default=1_000_000)
    parser.add_argument("--cycles", type=int, default=10_000)
    parser.add_argument("--plot", metavar="PNG", help="draw RSS, descriptors and latency over time")
    args = parser.parse_args()
    env = child_env()
    procs: dict[str, subprocess.Popen] = {}
    samples: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        try:
            agents = {}
            for i in range(3):
                ip, port = f"127.0.0.{i + 2}", free_port(f"127.0.0.{i + 2}")
                cfg = Path(tmp, f"a{i}.xml")
                cfg.write_text(AGENT.format(ip=ip, port=port))
                agents[f"xapp{i + 1}"] = (ip, port, cfg)

            def start_agent(name: str) -> None:
                ip, port, cfg = agents[name]
                procs[name] = subprocess.Popen([sys.executable, "-m", "lbagent", "-f", "-c", str(cfg)], env=env,
                                               stderr=subprocess.DEVNULL)
                wait_for_port(ip, port, procs[name])

            def stop_agent(name: str) -> None:
                procs[name].send_signal(signal.SIGTERM)
                procs[name].wait(timeout=10)

            for name in agents:
                start_agent(name)
            port, mgmt = free_port(), free_port()
            nodes = "".join(f'<node name="{n}" address="http://{ip}:{p}"/>' for n, (ip, p, _) in agents.items())
            Path(tmp, "lbs.xml").write_text(SERVER.format(port=port, mgmt=mgmt, tmp=tmp, nodes=nodes))
            lb = procs["lbserver"] = subprocess.Popen([sys.executable, "-m", "lbserver", "-f", "-c",
                                                       str(Path(tmp, "lbs.xml"))], env=env, stderr=subprocess.DEVNULL)
            wait_for_port("127.0.0.1", port, lb)
            queue = multiprocessing.Queue()
            clients = [multiprocessing.Process(target=client, args=(port, args.answers // 2, queue))
                       for _ in range(2)]
            for c in clients:
                c.start()
            start, running, second = time.monotonic(), len(clients), 0
            cur = {"answers": 0, "fails": 0, "lat": []}
            while running or cycles(mgmt) < args.cycles:
                deadline = time.monotonic() + 1
                while running and time.monotonic() < deadline:
                    try:
                        item = queue.get(timeout=max(0.01, deadline - time.monotonic()))
                    except Exception:  # queue.Empty
                        continue
                    if item is None:
                        running -= 1
                        continue
                    n, f, lat = item
                    cur["answers"] += n
                    cur["fails"] += f
                    cur["lat"].extend(lat)
                if not running:
                    time.sleep(max(0.0, deadline - time.monotonic()))
                second += 1
                lat = sorted(cur["lat"])
                samples.append({"t": time.monotonic() - start, "rss": proc_rss_mib(lb.pid), "fds": fds(lb.pid),
                                "cycles": cycles(mgmt), "answers": cur["answers"], "fails": cur["fails"],
                                "p50": lat[len(lat) // 2] if lat else None,
                                "p99": lat[int(len(lat) * 0.99)] if lat else None})
                cur = {"answers": 0, "fails": 0, "lat": []}
                if second % 3 == 0:  # xapp3 flaps
                    stop_agent("xapp3") if procs["xapp3"].poll() is None else start_agent("xapp3")
                if second % 20 == 0:  # now and then every agent restarts
                    for name in ("xapp1", "xapp2"):
                        stop_agent(name)
                        start_agent(name)
            for c in clients:
                c.join(timeout=30)
        finally:
            stop_children(list(procs.values()))
    report(samples, args)
    return 0


def report(samples: list[dict], args: argparse.Namespace) -> None:
    tenth = max(1, -(-len(samples) // 10))  # ten rows (the last may be shorter)
    print(f"soak: {sum(s['answers'] for s in samples)} answers, {samples[-1]['cycles']} poll cycles, "
          f"{samples[-1]['t']:.0f} s")
    print(f"{'tenth':>5} {'RSS MiB':>8} {'fds':>5} {'answers/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'failed':>6}")
    rows = []
    for i in range(0, len(samples), tenth):
        part = samples[i:i + tenth]
        p50 = [s["p50"] for s in part if s["p50"] is not None]
        p99 = [s["p99"] for s in part if s["p99"] is not None]
        rows.append((statistics.mean(s["rss"] for s in part), max(s["fds"] for s in part),
                     statistics.mean(s["answers"] for s in part), statistics.median(p50) if p50 else float("nan"),
                     max(p99) if p99 else float("nan"), sum(s["fails"] for s in part)))
        print(f"{len(rows):>5} {rows[-1][0]:>8.1f} {rows[-1][1]:>5} {rows[-1][2]:>9.0f} {rows[-1][3]:>7.2f} "
              f"{rows[-1][4]:>7.2f} {rows[-1][5]:>6}")
    growth = rows[-1][0] - rows[0][0]
    failed = sum(s["fails"] for s in samples)
    print(f"RSS growth first to last tenth: {growth:+.1f} MiB (target < 5); failed answers: {failed} (target 0): "
          f"{'ok' if growth < 5 and failed == 0 else 'MISSED'}")
    print(json.dumps({"rss_growth_mib": round(growth, 2), "failed": failed}))
    if args.plot:
        import matplotlib  # noqa: PLC0415 (only for --plot)

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415

        t = [s["t"] for s in samples]
        fig, axes = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
        axes[0].plot(t, [s["rss"] for s in samples])
        axes[0].set_ylabel("RSS (MiB)")
        axes[1].plot(t, [s["fds"] for s in samples])
        axes[1].set_ylabel("open descriptors")
        axes[2].plot(t, [s["p50"] for s in samples], label="p50")
        axes[2].plot(t, [s["p99"] for s in samples], label="p99")
        axes[2].set_ylabel("answer latency (ms)")
        axes[2].set_xlabel("seconds")
        axes[2].legend()
        fig.suptitle("lbserver soak")
        fig.tight_layout()
        fig.savefig(args.plot, dpi=80)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    sys.exit(main())
