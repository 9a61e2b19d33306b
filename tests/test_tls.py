"""The agent channel over TLS: real lbagents with certificates from a throwaway CA, a real lbserver."""

from __future__ import annotations

import base64
import http.client
import json
import socket
import ssl
import subprocess
import warnings
import xmlrpc.client
from pathlib import Path

import pytest

from tests.support import free_port, python_cmd, wait_for_port, wait_until
from tests.support.cluster import Balancer
from tests.support.tls import make_ca

pytestmark = pytest.mark.daemon

SECRET = "tls-Agent-Secret-93be"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA with an agent certificate for 127.0.0.61 (also used, wrongly, on 127.0.0.62), and a foreign CA."""
    d = tmp_path_factory.mktemp("pki")
    ca = make_ca(d, "site-ca")
    return {"ca": ca, "leaf": ca.issue(d, "agent61", ips=("127.0.0.61",)), "other_ca": make_ca(d, "other-ca")}


class TlsAgent:
    """A real lbagent serving TLS (and the shared secret) on ``host``."""

    def __init__(self, procs, tmp_path: Path, host: str, leaf, secret: str | None = SECRET,
                 extra: str = 'request-timeout="1"') -> None:
        self.host, self.port = host, free_port(host)
        attrs = f'tls-cert="{leaf.cert}" tls-key="{leaf.key}" {extra}'
        if secret is not None:
            sf = tmp_path / f"{host}.secret"
            sf.write_text(secret + "\n")
            sf.chmod(0o600)
            attrs += f' secret-file="{sf}"'
        self.config = tmp_path / f"{host}.xml"
        self.config.write_text(f'<lbaconfig><agent listen="{host}:{self.port}" sample-interval="0.3" {attrs}/>'
                               '<access><allow from="127.0.0.0/8"/></access></lbaconfig>')
        self.log = tmp_path / f"{host}.log"
        self.proc = procs.start(python_cmd("lbagent", "-f", "-c", str(self.config)), stderr=open(self.log, "w"),
                                stdout=subprocess.DEVNULL)
        wait_for_port(host, self.port, proc=self.proc)

    def proxy(self, ca: Path, secret: str | None = SECRET) -> xmlrpc.client.ServerProxy:
        cred = f"lbserver:{secret}@" if secret is not None else ""
        return xmlrpc.client.ServerProxy(f"https://{cred}{self.host}:{self.port}/RPC2",
                                         context=ssl.create_default_context(cafile=str(ca)))


def test_agent_serves_tls_with_secret(procs, tmp_path, pki):
    agent = TlsAgent(procs, tmp_path, "127.0.0.61", pki["leaf"])
    ca = pki["ca"].cert
    assert agent.proxy(ca).get_state()["variables"]["NBPROC"] > 0
    # No credentials, or a wrong secret: 401 with a Basic challenge, over TLS.
    for secret in (None, "not-" + SECRET):
        with pytest.raises(xmlrpc.client.ProtocolError) as info:
            agent.proxy(ca, secret).ping()
        assert info.value.errcode == 401
        assert info.value.headers["WWW-Authenticate"].startswith('Basic realm="lbagent"')
    # A client that does not trust the agent's CA refuses the connection.
    with pytest.raises(ssl.SSLCertVerificationError):
        agent.proxy(pki["other_ca"].cert).ping()
    # Plain HTTP to the TLS port: told in plain HTTP what to change.
    with pytest.raises(xmlrpc.client.ProtocolError) as info:
        xmlrpc.client.ServerProxy(f"http://{agent.host}:{agent.port}/RPC2").ping()
    assert info.value.errcode == 400 and "use https://" in info.value.errmsg
    # TLS older than 1.2 is refused by the agent (the client here would accept it).
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.load_verify_locations(str(ca))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        old.minimum_version = ssl.TLSVersion.TLSv1
        old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.set_ciphers("DEFAULT:@SECLEVEL=0")
    with pytest.raises(ssl.SSLError, match="TLSV1_ALERT_PROTOCOL_VERSION"):
        with socket.create_connection((agent.host, agent.port), timeout=5) as raw:
            old.wrap_socket(raw, server_hostname=agent.host)
    assert agent.proxy(ca).ping() is True
    procs.stop_all()
    log = agent.log.read_text()
    assert "over TLS, shared secret from" in log and "refused query from 127.0.0.1" in log
    assert SECRET not in log


def test_silent_tls_clients_block_nobody_and_are_cut_off(procs, tmp_path, pki):
    agent = TlsAgent(procs, tmp_path, "127.0.0.61", pki["leaf"], extra='request-timeout="1"')
    silent = [socket.create_connection((agent.host, agent.port), timeout=5) for _ in range(5)]
    half = socket.create_connection((agent.host, agent.port), timeout=5)
    half.sendall(b"\x16\x03\x01\x02\x00")  # the start of a ClientHello, and no more
    try:
        # Served at once, while six connections sit in (or before) their handshake.
        assert agent.proxy(pki["ca"].cert).ping() is True
        # request-timeout bounds the handshake too: the agent hangs up on each of them.
        for s in [*silent, half]:
            s.settimeout(5)
            assert s.recv(100) == b""
    finally:
        for s in [*silent, half]:
            s.close()
    assert agent.proc.poll() is None


def write_balancer(tmp_path: Path, poll_attrs: str, nodes: str) -> Balancer:
    bal = Balancer(tmp_path / "lbsconfig.xml", free_port(), free_port())
    bal.config.write_text(f"""<?xml version="1.0"?>
