"""Secrets and hostile input: secret files, shared-secret settings, and what never leaks.

Config and helper checks run in-process; the leak and hostile-XML checks run
real lbagent / lbserver processes on loopback with real clients, and grep
everything they showed (logs, /status, /metrics, error messages) for the secrets.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import signal
import socket
import subprocess
import urllib.request
import xmlrpc.client
from pathlib import Path

import pytest

from common.secretfile import SecretFileError, permission_problem, read_secret_file
from common.xmlconfig import ConfigError
from tests.support import ROOT, free_port, python_cmd, wait_for_port, wait_until
from lbagent import config as agentconfig
from lbagent.rpc import basic_auth_ok
from lbserver import config as serverconfig
from lbserver.core.poller import build_request, parse_reply, PollError
from tests.support.cluster import Balancer

AGENT_SECRET = "agent-Secret-7f3a9c"
TOKEN = "admin-Token-51d2e8"
TSIG_SECRET = base64.b64encode(b"tsig-secret-bytes-0123456789abcd").decode()


def secret_file(path: Path, value: str, mode: int = 0o600) -> Path:
    path.write_text(value + "\n")
    path.chmod(mode)
    return path


def run_check(module: str, path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(python_cmd(module, "--check-config", "-c", str(path)), capture_output=True, text=True,
                          timeout=30, env={"PYTHONPATH": str(ROOT)})


# -- secret files ---------------------------------------------------------------

@pytest.mark.unit
def test_read_secret_file(tmp_path):
    f = tmp_path / "s"
    f.write_text(f"  {AGENT_SECRET}  \nsecond line ignored\n")
    assert read_secret_file(str(f)) == AGENT_SECRET
    for content, words in ((b"\n\n", "empty first line"), (b"", "empty first line"),
                           (b"\xff\xfe" + AGENT_SECRET.encode(), "not UTF-8"),
                           (AGENT_SECRET.encode() * 5000, "larger than")):
        f.write_bytes(content)
        with pytest.raises(SecretFileError) as info:
            read_secret_file(str(f))
        assert str(info.value).startswith(f"{f}: ") and words in str(info.value)
        assert AGENT_SECRET not in str(info.value)
    with pytest.raises(SecretFileError, match="cannot read: No such file"):
        read_secret_file(str(tmp_path / "missing"))


@pytest.mark.unit
def test_permission_problem(tmp_path):
    f = secret_file(tmp_path / "s", AGENT_SECRET)
    assert permission_problem(str(f)) is None
    for mode in (0o604, 0o644, 0o666):
        f.chmod(mode)
        problem = permission_problem(str(f))
        assert f"is accessible by others (mode {mode:04o})" in problem and f"chmod 600 {f}" in problem
    # Readable by the daemon's own group (root:mille-xterm 0640 for an unprivileged daemon): fine.
    f.chmod(0o640)
    assert os.stat(f).st_gid in (os.getegid(), *os.getgroups())
    assert permission_problem(str(f)) is None
    if os.geteuid() == 0:  # only root can give a file a group it is not in
        foreign = next(g for g in (65534, 65533, 4242) if g != os.getegid() and g not in os.getgroups())
        os.chown(f, -1, foreign)
        assert "is accessible by members of group" in permission_problem(str(f))
    assert permission_problem(str(tmp_path / "missing")) is None


@pytest.mark.parametrize("header, ok", [
    (None, False),
    ("", False),
    ("Basic " + base64.b64encode(f"lbserver:{AGENT_SECRET}".encode()).decode(), True),
    ("basic " + base64.b64encode(f"anyone:{AGENT_SECRET}".encode()).decode(), True),
    ("Basic " + base64.b64encode(f":{AGENT_SECRET}".encode()).decode(), True),
    ("Basic " + base64.b64encode(f"lbserver:{AGENT_SECRET}x".encode()).decode(), False),
    ("Basic " + base64.b64encode(AGENT_SECRET.encode()).decode(), False),   # no user:password form
    ("Basic not*base64", False),
    (f"Bearer {AGENT_SECRET}", False),
])
@pytest.mark.unit
def test_basic_auth_ok(header, ok):
    assert basic_auth_ok(header, AGENT_SECRET) is ok


# -- agent configuration ---------------------------------------------------------

def agent_xml(tmp_path: Path, attrs: str) -> Path:
    path = tmp_path / "lbaconfig.xml"
    path.write_text(f'<?xml version="1.0"?>\n<lbaconfig>\n  <agent listen="127.0.0.1:8001" {attrs}/>\n</lbaconfig>\n')
    return path


@pytest.mark.unit
def test_agent_secret_file_config(tmp_path, caplog):
    secret_file(tmp_path / "agent.secret", AGENT_SECRET)
    cfg = agentconfig.load(str(agent_xml(tmp_path, 'secret-file="agent.secret"')))  # relative to the config
    assert cfg.secret == AGENT_SECRET and cfg.secret_file == str(tmp_path / "agent.secret")
    assert AGENT_SECRET not in repr(cfg)

    # Readable by others: loaded, with a warning naming file and line, not the secret.
    (tmp_path / "agent.secret").chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="lbagent.config"):
        assert agentconfig.load(str(agent_xml(tmp_path, 'secret-file="agent.secret"'))).secret == AGENT_SECRET
    assert f"lbaconfig.xml:3: <agent> secret-file: {tmp_path}/agent.secret is accessible" in caplog.text
    assert "chmod 600" in caplog.text and AGENT_SECRET not in caplog.text

    path = agent_xml(tmp_path, 'secret-file="/nonexistent/agent.secret"')
    with pytest.raises(ConfigError) as info:
        agentconfig.load(str(path))
    assert str(info.value) == f"{path}:3: <agent> secret-file: /nonexistent/agent.secret: cannot read: " \
                               "No such file or directory"
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match=r":3: <agent> secret-file: .*empty first line"):
        agentconfig.load(str(agent_xml(tmp_path, 'secret-file="empty"')))


@pytest.mark.daemon
def test_agent_tls_config_errors(tmp_path):
    from tests.support.tls import make_ca
    ca = make_ca(tmp_path / "pki")
    leaf = ca.issue(tmp_path / "pki", "agent", ips=("127.0.0.1",))
    other = ca.issue(tmp_path / "pki", "other", ips=("127.0.0.1",))
    cfg = agentconfig.load(str(agent_xml(tmp_path, f'tls-cert="{leaf.cert}" tls-key="{leaf.key}"')))
    assert cfg.ssl_context is not None and cfg.tls_cert == str(leaf.cert)
    both = tmp_path / "both.pem"
    both.write_bytes(leaf.cert.read_bytes() + leaf.key.read_bytes())
    both.chmod(0o600)
    assert agentconfig.load(str(agent_xml(tmp_path, f'tls-cert="{both}"'))).ssl_context is not None
    for attrs, words in (
        (f'tls-key="{leaf.key}"', "tls-key needs tls-cert"),
        (f'tls-cert="{leaf.cert}" tls-key="{other.key}"', "does not belong to the certificate"),
        (f'tls-cert="{tmp_path}/missing.pem"', "No such file"),
        (f'tls-cert="{leaf.key}" tls-key="{leaf.key}"', "expected PEM"),
    ):
        with pytest.raises(ConfigError) as info:
            agentconfig.load(str(agent_xml(tmp_path, attrs)))
        assert ":3: <agent> " in str(info.value) and words in str(info.value), str(info.value)


# -- balancer configuration --------------------------------------------------------

def server_xml_text(tmp_path: Path, poll_attrs: str, nodes: str) -> Path:
    path = tmp_path / "lbsconfig.xml"
    path.write_text(f'<?xml version="1.0"?>\n<lbsconfig>\n  <poll {poll_attrs}/>\n  <nodes>\n'
                    f'    <group name="PROD">\n{nodes}\n    </group>\n  </nodes>\n</lbsconfig>\n')
    return path


@pytest.mark.unit
def test_balancer_secret_defaults_and_overrides(tmp_path, caplog):
    secret_file(tmp_path / "all.secret", AGENT_SECRET)
    secret_file(tmp_path / "one.secret", "another-secret", mode=0o604)
    with caplog.at_level(logging.WARNING, logger="lbserver.config.loader"):
        cfg = serverconfig.load(str(server_xml_text(
            tmp_path, 'secret-file="all.secret"',
            '<node name="a" address="http://10.0.0.1:8001"/>\n'
            '<node name="b" address="http://10.0.0.2:8001" secret-file="one.secret"/>\n'
            '<node name="c" address="http://10.0.0.3:8001"/>')))
    assert cfg.poll.secret_file == str(tmp_path / "all.secret")
    assert cfg.nodes["a"].secret == AGENT_SECRET and cfg.nodes["c"].secret == AGENT_SECRET
    assert cfg.nodes["b"].secret == "another-secret" and cfg.nodes["b"].secret_file == str(tmp_path / "one.secret")
    assert AGENT_SECRET not in repr(cfg) and "another-secret" not in repr(cfg)
    assert caplog.text.count("is accessible by others") == 1  # once per file, not per node
    assert "lbsconfig.xml:7: <node> secret-file" in caplog.text and "another-secret" not in caplog.text

    # The request carries the secret as HTTP Basic password, built once per node.
    req = build_request(cfg.nodes["a"])
    token = base64.b64encode(f"lbserver:{AGENT_SECRET}".encode()).decode()
    assert f"\r\nAuthorization: Basic {token}\r\n".encode() in req
    cfg2 = serverconfig.load(str(server_xml_text(tmp_path, 'interval="5"',
                                                 '<node name="a" address="http://10.0.0.1:8001"/>')))
    assert b"Authorization" not in build_request(cfg2.nodes["a"])


@pytest.mark.daemon
def test_balancer_security_config_errors(tmp_path):
    from tests.support.tls import make_ca
    ca = make_ca(tmp_path / "pki")
    secret_file(tmp_path / "ok.secret", AGENT_SECRET)
    cfg = serverconfig.load(str(server_xml_text(
        tmp_path, f'tls-ca="{ca.cert}"',
        '<node name="a" address="https://10.0.0.1:8001"/>\n<node name="b" address="http://10.0.0.2:8001"/>')))
    assert cfg.nodes["a"].tls and cfg.nodes["a"].ssl_context is not None and cfg.nodes["a"].tls_ca == str(ca.cert)
    assert not cfg.nodes["b"].tls and cfg.nodes["b"].ssl_context is None
    # No tls-ca: the system's CAs.
    cfg = serverconfig.load(str(server_xml_text(tmp_path, 'interval="5"',
                                                '<node name="a" address="https://10.0.0.1:8001"/>')))
    assert cfg.nodes["a"].ssl_context is not None and cfg.nodes["a"].tls_ca is None
    (tmp_path / "notpem").write_text("not a certificate\n")
    for poll, nodes, expected in (
        ('secret-file="/nonexistent/s"', '<node name="a" address="http://10.0.0.1:8001"/>',
         ":3: <poll> secret-file: /nonexistent/s: cannot read"),
        ('interval="5"', '<node name="a" address="http://10.0.0.1:8001" secret-file="/nonexistent/s"/>',
         ":6: <node> secret-file: /nonexistent/s: cannot read"),
        ('interval="5"', f'<node name="a" address="http://10.0.0.1:8001" tls-ca="{ca.cert}"/>',
         ":6: <node> tls-ca applies to https:// addresses only"),
        (f'tls-ca="{tmp_path}/notpem"', '<node name="a" address="http://10.0.0.1:8001"/>',
         ":3: <poll> tls-ca: cannot load CA certificates from"),
        ('interval="5"', f'<node name="a" address="https://10.0.0.1:8001" tls-ca="{tmp_path}/missing"/>',
         ":6: <node> tls-ca: cannot load CA certificates from"),
    ):
        path = server_xml_text(tmp_path, poll, nodes)
        res = run_check("lbserver", path)
        assert res.returncode == 1 and res.stderr.startswith(f"{path}{expected}"), res.stderr
    # A node in two groups must use the same credentials in both.
    path = tmp_path / "two.xml"
    path.write_text(f'<lbsconfig><nodes>\n<group name="A"><node name="n" address="http://10.0.0.1:8001"/></group>\n'
                    f'<group name="B"><node name="n" address="http://10.0.0.1:8001" secret-file="{tmp_path}/ok.secret"/>'
                    '</group>\n</nodes></lbsconfig>\n')
    with pytest.raises(ConfigError, match=":3: node 'n' is defined differently"):
        serverconfig.load(str(path))


@pytest.mark.daemon
def test_check_config_warns_on_loose_secret_files_without_showing_them(tmp_path):
    secret_file(tmp_path / "agent.secret", AGENT_SECRET, mode=0o644)
    res = run_check("lbagent", agent_xml(tmp_path, 'secret-file="agent.secret"'))
    assert res.returncode == 0 and "configuration OK" in res.stdout
    assert "agent.secret is accessible by others (mode 0644)" in res.stderr
    path = server_xml_text(tmp_path, 'secret-file="agent.secret"', '<node name="a" address="http://10.0.0.1:8001"/>')
    res = run_check("lbserver", path)
    assert res.returncode == 0 and "agent.secret is accessible by others" in res.stderr
    assert AGENT_SECRET not in res.stdout + res.stderr


# -- hostile XML on both sides ------------------------------------------------------

XXE = (b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
       b"<methodResponse><params><param><value><string>&e;</string></value></param></params></methodResponse>")
QUADRATIC = (b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "' + b"a" * 50000 + b'">]>'
             b"<methodResponse><params><param><value><string>" + b"&a;" * 20000
             + b"</string></value></param></params></methodResponse>")


@pytest.mark.unit
@pytest.mark.parametrize("body, words", [(XXE, "EntitiesForbidden"), (QUADRATIC, "EntitiesForbidden")])
def test_balancer_parser_refuses_external_and_quadratic_entities(body, words):
    reply = b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    with pytest.raises(PollError, match=words) as info:
        parse_reply(reply, 10 * 1024 * 1024)
    assert "root:" not in str(info.value)


def raw_http(host: str, port: int, data: bytes) -> bytes:
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(data)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.daemon
def test_agent_refuses_external_entities_and_unauthenticated_bodies(procs, tmp_path):
    secret_file(tmp_path / "agent.secret", AGENT_SECRET)
    host, port = "127.0.0.51", free_port("127.0.0.51")
    cfg = tmp_path / "lbaconfig.xml"
    cfg.write_text(f'<lbaconfig><agent listen="{host}:{port}" sample-interval="0.5" max-request-bytes="4096" '
                   'secret-file="agent.secret"/></lbaconfig>')
    log = tmp_path / "agent.log"
    proc = procs.start(python_cmd("lbagent", "-f", "-c", str(cfg)), stderr=open(log, "w"),
                       stdout=subprocess.DEVNULL)
    wait_for_port(host, port, proc=proc)
    auth = "Authorization: Basic " + base64.b64encode(f"lbserver:{AGENT_SECRET}".encode()).decode() + "\r\n"
    xxe = (b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
           b"<methodCall><methodName>&e;</methodName></methodCall>")
    answer = raw_http(host, port, f"POST /RPC2 HTTP/1.0\r\n{auth}Content-Length: {len(xxe)}\r\n\r\n".encode() + xxe)
    assert answer.startswith(b"HTTP/1.0 200 ") and b"root:" not in answer
    with pytest.raises(xmlrpc.client.Fault, match="DTDForbidden"):
        xmlrpc.client.loads(answer.split(b"\r\n\r\n", 1)[1])
    # Without the secret even a huge announced body is refused before anything is read...
    answer = raw_http(host, port, b"POST /RPC2 HTTP/1.0\r\nContent-Length: 100000000\r\n\r\n")
    assert answer.startswith(b"HTTP/1.0 401 ") and b'WWW-Authenticate: Basic realm="lbagent"' in answer
    # ...and with it, the size limit still holds.
    answer = raw_http(host, port, f"POST /RPC2 HTTP/1.0\r\n{auth}Content-Length: 100000000\r\n\r\n".encode())
    assert answer.startswith(b"HTTP/1.0 413 ")
    # GET is refused the same way: nothing is said without the secret.
    assert raw_http(host, port, b"GET / HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.0 401 ")
    proxy = xmlrpc.client.ServerProxy(f"http://lbserver:{AGENT_SECRET}@{host}:{port}/RPC2")
    assert proxy.ping() is True
    procs.stop_all()
    text = log.read_text()
    assert f"refused query from 127.0.0.1: no credentials (secret-file of {cfg}" in text
    assert text.count("refused query from 127.0.0.1") == 1  # at most once a minute
    assert AGENT_SECRET not in text


@pytest.mark.daemon
def test_balancer_reports_bomb_huge_and_xxe_agents_clearly(procs, tmp_path):
    """Extends test_lbserver's bad-agent test with the exact error each hostile agent earns."""
    from tests.support.cluster import scripted_agent, start_agent, start_balancer
    good = start_agent(procs, tmp_path, "good", "127.0.0.52", 0)
    members = [("good", good.url)]
    for i, mode in enumerate(("bomb", "huge")):
        ip = f"127.0.2.{i + 1}"
        members.append((mode, scripted_agent(procs, ip, "--mode", mode).address))
    bal = start_balancer(procs, tmp_path, {"PROD": members}, poll='interval="1" timeout="0.8" rise="1" fall="1"')
    status = wait_until(lambda: (s := bal.status())["last_poll"] and s, 10, what="a poll")
    assert status["nodes"]["good"]["health"] == "up"
    bomb, huge = status["nodes"]["bomb"], status["nodes"]["huge"]
    assert bomb["health"] == "down" and bomb["error"].startswith("malformed XML-RPC reply: EntitiesForbidden")
    assert huge["health"] == "down" and huge["error"] == "reply larger than 1048576 bytes"
    assert {bal.ask() for _ in range(20)} == {"good"}
    assert bal.proc.poll() is None


