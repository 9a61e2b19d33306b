"""lbsconfig.xml's settings: every attribute declared once.

Each element's attributes are declared here with their kind, default, bounds
and meaning (see :mod:`common.settings`). A file's attributes are checked
against them as it is parsed, the loader (:mod:`lbserver.config.loader`)
reads each element's through :func:`common.settings.read_all`, the
dataclasses of :mod:`lbserver.config.model` take their field defaults from
them, and docs/settings.md and lbsconfig.xml(5) are generated from
:data:`CONFIG_FILE`. The structure of the file (which element goes where) is
the RELAX NG schema's (``common/schemas/lbsconfig.rng``).
"""

from __future__ import annotations

from common.settings import AGENT_PORT, LOG_LEVELS, ConfigFile, Element, Setting
from lbserver.config import tsigkey

DEFAULT_PATH = "/etc/mille-xterm/lbsconfig.xml"
LEGACY_PATH = "/etc/ltsp/lbsconfig.xml"
"""Where the ltsp-cluster balancer kept its file: read when DEFAULT_PATH does not exist."""
DEFAULT_STATE_FILE = "/var/lib/mille-xterm/lbserver.state"
RETURNS = ("$IP", "$NAME", "$ADDRESS")
"""What <lbservice returns> may name."""
AGENT_PORTS = {"http": AGENT_PORT, "https": 443}
NODE_EXPORTER_PORT = 9100
"""The port of a node_exporter <node address> that gives none."""
NODE_SOURCES = ("agent", "node-exporter")
"""What <node source> may name."""
"""The port of a <node address> that gives none, by scheme."""
HEALTH_URL_SCHEMES = ("http", "https", "file")
"""The URL schemes an <alias health-url> may use."""
ALGORITHMS = ("two-choices", "weighted-random")
"""What <lbservice algorithm> may name; the first is the default."""
DEFAULT_LAGS = {"LOADAVG": 60.0, "LOADAVG5": 300.0, "LOADAVG15": 900.0}
"""A rule's lag when it gives none, by variable: the time constants of the kernel's load averages."""

LBSERVICE = Element(
    "lbservice", "The terminal port, where terminals ask which server to use.",
    Setting("listen", "listen", ("0.0.0.0", 8008),
            "Address and port of the terminal port. Use [::]:8008 for IPv6, which also accepts IPv4 where "
            "the system allows dual-stack sockets."),
    Setting("returns", "text", "$IP",
            "What a terminal receives: $IP is the node's ip attribute, else the host of its address; "
            "$NAME is the node's name; $ADDRESS is the host of its address, ignoring ip.",
            choices=RETURNS),
    Setting("algorithm", "keyword", ALGORITHMS[0],
            "How a terminal's node is chosen. two-choices draws two nodes in proportion to their weight and "
            "keeps the one whose projected load, relative to its capacity, is lower; once every node is full, "
            "two nodes drawn alike, same rule. weighted-random draws one node in proportion to its weight "
            "(the original balancer's choice), and once every node is full one in proportion to its size.",
            choices=ALGORITHMS),
    Setting("idle-timeout", "number", 10.0,
            "Seconds a terminal connection may stay silent before it is closed.", positive=True),
    Setting("max-connections", "integer", 4096,
            "Terminal connections held at once; connections beyond this are closed at once.", minimum=1),
    Setting("refresh-delay", "number", None,
            "The ltsp-cluster balancer's poll interval, in seconds: used as <poll interval> when there is no "
            "<poll>.", positive=True, default_doc="the interval of <poll>"),
    Setting("max-threads", "integer", None,
            "Accepted from ltsp-cluster files and ignored: terminals are answered by one event loop, which "
            "needs no thread per request.", minimum=1, default_doc="ignored"),
)

LBSLAVE = Element(
    "lbslave", "Accepted from ltsp-cluster files and ignored. Balancers that serve the same terminals are made "
               "peers with <peers> instead.",
    Setting("is-slave", "boolean", False, "Ignored; a warning is logged when true."),
)

MGMTSERVICE = Element(
    "mgmtservice", "The management service: status page, metrics, dashboard and admin actions.",
    Setting("listen", "listen", ("127.0.0.1", 8009), "Address and port of the management service."),
    Setting("token-file", "path", None,
            "File holding the token that allows admin actions from other hosts. Without it, admin actions "
            "are accepted from loopback only."),
    Setting("state-file", "path", DEFAULT_STATE_FILE,
            "Where the drained nodes are kept across restarts."),
    Setting("enabled", "boolean", True, "Whether the management service runs at all (false: it does not listen)."),
)

