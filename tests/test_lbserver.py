"""lbserver end to end: real lbagents on 127.0.0.N, a real lbserver, real clients."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time

import pytest

from tests.support.cluster import ask_many, restart_agent, scripted_agent, start_agent, start_balancer, stop
from tests.support import ROOT, free_port, python_cmd, wait_for_port, wait_until
from tests.support.stats import chi2

# Upper 1e-6 points of the chi-square distribution, by degrees of freedom. The
# live balancer draws from an unseeded generator, so the test must not fail
# one run in a thousand by chance. With 6000 draws a real bias still lands
# above them: a node favoured by 10 % gives about 33, weights ignored about 1300.
CHI2_CRITICAL = {1: 23.93, 2: 27.63, 3: 30.66, 4: 33.38}


@pytest.fixture
def three(procs, tmp_path):
    """Three agents with loads 10, 40 and 70 % and a balancer over them (group PROD; group B = xapp3)."""
    agents = [start_agent(procs, tmp_path, f"xapp{i + 1}", f"127.0.0.{i + 2}", load)
              for i, load in enumerate((10, 40, 70))]
    groups = {"PROD": [(a.name, a.url) for a in agents], "B": [(agents[2].name, agents[2].url)]}
    bal = start_balancer(procs, tmp_path, groups)
    wait_until(lambda: all(n["health"] == "up" for n in bal.status()["nodes"].values()), 15, what="all up")
    return agents, bal


@pytest.mark.daemon
def test_distribution_of_each_algorithm_and_a_reload_that_changes_it(three):
    agents, bal = three
    status = bal.status()
    weights = {n: status["nodes"][n]["weight"] for n in ("xapp1", "xapp2", "xapp3")}
    # weight x clamp(1 - load/100) x size: same machine, so the ratios are 90:60:30
    assert weights["xapp1"] / weights["xapp3"] == pytest.approx(3.0, rel=0.01)
    assert weights["xapp2"] / weights["xapp3"] == pytest.approx(2.0, rel=0.01)
    n = 6000
    # The default, two-choices: two draws by weight (1/2, 1/3, 1/6), the less loaded kept (10 < 40 < 70 %),
    # so xapp1 unless neither draw is xapp1, xapp3 only when both are: 3/4, 2/9, 1/36.
    counts = ask_many(bal.port, n)
    assert chi2(counts, {"xapp1": 3 / 4, "xapp2": 2 / 9, "xapp3": 1 / 36}) < CHI2_CRITICAL[2], counts
    assert chi2(counts, weights) > 10 * CHI2_CRITICAL[2]
    # algorithm="weighted-random", applied by a reload: the seed's choice, in proportion to weight
    bal.config.write_text(bal.config.read_text().replace('idle-timeout="5"',
                                                         'idle-timeout="5" algorithm="weighted-random"'))
    bal.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: b"configuration reloaded" in _read_available(bal.proc), 10, what="reload logged")
    counts = ask_many(bal.port, n)
    assert chi2(counts, weights) < CHI2_CRITICAL[2], (counts, weights)
    assert counts["xapp1"] > counts["xapp2"] > counts["xapp3"]


@pytest.mark.system
def test_curl_lbclient_groups_and_bad_requests(three):
    agents, bal = three
    out = subprocess.run(["curl", "-sS", "--max-time", "5", "-i", bal.url + "/?group=B"],
                         capture_output=True, text=True, check=True).stdout
    assert out.startswith("HTTP/1.1 200")
    assert out.rstrip().endswith("xapp3")
    out = subprocess.run(["curl", "-sS", "--max-time", "5", "-o", "/dev/null", "-w", "%{http_code}",
                          bal.url + "/?group=NOPE"], capture_output=True, text=True).stdout
    assert out == "404"
    client = subprocess.run(python_cmd("lbclient", "-s", f"127.0.0.1:{free_port()}",
                                       "-s", f"127.0.0.1:{bal.port}", "-g", "B"),
                            capture_output=True, text=True, timeout=20, env={"PYTHONPATH": str(ROOT)})
    assert client.returncode == 0, client.stderr
    assert client.stdout.strip() == "xapp3"
    # junk gets 400 and the service keeps answering everyone else
    with socket.create_connection(("127.0.0.1", bal.port), timeout=5) as s:
        s.sendall(b"\x16\x03\x01 junk junk\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 400")
    assert bal.ask() in {"xapp1", "xapp2", "xapp3"}


@pytest.mark.daemon
def test_user_affinity(procs, tmp_path):
    agent = start_agent(procs, tmp_path, "xapp1", "127.0.0.2", 0)
    state = tmp_path / "fake.json"
    state.write_text(json.dumps({"hostname": "fake", "agent_version": "t", "sampled_at": time.time(),
                                 "variables": {"NBPROC": 1, "CPUFREQ": 1000, "SIMLOAD": 99},
                                 "users": ["alice"]}))
    fake = scripted_agent(procs, "127.0.0.5", "--mode", "state", "--state", str(state))
    bal = start_balancer(procs, tmp_path, {"PROD": [("xapp1", agent.url), ("fake", fake.address)]})
    wait_until(lambda: bal.status()["nodes"]["fake"]["health"] == "up", 10, what="fake up")
    # alice's session is on "fake", although it is nearly full
    assert {bal.ask("?user=alice") for _ in range(20)} == {"fake"}
    assert ask_many(bal.port, 200, "/?user=bob")["xapp1"] > 150


@pytest.mark.daemon
def test_agent_death_fall_and_rise(three, procs):
    agents, bal = three
    stop(agents[1].proc)
    status = bal.wait_health("xapp2", "down")
    assert status["nodes"]["xapp2"]["consecutive_failures"] >= 2  # fall="2"
    assert "refused" in status["nodes"]["xapp2"]["why"]
    counts = ask_many(bal.port, 300)
    assert "xapp2" not in counts and counts["xapp1"] > 0
    restart_agent(procs, agents[1])
    status = bal.wait_health("xapp2", "up")
    assert status["nodes"]["xapp2"]["consecutive_failures"] == 0
    assert "xapp2" in ask_many(bal.port, 300)


@pytest.mark.daemon
def test_bad_agents_do_not_delay_others(procs, tmp_path):
    good = start_agent(procs, tmp_path, "good", "127.0.0.2", 0)
    members = [("good", good.url)]
    for i, mode in enumerate(("blackhole", "garbage", "truncated", "bomb", "huge", "drip")):
        ip = f"127.0.1.{i + 1}"
        members.append((mode, scripted_agent(procs, ip, "--mode", mode).address))
    dead_port = free_port("127.0.1.99")
    members.append(("dead", f"http://127.0.1.99:{dead_port}"))
    bal = start_balancer(procs, tmp_path, {"PROD": members},
                         poll='interval="1" timeout="0.5" rise="1" fall="1"')
    status = wait_until(lambda: (s := bal.status())["last_poll"] and s, 10, what="a poll")
    for name, _ in members[1:]:
        assert status["nodes"][name]["health"] == "down", (name, status["nodes"][name])
        assert status["nodes"][name]["error"]
    assert status["nodes"]["good"]["health"] == "up"
    # every bad agent costs at most the timeout, in parallel: in sequence the
    # black hole, the drip and the huge body alone would take 3 x 0.5 s
    assert status["last_poll"]["duration"] < 1.4
    assert "no answer within" in status["nodes"]["blackhole"]["error"]
    assert "malformed" in status["nodes"]["garbage"]["error"]
    assert "refused" in status["nodes"]["dead"]["error"]
    assert set(ask_many(bal.port, 100)) == {"good"}


@pytest.mark.daemon
def test_all_down_answers_last_good(three):
    agents, bal = three
    for a in agents:
        stop(a.proc)
    for a in agents:
        bal.wait_health(a.name, "down")
    answers = {bal.ask() for _ in range(20)}
    assert len(answers) == 1 and answers <= {"xapp1", "xapp2", "xapp3"}


@pytest.mark.daemon
def test_sighup_reload_and_bad_config(three, tmp_path, procs):
    agents, bal = three
    extra = start_agent(procs, tmp_path, "xapp4", "127.0.0.6", 0)
    text = bal.config.read_text()
    good = text.replace('</group>', f'  <node name="xapp4" address="{extra.url}"/>\n    </group>', 1)
    bal.config.write_text(good.replace("<rules>", "<rules"))  # broken first
    bal.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: b"reload refused" in _read_available(bal.proc), 10, what="reload refused logged")
    assert "xapp4" not in bal.status()["nodes"]
    assert bal.ask() in {"xapp1", "xapp2", "xapp3"}
    bal.config.write_text(good)
    bal.proc.send_signal(signal.SIGHUP)
    bal.wait_health("xapp4", "up")


_buffers: dict[int, bytes] = {}


def _read_available(proc: subprocess.Popen) -> bytes:
    """What the process wrote to stderr so far (non-blocking)."""
    import os

    fd = proc.stderr.fileno()
    os.set_blocking(fd, False)
    try:
        chunk = os.read(fd, 65536)
    except BlockingIOError:
        chunk = b""
    _buffers[proc.pid] = _buffers.get(proc.pid, b"") + chunk
    return _buffers[proc.pid]


@pytest.mark.daemon
def test_check_config_seed_example_and_errors(tmp_path):
    seed = tmp_path / "seed.xml"
    seed.write_text("""<?xml version="1.0"?>
