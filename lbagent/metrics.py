"""The built-in variables every agent reports, read through psutil.

Units follow the interface contract: memory in MiB (whole numbers),
percentages 0-100 and load averages rounded to 2 decimals, frequency in MHz,
uptime in whole seconds.
"""

from __future__ import annotations

import os
import time
from typing import Any

import psutil

MIB = 1024 * 1024


def _r(value: float) -> float:
    return round(float(value), 2)


def nominal_cpu_mhz(cpuinfo: str = "/proc/cpuinfo") -> int:
    """The CPU's nominal (maximum) frequency in MHz, or 0 when unknown.

    psutil's maximum when the kernel reports one; else its current figure;
    else the first "cpu MHz" line of /proc/cpuinfo.
    """
    try:
        freq = psutil.cpu_freq()
    except (OSError, NotImplementedError, RuntimeError):
        freq = None
    if freq is not None:
        if freq.max and freq.max > 0:
            return int(round(freq.max))
        if freq.current and freq.current > 0:
            return int(round(freq.current))
    try:
        with open(cpuinfo, encoding="ascii", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() == "cpu MHz":
                    return int(round(float(value)))
    except (OSError, ValueError):
        pass
    return 0


def _busy_total(times: Any) -> tuple[float, float]:
    # Same accounting as psutil.cpu_percent: guest time is already counted in
    # user/nice, and iowait is idle time.
    total = sum(times)
    for field in ("guest", "guest_nice"):
        total -= getattr(times, field, 0.0)
    idle = times.idle + getattr(times, "iowait", 0.0)
    return total - idle, total


class Builtins:
    """Reads the built-in variables; keeps what CPUUSED needs between samples."""

    def __init__(self, disk_path: str = "/") -> None:
        self.disk_path = disk_path
        self.nbproc = os.cpu_count() or 1
        # Nominal, so read once: the current clock flickers with power states.
        self.cpufreq = nominal_cpu_mhz()
        # None: the first CPUUSED is the average since boot, not a 0-length interval.
        self._last_cpu: tuple[float, float] | None = None

    def cpu_used(self) -> float:
        """% of all CPUs busy since the previous call (since boot on the first)."""
        busy, total = _busy_total(psutil.cpu_times())
        last = self._last_cpu
        self._last_cpu = (busy, total)
        if last is not None:
            dbusy, dtotal = busy - last[0], total - last[1]
            if dtotal > 0:
                return _r(min(100.0, max(0.0, 100.0 * dbusy / dtotal)))
        return _r(100.0 * busy / total) if total > 0 else 0.0

    def read(self) -> dict[str, int | float]:
        """The built-in variables but NBUSERS and NBSESSIONS, which come from the sessions."""
        load1, load5, load15 = os.getloadavg()
        vm = psutil.virtual_memory()
        swap = psutil.swap_memory()
        try:
            disk = _r(psutil.disk_usage(self.disk_path).percent)
        except OSError:
            disk = 0.0
        values: dict[str, int | float] = {
            "NBPROC": self.nbproc,
            "CPUFREQ": self.cpufreq,
            "LOADAVG": _r(load1),
            "LOADAVG5": _r(load5),
            "LOADAVG15": _r(load15),
            "CPUUSED": self.cpu_used(),
            "MEMTOTAL": vm.total // MIB,
            "MEMUSED": (vm.total - vm.available) // MIB,
            "MEMAVAIL": vm.available // MIB,
            "MEMUSEDPCT": _r(vm.percent),
            "SWAPUSEDPCT": _r(swap.percent),
            "DISKUSEDPCT": disk,
            "UPTIME": max(0, int(time.time() - psutil.boot_time())),
        }
        return values