POLL = Element(
    "poll", "How the agents are polled, and how many polls in a row change a node's health.",
    Setting("interval", "number", 10.0, "Seconds between two poll cycles.", positive=True),
    Setting("timeout", "number", 2.0,
            "Seconds one agent may take to connect, read the request and answer. It must be shorter than "
            "interval.", positive=True),
    Setting("rise", "integer", 2, "Good polls in a row that bring a node back.", minimum=1),
    Setting("fall", "integer", 2, "Failed polls in a row that take a node out.", minimum=1),
    Setting("max-reply-bytes", "integer", 1024 * 1024, "Agent replies larger than this are refused.",
            minimum=1024),
    Setting("secret-file", "path", None,
            "File holding the shared secret sent to every agent as the HTTP Basic password, for nodes that "
            "give none of their own. A relative path is taken from the directory of lbsconfig.xml."),
    Setting("tls-ca", "path", None,
            "CA file that verifies the agents reached with an https address, for nodes that give none of "
            "their own. A relative path is taken from the directory of lbsconfig.xml.",
            default_doc="the system's CAs"),
)

LOG = Element(
    "log", "Where the balancer logs when it runs as a daemon. SIGUSR1 reopens the log file (logrotate sends it); SIGHUP applies a changed <log>.",
    Setting("file", "path", None, "Log file.", default_doc="syslog"),
    Setting("level", "text", None,
            "Least severe messages logged: " + ", ".join(LOG_LEVELS[:-1]) + " or " + LOG_LEVELS[-1] + ".",
            default_doc="info"),
)

PEERS = Element(
    "peers",
    "Balancers that serve the same terminals and share what they do: each pick as it happens (so login-storm "
    "compensation counts every balancer's picks) and the nodes drained with lbctl.",
    Setting("listen", "listen", ("0.0.0.0", 8010),
            "Address and UDP port on which peer messages are received, and from which they are sent."),
    Setting("secret-file", "path", None,
            "File holding a secret shared by all peers. With it every message carries an HMAC and replayed "
            "messages are refused; without it, messages are accepted from the peers' addresses alone. A "
            "relative path is taken from the directory of lbsconfig.xml."),
    Setting("heartbeat", "number", 2.0,
            "Seconds between two messages to each peer when there is nothing else to send; a peer silent "
            "for three heartbeats is shown unreachable.", positive=True),
)

PEER = Element(
    "peer", "Another balancer: messages are sent to it, and accepted only from it.",
    Setting("address", "hostport",
            doc="The peer's HOST[:PORT], where its <peers listen> receives; the port defaults to 8010.",
            required=True),
    parent="peers",
)

HAPROXY_AGENT = Element(
    "haproxy-agent",
    "The HAProxy agent-check port: HAProxy servers with agent-check, agent-addr pointing at this balancer and "
    "agent-send giving the node's name get their state and weight from the current snapshot (up ready N%, up "
    "drain, or down with the reason).",
    Setting("listen", "listen", ("0.0.0.0", 8011), "Address and TCP port of the agent-check service."),
    Setting("read-timeout", "number", 0.5,
            "Seconds a connection may take to send its line; then it is answered with what arrived (an "
            "agent-send without a line end still works). Keep it below HAProxy's agent-inter.", positive=True),
    Setting("max-connections", "integer", 256,
            "Agent-check connections held at once; connections beyond this are closed at once, and HAProxy "
            "keeps the server's last state.", minimum=1),
)

HAPROXY_ALLOW = Element(
    "allow",
    "One address or network from which HAProxy may ask. Without any allow only loopback may; other peers are "
    "disconnected at once.",
    Setting("from", "network", doc="An address, or a network in CIDR notation such as 10.0.0.0/24.",
            required=True),
    parent="haproxy-agent",
)