<lbsconfig>
<nodes>
<group default="true" name="PROD">
<node address="http://10.0.0.1:8001" name="xapp1"/>
<node address="http://10.0.0.2:8001" name="xapp2"/>
<node address="http://10.0.0.3:8001" name="xapp3"/>
</group>
</nodes>
</lbsconfig>
""")
    ok = subprocess.run(python_cmd("lbserver", "--check-config", "-c", str(seed)), capture_output=True,
                        text=True, env={"PYTHONPATH": str(ROOT)})
    assert ok.returncode == 0, ok.stderr
    shipped = subprocess.run(python_cmd("lbserver", "--check-config", "-c", str(ROOT / "etc/lbsconfig.xml")),
                             capture_output=True, text=True, env={"PYTHONPATH": str(ROOT)})
    assert shipped.returncode == 0, shipped.stderr
    cases = {
        '<node address="http://10.0.0.1:8001" name="xapp1"/>\n<node address="http://10.0.0.2:8001" name="xapp1"/>':
            (6, "duplicate node name 'xapp1'"),
        '<node address="ftp://10.0.0.1" name="xapp1"/>': (5, "expected a URL"),
    }
    for body, (line, msg) in cases.items():
        bad = tmp_path / "bad.xml"
        bad.write_text(f'<?xml version="1.0"?>\n<lbsconfig>\n<nodes>\n<group name="P">\n{body}\n</group>\n'
                       '</nodes>\n</lbsconfig>\n')
        res = subprocess.run(python_cmd("lbserver", "--check-config", "-c", str(bad)), capture_output=True,
                             text=True, env={"PYTHONPATH": str(ROOT)})
        assert res.returncode == 1
        assert res.stderr.startswith(f"{bad}:{line}: ") and msg in res.stderr, res.stderr
    node = '<node name="n" address="http://10.0.0.1:8001"/>'
    for text, expected in (
        (f'<lbsconfig>\n<nodes>\n<group name="A" default="true">{node}</group>\n'
         f'<group name="B" default="true">{node}</group>\n</nodes>\n</lbsconfig>', ":4: two default groups"),
        (f'<lbsconfig>\n<nodes><group name="A">{node}</group></nodes>\n<rules>\n'
         '<variable name="LOADAVG" weight="0" capacity="1"/>\n</rules></lbsconfig>',
         ":4: <variable> attribute weight='0': must be greater than 0"),
        ('<lbsconfig>\n<nodes><group name="A"></group></nodes>\n</lbsconfig>', ":2: group 'A' has no <node>"),
    ):
        bad = tmp_path / "bad2.xml"
        bad.write_text(text)
        res = subprocess.run(python_cmd("lbserver", "--check-config", "-c", str(bad)), capture_output=True,
                             text=True, env={"PYTHONPATH": str(ROOT)})
        assert res.returncode == 1
        assert res.stderr.startswith(f"{bad}{expected}"), res.stderr
    # A rule may name any variable; one that is not a built-in is only a warning, with its line.
    typo = tmp_path / "typo.xml"
    typo.write_text(f'<lbsconfig>\n<nodes><group name="A">{node}</group></nodes>\n<rules>\n'
                    '<variable name="LOADAVERAGE" weight="1" capacity="1"/>\n</rules></lbsconfig>')
    res = subprocess.run(python_cmd("lbserver", "--check-config", "-c", str(typo)), capture_output=True, text=True,
                         env={"PYTHONPATH": str(ROOT)})
    assert res.returncode == 0, res.stderr
    assert f"{typo}:4: warning: rule variable LOADAVERAGE is not a built-in" in res.stderr


@pytest.mark.daemon
def test_once_prints_table(procs, tmp_path):
    a = start_agent(procs, tmp_path, "xapp1", "127.0.0.2", 20)
    bal_cfg = tmp_path / "once.xml"
    from tests.support.cluster import server_xml

    bal_cfg.write_text(server_xml(free_port(), free_port(), {"PROD": [("xapp1", a.url),
                                                                     ("gone", "http://127.0.0.7:9")]}, tmp_path))
    res = subprocess.run(python_cmd("lbserver", "--once", "-c", str(bal_cfg)), capture_output=True, text=True,
                         timeout=30, env={"PYTHONPATH": str(ROOT)})
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].split()[:3] == ["NODE", "HEALTH", "WEIGHT"]
    row = {ln.split()[0]: ln.split() for ln in lines[1:] if ln.strip()}
    assert row["xapp1"][1] == "up" and float(row["xapp1"][2]) > 0
    assert row["gone"][1] == "down" and "refused" in " ".join(row["gone"])


@pytest.mark.daemon
def test_reload_moves_the_terminal_port_even_onto_an_overlapping_address(three):
    agents, bal = three
    text = bal.config.read_text()
    # the same address spelled as IPv4-mapped IPv6: binding it while ours listens is EADDRINUSE
    bal.config.write_text(text.replace(f'listen="127.0.0.1:{bal.port}"', f'listen="[::ffff:127.0.0.1]:{bal.port}"'))
    bal.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: b"which is listening: closing it" in _read_available(bal.proc), 10, what="overlap handled")
    wait_until(lambda: b"configuration reloaded" in _read_available(bal.proc), 10, what="reload done")
    assert bal.ask() in {"xapp1", "xapp2", "xapp3"}
    # and a plain move to another port
    new_port = free_port()
    bal.config.write_text(text.replace(f'listen="127.0.0.1:{bal.port}"', f'listen="127.0.0.1:{new_port}"'))
    bal.proc.send_signal(signal.SIGHUP)
    wait_for_port("127.0.0.1", new_port, timeout=10)
    bal.port = new_port
    assert bal.ask() in {"xapp1", "xapp2", "xapp3"}
