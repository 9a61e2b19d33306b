"""<haproxy-agent> in lbsconfig.xml: defaults, <allow> children, errors with their line, the loopback warning."""

from __future__ import annotations

import ipaddress
import logging

import pytest

from common.xmlconfig import ConfigError
from lbserver import config as configmod
from lbserver.config import HaproxyAgent
from lbserver.config.settings import HAPROXY_AGENT

pytestmark = pytest.mark.unit

NODES = '<nodes><group name="G"><node name="a" address="http://10.0.0.1"/></group></nodes>'


def load(tmp_path, body: str):
    path = tmp_path / "lbsconfig.xml"
    path.write_text(f"<lbsconfig>\n{body}\n{NODES}\n</lbsconfig>\n")
    return configmod.load(str(path))


def test_absent_by_default_and_defaults_when_present(tmp_path, caplog):
    assert load(tmp_path, "").haproxy is None
    with caplog.at_level(logging.WARNING):
        cfg = load(tmp_path, "<haproxy-agent/>").haproxy
    assert cfg == HaproxyAgent()
    assert (cfg.listen, cfg.read_timeout, cfg.max_connections, cfg.allow) == (
        HAPROXY_AGENT.listen.default, HAPROXY_AGENT.read_timeout.default, HAPROXY_AGENT.max_connections.default, ())
    assert cfg.listen == ("0.0.0.0", 8011)
    # Listening everywhere while answering loopback only is worth a word.
    assert "answers loopback only" in caplog.text and "lbsconfig.xml:2:" in caplog.text


def test_attributes_and_allow(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        cfg = load(tmp_path, '<haproxy-agent listen="[::]:9011" read-timeout="0.2" max-connections="10">'
                             '<allow from="10.0.0.0/24"/><allow from="2001:db8::5"/></haproxy-agent>').haproxy
    assert cfg.listen == ("::", 9011) and cfg.read_timeout == 0.2 and cfg.max_connections == 10
    assert cfg.allow == (ipaddress.ip_network("10.0.0.0/24"), ipaddress.ip_network("2001:db8::5/128"))
    assert "haproxy-agent" not in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        load(tmp_path, '<haproxy-agent listen="127.0.0.1:8011"/>')
    assert "haproxy-agent" not in caplog.text


@pytest.mark.parametrize("body,message", [
    ('<haproxy-agent read-timeout="0"/>', "read-timeout"),
    ('<haproxy-agent max-connections="0"/>', "max-connections"),
    ('<haproxy-agent listen="nowhere"/>', "listen"),
    ('<haproxy-agent><allow from="10.0.0.300/8"/></haproxy-agent>', "from"),
    ('<haproxy-agent><allow/></haproxy-agent>', "from"),
    ('<haproxy-agent><deny from="10.0.0.1"/></haproxy-agent>', "deny"),
    ('<haproxy-agent/><haproxy-agent/>', "appears twice"),
])
def test_mistakes_name_the_line(tmp_path, body, message):
    with pytest.raises(ConfigError) as info:
        load(tmp_path, body)
    assert info.value.line == 2 and message in str(info.value), str(info.value)


def test_haproxy_map_defaults_and_its_group(tmp_path):
    assert load(tmp_path, "").haproxy_map is None
    cfg = load(tmp_path, '<haproxy-map group="G"/>').haproxy_map
    assert (cfg.group, cfg.socket, cfg.file, cfg.timeout) == (
        "G", "/run/haproxy/admin.sock", "/etc/haproxy/mille-xterm-sessions.map", 2.0)
    with pytest.raises(ConfigError, match=r"lbsconfig.xml:2:.*<haproxy-map> names group 'RDP'"):
        load(tmp_path, '<haproxy-map group="RDP"/>')
    with pytest.raises(ConfigError, match="missing attribute group"):
        load(tmp_path, '<haproxy-map/>')
