"""lbsconfig.xml: reading and checking a file into a :class:`ServerConfig`.

:func:`load` parses and validates a file (structure by the RELAX NG schema,
attributes by their declarations in :mod:`lbserver.config.settings`, values
and cross-references here) and returns a :class:`ServerConfig`, or raises
:class:`~common.xmlconfig.ConfigError` with ``FILE:LINE: message``. Each
element's attributes are read at once through their declarations
(:func:`common.settings.read_all`); the checks here are those no single
declaration states: names, URLs and e-mail addresses, references between
elements, and secret, certificate and key files read now so that
``--check-config`` sees their problems.
"""

from __future__ import annotations

import logging
import os
import re
import ssl
import urllib.parse

import dns.exception
import dns.name
from lxml import etree

from common.builtins import BUILTIN_VARIABLES
from common.secretfile import SecretFileError, permission_problem, read_secret_file
from common.settings import parse_config, read, read_all
from common.tls import TlsConfigError, client_context
from common.xmlconfig import ConfigError, Reader, parse_hostport, warn_loopback_only
from lbserver.config import tsigkey, x2go
from lbserver.config.expr import Expr, ExprError, parse
from lbserver.config.model import (DEFAULT_RULES, Alias, Dns, Group, HaproxyAgent, HaproxyMap, Node, Peer, Peers,
                                   Poll, Require, Rule, ServerConfig, agent_host_port)
from lbserver.config.settings import (AGENT_PORTS, ALIAS, CONFIG_FILE, DEFAULT_PATH, DEFAULT_STATE_FILE, DNS, GROUP,
                                      HAPROXY_AGENT, HAPROXY_ALLOW, HAPROXY_MAP, HEALTH_URL_SCHEMES, LBSERVICE, LBSLAVE,
                                      LEGACY_PATH, LOG, MGMTSERVICE, NODE, NODE_EXPORTER_PORT, PEER, PEERS, POLL,
                                      PROMQL_VARIABLE, REQUIRE, RULE, VARIABLE)

VARIABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
NODE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
DNS_LABELS = re.compile(r"^([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?)*\.?$")
EMAIL = re.compile(r"^[^@\s,;<>]+@[^@\s,;<>]+$")
LEASE_HOLDER = re.compile(r"^[A-Za-z0-9._:\[\]@/-]{1,100}$")

log = logging.getLogger(__name__)


def _refuse_credentials(r: Reader, elem: etree._Element, attr: str, url: str) -> None:
    """Refuse ``url`` (``elem``'s ``attr``) when it carries ``user:password@``: URLs are shown in the log and
    /status, so the error does not echo it and the secret belongs in a file (secret-file, token-file)."""
    try:
        parsed = urllib.parse.urlsplit(url)
    except ValueError:
        return  # the caller names what is wrong with it
    if parsed.username is not None or parsed.password is not None:
        raise r.error(elem, f"<{elem.tag}> attribute {attr} holds credentials: give them in a file "
                            "(secret-file or token-file, and user for a Prometheus server)")


def _node_url(r: Reader, elem: etree._Element, raw: str) -> tuple[str, int]:
    """(host, port) of a <node address>, the port defaulting by scheme."""
    _refuse_credentials(r, elem, "address", raw)
    try:
        return agent_host_port(raw)
    except ValueError:
        raise r.error(elem, f"<node> attribute address={raw!r}: expected a URL such as "
                            f"http://10.0.0.1:{AGENT_PORTS['http']}") from None


