"""A self-contained demonstration on loopback: three agents, one balancer, terminals.

``python -m lbserver.tools.demo`` starts three real lbagents on 127.0.0.2-4 (each
reporting a different simulated load through the custom variable SIMLOAD), a
real lbserver polling them, then plays terminals asking where to log in and
shows where they were sent next to what the default algorithm, two-choices,
should send each server, and why. Everything runs in a temporary directory
and stops at the end (or on Ctrl-C with ``--keep-running``).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

from common.children import NotListening, free_port, stop_children, wait_for_port

SERVERS = (("xapp1", "127.0.0.2", 15), ("xapp2", "127.0.0.3", 45), ("xapp3", "127.0.0.4", 75))

AGENT_XML = """<?xml version="1.0"?>
<lbaconfig>
  <agent listen="{ip}:{port}" sample-interval="1"/>
  <access><allow from="127.0.0.0/8"/></access>
  <variables>
    <!-- stands in for real load, so the three servers differ on one machine -->
    <variable name="SIMLOAD" type="constant" value="{load}"/>
  </variables>
</lbaconfig>
"""

SERVER_XML = """<?xml version="1.0"?>
<lbsconfig>
  <lbservice listen="127.0.0.1:{lb_port}" returns="$IP"/>
  <mgmtservice listen="127.0.0.1:{mgmt_port}" state-file="{tmp}/lbserver.state"/>
  <poll interval="2" timeout="1" rise="1" fall="1"/>
  <nodes>
    <group default="true" name="DEMO">
{nodes}
    </group>
  </nodes>
  <rules>
    <variable name="SIMLOAD" custom="true" weight="100" capacity="100"/>
  </rules>
