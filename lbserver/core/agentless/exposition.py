"""A node_exporter page (Prometheus text format) as the built-in variables an agent reports.

Only the metric families the built-ins need are parsed: the page's lines are
first filtered to those families with one regular expression over the bytes
(a full node_exporter page is 50 to 200 KB, the lines kept about 30), and
what is kept is read by prometheus_client's maintained parser, or, when
every line kept is in the plain form node_exporter writes, by a fast path
that reads it as that parser does (and is checked against it): a fifth of a
millisecond a page, where parsing the whole page takes about eight. Units are the
agent's (see ``lbagent/metrics.py``): memory in MiB, percentages 0-100 with
two decimals, frequency in MHz, uptime in whole seconds.

CPUUSED is the share of CPU time busy between two scrapes of the same node,
as the agent measures it between two samples; the counters of the previous
scrape are kept by the caller in a :data:`CpuCounters` map (the first scrape
gives the average since boot, like the agent's first sample).

The textfile collector carries what only the site knows (see
docs/agentless.md): ``mille_xterm_drained{reason="..."} 1`` drains the node
at its source, ``mille_xterm_nbusers`` and ``mille_xterm_nbsessions`` give
NBUSERS and NBSESSIONS. Pure functions; the CPU counter map is the caller's
and is touched on the caller's thread only.
"""

from __future__ import annotations

import math
import re
from typing import Iterable, Mapping

from prometheus_client.parser import text_string_to_metric_families

MIB = 1024 * 1024

DRAIN_METRIC = "mille_xterm_drained"
USERS_METRIC = "mille_xterm_nbusers"
SESSIONS_METRIC = "mille_xterm_nbsessions"

FAMILIES = (
    "node_cpu_seconds_total", "node_load1", "node_load5", "node_load15",
    "node_memory_MemTotal_bytes", "node_memory_MemAvailable_bytes", "node_memory_SwapTotal_bytes",
    "node_memory_SwapFree_bytes", "node_filesystem_size_bytes", "node_filesystem_free_bytes",
    "node_filesystem_avail_bytes", "node_boot_time_seconds", "node_time_seconds",
    "node_cpu_frequency_max_hertz", "node_cpu_scaling_frequency_max_hertz", "node_cpu_scaling_frequency_hertz",
    DRAIN_METRIC, USERS_METRIC, SESSIONS_METRIC,
)
"""The metric families read; every other line of the page is skipped unparsed."""

COLLECTORS = ("cpu", "cpufreq", "loadavg", "meminfo", "filesystem", "stat", "time", "textfile")
"""node_exporter's collectors that give :data:`FAMILIES` (asked with collect[] when the address names none)."""

REQUIRED = {
    "NBPROC": "node_cpu_seconds_total", "LOADAVG": "node_load1", "LOADAVG5": "node_load5",
    "LOADAVG15": "node_load15", "MEMTOTAL": "node_memory_MemTotal_bytes",
    "MEMAVAIL": "node_memory_MemAvailable_bytes", "SWAPUSEDPCT": "node_memory_SwapTotal_bytes",
    "DISKUSEDPCT": 'node_filesystem_size_bytes{mountpoint="/"}', "UPTIME": "node_boot_time_seconds",
}
"""Built-ins a page must give, with the metric that gives each (named in the error when it is missing)."""

# A sample line of one of FAMILIES, with the newline before it: the literal newline lets the engine jump from
# line to line instead of trying every byte, and the names are factored by prefix so that a line of another
# family fails within a few characters (three times faster than a plain alternation). Of the file systems,
# only the root's; HELP and TYPE are not needed (the samples keep their names untyped).
_WANTED = re.compile(
    rb"\n(?:node_(?:cpu_(?:seconds_total|frequency_max_hertz|scaling_frequency_(?:max_)?hertz)|load(?:1|5|15)"
    rb"|memory_(?:MemTotal|MemAvailable|SwapTotal|SwapFree)_bytes|boot_time_seconds|time_seconds)[ {]"
    rb"|node_filesystem_(?:size|free|avail)_bytes\{[^\n]*mountpoint=\"/\"[,}]"
    rb"|mille_xterm_(?:drained|nbusers|nbsessions)[ {])[^\n]*")

