#!/usr/bin/env python3
"""Benchmark of get_state() with many sessions: p99 with 500 sessions against 5, in the same run.

Starts two real agents on loopback, each reading a private utmp file
written with libc's updwtmpx (5 logins for one, 500 for the other), and
times get_state() on a fresh connection per call, reading the reply on a
raw socket as the balancer's poller does (its parsing excluded: that is the
balancer's cost, not the agent's). Rounds alternate between the two agents
and each figure is the median of the rounds' p99. Target: the 500-session
p99 within 1.5 times the 5-session one.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import statistics
import subprocess
import sys
import tempfile
import time

from bench.bench_agent import raw_back_to_back
from bench.support import child_env, free_port, stop_all, wait_for_port

HOST = "127.0.0.62"
TARGET_RATIO = 1.5
CONFIG = """<?xml version="1.0"?>
<lbaconfig>
  <agent listen="{host}:{port}" sample-interval="5" drain-file="" nologin-file=""/>
  <log level="warning"/>
  <sessions><utmp file="{utmp}"/></sessions>
</lbaconfig>
"""


class Utmpx(ctypes.Structure):
    """glibc's struct utmpx on Linux."""

    _fields_ = [("ut_type", ctypes.c_short), ("ut_pid", ctypes.c_int), ("ut_line", ctypes.c_char * 32),
                ("ut_id", ctypes.c_char * 4), ("ut_user", ctypes.c_char * 32), ("ut_host", ctypes.c_char * 256),
                ("ut_exit", ctypes.c_short * 2), ("ut_session", ctypes.c_int32), ("ut_tv_sec", ctypes.c_int32),
                ("ut_tv_usec", ctypes.c_int32), ("ut_addr_v6", ctypes.c_int32 * 4), ("unused", ctypes.c_char * 20)]


def write_utmp(path: str, logins: int) -> None:
    """A utmp file of ``logins`` login records, appended by libc."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    open(path, "wb").close()
    entry = Utmpx(ut_type=7, ut_pid=1, ut_host=b"10.0.0.9", ut_tv_sec=int(time.time()))
    for i in range(logins):
        entry.ut_user, entry.ut_line = f"user{i:04d}".encode(), f"pts/{i}".encode()
        libc.updwtmpx(path.encode(), ctypes.byref(entry))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000, help="calls per round (default 1000)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per agent, alternated (default 5)")
    args = parser.parse_args()
    children: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            urls = {}
            for logins in (5, 500):
                utmp, cfg, port = f"{tmp}/utmp{logins}", f"{tmp}/agent{logins}.xml", free_port(HOST)
                write_utmp(utmp, logins)
                with open(cfg, "w") as fh:
                    fh.write(CONFIG.format(host=HOST, port=port, utmp=utmp))
                children.append(subprocess.Popen([sys.executable, "-m", "lbagent", "-f", "-c", cfg],
                                                 env=child_env()))
                wait_for_port(HOST, port, children[-1])
                urls[logins] = f"http://{HOST}:{port}/RPC2"
            p99: dict[int, list[float]] = {5: [], 500: []}
            for _ in range(args.rounds):
                for logins, url in urls.items():
                    p99[logins].append(raw_back_to_back(url, args.calls)[1])
        finally:
            stop_all(children)
    few, many = statistics.median(p99[5]), statistics.median(p99[500])
    ratio = many / few
    print(f"get_state p99, 5 sessions:   {few:.3f} ms")
    print(f"get_state p99, 500 sessions: {many:.3f} ms")
    print(f"ratio: {ratio:.2f} (target <= {TARGET_RATIO})  {'OK' if ratio <= TARGET_RATIO else 'MISSED'}")
    return 0 if ratio <= TARGET_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())