# -- secrets never leak ---------------------------------------------------------------

@pytest.mark.daemon
def test_secrets_never_appear_in_logs_status_or_errors(procs, tmp_path):
    """Agent secret, admin token and TSIG key in one running balancer: grep everything it shows."""
    from tests.support.cluster import start_agent
    secret_file(tmp_path / "agent.secret", AGENT_SECRET)
    secret_file(tmp_path / "wrong.secret", "wrong-" + AGENT_SECRET, mode=0o644)  # warned about
    secret_file(tmp_path / "admin.token", TOKEN, mode=0o644)
    key = tmp_path / "dns.key"
    key.write_text(f'key "lbkey" {{\n\talgorithm hmac-sha256;\n\tsecret "{TSIG_SECRET}";\n}};\n')
    key.chmod(0o644)
    agent = start_agent(procs, tmp_path, "xapp1", "127.0.0.53", 10)
    agent.config.write_text(agent.config.read_text().replace(
        'sample-interval="0.2"', f'sample-interval="0.2" secret-file="{tmp_path}/agent.secret"'))
    agent.proc.send_signal(signal.SIGHUP)  # now the secret is required
    proxy = xmlrpc.client.ServerProxy(f"http://{agent.ip}:{agent.port}/RPC2")
    wait_until(lambda: _status_of(proxy.ping) == 401, 10, what="agent requires the secret")

    dead_dns = free_port()
    bal = Balancer(tmp_path / "lbsconfig.xml", free_port(), free_port())
    bal.config.write_text(f"""<?xml version="1.0"?>
<lbsconfig>
  <lbservice listen="127.0.0.1:{bal.port}" returns="$NAME"/>
  <mgmtservice listen="127.0.0.1:{bal.mgmt_port}" token-file="{tmp_path}/admin.token"
               state-file="{tmp_path}/lbserver.state"/>
  <poll interval="0.5" timeout="0.4" rise="1" fall="1" secret-file="{tmp_path}/agent.secret"/>
  <nodes>
    <group name="PROD" default="true">
      <node name="xapp1" address="{agent.url}"/>
      <node name="wrong" address="{agent.url}" secret-file="{tmp_path}/wrong.secret"/>
    </group>
  </nodes>
  <dns server="127.0.0.1" port="{dead_dns}" zone="lbtest.example" timeout="0.5" key-file="{key}">
    <alias name="wms" group="PROD" best-hosts="1"/>
  </dns>
</lbsconfig>
""")
    log = tmp_path / "lbserver.log"
    bal.proc = procs.start(python_cmd("lbserver", "-f", "-v", "-c", str(bal.config)), stderr=open(log, "w"))
    wait_for_port("127.0.0.1", bal.mgmt_port, timeout=20, proc=bal.proc)
    status = wait_until(lambda: (s := bal.status())["nodes"]["wrong"]["error"] and s["aliases"]
                        and s["aliases"][0].get("error") and s, 20, what="failed poll and DNS update reported")
    assert bal.status()["nodes"]["xapp1"]["health"] == "up"
    assert status["nodes"]["wrong"]["error"].startswith("agent answered HTTP 401 Unauthorized")
    shown = [json.dumps(bal.status())]
    with urllib.request.urlopen(bal.mgmt_url + "/metrics", timeout=5) as resp:
        shown.append(resp.read().decode())
    ctl = subprocess.run(python_cmd("lbserver.mgmt.ctl", "--url", bal.mgmt_url, "status"), capture_output=True,
                         text=True, timeout=30, env={"PYTHONPATH": str(ROOT)})
    shown += [ctl.stdout, ctl.stderr]
    # An admin action (reads the token file) and a reload (reads every secret file again).
    req = urllib.request.Request(bal.mgmt_url + "/reload", method="POST")
    shown.append(urllib.request.urlopen(req, timeout=5).read().decode())
    wait_until(lambda: "configuration reloaded" in log.read_text(), 10, what="reload done")
    procs.stop_all()
    shown += [log.read_text(), agent.proc.stderr.read()]
    everything = "\n".join(shown)
    assert "wrong.secret is accessible by others" in everything   # warned...
    assert "admin.token is accessible by others" in everything
    assert "dns.key is accessible by others" in everything
    for secret in (AGENT_SECRET, TOKEN, TSIG_SECRET, base64.b64encode(f"lbserver:{AGENT_SECRET}".encode()).decode()):
        assert secret not in everything                                       # ...never shown


