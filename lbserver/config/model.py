"""lbsconfig.xml's content as frozen dataclasses: what the rest of lbserver reads.

:func:`lbserver.config.load` builds a :class:`ServerConfig` from a file; the
other dataclasses are its parts. Field defaults come from the declarations of
:mod:`lbserver.config.settings`, so a field and the attribute it is read from
never disagree. :data:`DEFAULT_RULES` are the rules used without <rules>.
"""

from __future__ import annotations

import ipaddress
import ssl
import urllib.parse
from dataclasses import dataclass, field

from common.sockets import format_listen
from lbserver.config.expr import Expr
from lbserver.config.settings import (AGENT_PORTS, ALIAS, DNS, GROUP, HAPROXY_AGENT, HAPROXY_MAP, LBSERVICE, LOG,
                                      X2GO_LOADCHECKER, X2GO_PROFILE, X2GOBROKER,
                                      MGMTSERVICE, NODE, PEERS, POLL, REQUIRE, VARIABLE)

@dataclass(frozen=True)
class Rule:
    """``<variable>``: one variable's contribution to a node's weight."""

    name: str
    weight: float
    capacity: float | Expr
    """A number, or an :class:`~lbserver.config.expr.Expr` evaluated per node at each poll."""
    critical: float | Expr | None = VARIABLE.critical.default
    per_cpu: bool = VARIABLE.per_cpu.default
    per_session: float = VARIABLE.per_session.default
    line: int = 0
    lag: float | None = VARIABLE.lag.default
    """Seconds the variable takes to show a new session; None: the variable's default (see DEFAULT_LAGS)."""
    kb_memory: bool = False
    """Written in the ltsp-cluster form (a <rule> child): memory variables are taken in kB."""


@dataclass(frozen=True)
class Require:
    """``<require>``: a condition a node must meet to be healthy."""

    name: str
    equals: str | None = REQUIRE.equals.default
    min: float | None = REQUIRE.min.default
    max: float | None = REQUIRE.max.default
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
    ip: str | None = NODE.ip.default
    ip6: str | None = NODE.ip6.default
    line: int = field(default=0, compare=False)  # where it is written, not what it is
    secret_file: str | None = NODE.secret_file.default
    """Where the agent's shared secret came from (the node's or <poll>'s secret-file)."""
    secret: str | None = field(default=None, repr=False)
    """Sent as the HTTP Basic password of every poll; None: no authentication."""
    tls_ca: str | None = NODE.tls_ca.default
    """CA file the agent's certificate must chain to (https:// only); None: the system's CAs."""
    ssl_context: ssl.SSLContext | None = field(default=None, repr=False, compare=False)
    """Client TLS context for an https:// address (shared by nodes with the same tls-ca)."""
    max_sessions: int | None = NODE.max_sessions.default
    """Sessions at which it takes no new one (its own ``max-sessions``, else its group's; None: no limit)."""
    source: str = NODE.source.default
    """Where its figures come from: ``agent``, ``node-exporter`` (its page scraped) or ``prometheus`` (its group's)."""

    @property
    def tls(self) -> bool:
        """Whether the agent is polled over TLS (an https:// address)."""
        return self.address.lower().startswith("https:")

    @property
    def answer_ip(self) -> str:
        """What ``$IP`` returns: the ``ip`` attribute, else the address's host."""
        return self.ip or self.host


def agent_host_port(address: str) -> tuple[str, int]:
    """The host and port of an agent's URL (a <node address>, or one a site balancer reports).

    The port defaults by scheme (:data:`~lbserver.config.settings.AGENT_PORTS`).
    Raises ValueError for anything but an http or https URL with a host.
    """
    url = urllib.parse.urlsplit(address)  # raises ValueError on "http://[bad"
    port = url.port  # and on a bad port
    if url.scheme not in AGENT_PORTS or not url.hostname:
        raise ValueError(f"{address[:80]!r} is not an agent URL")
    return url.hostname, port or AGENT_PORTS[url.scheme]


