"""lbsconfig.xml: the balancer's configuration as typed, immutable objects.

:func:`load` parses and validates a file (structure by the RELAX NG schema,
values and cross-references here) and returns a :class:`ServerConfig`, or
raises :class:`~common.xmlconfig.ConfigError` with ``FILE:LINE: message``.
"""

from __future__ import annotations

import logging
import os
import re
import ssl
import urllib.parse
from dataclasses import dataclass, field

import dns.exception
import dns.name
from lxml import etree

from common.builtins import BUILTIN_VARIABLES
from common.secretfile import SecretFileError, permission_problem, read_secret_file
from common.tls import TlsConfigError, client_context
from common.xmlconfig import ConfigError, Reader, parse_file, parse_hostport

DEFAULT_PATH = "/etc/mille-xterm/lbsconfig.xml"
DEFAULT_STATE_FILE = "/var/lib/mille-xterm/lbserver.state"
RETURNS = ("$IP", "$NAME", "$ADDRESS")
VARIABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
NODE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
DNS_LABELS = re.compile(r"^([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?)*\.?$")
EMAIL = re.compile(r"^[^@\s,;<>]+@[^@\s,;<>]+$")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rule:
    """``<variable>``: one variable's contribution to a node's weight."""

    name: str
    weight: float
    capacity: float
    critical: float | None = None
    per_cpu: bool = False
    per_session: float = 0.0
    line: int = 0


@dataclass(frozen=True)
class Require:
    """``<require>``: a condition a node must meet to be healthy."""

    name: str
    equals: str | None = None
    min: float | None = None
    max: float | None = None
    line: int = 0


# Rules used where no <rules> are given to the storm simulator (and a sane
# starting point for lbsconfig.xml): load per core, memory with a critical
# ceiling, and sessions per core, where each new terminal is known to add
# exactly one session and is assumed to add 0.1 to the load average.
DEFAULT_RULES: tuple[Rule, ...] = (
    Rule(name="LOADAVG", weight=50.0, capacity=1.0, per_cpu=True, per_session=0.1),
    Rule(name="MEMUSEDPCT", weight=30.0, capacity=90.0, critical=98.0),
    Rule(name="NBSESSIONS", weight=20.0, capacity=10.0, per_cpu=True, per_session=1.0),
)


@dataclass(frozen=True)
class Node:
    """One application server (its agent's URL)."""

    name: str
    address: str
    host: str
    port: int
    ip: str | None = None
    ip6: str | None = None
    line: int = field(default=0, compare=False)  # where it is written, not what it is
    secret_file: str | None = None
    """Where the agent's shared secret came from (the node's or <poll>'s secret-file)."""
    secret: str | None = field(default=None, repr=False)
    """Sent as the HTTP Basic password of every poll; None: no authentication."""
    tls_ca: str | None = None
    """CA file the agent's certificate must chain to (https:// only); None: the system's CAs."""
    ssl_context: ssl.SSLContext | None = field(default=None, repr=False, compare=False)
    """Client TLS context for an https:// address (shared by nodes with the same tls-ca)."""

    @property
    def tls(self) -> bool:
        """Whether the agent is polled over TLS (an https:// address)."""
        return self.address.lower().startswith("https:")

    @property
    def answer_ip(self) -> str:
        """What ``$IP`` returns: the ``ip`` attribute, else the address's host."""
        return self.ip or self.host


@dataclass(frozen=True)
class Group:
    """A named set of nodes (by name, in file order)."""

    name: str
    nodes: tuple[str, ...]
    default: bool = False
    line: int = 0


@dataclass(frozen=True)
class Poll:
    """``<poll>``: how agents are polled and how health flips."""

    interval: float = 10.0
    timeout: float = 2.0
    rise: int = 2
    fall: int = 2
    max_reply_bytes: int = 1024 * 1024
    secret_file: str | None = None
    """Default secret-file of every <node> that gives none."""
    tls_ca: str | None = None
    """Default tls-ca of every https:// <node> that gives none."""


@dataclass(frozen=True)
class Alias:
    """``<alias>``: a DNS name published from a group's best nodes."""

    name: str
    group: str
    enabled: bool = True
    num_out: int | None = None
    best_hosts: int | None = None
    health_url: str | None = None
    health_max_age: float = 3600.0
    line: int = 0