class _Credentials:
    """Reads each secret file and builds each TLS context once per load, however many nodes share it."""

    def __init__(self, r: Reader) -> None:
        self.r = r
        self._secrets: dict[str, str] = {}
        self._contexts: dict[str | None, ssl.SSLContext] = {}

    def secret(self, elem: etree._Element, path: str, attr: str = "secret-file") -> str:
        """The secret in ``path`` (named by ``elem``'s ``attr``); warns once on loose permissions."""
        if path not in self._secrets:
            try:
                self._secrets[path] = read_secret_file(path)
            except SecretFileError as exc:
                raise self.r.error(elem, f"<{elem.tag}> {attr}: {exc}") from None
            problem = permission_problem(path)
            if problem:
                # A warning, not an error: see common.secretfile for why.
                log.warning("%s:%s: <%s> %s: %s", self.r.path, elem.sourceline, elem.tag, attr, problem)
        return self._secrets[path]

    def context(self, elem: etree._Element, ca_file: str | None) -> ssl.SSLContext:
        """The client TLS context verifying against ``ca_file`` (None: the system's CAs)."""
        if ca_file not in self._contexts:
            try:
                self._contexts[ca_file] = client_context(ca_file)
            except TlsConfigError as exc:
                raise self.r.error(elem, f"<{elem.tag}> tls-ca: {exc}") from None
        return self._contexts[ca_file]


def _node_security(r: Reader, n: etree._Element, node: dict, poll_elem: etree._Element | None, poll: dict,
                   creds: _Credentials, tls: bool) -> dict:
    """secret-file and tls-ca of a node (``node`` its attributes), falling back to <poll>'s, read and checked."""
    kw: dict = {}
    own_secret = node["secret_file"]
    secret_elem = n if own_secret is not None else poll_elem
    secret_file = own_secret if own_secret is not None else poll["secret_file"]
    if secret_file is not None:
        kw["secret_file"] = _config_relative(r, secret_file)
        kw["secret"] = creds.secret(secret_elem, kw["secret_file"])
    own_ca = node["tls_ca"]
    if own_ca is not None and not tls:
        raise r.error(n, f"<node> tls-ca applies to https:// addresses only (address={n.get('address')!r})")
    if tls:
        ca_elem = n if own_ca is not None else poll_elem
        ca = own_ca if own_ca is not None else poll["tls_ca"]
        kw["tls_ca"] = _config_relative(r, ca) if ca is not None else None
        kw["ssl_context"] = creds.context(ca_elem if ca is not None else n, kw["tls_ca"])
    return kw


def _load_nodes(r: Reader, root: etree._Element) -> tuple[dict[str, Node], dict[str, Group], str]:
    poll_elem = root.find("poll")
    poll = read_all(r, poll_elem, POLL)
    creds = _Credentials(r)
    if poll["tls_ca"] is not None:
        creds.context(poll_elem, _config_relative(r, poll["tls_ca"]))  # checked even if no node uses it
    nodes: dict[str, Node] = {}
    groups: dict[str, Group] = {}
    default: str | None = None
    for g in root.find("nodes").iter("group"):
        group = read_all(r, g, GROUP)
        gname = group["name"]
        if gname in groups:
            raise r.error(g, f"duplicate group name {gname!r} (first at line {groups[gname].line})")
        members: list[str] = []
        instances: list[tuple[str, str | None]] = []
        prometheus = _prometheus_group(r, g, group, creds)
        if group["from_"] is not None:
            groups[gname] = _remote_group(r, g, group, creds)
            if g.find("node") is not None:
                raise r.error(g.find("node"), f"group {gname!r} takes its nodes from {group['from_']}: it has no "
                                              "<node>")
            if groups[gname].default:
                if default is not None:
                    raise r.error(g, f"two default groups: {default!r} and {gname!r}")
                default = gname
            continue
        for n in g.iter("node"):
            values = read_all(r, n, NODE)
            instance = values.pop("instance")
            name = values["name"]
            if name is not None and not NODE_NAME.match(name):
                raise r.error(n, f"<node> attribute name={name!r}: use letters, digits, '.', '_' and '-'")
            if instance is not None:
                instances.append(_instance(r, n, group, values, instance, instances))
                continue
            if values["address"] is None or name is None:
                missing = " and ".join(a for a in ("name", "address") if values[a] is None)
                hint = " (or instance, in a group with prometheus)" if group["prometheus"] is not None else ""
                raise r.error(n, f"<node> is missing attribute {missing}{hint}")
            if name in members:
                raise r.error(n, f"duplicate node name {name!r} in group {gname!r}")
            host, port = _node_url(r, n, values["address"])
            if values["source"] == "node-exporter" and urllib.parse.urlsplit(values["address"]).port is None:
                port = NODE_EXPORTER_PORT
            if values["max_sessions"] is None:
                values["max_sessions"] = group["max_sessions"]
            values.update(_node_security(r, n, values, poll_elem, poll, creds,
                                         values["address"].lower().startswith("https:")))
            node = Node(**values, host=host, port=port, line=n.sourceline)
            prev = nodes.get(name)
            if prev is not None and (prev.address, prev.ip, prev.ip6, prev.secret_file, prev.tls_ca,
                                     prev.max_sessions, prev.source) != (node.address, node.ip, node.ip6,
                                                                         node.secret_file, node.tls_ca,
                                                                         node.max_sessions, node.source):
                raise r.error(n, f"node {name!r} is defined differently at line {prev.line}; "
                                 "a node in several groups must have the same attributes")
            nodes.setdefault(name, node)
            members.append(name)
        if not members and prometheus is None:
            raise r.error(g, f"group {gname!r} has no <node>")
        if prometheus is not None and not group["discover"] and not instances:
            raise r.error(g, f"group {gname!r} reads its nodes from Prometheus: give it discover=\"QUERY\" or "
                             "<node instance=\"host:port\"/> children")
        if group["default"]:
            if default is not None:
                raise r.error(g, f"two default groups: {default!r} and {gname!r}")
            default = gname
        groups[gname] = Group(name=gname, nodes=tuple(members), default=group["default"], line=g.sourceline,
                              max_sessions=group["max_sessions"], instances=tuple(instances), **(prometheus or {}))
    if default is None:
        default = next(iter(groups))
    return nodes, groups, default


