"""The X2Go broker with real parts: lbagents reading x2goserver's own database, Python X2Go, PyHoca-CLI, x2gobroker.

A farm of two real lbagents on loopback, n1 loaded (less weighted) and
holding nobody's suspended X2Go session in a real x2goserver database, n2
idle; a real lbserver with ``<x2gobroker>``. The clients are Debian's own
(python3-x2go's HTTP broker client, pyhoca-cli), and x2gobroker 0.0.4 is
asked the same questions to compare its replies field by field.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from tests.support import Procs, require_program, wait_until
from tests.support.cluster import start_agent, start_balancer
from tests.support.x2go import (SYSTEM_PYTHON, plain_ini, python_x2go, start_x2gobroker, x2go_database,
                                x2gobroker_over_ssh)
from tests.support.processes import free_port
from tests.support.x2go import broker_post as post

pytestmark = pytest.mark.system

NOBODY = 65534
SID = "nobody-50-1700000000_stDxfce_dp24"
PROFILE = "Lab desktop"
HOST = socket.gethostname()


class Farm:
    """Two lbagents (n1 loaded, with nobody's suspended session; n2 idle) and an lbserver with the broker."""

    def __init__(self, procs: Procs, tmp: Path) -> None:
        assert os.geteuid() == 0, "x2goserver's database is made in a mount namespace, as root"
        db = x2go_database(tmp / "x2go", [(NOBODY, SID, HOST, "S")])  # the agent reads its own host's
        self.n1 = start_agent(procs, tmp, "n1", "127.0.0.2", load=60,
                              sessions=f'<sessions><x2go db="{db}"/></sessions>')
        self.n2 = start_agent(procs, tmp, "n2", "127.0.0.3", load=0,
                              sessions=f'<sessions><utmp file="{tmp}/no-utmp"/></sessions>')
        self.port = free_port()
        broker = (f'<x2gobroker listen="127.0.0.1:{self.port}">\n'
                  f'    <profile name="{PROFILE}" group="LAB" command="xfce"/>\n  </x2gobroker>\n'
                  f'  <x2go-loadchecker socket="{tmp}/run/x2gobroker-loadchecker.socket"/>')
        self.loadchecker = tmp / "run" / "x2gobroker-loadchecker.socket"
        self.bal = start_balancer(procs, tmp, {"LAB": [("n1", self.n1.url), ("n2", self.n2.url)]}, extra=broker)
        self.bal.wait_health("n1", "up")
        self.bal.wait_health("n2", "up")
        self.url = f"http://127.0.0.1:{self.port}"
        wait_until(lambda: "SESSION_INFO:" in self.select("nobody"), 20, what="nobody's session reported")

    def select(self, user: str) -> str:
        status, body = post(self.url + "/plain/", task="selectsession", sid=PROFILE, user=user, password="")
        assert status == 200, body
        return body


@pytest.fixture(scope="module")
def farm(tmp_path_factory):
    procs = Procs()
    try:
        yield Farm(procs, tmp_path_factory.mktemp("x2gofarm"))
    finally:
        procs.stop_all()


def test_a_suspended_session_in_x2goservers_database_is_what_selectsession_resumes(farm):
    body = farm.select("nobody")
    lines = body.splitlines()
    assert lines[0] == "Access granted" and lines[1] == "SERVER:n1:22"  # n1 weighs less, but his session is there
    info = lines[2].removeprefix("SESSION_INFO:").split("|")
    assert info[1] == SID and info[3] == HOST and info[4] == "S" and info[11] == "nobody"
    status, text = post(farm.url + "/json/", task="selectsession", **{"profile-id": PROFILE}, user="nobody")
    chosen = json.loads(text)["selected_session"]
    assert chosen["server"] == "n1" and chosen["port"] == "22" and chosen["session_info"].split("|")[1] == SID


def test_python_x2go_lists_the_profiles_and_gets_the_session_to_resume(farm, tmp_path):
    got = python_x2go(f"""
import json
from x2go.backends.profiles.httpbroker import X2GoSessionProfiles
p = X2GoSessionProfiles(broker_url="{farm.url}/json/", broker_username="nobody")
pid = p.profile_ids[0]
sel = p.broker_selectsession(pid)
print(json.dumps({{"ids": p.profile_ids, "name": p.to_profile_name(pid), "server": p._get_server_hostname(pid),
                  "port": p._get_server_port(pid), "session_info": sel.get("session_info", ""),
                  "command": p.get_profile_config(pid, "command")}}))
""", tmp_path)
    assert got["ids"] == [PROFILE] and got["name"] == PROFILE and got["command"] == "XFCE"
    assert got["server"] == "n1" and got["port"] == 22 and got["session_info"].split("|")[1] == SID


def test_pyhoca_cli_lists_the_brokers_profiles(farm, tmp_path):
    require_program("pyhoca-cli")
    out = subprocess.run([SYSTEM_PYTHON, "/usr/bin/pyhoca-cli", "--broker-url", f"http://nobody@127.0.0.1:{farm.port}/json/",
                          "--list-profiles"], capture_output=True, text=True, timeout=60, cwd=tmp_path,
                         env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "DISPLAY": ":99", "LANG": "C.UTF-8"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"Profile ID: {PROFILE}" in out.stdout and "Traceback" not in out.stdout + out.stderr
    assert "'host': ['n1']" in out.stdout  # the server of nobody's session, as x2gobroker lists it
    assert "'username': 'nobody'" in out.stdout


def test_new_sessions_follow_the_weights_and_a_drained_node_gets_none(farm):
    picks = Counter(farm.select(f"user{i}").splitlines()[1] for i in range(120))
    assert set(picks) <= {"SERVER:n1:22", "SERVER:n2:22"}
    assert picks["SERVER:n2:22"] > 2 * picks["SERVER:n1:22"], picks  # weights 100 against 40
    set_drained(farm, "n1", True)
    try:
        drained = Counter(farm.select(f"late{i}").splitlines()[1] for i in range(40))
        assert drained == Counter({"SERVER:n2:22": 40})
        # The drain stops new sessions only: nobody still goes back to his.
        back = farm.select("nobody").splitlines()
        assert back[1] == "SERVER:n1:22" and back[2].startswith("SESSION_INFO:")
    finally:
        set_drained(farm, "n1", False)


def set_drained(farm: Farm, node: str, value: bool) -> None:
    req = urllib.request.Request(f"{farm.bal.mgmt_url}/nodes/{node}/{'drain' if value else 'enable'}", method="POST")
    urllib.request.urlopen(req, timeout=5).close()


def test_x2gobrokers_load_checker_client_reads_the_weights_from_our_socket(farm, tmp_path):
    ask = f"""
import json, x2gobroker.defaults as d
d.X2GOBROKER_LOADCHECKER_SOCKET = "{farm.loadchecker}"
from x2gobroker.loadchecker import check_load
print(json.dumps([check_load("inifile", "LAB"), check_load("inifile", "LAB", "n1"), check_load("inifile", "LAB", "n2"),
                  check_load("inifile", "LAB", "elsewhere")]))
"""
    profile, n1, n2, unknown = python_x2go(ask, tmp_path)
    assert profile == {"n1": n1, "n2": n2} and isinstance(n1, int) and isinstance(n2, int)
    assert n2 > 2 * n1 >= 2  # weights 100 and 40: x2gobroker starts new sessions on n2
    assert unknown == "LOAD-UNAVAILABLE"
    set_drained(farm, "n1", True)
    try:
        profile, n1, n2, _ = wait_until(lambda: (r := python_x2go(ask, tmp_path))[1] != n1 and r, 10,
                                        what="n1's drain in the load checker's answer")
        # x2gobroker leaves out a server whose answer is not a number: a drained node gets no new session.
        assert profile == {"n1": "HOST-UNREACHABLE", "n2": n2} and n1 == "LOAD-UNAVAILABLE"
    finally:
        set_drained(farm, "n1", False)


def test_x2gobroker_in_ssh_agent_mode_places_new_sessions_by_our_weights(farm, procs):
    work = Path(tempfile.mkdtemp(prefix="x2gobroker-", dir="/tmp"))
    try:
        url, port = x2gobroker_over_ssh(procs, work, {"n1": "127.0.0.2", "n2": "127.0.0.3"}, farm.loadchecker,
                                        f"[{PROFILE}]\nname={PROFILE}\nhost=n1,n2\nsshport={{sshport}}\n"
                                        "command=xfce\nuser=BROKER_USER\nbroker-use-load-checker=true\n")

        def choices(count: int) -> Counter:
            return Counter(post(url + "/plain/", task="selectsession", sid=PROFILE, user="nobody")[1]
                           for _ in range(count))

        # x2gobroker starts a new session where factor / (sessions + 1) is greatest: n2, weight 100 against 40.
        assert choices(6) == Counter({f"Access granted\nSERVER:n2:{port}\n": 6}), (work / "x2gobroker.log").read_text()[-3000:]
        set_drained(farm, "n2", True)
        try:
            wait_until(lambda: "HOST-UNREACHABLE" in str(python_x2go(
                f"import json, x2gobroker.defaults as d\nd.X2GOBROKER_LOADCHECKER_SOCKET = '{farm.loadchecker}'\n"
                "from x2gobroker.loadchecker import check_load\nprint(json.dumps(check_load('inifile', 'LAB')))",
                work)), 10, what="n2 drained in the load checker's answer")
            assert choices(6) == Counter({f"Access granted\nSERVER:n1:{port}\n": 6})  # a drained node: none
        finally:
            set_drained(farm, "n2", False)
        log = (work / "x2gobroker.log").read_text()
        assert "load factors" in log or "load_factors" in log or "load checker" in log.lower()
    finally:
        shutil.rmtree(work, ignore_errors=True)


XB_PROFILES = f"""[{PROFILE}]
name={PROFILE}
host=n1,n2
command=xfce
user=BROKER_USER

[Lone]
name=Lone
host=n2
command=xfce
user=BROKER_USER
"""


def test_the_same_requests_get_the_same_replies_from_x2gobroker_and_lbserver(farm, procs, tmp_path):
    # x2gobroker's profiles: the farm's, its servers named as the balancer answers them, and a one-server one.
    xb = start_x2gobroker(procs, tmp_path, XB_PROFILES)
    for frontend, task in (("plain", "listsessions"), ("json", "listprofiles"), ("json", "listsessions")):
        theirs = post(f"{xb}/{frontend}/", task=task, user="alice", password="")
        ours = post(f"{farm.url}/{frontend}/", task=task, user="alice", password="")
        assert theirs[0] == ours[0] == 200
        if frontend == "plain":
            a, b = plain_ini(theirs[1]), plain_ini(ours[1])
            assert theirs[1].split("\n")[0] == ours[1].split("\n")[0] == "Access granted"
        else:
            a, b = json.loads(theirs[1])["profiles"], json.loads(ours[1])["profiles"]
            assert {k: v for k, v in json.loads(theirs[1]).items() if k != "profiles"} == \
                   {k: v for k, v in json.loads(ours[1]).items() if k != "profiles"}
        assert PROFILE in a and b.keys() == {PROFILE}
        assert a[PROFILE] == b[PROFILE], (frontend, a[PROFILE], b[PROFILE])
    # A single-server profile: both send the user to it; and an empty task, the clients' login check.
    lone = post(f"{xb}/plain/", task="selectsession", sid="Lone", user="alice")
    assert lone == (200, "Access granted\nSERVER:n2:22\n")
    ours = post(f"{farm.url}/plain/", task="selectsession", sid=PROFILE, user="alice")[1]
    assert ours.split("\n")[0] == lone[1].split("\n")[0] and ours.split("\n")[1].startswith("SERVER:n")
    theirs = json.loads(post(f"{xb}/json/", task="selectsession", **{"profile-id": "Lone"}, user="alice")[1])
    mine = json.loads(post(f"{farm.url}/json/", task="selectsession", **{"profile-id": PROFILE}, user="alice")[1])
    assert theirs.keys() == mine.keys() and theirs["selected_session"].keys() == mine["selected_session"].keys()
    assert post(f"{xb}/plain/", user="alice") == post(f"{farm.url}/plain/", user="alice") == (200, "Access granted\n")
    assert json.loads(post(f"{xb}/json/", user="alice")[1]) == json.loads(post(f"{farm.url}/json/", user="alice")[1])
