"""Importer: the WMS arbiter's ``wmsmon_site-info.def`` -> lbsconfig.xml.

``lbserver --import-siteinfo wmsmon_site-info.def [--key-out FILE]`` prints
an lbsconfig.xml on stdout: one group per alias (named after it), one node
per WMS host (named after the host, agent at ``http://HOST:8001``), a
``<dns>`` element with the server, zone and contact, and one ``<alias>`` per
alias with its flag, NUM_OUT and submission test page. The TSIG key of
``DNS_KEYSTRING`` goes to the ``--key-out`` file (BIND format, mode 0600),
never to stdout. Everything that cannot be carried over is said on stderr.

The file's syntax is the shell-like one of site-info.def files:
``NAME = value`` or ``NAME=value``, values optionally quoted (a quoted value
may span lines; inside double quotes a backslash escapes ``"``, ``\\``,
``$`` and a backquote), ``#`` comments; per-alias variables are the alias
name in upper case followed by ``_FLAG``, ``_WMSLIST``, ``_NUM_OUT``,
``_SUBMISSION_TEST_ENABLE`` and ``_SUBMISSION_TEST_PATH``.

The rules written are the WMS metric of ``etc/examples/lbsconfig-wms.xml``
(:data:`WMS_RULES`): they name the variables of the WMS agent profile
``etc/examples/lbaconfig-wms.xml``, which every WMS node's lbagent needs; the
generated file and the notes on stderr say so.
"""

from __future__ import annotations

import ipaddress
import os
import re
import sys
import urllib.parse
from dataclasses import dataclass, field
from typing import TextIO

from lxml import etree

from common.xmlconfig import parse_hostport

from lbserver.config import EMAIL
from lbserver.config.settings import AGENT_PORTS
from lbserver.config.tsigkey import decode_secret, key_name_problem, normalize_algorithm, write_key_file

DEFAULT_KEY_FILE = "/etc/mille-xterm/dns.key"
# nsupdate -y KEYNAME:KEY, which the WMS arbiter ran, signs with hmac-md5 unless told otherwise.
NSUPDATE_DEFAULT_ALGORITHM = "hmac-md5"

# The agent profile the imported nodes need, as the generated file and the notes name it.
WMS_AGENT_PROFILE = "etc/examples/lbaconfig-wms.xml"
WMS_AGENT_PROFILE_WHERE = (f"{WMS_AGENT_PROFILE} in the source, lbaconfig-wms.xml in the examples directory "
                           "of the package")
# The WMS arbiter's metric on that profile's variables: load, memory, sandbox disk, the WM, JC, ICE and LB
# queues (weighed), and the daemons (required). The same as etc/examples/lbsconfig-wms.xml; a test keeps
# the two alike.
WMS_RULES: tuple[tuple[str, dict[str, str]], ...] = (
    ("variable", {"name": "LOADAVG", "weight": "30", "capacity": "1.5", "per-cpu": "true"}),
    ("variable", {"name": "MEMUSEDPCT", "weight": "15", "capacity": "90", "critical": "98"}),
    ("variable", {"name": "SANDBOXDISK", "weight": "10", "capacity": "90", "critical": "97"}),
    ("variable", {"name": "WMQUEUE", "weight": "15", "capacity": "500"}),
    ("variable", {"name": "JCQUEUE", "weight": "10", "capacity": "500"}),
    ("variable", {"name": "ICEQUEUE", "weight": "10", "capacity": "500"}),
    ("variable", {"name": "LBQUEUE", "weight": "10", "capacity": "2000"}),
    ("require", {"name": "WMPROXY", "equals": "true"}),
    ("require", {"name": "WM", "equals": "true"}),
    ("require", {"name": "JC", "equals": "true"}),
    ("require", {"name": "LM", "equals": "true"}),
    ("require", {"name": "ICE", "equals": "true"}),
    ("require", {"name": "LBLOGD", "equals": "true"}),
    ("require", {"name": "LBINTERLOGD", "equals": "true"}),
)