@dataclass(frozen=True)
class Group:
    """A named set of nodes (by name, in file order)."""

    name: str
    nodes: tuple[str, ...]
    default: bool = GROUP.default.default
    line: int = 0
    source: str | None = GROUP.from_.default
    """``from``: the management URL of the balancer this group's nodes are read from (None: local nodes)."""
    remote_group: str | None = GROUP.remote_group.default
    """The group of that balancer (its own name when not given)."""
    token_file: str | None = GROUP.token_file.default
    token: str | None = field(default=None, repr=False, compare=False)
    """The other balancer's admin token, sent as ``Authorization: Bearer`` (None: none)."""
    max_sessions: int | None = GROUP.max_sessions.default
    """The ``max-sessions`` of its nodes that give none (None: no limit)."""
    prometheus: str | None = GROUP.prometheus.default
    """The base URL of the Prometheus server its agentless nodes are read from (None: none)."""
    discover: str | None = GROUP.discover.default
    """With ``prometheus``: the PromQL query whose series are its nodes."""
    instances: tuple[tuple[str, str | None], ...] = ()
    """With ``prometheus``: the ``<node instance>`` children, as (instance, name or None)."""
    max_series: int = GROUP.max_series.default
    user: str | None = GROUP.user.default
    """With ``prometheus``: the HTTP Basic user, ``token`` its password (None: ``token`` is a bearer token)."""

    @property
    def feed_url(self) -> str | None:
        """The URL its nodes are read from at each poll: the other balancer's or the Prometheus server's."""
        return self.source or self.prometheus

    @property
    def feed(self) -> tuple | None:
        """What its nodes are read from at each poll (None: the file's nodes only); equal feeds, equal members."""
        if self.source is not None:
            return ("from", self.source, self.remote_group, self.token)
        if self.prometheus is not None:
            return ("prometheus", self.prometheus, self.discover, self.instances, self.user, self.token,
                    self.max_series)
        return None


@dataclass(frozen=True)
class Poll:
    """``<poll>``: how agents are polled and how health flips."""

    interval: float = POLL.interval.default
    timeout: float = POLL.timeout.default
    rise: int = POLL.rise.default
    fall: int = POLL.fall.default
    max_reply_bytes: int = POLL.max_reply_bytes.default
    secret_file: str | None = POLL.secret_file.default
    """Default secret-file of every <node> that gives none."""
    tls_ca: str | None = POLL.tls_ca.default
    """Default tls-ca of every https:// <node> that gives none."""


@dataclass(frozen=True)
class Alias:
    """``<alias>``: a DNS name published from a group's best nodes."""

    name: str
    group: str
    enabled: bool = ALIAS.enabled.default
    num_out: int | None = ALIAS.num_out.default
    best_hosts: int | None = ALIAS.best_hosts.default
    health_url: str | None = ALIAS.health_url.default
    health_max_age: float = ALIAS.health_max_age.default
    line: int = 0


@dataclass(frozen=True)
class Dns:
    """``<dns>``: where and how aliases are published, and who is told."""

    server: str
    port: int
    zone: str
    key_file: str
    ttl: int = DNS.ttl.default
    timeout: float = DNS.timeout.default
    key_name: str | None = DNS.key_name.default
    key_algorithm: str = DNS.key_algorithm.default
    contact: str | None = DNS.contact.default
    smtp_host: str = DNS.smtp.default[0]
    smtp_port: int = DNS.smtp.default[1]
    smtp_starttls: bool = DNS.smtp_starttls.default
    smtp_user: str | None = DNS.smtp_user.default
    smtp_password_file: str | None = DNS.smtp_password_file.default
    mail_from: str | None = DNS.mail_from.default
    alert_state_file: str | None = DNS.alert_state_file.default
    lease: str = DNS.lease.default
    """The lease record's name, relative to the zone; empty: no lease."""
    lease_time: float | None = DNS.lease_time.default
    """None: 20 minutes, at least three poll intervals (see lbserver.dns.lease.lease_settings)."""
    lease_holder: str | None = DNS.lease_holder.default
    """None: this host's name and the terminal port."""
    aliases: tuple[Alias, ...] = ()
    line: int = 0


@dataclass(frozen=True)
class Peer:
    """``<peer>``: another balancer serving the same terminals."""

    host: str
    port: int
    line: int = field(default=0, compare=False)

    @property
    def address(self) -> str:
        """``host:port`` as written for the admin (IPv6 in brackets)."""
        return format_listen((self.host, self.port))


@dataclass(frozen=True)
class Peers:
    """``<peers>``: where peer messages are received, with which secret, and from whom."""

    listen: tuple[str, int] = PEERS.listen.default
    heartbeat: float = PEERS.heartbeat.default
    secret_file: str | None = PEERS.secret_file.default
    secret: str | None = field(default=None, repr=False)
    """The shared secret (HMAC key); None: messages are not signed."""
    peers: tuple[Peer, ...] = ()
    line: int = field(default=0, compare=False)


