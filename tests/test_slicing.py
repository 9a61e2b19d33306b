"""Long work cut into slices of the loop's time: the driver, and the poll cycle's sliced steps."""

from __future__ import annotations

import asyncio
import functools
import random
import time

import pytest

from tests.support.doubles import Clock
from lbserver.config import DEFAULT_RULES, Node, Rule, ServerConfig
from lbserver.core import balancer, poller
from lbserver.core.balancer import Balancer
from lbserver.core.health import NodeRecord, record_success
from lbserver.core.history import History
from lbserver.core.selection import Selector, Snapshot
from lbserver.core.slicing import STEP_NODES, run_sliced, run_whole
from tests.support.cluster import fake_agent, offline_config

EVERY_STEP = functools.partial(run_sliced, budget=0.0)  # gives the loop back after every step


def _steps(log: list[str], n: int):
    for i in range(n):
        log.append(f"step {i}")
        yield
    return "done"


async def _with_ticker(log: list[str], work):
    """Run ``work`` while a task notes each turn of the loop; return its result."""
    async def ticker():
        while True:
            log.append("tick")
            await asyncio.sleep(0)

    tick = asyncio.ensure_future(ticker())
    await asyncio.sleep(0)
    try:
        return await work
    finally:
        tick.cancel()


@pytest.mark.unit
def test_whole_runs_every_step_at_once_and_sliced_gives_the_loop_back():
    log: list[str] = []
    assert run_whole(_steps(log, 3)) == "done" and log == ["step 0", "step 1", "step 2"]

    log.clear()
    assert asyncio.run(_with_ticker(log, run_sliced(_steps(log, 3), budget=3600.0))) == "done"
    assert log == ["tick", "step 0", "step 1", "step 2"]  # within its budget: the loop waits

    log.clear()
    assert asyncio.run(_with_ticker(log, run_sliced(_steps(log, 3), budget=0.0))) == "done"
    assert log == ["tick", "step 0", "tick", "step 1", "tick", "step 2", "tick"]  # budget spent: a turn after each


SESSIONS = Rule("NBSESSIONS", weight=1, capacity=10, per_session=1)


def _cluster(sessions: dict[str, int], at: float, groups: int = 1) -> tuple[ServerConfig, dict[str, NodeRecord]]:
    names = tuple(sessions)
    cfg = offline_config({f"G{g}": names[g:] for g in range(groups)}, rules=(SESSIONS,))
    records = {}
    for n, count in sessions.items():
        records[n] = NodeRecord(n)
        record_success(records[n], {"hostname": n, "agent_version": "t", "sampled_at": at, "users": [],
                                    "variables": {"NBPROC": 1, "CPUFREQ": 1000, "NBSESSIONS": count}}, at, 1)
    return cfg, records


def _snapshot(sessions: dict[str, int], at: float, groups: int = 1) -> Snapshot:
    return Snapshot.build(*_cluster(sessions, at, groups), now=at)


@pytest.mark.unit
def test_picks_made_while_a_snapshot_is_prepared_count_as_with_an_install_at_once():
    start = _snapshot({"a": 0, "b": 3, "c": 6}, at=1.0, groups=2)
    later = _snapshot({"a": 2, "b": 4, "c": 6}, at=2.0, groups=2)  # figures sampled before the picks below
    clock = Clock(3.0)
    sliced, whole = Selector(random.Random(7), clock=clock), Selector(random.Random(7), clock=clock)
    for sel in (sliced, whole):
        sel.install(start)
        for _ in range(4):
            sel.pick()

    steps = sliced.prepare_steps(later)
    next(steps)
    during = [sliced.pick().node for _ in range(5)]  # answered meanwhile from the snapshot in force
    sliced.commit(run_whole(steps))
    assert [whole.pick().node for _ in range(5)] == during
    whole.install(later)

    assert sliced.pending() == whole.pending() and sum(sliced.pending().values()) == 9
    assert {n: sliced.weight_now(n) for n in "abc"} == {n: whole.weight_now(n) for n in "abc"}
    assert [sliced.pick().node for _ in range(20)] == [whole.pick().node for _ in range(20)]


@pytest.mark.unit
def test_a_drain_made_during_a_sliced_install_is_not_undone(tmp_path, monkeypatch):
    cfg = offline_config({"G": ["a", "b"]}, state_file=str(tmp_path / "state"), rules=DEFAULT_RULES)
    bal = Balancer(cfg)
    monkeypatch.setattr(balancer, "run_sliced", EVERY_STEP)

    async def drain_meanwhile() -> None:
        install = asyncio.ensure_future(bal._install_sliced(time.time()))
        await asyncio.sleep(0)
        assert not install.done()        # the build read the drained set, and gave the loop back
        assert bal.set_drained("a", True)
        await install

    asyncio.run(drain_meanwhile())
    assert bal.snapshot.nodes["a"].drained            # built again with the drain


@pytest.mark.daemon
def test_new_replies_are_parsed_one_slice_at_a_time(procs, tmp_path, monkeypatch):
    agent, _ = fake_agent(procs, tmp_path, "127.0.0.33", time.time())
    # Twenty nodes behind one agent: every reply is new to the poll, so each is parsed.
    nodes = [Node(f"n{i}", agent.address, agent.host, agent.port) for i in range(20)]
    log: list[str] = []
    real = poller.loads_body
    monkeypatch.setattr(poller, "loads_body", lambda body: log.append("parse") or real(body))
    monkeypatch.setattr(poller, "run_sliced", EVERY_STEP)

    results = asyncio.run(_with_ticker(log, poller.poll_all(nodes, 5.0, 1 << 20, replies={})))
    assert all(r.state is not None for r in results.values()), results
    assert log.count("parse") == 20
    parses = [i for i, entry in enumerate(log) if entry == "parse"]
    assert all("tick" in log[a:b] for a, b in zip(parses, parses[1:]))  # the loop turned between any two


@pytest.mark.unit
def test_sliced_steps_pause_every_few_dozen_nodes_and_give_the_same_result():
    cfg, records = _cluster({f"n{i}": i % 9 for i in range(300)}, at=1.0, groups=3)
    steps = Snapshot.build_steps(cfg, records, now=1.0)
    assert sum(1 for _ in steps) == 300 // STEP_NODES
    snap = Snapshot.build(cfg, records, now=1.0)
    assert run_whole(Snapshot.build_steps(cfg, records, now=1.0)).nodes == snap.nodes

    assert sum(1 for _ in Selector(random.Random(1), clock=Clock(2.0)).prepare_steps(snap)) >= 300 // STEP_NODES

    sliced, whole = History(), History()
    assert sum(1 for _ in sliced.add_steps(snap, 10.0, 5.0)) == 300 // STEP_NODES
    whole.add(snap, 10.0, 5.0)
    assert sliced.to_dict() == whole.to_dict() and len(whole.to_dict()["nodes"]) == 300
