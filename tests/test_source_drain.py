"""Drain at the source, balancer side: a node whose agent reports DRAINED is drained like one drained with lbctl."""

from __future__ import annotations

import json
import random
import subprocess
import time
from types import SimpleNamespace

import pytest

from tests.support import ROOT, python_cmd, wait_until
from lbserver.core.selection import Selector, source_drain
from lbserver.dns.decide import decide
from lbserver.dns.service import candidates
from lbserver.mgmt.status import health_word, why
from tests.support.doubles import SESSIONS
from tests.support.doubles import agent_state as state
from tests.support.doubles import snapshot_of as make
from tests.support.cluster import ask_many, lbctl, scripted_agent, start_agent, start_balancer

AGENT_SAMPLE = 0.2  # tests.cluster's agents sample every 0.2 s
POLL = 0.5          # and its balancer polls every 0.5 s


def drained_state(reason: str = "kernel update tonight", **variables) -> dict:
    return state(DRAINED=True, DRAIN_REASON=reason, **variables)


# --- the snapshot and the selector --------------------------------------------

@pytest.mark.unit
def test_source_drain_reads_the_agent_variables():
    assert source_drain({}) is None
    assert source_drain({"DRAINED": False, "DRAIN_REASON": ""}) is None
    assert source_drain({"DRAINED": 1}) is None  # only a boolean true drains
    assert source_drain({"DRAINED": True, "DRAIN_REASON": " kernel update "}) == "kernel update"
    assert source_drain({"DRAINED": True}) == ""


@pytest.mark.unit
def test_a_source_drained_node_is_drained_like_an_admin_drained_one():
    snap = make({"G": ["a", "b", "c", "d"]},
                {"a": state(NBSESSIONS=0), "b": drained_state(NBSESSIONS=0),
                 "c": state(NBSESSIONS=0), "d": drained_state("", NBSESSIONS=0)},
                rules=[SESSIONS], drained={"c", "d"})
    a, b, c, d = (snap.nodes[n] for n in "abcd")
    assert (a.drained, a.drained_by, a.selectable) == (False, (), True)
    assert (b.drained, b.drained_by, b.drain_reason, b.selectable) == (True, ("agent",), "kernel update tonight", False)
    assert (c.drained, c.drained_by, c.selectable) == (True, ("admin",), False)
    assert (d.drained, d.drained_by) == (True, ("admin", "agent"))
    assert b.healthy and b.weight == c.weight == a.weight > 0  # still weighed, just not chosen
    assert [v.name for v in snap.ranked("G")] == ["a"]
    assert [health_word(v) for v in (a, b, c, d)] == ["up", "drained", "drained", "drained"]
    assert [why(v) for v in (a, b, c, d)] == ["", "drained at the source: kernel update tonight", "drained by admin",
                                              "drained by admin; drained at the source"]
    sel = Selector(random.Random(1))
    sel.install(snap)
    assert {sel.pick("G").node for _ in range(50)} == {"a"}


@pytest.mark.unit
def test_user_on_a_source_drained_node_is_answered_as_for_an_admin_drain():
    """``?user=`` takes a user back to his own session on a drained node, whoever drained it."""
    for states, admin in (({"b": drained_state(NBSESSIONS=1, users=["alice"])}, ()),
                          ({"b": state(NBSESSIONS=1, users=["alice"])}, ("b",))):
        snap = make({"G": ["a", "b"]}, {"a": state(NBSESSIONS=5), **states}, rules=[SESSIONS], drained=admin)
        sel = Selector(random.Random(1))
        sel.install(snap)
        assert snap.nodes_with_user("alice") == ("b",)  # the session is still seen
        assert (sel.pick("G", user="alice").node, sel.pick("G", user="alice").reason) == ("b", "user")
        assert {sel.pick("G").node for _ in range(30)} == {"a"}  # no new session there
    snap = make({"G": ["a", "b"]}, {"a": state(NBSESSIONS=5), "b": state(NBSESSIONS=1, DRAINED=False,
                                                                        DRAIN_REASON="", users=["alice"])},
                rules=[SESSIONS])
    sel = Selector(random.Random(1))
    sel.install(snap)
    assert (sel.pick("G", user="alice").node, sel.pick("G", user="alice").reason) == ("b", "user")


@pytest.mark.unit
def test_a_source_drained_node_is_no_dns_candidate():
    snap = make({"WMS": ["wms01", "wms02", "wms03"]},
                {"wms01": state(), "wms02": drained_state(), "wms03": state()})
    cands = candidates(SimpleNamespace(snapshot=snap))
    assert cands["wms02"].drained and not cands["wms01"].drained
    d = decide("wms", snap.groups["WMS"], cands)
    assert set(d.published) == {"wms01", "wms03"}
    assert d.excluded == {"wms02": "drained"}
    # alone in its alias, it is kept by the at-least-one rule only
    only = make({"WMS": ["wms02"]}, {"wms02": drained_state()})
    d = decide("wms", ("wms02",), candidates(SimpleNamespace(snapshot=only)))
    assert d.published == ("wms02",) and d.fallback


# --- real agents, a real balancer ---------------------------------------------

def lbagent(config, *args: str) -> subprocess.CompletedProcess:
    res = subprocess.run(python_cmd("lbagent", "-c", str(config), *args), capture_output=True, text=True,
                         timeout=30, env={"PYTHONPATH": str(ROOT)})
    assert res.returncode == 0, res.stderr
    return res


def status_row(url: str, node: str) -> str:
    res = lbctl(url, "status")
    assert res.returncode == 0, res.stderr
    return next(ln for ln in res.stdout.splitlines() if ln.strip().startswith(node + " "))