_ASSIGN = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_.-]*)\s*=\s*(.*?)\s*$")
_HOST = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,62}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}[A-Za-z0-9])?)*\.?$")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\ud800-\udfff\ufffe\uffff]")
KNOWN_GLOBALS = {"ALIAS_LIST", "DNS_SERVER", "DNS_ZONE", "DNS_KEYSTRING", "LOAD_BALANCING_SITE_CONTACT"}
ALIAS_SUFFIXES = ("_FLAG", "_WMSLIST", "_NUM_OUT", "_SUBMISSION_TEST_ENABLE", "_SUBMISSION_TEST_PATH")


class SiteInfoError(Exception):
    """The file cannot be turned into a configuration at all."""


class UnclosedQuote(ValueError):
    """A value whose quote is not closed on its line (it may be on a later one)."""


@dataclass
class SiteInfo:
    """Variables of a site-info file: upper-case name -> (value, line)."""

    path: str
    values: dict[str, tuple[str, int]] = field(default_factory=dict)

    def get(self, name: str) -> str | None:
        """The value of ``name`` (case-insensitive), None when absent."""
        v = self.values.get(name.upper())
        return v[0] if v else None

    def where(self, name: str) -> str:
        """``FILE:LINE`` of ``name``'s assignment (or just FILE)."""
        v = self.values.get(name.upper())
        return f"{self.path}:{v[1]}" if v else self.path


def parse_siteinfo(text: str, path: str) -> tuple[SiteInfo, list[str]]:
    """Parse the file's text; returns the variables and notes on lines that could not be read.

    A value whose quote is still open at the end of its line continues on the
    next lines, as in the shell; a quote never closed is reported and only
    its own line is skipped.
    """
    info = SiteInfo(path)
    notes: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        lineno, raw = i + 1, lines[i]
        i += 1
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        m = _ASSIGN.match(raw)
        if not m:
            notes.append(f"{path}:{lineno}: not a NAME=value line, ignored: {stripped[:60]!r}")
            continue
        name, rest = m.group(1).upper(), raw[m.start(2):]
        value = None
        end = i
        while value is None:
            try:
                value = shell_value(rest)
            except UnclosedQuote as exc:
                if end >= len(lines):
                    notes.append(f"{path}:{lineno}: cannot read the value of {name} ({exc} by the end of the "
                                 "file), ignored")
                    break
                rest += "\n" + lines[end]
                end += 1
            except ValueError as exc:
                notes.append(f"{path}:{lineno}: cannot read the value of {name} ({exc}), ignored")
                break
        if value is None:
            continue
        i = end
        if _CONTROL.search(value):  # XML cannot carry them, and no real value holds one
            notes.append(f"{path}:{lineno}: the value of {name} contains control characters, ignored")
            continue
        info.values[name] = (value, lineno)
    return info, notes


def shell_value(text: str) -> str:
    """A value as the shell reads it: quotes removed, ``#`` after a blank starts a comment, blanks collapse.

    Inside double quotes a backslash escapes ``$``, a backquote, ``"``, ``\\``
    and a newline (which it removes), and is kept before anything else; inside
    single quotes it is an ordinary character. Raises :class:`UnclosedQuote`
    when a quote is not closed.
    """
    words: list[str] = []
    cur: list[str] = []
    in_word = False
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "'":
            j = text.find(c, i + 1)
            if j < 0:
                raise UnclosedQuote("unclosed ' quote")
            cur.append(text[i + 1:j])
            in_word = True
            i = j + 1
            continue
        if c == '"':
            i += 1
            while True:
                if i >= n:
                    raise UnclosedQuote('unclosed " quote')
                d = text[i]
                if d == '"':
                    break
                if d == "\\" and i + 1 < n and text[i + 1] in '$`"\\\n':
                    if text[i + 1] != "\n":
                        cur.append(text[i + 1])
                    i += 2
                    continue
                cur.append(d)
                i += 1
            in_word = True
            i += 1
            continue
        if c.isspace():
            if in_word:
                words.append("".join(cur))
                cur, in_word = [], False
        elif c == "#" and not in_word:
            break
        elif c == "\\" and i + 1 < n:
            cur.append(text[i + 1])
            in_word = True
            i += 1
        else:
            cur.append(c)
            in_word = True
        i += 1
    if in_word:
        words.append("".join(cur))
    return " ".join(words)


def split_list(value: str | None) -> list[str]:
    """``a, b c`` -> [a, b, c] (commas and/or blanks separate)."""
    return [p for p in re.split(r"[\s,]+", value or "") if p]


def _valid_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return bool(_HOST.match(host))