HAPROXY_MAP = Element(
    "haproxy-map",
    "The HAProxy session map: for each user with a session on a node of the group, his home by the return-home "
    "rule, as user-to-address lines in a map file (rewritten atomically when it changes) and in the running "
    "HAProxy through its runtime API (only the differences). HAProxy's configuration routes a connection whose "
    "RDP cookie is in the map to that address.",
    Setting("group", "text", doc="The group whose users' sessions the map holds.", required=True),
    Setting("socket", "path", "/run/haproxy/admin.sock",
            "HAProxy's runtime API socket (a stats socket at level admin)."),
    Setting("file", "path", "/etc/haproxy/mille-xterm-sessions.map",
            "The map file, named exactly as HAProxy's configuration names it in its map() converter: HAProxy "
            "loads it at start and the runtime API addresses the map by this name."),
    Setting("timeout", "number", 2.0,
            "Seconds one synchronisation with HAProxy may take (connecting, reading the map, sending the "
            "differences); past it, it is retried whole at the next poll cycle.", positive=True),
)

X2GO_AUTHS = ("none", "pam")
"""What <x2gobroker auth> may name."""

X2GOBROKER = Element(
    "x2gobroker",
    "The X2Go session broker: X2Go Client, PyHoca and Python X2Go ask it (x2gobroker 0.0.4's HTTP protocol, on "
    "/plain/ and /json/) for their session profiles and which server to start on; a user with a running or "
    "suspended X2Go session in the profile's group is sent back to it, with the session to resume.",
    Setting("listen", "listen", ("0.0.0.0", 8012), "Address and TCP port of the broker."),
    Setting("auth", "keyword", "none",
            "How a user is checked. none: any user name is taken as given and the ssh login to the chosen "
            "server is the only check (allow only trusted networks). pam: the user's password is checked with "
            "PAM before anything is answered.", choices=X2GO_AUTHS),
    Setting("pam-service", "text", "mille-xterm-x2go",
            "The PAM service (a file in /etc/pam.d) that checks passwords with auth=\"pam\"."),
    Setting("tls-cert", "path", None,
            "Certificate (PEM) to serve HTTPS with; it may hold the private key too. A relative path is taken "
            "from the directory of lbsconfig.xml."),
    Setting("tls-key", "path", None,
            "Private key (PEM) of tls-cert, when it is in a file of its own. A relative path is taken from the "
            "directory of lbsconfig.xml."),
    Setting("password-over-http", "boolean", False,
            "Whether a password is accepted over plain HTTP (without tls-cert). Off: with auth=\"pam\" and no "
            "tls-cert every request that carries a password is refused."),
    Setting("timeout", "number", 10.0,
            "Seconds a client may take to send its whole request; a slower one is answered 408 and closed.",
            positive=True),
    Setting("max-connections", "integer", 256,
            "Broker connections held at once; connections beyond this are closed at once.", minimum=1),
    Setting("max-failures", "integer", 5,
            "Wrong passwords from one address within a minute; past them that address is refused (429) until "
            "the minute is over.", minimum=1),
)

X2GO_ALLOW = Element(
    "allow",
    "One address or network from which X2Go clients may ask the broker. Without any allow only loopback may; "
    "other clients are answered 403.",
    HAPROXY_ALLOW.from_,  # the same attribute, declared once
    parent="x2gobroker",
)

X2GO_PROFILE = Element(
    "profile",
    "One session profile the broker offers: the clients list it by name, and a session of it starts on a node "
    "of its group.",
    Setting("name", "text", doc="The profile's name, as the clients show it; also its id.", required=True),
    Setting("group", "text", doc="The group whose nodes run its sessions.", required=True),
    Setting("command", "text", "XFCE",
            "The session's command: a desktop X2Go knows (KDE, GNOME, XFCE, LXDE, MATE, CINNAMON, ...) or a "
            "program, as in x2gobroker's profiles."),
    Setting("sshport", "integer", 22, "The servers' ssh port.", minimum=1, maximum=65535),
    Setting("user", "text", None,
            "The login name the client uses on the server; BROKER_USER (as in x2gobroker) stands for the "
            "user who asked.", default_doc="the client's own"),
    parent="x2gobroker",
)

X2GO_LOADCHECKER = Element(
    "x2go-loadchecker",
    "x2gobroker's load-checker socket: a site that keeps x2gobroker points its load checker here, and "
    "x2gobroker places new sessions by this balancer's weights (x2gobroker-loadchecker is then not run).",
    Setting("socket", "path", "/run/x2gobroker/x2gobroker-loadchecker.socket",
            "The UNIX socket x2gobroker connects to (X2GOBROKER_LOADCHECKER_SOCKET)."),
    Setting("mode", "text", "0660", "The socket's permission bits, in octal."),
    Setting("socket-group", "text", None,
            "The group the socket is given (x2gobroker's, usually x2gobroker).", default_doc="lbserver's"),
)

