"""A ``<group prometheus=... discover=...>``: its nodes and their figures from a Prometheus server.

At each poll the group's nodes are the series of its ``discover`` query (one
node per ``instance`` label) and its explicit ``<node instance=...>``
children; then every variable is one instant query for the whole group, all
asked at once: the built-ins from node_exporter's metrics
(:data:`BUILTIN_QUERIES`, the same units as the agent's) and the
``<variables><variable promql=...>`` of lbsconfig.xml.

Staleness: an instant query answers with its evaluation time, which says
nothing of how old the figures are (Prometheus returns a sample up to five
minutes old). One more query per poll, :data:`FRESHNESS_QUERY`, gives each
node the Prometheus timestamp of its last node_exporter sample (one scrape
writes all the built-ins' sources at once); each PromQL
variable's query carries, in the same answer, the timestamps of its own
samples: ``Q or label_replace(min by (instance) (timestamp(Q)), "lb_timestamp",
...)`` (``timestamp()`` gives a plain selector's sample time and the
evaluation time of anything computed). A node whose sample is older than the
fall window (``fall`` × ``interval``), measured on Prometheus's own clock,
fails that poll, as a node whose required metric is missing does; it goes
down after ``fall`` such polls like an agent that does not answer.

A server that cannot be read, refuses the discover query or a built-in's,
or answers more than ``max-series`` series fails the poll of every node of
the group, with words naming the group; a PromQL variable's failed query
leaves that variable out (its rule then says so) and is named once in the
log. Runs on the balancer's loop thread.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import re
import time
import urllib.parse
from dataclasses import dataclass

from common.ratelimit import ProblemLog
from lbserver.config import Group, Node
from lbserver.core.agentless.exposition import DRAIN_METRIC, MIB, SESSIONS_METRIC, USERS_METRIC
from lbserver.core.agentless.promapi import Sample, Server, answer, parse_vector, plain_by_instance, query
from lbserver.core.poller import PollError
from lbserver.core.remote import RemoteNode

log = logging.getLogger("lbserver")
_problems = ProblemLog(log)

TIMESTAMP_LABEL = "lb_timestamp"
_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]")
_ROOT = 'mountpoint="/"'


@dataclass(frozen=True)
class Query:
    """One variable's PromQL: ``expr`` gives the value per instance, ``source`` the samples its age is taken from."""

    expr: str
    source: str
    required: bool = True
    stamped: bool = False
    """Whether the answer carries its samples' timestamps (PromQL variables; the built-ins have FRESHNESS_QUERY)."""
    scale: float = 1.0
    kind: str = "float"  # "float" (2 decimals), "int" (floor), "pct" (2 decimals, NaN is 0)


def _by(expr: str) -> str:
    return f"max by (instance) ({expr})"