def _agent_url(host: str) -> str:
    try:
        if ipaddress.ip_address(host).version == 6:
            return f"http://[{host}]:{AGENT_PORTS['http']}"
    except ValueError:
        pass
    return f"http://{host.rstrip('.')}:{AGENT_PORTS['http']}"


@dataclass
class Imported:
    """The result of an import: the XML text, the key (if any) and the notes for stderr."""

    xml: str
    key: tuple[str, str, str] | None  # (name, algorithm, base64 secret)
    notes: list[str]


def convert(info: SiteInfo, key_file: str) -> Imported:
    """Build the configuration; raise :class:`SiteInfoError` when essential variables are missing."""
    notes: list[str] = []
    missing = [v for v in ("ALIAS_LIST", "DNS_SERVER", "DNS_ZONE") if not info.get(v)]
    if missing:
        raise SiteInfoError(f"{info.path}: {', '.join(missing)} missing or empty: cannot build the <dns> element")
    zone = info.get("DNS_ZONE").strip().rstrip(".")
    server_raw = info.get("DNS_SERVER").strip()
    server, port = server_raw, None
    if "#" in server_raw:  # BIND's ADDRESS#PORT
        server, _, port = server_raw.partition("#")
    else:
        try:
            host, p = parse_hostport(server_raw)
            server, port = host, str(p)
        except ValueError:
            pass  # a bare host name or IPv6 address
    if port is not None and not (port.isdigit() and 0 < int(port) < 65536):
        raise SiteInfoError(f"{info.where('DNS_SERVER')}: DNS_SERVER={server_raw!r}: bad port")
    # Key.
    key = None
    keystring = info.get("DNS_KEYSTRING")
    if not keystring:
        notes.append(f"{info.path}: DNS_KEYSTRING missing: no key imported; write {key_file} yourself "
                     "(e.g. with tsig-keygen) before starting lbserver")
    else:
        parts = keystring.strip().split(":")
        alg = NSUPDATE_DEFAULT_ALGORITHM
        if len(parts) == 3:
            alg_p = normalize_algorithm(parts[0])
            if alg_p is None:
                notes.append(f"{info.where('DNS_KEYSTRING')}: DNS_KEYSTRING: unknown algorithm {parts[0]!r}: "
                             "key not imported")
                parts = []
            else:
                alg, parts = alg_p, parts[1:]
        name_problem = key_name_problem(parts[0]) if len(parts) == 2 and parts[0] else None
        if name_problem:
            notes.append(f"{info.where('DNS_KEYSTRING')}: DNS_KEYSTRING: {name_problem}: key not imported "
                         "(write the key file yourself, with the name the DNS server knows)")
        elif len(parts) == 2 and parts[0] and parts[1]:
            try:
                decode_secret(parts[1])
            except ValueError as exc:
                notes.append(f"{info.where('DNS_KEYSTRING')}: DNS_KEYSTRING: {exc}: key not imported")
            else:
                key = (parts[0], alg, "".join(parts[1].split()))
                if len(keystring.split(":")) == 2:
                    notes.append(f"{info.where('DNS_KEYSTRING')}: DNS_KEYSTRING gives no algorithm: assumed "
                                 f"{alg} (nsupdate -y's default, as the WMS arbiter used it); if the DNS server "
                                 f"defines key {parts[0]!r} with another algorithm, edit the key file")
        elif parts:
            notes.append(f"{info.where('DNS_KEYSTRING')}: DNS_KEYSTRING is not KEYNAME:KEY: key not imported")

    root = etree.Element("lbsconfig")
    source = os.path.basename(info.path).replace("--", "- -").rstrip("-")  # XML comments forbid "--"
    root.append(etree.Comment(f" imported from {source} by the lbserver site-info importer; "
                              "check the rules and the agents' port before use "))
    root.append(etree.Comment(f" every WMS node runs lbagent with the WMS agent profile {WMS_AGENT_PROFILE}\n"
                              "       (lbaconfig-wms.xml in the examples directory of the package) as its\n"
                              "       lbaconfig.xml: the rules below name its variables, and a node whose agent\n"
                              "       lacks one is excluded "))
    nodes_el = etree.SubElement(root, "nodes")
    rules = etree.SubElement(root, "rules")
    dns_attrs = {"server": server}
    if port:
        dns_attrs["port"] = port
    dns_attrs.update({"zone": zone, "ttl": "60"})
    if key:
        dns_attrs.update({"key-name": key[0], "key-algorithm": key[1]})
    dns_attrs["key-file"] = key_file
    contact = info.get("LOAD_BALANCING_SITE_CONTACT")
    if contact:
        # As <dns contact> reads it: addresses separated by commas (or semicolons).
        given = [c.strip() for c in re.split(r"[,;]", contact) if c.strip()]
        good = [c for c in given if EMAIL.match(c)]
        for bad in (c for c in given if not EMAIL.match(c)):
            notes.append(f"{info.where('LOAD_BALANCING_SITE_CONTACT')}: LOAD_BALANCING_SITE_CONTACT: {bad!r} is "
                         "not an e-mail address: left out")
        if good:
            dns_attrs["contact"] = ", ".join(good)
            dns_attrs["smtp"] = "localhost:25"
        else:
            notes.append(f"{info.where('LOAD_BALANCING_SITE_CONTACT')}: LOAD_BALANCING_SITE_CONTACT={contact!r} "
                         "holds no e-mail address: no contact set, alerts only go to the log")
    else:
        notes.append(f"{info.path}: LOAD_BALANCING_SITE_CONTACT missing: no contact set, alerts only go to the log")
    dns_el = etree.Element("dns", dns_attrs)

    aliases = split_list(info.get("ALIAS_LIST"))
    seen_nodes: set[str] = set()
    n_alias = 0
    used: set[str] = set(KNOWN_GLOBALS)
    for alias in aliases:
        name = alias.rstrip(".")
        if name.lower().endswith("." + zone.lower()):
            name = name[: -len(zone) - 1]
            notes.append(f"{info.where('ALIAS_LIST')}: alias {alias!r} includes the zone: imported as {name!r}")
        up = alias.upper()
        used.update(up + s for s in ALIAS_SUFFIXES)
        if not _valid_host(name):
            notes.append(f"{info.where('ALIAS_LIST')}: alias {alias!r} is not a valid DNS name: skipped")
            continue
        hosts_raw = split_list(info.get(up + "_WMSLIST"))
        if not hosts_raw:
            notes.append(f"{info.path}: alias {alias}: {up}_WMSLIST missing or empty: alias skipped")
            continue
        hosts: list[str] = []
        for h in hosts_raw:
            if not _valid_host(h) or not re.match(r"^[A-Za-z0-9]", h):
                notes.append(f"{info.where(up + '_WMSLIST')}: {up}_WMSLIST: {h!r} is not a host name: left out")
            elif h.rstrip(".") not in hosts:
                hosts.append(h.rstrip("."))
        if not hosts:
            notes.append(f"{info.where(up + '_WMSLIST')}: alias {alias}: no usable WMS host: alias skipped")
            continue
        group = etree.SubElement(nodes_el, "group", {"name": name})
        if n_alias == 0:
            group.set("default", "true")
        for h in hosts:
            etree.SubElement(group, "node", {"name": h, "address": _agent_url(h)})
            seen_nodes.add(h)
        attrs = {"name": name, "group": name}
        flag = info.get(up + "_FLAG")
        if flag is None:
            notes.append(f"{info.path}: alias {alias}: {up}_FLAG missing: alias enabled")
            attrs["enabled"] = "true"
        else:
            attrs["enabled"] = "false" if flag.strip() == "0" else "true"
            if flag.strip() not in ("0", "1"):
                notes.append(f"{info.where(up + '_FLAG')}: {up}_FLAG={flag!r}: not 0 or 1, taken as enabled")
        num_out = info.get(up + "_NUM_OUT")
        if num_out is not None:
            if not re.fullmatch(r"[0-9]+", num_out.strip()):  # int() would take "1_0", "+1" or "١"
                notes.append(f"{info.where(up + '_NUM_OUT')}: {up}_NUM_OUT={num_out!r} is not a number: left out "
                             "(the default leaves 1 out)")
            else:
                digits = num_out.strip().lstrip("0") or "0"
                n = int(digits) if len(digits) <= 9 else 10**9  # int() refuses over 4300 digits
                if 0 < n < len(hosts):
                    attrs["num-out"] = str(n)
                else:
                    notes.append(f"{info.where(up + '_NUM_OUT')}: {up}_NUM_OUT={digits[:12]} violates 0 < NUM_OUT < {len(hosts)} "
                                 f"(the number of WMS of alias {alias}): left out, the default applies "
                                 f"({'leave 1 out' if len(hosts) > 1 else 'publish the only WMS'})")
        enable = info.get(up + "_SUBMISSION_TEST_ENABLE")
        path = info.get(up + "_SUBMISSION_TEST_PATH")
        if enable is not None and enable.strip() == "1":
            scheme = urllib.parse.urlsplit(path or "").scheme.lower()
            if not path:
                notes.append(f"{info.where(up + '_SUBMISSION_TEST_ENABLE')}: alias {alias}: submission test enabled "
                             f"but {up}_SUBMISSION_TEST_PATH is missing: no health-url")
            elif scheme not in ("http", "https", "file") or not urllib.parse.urlsplit(path).netloc and scheme != "file":
                notes.append(f"{info.where(up + '_SUBMISSION_TEST_PATH')}: {up}_SUBMISSION_TEST_PATH={path!r} is not "
                             "an http(s) or file URL: no health-url")
            else:
                attrs["health-url"] = path
        elif path and (enable is None or enable.strip() != "1"):
            notes.append(f"{info.where(up + '_SUBMISSION_TEST_PATH')}: alias {alias}: submission test page given "
                         "but not enabled: no health-url")
        etree.SubElement(dns_el, "alias", attrs)
        n_alias += 1
    if n_alias == 0:
        raise SiteInfoError(f"{info.where('ALIAS_LIST')}: no alias could be imported (see the notes above)")
    rules.append(etree.Comment(" the WMS metric: load, memory, sandbox disk and the WM, JC, ICE and LB queues "
                               "weigh an instance; a dead daemon excludes it "))
    for tag, attrs in WMS_RULES:
        etree.SubElement(rules, tag, attrs)
    root.append(dns_el)
    weighed = ", ".join(a["name"] for t, a in WMS_RULES if t == "variable")
    required = ", ".join(a["name"] for t, a in WMS_RULES if t == "require")
    notes.append(f"every WMS node needs the WMS agent profile {WMS_AGENT_PROFILE_WHERE}, as its "
                 f"/etc/mille-xterm/lbaconfig.xml (adjust its paths to the instance): the rules weigh {weighed} "
                 f"and require {required} (the daemons) to be true, and a node whose agent lacks one of them "
                 "is excluded")
    ignored = sorted(k for k in info.values if k not in used)
    if ignored:
        notes.append(f"{info.path}: variables not used by the importer: {', '.join(ignored)}")
    etree.indent(root, space="  ")
    xml = etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True).decode("utf-8")
    xml = xml.replace("<?xml version='1.0' encoding='UTF-8'?>", '<?xml version="1.0" encoding="UTF-8"?>')
    return Imported(xml=xml, key=key, notes=notes)


