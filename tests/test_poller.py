"""The poller against real agent processes: an unchanged reply is not parsed or weighed again; timeouts."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from lbserver.config import DEFAULT_RULES, Node, ServerConfig
from lbserver.core import health, poller
from lbserver.core.poller import poll_all
from lbserver.core.selection import Snapshot
from tests.support.cluster import fake_agent, offline_config, scripted_agent, write_state
from tests.support import free_port


@pytest.mark.daemon
def test_unchanged_reply_keeps_its_state_and_a_new_sample_is_parsed(procs, tmp_path):
    node, state_file = fake_agent(procs, tmp_path, "127.0.0.31", time.time())
    dead_port = free_port("127.0.0.32")  # nothing listens there
    dead = Node(name="dead", address=f"http://127.0.0.32:{dead_port}", host="127.0.0.32", port=dead_port)
    validated: list[str] = []

    def validate(value):
        validated.append(value["hostname"])
        return health.validate_state(value)

    replies: dict = {}

    def poll():
        return asyncio.run(poll_all([node, dead], 2.0, 1 << 20, validate=validate, replies=replies))

    first = poll()
    second = poll()
    assert second[node.name].state is first[node.name].state  # the same sample: kept, not parsed again
    assert validated == ["fake"]
    assert set(replies) == {node.name}  # a node that did not answer has nothing to keep
    assert second["dead"].error is not None and "refused" in second["dead"].error

    write_state(state_file, time.time() + 1)  # the agent took a new sample
    third = poll()
    assert third[node.name].state is not second[node.name].state
    assert third[node.name].state["sampled_at"] == json.loads(state_file.read_text())["sampled_at"]
    assert validated == ["fake", "fake"]

    without = asyncio.run(poll_all([node], 2.0, 1 << 20, validate=health.validate_state))
    assert without[node.name].state == third[node.name].state  # keeping changes no result


def figures(load: float) -> dict:
    return {"NBPROC": 2, "CPUFREQ": 2000, "LOADAVG": load, "MEMUSEDPCT": 20, "NBSESSIONS": 1}


@pytest.mark.unit
def test_snapshot_weighs_again_only_what_changed():
    cfg = offline_config({"G": ["a", "b"]}, rules=DEFAULT_RULES)
    records = {}
    for n in cfg.nodes:
        records[n] = health.NodeRecord(n)
        health.record_success(records[n], {"hostname": n, "agent_version": "t", "sampled_at": 1.0, "users": [],
                                           "variables": figures(0.4)}, 1.0, 2)
    weighings: dict = {}
    first = Snapshot.build(cfg, records, now=2.0, weighings=weighings)
    health.record_success(records["b"], {**records["b"].last_state, "variables": figures(1.9)}, 3.0, 2)
    second = Snapshot.build(cfg, records, now=4.0, weighings=weighings)
    assert second.nodes["a"].variables is first.nodes["a"].variables  # same state, same rules: kept
    assert second.nodes["a"].last_success == first.nodes["a"].last_success == 1.0
    assert second.nodes["b"].variables["LOADAVG"] == 1.9  # new figures: weighed again
    assert second.nodes["b"].weight < first.nodes["b"].weight
    fresh = Snapshot.build(cfg, records, now=4.0)
    assert {n: v.weight for n, v in fresh.nodes.items()} == {n: v.weight for n, v in second.nodes.items()}
    reloaded = ServerConfig(**{**cfg.__dict__, "rules": ()})
    third = Snapshot.build(reloaded, records, now=5.0, weighings=weighings)
    assert third.nodes["a"].variables is not second.nodes["a"].variables  # other rules: weighed again
    assert third.nodes["a"].rules == ()


# The task deadline where this interpreter has asyncio.timeout (3.11+); wait_for everywhere.
@pytest.mark.daemon
@pytest.mark.parametrize("deadline", ["wait_for"] + (["task deadline"] if poller._deadline is not None else []))
def test_silent_agent_times_out_either_way(procs, monkeypatch, deadline):
    """The poll timeout bounds a black-holed agent, with asyncio.timeout or (Python 3.10) wait_for."""
    if deadline == "wait_for":
        monkeypatch.setattr(poller, "_deadline", None)
    node = scripted_agent(procs, "127.0.0.33", "--mode", "blackhole")
    start = time.monotonic()
    result = asyncio.run(poll_all([node], 0.3, 1 << 20))[node.name]
    assert result.error == "no answer within 0.3 s"
    assert 0.3 <= time.monotonic() - start < 2.0
