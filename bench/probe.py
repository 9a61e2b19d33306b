"""What the benchmark scripts read from a running balancer: /status, the poll histogram, resident memory."""

from __future__ import annotations

import json
import re
import urllib.request


def proc_rss_mib(pid: int) -> float:
    """Resident memory of process ``pid`` in MiB (0 when /proc does not say)."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def poll_histogram(mgmt: int) -> tuple[int, float]:
    """(count, sum) of lbserver_poll_duration_seconds from /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{mgmt}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    count = float(re.search(r"^lbserver_poll_duration_seconds_count (\S+)", text, re.M).group(1))
    total = float(re.search(r"^lbserver_poll_duration_seconds_sum (\S+)", text, re.M).group(1))
    return int(count), total


def status(mgmt: int) -> dict:
    """The /status document of the balancer whose management port is ``mgmt``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{mgmt}/status", timeout=10) as resp:
        return json.load(resp)
