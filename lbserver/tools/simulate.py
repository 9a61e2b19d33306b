"""Login-storm simulator: the real weights and Selector against synthetic agents.

No sockets and no clock: logins arrive at computed times, the "agents"
report exact figures at each poll (a lagging variable reports its average,
see ``[lag]``), and every login adds a known load to the server that got
it. Two figures of merit, both on the measured variable (LOADAVG by
default)::

    ideal(server) = total final load × size(server) / total size
    worst / ideal = max over servers of final(server) / ideal(server)
    misplaced     = Σ over servers of max(0, logins(server) - water(server)) / logins

``worst / ideal`` is 1.00 when the load ends spread exactly in proportion to
size. ``water(server)`` is where water-filling puts the storm: each login on
the server whose load per unit of size is lowest, knowing every true load at
once (computed exactly, in fractions of a login); ``misplaced`` is the share
of the storm that would have to move to match it.

Several balancers may share the storm (logins go to each in turn); when
``shared``, each tells the others of every pick at once, as ``<peers>`` do.

Scenario files are INI::

    [storm]
    logins = 300          ; terminals logging in
    duration = 60         ; seconds over which they arrive, evenly spaced
    poll-interval = 30    ; seconds between polls (the first at t=0)
    measure = LOADAVG     ; the variable the figures are computed on
    arrivals = even       ; even, or random (uniform times drawn from the seed)
    balancers = 1         ; balancers sharing the storm, logins to each in turn
    shared = true         ; whether they tell each other of their picks

    [per-session]         ; what one new session adds to each variable
    LOADAVG = 0.15
    NBSESSIONS = 1

    [lag]                 ; variables the agents report as an average: its time constant, seconds
    LOADAVG = 60          ; (the kernel's one-minute load average)

    [server xapp1]        ; one section per server: its variables at t=0
    NBPROC = 2
    CPUFREQ = 2400
    LOADAVG = 0.9
    per-session.MEMUSEDPCT = 2.5   ; this server's own per-session figure

    [rule LOADAVG]        ; optional rules, as in lbsconfig.xml <rules>
    weight = 50
    capacity = 1.0
    per-cpu = true
    per-session = 0.15
    lag = 60
    critical = 4

    [require GDM]
    equals = true

Rules come from ``-c lbsconfig.xml`` when given, else from the scenario,
else :data:`lbserver.config.loader.DEFAULT_RULES`.
"""

from __future__ import annotations

import argparse
import configparser
import dataclasses
import math
import random
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Mapping, Sequence, TextIO

from common.xmlconfig import ConfigError
from lbserver.config import DEFAULT_RULES, Group, Node, Require, Rule, ServerConfig
from lbserver.config.settings import AGENT_PORTS
from lbserver.core.health import NodeRecord
from lbserver.core.selection import DEFAULT_ALGORITHM, Selector, Snapshot
from lbserver.core.weights import node_size

ALGORITHMS = ("two-choices", "weighted-random", "least-loaded", "stale", "round-robin", "water-filling")
"""Every algorithm the simulator runs: the balancer's own two, then references (see :func:`run_scenario`)."""
SHIPPED = DEFAULT_ALGORITHM
GROUP = "SIM"


@dataclass(frozen=True)
class SimServer:
    """One simulated application server."""

    name: str
    variables: Mapping[str, object]
    per_session: Mapping[str, float] = field(default_factory=dict)  # overrides the storm's


@dataclass(frozen=True)
class Scenario:
    """A parsed scenario file."""

    servers: tuple[SimServer, ...]
    logins: int
    duration: float
    poll_interval: float
    per_session: Mapping[str, float]
    measure: str = "LOADAVG"
    arrivals: str = "even"
    rules: tuple[Rule, ...] = ()
    requires: tuple[Require, ...] = ()
    path: str = "<scenario>"
    lags: Mapping[str, float] = field(default_factory=dict)
    """Variables reported as an exponential average of their true value: its time constant, seconds."""
    balancers: int = 1
    shared: bool = True

    def added(self, server: SimServer, variable: str) -> float:
        """What one session adds to ``variable`` on ``server``."""
        return float(server.per_session.get(variable, self.per_session.get(variable, 0.0)))