</lbsconfig>
"""


def _wait_port(host: str, port: int, proc: subprocess.Popen) -> None:
    try:
        wait_for_port(host, port, 15.0, proc)
    except NotListening as exc:
        raise SystemExit(f"demo: {exc}") from None


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.read().decode()


def _as_and_more_loaded(drawn: dict[str, float], loads: dict[str, float], node: str) -> tuple[float, float]:
    """The chance of drawing a server as loaded as ``node`` (itself included), and one more loaded."""
    return (sum(q for m, q in drawn.items() if loads[m] == loads[node]),
            sum(q for m, q in drawn.items() if loads[m] > loads[node]))


def two_choices_shares(drawn: dict[str, float], loads: dict[str, float]) -> dict[str, float]:
    """The share of terminals two-choices sends each server when nothing changes between picks.

    Each terminal draws two servers, each with probability ``drawn`` (its
    weight over the total), and goes to the less loaded; the first drawn
    wins a tie. So a server gets it when drawn first and the second is no
    less loaded, or drawn second and the first more loaded::

        expected = drawn × (drawn of those as loaded + 2 × drawn of those more loaded)
    """
    shares = {}
    for n, p in drawn.items():
        same, more = _as_and_more_loaded(drawn, loads, n)
        shares[n] = p * (same + 2 * more)
    return shares


def _explain(drawn: dict[str, float], loads: dict[str, float], expected: dict[str, float]) -> str:
    """Why each server's expected share is what it is, in words and figures."""
    lines = ["Why: with the default algorithm, two-choices, each terminal draws two servers, each in",
             'proportion to its weight (column "drawn"), and goes to the less loaded of the two. A server',
             "thus gets the terminals for which it is drawn twice, or once with a more loaded server:",
             'expected = drawn x (drawn + 2 x the "drawn" of the more loaded servers)']
    for n, p in drawn.items():
        same, more = _as_and_more_loaded(drawn, loads, n)
        lines.append(f"  {n:8} {p:.1%} x ({same:.1%} + 2 x {more:.1%}) = {expected[n]:.1%}")
    lines += ['Weighted-random, the other algorithm, would send each server its "drawn" share (SHARE in',
              "lbctl's table below). The login-storm compensation (each terminal counting on its server",
              "until a poll shows its load) has nothing to add here: the demo's rule gives terminals no",
              "per-session load, as they open no session."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the demo; return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m lbserver.tools.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", "--terminals", type=int, default=300, help="terminal requests to play (default 300)")
    parser.add_argument("--keep-running", action="store_true",
                        help="leave agents and balancer running until Ctrl-C, to try lbclient, curl and lbctl")
    args = parser.parse_args(argv)

    tmp = tempfile.mkdtemp(prefix="lbdemo-")
    # The directory holding the lbserver package, so the children import this very tree.
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    procs: list[subprocess.Popen] = []
    try:
        nodes = []
        for name, ip, load in SERVERS:
            port = free_port(ip)
            path = os.path.join(tmp, f"{name}.xml")
            with open(path, "w") as fh:
                fh.write(AGENT_XML.format(ip=ip, port=port, load=load))
            procs.append(subprocess.Popen([sys.executable, "-m", "lbagent", "-f", "-c", path], env=env,
                                          stderr=subprocess.DEVNULL))
            _wait_port(ip, port, procs[-1])
            nodes.append(f'      <node name="{name}" address="http://{ip}:{port}"/>')
            print(f"agent  {name:6} on {ip}:{port}  SIMLOAD {load} (simulated load, %)")
        lb_port, mgmt_port = free_port("127.0.0.1"), free_port("127.0.0.1")
        cfg = os.path.join(tmp, "lbsconfig.xml")
        with open(cfg, "w") as fh:
            fh.write(SERVER_XML.format(lb_port=lb_port, mgmt_port=mgmt_port, tmp=tmp, nodes="\n".join(nodes)))
        procs.append(subprocess.Popen([sys.executable, "-m", "lbserver", "-f", "-c", cfg], env=env,
                                      stderr=subprocess.DEVNULL))
        _wait_port("127.0.0.1", lb_port, procs[-1])
        print(f"lbserver on 127.0.0.1:{lb_port} (terminals), 127.0.0.1:{mgmt_port} (status)\n")

        status = json.loads(_get(f"http://127.0.0.1:{mgmt_port}/status"))
        first = subprocess.run([sys.executable, "-m", "lbclient", "-s", f"127.0.0.1:{lb_port}"],
                               env=env, capture_output=True, text=True, timeout=10)
        print(f"$ lbclient -s 127.0.0.1:{lb_port}\n{first.stdout.strip() or first.stderr.strip()}\n")

        counts: collections.Counter[str] = collections.Counter()
        for _ in range(args.terminals):
            counts[_get(f"http://127.0.0.1:{lb_port}/").strip()] += 1
        drawn = status["groups"]["DEMO"]["shares"]
        loads = {name: float(load) for name, _, load in SERVERS}
        expected = two_choices_shares(drawn, loads)
        print(f"{args.terminals} terminals asked for a server:")
        print(f"  {'server':8} {'address':10} {'SIMLOAD':>7} {'weight':>7} {'drawn':>6} {'expected':>9} {'sent':>5}")
        for name, ip, load in SERVERS:
            print(f"  {name:8} {ip:10} {load:>7} {status['nodes'][name]['weight']:>7.1f} {drawn.get(name, 0):>6.1%} "
                  f"{expected.get(name, 0):>9.1%} {counts[ip]:>5}")
        print(f"\n{_explain(drawn, loads, expected)}\n")
        ctl = subprocess.run([sys.executable, "-m", "lbserver.mgmt.ctl", "--url", f"http://127.0.0.1:{mgmt_port}",
                              "status"], env=env, capture_output=True, text=True, timeout=10)
        print(f"$ lbctl --url http://127.0.0.1:{mgmt_port} status\n{ctl.stdout.rstrip() or ctl.stderr.strip()}")
        if args.keep_running:
            print(f"\nrunning; try: curl http://127.0.0.1:{lb_port}/   curl http://127.0.0.1:{mgmt_port}/status"
                  f"   lbctl --url http://127.0.0.1:{mgmt_port} status\nCtrl-C to stop")
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
            signal.sigwait({signal.SIGINT, signal.SIGTERM})
        return 0
    finally:
        stop_children(procs, 5.0)


if __name__ == "__main__":
    sys.exit(main())
