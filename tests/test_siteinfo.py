"""Importer: wmsmon_site-info.def -> lbsconfig.xml + key file."""

from __future__ import annotations

import io
import os
import stat

import pytest

from lbserver import config
from lbserver.config.tsigkey import format_bind_key, load_key
from lbserver.tools.siteinfo import main_import, parse_siteinfo

pytestmark = pytest.mark.unit

SECRET = "bGJzZWNyZXRsYnNlY3JldGxic2VjcmV0bGJzZWNyZXQ="

# As a site following the WMS arbiter's documentation would have written it.
SITE_INFO = f"""\
# wmsmon_site-info.def -- WMSMonitor server configuration
LOAD_BALANCING_SITE_CONTACT = wms-support@cnaf.example.org

DNS_KEYSTRING = wmsmon-arbiter:{SECRET}
DNS_SERVER = "dns1.cnaf.example.org"
DNS_ZONE=grid.cnaf.example.org

# aliases defined in the DNS, without the zone
ALIAS_LIST = wms-alice, wms-atlas, wms-cms-prod, wms-lhcb, wms-test

WMS-ALICE_FLAG = 1
WMS-ALICE_WMSLIST = wms001.cnaf.example.org, wms002.cnaf.example.org, wms003.cnaf.example.org
WMS-ALICE_NUM_OUT = 1
WMS-ALICE_SUBMISSION_TEST_ENABLE = 1
WMS-ALICE_SUBMISSION_TEST_PATH = 'http://wmsmon.cnaf.example.org/sub-tests/alice.txt'   # refreshed hourly

WMS-ATLAS_FLAG = 1
WMS-ATLAS_WMSLIST = "wms004.cnaf.example.org wms005.cnaf.example.org"
WMS-ATLAS_NUM_OUT = 2
WMS-ATLAS_SUBMISSION_TEST_ENABLE = 0
WMS-ATLAS_SUBMISSION_TEST_PATH = http::\\your-url-publishing-page-with-submission-test-result

WMS-CMS-PROD_FLAG = 0
WMS-CMS-PROD_WMSLIST = wms002.cnaf.example.org, wms006.cnaf.example.org
WMS-CMS-PROD_NUM_OUT = 1

wms-lhcb_FLAG = 1
wms-lhcb_WMSLIST = wms007.cnaf.example.org

WMS-TEST_FLAG = 1
WMSMON_DB_PASSWORD = hidden
"""


def run(tmp_path, text=SITE_INFO, key_out="dns.key"):
    p = tmp_path / "wmsmon_site-info.def"
    p.write_text(text)
    out, err = io.StringIO(), io.StringIO()
    rc = main_import(str(p), str(tmp_path / key_out) if key_out else None, out=out, err=err)
    return rc, out.getvalue(), err.getvalue()


def test_parse_quotes_comments_and_case():
    info, notes = parse_siteinfo("A = 'x y'  # c\nb=\"z # not a comment\"\nbroken line\n", "f")
    assert info.get("A") == "x y" and info.get("B") == "z # not a comment"
    assert notes == ["f:3: not a NAME=value line, ignored: 'broken line'"]


def test_import_seed_example_loads(tmp_path):
    rc, xml, err = run(tmp_path)
    assert rc == 0, err
    cfg_path = tmp_path / "lbsconfig.xml"
    cfg_path.write_text(xml)
    cfg = config.load(str(cfg_path))  # loaded only: its nodes are never contacted
    assert cfg.dns.server == "dns1.cnaf.example.org" and cfg.dns.zone == "grid.cnaf.example.org"
    assert cfg.dns.contact == "wms-support@cnaf.example.org"
    assert cfg.dns.key_name == "wmsmon-arbiter" and cfg.dns.key_algorithm == "hmac-md5"
    aliases = {a.name: a for a in cfg.dns.aliases}
    assert set(aliases) == {"wms-alice", "wms-atlas", "wms-cms-prod", "wms-lhcb"}
    alice = aliases["wms-alice"]
    assert alice.enabled and alice.num_out == 1
    assert alice.health_url == "http://wmsmon.cnaf.example.org/sub-tests/alice.txt"
    assert cfg.groups["wms-alice"].nodes == ("wms001.cnaf.example.org", "wms002.cnaf.example.org",
                                              "wms003.cnaf.example.org")
    assert cfg.nodes["wms002.cnaf.example.org"].address == "http://wms002.cnaf.example.org:8001"
    assert cfg.groups["wms-alice"].default
    assert not aliases["wms-cms-prod"].enabled
    assert aliases["wms-atlas"].health_url is None
    assert aliases["wms-atlas"].num_out == 1  # NUM_OUT=2 violated 0 < NUM_OUT < 2: default applies
    assert aliases["wms-lhcb"].best_hosts == -1  # a single WMS is published
    assert "wms002.cnaf.example.org" in cfg.groups["wms-cms-prod"].nodes
    # The WMS metric on the WMS agent profile's variables: queues weighed, daemons required.
    assert [r.name for r in cfg.rules] == ["LOADAVG", "MEMUSEDPCT", "SANDBOXDISK", "WMQUEUE", "JCQUEUE",
                                           "ICEQUEUE", "LBQUEUE"]
    assert {r.name: r.equals for r in cfg.requires} == {n: "true" for n in (
        "WMPROXY", "WM", "JC", "LM", "ICE", "LBLOGD", "LBINTERLOGD")}


