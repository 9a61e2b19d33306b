"""Returning users sent home and the session limit, through a real lbserver, scripted agents and real clients."""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.support import free_port, wait_until
from tests.support.cluster import Balancer, lbctl, scripted_agent, server_xml, start_balancer
from tests.support.processes import python_cmd, wait_for_port

pytestmark = pytest.mark.daemon

RULES = '<variable name="SIMLOAD" custom="true" weight="100" capacity="100"/>'


def session(user: str, state: str = "active", since: float | None = None) -> dict:
    return {"user": user, "kind": "x2go" if state == "disconnected" else "utmp", "state": state,
            "since": since if since is not None else time.time() - 60, "info": ""}


def write(path: Path, load: float, sessions: list[dict]) -> None:
    """The scripted agent's reply: SIMLOAD ``load`` and these sessions, sampled now."""
    path.write_text(json.dumps({"hostname": path.stem, "agent_version": "t", "sampled_at": time.time(),
                                "variables": {"NBPROC": 2, "CPUFREQ": 2000, "SIMLOAD": load},
                                "users": sorted({s["user"] for s in sessions}), "sessions": sessions}))


def agents(procs, tmp_path: Path, *specs: tuple[str, float, list[dict]]) -> list[tuple[str, str, Path]]:
    """One scripted agent per (ip, load, sessions): (name, url, state file) each."""
    out = []
    for ip, load, sessions in specs:
        state = tmp_path / f"{ip}.json"
        write(state, load, sessions)
        node = scripted_agent(procs, ip, "--mode", "state", "--state", str(state))
        out.append((node.name, node.address, state))
    return out


def pick(bal: Balancer, user: str | None = None) -> dict:
    """One terminal request with ``format=json``: the node chosen and why."""
    query = urllib.parse.urlencode({**({"user": user} if user else {}), "format": "json"})
    with urllib.request.urlopen(f"{bal.url}/?{query}", timeout=5) as resp:
        return json.load(resp)


def all_up(bal: Balancer, names) -> None:
    for name in names:
        bal.wait_health(name, "up")


def test_a_returning_user_goes_home_drained_or_not_until_his_session_ends(procs, tmp_path):
    (big, big_url, _), (small, small_url, small_state) = agents(
        procs, tmp_path, ("127.0.0.61", 0.0, []), ("127.0.0.62", 90.0, [session("alice", "disconnected")]))
    bal = start_balancer(procs, tmp_path, {"PROD": [(big, big_url), (small, small_url)]}, rules=RULES)
    all_up(bal, (big, small))
    status = bal.status()
    assert status["nodes"][big]["weight"] > 5 * status["nodes"][small]["weight"]
    assert status["nodes"][small]["sessions"] == {"active": 0, "disconnected": 1, "counted": 1}
    assert [pick(bal, "alice")[k] for k in ("node", "why")] == [small, "user"]

    assert lbctl(bal.mgmt_url, "drain", small).returncode == 0
    bal.wait_health(small, "drained")
    assert [pick(bal, "alice")[k] for k in ("node", "why")] == [small, "user"]
    assert {pick(bal, f"new{i}")["node"] for i in range(20)} == {big}

    write(small_state, 90.0, [])  # alice logged out
    wait_until(lambda: bal.status()["nodes"][small]["sessions"]["disconnected"] == 0, 10, what="session gone")
    assert {pick(bal, "alice")["node"] for _ in range(5)} == {big}