def wait_drained(bal, node: str, since: float, why_text: str) -> dict:
    """Wait for ``node`` drained with ``why_text``; check it came within two polls of the agent's next sample."""
    status = wait_until(lambda: (s := bal.status())["nodes"][node]["why"] == why_text and s, 10,
                        what=f"{node}: {why_text}")
    # The first poll cycle that started after the agent's next sample saw it: at most two polls later.
    assert status["last_poll"]["started"] - since < AGENT_SAMPLE + 2 * POLL + 0.5, (since, status["last_poll"])
    return status


@pytest.mark.daemon
def test_drain_at_the_source_reaches_the_balancer_and_lbctl(procs, tmp_path):
    agents = [start_agent(procs, tmp_path, f"xapp{i + 1}", f"127.0.0.{i + 2}", load)
              for i, load in enumerate((10, 40, 70))]
    bal = start_balancer(procs, tmp_path, {"PROD": [(a.name, a.url) for a in agents]})
    wait_until(lambda: all(n["health"] == "up" for n in bal.status()["nodes"].values()), 15, what="all up")
    xapp1 = agents[0]

    # lbagent --drain on the server: the balancer follows at its next polls
    since = time.time()
    lbagent(xapp1.config, "--drain", "kernel update tonight")
    status = wait_drained(bal, "xapp1", since, "drained at the source: kernel update tonight")
    node = status["nodes"]["xapp1"]
    assert node["health"] == "drained" and node["drained"] is True and node["drained_by"] == ["agent"]
    assert node["variables"]["DRAINED"] is True and node["weight"] > 0  # still polled and weighed
    assert "xapp1" not in status["groups"]["PROD"]["selectable"]
    assert status["nodes"]["xapp2"]["drained_by"] == [] and status["nodes"]["xapp2"]["why"] == ""
    counts = ask_many(bal.port, 300)
    assert "xapp1" not in counts and sum(counts.values()) == 300
    row = status_row(bal.mgmt_url, "xapp1")
    assert row.split()[1] == "drained" and row.endswith("drained at the source: kernel update tonight")

    # an admin drain on top: both show, and enabling one leaves the other
    assert lbctl(bal.mgmt_url, "drain", "xapp1").returncode == 0
    node = bal.status()["nodes"]["xapp1"]
    assert node["drained_by"] == ["admin", "agent"]
    assert node["why"] == "drained by admin; drained at the source: kernel update tonight"
    res = lbctl(bal.mgmt_url, "enable", "xapp1")
    assert res.returncode == 0, res.stderr
    assert res.stdout == ("node xapp1 enabled; still drained at the source: kernel update tonight "
                          "(lbagent --enable on the server ends that)\n")
    node = bal.status()["nodes"]["xapp1"]
    assert node["drained_by"] == ["agent"] and node["health"] == "drained"
    assert "xapp1" not in ask_many(bal.port, 200)

    # lbagent --enable brings it back
    lbagent(xapp1.config, "--enable")
    bal.wait_health("xapp1", "up", timeout=10)
    assert ask_many(bal.port, 400)["xapp1"] > 100  # the least loaded node takes most terminals again

    # the nologin file drains it too (an empty one says "nologin")
    since = time.time()
    xapp1.nologin_file.write_text("")
    status = wait_drained(bal, "xapp1", since, "drained at the source: nologin")
    assert status["nodes"]["xapp1"]["drained_by"] == ["agent"]
    assert "xapp1" not in ask_many(bal.port, 200)
    assert status_row(bal.mgmt_url, "xapp1").endswith("drained at the source: nologin")
    xapp1.nologin_file.unlink()
    bal.wait_health("xapp1", "up", timeout=10)
    assert "xapp1" in ask_many(bal.port, 400)


@pytest.mark.daemon
def test_user_reconnection_is_the_same_for_both_drains(procs, tmp_path):
    """A scripted agent reports alice's session: ?user=alice still reaches it while drained, by either means."""
    agent = start_agent(procs, tmp_path, "xapp1", "127.0.0.2", 50)
    fake_state = tmp_path / "fake.json"

    def script(drained: bool, reason: str = "") -> None:
        fake_state.write_text(json.dumps({
            "hostname": "fake", "agent_version": "t", "sampled_at": time.time(),
            "variables": {"NBPROC": 1, "CPUFREQ": 1000, "SIMLOAD": 10, "DRAINED": drained, "DRAIN_REASON": reason},
            "users": ["alice"]}))

    script(False)
    fake = scripted_agent(procs, "127.0.0.5", "--mode", "state", "--state", str(fake_state))
    bal = start_balancer(procs, tmp_path, {"PROD": [("xapp1", agent.url), ("fake", fake.address)]})
    bal.wait_health("fake", "up")
    assert {bal.ask("?user=alice") for _ in range(10)} == {"fake"}

    script(True, "kernel update")
    status = wait_until(lambda: (s := bal.status())["nodes"]["fake"]["health"] == "drained" and s, 10,
                        what="fake drained at the source")
    assert status["nodes"]["fake"]["why"] == "drained at the source: kernel update"
    assert status["nodes"]["fake"]["users"] == ["alice"]  # the session is still seen
    assert {bal.ask("?user=alice") for _ in range(10)} == {"fake"}
    assert {bal.ask() for _ in range(10)} == {"xapp1"}

    script(False)
    bal.wait_health("fake", "up")
    assert {bal.ask("?user=alice") for _ in range(10)} == {"fake"}
    assert lbctl(bal.mgmt_url, "drain", "fake").returncode == 0
    assert {bal.ask("?user=alice") for _ in range(10)} == {"fake"}  # an admin drain: the same answer
    assert {bal.ask() for _ in range(10)} == {"xapp1"}
    assert lbctl(bal.mgmt_url, "enable", "fake").returncode == 0
    assert {bal.ask("?user=alice") for _ in range(10)} == {"fake"}