BUILTIN_QUERIES: dict[str, Query] = {
    "NBPROC": Query('count by (instance) (node_cpu_seconds_total{mode="idle"})',
                    'node_cpu_seconds_total{mode="idle"}', kind="int"),
    "CPUFREQ": Query(_by("node_cpu_frequency_max_hertz"), "node_cpu_frequency_max_hertz", required=False,
                     scale=1e-6, kind="round"),
    "LOADAVG": Query(_by("node_load1"), "node_load1"),
    "LOADAVG5": Query(_by("node_load5"), "node_load5"),
    "LOADAVG15": Query(_by("node_load15"), "node_load15"),
    "CPUUSED": Query('100 * (1 - sum by (instance) (rate(node_cpu_seconds_total{mode=~"idle|iowait"}[1m])) '
                     '/ sum by (instance) (rate(node_cpu_seconds_total[1m])))',
                     'node_cpu_seconds_total{mode="idle"}', kind="pct"),
    "MEMTOTAL": Query(_by("node_memory_MemTotal_bytes"), "node_memory_MemTotal_bytes", scale=1 / MIB, kind="int"),
    "MEMUSED": Query(_by("node_memory_MemTotal_bytes - node_memory_MemAvailable_bytes"),
                     "node_memory_MemAvailable_bytes", scale=1 / MIB, kind="int"),
    "MEMAVAIL": Query(_by("node_memory_MemAvailable_bytes"), "node_memory_MemAvailable_bytes", scale=1 / MIB,
                      kind="int"),
    "MEMUSEDPCT": Query(_by("100 * (1 - node_memory_MemAvailable_bytes / node_memory_MemTotal_bytes)"),
                        "node_memory_MemAvailable_bytes", kind="pct"),
    "SWAPUSEDPCT": Query(_by("100 * (node_memory_SwapTotal_bytes - node_memory_SwapFree_bytes) "
                             "/ node_memory_SwapTotal_bytes"), "node_memory_SwapFree_bytes", kind="pct"),
    "DISKUSEDPCT": Query(_by(f"100 * (node_filesystem_size_bytes{{{_ROOT}}} - node_filesystem_free_bytes{{{_ROOT}}}) "
                             f"/ (node_filesystem_size_bytes{{{_ROOT}}} - node_filesystem_free_bytes{{{_ROOT}}} "
                             f"+ node_filesystem_avail_bytes{{{_ROOT}}})"),
                         f"node_filesystem_avail_bytes{{{_ROOT}}}", kind="pct"),
    "UPTIME": Query(_by("node_time_seconds - node_boot_time_seconds"), "node_time_seconds", kind="int"),
    "NBUSERS": Query(_by(USERS_METRIC), USERS_METRIC, required=False, kind="int"),
    "NBSESSIONS": Query(_by(SESSIONS_METRIC), SESSIONS_METRIC, required=False, kind="int"),
}
"""The built-ins from node_exporter's metrics, as the agent computes them (see docs/agentless.md)."""

FRESHNESS_QUERY = "min by (instance) (timestamp(node_load1))"
"""Per node, the Prometheus time of its last node_exporter scrape: node_load1's sample, which every scrape writes.

One metric, because ``timestamp()`` gives sample times only for a plain
selector, and a selector over several names fails in ``timestamp()`` (the
names dropped, their series collide)."""

DRAIN_QUERY = Query(f"max by (instance, reason) ({DRAIN_METRIC})", DRAIN_METRIC, required=False)
"""A node whose site writes ``mille_xterm_drained{reason="..."} 1`` is drained at its source."""


def with_timestamp(q: Query) -> str:
    """``q``'s expression, and the age of its source samples when it is ``stamped``, in one query."""
    if not q.stamped:
        return q.expr
    return (f"({q.expr}) or label_replace(min by (instance) (timestamp({q.source})), "
            f'"{TIMESTAMP_LABEL}", "1", "__name__", ".*")')


_MISSING = object()


def _convert(q: Query, value: float) -> float | int | None:
    """``value`` in the variable's unit (None: not a finite number)."""
    value *= q.scale
    if math.isnan(value):
        return 0.0 if q.kind == "pct" else None
    if not math.isfinite(value):
        return None
    if q.kind == "int":
        return max(0, int(value))
    if q.kind == "round":
        return int(round(value))
    return round(value, 2)


def _column(q: Query, values: dict[str, float]) -> dict[str, float | int | None]:
    """Every value of one answer in the variable's unit, as :func:`_convert` gives each (None: not finite).

    One comprehension per kind when every value is finite (the scales are
    at most 1, so a finite value stays finite): at ten thousand nodes a
    fifth of the time of a call per value.
    """
    s = q.scale
    if not all(map(math.isfinite, values.values())):
        return {i: _convert(q, v) for i, v in values.items()}
    if q.kind == "int":
        return {i: int(v * s) if v * s > 0 else 0 for i, v in values.items()}
    if q.kind == "round":
        return {i: int(round(v * s)) for i, v in values.items()}
    return {i: round(v * s, 2) for i, v in values.items()}