def _status_of(call) -> int:
    try:
        call()
        return 200
    except xmlrpc.client.ProtocolError as exc:
        return exc.errcode


@pytest.mark.unit
def test_tsig_and_token_errors_do_not_show_the_secret(tmp_path, caplog):
    from lbserver.config.tsigkey import KeyFileError, load_key
    from lbserver.mgmt.auth import read_token
    key = tmp_path / "dns.key"
    for text in (f'key "lbkey" {{ algorithm hmac-sha999; secret "{TSIG_SECRET}"; }};',
                 f'key "lbkey" {{ algorithm hmac-sha256; secret "{TSIG_SECRET}!"; }};',
                 f"{TSIG_SECRET}\n{TSIG_SECRET}\n",
                 f"bad name!:{TSIG_SECRET}\n"):
        key.write_text(text)
        with pytest.raises(KeyFileError) as info:
            load_key(str(key))
        assert TSIG_SECRET not in str(info.value) and TSIG_SECRET not in repr(info.value)
    key.write_text(f'key "lbkey" {{ algorithm hmac-sha256; secret "{TSIG_SECRET}"; }};')
    assert TSIG_SECRET not in repr(load_key(str(key)))
    tok = secret_file(tmp_path / "token", TOKEN, mode=0o666)
    with caplog.at_level(logging.DEBUG):
        assert read_token(str(tok)) == TOKEN
        tok.write_bytes(b"\xff" + TOKEN.encode())
        assert read_token(str(tok)) is None
    assert "chmod 600" in caplog.text and "not UTF-8" in caplog.text and TOKEN not in caplog.text