@dataclass(frozen=True)
class Dns:
    """``<dns>``: where and how aliases are published, and who is told."""

    server: str
    port: int
    zone: str
    key_file: str
    ttl: int = 60
    timeout: float = 5.0
    key_name: str | None = None
    key_algorithm: str = "hmac-sha256"
    contact: str | None = None
    smtp_host: str = "localhost"
    smtp_port: int = 25
    smtp_starttls: bool = False
    smtp_user: str | None = None
    smtp_password_file: str | None = None
    mail_from: str | None = None
    alert_state_file: str | None = None
    aliases: tuple[Alias, ...] = ()
    line: int = 0


@dataclass(frozen=True)
class ServerConfig:
    """The whole of lbsconfig.xml."""

    path: str
    nodes: dict[str, Node]
    groups: dict[str, Group]
    default_group: str
    listen: tuple[str, int] = ("0.0.0.0", 8008)
    returns: str = "$IP"
    idle_timeout: float = 10.0
    max_connections: int = 4096
    mgmt_listen: tuple[str, int] | None = ("127.0.0.1", 8009)
    token_file: str | None = None
    state_file: str = DEFAULT_STATE_FILE
    poll: Poll = field(default_factory=Poll)
    rules: tuple[Rule, ...] = ()
    requires: tuple[Require, ...] = ()
    dns: Dns | None = None
    log_file: str | None = None
    log_level: str | None = None


def _node_url(r: Reader, elem: etree._Element) -> tuple[str, int]:
    raw = r.required(elem, "address")
    try:
        parsed = urllib.parse.urlsplit(raw)
        port = parsed.port
    except ValueError:  # "http://[bad" raises in urlsplit itself, a bad port in .port
        parsed, port = urllib.parse.urlsplit(""), -1
    if parsed.scheme not in ("http", "https") or not parsed.hostname or port == -1:
        raise r.error(elem, f"<node> attribute address={raw!r}: expected a URL such as http://10.0.0.1:8001")
    return parsed.hostname, port or (443 if parsed.scheme == "https" else 8001)


class _Credentials:
    """Reads each secret file and builds each TLS context once per load, however many nodes share it."""

    def __init__(self, r: Reader) -> None:
        self.r = r
        self._secrets: dict[str, str] = {}
        self._contexts: dict[str | None, ssl.SSLContext] = {}

    def secret(self, elem: etree._Element, path: str) -> str:
        """The secret in ``path`` (named by ``elem``'s secret-file); warns once on loose permissions."""
        if path not in self._secrets:
            try:
                self._secrets[path] = read_secret_file(path)
            except SecretFileError as exc:
                raise self.r.error(elem, f"<{elem.tag}> secret-file: {exc}") from None
            problem = permission_problem(path)
            if problem:
                # A warning, not an error: see common.secretfile for why.
                log.warning("%s:%s: <%s> secret-file: %s", self.r.path, elem.sourceline, elem.tag, problem)
        return self._secrets[path]

    def context(self, elem: etree._Element, ca_file: str | None) -> ssl.SSLContext:
        """The client TLS context verifying against ``ca_file`` (None: the system's CAs)."""
        if ca_file not in self._contexts:
            try:
                self._contexts[ca_file] = client_context(ca_file)
            except TlsConfigError as exc:
                raise self.r.error(elem, f"<{elem.tag}> tls-ca: {exc}") from None
        return self._contexts[ca_file]


def _node_security(r: Reader, n: etree._Element, poll: etree._Element | None, creds: _Credentials,
                   tls: bool) -> dict:
    """secret-file and tls-ca of a node, falling back to <poll>'s, read and checked."""
    kw: dict = {}
    own_secret = r.text(n, "secret-file")
    secret_elem = n if own_secret is not None else poll
    secret_file = own_secret if own_secret is not None else (r.text(poll, "secret-file") if poll is not None else None)
    if secret_file is not None:
        kw["secret_file"] = _config_relative(r, secret_file)
        kw["secret"] = creds.secret(secret_elem, kw["secret_file"])
    own_ca = r.text(n, "tls-ca")
    if own_ca is not None and not tls:
        raise r.error(n, f"<node> tls-ca applies to https:// addresses only (address={n.get('address')!r})")
    if tls:
        ca_elem = n if own_ca is not None else poll
        ca = own_ca if own_ca is not None else (r.text(poll, "tls-ca") if poll is not None else None)
        kw["tls_ca"] = _config_relative(r, ca) if ca is not None else None
        kw["ssl_context"] = creds.context(ca_elem if ca is not None else n, kw["tls_ca"])
    return kw


