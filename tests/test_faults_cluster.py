"""Fault injection on a live cluster: agents frozen, killed, restarted, misbehaving; daemons restarted.

A terminal keeps asking the balancer throughout (:class:`faultkit.TerminalLoop`)
and every answer is checked: it must be a node that is healthy, or that
failed so recently that the balancer could not have noticed yet (``fall``
polls), and never one the balancer already reported down. No request may
fail.
"""

from __future__ import annotations

import signal
import time
import xmlrpc.client

import pytest

from tests.support.faults import Allowed, LogCapture, TerminalLoop
from tests.support.cluster import restart_agent, scripted_agent, start_agent, start_balancer, stop
from tests.support import python_cmd, wait_for_port, wait_until

pytestmark = pytest.mark.daemon

POLL = 'interval="0.5" timeout="0.4" rise="2" fall="2"'
# fall=2 polls 0.5 s apart, each up to 0.4 s, plus one interval of phase and
# room for a loaded machine: after this long a failed node must be gone.
GRACE = 4.0
BAD_MODES = ("garbage", "truncated", "bomb", "huge", "drip", "blackhole")


def _down(bal, name: str, allowed: Allowed) -> None:
    bal.wait_health(name, "down")
    allowed.seen_down(name)


def _up(bal, name: str, allowed: Allowed) -> None:
    allowed.heal(name)
    bal.wait_health(name, "up")


def test_agents_frozen_killed_and_misbehaving_while_terminals_ask(procs, tmp_path):
    agents = [start_agent(procs, tmp_path, f"xapp{i + 1}", f"127.0.0.{i + 2}", load)
              for i, load in enumerate((10, 40, 70))]
    members = [(a.name, a.url) for a in agents]
    for i, mode in enumerate(BAD_MODES):  # misbehaving agents in the same group, all along
        ip = f"127.0.2.{i + 1}"
        members.append((mode, scripted_agent(procs, ip, "--mode", mode).address))
    bal = start_balancer(procs, tmp_path, {"PROD": members}, poll=POLL)
    logs = LogCapture(bal.proc)
    wait_until(lambda: all(bal.status()["nodes"][a.name]["health"] == "up" for a in agents), 15, what="all up")
    allowed = Allowed({a.name for a in agents}, GRACE)
    faults: dict[str, int] = {}

    with TerminalLoop([bal.port], allowed) as loop:
        wait_until(lambda: loop.requests > 50, 10, what="terminal loop running")
        xapp1, xapp2, xapp3 = agents
        # Frozen and thawed at different points of the poll cycle.
        for phase in (0.0, 0.17, 0.34):
            cycle = bal.status()["last_poll"]["started"]
            wait_until(lambda: time.time() >= cycle + 0.5 + phase, 5, interval=0.01, what="cycle phase")
            allowed.fault(xapp2.name)
            xapp2.proc.send_signal(signal.SIGSTOP)
            faults["SIGSTOP"] = faults.get("SIGSTOP", 0) + 1
            _down(bal, xapp2.name, allowed)
            mark = loop.mark()
            wait_until(lambda: loop.requests > mark + 30, 10, what="requests while frozen")
            xapp2.proc.send_signal(signal.SIGCONT)
            faults["SIGCONT"] = faults.get("SIGCONT", 0) + 1
            _up(bal, xapp2.name, allowed)
        # A freeze shorter than fall polls: the node may not even be noticed.
        allowed.fault(xapp2.name)
        xapp2.proc.send_signal(signal.SIGSTOP)
        time.sleep(0.3)  # the length of the freeze is the fault itself, not a wait for something
        xapp2.proc.send_signal(signal.SIGCONT)
        faults["SIGSTOP"] += 1
        faults["SIGCONT"] += 1
        _up(bal, xapp2.name, allowed)
        # Killed outright, then restarted on the same address.
        allowed.fault(xapp1.name)
        xapp1.proc.kill()
        xapp1.proc.wait()
        faults["SIGKILL"] = 1
        _down(bal, xapp1.name, allowed)
        restart_agent(procs, xapp1)
        faults["restart"] = 1
        _up(bal, xapp1.name, allowed)
        # Two of three stopped at once: everything goes to the survivor.
        for a in (xapp2, xapp3):
            allowed.fault(a.name)
            stop(a.proc)
        faults["SIGTERM"] = 2
        for a in (xapp2, xapp3):
            _down(bal, a.name, allowed)
        mark = loop.mark()
        wait_until(lambda: loop.requests > mark + 50, 10, what="requests with one node left")
        for a in (xapp2, xapp3):
            restart_agent(procs, a)
            allowed.heal(a.name)  # healthy again as far as terminals may tell
        faults["restart"] += 2
        for a in (xapp2, xapp3):
            _up(bal, a.name, allowed)
        mark = loop.mark()
        wait_until(lambda: loop.requests > mark + 50, 10, what="requests after recovery")

    status = bal.status()
    assert loop.failures == [], loop.failures[:5]
    assert loop.violations == [], loop.violations[:5]
    assert set(loop.answers) == {a.name for a in agents}, loop.answers
    for mode in BAD_MODES:
        assert status["nodes"][mode]["health"] == "down", status["nodes"][mode]
    assert bal.proc.poll() is None
    assert logs.count("Traceback") == 0, logs.matching("Traceback")
    print(f"\nfaults injected: {faults} plus {len(BAD_MODES)} misbehaving agents polled every cycle; "
          f"terminal requests {loop.requests}, "
          f"answers {loop.answers}, failed {len(loop.failures)}, wrong {len(loop.violations)}")