def _prometheus_group(r: Reader, g: etree._Element, group: dict, creds: "_Credentials") -> dict | None:
    """The Prometheus fields of a <group> (None without prometheus): its URL checked, its token read now."""
    url = group["prometheus"]
    if url is None:
        for attr in ("discover", "user"):
            if group[attr] is not None:
                raise r.error(g, f"<group> attribute {attr} needs prometheus (the Prometheus server to ask)")
        return None
    if group["from_"] is not None:
        raise r.error(g, "<group> takes its nodes from another balancer (from) or from Prometheus, not both")
    try:
        parsed = urllib.parse.urlsplit(url)
        parsed.port  # noqa: B018 (raises on a bad port)
    except ValueError:
        parsed = None
    _refuse_credentials(r, g, "prometheus", url)
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.hostname or parsed.query \
            or parsed.fragment:
        raise r.error(g, f"<group> attribute prometheus={url!r}: expected the base URL of a Prometheus server, "
                         "such as http://prom:9090")
    if group["discover"] is not None and not group["discover"].strip():
        raise r.error(g, "<group> attribute discover is empty: give a PromQL query, such as up{job=\"node\"}")
    if group["user"] is not None and (group["token_file"] is None or ":" in group["user"]):
        raise r.error(g, "<group> user needs token-file (holding the password), and a user name has no ':'")
    out = {"prometheus": url.rstrip("/"), "discover": group["discover"], "max_series": group["max_series"],
           "user": group["user"]}
    if group["token_file"] is not None:
        out["token_file"] = _config_relative(r, group["token_file"])
        out["token"] = creds.secret(g, out["token_file"], "token-file")
    return out


def _instance(r: Reader, n: etree._Element, group: dict, values: dict, instance: str,
              seen: list[tuple[str, str | None]]) -> tuple[str, str | None]:
    """A <node instance> of a prometheus group, checked: (instance, name or None)."""
    if group["prometheus"] is None:
        raise r.error(n, "<node> attribute instance belongs in a group with prometheus")
    if values["address"] is not None:
        raise r.error(n, "<node> gives address or instance, not both")
    try:
        parsed = urllib.parse.urlsplit(f"http://{instance}")
        ok = bool(parsed.hostname) and parsed.port is not None and parsed.path == "" and len(instance) <= 255
    except ValueError:
        ok = False
    if not ok:
        raise r.error(n, f"<node> attribute instance={instance!r}: expected the instance label, host:port")
    if any(i == instance for i, _ in seen):
        raise r.error(n, f"<node instance={instance!r}> is listed twice")
    return instance, values["name"]


