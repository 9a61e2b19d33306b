"""Which nodes an alias publishes: the DNS arbiter's pure decision.

For one alias: the group's nodes that are healthy, not drained and not
otherwise excluded (failed submission test, no address) are ranked best
first (higher weight = less loaded; ties by name). ``num-out`` of them are
left out (the worst), or only the ``best-hosts`` best are kept; at least one
is always published while any is good.

When no node is good the alias keeps exactly one of the bad ones (the
at-least-one rule: users always get an answer). The one kept is, in order of
preference: a node whose agent answers (it has figures, so it is up but
unhealthy or failing its submission test), then a drained one, then a dead
one; within the same kind, one the DNS already publishes (no churn while
everything is bad), then the higher weight, then the name.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

#: Prefix of the exclusion reason given to nodes whose address cannot be resolved:
#: such nodes are never published, not even by the at-least-one rule.
NO_ADDRESS = "no address"

@dataclass(frozen=True)
class Candidate:
    """A node as the balancer sees it at the end of a poll cycle.

    ``weight`` is the computed weight (greater = less loaded); NaN or None
    means the agent gave no figures (not answering). ``reasons`` say why a
    node is unhealthy. Drained nodes leave aliases like unhealthy ones.
    """

    name: str
    healthy: bool
    weight: float | None
    reasons: tuple[str, ...] = ()
    drained: bool = False

    @property
    def answered(self) -> bool:
        """Whether the agent gave figures (a usable weight)."""
        return self.weight is not None and not math.isnan(self.weight)


@dataclass(frozen=True)
class AliasDecision:
    """What an alias should publish, and why the others are not published."""

    alias: str
    published: tuple[str, ...]
    ranked: tuple[str, ...]
    excluded: Mapping[str, str] = field(default_factory=dict)
    spare: tuple[str, ...] = ()
    fallback: bool = False


def _sort_weight(c: Candidate | None) -> float:
    return c.weight if c is not None and c.answered else -math.inf


def exclusion_reason(name: str, cand: Candidate | None, extra: Mapping[str, str]) -> str | None:
    """Why ``name`` may not be published, or None when it is good."""
    if cand is None:
        return "no poll result yet"
    if cand.drained:
        return "drained"
    if not cand.healthy:
        return "; ".join(cand.reasons) if cand.reasons else "unhealthy"
    if name in extra:
        return extra[name]
    return None


def publish_count(good: int, num_out: int | None, best_hosts: int | None) -> int:
    """How many of ``good`` ranked nodes to publish (at least one when any is good)."""
    if good == 0:
        return 0
    if best_hosts is not None and best_hosts != -1:
        n = min(best_hosts, good)
    elif best_hosts == -1:
        n = good
    else:
        n = good - (num_out or 0)
    return max(1, n)


def decide(alias: str, members: Sequence[str], candidates: Mapping[str, Candidate], *,
           num_out: int | None = None, best_hosts: int | None = None,
           extra_exclusions: Mapping[str, str] | None = None,
           current: Collection[str] = ()) -> AliasDecision:
    """Decide an alias's published nodes.

    ``members`` are the group's node names; ``candidates`` the balancer's
    view of them (a member without one has not been polled yet);
    ``extra_exclusions`` maps node names to a reason to leave them out even
    when healthy (failed submission test, unresolvable address); ``current``
    names the nodes whose addresses the DNS holds now.
    """
    extra = extra_exclusions or {}
    members = list(dict.fromkeys(members))  # a node listed twice counts once
    good: list[str] = []
    excluded: dict[str, str] = {}
    for name in members:
        reason = exclusion_reason(name, candidates.get(name), extra)
        if reason is None:
            good.append(name)
        else:
            excluded[name] = reason
    good.sort(key=lambda n: (-_sort_weight(candidates.get(n)), n))
    n = publish_count(len(good), num_out, best_hosts)
    if good:
        return AliasDecision(alias=alias, published=tuple(good[:n]), ranked=tuple(good),
                             excluded=excluded, spare=tuple(good[n:]), fallback=False)
    if not members:
        return AliasDecision(alias=alias, published=(), ranked=(), excluded={}, fallback=True)
    # Nodes with no usable address can never be published, not even as a fallback.
    usable = [m for m in members if not extra.get(m, "").startswith(NO_ADDRESS)]
    if not usable:
        return AliasDecision(alias=alias, published=(), ranked=(), excluded=excluded, fallback=True)
    cur = set(current)

    def tier(name: str) -> int:
        c = candidates.get(name)
        if c is None or not c.answered:
            return 2
        return 1 if c.drained else 0

    usable.sort(key=lambda m: (tier(m), m not in cur, -_sort_weight(candidates.get(m)), m))
    return AliasDecision(alias=alias, published=(usable[0],), ranked=(), excluded=excluded, fallback=True)