CpuCounters = dict[str, tuple[float, float]]
"""Per node, the (busy, total) CPU seconds of its previous scrape."""


class ExpositionError(ValueError):
    """The page is not a node_exporter page the built-ins can be read from; ``str()`` says why."""


def _round(value: float) -> float:
    return round(float(value), 2)


_LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="[^"\\\n]*"'
_PLAIN_LINE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(" + _LABEL + r"(?:," + _LABEL + r")*,?)?\})? "
                         r"([-+]?(?:[0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?|Inf|NaN))")
_LABELS = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="([^"]*)"')

Samples = dict[str, list[tuple[dict[str, str], float]]]


def _plain(text: str) -> Samples | None:
    """The samples of ``text`` when every line is in the plain form node_exporter writes, else None.

    The plain form: ``name{label="value",...} number``, one space, no escape,
    no timestamp. Such a line means exactly what prometheus_client's parser
    reads from it; for anything else (None) that parser gives the verdict.
    """
    out: Samples = {}
    for line in text.split("\n"):
        if not line:
            continue
        m = _PLAIN_LINE.fullmatch(line)
        if m is None:
            return None
        name, labels, value = m.groups()
        out.setdefault(name, []).append((dict(_LABELS.findall(labels)) if labels else {}, float(value)))
    return out


def samples(page: bytes) -> Samples:
    """The samples of :data:`FAMILIES` on ``page``, by sample name: ``[(labels, value), ...]``.

    The lines kept are read by a fast path when all are plain (:func:`_plain`:
    a third of the parser's time, the same result), else by prometheus_client's
    parser. Raises :class:`ExpositionError` for text the parser rejects.
    """
    kept = b"".join(m.group(0) for m in _WANTED.finditer(b"\n" + page))
    try:
        text = kept.decode("utf-8")
    except UnicodeDecodeError:
        raise ExpositionError("not UTF-8 text") from None
    plain = _plain(text)
    if plain is not None:
        return plain
    return reference_samples(text)


def reference_samples(text: str) -> Samples:
    """The samples of exposition ``text`` as prometheus_client's parser reads them."""
    out: Samples = {}
    try:
        for family in text_string_to_metric_families(text + "\n"):
            for s in family.samples:
                out.setdefault(s.name, []).append((s.labels, float(s.value)))
    except (ValueError, TypeError, IndexError) as exc:  # the parser's words for a malformed line
        raise ExpositionError(f"malformed exposition text: {str(exc)[:120]}") from None
    return out


def _one(found: Mapping[str, list], name: str, where: str | None = None) -> float | None:
    """The value of ``name`` (the sample whose mountpoint is ``where`` when given), None when absent."""
    for labels, value in found.get(name, ()):
        if where is None or labels.get("mountpoint") == where:
            return value
    return None


def _cpu(found: Mapping[str, list]) -> tuple[int, float, float]:
    """(processors, busy seconds, total seconds), counted as psutil and the agent count them."""
    cpus: set[str] = set()
    busy = total = 0.0
    for labels, value in found.get("node_cpu_seconds_total", ()):
        cpus.add(labels.get("cpu", ""))
        total += value
        if labels.get("mode") not in ("idle", "iowait"):
            busy += value
    return len(cpus), busy, total


def _pct(part: float, whole: float) -> float:
    return _round(100.0 * part / whole) if whole > 0 else 0.0


def _finite(values: Iterable[float | None]) -> bool:
    return all(v is None or math.isfinite(v) for v in values)