def _remote_group(r: Reader, g: etree._Element, group: dict, creds: "_Credentials") -> Group:
    """A <group from=...> (``group`` its attributes): its URL checked, its token read now (a bad token file fails
    the load)."""
    source = group["from_"]
    _refuse_credentials(r, g, "from", source)
    try:
        parsed = urllib.parse.urlsplit(source)
        parsed.port  # noqa: B018 (raises on a bad port)
    except ValueError:
        parsed = None
    if parsed is None or parsed.scheme != "http" or not parsed.hostname or parsed.query or parsed.fragment:
        raise r.error(g, f"<group> attribute from={source!r}: expected the URL of another lbserver's management "
                         "service, such as http://site-lbserver:8009")
    token_file = group["token_file"]
    token = None
    if token_file is not None:
        token_file = _config_relative(r, token_file)
        token = creds.secret(g, token_file, "token-file")
    return Group(name=group["name"], nodes=(), default=group["default"], line=g.sourceline,
                 source=source.rstrip("/"), remote_group=group["remote_group"] or group["name"],
                 token_file=token_file, token=token, max_sessions=group["max_sessions"])


def _limit(r: Reader, elem: etree._Element, attr: str, *, required: bool) -> float | Expr | None:
    """capacity or critical: a number stays a float; anything else is parsed into an expression tree."""
    raw = elem.get(attr)
    if raw is None or not raw.strip():
        if required:
            raise r.error(elem, f"<{elem.tag}> needs a capacity (on <variable> or on its <rule>)")
        return None
    try:
        tree = parse(raw)
    except ExprError as exc:
        raise r.error(elem, f"<{elem.tag}> attribute {attr}={raw!r}: {exc}") from None
    if tree.constant is None:
        return tree
    if attr == "capacity" and tree.constant <= 0:
        raise r.error(elem, f"<{elem.tag}> attribute {attr}={raw!r}: must be greater than 0")
    return tree.constant


def _load_rules(r: Reader, root: etree._Element) -> tuple[tuple[Rule, ...], tuple[Require, ...]]:
    rules: list[Rule] = []
    requires: list[Require] = []
    elem = root.find("rules")
    if elem is None:
        return DEFAULT_RULES, ()
    seen: dict[str, int] = {}
    promql_names = {v.get("name") for v in root.iterfind("variables/variable")}
    for e in elem:
        values = read_all(r, e, VARIABLE if e.tag == "variable" else REQUIRE)
        name = values["name"]
        if not VARIABLE_NAME.match(name):
            raise r.error(e, f"<{e.tag}> attribute name={name!r}: not a variable name")
        if e.tag == "variable":
            if name in seen:
                raise r.error(e, f"duplicate rule for variable {name!r} (first at line {seen[name]})")
            seen[name] = e.sourceline
            del values["custom"]  # accepted, changes nothing
            if name not in BUILTIN_VARIABLES and name not in promql_names:
                log.warning("%s:%s: warning: rule variable %s is not a built-in: every agent must define it in "
                            "its lbaconfig.xml (built-ins are %s)", r.path, e.sourceline, name, ", ".join(BUILTIN_VARIABLES))
            legacy = e.find("rule")
            if legacy is not None and (e.get("capacity") is not None or e.get("critical") is not None):
                raise r.error(legacy, "give capacity and critical on <variable> or on its <rule>, not both")
            limits = legacy if legacy is not None else e
            values["capacity"] = _limit(r, limits, RULE.capacity.attribute, required=True)
            values["critical"] = _limit(r, limits, RULE.critical.attribute, required=False)
            rules.append(Rule(**values, line=e.sourceline, kb_memory=legacy is not None))
        else:
            req = Require(**values, line=e.sourceline)
            if req.equals is None and req.min is None and req.max is None:
                raise r.error(e, "<require> needs equals, min or max")
            if req.min is not None and req.max is not None and req.min > req.max:
                raise r.error(e, "<require> min is greater than max")
            requires.append(req)
    return tuple(rules), tuple(requires)