@functools.lru_cache(maxsize=65536)  # the same nodes poll after poll: one Node each, not one a poll
def node_for(instance: str, name: str | None, max_sessions: int | None) -> Node:
    """The node of ``instance`` (a ``host:port`` label) in a group whose nodes take ``max_sessions``.

    Raises ValueError for a label that is not host:port.
    """
    url = urllib.parse.urlsplit(f"http://{instance}")
    host, port = url.hostname, url.port  # raises ValueError on a bad port
    if not host or len(instance) > 255:
        raise ValueError(f"instance {instance[:80]!r} is not host:port")
    name = name or _NAME_CHARS.sub("-", host).strip("-.") or "node"
    return Node(name=name, address=f"http://{instance}", host=host, port=port or 80,
                max_sessions=max_sessions, source="prometheus")


@dataclass
class _Answer:
    """One variable's answer, by instance: values, source sample times, and its error.

    ``converted``: the values in the variable's unit (:func:`_column`), made
    as soon as the answer arrives, while the other queries are still out.
    """

    values: dict[str, float]
    stamps: dict[str, float]
    at: float
    error: str | None = None
    converted: dict | None = None


def _split(samples: list[Sample], name: str) -> _Answer:
    answer = _Answer({}, {}, 0.0)
    for s in samples:
        answer.at = max(answer.at, s.at)
        instance = s.labels.get("instance")
        if not isinstance(instance, str):
            continue
        if s.labels.get(TIMESTAMP_LABEL) == "1":
            answer.stamps[instance] = s.value
        elif instance in answer.values and name != "DRAINED":
            answer.error = f"several series for instance {instance} (aggregate by (instance))"
        elif name != "DRAINED" or s.value == 1:
            answer.values[instance] = s.value
            if name == "DRAINED":
                answer.values[instance] = s.labels.get("reason", "")  # type: ignore[assignment]
    return answer


