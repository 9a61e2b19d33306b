"""Weights and health verdicts: pure functions of one agent's variables.

The formula (a greater weight means a less loaded server, chosen more often)::

    weight = size × Σ over rules of  rule.weight × clamp(1 - v / rule.capacity, 0, 1)
    v      = value + extra_sessions × rule.per_session
    v      = v / NBPROC                       when the rule is per-cpu
    size   = NBPROC × CPUFREQ / 1000          (core-GHz)

With no rules at all the weight is ``size``. A node is unhealthy (weight 0)
when a rule variable is missing or not a number, when a rule's polled value
(divided by NBPROC for a per-cpu rule, *without* the predicted extra
sessions) is at or over its ``critical``, or when a ``<require>`` fails.

``capacity`` and ``critical`` may be expressions over the node's variables
(:mod:`lbserver.config.expr`), evaluated here for each node. A capacity that
has no value for a node, or is not above 0, makes that rule add nothing (the
problem is named in the rule's :class:`RuleResult`); a critical without a
value is not applied. In a rule written in the ltsp-cluster form
(``kb_memory``), memory variables are in kB, as its agent reported them.
Every rule's figures for a node are kept in :attr:`Verdict.rules`, so the
status page can explain each weight.

Why the predicted sessions do not count towards ``critical``: they are a
guess made between two polls; a guess may lower a node's share (down to 0,
where the overflow rule spreads the load by size) but only a measured value
may exclude it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Mapping, Sequence

from lbserver.config import Require, Rule
from lbserver.config.settings import DEFAULT_LAGS
from lbserver.config.expr import ALIASES, EvalError, Expr
from lbserver.config.expr import number as _number

DEFAULT_CPUFREQ_MHZ = 1000.0
MEMORY_VARIABLES = frozenset({"MEMTOTAL", "MEMUSED", "MEMAVAIL"})
"""Built-ins in MiB that the ltsp-cluster agent reported in kB."""


@dataclass(frozen=True)
class RuleResult:
    """One rule on one node: the figures behind its share of the weight.

    ``value`` is as compared (per processor for a per-cpu rule, in kB for a
    memory variable of an ltsp-cluster rule); ``contribution`` is the rule's
    share of the weight before the size factor; ``problem`` says why a rule
    adds nothing or a limit was not applied.
    """

    name: str
    value: float | None
    capacity: float | None
    critical: float | None
    contribution: float
    problem: str | None = None

    def to_dict(self) -> dict:
        """The /status form."""
        r = lambda x: None if x is None else round(x, 4)  # noqa: E731
        doc = {"name": self.name, "value": r(self.value), "capacity": r(self.capacity),
               "critical": r(self.critical), "contribution": r(self.contribution)}
        if self.problem:
            doc["problem"] = self.problem
        return doc


@dataclass(frozen=True)
class Verdict:
    """The outcome of :func:`evaluate` for one node."""

    healthy: bool
    weight: float
    size: float
    reasons: tuple[str, ...] = ()   # why unhealthy, one readable line each
    rules: tuple[RuleResult, ...] = ()


def _lookup(variables: Mapping, kb_memory: bool) -> Callable[[str], object]:
    """How a rule reads the node's variables (memory in kB for an ltsp-cluster rule)."""
    if not kb_memory:
        return lambda name: variables.get(ALIASES.get(name, name))

    def get(name: str) -> object:
        name = ALIASES.get(name, name)
        value = variables.get(name)
        if name in MEMORY_VARIABLES:
            mib = _number(value)
            return None if mib is None else mib * 1024.0
        return value
    return get


def _limit(limit: float | Expr | None, lookup: Callable[[str], object]) -> float | None:
    """A capacity or critical for this node (None when the rule has none); raises EvalError."""
    if limit is None or isinstance(limit, (int, float)):
        return limit
    return limit.evaluate(lookup)


def _capacity(rule: Rule, lookup: Callable[[str], object]) -> tuple[float | None, str | None]:
    """(capacity, problem): the capacity when it is usable for this node, else why not."""
    try:
        cap = _limit(rule.capacity, lookup)
    except EvalError as exc:
        return None, f"capacity {rule.capacity} has no value here: {exc}"
    if cap is None or cap <= 0:
        return cap, f"capacity {rule.capacity} = {_fmt(cap)} is not above 0: the rule adds nothing"
    return cap, None


def _nbproc(variables: Mapping) -> float:
    n = _number(variables.get("NBPROC"))
    return n if n is not None and n >= 1 else 1.0