def _load_promql(r: Reader, root: etree._Element) -> dict[str, str]:
    """<variables>: each PromQL variable's expression by name (names checked, each once, no built-in)."""
    elem = root.find("variables")
    out: dict[str, str] = {}
    lines: dict[str, int] = {}
    for e in elem.iter("variable") if elem is not None else ():
        values = read_all(r, e, PROMQL_VARIABLE)
        name, expr = values["name"], values["promql"].strip()
        if not VARIABLE_NAME.match(name):
            raise r.error(e, f"<variable> attribute name={name!r}: not a variable name")
        if name in BUILTIN_VARIABLES:
            raise r.error(e, f"<variable name={name!r}> is a built-in: give the PromQL variable a name of its own")
        if name in out:
            raise r.error(e, f"duplicate variable {name!r} (first at line {lines[name]})")
        if not expr:
            raise r.error(e, f"<variable name={name!r}> promql is empty")
        out[name], lines[name] = expr, e.sourceline
    return out


def _warn_agentless_sessions(r: Reader, root: etree._Element, nodes: dict[str, Node], groups: dict[str, Group],
                             rules: tuple[Rule, ...]) -> None:
    """Warn when rules count sessions or users that agentless nodes report only if the site writes them."""
    if not any(n.source != "agent" for n in nodes.values()) and not any(g.prometheus for g in groups.values()):
        return
    for rule in rules:
        if rule.name in ("NBSESSIONS", "NBUSERS"):
            where = f"{r.path}:{rule.line}" if rule.line else f"{r.path}: the default rules"
            log.warning("%s: warning: rule variable %s: node_exporter and Prometheus nodes report it only where the "
                        "site writes mille_xterm_%s (textfile collector, see docs/agentless.md); without it they are "
                        "unhealthy", where, rule.name, rule.name.lower())


def _config_relative(r: Reader, path: str) -> str:
    """A path from the config, relative ones taken from the config file's directory."""
    if os.path.isabs(path):
        return path
    return os.path.join(os.path.dirname(os.path.abspath(r.path)), path)


def _check_dns_extras(r: Reader, elem: etree._Element, dns_cfg: "Dns") -> None:
    """Checks of <dns> beyond the structure: key file, algorithm, names, mail settings."""
    if tsigkey.normalize_algorithm(dns_cfg.key_algorithm) is None:
        raise r.error(elem, f"<dns> attribute key-algorithm={dns_cfg.key_algorithm!r}: expected one of "
                            f"{', '.join(tsigkey.ALGORITHMS)}")
    try:
        key = tsigkey.load_key(dns_cfg.key_file, dns_cfg.key_name, dns_cfg.key_algorithm)
    except tsigkey.KeyFileError as exc:
        raise r.error(elem, f"<dns> key-file: {exc}") from None
    given = elem.get("key-algorithm")
    if given is not None and tsigkey.normalize_algorithm(given) != key.algorithm:
        raise r.error(elem, f"<dns> key-algorithm={given!r} but key {key.name!r} in {dns_cfg.key_file} uses "
                            f"{key.algorithm}: remove key-algorithm or make them agree")
    try:
        if not DNS_LABELS.match(dns_cfg.zone):
            raise dns.exception.SyntaxError
        origin = dns.name.from_text(dns_cfg.zone)
    except dns.exception.DNSException:
        raise r.error(elem, f"<dns> attribute zone={dns_cfg.zone!r}: not a valid DNS name") from None
    for a, ae in zip(dns_cfg.aliases, elem.iter("alias")):
        _in_zone(r, ae, "name", a.name, origin, dns_cfg.zone, "wms-alice")
        if a.health_url is not None:
            try:
                scheme = urllib.parse.urlsplit(a.health_url).scheme.lower()
            except ValueError:  # "http://[bad"
                scheme = ""
            if scheme not in HEALTH_URL_SCHEMES:
                raise r.error(ae, f"<alias> attribute health-url={a.health_url!r}: expected an http://, "
                                  "https:// or file:// URL")
    _check_lease(r, elem, dns_cfg, origin)
    for contact in (dns_cfg.contact or "").replace(";", ",").split(","):
        if contact.strip() and not EMAIL.match(contact.strip()):
            raise r.error(elem, f"<dns> attribute contact={dns_cfg.contact!r}: expected e-mail addresses "
                                "separated by commas")
    if dns_cfg.mail_from is not None and not EMAIL.match(dns_cfg.mail_from.strip()):
        raise r.error(elem, f"<dns> attribute mail-from={dns_cfg.mail_from!r}: expected an e-mail address")
    if dns_cfg.smtp_user and not dns_cfg.smtp_password_file:
        raise r.error(elem, "<dns> smtp-user needs smtp-password-file (a file holding the SMTP password)")
    if dns_cfg.smtp_password_file and not dns_cfg.smtp_user:
        raise r.error(elem, "<dns> smtp-password-file needs smtp-user (the SMTP login name)")
    if dns_cfg.smtp_password_file:
        try:
            with open(dns_cfg.smtp_password_file, "rb"):
                pass
        except OSError as exc:
            raise r.error(elem, f"<dns> smtp-password-file={dns_cfg.smtp_password_file!r}: cannot read: "
                                f"{exc.strerror or exc}") from None


