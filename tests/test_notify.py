"""Alert mails: state changes only, batched per cycle, through a real SMTP server."""

from __future__ import annotations

import logging
import os
import ssl
from types import SimpleNamespace

import pytest

from tests.support import free_port
from tests.support.dns import NODES, start_smtp, write_config
from lbserver import config
from lbserver.dns.decide import Candidate
from lbserver.dns.arbiter import DnsArbiter
from lbserver.dns.notify import AlertTracker, Change, Mailer, MailSettings, compose
from tests.support.tls import make_ca

# The test server takes AUTH without TLS on loopback; aiosmtpd warns about that.
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")

GROUPS = {"WMS": tuple(NODES)}
ALICE = '    <alias name="wms-alice" group="WMS" num-out="1"/>'


def cands(*bad: str) -> dict[str, Candidate]:
    out = {}
    for i, n in enumerate(NODES):
        if n in bad:
            out[n] = Candidate(n, False, 5.0, ("LOADAVG 9 >= critical 8",))
        else:
            out[n] = Candidate(n, True, 40.0 - i, ())
    return out


def make(tmp_path, named, smtp, aliases=ALICE, extra=""):
    attrs = f'contact="wms-admin@example.org, oncall@example.org" smtp="127.0.0.1:{smtp.port}" ' \
            f'mail-from="lbserver@example.org" {extra}'
    cfg = config.load(str(write_config(tmp_path / "lbsconfig.xml", named, aliases, dns_attrs=attrs)))
    return DnsArbiter(cfg.dns, cfg.nodes)


def body(msg) -> str:
    return msg.get_content() if hasattr(msg, "get_content") else msg.get_payload(decode=True).decode()


@pytest.mark.unit
def test_tracker_reports_changes_only():
    t = AlertTracker()
    assert [c.raised for c in t.update({"a": "A down"})] == [True]
    assert t.update({"a": "A down (still)"}) == []
    ch = t.update({"b": "B down"}, {"a": "A back"})
    assert {(c.key, c.raised, c.message) for c in ch} == {("b", True, "B down"), ("a", False, "A back")}


@pytest.mark.unit
def test_tracker_state_file_round_trip(tmp_path):
    t = AlertTracker()
    t.update({"excluded/x/wms01": "m"})
    t.save(str(tmp_path / "s.json"))
    assert AlertTracker.load(str(tmp_path / "s.json")).update({"excluded/x/wms01": "m"}) == []
    (tmp_path / "bad.json").write_text("{not json")
    assert AlertTracker.load(str(tmp_path / "bad.json")).active == {}


@pytest.mark.unit
def test_compose_mail():
    s = MailSettings(contact=("a@example.org",), mail_from="lb@example.org")
    msg = compose(s, [Change("k", True, "alias x: node y excluded (down)", 0.0),
                      Change("k2", False, "alias x: node z is good again", 0.0)], "TABLE", hostname="boot1")
    assert msg["Subject"] == "[lbserver boot1] DNS aliases: 1 problem, 1 resolved"
    text = msg.get_content()
    assert "PROBLEM   alias x: node y excluded (down)" in text and "RESOLVED  alias x: node z" in text
    assert "TABLE" in text


@pytest.mark.system
def test_one_mail_per_change_and_batching(tmp_path, named_server, smtp_server):
    arb = make(tmp_path, named_server, smtp_server)
    arb.run_cycle(cands(), GROUPS)
    arb.run_cycle(cands(), GROUPS)
    assert smtp_server.messages == []  # nothing wrong, nothing sent
    arb.run_cycle(cands("wms02"), GROUPS)
    [m1] = smtp_server.wait_count(1)
    assert m1["To"] == "wms-admin@example.org, oncall@example.org"
    assert m1["From"] == "lbserver@example.org"
    assert "1 problem" in m1["Subject"]
    assert "wms-alice.lbtest.example: node wms02 excluded (LOADAVG 9 >= critical 8)" in body(m1)
    assert sorted(smtp_server.envelopes[0].rcpt_tos) == ["oncall@example.org", "wms-admin@example.org"]
    for _ in range(3):
        arb.run_cycle(cands("wms02"), GROUPS)  # unchanged state: no repeat
    assert len(smtp_server.messages) == 1
    arb.run_cycle(cands("wms03"), GROUPS)  # two changes in one cycle: one mail
    m2 = smtp_server.wait_count(2)[1]
    text = body(m2)
    assert "RESOLVED  alias wms-alice: node wms02 is good again" in text
    assert "PROBLEM   wms-alice.lbtest.example: node wms03 excluded" in text
    arb.run_cycle(cands("wms03"), GROUPS)
    assert len(smtp_server.messages) == 2


@pytest.mark.system
def test_fallback_and_dns_failure_mails(tmp_path, named_server, smtp_server):
    arb = make(tmp_path, named_server, smtp_server)
    arb.run_cycle(cands(), GROUPS)
    arb.run_cycle(cands(*NODES), GROUPS)
    text = body(smtp_server.wait_count(1)[0])
    assert "no good node left; keeping wms01 published (at-least-one rule)" in text
    assert text.count("PROBLEM") == 5  # 4 exclusions + the fallback
    named_server.stop()
    arb.run_cycle(cands(*NODES), GROUPS)
    text = body(smtp_server.wait_count(2)[1])
    assert "PROBLEM" in text and "refused" in text and "zone lbtest.example alias wms-alice" in text
    arb.run_cycle(cands(*NODES), GROUPS)
    assert len(smtp_server.messages) == 2  # still down: no repeat
    named_server.start()
    arb.run_cycle(cands(*NODES), GROUPS)
    text = body(smtp_server.wait_count(3)[2])
    assert "RESOLVED  alias wms-alice: DNS works again" in text


