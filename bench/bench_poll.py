"""Poll scale: one full poll cycle of 1000 agents, healthy and with 100 black-holed.

    .venv/bin/python -m bench.bench_poll [--nodes 1000] [--blackhole 100] [--cycles 5] [--replies same|fresh|both]
                                         [--mgmt-reads]

A real lbagent's get_state reply is captured and served by 1000 loopback
endpoints (bench/agent_replicas.py, addresses 127.10.x.y); a real lbserver
polls them every few seconds. Figures come from the balancer's own
/status (last poll duration) and /proc (CPU time and RSS of the lbserver
process). The reference, measured in the same run, is a bare asyncio client
doing the same 1000 connect/request/read exchanges without parsing: the
floor for any design on this machine.

Then, for as many more cycles (so the CPU figure above is the cycles'
alone), a terminal asks the balancer for a server every 10 ms; the wait
for each answer shows what a poll cycle costs the terminals (median, p99,
max, and the longest wait as a share of the cycle: a cycle done in one
block would stall a terminal for all of it, 1.0). With ``--mgmt-reads`` a
monitor also reads ``/status`` and ``/metrics`` once a second, as a
dashboard and a Prometheus scraper would (their time and size printed).

Two kinds of replies: ``same`` (each agent answers what it answered last
time, as between two samples, or to a balancer that polls faster than the
agent samples) and ``fresh`` (every reply holds a new sample, so nothing
of the last cycle can be reused). The black-holed case uses ``same``.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import xmlrpc.client

from bench.support import child_env, cycle_window, free_port, proc_rss_mib, replica_address, status, wait_for_port

PORT = 8001


def capture_reply(tmp: str, env: dict) -> str:
    """Start a real lbagent, fetch one get_state reply body, stop it; return the file."""
    port = free_port()
    cfg = os.path.join(tmp, "agent.xml")
    with open(cfg, "w") as fh:
        fh.write(f'<lbaconfig><agent listen="127.0.0.1:{port}" sample-interval="5"/></lbaconfig>')
    agent = subprocess.Popen([sys.executable, "-m", "lbagent", "-f", "-c", cfg], env=env, stderr=subprocess.DEVNULL)
    try:
        wait_for_port("127.0.0.1", port, agent)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("POST", "/RPC2", xmlrpc.client.dumps((), "get_state"), {"Content-Type": "text/xml"})
        body = conn.getresponse().read()
    finally:
        agent.terminate()
        agent.wait()
    path = os.path.join(tmp, "reply.xml")
    with open(path, "wb") as fh:
        fh.write(body)
    return path


async def floor_cycle(n: int, skip: int, timeout: float) -> float:
    """The same exchanges with a bare asyncio client: seconds for one cycle."""
    request = (b"POST /RPC2 HTTP/1.0\r\nContent-Type: text/xml\r\nContent-Length: %d\r\n\r\n"
               % len(xmlrpc.client.dumps((), "get_state"))) + xmlrpc.client.dumps((), "get_state").encode()

    async def one(i: int) -> None:
        r, w = await asyncio.open_connection(replica_address(i), PORT)
        w.write(request)
        await r.read()
        w.close()

    sem = asyncio.Semaphore(512)

    async def bounded(i: int) -> None:
        async with sem:
            try:
                await asyncio.wait_for(one(i), timeout)
            except asyncio.TimeoutError:
                pass

    start = time.perf_counter()
    await asyncio.gather(*(bounded(i) for i in range(n)))
    return time.perf_counter() - start


class Reader(threading.Thread):
    """Reads ``/status`` and ``/metrics`` of the management port once a second; ``reads`` as (path, s, bytes)."""

    def __init__(self, mgmt: int) -> None:
        super().__init__(daemon=True)
        self.mgmt = mgmt
        self.reads: list[tuple[str, float, int]] = []
        self.failed = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(1.0):
            for path in ("/status", "/metrics"):
                start = time.perf_counter()
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{self.mgmt}{path}", timeout=60) as resp:
                        size = len(resp.read())
                except OSError:
                    self.failed += 1
                    continue
                self.reads.append((path, time.perf_counter() - start, size))


class Prober(threading.Thread):
    """A terminal asking the balancer at ``port`` for a server every 10 ms; ``waits`` in seconds."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.waits: list[float] = []
        self.failed = 0
        self.done = threading.Event()

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        while not self.done.wait(0.01):
            start = time.perf_counter()
            try:
                conn.request("GET", "/")
                resp = conn.getresponse()
                resp.read()
                if resp.status != 200:
                    self.failed += 1
            except (OSError, http.client.HTTPException):
                self.failed += 1
                conn.close()
                continue
            self.waits.append(time.perf_counter() - start)

    def figures(self) -> tuple[float, float, float]:
        """(median, p99, max) wait in seconds."""
        w = sorted(self.waits) or [float("nan")]
        return w[len(w) // 2], w[int(len(w) * 0.99)], w[-1]


def run_case(tmp: str, env: dict, reply: str, nodes: int, blackhole: int, cycles: int,
             interval: float, timeout: float, fresh: bool = False, mgmt_reads: bool = False) -> dict:
    """Measure ``cycles`` poll cycles of a real lbserver over ``nodes`` replicas."""
    replicas = subprocess.Popen([sys.executable, "-m", "bench.agent_replicas", "--reply", reply,
                                 "--count", str(nodes), "--blackhole", str(blackhole), "--port", str(PORT)]
                                + (["--fresh"] if fresh else []), stdout=subprocess.PIPE, text=True, env=env)
    lb = None
    try:
        assert replicas.stdout.readline().strip() == "ready"
        floor = min(asyncio.run(floor_cycle(nodes, blackhole, timeout)) for _ in range(3))
        lb_port, mgmt = free_port(), free_port()
        members = "\n".join(f'<node name="n{i}" address="http://{replica_address(i)}:{PORT}"/>' for i in range(nodes))
        cfg = os.path.join(tmp, f"lbs-{nodes}-{blackhole}.xml")
        with open(cfg, "w") as fh:
            fh.write(f"""<lbsconfig>
  <lbservice listen="127.0.0.1:{lb_port}"/>
  <mgmtservice listen="127.0.0.1:{mgmt}" state-file="{tmp}/state"/>
  <poll interval="{interval}" timeout="{timeout}" rise="1" fall="1"/>
  <nodes><group name="ALL" default="true">{members}</group></nodes>
</lbsconfig>""")
        lb = subprocess.Popen([sys.executable, "-m", "lbserver", "-f", "-c", cfg], env=env, stderr=subprocess.DEVNULL)
        wait_for_port("127.0.0.1", mgmt, lb, timeout=60)
        time.sleep(interval)
        window = cycle_window(mgmt, lb.pid, interval, cycles)
        rss = proc_rss_mib(lb.pid)
        # Then as many cycles with a terminal (and the management reads) asking meanwhile.
        prober, reader = Prober(lb_port), Reader(mgmt)
        probes = [prober, reader] if mgmt_reads else [prober]
        for thread in probes:
            thread.start()
        time.sleep(cycles * interval)
        for thread in probes:
            thread.done.set()
            thread.join()
        last = status(mgmt)["last_poll"]
        return {"nodes": nodes, "blackhole": blackhole, "mean": window["mean"], "last": last["duration"],
                "floor": floor, "cpu_per_cycle": window["cpu_per_cycle"], "rss": rss,
                "rss_probed": proc_rss_mib(lb.pid), "failed": last["failed"], "cycles": window["cycles"],
                "waits": prober.figures(),
                "answers_failed": prober.failed, "reads": reader.reads, "reads_failed": reader.failed}
    finally:
        for p in (lb, replicas):
            if p is not None:
                p.terminate()
                p.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--blackhole", type=int, default=100)
    parser.add_argument("--cycles", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=2.0)
    parser.add_argument("--mgmt-reads", action="store_true",
                        help="read /status and /metrics once a second meanwhile (a dashboard and a scraper)")
    parser.add_argument("--replies", choices=("same", "fresh", "both"), default="both",
                        help="healthy case: agents answer the same sample again, a new one each time, or both")
    args = parser.parse_args()
    env = child_env()
    interval = args.timeout + 2
    with tempfile.TemporaryDirectory() as tmp:
        reply = capture_reply(tmp, env)
        print(f"machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}; reply {os.path.getsize(reply)} bytes")
        print(f"{'case':40} {'cycle (mean/last)':>18} {'floor':>7} {'ratio':>6} {'CPU/cycle':>10} {'RSS':>8}"
              f" {'failed':>6}  target")
        kinds = ["same", "fresh"] if args.replies == "both" else [args.replies]
        cases = [(0, kind == "fresh") for kind in kinds] + ([(args.blackhole, False)] if args.blackhole else [])
        for hole, fresh in cases:
            r = run_case(tmp, env, reply, args.nodes, hole, args.cycles, interval, args.timeout, fresh,
                         args.mgmt_reads)
            if hole:
                target, ok = f"<= {args.timeout + 1.0:.1f} s", r["mean"] <= args.timeout + 1.0
            elif args.nodes >= 10000:  # the scale targets: near the floor, within a memory budget
                target, ok = "<= 1.5x, 200 MiB", r["mean"] <= 1.5 * r["floor"] and r["rss"] <= 200
            else:
                target, ok = "<= 1.0 s", r["mean"] <= 1.0
            kind = "every reply new" if fresh else "replies unchanged"
            print(f"{r['nodes']} nodes, {hole} black-holed, {kind}".ljust(40)
                  + f" {r['mean']:>8.3f}/{r['last']:.3f} s {r['floor']:>6.3f}s {r['mean'] / r['floor']:>5.1f}x"
                  + f" {r['cpu_per_cycle']:>9.3f}s {r['rss']:>6.1f}MiB {r['failed']:>6}  {target} "
                  + ("ok" if ok else "MISSED"))
            med, p99, longest = r["waits"]
            print(f"{'':40}  terminal answers meanwhile: median {med * 1e3:.1f} ms, p99 {p99 * 1e3:.1f} ms, "
                  f"max {longest * 1e3:.1f} ms ({longest / r['mean']:.3f} of a cycle), {r['answers_failed']} failed, "
                  f"RSS then {r['rss_probed']:.1f} MiB")
            for path in ("/status", "/metrics"):
                reads = [(s, size) for p, s, size in r["reads"] if p == path]
                if reads:
                    print(f"{'':40}  {path}: {len(reads)} reads, {max(s for s, _ in reads):.2f} s at most, "
                          f"{reads[-1][1] / 1e6:.1f} MB, {r['reads_failed']} failed reads in all")
        print("floor: a bare asyncio client doing the same exchanges without parsing, same run; "
              "CPU/cycle: lbserver's CPU time per poll cycle; RSS: lbserver's resident memory.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