def _in_zone(r: Reader, elem: etree._Element, attr: str, value: str, origin: dns.name.Name, zone: str,
             example: str) -> dns.name.Name:
    """``value`` (an attribute of ``elem``) as an absolute name inside the zone; a located error otherwise."""
    try:
        if not DNS_LABELS.match(value):
            raise dns.exception.SyntaxError
        name = dns.name.from_text(value, origin=origin)
    except dns.exception.DNSException:
        raise r.error(elem, f"<{elem.tag}> attribute {attr}={value!r}: not a valid DNS name") from None
    if not name.is_subdomain(origin):
        raise r.error(elem, f"<{elem.tag}> attribute {attr}={value!r}: not inside zone {zone!r} "
                            f"(give the name relative to the zone, e.g. {example})")
    return name


def _check_lease(r: Reader, elem: etree._Element, dns_cfg: "Dns", origin: dns.name.Name) -> None:
    """<dns lease> names a record inside the zone that is no alias; lease-holder fits in the record."""
    if dns_cfg.lease:
        name = _in_zone(r, elem, "lease", dns_cfg.lease, origin, dns_cfg.zone, "_lbserver-lease")
        for a in dns_cfg.aliases:
            if dns.name.from_text(a.name, origin=origin) == name:
                raise r.error(elem, f"<dns> attribute lease={dns_cfg.lease!r}: the lease record needs a name of "
                                    f"its own, not alias {a.name!r}")
    holder = dns_cfg.lease_holder
    if holder is not None and not LEASE_HOLDER.match(holder):
        raise r.error(elem, f"<dns> attribute lease-holder={holder!r}: use 1 to 100 letters, digits and "
                            "'.', '_', '-', ':', '[', ']', '@', '/' (no spaces)")


def _check_lease_time(r: Reader, elem: etree._Element, dns_cfg: "Dns", interval: float) -> None:
    if dns_cfg.lease and dns_cfg.lease_time is not None and dns_cfg.lease_time < 2 * interval:
        raise r.error(elem, f"<dns> lease-time={dns_cfg.lease_time:g} must be at least twice the poll interval "
                            f"({interval:g} s): the writer renews the lease when half of it is left")


def _relative_paths(r: Reader, values: dict, *names: str) -> dict:
    """``values`` with the paths of ``names`` taken from the config file's directory; an empty one is None."""
    return {**values, **{n: _config_relative(r, values[n]) if values[n] else None for n in names}}


