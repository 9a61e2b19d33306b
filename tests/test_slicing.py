"""Long work cut into slices of the loop's time: the driver, and the poll cycle's jobs run sliced and whole."""

from __future__ import annotations

import asyncio
import functools
import random
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.doubles import Clock
from lbserver.config import DEFAULT_RULES, Node, Rule, ServerConfig
from lbserver.core import balancer, poller
from lbserver.core.balancer import Balancer
from lbserver.core.health import NodeRecord, record_failure, record_success
from lbserver.core.history import History
from lbserver.core.selection import Selector, Snapshot
from lbserver.core.slicing import STEP_NODES, Job, run_sliced, run_whole
from tests.support.cluster import fake_agent, offline_config

EVERY_STEP = functools.partial(run_sliced, budget=0.0)  # gives the loop back after every chunk


def _job(log: list[str], n: int, step: int = 1) -> Job[str]:
    return Job(range(n), lambda chunk: log.append(f"items {list(chunk)}"), lambda: "done", step)


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
    assert run_whole(_job(log, 3)) == "done" and log == ["items [0, 1, 2]"]

    log.clear()
    assert asyncio.run(_with_ticker(log, run_sliced(_job(log, 3), budget=3600.0))) == "done"
    assert log == ["tick", "items [0]", "items [1]", "items [2]"]  # within its budget: the loop waits

    log.clear()
    assert asyncio.run(_with_ticker(log, run_sliced(_job(log, 3), budget=0.0))) == "done"
    assert log == ["tick", "items [0]", "tick", "items [1]", "tick", "items [2]", "tick"]  # a turn after each

    log.clear()
    assert asyncio.run(run_sliced(_job(log, 5, step=2), budget=0.0)) == "done"
    assert log == ["items [0, 1]", "items [2, 3]", "items [4]"]  # chunks of the job's step, in order


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

    during: list[str] = []

    async def prepare_while_picking() -> None:
        async def terminals() -> None:
            during.extend(sliced.pick().node for _ in range(5))  # answered from the snapshot in force

        picking = asyncio.ensure_future(terminals())
        prepared = await EVERY_STEP(sliced.prepare_job(later))
        assert picking.done()  # while the job gave the loop back
        sliced.commit(prepared)

    asyncio.run(prepare_while_picking())
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
    assert bal.snapshot.nodes["a"].drained            # the drain's snapshot stands: the stale build was dropped
    assert bal._selector.snapshot is bal.snapshot     # and the terminals are answered from it


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
def test_jobs_are_cut_every_few_dozen_nodes():
    cfg, records = _cluster({f"n{i}": i % 9 for i in range(300)}, at=1.0)
    chunks: list[int] = []
    job = Snapshot.build_job(cfg, records, now=1.0)
    counted = Job(job.items, lambda names: chunks.append(len(names)) or job.each(names), job.finish, job.step)
    snap = asyncio.run(EVERY_STEP(counted))
    assert chunks == [STEP_NODES] * (300 // STEP_NODES) + [300 % STEP_NODES]
    assert len(snap.nodes) == 300


# -- sliced and whole come to the same, on random clusters ---------------------------------------------------------

NODE = st.fixed_dictionaries({
    "polled": st.sampled_from(["never", "up", "down"]),
    "sessions": st.integers(0, 40),
    "load": st.floats(0.0, 20.0),
    "memory": st.floats(0.0, 100.0),
    "cpus": st.sampled_from([1, 2, 8]),
    "sampled": st.floats(-120.0, 0.0),  # seconds before the poll; older than MAX_SAMPLE_AGE counts as the poll's
    "admin_drain": st.booleans(),
    "agent_drain": st.booleans(),
    "groups": st.sets(st.sampled_from(["B", "C"])),  # besides A, the default group holding every node
    "user": st.sampled_from([None, "ann", "bob"]),
})

COUNT = st.one_of(st.integers(0, 3 * STEP_NODES + 2), st.sampled_from([STEP_NODES - 1, STEP_NODES, STEP_NODES + 1,
                                                                           2 * STEP_NODES + 1]))
"""How many nodes: none to a few chunks, and just around a chunk's end."""

CLUSTER = st.builds(lambda kinds, count, seed: [random.Random(seed).choice(kinds) for _ in range(count)],
                    st.lists(NODE, min_size=1, max_size=12), COUNT, st.integers(0, 2 ** 32))
"""Nodes of a few kinds drawn at random, as many as COUNT says."""


def _random_cluster(specs: list[dict], at: float) -> tuple[ServerConfig, dict[str, NodeRecord], frozenset[str]]:
    names = [f"n{i}" for i in range(len(specs))]
    groups = {"A": names, **{g: [n for n, spec in zip(names, specs) if g in spec["groups"]] for g in "BC"}}
    cfg = offline_config(groups, nodes=names, rules=DEFAULT_RULES)
    records = {}
    for name, spec in zip(names, specs):
        if spec["polled"] == "never":
            continue
        rec = records[name] = NodeRecord(name)
        variables = {"NBPROC": spec["cpus"], "CPUFREQ": 2000, "LOADAVG": spec["load"], "MEMUSEDPCT": spec["memory"],
                     "NBSESSIONS": spec["sessions"], "DRAINED": spec["agent_drain"]}
        record_success(rec, {"hostname": name, "agent_version": "t", "sampled_at": at + spec["sampled"],
                             "users": [spec["user"]] if spec["user"] else [], "variables": variables}, at, 1)
        if spec["polled"] == "down":
            record_failure(rec, "refused", at, 1)
    return cfg, records, frozenset(n for n, spec in zip(names, specs) if spec["admin_drain"])


def _selector_state(sel: Selector) -> dict:
    """What a selector's picks read, as plain values (its sampling structures by content)."""
    state = sel._state
    return {"groups": {g: (s.names, s.tree.values(), s.loads, s.cum_sizes) for g, s in state.groups.items()},
            "members": {n: [(s.names[i], i) for s, i in places] for n, places in state.members.items()},
            "weights": state.weights, "compensation": state.compensation, "base": state.base,
            "last_good": state.last_good, "pending": sel.pending(), "carried": sel.carried()}


@pytest.mark.unit
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs=CLUSTER, earlier=CLUSTER, picks=st.integers(0, 30), seed=st.integers(0, 2 ** 32))
def test_sliced_jobs_give_what_the_whole_ones_give(specs, earlier, picks, seed):
    cfg, records, drained = _random_cluster(specs, at=100.0)
    whole_snap = Snapshot.build(cfg, records, drained, now=100.0)
    sliced_snap = asyncio.run(EVERY_STEP(Snapshot.build_job(cfg, records, drained, now=100.0)))
    for attr in ("nodes", "groups", "default_group", "built_at", "rules", "requires", "unreported"):
        assert getattr(sliced_snap, attr) == getattr(whole_snap, attr), attr
    assert all(sliced_snap.nodes_with_user(u) == whole_snap.nodes_with_user(u) for u in ("ann", "bob"))

    # Two selectors alike (same draws, same terminals sent on an earlier snapshot), then the new one put in force
    # by each way; the earlier snapshot has its own nodes and figures, so terminals are carried over or settled.
    start = Snapshot.build(*_random_cluster(earlier, at=50.0), now=50.0)
    clock = Clock(60.0)
    whole, sliced = Selector(random.Random(seed), clock=clock), Selector(random.Random(seed), clock=clock)
    for sel in (whole, sliced):
        sel.install(start)
        if start.groups["A"]:
            for i in range(picks):
                sel.pick(user="ann" if i % 3 == 0 else None)
    clock.now = 120.0
    whole.install(whole_snap)
    sliced.commit(asyncio.run(EVERY_STEP(sliced.prepare_job(sliced_snap))))
    assert _selector_state(sliced) == _selector_state(whole)
    if whole_snap.groups["A"]:
        assert [sliced.pick(g) for g in "ABC" * 5 if whole_snap.groups[g]] == \
            [whole.pick(g) for g in "ABC" * 5 if whole_snap.groups[g]]

    whole_history, sliced_history = History(), History()
    for history, run in ((whole_history, run_whole), (sliced_history, lambda job: asyncio.run(EVERY_STEP(job)))):
        for snap, at in ((start, 50.0), (whole_snap, 100.0)):
            run(history.add_job(snap, at, 5.0))
    assert sliced_history.to_dict() == whole_history.to_dict()