@pytest.mark.system
def test_smtp_down_is_not_fatal_and_mail_follows_later(tmp_path, named_server, caplog):
    port = free_port()
    arb = make(tmp_path, named_server, SimpleNamespace(port=port))  # nothing listens there yet
    with caplog.at_level(logging.WARNING, logger="lbserver.dns.notify"):
        arb.run_cycle(cands("wms04"), GROUPS)
    assert any("cannot send alert mail" in r.getMessage() and f"127.0.0.1:{port}" in r.getMessage()
               for r in caplog.records)
    srv, ctl = start_smtp(port=port)
    try:
        arb.run_cycle(cands("wms04"), GROUPS)  # no new change, but the pending one goes out now
        [m] = srv.wait_count(1)
        assert "node wms04 excluded" in body(m)
    finally:
        ctl.stop()


@pytest.mark.system
def test_smtp_login_with_password_file(tmp_path, named_server, smtp_auth_server, caplog):
    pw = tmp_path / "smtp.pw"
    pw.write_text("s3cret pw\n")
    os.chmod(pw, 0o600)
    caplog.set_level(logging.DEBUG)
    arb = make(tmp_path, named_server, smtp_auth_server, extra=f'smtp-user="lb" smtp-password-file="{pw}"')
    arb.run_cycle(cands("wms01"), GROUPS)
    smtp_auth_server.wait_count(1)
    assert smtp_auth_server.logins == [("lb", "s3cret pw")]
    assert "s3cret" not in caplog.text
    assert named_server.secret_b64 not in caplog.text


@pytest.mark.system
def test_wrong_smtp_password_is_logged_not_fatal(tmp_path, named_server, smtp_auth_server, caplog):
    pw = tmp_path / "smtp.pw"
    pw.write_text("wrong\n")
    arb = make(tmp_path, named_server, smtp_auth_server, extra=f'smtp-user="lb" smtp-password-file="{pw}"')
    with caplog.at_level(logging.WARNING, logger="lbserver.dns.notify"):
        [rep] = arb.run_cycle(cands("wms01"), GROUPS)
    assert rep.result == "updated"
    assert any("535" in r.getMessage() for r in caplog.records)
    assert "wrong" not in caplog.text.replace("went wrong", "")
    assert smtp_auth_server.messages == []


@pytest.mark.system
def test_cron_mode_state_file_prevents_repeats(tmp_path, named_server, smtp_server):
    state = tmp_path / "alerts.json"
    extra = f'alert-state-file="{state}"'
    make(tmp_path, named_server, smtp_server, extra=extra).run_cycle(cands("wms02"), GROUPS)
    smtp_server.wait_count(1)
    assert state.exists()
    # A new process (the next cron run) with the same state file: no repeat...
    make(tmp_path, named_server, smtp_server, extra=extra).run_cycle(cands("wms02"), GROUPS)
    # ...until the state changes.
    make(tmp_path, named_server, smtp_server, extra=extra).run_cycle(cands(), GROUPS)
    msgs = smtp_server.wait_count(2)
    assert len(msgs) == 2 and "node wms02 is good again" in body(msgs[1])


@pytest.mark.system
def test_no_contact_no_mail(tmp_path, named_server, smtp_server):
    cfg = config.load(str(write_config(tmp_path / "c.xml", named_server, ALICE,
                                       dns_attrs=f'smtp="127.0.0.1:{smtp_server.port}"')))
    arb = DnsArbiter(cfg.dns, cfg.nodes)
    [rep] = arb.run_cycle(cands("wms01"), GROUPS)
    assert rep.excluded and smtp_server.messages == []
    m = Mailer(MailSettings(contact=()))
    assert m.send([Change("k", True, "x", 0.0)]) and m.pending == []


@pytest.mark.system
def test_starttls_to_a_server_that_requires_it(tmp_path, named_server, caplog, monkeypatch):
    """Mail goes out over STARTTLS, verifying the relay's certificate; without it the relay refuses."""
    ca = make_ca(tmp_path / "ca")
    leaf = ca.issue(tmp_path / "ca", "relay", ips=("127.0.0.1",))
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(leaf.cert, leaf.key)
    monkeypatch.setenv("SSL_CERT_FILE", str(ca.cert))  # the relay's CA, as an admin would install it
    srv, ctl = start_smtp(tls_context=server_ctx)
    (tmp_path / "plain").mkdir()
    (tmp_path / "tls").mkdir()
    try:
        plain = make(tmp_path / "plain", named_server, srv)
        plain.run_cycle(cands("wms01"), GROUPS)
        assert srv.messages == []
        assert "alert mail" in caplog.text and "STARTTLS" in caplog.text
        secure = make(tmp_path / "tls", named_server, srv, extra='smtp-starttls="true"')
        secure.run_cycle(cands("wms01"), GROUPS)
        mails = srv.wait_count(1)
        assert "wms01" in body(mails[0])
    finally:
        ctl.stop()