@dataclass
class SimResult:
    """The outcome of one run."""

    algorithm: str
    seed: int
    start: dict[str, float]
    final: dict[str, float]
    ideal: dict[str, float]
    sizes: dict[str, float]
    picks: dict[str, int]
    reasons: dict[str, int]
    excluded: dict[str, tuple[str, ...]] = field(default_factory=dict)  # unhealthy at the first poll, why
    water: dict[str, float] | None = None
    """Logins per server under water-filling (None when the measure does not grow with sessions everywhere)."""
    balancers: int = 1
    shared: bool = True

    @property
    def ratios(self) -> dict[str, float]:
        """Each server's final load relative to its ideal share."""
        return {n: (self.final[n] / self.ideal[n] if self.ideal[n] > 0 else 1.0) for n in self.final}

    @property
    def worst(self) -> float:
        """The figure: the worst server's final load relative to its ideal share."""
        return max(self.ratios.values())

    @property
    def misplaced(self) -> float | None:
        """The share of logins placed otherwise than water-filling would (None: no water-filling reference)."""
        if self.water is None:
            return None
        total = sum(self.picks.values())
        return sum(max(0.0, self.picks[n] - self.water[n]) for n in self.picks) / total if total else 0.0


# --- scenario files -------------------------------------------------------

def _value(text: str) -> object:
    t = text.strip()
    if t.lower() in ("true", "false"):
        return t.lower() == "true"
    try:
        return int(t)
    except ValueError:
        pass
    try:
        return float(t)
    except ValueError:
        return t


class _Lines:
    """Line numbers of sections and keys, for error messages."""

    def __init__(self, text: str) -> None:
        self.sections: dict[str, int] = {}
        self.keys: dict[tuple[str, str], int] = {}
        section = ""
        for no, line in enumerate(text.splitlines(), 1):
            m = re.match(r"\s*\[([^\]]+)\]", line)
            if m:
                section = m.group(1).strip()
                self.sections.setdefault(section, no)
                continue
            m = re.match(r"\s*([^=:;#\s][^=:]*?)\s*[=:]", line)
            if m and section:
                self.keys.setdefault((section, m.group(1).strip().lower()), no)

    def of(self, section: str, key: str | None = None) -> int:
        if key is not None and (section, key.lower()) in self.keys:
            return self.keys[(section, key.lower())]
        return self.sections.get(section, 0)