def builtins(found: Mapping[str, list], node: str, counters: CpuCounters | None = None) -> dict:
    """The built-in variables from the parsed ``samples`` of ``node``'s page.

    ``counters`` keeps each node's CPU counters from one scrape to the next
    (CPUUSED); it is updated. Raises :class:`ExpositionError` naming the
    first missing metric a required built-in needs.
    """
    for variable, metric in REQUIRED.items():
        name = metric.split("{")[0]
        where = "/" if "mountpoint" in metric else None
        if _one(found, name, where) is None:
            raise ExpositionError(f"no {metric} on the page (needed for {variable}; is its collector enabled?)")
    nbproc, busy, total = _cpu(found)
    mem_total = _one(found, "node_memory_MemTotal_bytes")
    mem_avail = _one(found, "node_memory_MemAvailable_bytes")
    swap_total = _one(found, "node_memory_SwapTotal_bytes")
    swap_free = _one(found, "node_memory_SwapFree_bytes") or 0.0
    size = _one(found, "node_filesystem_size_bytes", "/")
    free = _one(found, "node_filesystem_free_bytes", "/") or 0.0
    avail = _one(found, "node_filesystem_avail_bytes", "/") or 0.0
    boot = _one(found, "node_boot_time_seconds")
    now = _one(found, "node_time_seconds")
    freq = max((v for _, v in found.get("node_cpu_frequency_max_hertz", ())), default=None)
    for fallback in ("node_cpu_scaling_frequency_max_hertz", "node_cpu_scaling_frequency_hertz"):
        if freq is None:  # as the agent: the maximum where the system gives one, else the current clock
            freq = max((v for _, v in found.get(fallback, ())), default=None)
    freq = freq or 0.0
    loads = [_one(found, name) for name in ("node_load1", "node_load5", "node_load15")]
    if not _finite((busy, total, mem_total, mem_avail, swap_total, swap_free, size, free, avail, boot, now, freq,
                    *loads)):
        raise ExpositionError("a figure is not a finite number")
    previous = counters.get(node) if counters is not None else None
    if counters is not None:
        counters[node] = (busy, total)
    if previous is not None and total - previous[1] > 0:
        cpu_used = _round(min(100.0, max(0.0, 100.0 * (busy - previous[0]) / (total - previous[1]))))
    else:
        cpu_used = _pct(busy, total)
    used_disk = size - free
    values: dict = {
        "NBPROC": nbproc,
        "CPUFREQ": int(round(freq / 1e6)),
        "LOADAVG": _round(loads[0]),
        "LOADAVG5": _round(loads[1]),
        "LOADAVG15": _round(loads[2]),
        "CPUUSED": cpu_used,
        "MEMTOTAL": int(mem_total // MIB),
        "MEMUSED": int((mem_total - mem_avail) // MIB),
        "MEMAVAIL": int(mem_avail // MIB),
        "MEMUSEDPCT": _pct(mem_total - mem_avail, mem_total),
        "SWAPUSEDPCT": _pct(swap_total - swap_free, swap_total),
        "DISKUSEDPCT": _pct(used_disk, used_disk + avail),
        "UPTIME": max(0, int((now if now is not None else boot) - boot)),
    }
    values.update(site_values(found))
    return values


def site_values(found: Mapping[str, list]) -> dict:
    """DRAINED and DRAIN_REASON, and NBUSERS and NBSESSIONS when the site writes them (textfile collector)."""
    values: dict = {"DRAINED": False, "DRAIN_REASON": ""}
    for labels, value in found.get(DRAIN_METRIC, ()):
        if value == 1:
            values["DRAINED"] = True
            values["DRAIN_REASON"] = " ".join(labels.get("reason", "").split())[:200] or "drained"
            break
    for variable, metric in (("NBUSERS", USERS_METRIC), ("NBSESSIONS", SESSIONS_METRIC)):
        value = _one(found, metric)
        if value is not None and math.isfinite(value) and value >= 0:
            values[variable] = int(value)
    return values


def state(page: bytes, node: str, sampled_at: float, counters: CpuCounters | None = None) -> dict:
    """An agent-shaped ``get_state`` reply for ``node`` from its node_exporter ``page``."""
    return {"hostname": node, "agent_version": "node_exporter", "sampled_at": sampled_at,
            "variables": builtins(samples(page), node, counters), "users": []}


__all__ = ["COLLECTORS", "CpuCounters", "DRAIN_METRIC", "ExpositionError", "FAMILIES", "REQUIRED",
           "SESSIONS_METRIC", "USERS_METRIC", "builtins", "samples", "site_values", "state"]
