"""<x2gobroker> and <x2go-loadchecker> in lbsconfig.xml: defaults, profiles, errors with their line, warnings."""

from __future__ import annotations

import ipaddress
import logging

import pytest

from common.xmlconfig import ConfigError
from lbserver import config as configmod
from lbserver.config import X2goBroker, X2goProfile
from tests.support.tls import make_ca


NODES = '<nodes><group name="LAB"><node name="a" address="http://10.0.0.1"/></group></nodes>'


def load(tmp_path, body: str):
    path = tmp_path / "lbsconfig.xml"
    path.write_text(f"<lbsconfig>\n{body}\n{NODES}\n</lbsconfig>\n")
    return configmod.load(str(path))


@pytest.mark.unit
def test_defaults_profiles_and_allow(tmp_path, caplog):
    assert load(tmp_path, "").x2gobroker is None and load(tmp_path, "").x2go_loadchecker is None
    with caplog.at_level(logging.WARNING):
        cfg = load(tmp_path, '<x2gobroker>\n<profile name="Lab desktop" group="LAB"/>\n</x2gobroker>').x2gobroker
    assert cfg == X2goBroker(profiles=(X2goProfile(name="Lab desktop", group="LAB"),))
    assert (cfg.listen, cfg.auth, cfg.pam_service, cfg.password_over_http) == (("0.0.0.0", 8012), "none",
                                                                              "mille-xterm-x2go", False)
    assert cfg.profiles[0].command == "XFCE" and cfg.profiles[0].sshport == 22
    assert "answers loopback only" in caplog.text
    cfg = load(tmp_path, '<x2gobroker listen="127.0.0.1:9012" auth="PAM" password-over-http="true">'
                         '<allow from="10.0.0.0/8"/><profile name="T" group="LAB" command="xterm" sshport="2222" '
                         'user="BROKER_USER"/></x2gobroker>').x2gobroker
    assert cfg.auth == "pam" and cfg.allow == (ipaddress.ip_network("10.0.0.0/8"),)
    assert cfg.profiles[0].sshport == 2222 and cfg.profiles[0].user == "BROKER_USER"


@pytest.mark.unit
def test_pam_over_plain_http_is_warned_about(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        load(tmp_path, '<x2gobroker listen="127.0.0.1:9012" auth="pam"/>')
    assert "refuses every password" in caplog.text


@pytest.mark.unit
@pytest.mark.parametrize("body, words", [
    ('<x2gobroker><profile name="P" group="NOPE"/></x2gobroker>', "names group 'NOPE'"),
    ('<x2gobroker><profile name="P" group="LAB"/><profile name="P" group="LAB"/></x2gobroker>', "given twice"),
    ('<x2gobroker><profile name="[P]" group="LAB"/></x2gobroker>', "no brackets"),
    ('<x2gobroker><profile group="LAB"/></x2gobroker>', "name"),
    ('<x2gobroker auth="kerberos"/>', "auth"),
    ('<x2gobroker tls-key="k.pem"/>', "tls-key but no tls-cert"),
    ('<x2gobroker tls-cert="missing.pem"/>', "missing.pem"),
    ('<x2gobroker><allow from="nonsense"/></x2gobroker>', "nonsense"),
    ('<x2go-loadchecker mode="999"/>', "octal"),
    ('<x2go-loadchecker socket-group="no-such-group-here"/>', "no such group"),
])
def test_errors_name_the_line(tmp_path, body, words):
    with pytest.raises(ConfigError) as exc:
        load(tmp_path, body)
    assert words in str(exc.value) and "lbsconfig.xml:2" in str(exc.value)


@pytest.mark.daemon  # runs openssl
def test_tls_files_are_loaded_relative_to_the_file(tmp_path):
    leaf = make_ca(tmp_path / "ca").issue(tmp_path, "broker", ips=("127.0.0.1",))
    cert, key = leaf.cert, leaf.key
    cfg = load(tmp_path, f'<x2gobroker tls-cert="{cert.relative_to(tmp_path)}" tls-key="{key}"/>').x2gobroker
    assert cfg.tls_cert == str(cert) and cfg.tls_key == str(key)
    lc = load(tmp_path, '<x2go-loadchecker socket="run/lc.sock"/>').x2go_loadchecker
    assert lc.socket == str(tmp_path / "run" / "lc.sock") and lc.mode == "0660"