NODES = Element("nodes", "The application servers to balance, in groups. This element is required.")

GROUP = Element(
    "group", "A named set of nodes. Terminals that name no group are sent to the default group.",
    Setting("name", "text", doc="The group's name, as terminals give it.", required=True),
    Setting("default", "boolean", False,
            "Whether this is the default group. At most one group may be; without one, the first group is.",
            default_doc="false (the first group is the default)"),
    Setting("from", "url", None,
            "URL of another lbserver's management service: the group has no <node> of its own, its nodes, "
            "their variables, health and drains are read from that balancer at each poll (regional "
            "balancing)."),
    Setting("remote-group", "text", None, "With from: the group of the other balancer to take.",
            default_doc="the group's own name"),
    Setting("token-file", "path", None,
            "With from: file holding the other balancer's admin token; with prometheus: the Prometheus server's "
            "bearer token (or, with user, the password). Sent as Authorization, never logged. A relative path is taken from the "
            "directory of lbsconfig.xml."),
    Setting("prometheus", "url", None,
            "Base URL of a Prometheus server, such as http://prom:9090: the group's nodes are the series of "
            "discover and its <node instance> children, and each variable is one instant query per poll for "
            "the whole group (see docs/agentless.md)."),
    Setting("discover", "text", None,
            "With prometheus: the PromQL query whose series are the group's nodes, one per instance label, "
            "such as up{job=\"node\"}.", default_doc="only the <node instance> children"),
    Setting("user", "text", None,
            "With prometheus: the user name of HTTP Basic authentication (as Prometheus's own web.config.file "
            "asks); token-file then holds the password.", default_doc="token-file is a bearer token"),
    Setting("max-series", "integer", 20000,
            "With prometheus: the most series a query may answer (the group's nodes); a query answering more "
            "fails the group's poll.", minimum=1),
    Setting("max-sessions", "integer", None,
            "The max-sessions of the group's nodes that give none.", minimum=1, default_doc="no limit"),
    parent="nodes",
)

NODE = Element(
    "node",
    "One application server, known by its agent. A node in several groups is written in each, with the same "
    "attributes, and polled once.",
    Setting("name", "text", None, "The node's name: letters, digits, dots, underscores and hyphens.",
            default_doc="required, but for a node given by instance: the instance's host"),
    Setting("address", "url", None,
            "URL of the node's agent, such as http://10.0.0.1:8001, or of its node_exporter page with "
            "source=\"node-exporter\". The port defaults to "
            + " and ".join(f"{port} for {scheme}" for scheme, port in AGENT_PORTS.items())
            + f" ({NODE_EXPORTER_PORT} for node_exporter).", default_doc="required, but in a prometheus group"),
    Setting("source", "keyword", NODE_SOURCES[0],
            "Where the node's figures come from: its agent, or its node_exporter page scraped at each poll "
            "(see docs/agentless.md).", choices=NODE_SOURCES),
    Setting("instance", "text", None,
            "In a prometheus group: the node's instance label (host:port), for a node that discover does not "
            "give or to name it."),
    Setting("ip", "text", None,
            "IPv4 address given to terminals and published in DNS, when it differs from the agent's address.",
            default_doc="the host of address"),
    Setting("ip6", "text", None, "IPv6 address published in DNS."),
    Setting("secret-file", "path", None,
            "File holding this agent's shared secret. A relative path is taken from the directory of "
            "lbsconfig.xml.", default_doc="the one of <poll>"),
    Setting("tls-ca", "path", None,
            "CA file that verifies this agent; https addresses only. A relative path is taken from the "
            "directory of lbsconfig.xml.", default_doc="the one of <poll>"),
    Setting("max-sessions", "integer", None,
            "Sessions at which the node takes no new one: its agent's count (its sessions, else NBSESSIONS) "
            "plus the terminals sent there since its figures. A user returning to his own session still gets "
            "in. A node in several groups must end up with the same limit in each.", minimum=1,
            default_doc="the group's max-sessions, else no limit"),
    parent="group",
)

RULES = Element(
    "rules",
    "The weight formula and the health conditions. Without this element, default rules on the load average, "
    "memory use and login sessions apply.")