def load_scenario(path: str) -> Scenario:
    """Parse a scenario file; raise ConfigError ``FILE:LINE: message``."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigError(path, 0, f"cannot read scenario: {exc.strerror or exc}") from None
    return parse_scenario(text, path)


def parse_scenario(text: str, path: str = "<scenario>") -> Scenario:
    """Parse scenario text (see the module docstring for the format)."""
    lines = _Lines(text)
    cp = configparser.ConfigParser(inline_comment_prefixes=(";", "#"), interpolation=None)
    cp.optionxform = str  # variable names are case-sensitive
    try:
        cp.read_string(text, source=path)
    except configparser.Error as exc:
        line = getattr(exc, "lineno", 0)
        raise ConfigError(path, line, f"not a scenario file: {exc.message.splitlines()[0]}") from None

    def err(section: str, key: str | None, message: str) -> ConfigError:
        return ConfigError(path, lines.of(section, key), message)

    def number(section: str, key: str, default: float | None = None, *, positive: bool = False,
               minimum: float | None = None) -> float | None:
        raw = cp.get(section, key, fallback=None)
        if raw is None:
            if default is None and positive:
                raise err(section, None, f"[{section}] needs {key}")
            return default
        try:
            v = float(raw)
        except ValueError:
            raise err(section, key, f"[{section}] {key}={raw!r}: expected a number") from None
        if positive and not v > 0:
            raise err(section, key, f"[{section}] {key}={raw!r}: must be greater than 0")
        if minimum is not None and v < minimum:
            raise err(section, key, f"[{section}] {key}={raw!r}: must be at least {minimum:g}")
        return v

    def boolean(section: str, key: str, default: bool = False) -> bool:
        raw = cp.get(section, key, fallback=str(default).lower()).strip().lower()
        if raw not in ("true", "false", "yes", "no", "1", "0"):
            raise err(section, key, f"[{section}] {key}={raw!r}: expected true or false")
        return raw in ("true", "yes", "1")

    if not cp.has_section("storm"):
        raise ConfigError(path, 0, "missing [storm] section")
    logins = number("storm", "logins", positive=True)
    if logins != int(logins):
        raise err("storm", "logins", "[storm] logins: expected a whole number")
    arrivals = cp.get("storm", "arrivals", fallback="even").strip()
    if arrivals not in ("even", "random"):
        raise err("storm", "arrivals", f"[storm] arrivals={arrivals!r}: expected even or random")
    balancers = number("storm", "balancers", 1.0, minimum=1.0)
    if balancers != int(balancers):
        raise err("storm", "balancers", "[storm] balancers: expected a whole number")
    per_session: dict[str, float] = {}
    if cp.has_section("per-session"):
        for k in cp.options("per-session"):
            per_session[k] = number("per-session", k)
    lags: dict[str, float] = {}
    if cp.has_section("lag"):
        for k in cp.options("lag"):
            lags[k] = number("lag", k, minimum=0.0)

    servers: list[SimServer] = []
    rules: list[Rule] = []
    requires: list[Require] = []
    for section in cp.sections():
        kind, _, name = section.partition(" ")
        name = name.strip()
        if section in ("storm", "per-session", "lag"):
            continue
        if kind in ("server", "rule", "require") and not name:
            raise err(section, None, f"[{section}]: give a name, e.g. [{kind} NAME]")
        if kind == "server":
            variables: dict[str, object] = {}
            own: dict[str, float] = {}
            for k, raw in cp.items(section):
                if k.startswith("per-session."):
                    own[k.split(".", 1)[1]] = number(section, k)
                else:
                    variables[k] = _value(raw)
            servers.append(SimServer(name=name, variables=variables, per_session=own))
        elif kind == "rule":
            rules.append(Rule(name=name, weight=number(section, "weight", positive=True),
                              capacity=number(section, "capacity", positive=True),
                              critical=number(section, "critical"),
                              per_cpu=boolean(section, "per-cpu"),
                              per_session=number(section, "per-session", 0.0, minimum=0.0),
                              lag=number(section, "lag", None, minimum=0.0),
                              line=lines.of(section)))
        elif kind == "require":
            equals = cp.get(section, "equals", fallback=None)
            req = Require(name=name, equals=equals, min=number(section, "min"),
                          max=number(section, "max"), line=lines.of(section))
            if req.equals is None and req.min is None and req.max is None:
                raise err(section, None, f"[{section}] needs equals, min or max")
            requires.append(req)
        else:
            raise err(section, None, f"unknown section [{section}]; expected [storm], [per-session], [lag], "
                                     "[server NAME], [rule NAME] or [require NAME]")
    if not servers:
        raise ConfigError(path, 0, "no [server NAME] section")
    measure = cp.get("storm", "measure", fallback="LOADAVG").strip()
    for s in servers:
        if not isinstance(s.variables.get(measure), (int, float)) or isinstance(s.variables.get(measure), bool):
            raise err(f"server {s.name}", None, f"[server {s.name}] needs a numeric {measure} (the measured variable)")
    return Scenario(servers=tuple(servers), logins=int(logins), duration=number("storm", "duration", positive=True),
                    poll_interval=number("storm", "poll-interval", positive=True), per_session=per_session,
                    measure=measure, arrivals=arrivals, rules=tuple(rules), requires=tuple(requires), path=path,
                    lags=lags, balancers=int(balancers), shared=boolean("storm", "shared", True))


# --- the simulation ---------------------------------------------------------

def _config(scenario: Scenario, rules: Sequence[Rule], requires: Sequence[Require]) -> ServerConfig:
    # Addresses are never contacted: the simulator has no sockets.
    port = AGENT_PORTS["http"]
    nodes = {s.name: Node(name=s.name, address=f"http://{s.name}:{port}", host=s.name, port=port)
             for s in scenario.servers}
    group = Group(name=GROUP, nodes=tuple(nodes), default=True)
    return ServerConfig(path=scenario.path, nodes=nodes, groups={GROUP: group}, default_group=GROUP,
                        rules=tuple(rules), requires=tuple(requires))


def _arrivals(scenario: Scenario, rng: random.Random) -> list[float]:
    n, d = scenario.logins, scenario.duration
    if scenario.arrivals == "random":
        return sorted(rng.uniform(0, d) for _ in range(n))
    return [(k + 0.5) * d / n for k in range(n)]


def _variables(scenario: Scenario, server: SimServer, logins: Sequence[float], t: float) -> dict[str, object]:
    """What ``server``'s agent reports at ``t`` after ``logins`` (their times): a lagging variable, its average."""
    out = dict(server.variables)
    for name in set(scenario.per_session) | set(server.per_session):
        base = out.get(name, 0)
        if isinstance(base, (int, float)) and not isinstance(base, bool):
            lag = scenario.lags.get(name, 0.0)
            if lag > 0:
                shown = sum(1.0 - math.exp(min(0.0, ti - t) / lag) for ti in logins if ti <= t)
            else:
                shown = sum(1 for ti in logins if ti <= t)
            out[name] = base + shown * scenario.added(server, name)
    return out


