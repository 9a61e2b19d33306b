"""Terminal service throughput against nginx, measured in the same run with wrk.

    .venv/bin/python -m bench.bench_terminal [--duration 10] [--threads 1] [--connections 50] [--rounds 3]
                                   [--mode keep-alive|close|both] [--lbserver-config FILE]
                                   [--algorithm two-choices|weighted-random] [--no-pin]

Starts, on loopback ports:

* the real balancer (default): three real lbagents on 127.0.0.2-4 and a real
  ``lbserver -f`` over them, answering terminals with the default algorithm
  (two-choices, or ``--algorithm``) and per-session compensation; or ``lbserver -f -c FILE`` with
  ``--lbserver-config`` (its ``<lbservice listen>`` must be a loopback
  address); or, with ``--harness``, the bare terminal service
  (``tests.support.terminal_harness``, a fixed answer function);
* nginx (Debian nginx-light) as a non-daemon child with a temporary config:
  one worker, ``return 200 "host\\n";``, pid, logs and temp files in a
  temporary directory;

then runs ``wrk --latency`` against both, once with keep-alive and once with
``Connection: close``, and prints requests/s, p99 latency and the ratio
(terminal service / nginx) for each mode. Needs ``nginx`` and ``wrk`` in PATH.

With two CPUs or more, the server under test (lbserver or nginx alike) runs
on the last CPU and wrk on the others: left to the scheduler, the two may
share a CPU, and single runs of either server spread much wider
(``--no-pin`` to see it).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.support import (ROOT, child_env, cpu_sets, free_port, pinned, run_wrk, start_cluster, stop_children,
                           wait_for_port)

NGINX_CONF = """\
daemon off;
master_process on;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:{port};
        default_type text/plain;
        location / {{ return 200 "host\\n"; }}
    }}
}}
"""


def lbserver_address(config: str) -> tuple[str, int]:
    """The terminal address from an lbsconfig.xml (``<lbservice listen>``, its declared default if none)."""
    from common.settings import read_all  # noqa: PLC0415 (only this mode needs them)
    from common.xmlconfig import Reader, parse_file  # noqa: PLC0415
    from lbserver.config.settings import LBSERVICE  # noqa: PLC0415

    host, port = read_all(Reader(config), parse_file(config, "lbsconfig.rng").find("lbservice"), LBSERVICE,
                          ("listen",))["listen"]
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1" if host == "0.0.0.0" else "::1"
    return host, port


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run (default 10)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default 1)")
    parser.add_argument("--connections", type=int, default=50, help="wrk connections (default 50)")
    parser.add_argument("--mode", choices=("keep-alive", "close", "both"), default="both")
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternated lbserver/nginx runs per mode; the medians are compared (default 3)")
    parser.add_argument("--lbserver-config", metavar="FILE", help="benchmark the real lbserver with this config")
    parser.add_argument("--harness", action="store_true", help="benchmark the bare terminal service instead")
    parser.add_argument("--algorithm", choices=("two-choices", "weighted-random"), default="two-choices",
                        help="the <lbservice algorithm> of the real balancer (default two-choices)")
    parser.add_argument("--no-pin", dest="pin", action="store_false",
                        help="let the scheduler place wrk and the servers (default: the server under test, lbserver "
                             "or nginx, on the last CPU and wrk on the others, so that they never share one)")
    parser.add_argument("--no-uvloop", action="store_true", help="harness: asyncio's own loop even with uvloop installed")
    args = parser.parse_args(argv)
    server_cpus, wrk_cpus = cpu_sets(args.pin)
    wrk = {"threads": args.threads, "connections": args.connections, "duration": args.duration, "cpus": wrk_cpus}
    for tool in ("nginx", "wrk"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found in PATH (Debian packages nginx-light and wrk)")

    env = child_env()
    children: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory(prefix="bench-terminal-") as tmp:
        try:
            if not args.harness and not args.lbserver_config:
                args.lbserver_config = start_cluster(tmp, env, children, args.algorithm)
            if args.lbserver_config:
                host, lb_port = lbserver_address(args.lbserver_config)
                lb = subprocess.Popen([sys.executable, "-m", "lbserver", "-f", "-c", args.lbserver_config],
                                      env=env, stdout=subprocess.DEVNULL, preexec_fn=pinned(server_cpus))
                label = "lbserver"
            else:
                host, lb_port = "127.0.0.1", free_port()
                cmd = [sys.executable, "-m", "tests.support.terminal_harness", "--listen", f"{host}:{lb_port}",
                       "--hosts", "host"]
                if args.no_uvloop:
                    cmd.append("--no-uvloop")
                lb = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, preexec_fn=pinned(server_cpus))
                label = "terminal service"
            children.append(lb)
            ng_port = free_port()
            conf = Path(tmp, "nginx.conf")
            conf.write_text(NGINX_CONF.format(tmp=tmp, port=ng_port))
            ng = subprocess.Popen(["nginx", "-p", tmp, "-e", f"{tmp}/error.log", "-c", str(conf)],
                                  stdout=subprocess.DEVNULL, preexec_fn=pinned(server_cpus))
            children.append(ng)
            wait_for_port(host, lb_port, lb)
            wait_for_port("127.0.0.1", ng_port, ng)
            lb_url = f"http://[{host}]:{lb_port}/" if ":" in host else f"http://{host}:{lb_port}/"
            ng_url = f"http://127.0.0.1:{ng_port}/"
            modes = ["keep-alive", "close"] if args.mode == "both" else [args.mode]
            loop = "asyncio" if args.no_uvloop or importlib.util.find_spec("uvloop") is None else "uvloop"
            placed = (f"servers on CPU {','.join(map(str, sorted(server_cpus)))}, wrk on "
                      f"{','.join(map(str, sorted(wrk_cpus)))}" if server_cpus else "unpinned")
            print(f"wrk -t{args.threads} -c{args.connections} -d{args.duration}s, {os.cpu_count()} CPUs ({placed}), "
                  f"event loop: {loop if not args.lbserver_config else 'as lbserver chooses'}")
            for mode in modes:
                close = mode == "close"
                lb_runs, ng_runs = [], []
                for _ in range(args.rounds):  # alternated, so a busy moment hits both
                    lb_runs.append(run_wrk(lb_url, close=close, **wrk))
                    ng_runs.append(run_wrk(ng_url, close=close, **wrk))
                lb_rps, lb_p99 = sorted(lb_runs)[len(lb_runs) // 2]
                ng_rps, ng_p99 = sorted(ng_runs)[len(ng_runs) // 2]
                print(f"[{mode}] {label}: {lb_rps:10.0f} req/s  p99 {lb_p99}  "
                      f"(runs: {', '.join(f'{r:.0f}' for r, _ in lb_runs)})")
                print(f"[{mode}] nginx:{' ' * (len(label) - 5)} {ng_rps:10.0f} req/s  p99 {ng_p99}  "
                      f"(runs: {', '.join(f'{r:.0f}' for r, _ in ng_runs)})")
                print(f"[{mode}] ratio {label}/nginx (medians of {args.rounds}): {lb_rps / ng_rps:.2f}")
        finally:
            stop_children(children)
    return 0


if __name__ == "__main__":
    sys.exit(main())