def _load_nodes(r: Reader, root: etree._Element) -> tuple[dict[str, Node], dict[str, Group], str]:
    poll = root.find("poll")
    creds = _Credentials(r)
    if poll is not None and r.text(poll, "tls-ca") is not None:
        creds.context(poll, _config_relative(r, r.text(poll, "tls-ca")))  # checked even if no node uses it
    nodes: dict[str, Node] = {}
    groups: dict[str, Group] = {}
    default: str | None = None
    for g in root.find("nodes").iter("group"):
        gname = r.required(g, "name")
        if gname in groups:
            raise r.error(g, f"duplicate group name {gname!r} (first at line {groups[gname].line})")
        members: list[str] = []
        for n in g.iter("node"):
            name = r.required(n, "name")
            if not NODE_NAME.match(name):
                raise r.error(n, f"<node> attribute name={name!r}: use letters, digits, '.', '_' and '-'")
            if name in members:
                raise r.error(n, f"duplicate node name {name!r} in group {gname!r}")
            host, port = _node_url(r, n)
            address = r.required(n, "address")
            node = Node(name=name, address=address, host=host, port=port,
                        ip=r.text(n, "ip"), ip6=r.text(n, "ip6"), line=n.sourceline,
                        **_node_security(r, n, poll, creds, address.lower().startswith("https:")))
            prev = nodes.get(name)
            if prev is not None and (prev.address, prev.ip, prev.ip6, prev.secret_file, prev.tls_ca) != (
                    node.address, node.ip, node.ip6, node.secret_file, node.tls_ca):
                raise r.error(n, f"node {name!r} is defined differently at line {prev.line}; "
                                 "a node in several groups must have the same attributes")
            nodes.setdefault(name, node)
            members.append(name)
        if not members:
            raise r.error(g, f"group {gname!r} has no <node>")
        is_default = r.boolean(g, "default")
        if is_default:
            if default is not None:
                raise r.error(g, f"two default groups: {default!r} and {gname!r}")
            default = gname
        groups[gname] = Group(name=gname, nodes=tuple(members), default=is_default, line=g.sourceline)
    if default is None:
        default = next(iter(groups))
    return nodes, groups, default


def _load_rules(r: Reader, root: etree._Element) -> tuple[tuple[Rule, ...], tuple[Require, ...]]:
    rules: list[Rule] = []
    requires: list[Require] = []
    elem = root.find("rules")
    if elem is None:
        return DEFAULT_RULES, ()
    seen: dict[str, int] = {}
    for e in elem:
        name = r.required(e, "name")
        if not VARIABLE_NAME.match(name):
            raise r.error(e, f"<{e.tag}> attribute name={name!r}: not a variable name")
        if e.tag == "variable":
            if name in seen:
                raise r.error(e, f"duplicate rule for variable {name!r} (first at line {seen[name]})")
            seen[name] = e.sourceline
            if not r.boolean(e, "custom") and name not in BUILTIN_VARIABLES:
                raise r.error(e, f"unknown built-in variable {name!r}; built-ins are {', '.join(BUILTIN_VARIABLES)}"
                                 " (for a variable defined in the agents' lbaconfig.xml add custom=\"true\")")
            rules.append(Rule(
                name=name,
                weight=r.number(e, "weight", positive=True),
                capacity=r.number(e, "capacity", positive=True),
                critical=r.number(e, "critical"),
                per_cpu=r.boolean(e, "per-cpu"),
                per_session=r.number(e, "per-session", 0.0, minimum=0.0),
                line=e.sourceline,
            ))
        else:
            req = Require(name=name, equals=r.text(e, "equals"), min=r.number(e, "min"),
                          max=r.number(e, "max"), line=e.sourceline)
            if req.equals is None and req.min is None and req.max is None:
                raise r.error(e, "<require> needs equals, min or max")
            if req.min is not None and req.max is not None and req.min > req.max:
                raise r.error(e, "<require> min is greater than max")
            requires.append(req)
    return tuple(rules), tuple(requires)


def _config_relative(r: Reader, path: str) -> str:
    """A path from the config, relative ones taken from the config file's directory."""
    if os.path.isabs(path):
        return path
    return os.path.join(os.path.dirname(os.path.abspath(r.path)), path)