def test_import_names_the_agent_profile_the_nodes_need(tmp_path):
    from lxml import etree

    from lbserver.tools.siteinfo import WMS_RULES
    rc, xml, err = run(tmp_path)
    root = etree.fromstring(xml.encode())
    comments = [c.text for c in root.iterchildren(etree.Comment)]
    assert "etc/examples/lbaconfig-wms.xml" in comments[1] and "examples directory of the package" in comments[1]
    assert root.index(root.xpath("comment()")[1]) == 1  # at the top, before <nodes>
    rules = [(e.tag, dict(e.attrib)) for e in root.find("rules") if isinstance(e.tag, str)]
    assert rules == [(tag, dict(attrs)) for tag, attrs in WMS_RULES]
    assert 'custom="true"' not in xml
    [line] = [n for n in err.splitlines() if "agent profile" in n]
    assert "WMQUEUE" in line and "WMPROXY" in line and "/etc/mille-xterm/lbaconfig.xml" in line


def test_import_reports_what_it_could_not_map(tmp_path):
    rc, xml, err = run(tmp_path)
    assert "WMS-ATLAS_NUM_OUT=2 violates 0 < NUM_OUT < 2" in err
    assert "alias wms-test: WMS-TEST_WMSLIST missing or empty: alias skipped" in err
    assert "submission test page given but not enabled" in err
    assert "assumed hmac-md5" in err
    assert "every WMS node needs the WMS agent profile etc/examples/lbaconfig-wms.xml" in err
    assert "examples directory of the package" in err
    assert "WMSMON_DB_PASSWORD" in err  # named as unused...
    assert "hidden" not in err and "hidden" not in xml  # ...but its value is not repeated
    assert SECRET not in err and SECRET not in xml


def test_key_file_written_0600_in_bind_format(tmp_path):
    rc, xml, err = run(tmp_path)
    key_path = tmp_path / "dns.key"
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    assert key_path.read_text().startswith('key "wmsmon-arbiter" {')
    k = load_key(str(key_path))
    assert (k.name, k.algorithm) == ("wmsmon-arbiter", "hmac-md5")
    assert f'key-file="{key_path}"' in xml


def test_without_key_out_nothing_secret_is_written(tmp_path):
    rc, xml, err = run(tmp_path, key_out=None)
    assert rc == 0
    assert "rerun with --key-out /etc/mille-xterm/dns.key" in err
    assert 'key-file="/etc/mille-xterm/dns.key"' in xml
    assert SECRET not in xml + err


def test_keystring_with_algorithm_and_bad_keystring(tmp_path):
    rc, xml, err = run(tmp_path, SITE_INFO.replace(f"wmsmon-arbiter:{SECRET}", f"hmac-sha256:lbkey:{SECRET}"))
    assert rc == 0 and 'key-algorithm="hmac-sha256"' in xml and "assumed" not in err
    rc, xml, err = run(tmp_path, SITE_INFO.replace(f"wmsmon-arbiter:{SECRET}", "nocolonhere"))
    assert rc == 0 and "DNS_KEYSTRING is not KEYNAME:KEY: key not imported" in err