VARIABLE = Element(
    "variable", "One variable's contribution to a node's weight.",
    Setting("name", "text",
            doc="Any variable the agents report: a built-in, or one defined in their lbaconfig.xml.",
            required=True),
    Setting("weight", "number", doc="The most this variable adds to a node's weight.", positive=True,
            required=True),
    Setting("capacity", "expression", None,
            "The value at which the variable adds nothing: a number, or arithmetic over the node's variables "
            "such as $CPUFREQ*$CPUCOUNT/120. Required, here or on a <rule> child.", default_doc="required"),
    Setting("critical", "expression", None,
            "At or above this value the node is excluded: a number or an expression."),
    Setting("per-cpu", "boolean", False, "Whether the value is divided by NBPROC first."),
    Setting("per-session", "number", 0.0,
            "Expected rise of the value for each terminal sent to the node, counted until the agent's figures "
            "can show it (see lag).", minimum=0),
    Setting("lag", "number", None,
            "Seconds the variable takes to show a new session: the time constant of its average. A terminal's "
            "per-session rise counts in full until the agent measures figures after it was sent, then as "
            "exp(-t/lag) of it, t being how long before those figures it was sent. 0: such figures show it "
            "whole.", minimum=0,
            default_doc="60 for LOADAVG, 300 for LOADAVG5, 900 for LOADAVG15, 0 for any other variable"),
    Setting("custom", "boolean", False,
            "Accepted and ignored: a rule may name any variable. A name that is not a built-in draws a warning "
            "from --check-config."),
    parent="rules",
)

VARIABLES = Element(
    "variables", "Variables defined by a PromQL expression, for the nodes of prometheus groups.")

PROMQL_VARIABLE = Element(
    "variable", "A variable of every node of a prometheus group: one instant query per poll and group.",
    Setting("name", "text", doc="The variable's name, as rules and expressions use it.", required=True),
    Setting("promql", "text",
            doc="The PromQL expression, one series per instance label, such as "
                "avg by (instance) (DCGM_FI_DEV_GPU_UTIL).", required=True),
    parent="variables",
)

RULE = Element(
    "rule", "The ltsp-cluster form of a variable's limits. In a variable written this way, memory variables "
            "(MEMTOTAL, MEMUSED, MEMAVAIL) are taken in kB, as the original agent reported them.",
    Setting("capacity", "expression", None, "As the capacity of <variable>.", default_doc="required"),
    Setting("critical", "expression", None, "As the critical of <variable>."),
    parent="variable",
)

REQUIRE = Element(
    "require", "A condition a node must meet to be healthy. It needs equals, min or max.",
    Setting("name", "text", doc="The variable tested.", required=True),
    Setting("equals", "text", None, "The node is excluded unless the variable has this value."),
    Setting("min", "number", None, "The node is excluded while the variable is below this value."),
    Setting("max", "number", None, "The node is excluded while the variable is above this value."),
    parent="rules",
)

DNS = Element(
    "dns",
    "DNS aliases published from each group's best nodes, and who is told of changes. The DNS server is "
    "sent signed dynamic updates.",
    Setting("server", "text", doc="The DNS server that is primary for the zone and accepts updates.",
            required=True),
    Setting("port", "integer", 53, "The DNS server's port. Queries and updates both go there, over TCP.",
            minimum=1, maximum=65535),
    Setting("zone", "text", doc="The zone holding the aliases.", required=True),
    Setting("ttl", "integer", 60,
            "Seconds resolvers may keep the published records. Keep it short: it bounds how long a resolver "
            "keeps sending users to a server that just left an alias.", minimum=60),
    Setting("timeout", "number", 5.0, "Seconds allowed for each DNS, HTTP and SMTP exchange.", positive=True),
    Setting("key-name", "text", None,
            "The TSIG key's name; needed when the key file holds a bare secret or several keys."),
    Setting("key-algorithm", "keyword", "hmac-sha256",
            "The TSIG algorithm, one of " + ", ".join(tsigkey.ALGORITHMS) + ". A BIND key file names its own "
            "algorithm; if both are given they must agree."),
    Setting("key-file", "path",
            doc="The TSIG key file. A relative path is taken from the directory of lbsconfig.xml.",
            required=True),
    Setting("contact", "text", None,
            "E-mail addresses, separated by commas, alerted when aliases change. Without it alerts only go "
            "to the log."),
    Setting("smtp", "hostport", ("localhost", 25), "The mail relay; the port defaults to 25."),
    Setting("smtp-starttls", "boolean", False,
            "Whether to switch to TLS with STARTTLS. The relay's certificate and name are verified against "
            "the system's CAs."),
    Setting("smtp-user", "text", None, "SMTP login name; needs smtp-password-file."),
    Setting("smtp-password-file", "path", None,
            "File whose first line is the SMTP password; needs smtp-user. A relative path is taken from the "
            "directory of lbsconfig.xml."),
    Setting("mail-from", "email", None, "Sender address of the alerts.",
            default_doc="lbserver@HOST, HOST being this host's name"),
    Setting("alert-state-file", "path", None,
            "Where the alert state is kept between runs. Set it when lbserver runs from cron, so that each "
            "run does not mail the same problems again. A relative path is taken from the directory of "
            "lbsconfig.xml."),
    Setting("lease", "text", "_lbserver-lease",
            "Name, relative to the zone, of the TXT record that lets one balancer at a time write the aliases: "
            "balancers that publish the same aliases must give the same name, and the others stand by. An "
            "empty value turns the lease off (this balancer always writes)."),
    Setting("lease-time", "number", None,
            "Seconds a lease lasts. The writer renews it when less than half is left, and each renewal is a "
            "zone change (a new serial, a transfer to every secondary). Without <peers>, a standby takes over "
            "this long after the writer's last renewal when the writer dies; with <peers>, as soon as the "
            "writer's heartbeats have stopped for two poll intervals. It must be at least twice the poll "
            "interval, and longer than the cron period when lbserver --once runs from cron.", positive=True,
            default_doc="1200 (20 minutes; at least 3 × the <poll> interval)"),
    Setting("lease-holder", "text", None,
            "This balancer's name in the lease; each balancer sharing a lease needs its own.",
            default_doc="HOST:PORT, this host's name and the terminal port"),
)