def _settled(scenario: Scenario, server: SimServer, sessions: int) -> float:
    """The measured variable once every session shows."""
    return float(server.variables[scenario.measure]) + sessions * scenario.added(server, scenario.measure)


def water_filling(start: Mapping[str, float], sizes: Mapping[str, float], added: Mapping[str, float],
                  logins: int) -> dict[str, float] | None:
    """Logins per server (in fractions) when each goes where the load per unit of size is lowest.

    The exact limit of that greedy rule: the storm raises the lowest servers
    to one level, ``level × size`` of load each, and leaves those above it
    alone. None when some server's load does not grow with sessions (there
    is no level to reach).
    """
    if not start or any(added[n] <= 0 or sizes[n] <= 0 for n in start):
        return None

    def needed(level: float) -> float:
        return sum(max(0.0, (level * sizes[n] - start[n]) / added[n]) for n in start)

    lo = min(start[n] / sizes[n] for n in start)
    hi = max(start[n] / sizes[n] for n in start) + logins * max(added.values()) / min(sizes.values()) + 1.0
    for _ in range(100):
        mid = (lo + hi) / 2
        if needed(mid) < logins:
            lo = mid
        else:
            hi = mid
    return {n: max(0.0, (hi * sizes[n] - start[n]) / added[n]) for n in start}