def _load_dns(r: Reader, elem: etree._Element, groups: dict[str, Group]) -> Dns:
    ttl = read(r, elem, DNS.ttl, check=False)
    if ttl < DNS.ttl.minimum:
        raise r.error(elem, f"<dns> attribute ttl={ttl}: must be at least {DNS.ttl.minimum} seconds "
                            "(resolvers and caches misbehave with shorter TTLs)")
    values = _relative_paths(r, read_all(r, elem, DNS), "key_file", "smtp_password_file", "alert_state_file")
    values["smtp_host"], values["smtp_port"] = values.pop("smtp")
    values["zone"] = values["zone"].rstrip(".")
    values["lease"] = values["lease"].strip()
    aliases: list[Alias] = []
    for a in elem.iter("alias"):
        alias = read_all(r, a, ALIAS)
        name, gname = alias["name"], alias["group"]
        if gname not in groups:
            raise r.error(a, f"<alias name={name!r}> names unknown group {gname!r}")
        if any(x.name == name for x in aliases):
            raise r.error(a, f"duplicate alias {name!r}")
        remote = groups[gname].feed is not None
        size = len(groups[gname].nodes)
        num_out, best = alias["num_out"], alias["best_hosts"]
        if num_out is not None and best is not None:
            raise r.error(a, f"<alias name={name!r}>: give num-out or best-hosts, not both")
        # A remote group's size is known at each poll only; the decision then keeps at least one node.
        if num_out is not None and not (0 < num_out and (remote or num_out < size)):
            raise r.error(a, f"<alias name={name!r}> num-out={num_out}: must satisfy 0 < num-out < {size} "
                             f"(the number of nodes in group {gname!r})")
        if best is not None and not (best == -1 or best >= 1):
            raise r.error(a, f"<alias name={name!r}> best-hosts={best}: must be -1 (all healthy) or at least 1")
        if num_out is None and best is None:
            # The original arbiter leaves one server out; a one-node group publishes it.
            alias["num_out"], alias["best_hosts"] = (1, None) if size > 1 or remote else (None, -1)
        aliases.append(Alias(**alias, line=a.sourceline))
    dns_cfg = Dns(**values, aliases=tuple(aliases), line=elem.sourceline)
    _check_dns_extras(r, elem, dns_cfg)
    return dns_cfg


def _load_peers(r: Reader, elem: etree._Element) -> Peers:
    """<peers> and its <peer> children; the secret file is read now, so a bad one fails the load."""
    values = _relative_paths(r, read_all(r, elem, PEERS), "secret_file")
    if values["secret_file"]:
        values["secret"] = _Credentials(r).secret(elem, values["secret_file"])
    default_port = values["listen"][1]  # a peer's port defaults to ours
    peers: list[Peer] = []
    for pe in elem.iter("peer"):
        raw = r.required(pe, PEER.address.attribute)
        host, port = r._convert(pe, "address", raw, lambda s: parse_hostport(s, default_port), "HOST[:PORT]")
        peer = Peer(host=host, port=port, line=pe.sourceline)
        if peer in peers:
            raise r.error(pe, f"<peer> {peer.address} is listed twice")
        peers.append(peer)
    return Peers(**values, peers=tuple(peers), line=elem.sourceline)


def _load_haproxy(r: Reader, elem: etree._Element) -> HaproxyAgent:
    """<haproxy-agent> and its <allow> children; warns when it listens beyond loopback but allows only loopback."""
    cfg = HaproxyAgent(**read_all(r, elem, HAPROXY_AGENT),
                       allow=tuple(read(r, a, HAPROXY_ALLOW.from_) for a in elem.iter("allow")),
                       line=elem.sourceline)
    warn_loopback_only(r, elem, cfg.listen[0], cfg.allow, "the HAProxy hosts")
    return cfg


def _check_token_file(r: Reader, elem: etree._Element, path: str) -> None:
    """Warn now about a token file that is unusable or readable by others.

    Only warnings: the management service reads the file at each remote admin
    request (so a new token needs no restart), and works from loopback without it.
    """
    try:
        read_secret_file(path)
    except SecretFileError as exc:
        log.warning("%s:%s: <mgmtservice> token-file: %s; remote admin actions will be refused",
                    r.path, elem.sourceline, exc)
        return
    problem = permission_problem(path)
    if problem:
        log.warning("%s:%s: <mgmtservice> token-file: %s", r.path, elem.sourceline, problem)


def default_path() -> str:
    """/etc/mille-xterm/lbsconfig.xml, or the ltsp-cluster balancer's /etc/ltsp/lbsconfig.xml when only that exists."""
    if not os.path.exists(DEFAULT_PATH) and os.path.exists(LEGACY_PATH):
        return LEGACY_PATH
    return DEFAULT_PATH