def test_at_max_sessions_new_users_go_elsewhere_and_returning_ones_still_get_in(procs, tmp_path):
    (full, full_url, _), (other, other_url, _) = agents(
        procs, tmp_path, ("127.0.0.63", 0.0, [session("bob"), session("carol", "disconnected")]),
        ("127.0.0.64", 50.0, []))
    tmp_path.joinpath("lb").mkdir()
    # One poll at start, none during the test: the picks count in full meanwhile.
    bal = start_balancer(procs, tmp_path / "lb", {"PROD": [(full, full_url), (other, other_url)]}, rules=RULES,
                         poll='interval="60" timeout="1" rise="1" fall="2"', group_attrs='max-sessions="2"')
    all_up(bal, (full, other))
    status = bal.status()
    assert status["nodes"][full]["why"] == "at its session limit 2/2"
    assert status["nodes"][full]["max_sessions"] == 2 and status["nodes"][full]["at_session_limit"]
    table = lbctl(bal.mgmt_url, "status", env={"NO_COLOR": "1"}).stdout
    assert any(line.split()[0] == full and "1/1 of 2" in line for line in table.splitlines() if line.strip())
    detail = lbctl(bal.mgmt_url, "status", full, env={"NO_COLOR": "1"}).stdout
    assert "sessions 1 active, 1 disconnected; max-sessions 2, counting 2 (at the limit: no new session)" in detail
    assert [pick(bal, "carol")[k] for k in ("node", "why")] == [full, "user"]
    assert [pick(bal, "bob")[k] for k in ("node", "why")] == [full, "user"]
    # The other node takes two new sessions, then it is at its limit as well ...
    assert [pick(bal, f"new{i}")["node"] for i in range(2)] == [other, other]
    assert bal.status()["nodes"][other]["why"] == "at its session limit 2/2"
    # ... and a terminal still gets an answer: an overflow, as when every node is full.
    assert {pick(bal, f"late{i}")["why"] for i in range(10)} == {"overflow"}
    assert sum(bal.status()["nodes"][n]["sessions"]["counted"] for n in (full, other)) == 2 + 2 + 10
    assert [pick(bal, "carol")[k] for k in ("node", "why")] == [full, "user"]
    with urllib.request.urlopen(bal.mgmt_url + "/metrics", timeout=5) as resp:
        metrics = resp.read().decode()
    assert f'lbserver_node_sessions{{node="{full}",state="disconnected"}} 1.0' in metrics


def _start_peer(procs, tmp: Path, members, own: int, other: int) -> Balancer:
    tmp.mkdir()
    bal = Balancer(tmp / "lbsconfig.xml", free_port(), free_port())
    peers = f'<peers listen="127.0.0.1:{own}" heartbeat="0.2"><peer address="127.0.0.1:{other}"/></peers>'
    bal.config.write_text(server_xml(bal.port, bal.mgmt_port, {"PROD": members}, tmp, rules=RULES,
                                     poll='interval="60" timeout="1" rise="1" fall="2"', extra=peers))
    bal.proc = procs.start(python_cmd("lbserver", "-f", "-c", str(bal.config)))
    wait_for_port("127.0.0.1", bal.mgmt_port, timeout=20, proc=bal.proc)
    return bal


def test_a_user_placed_by_one_peer_is_sent_to_the_same_node_by_the_other(procs, tmp_path):
    (n1, u1, _), (n2, u2, _) = agents(procs, tmp_path, ("127.0.0.65", 10.0, []), ("127.0.0.66", 10.0, []))
    pa, pb = free_port(), free_port()
    a = _start_peer(procs, tmp_path / "a", [(n1, u1), (n2, u2)], pa, pb)
    b = _start_peer(procs, tmp_path / "b", [(n1, u1), (n2, u2)], pb, pa)
    for bal in (a, b):
        all_up(bal, (n1, n2))
    wait_until(lambda: all(p["reachable"] for bal in (a, b) for p in bal.status()["peers"]["peers"]), 10,
               what="peers reachable")
    users = [f"user{i}" for i in range(6)]
    placed = {}
    for i, user in enumerate(users):
        first = pick(a, user)
        assert first["why"] == "weighted"
        placed[user] = first["node"]
        wait_until(lambda: b.status()["peers"]["peers"][0]["picks_received"] >= i + 1, 10, what="the pick shared")
    assert {user: (pick(b, user)["node"], pick(b, user)["why"]) for user in users} == {
        user: (node, "user") for user, node in placed.items()}
