"""The login-storm simulator and the reference scenario."""

from __future__ import annotations

import io
import statistics
from pathlib import Path

import pytest

from common.xmlconfig import ConfigError
from lbserver.tools.simulate import ALGORITHMS, load_scenario, main_simulate, parse_scenario, run_scenario

REFERENCE = Path(__file__).resolve().parent.parent / "bench" / "storm.scenario"

SMALL = """
[storm]
logins = 40
duration = 10
poll-interval = 5

[per-session]
NBSESSIONS = 1
LOADAVG = 0.1

[server a]
NBPROC = 1
LOADAVG = 0.5
NBSESSIONS = 5
MEMUSEDPCT = 20

[server b]
NBPROC = 3
LOADAVG = 0
NBSESSIONS = 0
MEMUSEDPCT = 20
per-session.LOADAVG = 0.05
"""


def test_reference_scenario_shipped_beats_both_references():
    scenario = load_scenario(str(REFERENCE))
    assert [s.variables["NBPROC"] for s in scenario.servers] == [2, 4, 4, 8, 16]
    assert scenario.logins == 300 and scenario.duration == 60 and scenario.poll_interval == 30
    mean = {a: statistics.mean(run_scenario(None, scenario, a, seed).worst for seed in range(1, 11))
            for a in ("compensated", "stale", "round-robin")}
    assert mean["compensated"] < mean["stale"]
    assert mean["compensated"] < mean["round-robin"]
    assert mean["compensated"] <= 1.10


def test_run_is_deterministic_and_conserves_logins():
    scenario = parse_scenario(SMALL)
    for alg in ALGORITHMS:
        r1, r2 = run_scenario(None, scenario, alg, 7), run_scenario(None, scenario, alg, 7)
        assert r1.final == r2.final and r1.picks == r2.picks
        assert sum(r1.picks.values()) == 40
        # per-server per-session override: b adds 0.05 a login, a adds 0.1
        assert r1.final["a"] == pytest.approx(0.5 + 0.1 * r1.picks["a"])
        assert r1.final["b"] == pytest.approx(0.05 * r1.picks["b"])
        assert sum(r1.ideal.values()) == pytest.approx(sum(r1.final.values()))
        assert r1.worst >= 1.0


def test_round_robin_alternates():
    r = run_scenario(None, parse_scenario(SMALL), "round-robin", 1)
    assert r.picks == {"a": 20, "b": 20}


def test_default_rules_used_without_scenario_rules():
    # DEFAULT_RULES weigh NBSESSIONS per cpu with per-session 1: b (3 cpus, empty) gets most
    r = run_scenario(None, parse_scenario(SMALL), "compensated", 1)
    assert r.picks["b"] > r.picks["a"]


def test_main_simulate_prints_table(tmp_path):
    path = tmp_path / "s.scenario"
    path.write_text(SMALL)
    out = io.StringIO()
    assert main_simulate(None, str(path), 3, out) == 0
    text = out.getvalue()
    assert "40 logins in 10 s" in text and "compensated (shipped)" in text and "round-robin" in text
    assert text.count("\n") >= 5


def test_unhealthy_servers_are_reported(tmp_path):
    path = tmp_path / "s.scenario"
    path.write_text(SMALL.replace("MEMUSEDPCT = 20\nper-session", "per-session"))
    out = io.StringIO()
    assert main_simulate(None, str(path), 3, out) == 0
    assert "note: b is unhealthy from the start: variable MEMUSEDPCT missing from agent reply" in out.getvalue()
    r = run_scenario(None, parse_scenario(SMALL.replace("MEMUSEDPCT = 20\nper-session", "per-session")), "stale", 1)
    assert r.picks == {"a": 40, "b": 0} and r.excluded == {"b": ("variable MEMUSEDPCT missing from agent reply",)}


def test_main_simulate_uses_config_rules(tmp_path):
    cfg = tmp_path / "lbsconfig.xml"
    cfg.write_text("""<?xml version="1.0"?>
<lbsconfig>
  <nodes><group default="true" name="PROD"><node address="http://127.0.0.1:8001" name="x1"/></group></nodes>
  <rules><variable name="NBSESSIONS" weight="20" capacity="10" per-cpu="true" per-session="1"/></rules>
</lbsconfig>
""")
    scen = tmp_path / "s.scenario"
    scen.write_text(SMALL.replace("MEMUSEDPCT = 20\n", ""))   # the config's rules need no memory figure
    out = io.StringIO()
    assert main_simulate(str(cfg), str(scen), 3, out) == 0
    assert "unhealthy" not in out.getvalue() and "compensated (shipped)" in out.getvalue()
    out = io.StringIO()
    assert main_simulate(None, str(scen), 3, out) == 0            # the defaults do need it
    assert "unhealthy from the start" in out.getvalue()


def test_main_simulate_bad_file(tmp_path, capsys):
    path = tmp_path / "bad.scenario"
    path.write_text("[storm]\nlogins = 10\nduration = 5\npoll-interval = x\n[server a]\nLOADAVG = 1\n")
    assert main_simulate(None, str(path), 1, io.StringIO()) == 2
    assert f"{path}:4: [storm] poll-interval='x': expected a number" in capsys.readouterr().err


@pytest.mark.parametrize("text, message", [
    ("[server a]\nLOADAVG=1\n", "missing [storm] section"),
    ("[storm]\nlogins=1\nduration=1\npoll-interval=1\n", "no [server NAME] section"),
    ("[storm]\nlogins=1\nduration=1\npoll-interval=1\n[server a]\nNBPROC=1\n", ":5: [server a] needs a numeric LOADAVG"),
    ("[storm]\nlogins=1\nduration=1\npoll-interval=1\n[bogus]\n", ":5: unknown section [bogus]"),
    ("[storm]\nlogins=1.5\nduration=1\npoll-interval=1\n", ":2: [storm] logins: expected a whole number"),
    ("[storm]\nlogins=1\nduration=1\npoll-interval=1\n[server a]\nLOADAVG=1\n[rule LOADAVG]\nweight=1\n",
     ":7: [rule LOADAVG] needs capacity"),
])
def test_scenario_errors_name_file_and_line(text, message):
    with pytest.raises(ConfigError) as exc:
        parse_scenario(text, "x.scenario")
    assert message in str(exc.value) and str(exc.value).startswith("x.scenario:")


def test_unknown_algorithm():
    with pytest.raises(ValueError):
        run_scenario(None, parse_scenario(SMALL), "fastest", 1)
