"""lbaconfig.xml's settings: every attribute declared once.

Each element's attributes are declared here with their kind, default, bounds
and meaning (see :mod:`common.settings`). A file's attributes are checked
against them as it is parsed, :mod:`lbagent.config` reads each element's
through :func:`common.settings.read_all` and takes its dataclass defaults
from them, and docs/settings.md and lbaconfig.xml(5) are generated from
:data:`CONFIG_FILE`. The structure of the file (which element goes where) is
the RELAX NG schema's (``common/schemas/lbaconfig.rng``).
"""

from __future__ import annotations

from common.settings import AGENT_PORT, LOG_LEVELS, ConfigFile, Element, Setting

DEFAULT_PATH = "/etc/mille-xterm/lbaconfig.xml"

VARIABLE_TYPES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "command": (("command",), ("timeout",)),
    "process": (("pattern",), ()),
    "disk": (("path",), ()),
    "file": (("path",), ()),
    "count": (("path",), ("timeout",)),
    "constant": (("value",), ()),
}
"""Per <variable type>: the attributes it needs, and those it may also take."""

AGENT = Element(
    "agent", "How the agent serves the balancers.",
    Setting("listen", "listen", ("0.0.0.0", AGENT_PORT),
            f"Address and port to serve on. Use [::]:{AGENT_PORT} for IPv6, which also accepts IPv4 where the "
            "system allows dual-stack sockets."),
    Setting("sample-interval", "number", 5.0, "Seconds between two readings of the variables.", minimum=0.1),
    Setting("max-request-bytes", "integer", 64 * 1024,
            "Larger requests are refused with HTTP 413 before their body is read.", minimum=1024),
    Setting("request-timeout", "number", 5.0,
            "Seconds a client may take over its whole connection; after that the agent hangs up.", positive=True),
    Setting("secret-file", "path", None,
            "File holding the shared secret every request must carry as its HTTP Basic password. A relative "
            "path is taken from the directory of lbaconfig.xml."),
    Setting("tls-cert", "path", None,
            "Certificate (PEM) to serve over TLS with; the balancer then uses an https address. It may hold "
            "the private key too. A relative path is taken from the directory of lbaconfig.xml."),
    Setting("tls-key", "path", None,
            "Private key (PEM) of tls-cert, when it is in a file of its own. A relative path is taken from the "
            "directory of lbaconfig.xml."),
    Setting("drain-file", "path", "/var/lib/mille-xterm/lbagent.drain",
            "Drain at the source: while this file exists the agent reports DRAINED as true and DRAIN_REASON as "
            "the file's first line (drained when it is empty), and every balancer polling it sends no new "
            "terminals here. lbagent --drain writes it, lbagent --enable removes it; it is looked at on every "
            "sample, without a reload. An empty value turns this check off. A relative path is taken from the "
            "directory of lbaconfig.xml."),
    Setting("nologin-file", "path", "/etc/nologin",
            "Like drain-file, for the file that makes the system refuse logins: while it exists the agent "
            "reports DRAINED as true and DRAIN_REASON as its first line (nologin when it is empty). The "
            "drain-file's reason wins when both exist. An empty value turns this check off. A relative path is "
            "taken from the directory of lbaconfig.xml."),
)

LOG = Element(
    "log", "Where the agent logs when it runs as a daemon. SIGUSR1 reopens the log file (logrotate sends it); SIGHUP applies a changed <log>.",
    Setting("file", "path", None, "Log file.", default_doc="syslog"),
    Setting("level", "keyword", None, "Least severe messages logged, in upper or lower case.",
            choices=LOG_LEVELS, default_doc="info"),
)

ACCESS = Element(
    "access",
    "Which peers may query the agent. Other peers get HTTP 403 at once (over TLS the connection is closed "
    "before the handshake), and refusals are logged at a bounded rate. IPv4 clients of an IPv6 socket are "
    "matched as IPv4. Without this element every address may query; with it but without any allow, the "
    "configuration is refused.")

ALLOW = Element(
    "allow", "One address or network that may query.",
    Setting("from", "network", doc="An address, or a network in CIDR notation such as 10.0.0.0/24.",
            required=True),
    parent="access",
)

VARIABLES = Element("variables", "Variables defined here, reported beside the built-in ones.")