def run_scenario(config_rules: Sequence[Rule] | None, scenario: Scenario, algorithm: str = SHIPPED,
                 seed: int = 0, requires: Sequence[Require] | None = None, *, balancers: int | None = None,
                 shared: bool | None = None, reset: bool = False) -> SimResult:
    """Simulate ``scenario`` once with ``algorithm`` (one of :data:`ALGORITHMS`).

    ``config_rules`` None means the scenario's rules (or the defaults).
    "two-choices" and "weighted-random" are the balancer's algorithms, with
    its per-session compensation. The references: "least-loaded", the
    selectable node with the lowest projected load, deterministic; "stale",
    weighted-random with weights refreshed only at polls (per-session
    ignored: the original design); "round-robin", ignoring weights;
    "water-filling", each login where the true load per unit of size is
    lowest, knowing every login at once whatever the balancers.
    ``balancers`` and ``shared`` override the scenario's. ``reset`` makes
    every terminal stop counting at the next poll, whatever the rules' lag
    (the compensation of earlier versions, for comparison).
    """
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {algorithm!r}; expected one of {', '.join(ALGORITHMS)}")
    nbal = scenario.balancers if balancers is None else balancers
    share = scenario.shared if shared is None else shared
    rules = tuple(config_rules) if config_rules is not None else (scenario.rules or DEFAULT_RULES)
    reqs = tuple(requires) if requires is not None else scenario.requires
    if algorithm == "stale":
        rules = tuple(dataclasses.replace(r, per_session=0.0) for r in rules)
    if reset:
        rules = tuple(dataclasses.replace(r, lag=0.0) for r in rules)
    config = _config(scenario, rules, reqs)
    times = _arrivals(scenario, random.Random(seed ^ 0x5EED))
    clock = [0.0]
    kind = "two-choices" if algorithm in ("two-choices", "least-loaded") else "weighted-random"
    selectors = [Selector(random.Random(seed if b == 0 else seed * 7919 + b), algorithm=kind,
                          clock=lambda: clock[0]) for b in range(nbal)]
    servers = {s.name: s for s in scenario.servers}
    logins: dict[str, list[float]] = {n: [] for n in servers}
    reasons: Counter[str] = Counter()
    records = {n: NodeRecord(name=n) for n in servers}
    m = scenario.measure
    sizes = {n: node_size(s.variables) for n, s in servers.items()}
    added = {n: scenario.added(s, m) for n, s in servers.items()}
    rr = [0] * nbal
    next_poll = 0.0
    excluded: dict[str, tuple[str, ...]] = {}
    for k, t in enumerate(times):
        while next_poll <= t:
            clock[0] = next_poll
            for n, s in servers.items():
                rec = records[n]
                rec.up, rec.last_success = True, next_poll
                rec.last_state = {"hostname": n, "agent_version": "sim", "sampled_at": next_poll,
                                  "variables": _variables(scenario, s, logins[n], next_poll), "users": []}
            snap = Snapshot.build(config, records, now=next_poll)
            if next_poll == 0.0:
                excluded = {n: v.reasons for n, v in snap.nodes.items() if not v.healthy}
            for sel in selectors:
                sel.install(snap)
            next_poll += scenario.poll_interval
        clock[0] = t
        b = k % nbal
        selector = selectors[b]
        if algorithm == "water-filling":
            node = min(servers, key=lambda n: (_settled(scenario, servers[n], len(logins[n])) + added[n]) / sizes[n])
            reasons["water-filling"] += 1
        else:
            selectable = [n for n in servers if selector.snapshot.nodes[n].selectable]
            if algorithm == "round-robin" and selectable:
                node = selectable[rr[b] % len(selectable)]
                rr[b] += 1
                reasons["round-robin"] += 1
                selector.add_pending(node)
            elif algorithm == "least-loaded" and selectable:
                node = min(selectable, key=lambda n: selector.projected_load(n, 1))
                reasons["least-loaded"] += 1
                selector.add_pending(node)
            else:
                pick = selector.pick()
                node = pick.node
                reasons[pick.reason] += 1
            if share:
                for other in selectors:
                    if other is not selector:
                        other.add_pending(node)
        logins[node].append(t)
    picks = {n: len(logins[n]) for n in servers}
    start = {n: float(s.variables[m]) for n, s in servers.items()}
    final = {n: _settled(scenario, s, picks[n]) for n, s in servers.items()}
    total, total_size = sum(final.values()), sum(sizes.values())
    ideal = {n: total * sizes[n] / total_size for n in servers}
    return SimResult(algorithm=algorithm, seed=seed, start=start, final=final, ideal=ideal, sizes=sizes,
                     picks=picks, reasons=dict(reasons), excluded=excluded,
                     water=water_filling(start, sizes, added, scenario.logins), balancers=nbal, shared=share)