def main_import(path: str, key_out: str | None, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """Run the importer: config on ``out``, notes on ``err``; 0 when a config was written, 1 otherwise."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            text = fh.read(4 * 1024 * 1024)
    except OSError as exc:
        print(f"{path}: cannot read: {exc.strerror or exc}", file=err)
        return 1
    info, notes = parse_siteinfo(text, path)
    key_file = os.path.abspath(key_out) if key_out else DEFAULT_KEY_FILE
    try:
        result = convert(info, key_file)
    except SiteInfoError as exc:
        for n in notes:
            print(f"note: {n}", file=err)
        print(f"error: {exc}", file=err)
        return 1
    notes.extend(result.notes)
    if result.key:
        if key_out:
            try:
                write_key_file(key_file, *result.key)
            except (OSError, ValueError) as exc:
                print(f"error: cannot write key file {key_file}: {getattr(exc, 'strerror', None) or exc}", file=err)
                return 1
            notes.append(f"TSIG key {result.key[0]!r} ({result.key[1]}) written to {key_file} (mode 0600)")
        else:
            notes.append(f"the TSIG key was not written (no --key-out): rerun with --key-out {DEFAULT_KEY_FILE}; "
                         "the configuration refers to that file")
    for n in notes:
        print(f"note: {n}", file=err)
    out.write(result.xml)
    return 0