VARIABLE = Element(
    "variable",
    "A variable defined by the administrator. Each type takes attributes of its own: "
    + "; ".join(f"{vtype} takes {' and '.join(needed + optional)}"
                for vtype, (needed, optional) in VARIABLE_TYPES.items())
    + ".",
    Setting("name", "text",
            doc="The variable's name: upper-case letters, digits and underscores, starting with a letter, and "
                "not the name of a built-in variable.", required=True),
    Setting("type", "text", doc="How the value is obtained.", choices=tuple(VARIABLE_TYPES), required=True),
    Setting("command", "text", None,
            "Type command: a shell command; the value is the first line it prints. It runs in a process group "
            "of its own, killed past the timeout, and a non-zero exit status means no value."),
    Setting("timeout", "number", 2.0,
            "Type command: seconds the command may run. Type count: seconds the counting may take; past it "
            "the variable has no value.", positive=True),
    Setting("pattern", "regex", None,
            "Type process: the value is true while a process's name or command line matches this regular "
            "expression, in Python syntax."),
    Setting("path", "path", None,
            "Type disk: the value is the percentage of used space of the file system holding this path. "
            "Type file: the value is the first line of this regular file. Type count: the value is the "
            "number of directory entries this glob pattern matches, as the shell expands it (hidden names only "
            "when the pattern starts with a dot; never descending into subdirectories); a directory without a "
            "pattern counts every entry in it. Counting stops at 1000000, and a directory that is not there "
            "means no value."),
    Setting("value", "text", None, "Type constant: the value itself."),
    parent="variables",
)

SESSIONS = Element(
    "sessions",
    "Where the agent finds the sessions it reports (get_state's sessions and users, NBSESSIONS and NBUSERS): "
    "one child element per source, read in the background at every sample, each bounded by its timeout. "
    "Without this element the agent reads utmp alone. A source that fails or overruns is logged once and "
    "leaves the others' sessions reported. At most 10000 sessions are reported, and NBSESSIONS and NBUSERS "
    "count those.")

SOURCE_TIMEOUT = Setting("timeout", "number", 2.0,
                         "Seconds the reading may take; past it the source reports nothing.", positive=True)
"""The timeout every session source declares alike."""

UTMP = Element(
    "utmp", "Login sessions recorded in utmp (LDM, ssh, a console, and whatever else logs there): active.",
    Setting("file", "path", "/var/run/utmp", "The utmp file to read."),
    SOURCE_TIMEOUT,
    parent="sessions",
)

PROCESS = Element(
    "process",
    "The owner of a running process of one of these names has a session here (an Xvnc or Xorg started by "
    "xrdp-sesman, an x2goagent, an nxagent). Processes of root are not sessions. A session is disconnected "
    "when the agent can tell no viewer is attached (an Xvnc whose RFB port has no connection, an Xorg of "
    "xrdp whose display socket has none), active otherwise.",
    Setting("names", "text", doc="Process names, separated by spaces, as ps -C takes them (e.g. Xvnc Xorg).",
            required=True),
    SOURCE_TIMEOUT,
    parent="sessions",
)

X2GO = Element(
    "x2go",
    "x2goserver's session list, read from its SQLite session database: running sessions are active, "
    "suspended ones disconnected, finished ones not reported. Each session's info is its line as "
    "x2golistsessions prints it. The database is readable by root and the group x2gouser only.",
    Setting("db", "path", "/var/lib/x2go/x2go_sessions", "x2goserver's SQLite session database."),
    SOURCE_TIMEOUT,
    parent="sessions",
)

CONFIG_FILE = ConfigFile(
    name="lbaconfig.xml", program="lbagent", path=DEFAULT_PATH, schema="lbaconfig.rng",
    doc="The agent's configuration. Every element is optional; top-level elements may come in any order, each "
        "at most once.",
    elements=(AGENT, LOG, ACCESS, ALLOW, VARIABLES, VARIABLE, SESSIONS, UTMP, PROCESS, X2GO),
)

__all__ = ["ACCESS", "AGENT", "ALLOW", "CONFIG_FILE", "DEFAULT_PATH", "LOG", "PROCESS", "SESSIONS", "UTMP", "VARIABLE",
           "VARIABLES", "VARIABLE_TYPES", "X2GO"]