def _percent(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"


def print_table(results: Sequence[SimResult], scenario: Scenario, out: TextIO = sys.stdout) -> None:
    """Per server: size, start, final load and logins per algorithm; then each algorithm's figures."""
    m = scenario.measure
    first = results[0]
    head = f"{'server':<10} {'NBPROC':>6} {'size':>6} {'start':>7} {'ideal':>7}"
    for r in results:
        head += f" | {r.algorithm[:13]:>13} {'logins':>6}"
    who = (f"{first.balancers} balancers, {'sharing' if first.shared else 'not sharing'} their picks"
           if first.balancers > 1 else "1 balancer")
    print(f"{scenario.logins} logins in {scenario.duration:g} s, polls every {scenario.poll_interval:g} s, "
          f"measure {m}, {who}, seed {first.seed}", file=out)
    print(head, file=out)
    for s in scenario.servers:
        n = s.name
        row = (f"{n:<10} {str(s.variables.get('NBPROC', 1)):>6} {first.sizes[n]:>6.1f} "
               f"{first.start[n]:>7.2f} {first.ideal[n]:>7.2f}")
        for r in results:
            row += f" | {r.final[n]:>13.2f} {r.picks[n]:>6}"
        print(row, file=out)
    for n, why in first.excluded.items():
        print(f"note: {n} is unhealthy from the start: {'; '.join(why)}", file=out)
    for r in results:
        odd = {k: v for k, v in r.reasons.items() if k in ("overflow", "last-good")}
        if odd:
            print(f"note: {r.algorithm}: " + ", ".join(f"{v} {k} picks" for k, v in odd.items()), file=out)
    label = {r.algorithm: r.algorithm + (" (shipped)" if r.algorithm == SHIPPED else "") for r in results}
    print("worst server / ideal: " + ", ".join(f"{label[r.algorithm]} {r.worst:.3f}" for r in results), file=out)
    if first.water is not None:
        print("misplaced against water-filling: " + ", ".join(
            f"{label[r.algorithm]} {_percent(r.misplaced)}" for r in results), file=out)


def main_simulate(config_path: str | None, scenario_path: str, seed: int, out: TextIO = sys.stdout,
                  balancers: int | None = None, shared: bool | None = None) -> int:
    """``lbserver --simulate SCENARIO [-c lbsconfig.xml]``: print the table; 0, or 2 on a bad file."""
    from lbserver import config as lbconfig

    try:
        scenario = load_scenario(scenario_path)
        rules = requires = None
        if config_path is not None:
            cfg = lbconfig.load(config_path)
            rules, requires = cfg.rules, cfg.requires
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    results = [run_scenario(rules, scenario, a, seed, requires=requires, balancers=balancers, shared=shared)
               for a in ALGORITHMS]
    print_table(results, scenario, out)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m lbserver.tools.simulate SCENARIO [-c CONFIG] [--seed N] [--balancers N] [--unshared]``."""
    p = argparse.ArgumentParser(prog="lbserver-simulate", description=__doc__.split("\n")[0])
    p.add_argument("scenario")
    p.add_argument("-c", "--config", help="lbsconfig.xml whose rules to use")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--balancers", type=int, help="balancers sharing the storm (default: the scenario's, or 1)")
    p.add_argument("--unshared", action="store_true", help="the balancers do not tell each other of their picks")
    a = p.parse_args(argv)
    return main_simulate(a.config, a.scenario, a.seed, balancers=a.balancers, shared=False if a.unshared else None)


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["ALGORITHMS", "SHIPPED", "Scenario", "SimResult", "SimServer", "load_scenario", "main_simulate",
           "parse_scenario", "print_table", "run_scenario", "water_filling"]
