"""Login-storm simulator: the real weights and Selector against synthetic agents.

No sockets and no clock: logins arrive at computed times, the "agents"
report exact figures at each poll, and every login adds a known load to the
server that got it. The figure of merit is how unevenly the storm left the
servers: for the measured variable (LOADAVG by default),

    ideal(server) = total final load × size(server) / total size
    figure        = max over servers of final(server) / ideal(server)

1.00 means the load ended spread exactly in proportion to size.

Scenario files are INI::

    [storm]
    logins = 300          ; terminals logging in
    duration = 60         ; seconds over which they arrive, evenly spaced
    poll-interval = 30    ; seconds between polls (the first at t=0)
    measure = LOADAVG     ; the variable the figure is computed on
    arrivals = even       ; even, or random (uniform times drawn from the seed)

    [per-session]         ; what one new session adds to each variable
    LOADAVG = 0.1
    NBSESSIONS = 1

    [server xapp1]        ; one section per server: its variables at t=0
    NBPROC = 2
    CPUFREQ = 2400
    LOADAVG = 0.9
    per-session.MEMUSEDPCT = 2.5   ; this server's own per-session figure

    [rule LOADAVG]        ; optional rules, as in lbsconfig.xml <rules>
    weight = 50
    capacity = 1.0
    per-cpu = true
    per-session = 0.1
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
import random
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Mapping, Sequence, TextIO

from common.xmlconfig import ConfigError
from lbserver.config import DEFAULT_RULES, Group, Node, Require, Rule, ServerConfig
from lbserver.core.health import NodeRecord
from lbserver.core.selection import Selector, Snapshot
from lbserver.core.weights import node_size

ALGORITHMS = ("compensated", "stale", "round-robin", "p2c")
SHIPPED = "compensated"
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

    @property
    def ratios(self) -> dict[str, float]:
        """Each server's final load relative to its ideal share."""
        return {n: (self.final[n] / self.ideal[n] if self.ideal[n] > 0 else 1.0) for n in self.final}

    @property
    def worst(self) -> float:
        """The figure: the worst server's final load relative to its ideal share."""
        return max(self.ratios.values())


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

    def boolean(section: str, key: str) -> bool:
        raw = cp.get(section, key, fallback="false").strip().lower()
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
    per_session: dict[str, float] = {}
    if cp.has_section("per-session"):
        for k in cp.options("per-session"):
            per_session[k] = number("per-session", k)

    servers: list[SimServer] = []
    rules: list[Rule] = []
    requires: list[Require] = []
    for section in cp.sections():
        kind, _, name = section.partition(" ")
        name = name.strip()
        if section in ("storm", "per-session"):
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
                              line=lines.of(section)))
        elif kind == "require":
            equals = cp.get(section, "equals", fallback=None)
            req = Require(name=name, equals=equals, min=number(section, "min"),
                          max=number(section, "max"), line=lines.of(section))
            if req.equals is None and req.min is None and req.max is None:
                raise err(section, None, f"[{section}] needs equals, min or max")
            requires.append(req)
        else:
            raise err(section, None, f"unknown section [{section}]; expected [storm], [per-session], "
                                     "[server NAME], [rule NAME] or [require NAME]")
    if not servers:
        raise ConfigError(path, 0, "no [server NAME] section")
    measure = cp.get("storm", "measure", fallback="LOADAVG").strip()
    for s in servers:
        if not isinstance(s.variables.get(measure), (int, float)) or isinstance(s.variables.get(measure), bool):
            raise err(f"server {s.name}", None, f"[server {s.name}] needs a numeric {measure} (the measured variable)")
    return Scenario(servers=tuple(servers), logins=int(logins), duration=number("storm", "duration", positive=True),
                    poll_interval=number("storm", "poll-interval", positive=True), per_session=per_session,
                    measure=measure, arrivals=arrivals, rules=tuple(rules), requires=tuple(requires), path=path)


# --- the simulation ---------------------------------------------------------

def _config(scenario: Scenario, rules: Sequence[Rule], requires: Sequence[Require]) -> ServerConfig:
    # Addresses are never contacted: the simulator has no sockets.
    nodes = {s.name: Node(name=s.name, address=f"http://{s.name}:8001", host=s.name, port=8001)
             for s in scenario.servers}
    group = Group(name=GROUP, nodes=tuple(nodes), default=True)
    return ServerConfig(path=scenario.path, nodes=nodes, groups={GROUP: group}, default_group=GROUP,
                        rules=tuple(rules), requires=tuple(requires))


def _arrivals(scenario: Scenario, rng: random.Random) -> list[float]:
    n, d = scenario.logins, scenario.duration
    if scenario.arrivals == "random":
        return sorted(rng.uniform(0, d) for _ in range(n))
    return [(k + 0.5) * d / n for k in range(n)]


def _variables(scenario: Scenario, server: SimServer, sessions: int) -> dict[str, object]:
    out = dict(server.variables)
    for name in set(scenario.per_session) | set(server.per_session):
        base = out.get(name, 0)
        if isinstance(base, (int, float)) and not isinstance(base, bool):
            out[name] = base + sessions * scenario.added(server, name)
    return out