@dataclass(frozen=True)
class HaproxyAgent:
    """``<haproxy-agent>``: the HAProxy agent-check port and who may use it."""

    listen: tuple[str, int] = HAPROXY_AGENT.listen.default
    read_timeout: float = HAPROXY_AGENT.read_timeout.default
    max_connections: int = HAPROXY_AGENT.max_connections.default
    allow: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    """The ``<allow>`` networks; empty: loopback only."""
    line: int = field(default=0, compare=False)


@dataclass(frozen=True)
class HaproxyMap:
    """``<haproxy-map>``: which group's sessions go into which HAProxy map, through which runtime socket."""

    group: str
    socket: str = HAPROXY_MAP.socket.default
    file: str = HAPROXY_MAP.file.default
    timeout: float = HAPROXY_MAP.timeout.default
    line: int = field(default=0, compare=False)


def answer_for(node: Node, returns: str) -> str:
    """What a client is sent for ``node`` (the ``returns`` setting of ``<lbservice>``)."""
    if returns == "$NAME":
        return node.name
    if returns == "$ADDRESS":
        return node.host
    return node.answer_ip


@dataclass(frozen=True)
class X2goProfile:
    """One ``<profile>`` of ``<x2gobroker>``: a session profile offered to X2Go clients."""

    name: str
    group: str
    command: str = X2GO_PROFILE.command.default
    sshport: int = X2GO_PROFILE.sshport.default
    user: str | None = X2GO_PROFILE.user.default
    line: int = field(default=0, compare=False)


@dataclass(frozen=True)
class X2goBroker:
    """``<x2gobroker>``: the X2Go session broker, who may ask it, how users are checked, its profiles."""

    listen: tuple[str, int] = X2GOBROKER.listen.default
    auth: str = X2GOBROKER.auth.default
    pam_service: str = X2GOBROKER.pam_service.default
    tls_cert: str | None = X2GOBROKER.tls_cert.default
    tls_key: str | None = X2GOBROKER.tls_key.default
    password_over_http: bool = X2GOBROKER.password_over_http.default
    timeout: float = X2GOBROKER.timeout.default
    max_connections: int = X2GOBROKER.max_connections.default
    max_failures: int = X2GOBROKER.max_failures.default
    allow: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    """The ``<allow>`` networks; empty: loopback only."""
    profiles: tuple[X2goProfile, ...] = ()
    line: int = field(default=0, compare=False)


@dataclass(frozen=True)
class X2goLoadChecker:
    """``<x2go-loadchecker>``: the UNIX socket where x2gobroker asks for load factors."""

    socket: str = X2GO_LOADCHECKER.socket.default
    mode: str = X2GO_LOADCHECKER.mode.default
    socket_group: str | None = X2GO_LOADCHECKER.socket_group.default
    line: int = field(default=0, compare=False)


@dataclass(frozen=True)
class ServerConfig:
    """The whole of lbsconfig.xml."""

    path: str
    nodes: dict[str, Node]
    groups: dict[str, Group]
    default_group: str
    listen: tuple[str, int] = LBSERVICE.listen.default
    returns: str = LBSERVICE.returns.default
    algorithm: str = LBSERVICE.algorithm.default
    idle_timeout: float = LBSERVICE.idle_timeout.default
    max_connections: int = LBSERVICE.max_connections.default
    mgmt_listen: tuple[str, int] | None = MGMTSERVICE.listen.default
    token_file: str | None = MGMTSERVICE.token_file.default
    state_file: str = MGMTSERVICE.state_file.default
    poll: Poll = field(default_factory=Poll)
    rules: tuple[Rule, ...] = ()
    requires: tuple[Require, ...] = ()
    dns: Dns | None = None
    peers: Peers | None = None
    haproxy: HaproxyAgent | None = None
    haproxy_map: HaproxyMap | None = None
    x2gobroker: X2goBroker | None = None
    x2go_loadchecker: X2goLoadChecker | None = None
    promql: dict[str, str] = field(default_factory=dict)
    """``<variables>``: each PromQL variable's expression, by name."""
    log_file: str | None = LOG.file.default
    log_level: str | None = LOG.level.default


__all__ = ["Alias", "DEFAULT_RULES", "Dns", "Group", "HaproxyAgent", "HaproxyMap", "Node", "Peer", "Peers", "Poll",
           "X2goBroker", "X2goLoadChecker", "X2goProfile",
           "Require", "Rule", "ServerConfig", "agent_host_port", "answer_for"]