def test_daemons_restarted_under_load(procs, tmp_path):
    """An agent and a balancer restarted while terminals keep asking two balancers, as lbclient does."""
    agents = [start_agent(procs, tmp_path, f"xapp{i + 1}", f"127.0.0.{i + 2}", load)
              for i, load in enumerate((10, 50))]
    groups = {"PROD": [(a.name, a.url) for a in agents]}
    (tmp_path / "b1").mkdir()
    (tmp_path / "b2").mkdir()
    b1 = start_balancer(procs, tmp_path / "b1", groups, poll=POLL)
    b2 = start_balancer(procs, tmp_path / "b2", groups, poll=POLL)
    for b in (b1, b2):
        LogCapture(b.proc)
        wait_until(lambda: all(n["health"] == "up" for n in b.status()["nodes"].values()), 15, what="all up")
    allowed = Allowed({a.name for a in agents}, GRACE)
    figures = {}

    with TerminalLoop([b1.port, b2.port], allowed, pause=0.002) as loop:
        wait_until(lambda: loop.requests > 50, 10, what="load running")
        # The agent: stopped and started again; its first answer is a fresh sample.
        agent = agents[0]
        allowed.fault(agent.name)
        stop(agent.proc)
        for b in (b1, b2):
            _down(b, agent.name, allowed)
        started = time.time()
        restart_agent(procs, agent)
        allowed.heal(agent.name)
        state = xmlrpc.client.ServerProxy(agent.url).get_state()
        answered = time.time()
        # Sampled by the new process, and no older than one sample interval (0.2 s) when served.
        assert started <= state["sampled_at"] <= answered
        assert answered - state["sampled_at"] <= 0.2 + 0.1
        figures["agent first answer after start (s)"] = round(answered - started, 2)
        for b in (b1, b2):
            _up(b, agent.name, allowed)

        # The balancer: stopped and started again while the loop falls back to the other one.
        before = loop.fallbacks
        stop(b1.proc)
        spawned = time.monotonic()
        b1.proc = procs.start(python_cmd("lbserver", "-f", "-c", str(b1.config)))
        LogCapture(b1.proc)
        wait_for_port("127.0.0.1", b1.port, timeout=20, proc=b1.proc)
        first = b1.ask()
        figures["balancer first answer after start (s)"] = round(time.monotonic() - spawned, 2)
        # It serves only once its first poll is in: the very first answer is right.
        assert first in {a.name for a in agents}
        status = b1.status()
        assert status["last_poll"] is not None
        assert all(n["health"] == "up" for n in status["nodes"].values()), status["nodes"]
        mark = loop.mark()
        wait_until(lambda: loop.requests > mark + 100, 10, what="load after restart")

    assert loop.failures == [], loop.failures[:5]
    assert loop.violations == [], loop.violations[:5]
    assert loop.fallbacks > before  # the other balancer did take over while this one restarted
    print(f"\nrestart figures: {figures}; requests {loop.requests}, taken over by the second balancer "
          f"{loop.fallbacks}, failed {len(loop.failures)}")