def node_size(variables: Mapping) -> float:
    """A server's size in core-GHz: NBPROC × CPUFREQ / 1000.

    Both factors matter for how many desktops a server carries: twice the
    cores or twice the clock roughly doubles the work it does per second.
    CPUFREQ missing or 0 (some virtual machines report none) counts as
    1000 MHz and NBPROC missing as 1, so such a server still gets a fair,
    if conservative, share instead of none.
    """
    freq = _number(variables.get("CPUFREQ"))
    if freq is None or freq <= 0:
        freq = DEFAULT_CPUFREQ_MHZ
    return _nbproc(variables) * freq / 1000.0


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def _render(value: object) -> str:
    """How a variable compares to ``equals``: bools as true/false."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _check_require(req: Require, variables: Mapping) -> str | None:
    """The reason ``req`` fails on ``variables``, or None when it holds."""
    if req.name not in variables:
        return f"require {req.name}: variable {req.name} missing from agent reply"
    value = variables[req.name]
    if req.equals is not None:
        want, got = req.equals.strip(), _render(value).strip()
        a, b = _number(want), _number(value)
        # "3" and 3.0 are the same number; everything else compares as text.
        same = (a == b) if (a is not None and b is not None) else want.lower() == got.lower()
        if not same:
            return f"require {req.name} == {want}: got {got}"
    if req.min is not None or req.max is not None:
        num = _number(value)
        if num is None:
            return f"require {req.name}: got {_render(value)!r}, not a number"
        if req.min is not None and num < req.min:
            return f"require {req.name} >= {_fmt(req.min)}: got {_fmt(num)}"
        if req.max is not None and num > req.max:
            return f"require {req.name} <= {_fmt(req.max)}: got {_fmt(num)}"
    return None


def evaluate(variables: Mapping, rules: Sequence[Rule], requires: Sequence[Require],
             extra_sessions: float = 0) -> Verdict:
    """Health and weight of a node from its agent's ``variables``.

    ``extra_sessions`` is the number of terminals sent to the node since the
    poll that produced ``variables``; each adds ``rule.per_session`` to the
    rule's variable (picks use :class:`Compensation`, its precomputed form).
    """
    size = node_size(variables)
    reasons: list[str] = []
    results: list[RuleResult] = []
    nbproc = _nbproc(variables)
    total = 0.0
    plain = _lookup(variables, False)  # made once a node, not once a rule: ten thousand nodes a poll
    for rule in rules:
        lookup = _lookup(variables, True) if rule.kb_memory else plain
        value = lookup(rule.name)
        raw = _number(value)
        cap = rule.capacity
        if type(cap) is float and cap > 0:  # the usual constant capacity: nothing to evaluate, nothing to say
            problem = None
        else:
            cap, problem = _capacity(rule, lookup)
        crit = rule.critical
        if crit is not None and type(crit) is not float:
            try:
                crit = _limit(crit, lookup)
            except EvalError as exc:
                crit, problem = None, f"critical {rule.critical} has no value here: {exc}"
        if value is None:
            reasons.append(f"variable {rule.name} missing from agent reply")
            results.append(RuleResult(rule.name, None, cap, crit, 0.0, "missing from agent reply"))
            continue
        if raw is None:
            reasons.append(f"variable {rule.name} is not a number: {_render(value)!r:.60}")
            results.append(RuleResult(rule.name, None, cap, crit, 0.0, "not a number"))
            continue
        measured = raw / nbproc if rule.per_cpu else raw
        if crit is not None and measured >= crit:
            per = " per cpu" if rule.per_cpu else ""
            reasons.append(f"{rule.name}{per} {_fmt(measured)} >= critical {_fmt(crit)}")
            results.append(RuleResult(rule.name, measured, cap, crit, 0.0, "at or over critical"))
            continue
        v = raw + extra_sessions * rule.per_session
        if rule.per_cpu:
            v /= nbproc
        share = 0.0 if cap is None or cap <= 0 else rule.weight * min(1.0, max(0.0, 1.0 - v / cap))
        total += share
        results.append(RuleResult(rule.name, measured, cap, crit, share, problem))
    for req in requires:
        reason = _check_require(req, variables)
        if reason is not None:
            reasons.append(reason)
    if reasons:
        return Verdict(healthy=False, weight=0.0, size=size, reasons=tuple(reasons), rules=tuple(results))
    weight = size * total if rules else size
    return Verdict(healthy=True, weight=weight, size=size, rules=tuple(results))


@dataclass(frozen=True)
class Compensation:
    """A healthy node's weight and projected load as functions of terminals sent since its figures.

    Precomputed once per snapshot so that the per-pick update costs a few
    multiplications instead of a full :func:`evaluate`; ``weight(k)`` equals
    ``evaluate(..., extra_sessions=k).weight`` for a healthy node.

    The **projected load** is how full the node is relative to its
    capacity, as the rules see it, once ``k`` more terminals weigh on it::

        load(k) = Σ over rules  weight_r × v_r(k) / capacity_r   /   Σ over rules  weight_r
        v_r(k)  = value + k × per_session   (divided by NBPROC for a per-cpu rule)

    the weighted mean of the rules' fullness, without the clamp of the
    weight formula: it goes on growing past capacity, so full nodes still
    compare, and it has no size factor, so a 2-core and a 16-core server
    compare by how full each is, not by how much room each has. Where no
    clamp is active it equals ``1 - weight / (size × Σ weight_r)``. Rules
    whose capacity has no usable value on the node count in neither sum;
    with none left the load is 0 (nothing to compare).
    """

    size: float
    fixed: float                                   # weight of the rules without per-session
    terms: tuple[tuple[float, float, float], ...]  # (weight, value/capacity, per-session/capacity)
    fixed_load: float = 0.0                        # Σ weight × value/capacity of the rules without per-session
    rule_weight: float = 0.0                       # Σ weight of the rules that count (0: none)
    lags: tuple[float, ...] = ()                   # each term's lag, seconds (see :func:`rule_lag`)

    def weight(self, sessions: float) -> float:
        """The node's weight after ``sessions`` more terminals."""
        total = self.fixed
        for w, base, step in self.terms:
            free = 1.0 - base - sessions * step
            total += w * (1.0 if free > 1.0 else free if free > 0.0 else 0.0)
        return self.size * total

    def load(self, sessions: float) -> float:
        """The node's projected load after ``sessions`` more terminals (see the class)."""
        if not self.rule_weight:
            return 0.0
        total = self.fixed_load
        for w, base, step in self.terms:
            total += w * (base + sessions * step)
        return total / self.rule_weight

    def state(self, sessions: float) -> tuple[float, float]:
        """``(weight(sessions), load(sessions + 1))`` in one pass: what a pick compares, after ``sessions``."""
        weight, used = self.fixed, self.fixed_load
        for w, base, step in self.terms:
            fill = base + sessions * step
            if fill < 1.0:
                weight += w if fill <= 0.0 else w - w * fill
            used += w * (fill + step)
        rule_weight = self.rule_weight
        return self.size * weight, (used / rule_weight if rule_weight else 0.0)

    def carrying(self, carried: Mapping[float, float]) -> Compensation:
        """The same node with ``carried[lag]`` terminals added to every term of that lag.

        Terminals whose effect the figures show only in part (a lagging
        average) weigh on the rules that lag, and on those only.
        """
        if not carried or not self.terms:
            return self
        terms = tuple((w, base + carried.get(lag, 0.0) * step, step)
                      for (w, base, step), lag in zip(self.terms, self.lags))
        return replace(self, terms=terms)