class PrometheusGroup:
    """Reads one ``prometheus`` group at each poll; keeps nothing between polls but the group's settings."""

    def __init__(self, group: Group, promql: dict[str, str], timeout: float, max_bytes: int, fall_window: float):
        self.group = group
        self.server = Server(group.prometheus, group.token, group.user)
        self.queries = dict(BUILTIN_QUERIES)
        self.queries.update({name: Query(expr, expr, required=False, stamped=True) for name, expr in promql.items()})
        self.timeout, self.fall_window = timeout, fall_window
        self.fresh = _Answer({}, {}, 0.0)  # FRESHNESS_QUERY's last answer: each node's oldest source sample
        self.sampled_at = time.time()
        self.max_series = group.max_series
        # Room for a series and its timestamp line (about 150 bytes each in Prometheus's JSON).
        self.max_bytes = max(max_bytes, 400 * group.max_series)

    def _words(self, what: str, exc: PollError) -> PollError:
        return PollError(f"group {self.group.name}: Prometheus {self.group.prometheus}: {what}: {exc}")

    async def _ask(self, what: str, expr: str, per_node: int = 2) -> list[Sample]:
        """The answer to ``expr`` (at most ``per_node`` series a node: a variable's value and its timestamp)."""
        try:
            return await query(self.server, expr, self.timeout, self.max_bytes, per_node * self.max_series)
        except PollError as exc:
            raise self._words(what, exc) from None

    async def _reduced(self, what: str, expr: str, name: str, per_node: int = 2) -> _Answer:
        """The answer to ``expr``, reduced at once to its values and timestamps by instance.

        Reduced as soon as it arrives, so that at ten thousand nodes the
        answers' series never all live at once; an answer of plain
        ``by (instance)`` series goes straight to values by instance.
        """
        try:
            body = await answer(self.server, expr, self.timeout, self.max_bytes)
            plain = plain_by_instance(body, per_node * self.max_series) if name != "DRAINED" else None
            if plain is not None:
                return _Answer(plain[0], {}, plain[1])
            return _split(parse_vector(body, per_node * self.max_series), name)
        except PollError as exc:
            raise self._words(what, exc) from None

    async def _answer(self, name: str, q: Query) -> _Answer:
        """Variable ``name``'s answer, its values already in the variable's unit (:attr:`_Answer.converted`)."""
        reduced = await self._reduced(f"variable {name}", with_timestamp(q), name)
        if name != "DRAINED":
            reduced.converted = _column(q, reduced.values)
        return reduced

    async def instances(self) -> list[tuple[str, str | None]]:
        """(instance, name or None) of every member: the explicit ones, then the discovered ones, sorted."""
        members = list(self.group.instances)
        if self.group.discover:
            found = await self._ask("discover query", self.group.discover, per_node=1)
            known = {i for i, _ in members}
            found_instances = {s.labels.get("instance") for s in found}
            for inst in sorted(i for i in found_instances - known if isinstance(i, str) and i):
                members.append((inst, None))
        return members

    async def fetch(self) -> list[RemoteNode]:
        """The group's nodes with their states (or why not); raises PollError when the group cannot be read."""
        names = list(self.queries) + ["DRAINED"]
        asks = [self._answer(n, self.queries[n]) for n in self.queries]
        asks.append(self._answer("DRAINED", DRAIN_QUERY))
        members, fresh, *answers = await asyncio.gather(
            self.instances(), self._reduced("freshness query", FRESHNESS_QUERY, "", per_node=1), *asks,
            return_exceptions=True)
        for outcome in (members, fresh):
            if isinstance(outcome, BaseException):
                raise outcome
        self.fresh = fresh
        self.sampled_at = time.time()
        by_name: dict[str, _Answer] = {}
        for name, answer in zip(names, answers):
            if isinstance(answer, BaseException):
                if not isinstance(answer, PollError):
                    raise answer
                if name in BUILTIN_QUERIES and BUILTIN_QUERIES[name].required:
                    raise answer
                _problems.note((self.group.name, name), str(answer), f"variable {name} of group {self.group.name}",
                               f"group {self.group.name}: variable {name} answers again")
                continue
            _problems.note((self.group.name, name), None, "", f"group {self.group.name}: variable {name} answers again")
            by_name[name] = answer
        return self._nodes(members, by_name)

    def _columns(self, answers: dict[str, _Answer]) -> list[tuple[str, Query, _Answer, dict]]:
        """Each variable's answer converted whole, a column at a time: (name, query, answer, {instance: value}).

        At ten thousand nodes, much less time than converting each node's figures one by one.
        """
        return [(var, q, answers[var], answers[var].converted if answers[var].converted is not None
                 else _column(q, answers[var].values))
                for var, q in self.queries.items() if var in answers]

    def _nodes(self, members: list[tuple[str, str | None]], answers: dict[str, _Answer]) -> list[RemoteNode]:
        columns = self._columns(answers)
        drained = answers.get("DRAINED")
        # The columns a node's figures come from when all is well: a required one that failed sends every node
        # the slow way (:meth:`_state` says why); an optional one that answered nothing adds nothing.
        fast = [(var, converted, answer) for var, q, answer, converted in columns if converted or q.required]
        if any(answer.error is not None and self.queries[var].required for var, _, answer in fast):
            fast = None
        else:
            names = tuple(var for var, _, _ in fast)
            convs = [converted for _, converted, _ in fast]
            stamped = [answer for _, _, answer in fast if answer.stamps]
        fresh, fresh_at, window = self.fresh.values, self.fresh.at, self.fall_window
        out: list[RemoteNode] = []
        taken: set[str] = set()
        for instance, name in members:
            try:
                node = node_for(instance, name, self.group.max_sessions)
            except ValueError as exc:
                log.warning("group %s: series left out: %s", self.group.name, exc)
                continue
            if node.name in taken:  # two exporters on one host: the port tells them apart
                node = node_for(instance, f"{node.name}-{node.port}", self.group.max_sessions)
            taken.add(node.name)
            state = None
            if fast is not None:
                # Every figure there, finite, fresh: the state at once, as _state would make it.
                row = [conv.get(instance, _MISSING) for conv in convs]
                stamp = fresh.get(instance)
                if (_MISSING not in row and None not in row and (stamp is None or fresh_at - stamp <= window)
                        and not any(a.at - a.stamps.get(instance, a.at) > window for a in stamped)):
                    variables = {"CPUFREQ": 0, "DRAINED": False, "DRAIN_REASON": ""}
                    variables.update(zip(names, row))
                    state = self._made(node.name, instance, variables, drained)
            if state is not None:
                out.append(RemoteNode(node, state, None))
            else:
                out.append(RemoteNode(node, *self._state(node.name, instance, columns, drained)))
        return out

    def _state(self, name: str, instance: str, columns: list, drained: _Answer | None) -> tuple[dict | None, str | None]:
        """``instance``'s state from the converted ``columns`` and the drain answer, or why it has none."""
        stamp = self.fresh.values.get(instance)
        if stamp is not None and self.fresh.at - stamp > self.fall_window:
            return None, (f"stale sample: node_exporter's figures for {instance} are {self.fresh.at - stamp:.0f} s "
                          f"old in Prometheus (more than fall x interval = {self.fall_window:g} s)")
        variables: dict = {"CPUFREQ": 0, "DRAINED": False, "DRAIN_REASON": ""}  # as the agent, where unknown
        for var, q, answer, converted in columns:
            if answer.error is not None and q.required:
                return None, f"variable {var}: {answer.error}"
            value = converted.get(instance, _MISSING)
            if value is _MISSING:
                if q.required:
                    return None, f"no sample of {q.source} for {instance} in Prometheus (needed for {var})"
                continue
            if answer.stamps:
                stamp = answer.stamps.get(instance)
                if stamp is not None and answer.at - stamp > self.fall_window:
                    return None, (f"stale sample: {q.source} for {instance} is {answer.at - stamp:.0f} s old in "
                                  f"Prometheus (more than fall x interval = {self.fall_window:g} s)")
            if value is None:
                if q.required:
                    return None, f"variable {var}: not a finite number for {instance}"
                continue
            variables[var] = value
        return self._made(name, instance, variables, drained), None

    def _made(self, name: str, instance: str, variables: dict, drained: _Answer | None) -> dict:
        """The agent-shaped state of node ``name`` from its checked ``variables`` and the drain answer."""
        if drained is not None and instance in drained.values:
            stamp = drained.stamps.get(instance)
            if stamp is None or drained.at - stamp <= self.fall_window:
                variables["DRAINED"] = True
                variables["DRAIN_REASON"] = " ".join(str(drained.values[instance]).split())[:200] or "drained"
        # The shape validate_state gives an agent's reply, built here from figures checked one by one above
        # (finite numbers, a reason cut to 200 characters): at ten thousand nodes, checking again costs a tenth.
        return {"hostname": name, "agent_version": "prometheus", "sampled_at": self.sampled_at,
                "variables": variables, "users": [], "sessions": None, "sessions_error": None}


async def fetch_group(group: Group, promql: dict[str, str], timeout: float, max_bytes: int,
                      fall_window: float) -> list[RemoteNode]:
    """Read one ``prometheus`` group's nodes; raises :class:`PollError` naming the group when it cannot be read."""
    return await PrometheusGroup(group, promql, timeout, max_bytes, fall_window).fetch()


__all__ = ["BUILTIN_QUERIES", "DRAIN_QUERY", "FRESHNESS_QUERY", "PrometheusGroup", "Query", "fetch_group", "node_for", "with_timestamp"]
