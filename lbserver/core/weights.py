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

Why the predicted sessions do not count towards ``critical``: they are a
guess made between two polls; a guess may lower a node's share (down to 0,
where the overflow rule spreads the load by size) but only a measured value
may exclude it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

from lbserver.config import Require, Rule

DEFAULT_CPUFREQ_MHZ = 1000.0


@dataclass(frozen=True)
class Verdict:
    """The outcome of :func:`evaluate` for one node."""

    healthy: bool
    weight: float
    size: float
    reasons: tuple[str, ...] = ()   # why unhealthy, one readable line each


def _number(value: object) -> float | None:
    """``value`` as a finite float, or None when it is not a number.

    Numeric strings are accepted because a custom variable computed by a
    command may arrive as text; booleans are not numbers here.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        f = float(value)
    elif isinstance(value, str):
        try:
            f = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return f if math.isfinite(f) else None


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
    nbproc = _nbproc(variables)
    total = 0.0
    for rule in rules:
        if rule.name not in variables:
            reasons.append(f"variable {rule.name} missing from agent reply")
            continue
        raw = _number(variables[rule.name])
        if raw is None:
            reasons.append(f"variable {rule.name} is not a number: {_render(variables[rule.name])!r:.60}")
            continue
        measured = raw / nbproc if rule.per_cpu else raw
        if rule.critical is not None and measured >= rule.critical:
            per = " per cpu" if rule.per_cpu else ""
            reasons.append(f"{rule.name}{per} {_fmt(measured)} >= critical {_fmt(rule.critical)}")
            continue
        v = raw + extra_sessions * rule.per_session
        if rule.per_cpu:
            v /= nbproc
        total += rule.weight * min(1.0, max(0.0, 1.0 - v / rule.capacity))
    for req in requires:
        reason = _check_require(req, variables)
        if reason is not None:
            reasons.append(reason)
    if reasons:
        return Verdict(healthy=False, weight=0.0, size=size, reasons=tuple(reasons))
    weight = size * total if rules else size
    return Verdict(healthy=True, weight=weight, size=size)


@dataclass(frozen=True)
class Compensation:
    """A healthy node's weight as a function of terminals sent since its last poll.

    Precomputed once per snapshot so that the per-pick update costs a few
    multiplications instead of a full :func:`evaluate`; ``weight(k)`` equals
    ``evaluate(..., extra_sessions=k).weight`` for a healthy node.
    """

    size: float
    fixed: float                                   # rules without per-session
    terms: tuple[tuple[float, float, float], ...]  # (weight, value/capacity, per-session/capacity)

    def weight(self, sessions: float) -> float:
        """The node's weight after ``sessions`` more terminals."""
        total = self.fixed
        for w, base, step in self.terms:
            free = 1.0 - base - sessions * step
            total += w * (1.0 if free > 1.0 else free if free > 0.0 else 0.0)
        return self.size * total


def compensation(variables: Mapping, rules: Sequence[Rule]) -> Compensation:
    """The :class:`Compensation` of a node whose ``variables`` passed :func:`evaluate`."""
    size = node_size(variables)
    if not rules:
        return Compensation(size, 1.0, ())
    nbproc = _nbproc(variables)
    fixed, terms = 0.0, []
    for rule in rules:
        scale = rule.capacity * (nbproc if rule.per_cpu else 1.0)
        base = (_number(variables.get(rule.name)) or 0.0) / scale
        if rule.per_session > 0:
            terms.append((rule.weight, base, rule.per_session / scale))
        else:
            fixed += rule.weight * min(1.0, max(0.0, 1.0 - base))
    return Compensation(size, fixed, tuple(terms))


def compensates(rules: Sequence[Rule]) -> bool:
    """True when some rule predicts load per session (so picks change weights)."""
    return any(r.per_session > 0 for r in rules)


__all__ = ["Compensation", "DEFAULT_CPUFREQ_MHZ", "Verdict", "compensates", "compensation", "evaluate", "node_size"]