def _check_dns_extras(r: Reader, elem: etree._Element, dns_cfg: "Dns") -> None:
    """Checks of <dns> beyond the structure: key file, algorithm, names, mail settings."""
    from . import dnskey, healthurl  # local: keeps config importable without dnspython loaded early

    if dnskey.normalize_algorithm(dns_cfg.key_algorithm) is None:
        raise r.error(elem, f"<dns> attribute key-algorithm={dns_cfg.key_algorithm!r}: expected one of "
                            f"{', '.join(dnskey.ALGORITHMS)}")
    try:
        key = dnskey.load_key(dns_cfg.key_file, dns_cfg.key_name, dns_cfg.key_algorithm)
    except dnskey.KeyFileError as exc:
        raise r.error(elem, f"<dns> key-file: {exc}") from None
    given = elem.get("key-algorithm")
    if given is not None and dnskey.normalize_algorithm(given) != key.algorithm:
        raise r.error(elem, f"<dns> key-algorithm={given!r} but key {key.name!r} in {dns_cfg.key_file} uses "
                            f"{key.algorithm}: remove key-algorithm or make them agree")
    try:
        if not DNS_LABELS.match(dns_cfg.zone):
            raise dns.exception.SyntaxError
        origin = dns.name.from_text(dns_cfg.zone)
    except dns.exception.DNSException:
        raise r.error(elem, f"<dns> attribute zone={dns_cfg.zone!r}: not a valid DNS name") from None
    for a, ae in zip(dns_cfg.aliases, elem.iter("alias")):
        try:
            if not DNS_LABELS.match(a.name):
                raise dns.exception.SyntaxError
            name = dns.name.from_text(a.name, origin=origin)
        except dns.exception.DNSException:
            raise r.error(ae, f"<alias> attribute name={a.name!r}: not a valid DNS name") from None
        if not name.is_subdomain(origin):
            raise r.error(ae, f"<alias> attribute name={a.name!r}: not inside zone {dns_cfg.zone!r} "
                              "(give the name relative to the zone, e.g. wms-alice)")
        if a.health_url is not None:
            try:
                scheme = urllib.parse.urlsplit(a.health_url).scheme.lower()
            except ValueError:  # "http://[bad"
                scheme = ""
            if scheme not in healthurl.SCHEMES:
                raise r.error(ae, f"<alias> attribute health-url={a.health_url!r}: expected an http://, "
                                  "https:// or file:// URL")
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


def _load_dns(r: Reader, elem: etree._Element, groups: dict[str, Group]) -> Dns:
    zone = r.required(elem, "zone").rstrip(".")
    smtp_host, smtp_port = "localhost", 25
    if elem.get("smtp"):
        smtp_host, smtp_port = r._convert(elem, "smtp", elem.get("smtp"),
                                          lambda s: parse_hostport(s, 25),
                                          "HOST[:PORT]")
    ttl = r.integer(elem, "ttl", 60)
    if ttl < 60:
        raise r.error(elem, f"<dns> attribute ttl={ttl}: must be at least 60 seconds "
                            "(resolvers and caches misbehave with shorter TTLs)")
    aliases: list[Alias] = []
    for a in elem.iter("alias"):
        name = r.required(a, "name")
        gname = r.required(a, "group")
        if gname not in groups:
            raise r.error(a, f"<alias name={name!r}> names unknown group {gname!r}")
        if any(x.name == name for x in aliases):
            raise r.error(a, f"duplicate alias {name!r}")
        size = len(groups[gname].nodes)
        num_out = r.integer(a, "num-out")
        best = r.integer(a, "best-hosts")
        if num_out is not None and best is not None:
            raise r.error(a, f"<alias name={name!r}>: give num-out or best-hosts, not both")
        if num_out is not None and not 0 < num_out < size:
            raise r.error(a, f"<alias name={name!r}> num-out={num_out}: must satisfy 0 < num-out < {size} "
                             f"(the number of nodes in group {gname!r})")
        if best is not None and not (best == -1 or best >= 1):
            raise r.error(a, f"<alias name={name!r}> best-hosts={best}: must be -1 (all healthy) or at least 1")
        if num_out is None and best is None:
            # The original arbiter leaves one server out; a one-node group publishes it.
            num_out, best = (1, None) if size > 1 else (None, -1)
        aliases.append(Alias(name=name, group=gname, enabled=r.boolean(a, "enabled", True), num_out=num_out,
                             best_hosts=best, health_url=r.text(a, "health-url"),
                             health_max_age=r.number(a, "health-max-age", 3600.0, positive=True),
                             line=a.sourceline))
    password_file = r.text(elem, "smtp-password-file")
    state_file = r.text(elem, "alert-state-file")
    dns_cfg = Dns(
        server=r.required(elem, "server"),
        port=r.integer(elem, "port", 53, minimum=1),
        zone=zone,
        key_file=_config_relative(r, r.required(elem, "key-file")),
        ttl=ttl,
        timeout=r.number(elem, "timeout", 5.0, positive=True),
        key_name=r.text(elem, "key-name"),
        key_algorithm=r.text(elem, "key-algorithm", "hmac-sha256").lower(),
        contact=r.text(elem, "contact"),
        smtp_host=smtp_host,
        smtp_port=smtp_port,
        smtp_starttls=r.boolean(elem, "smtp-starttls"),
        smtp_user=r.text(elem, "smtp-user"),
        smtp_password_file=_config_relative(r, password_file) if password_file else None,
        mail_from=r.text(elem, "mail-from"),
        alert_state_file=_config_relative(r, state_file) if state_file else None,
        aliases=tuple(aliases),
        line=elem.sourceline,
    )
    if dns_cfg.port > 65535:
        raise r.error(elem, f"<dns> attribute port={dns_cfg.port}: must be at most 65535")
    _check_dns_extras(r, elem, dns_cfg)
    return dns_cfg


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