ALIAS = Element(
    "alias", "One DNS name, published with the addresses of a group's best nodes.",
    Setting("name", "text", doc="The alias, relative to the zone.", required=True),
    Setting("group", "text", doc="The group whose nodes may be published.", required=True),
    Setting("enabled", "boolean", True, "Whether the alias is updated; false leaves it alone."),
    Setting("num-out", "integer", None,
            "How many of the good nodes to leave out, the worst ones. It must be above 0 and below the "
            "number of nodes in the group.", default_doc="1, or 0 for a one-node group"),
    Setting("best-hosts", "integer", None,
            "Instead of num-out: publish the N best good nodes, or all good nodes with -1."),
    Setting("health-url", "url", None,
            "Page of submission test results, read with " + ", ".join(s + "://" for s in HEALTH_URL_SCHEMES[:-1])
            + " or " + HEALTH_URL_SCHEMES[-1] + "://. A node whose latest test failed leaves the alias."),
    Setting("health-max-age", "number", 3600.0, "Seconds after which test results are ignored.",
            positive=True),
    parent="dns",
)

CONFIG_FILE = ConfigFile(
    name="lbsconfig.xml", program="lbserver", path=DEFAULT_PATH, schema="lbsconfig.rng",
    doc="The balancer's configuration. Every element but <nodes> is optional, and each appears at most once "
        "at the top level.",
    elements=(LBSERVICE, LBSLAVE, MGMTSERVICE, POLL, LOG, PEERS, PEER, HAPROXY_AGENT, HAPROXY_ALLOW, HAPROXY_MAP, X2GOBROKER,
              X2GO_ALLOW, X2GO_PROFILE, X2GO_LOADCHECKER, NODES,
              GROUP, NODE, RULES, VARIABLE, RULE, REQUIRE, VARIABLES, PROMQL_VARIABLE, DNS, ALIAS),
)

__all__ = ["AGENT_PORTS", "ALGORITHMS", "ALIAS", "CONFIG_FILE", "DEFAULT_LAGS", "DEFAULT_PATH", "LEGACY_PATH",
           "DEFAULT_STATE_FILE", "DNS", "GROUP",
           "HAPROXY_AGENT", "HAPROXY_ALLOW", "HAPROXY_MAP", "HEALTH_URL_SCHEMES", "LBSERVICE", "LBSLAVE", "LOG",
           "MGMTSERVICE", "NODE", "NODE_EXPORTER_PORT", "NODE_SOURCES", "NODES", "PEER", "PEERS", "POLL",
           "PROMQL_VARIABLE", "REQUIRE", "RETURNS", "RULE", "RULES", "VARIABLE", "VARIABLES",
           "X2GOBROKER", "X2GO_ALLOW", "X2GO_AUTHS", "X2GO_LOADCHECKER", "X2GO_PROFILE"]