def rule_lag(rule: Rule) -> float:
    """Seconds ``rule``'s variable takes to show a new session: its ``lag``, else the variable's default."""
    if rule.lag is not None:
        return float(rule.lag)
    return DEFAULT_LAGS.get(ALIASES.get(rule.name, rule.name), 0.0)


def compensation(variables: Mapping, rules: Sequence[Rule]) -> Compensation:
    """The :class:`Compensation` of a node whose ``variables`` passed :func:`evaluate`."""
    size = node_size(variables)
    if not rules:
        return Compensation(size, 1.0, ())
    nbproc = _nbproc(variables)
    fixed = fixed_load = rule_weight = 0.0
    terms, lags = [], []
    plain = _lookup(variables, False)
    for rule in rules:
        lookup = _lookup(variables, True) if rule.kb_memory else plain
        cap = rule.capacity
        if type(cap) is not float or cap <= 0:
            cap, problem = _capacity(rule, lookup)
            if problem is not None:
                continue  # adds nothing, whatever the sessions
        scale = cap * (nbproc if rule.per_cpu else 1.0)
        base = (_number(lookup(rule.name)) or 0.0) / scale
        rule_weight += rule.weight
        if rule.per_session > 0:
            terms.append((rule.weight, base, rule.per_session / scale))
            lags.append(rule_lag(rule))
        else:
            fixed += rule.weight * min(1.0, max(0.0, 1.0 - base))
            fixed_load += rule.weight * base
    return Compensation(size, fixed, tuple(terms), fixed_load, rule_weight, tuple(lags))


__all__ = ["Compensation", "DEFAULT_CPUFREQ_MHZ", "MEMORY_VARIABLES", "RuleResult", "Verdict",
           "compensation", "evaluate", "node_size", "rule_lag"]