def load(path: str = DEFAULT_PATH) -> ServerConfig:
    """Load and validate lbsconfig.xml; raise ConfigError naming file and line."""
    r, root = parse_config(path, CONFIG_FILE)
    seen: dict[str, int] = {}
    for child in root:
        if child.tag in seen:
            raise r.error(child, f"<{child.tag}> appears twice (first at line {seen[child.tag]})")
        seen[child.tag] = child.sourceline
    if "nodes" not in seen:
        raise r.error(root, "missing element <nodes> (the application servers to balance)")
    nodes, groups, default = _load_nodes(r, root)
    promql = _load_promql(r, root)
    rules, requires = _load_rules(r, root)
    _warn_agentless_sessions(r, root, nodes, groups, rules)
    kw = read_all(r, root.find("lbservice"), LBSERVICE)
    refresh_delay = kw.pop("refresh_delay")
    del kw["max_threads"]  # checked, then ignored (see its declaration)
    slave = root.find("lbslave")
    if slave is not None and read(r, slave, LBSLAVE.is_slave):
        log.warning("%s:%s: <lbslave is-slave=\"true\"> is ignored: this balancer answers terminals itself; "
                    "make the balancers <peers> to share picks and drains", r.path, slave.sourceline)
    mgmt = read_all(r, root.find("mgmtservice"), MGMTSERVICE)
    kw["mgmt_listen"] = mgmt.pop("listen") if mgmt.pop("enabled") else None
    kw.update(mgmt)
    if kw["token_file"]:
        _check_token_file(r, root.find("mgmtservice"), kw["token_file"])
    poll = root.find("poll")
    if poll is not None:
        p = Poll(**_relative_paths(r, read_all(r, poll, POLL), "secret_file", "tls_ca"))
        if p.timeout >= p.interval:
            raise r.error(poll, f"<poll> timeout={p.timeout:g} must be shorter than interval={p.interval:g}")
        kw["poll"] = p
    elif refresh_delay is not None:
        # The ltsp-cluster form: its refresh-delay is the poll interval, and a short one still gets a timeout.
        kw["poll"] = Poll(interval=refresh_delay, timeout=min(POLL.timeout.default, refresh_delay / 2))
    kw.update({f"log_{name}": value for name, value in read_all(r, root.find("log"), LOG).items()})
    dns = root.find("dns")
    if dns is not None:
        kw["dns"] = _load_dns(r, dns, groups)
        _check_lease_time(r, dns, kw["dns"], kw.get("poll", Poll()).interval)
    peers = root.find("peers")
    if peers is not None:
        kw["peers"] = _load_peers(r, peers)
    haproxy = root.find("haproxy-agent")
    if haproxy is not None:
        kw["haproxy"] = _load_haproxy(r, haproxy)
    haproxy_map = root.find("haproxy-map")
    if haproxy_map is not None:
        values = read_all(r, haproxy_map, HAPROXY_MAP)
        if values["group"] not in groups:
            raise r.error(haproxy_map, f"<haproxy-map> names group {values['group']!r}, which <nodes> does not have")
        kw["haproxy_map"] = HaproxyMap(**values, line=haproxy_map.sourceline)
    broker = root.find("x2gobroker")
    if broker is not None:
        kw["x2gobroker"] = x2go.load_broker(r, broker, groups, lambda p: _config_relative(r, p))
    checker = root.find("x2go-loadchecker")
    if checker is not None:
        kw["x2go_loadchecker"] = x2go.load_loadchecker(r, checker, lambda p: _config_relative(r, p))
    return ServerConfig(path=path, nodes=nodes, groups=groups, default_group=default,
                        rules=rules, requires=requires, promql=promql, **kw)


__all__ = ["Alias", "ConfigError", "DEFAULT_PATH", "default_path", "DEFAULT_RULES", "DEFAULT_STATE_FILE", "Dns", "EMAIL", "Group",
           "HEALTH_URL_SCHEMES", "Node", "Poll", "Require", "Rule", "ServerConfig", "load"]