def load(path: str = DEFAULT_PATH) -> ServerConfig:
    """Load and validate lbsconfig.xml; raise ConfigError naming file and line."""
    root = parse_file(path, "lbsconfig.rng")
    r = Reader(path)
    seen: dict[str, int] = {}
    for child in root:
        if child.tag in seen:
            raise r.error(child, f"<{child.tag}> appears twice (first at line {seen[child.tag]})")
        seen[child.tag] = child.sourceline
    if "nodes" not in seen:
        raise r.error(root, "missing element <nodes> (the application servers to balance)")
    nodes, groups, default = _load_nodes(r, root)
    rules, requires = _load_rules(r, root)
    kw: dict = {}
    svc = root.find("lbservice")
    if svc is not None:
        kw["listen"] = r.listen(svc, "listen", "0.0.0.0:8008")
        returns = r.text(svc, "returns", "$IP")
        if returns not in RETURNS:
            raise r.error(svc, f"<lbservice> attribute returns={returns!r}: expected one of {', '.join(RETURNS)}")
        kw["returns"] = returns
        kw["idle_timeout"] = r.number(svc, "idle-timeout", 10.0, positive=True)
        kw["max_connections"] = r.integer(svc, "max-connections", 4096, minimum=1)
    mgmt = root.find("mgmtservice")
    if mgmt is not None:
        kw["mgmt_listen"] = r.listen(mgmt, "listen", "127.0.0.1:8009")
        kw["token_file"] = r.text(mgmt, "token-file")
        if kw["token_file"]:
            _check_token_file(r, mgmt, kw["token_file"])
        kw["state_file"] = r.text(mgmt, "state-file", DEFAULT_STATE_FILE)
    poll = root.find("poll")
    if poll is not None:
        p = Poll(interval=r.number(poll, "interval", 10.0, positive=True),
                 timeout=r.number(poll, "timeout", 2.0, positive=True),
                 rise=r.integer(poll, "rise", 2, minimum=1),
                 fall=r.integer(poll, "fall", 2, minimum=1),
                 max_reply_bytes=r.integer(poll, "max-reply-bytes", 1024 * 1024, minimum=1024),
                 secret_file=_config_relative(r, poll.get("secret-file")) if poll.get("secret-file") else None,
                 tls_ca=_config_relative(r, poll.get("tls-ca")) if poll.get("tls-ca") else None)
        if p.timeout >= p.interval:
            raise r.error(poll, f"<poll> timeout={p.timeout:g} must be shorter than interval={p.interval:g}")
        kw["poll"] = p
    logel = root.find("log")
    if logel is not None:
        kw["log_file"] = r.text(logel, "file")
        kw["log_level"] = r.text(logel, "level")
    dns = root.find("dns")
    if dns is not None:
        kw["dns"] = _load_dns(r, dns, groups)
    return ServerConfig(path=path, nodes=nodes, groups=groups, default_group=default,
                        rules=rules, requires=requires, **kw)


__all__ = ["Alias", "ConfigError", "DEFAULT_RULES", "Dns", "Group", "Node", "Poll", "Require", "Rule", "ServerConfig", "load"]