<lbsconfig>
  <lbservice listen="127.0.0.1:{bal.port}" returns="$NAME"/>
  <mgmtservice listen="127.0.0.1:{bal.mgmt_port}" state-file="{tmp_path}/lbserver.state"/>
  <poll interval="0.5" timeout="0.4" rise="1" fall="1" {poll_attrs}/>
  <nodes>
    <group name="PROD" default="true">
{nodes}
    </group>
  </nodes>
</lbsconfig>
""")
    return bal


def test_balancer_polls_over_tls_and_reports_each_failure(procs, tmp_path, pki):
    good = TlsAgent(procs, tmp_path, "127.0.0.61", pki["leaf"])
    # The same certificate on another address: the host name (IP) check must fail.
    misnamed = TlsAgent(procs, tmp_path, "127.0.0.62", pki["leaf"])
    plain_port = free_port("127.0.0.63")
    plain_cfg = tmp_path / "plain.xml"
    plain_cfg.write_text(f'<lbaconfig><agent listen="127.0.0.63:{plain_port}" sample-interval="0.3"/></lbaconfig>')
    plain = procs.start(python_cmd("lbagent", "-f", "-c", str(plain_cfg)))
    wait_for_port("127.0.0.63", plain_port, proc=plain)
    (tmp_path / "poll.secret").write_text(SECRET + "\n")
    (tmp_path / "poll.secret").chmod(0o600)
    (tmp_path / "wrong.secret").write_text("wrong-" + SECRET + "\n")
    (tmp_path / "wrong.secret").chmod(0o600)
    url = f"https://127.0.0.61:{good.port}"
    bal = write_balancer(tmp_path, f'secret-file="{tmp_path}/poll.secret" tls-ca="{pki["ca"].cert}"', f"""
      <node name="good" address="{url}"/>
      <node name="badsecret" address="{url}" secret-file="{tmp_path}/wrong.secret"/>
      <node name="foreignca" address="{url}" tls-ca="{pki['other_ca'].cert}"/>
      <node name="misnamed" address="https://127.0.0.62:{misnamed.port}"/>
      <node name="notls" address="http://127.0.0.61:{good.port}"/>
      <node name="plainagent" address="https://127.0.0.63:{plain_port}"/>""")
    log = tmp_path / "lbserver.log"
    bal.proc = procs.start(python_cmd("lbserver", "-f", "-c", str(bal.config)), stderr=open(log, "w"))
    wait_for_port("127.0.0.1", bal.mgmt_port, timeout=20, proc=bal.proc)
    status = wait_until(lambda: (s := bal.status())["last_poll"] and s["nodes"]["good"]["health"] == "up" and s,
                        15, what="TLS node up")
    nodes = status["nodes"]
    assert {n: v["health"] for n, v in nodes.items()} == {
        "good": "up", "badsecret": "down", "foreignca": "down", "misnamed": "down", "notls": "down",
        "plainagent": "down"}
    assert nodes["badsecret"]["error"].startswith("agent answered HTTP 401 Unauthorized (check secret-file")
    assert nodes["foreignca"]["error"].startswith(
        "TLS certificate verification failed: unable to get local issuer certificate")
    assert nodes["misnamed"]["error"].startswith("TLS certificate verification failed: IP address mismatch")
    assert nodes["notls"]["error"] == "agent answered HTTP 400 TLS required (use https:// for this agent)"
    assert nodes["plainagent"]["error"].startswith("TLS error: the agent did not answer in TLS")
    assert {bal.ask() for _ in range(20)} == {"good"}
    # The status page says who is polled over TLS without showing any secret.
    conn = http.client.HTTPConnection("127.0.0.1", bal.mgmt_port, timeout=5)
    conn.request("GET", "/status")
    body = conn.getresponse().read().decode()
    procs.stop_all()
    everything = body + log.read_text() + good.log.read_text() + misnamed.log.read_text()
    for secret in (SECRET, base64.b64encode(f"lbserver:{SECRET}".encode()).decode()):
        assert secret not in everything
    assert json.loads(body)["nodes"]["good"]["address"] == url
