"""TSIG key files and the <dns> checks done when lbsconfig.xml is loaded."""

from __future__ import annotations

import os

import pytest

from common.xmlconfig import ConfigError
from lbserver import config
from lbserver.config.tsigkey import KeyFileError, load_key, parse_key_text, permission_warning, write_key_file

pytestmark = pytest.mark.unit

SECRET = "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"  # base64 of b"secret" * 4 + ...


def test_bind_format_as_tsig_keygen_writes_it():
    text = ('// generated\nkey "lbkey" {\n\talgorithm hmac-sha512;\n\tsecret "' + SECRET + '";\n};\n'
            '/* another */ key other { algorithm hmac-md5; secret "' + SECRET + '"; };\n')
    k = parse_key_text(text, "f", key_name="lbkey")
    assert (k.name, k.algorithm, k.secret) == ("lbkey", "hmac-sha512", b"secretsecretsecretsecret")
    assert parse_key_text(text, "f", key_name="other").algorithm == "hmac-md5"
    assert SECRET not in repr(k)


def test_several_keys_need_key_name():
    text = f'key a {{ algorithm hmac-sha256; secret "{SECRET}"; }};\nkey b {{ algorithm hmac-sha256; secret "{SECRET}"; }};'
    with pytest.raises(KeyFileError, match="f:2: the file holds 2 keys"):
        parse_key_text(text, "f")
    with pytest.raises(KeyFileError, match="no key named 'c'"):
        parse_key_text(text, "f", key_name="c")


def test_bare_secret_and_keystring_forms():
    assert parse_key_text(SECRET + "\n", "f", key_name="k", algorithm="hmac-md5").algorithm == "hmac-md5"
    k = parse_key_text(f"lbkey:{SECRET}\n", "f")
    assert (k.name, k.algorithm) == ("lbkey", "hmac-sha256")
    k = parse_key_text(f"hmac-sha512:lbkey:{SECRET}\n", "f")
    assert (k.name, k.algorithm) == ("lbkey", "hmac-sha512")
    with pytest.raises(KeyFileError, match="f:1: the file holds a bare secret: set key-name"):
        parse_key_text(SECRET, "f")


@pytest.mark.parametrize("text,match", [
    ('key "k" {\n algorithm hmac-foo;\n secret "' + SECRET + '";\n};', r"f:2: key 'k': unknown algorithm 'hmac-foo'"),
    ('key "k" {\n algorithm hmac-sha256;\n secret "not base64!!!";\n};', r"f:3: key 'k': the secret is not valid base64"),
    ('key "k" { algorithm hmac-sha256; };', "has no secret"),
    ('key "k" { algorithm hmac-sha256; secret "' + SECRET + '" }', "unparsable key statement"),
    ("", "the file is empty"),
    ("line1\nline2\n", "f:2: unexpected second line"),
    ("k:%%%notbase64", "f:1: the secret is not valid base64"),
    (f"a..b:{SECRET}", r"f:1: key name 'a..b' is not a valid DNS name \(A DNS label is empty"),
    (f"{'x' * 64}:{SECRET}", "is not a valid DNS name .*63 octets"),
])
def test_errors_are_located_and_never_show_the_secret(text, match):
    with pytest.raises(KeyFileError, match=match) as info:
        parse_key_text(text, "f", key_name=None)
    assert "notbase64" not in str(info.value) and "not base64!!!" not in str(info.value)
    assert SECRET not in str(info.value)


def test_missing_file_and_permissions(tmp_path):
    with pytest.raises(KeyFileError, match="cannot read key file: No such file"):
        load_key(str(tmp_path / "nope.key"))
    p = tmp_path / "k.key"
    write_key_file(str(p), "lbkey", "hmac-sha256", SECRET)
    assert os.stat(p).st_mode & 0o777 == 0o600
    assert permission_warning(str(p)) is None
    assert load_key(str(p)).name == "lbkey"
    os.chmod(p, 0o644)
    assert "chmod 600" in permission_warning(str(p))


CONFIG = """<?xml version="1.0"?>
<lbsconfig>
  <nodes>
    <group name="WMS">
      <node name="wms01" address="http://192.0.2.11:8001"/>
      <node name="wms02" address="http://192.0.2.12:8001"/>
    </group>
  </nodes>
  <dns server="127.0.0.1" zone="lbtest.example" key-file="{key}" {attrs}>
    <alias name="{alias}" group="WMS" {alias_attrs}/>
  </dns>
</lbsconfig>
"""


def load(tmp_path, key="dns.key", attrs="", alias="wms-alice", alias_attrs=""):
    p = tmp_path / "lbsconfig.xml"
    p.write_text(CONFIG.format(key=key, attrs=attrs, alias=alias, alias_attrs=alias_attrs))
    return config.load(str(p))


@pytest.fixture
def keydir(tmp_path):
    write_key_file(str(tmp_path / "dns.key"), "lbkey", "hmac-sha256", SECRET)
    return tmp_path


def test_config_resolves_relative_key_file(keydir):
    cfg = load(keydir)
    assert cfg.dns.key_file == str(keydir / "dns.key")


@pytest.mark.parametrize("kw,match", [
    (dict(key="missing.key"), r"lbsconfig.xml:9: <dns> key-file: .*missing.key: cannot read key file"),
    (dict(attrs='key-algorithm="hmac-foo"'), r":9: <dns> attribute key-algorithm='hmac-foo'"),
    (dict(alias="bad_name!"), r":10: <alias> attribute name='bad_name!'|:10: .*not a valid DNS name"),
    (dict(alias="wms.other.org."), r":10: .*not inside zone 'lbtest.example'"),
    (dict(alias_attrs='health-url="ftp://x/y"'), r":10: .*health-url='ftp://x/y'"),
    (dict(attrs='contact="nobody"'), r":9: <dns> attribute contact='nobody'"),
    (dict(attrs='smtp-user="lb"'), r":9: <dns> smtp-user needs smtp-password-file"),
    (dict(attrs='smtp-user="lb" smtp-password-file="nope.pw"'), r":9: .*smtp-password-file=.*cannot read"),
])
def test_config_rejects_bad_dns_settings(keydir, kw, match):
    with pytest.raises(ConfigError, match=match) as info:
        load(keydir, **kw)
    assert SECRET not in str(info.value)


def test_config_bare_secret_needs_key_name(tmp_path):
    (tmp_path / "bare.key").write_text(SECRET + "\n")
    with pytest.raises(ConfigError, match=r":9: <dns> key-file: .*bare.key:1: the file holds a bare secret"):
        load(tmp_path, key="bare.key")
    cfg = load(tmp_path, key="bare.key", attrs='key-name="lbkey" key-algorithm="HMAC-MD5"')
    assert load_key(cfg.dns.key_file, cfg.dns.key_name, cfg.dns.key_algorithm).algorithm == "hmac-md5"


def test_config_algorithm_must_agree_with_bind_key(keydir):
    with pytest.raises(ConfigError, match=r":9: <dns> key-algorithm='hmac-md5' but key 'lbkey' .* uses hmac-sha256"):
        load(keydir, attrs='key-algorithm="hmac-md5"')
    assert load(keydir, attrs='key-algorithm="HMAC-SHA256"').dns.key_file.endswith("dns.key")
