"""Test doubles: the stand-ins a unit test hands to the code under test instead of a running part.

Processes that stand in for a peer (a misbehaving agent, the terminal
service with fixed answers) are programs of their own beside this module:
:mod:`tests.support.fakeagent` and :mod:`tests.support.terminal_harness`.
"""

from __future__ import annotations

from dataclasses import dataclass

from lbserver.config import Rule
from lbserver.core.health import NodeRecord, record_failure, record_success
from lbserver.core.selection import Snapshot
from tests.support.cluster import offline_config

SESSIONS = Rule("NBSESSIONS", weight=1, capacity=10, per_session=1)
"""A rule on sessions alone: capacity 10, one session per terminal sent."""


class Clock:
    """A clock the test moves by hand (``clock.now = ...``), for code that takes a clock callable."""

    def __init__(self, now: float = 1.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class SnapshotView:
    """A stand-in for the balancer where a reader needs only ``snapshot``, set by the test."""

    snapshot: Snapshot


def agent_state(**variables) -> dict:
    """An agent's get_state() reply with these variables (``users=[...]`` for its users), one 1000 MHz CPU by default."""
    users = variables.pop("users", [])
    return {"hostname": "h", "agent_version": "t", "sampled_at": 0.0,
            "variables": {"NBPROC": 1, "CPUFREQ": 1000, **variables}, "users": list(users)}


def snapshot_of(groups: dict[str, list[str]], states: dict[str, dict | None], rules=(), requires=(),
                drained=frozenset(), default=None, at: float = 0.0) -> Snapshot:
    """A snapshot from node states (None: agent down), polled and sampled at ``at``, built with no poll at all."""
    names = {n for ms in groups.values() for n in ms}
    cfg = offline_config(groups, nodes=sorted(names), default=default, rules=tuple(rules), requires=tuple(requires))
    records = {}
    for n, s in states.items():
        rec = NodeRecord(n)
        if s is None:
            record_failure(rec, "connection refused", at, 2)
        else:
            record_success(rec, {**s, "sampled_at": at}, at, 2)
        records[n] = rec
    return Snapshot.build(cfg, records, drained=frozenset(drained), now=123.0)