def run_scenario(config_rules: Sequence[Rule] | None, scenario: Scenario, algorithm: str = SHIPPED,
                 seed: int = 0, requires: Sequence[Require] | None = None) -> SimResult:
    """Simulate ``scenario`` once with ``algorithm`` (one of :data:`ALGORITHMS`).

    ``config_rules`` None means the scenario's rules (or the defaults).
    "compensated" is what the balancer ships; "stale" is the same choice
    with weights only refreshed at polls (per-session ignored);
    "round-robin" ignores weights; "p2c" is weighted power-of-two-choices
    with compensation.
    """
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {algorithm!r}; expected one of {', '.join(ALGORITHMS)}")
    rules = tuple(config_rules) if config_rules is not None else (scenario.rules or DEFAULT_RULES)
    reqs = tuple(requires) if requires is not None else scenario.requires
    if algorithm == "stale":
        rules = tuple(dataclasses.replace(r, per_session=0.0) for r in rules)
    config = _config(scenario, rules, reqs)
    rng = random.Random(seed)
    times = _arrivals(scenario, random.Random(seed ^ 0x5EED))
    selector = Selector(rng, algorithm="p2c" if algorithm == "p2c" else "weighted")
    sessions: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    servers = {s.name: s for s in scenario.servers}
    records = {n: NodeRecord(name=n) for n in servers}
    rr = 0
    next_poll = 0.0
    excluded: dict[str, tuple[str, ...]] = {}
    for t in times:
        while next_poll <= t:
            for n, s in servers.items():
                rec = records[n]
                rec.up, rec.last_success = True, next_poll
                rec.last_state = {"hostname": n, "agent_version": "sim", "sampled_at": next_poll,
                                  "variables": _variables(scenario, s, sessions[n]), "users": []}
            snap = Snapshot.build(config, records, now=next_poll)
            if next_poll == 0.0:
                excluded = {n: v.reasons for n, v in snap.nodes.items() if not v.healthy}
            selector.install(snap)
            next_poll += scenario.poll_interval
        if algorithm == "round-robin":
            names = [v.name for v in (selector.snapshot.nodes[n] for n in servers) if v.selectable]
            node = names[rr % len(names)] if names else next(iter(servers))
            rr += 1
            reasons["round-robin"] += 1
        else:
            pick = selector.pick()
            node = pick.node
            reasons[pick.reason] += 1
        sessions[node] += 1
    m = scenario.measure
    start = {n: float(s.variables[m]) for n, s in servers.items()}
    final = {n: float(_variables(scenario, s, sessions[n])[m]) for n, s in servers.items()}
    sizes = {n: node_size(s.variables) for n, s in servers.items()}
    total, total_size = sum(final.values()), sum(sizes.values())
    ideal = {n: total * sizes[n] / total_size for n in servers}
    return SimResult(algorithm=algorithm, seed=seed, start=start, final=final, ideal=ideal, sizes=sizes,
                     picks={n: sessions[n] for n in servers}, reasons=dict(reasons), excluded=excluded)


def print_table(results: Sequence[SimResult], scenario: Scenario, out: TextIO = sys.stdout) -> None:
    """Per server: size, start, final load and logins per algorithm; then each algorithm's figure."""
    m = scenario.measure
    first = results[0]
    head = f"{'server':<10} {'NBPROC':>6} {'size':>6} {'start':>7} {'ideal':>7}"
    for r in results:
        head += f" | {r.algorithm[:11]:>11} {'logins':>6}"
    print(f"{scenario.logins} logins in {scenario.duration:g} s, polls every {scenario.poll_interval:g} s, "
          f"measure {m}, seed {first.seed}", file=out)
    print(head, file=out)
    for s in scenario.servers:
        n = s.name
        row = (f"{n:<10} {str(s.variables.get('NBPROC', 1)):>6} {first.sizes[n]:>6.1f} "
               f"{first.start[n]:>7.2f} {first.ideal[n]:>7.2f}")
        for r in results:
            row += f" | {r.final[n]:>11.2f} {r.picks[n]:>6}"
        print(row, file=out)
    for n, why in first.excluded.items():
        print(f"note: {n} is unhealthy from the start: {'; '.join(why)}", file=out)
    for r in results:
        odd = {k: v for k, v in r.reasons.items() if k in ("overflow", "last-good")}
        if odd:
            print(f"note: {r.algorithm}: " + ", ".join(f"{v} {k} picks" for k, v in odd.items()), file=out)
    print("worst server / ideal: " + ", ".join(
        f"{r.algorithm}{' (shipped)' if r.algorithm == SHIPPED else ''} {r.worst:.2f}" for r in results), file=out)


def main_simulate(config_path: str | None, scenario_path: str, seed: int, out: TextIO = sys.stdout) -> int:
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
    results = [run_scenario(rules, scenario, a, seed, requires=requires) for a in ALGORITHMS]
    print_table(results, scenario, out)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m lbserver.tools.simulate SCENARIO [-c CONFIG] [--seed N]``."""
    p = argparse.ArgumentParser(prog="lbserver-simulate", description=__doc__.split("\n")[0])
    p.add_argument("scenario")
    p.add_argument("-c", "--config", help="lbsconfig.xml whose rules to use")
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args(argv)
    return main_simulate(a.config, a.scenario, a.seed)


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["ALGORITHMS", "SHIPPED", "Scenario", "SimResult", "SimServer", "load_scenario", "main_simulate",
           "parse_scenario", "print_table", "run_scenario"]