def test_missing_essentials_fail(tmp_path):
    rc, xml, err = run(tmp_path, SITE_INFO.replace("DNS_SERVER", "#DNS_SERVER"))
    assert rc == 1 and xml == ""
    assert "DNS_SERVER missing or empty" in err
    rc, xml, err = run(tmp_path, "ALIAS_LIST = a\nDNS_SERVER = x\nDNS_ZONE = z\n")
    assert rc == 1 and "no alias could be imported" in err
    out, errs = io.StringIO(), io.StringIO()
    assert main_import(str(tmp_path / "nope.def"), None, out=out, err=errs) == 1
    assert "cannot read" in errs.getvalue()


def test_server_with_port(tmp_path):
    rc, xml, err = run(tmp_path, SITE_INFO.replace('"dns1.cnaf.example.org"', "192.0.2.53#5353"))
    assert rc == 0 and 'server="192.0.2.53"' in xml and 'port="5353"' in xml


def test_key_name_that_could_break_the_key_file_is_refused(tmp_path):
    for bad in ('lb"key', 'x";} key "evil', "a..b", "-x"):
        rc, xml, err = run(tmp_path, SITE_INFO.replace(f"DNS_KEYSTRING = wmsmon-arbiter:{SECRET}",
                                                       f"DNS_KEYSTRING = '{bad}:{SECRET}'"))
        assert rc == 0, err
        assert "is not a valid DNS name" in err and "key not imported" in err
        assert not (tmp_path / "dns.key").exists()
        assert "key-name" not in xml and SECRET not in err


def test_format_bind_key_refuses_what_would_break_the_statement():
    assert format_bind_key("lbkey", "hmac-sha256", SECRET).startswith('key "lbkey" {')
    for args in (('lb"key', "hmac-sha256", SECRET), ("lbkey\n", "hmac-sha256", SECRET),
                 ("lbkey", "hmac-sha256; secret", SECRET), ("lbkey", "hmac-sha256", 'x"; };')):
        with pytest.raises(ValueError) as exc:
            format_bind_key(*args)
        assert SECRET not in str(exc.value)


def test_several_contacts_are_kept(tmp_path):
    rc, xml, err = run(tmp_path, SITE_INFO.replace("wms-support@cnaf.example.org",
                                                   "a@x.org, b@y.org; not-mail"))
    assert rc == 0
    assert 'contact="a@x.org, b@y.org"' in xml
    assert "'not-mail' is not an e-mail address: left out" in err
    cfg_path = tmp_path / "lbsconfig.xml"
    cfg_path.write_text(xml)
    assert config.load(str(cfg_path)).dns.contact == "a@x.org, b@y.org"
    rc, xml, err = run(tmp_path, SITE_INFO.replace("wms-support@cnaf.example.org", "nobody, here"))
    assert "contact=" not in xml and "holds no e-mail address" in err


def test_quoted_values_as_the_shell_reads_them():
    text = ('X_WMSLIST="h1.example.org\n'
            '   h2.example.org"   # two lines\n'
            'B="a\\"b \\\\ \\$c \\d"\n'
            "C='x\\\"y'\n"
            'D="never closed\n'
            "E=after\n")
    info, notes = parse_siteinfo(text, "f")
    assert info.get("X_WMSLIST").split() == ["h1.example.org", "h2.example.org"]
    assert info.where("X_WMSLIST") == "f:1"
    assert info.get("B") == 'a"b \\ $c \\d'
    assert info.get("C") == 'x\\"y'
    assert info.get("D") is None and info.get("E") == "after"  # an unclosed quote swallows nothing
    assert notes == ['f:5: cannot read the value of D (unclosed " quote by the end of the file), ignored']


def test_num_out_must_be_plain_digits(tmp_path):
    for bad in ("1_0", "+1", "\u0661", "-1"):
        rc, xml, err = run(tmp_path, SITE_INFO.replace("WMS-ALICE_NUM_OUT = 1", f"WMS-ALICE_NUM_OUT = {bad}"))
        assert rc == 0 and f"WMS-ALICE_NUM_OUT={bad!r} is not a number" in err
    rc, xml, err = run(tmp_path, SITE_INFO.replace("WMS-ALICE_NUM_OUT = 1", "WMS-ALICE_NUM_OUT = 02"))
    assert 'num-out="2"' in xml
