"""auth="pam": the broker checks passwords with the real libpam, over HTTPS, and limits wrong ones per source.

A temporary PAM service (/etc/pam.d/mille-xterm-test-*, removed after)
checks the password with pam_exec, so no system user is created: the
script accepts nobody with one password. The broker serves HTTPS with a
throwaway CA's certificate; a second broker on plain HTTP refuses every
password.
"""

from __future__ import annotations

import http.client
import json
import os
import ssl
import urllib.parse
import uuid
from pathlib import Path

import pytest

from tests.support import free_port, python_cmd, wait_for_port
from tests.support.cluster import start_agent, start_balancer
from tests.support.tls import make_ca
from tests.support.x2go import broker_post as post

pytestmark = pytest.mark.system

RIGHT = "right-pass-7f3a"
WRONG = "wrong-pass-19c2"


@pytest.fixture
def pam_service(tmp_path):
    assert os.geteuid() == 0, "a PAM service is a file in /etc/pam.d"
    script = tmp_path / "check-password"
    script.write_text('#!/bin/sh\npw=$(tr -d "\\000")\n[ "$PAM_USER" = nobody ] && [ "$pw" = "' + RIGHT + '" ]\n')
    script.chmod(0o755)
    name = f"mille-xterm-test-{uuid.uuid4().hex[:8]}"
    path = Path("/etc/pam.d") / name
    path.write_text(f"auth required pam_exec.so expose_authtok quiet {script}\naccount required pam_permit.so\n")
    try:
        yield name
    finally:
        path.unlink()


def test_passwords_checked_with_pam_over_https_wrong_ones_limited_never_logged(procs, tmp_path, pam_service):
    ca = make_ca(tmp_path / "ca")
    leaf = ca.issue(tmp_path, "broker", ips=("127.0.0.1",))
    agent = start_agent(procs, tmp_path, "n1", "127.0.0.2")
    https, plain = free_port(), free_port()
    extra = (f'<x2gobroker listen="127.0.0.1:{https}" auth="pam" pam-service="{pam_service}" max-failures="3" '
             f'tls-cert="{leaf.cert}" tls-key="{leaf.key}">\n'
             '    <allow from="127.0.0.0/8"/>\n    <profile name="Lab desktop" group="LAB"/>\n  </x2gobroker>')
    bal = start_balancer(procs, tmp_path, {"LAB": [("n1", agent.url)]}, extra=extra)
    bal.wait_health("n1", "up")
    ctx = ssl.create_default_context(cafile=str(ca.cert))
    url = f"https://127.0.0.1:{https}/json/"

    ok = post(url, ctx, task="listprofiles", user="nobody", password=RIGHT)
    assert ok[0] == 200 and "Lab desktop" in json.loads(ok[1])["profiles"]
    assert post(url, ctx, task="selectsession", user="nobody", password=RIGHT,
                **{"profile-id": "Lab desktop"})[0] == 200
    assert post(url, ctx, task="listprofiles", user="nobody", password="") == (401, "a user name and a password "
                                                                                 "are required\n")
    assert post(url, ctx, task="listprofiles", user="root", password=RIGHT) == (401, "login failed\n")
    for _ in range(2):
        assert post(url, ctx, task="listprofiles", user="nobody", password=WRONG) == (401, "login failed\n")
    # Three wrong passwords from this address within a minute: even the right one is refused now.
    assert post(url, ctx, task="listprofiles", user="nobody", password=RIGHT)[0] == 429
    # Per source: another address is still answered.
    other = http.client.HTTPSConnection("127.0.0.1", https, context=ctx, timeout=30, source_address=("127.0.0.7", 0))
    other.request("POST", "/json/", urllib.parse.urlencode({"task": "listprofiles", "user": "nobody",
                                                           "password": RIGHT}),
                  {"Content-Type": "application/x-www-form-urlencoded"})
    assert other.getresponse().status == 200
    other.close()
    broker = bal.status()["x2go"]["broker"]
    assert broker["blocked_sources"] == 1 and broker["https"] is True and broker["replies"]["429"] == 1
    bal.proc.terminate()
    bal.proc.wait(timeout=15)
    log = bal.proc.stderr.read() + bal.proc.stdout.read()
    assert "login of 'root' from 127.0.0.1 refused" in log
    assert RIGHT not in log and WRONG not in log

    # The same broker on plain HTTP: a password would cross the network in clear, so none is taken.
    (tmp_path / "lbsconfig.xml").write_text((tmp_path / "lbsconfig.xml").read_text().replace(
        f'listen="127.0.0.1:{https}"', f'listen="127.0.0.1:{plain}"').replace(f'tls-cert="{leaf.cert}" tls-key="{leaf.key}"', ""))
    bal.proc = procs.start(python_cmd("lbserver", "-f", "-c", str(bal.config)))
    wait_for_port("127.0.0.1", plain, timeout=20, proc=bal.proc)
    assert post(f"http://127.0.0.1:{plain}/json/", task="listprofiles", user="nobody", password=RIGHT) == (
        403, "passwords are accepted over HTTPS only\n")
