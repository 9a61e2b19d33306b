"""lbaconfig.xml: the agent's configuration as typed, immutable objects.

:func:`load` parses and validates a file (structure by the RELAX NG schema
``lbaconfig.rng``, values and per-type attributes here) and returns an
:class:`AgentConfig`, or raises :class:`~common.xmlconfig.ConfigError` with
``FILE:LINE: message``.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import ssl
from dataclasses import dataclass, field

from lxml import etree

from common.builtins import BUILTIN_VARIABLES
from common.secretfile import SecretFileError, permission_problem, read_secret_file
from common.tls import TlsConfigError, server_context
from common.xmlconfig import ConfigError, Reader, parse_file
from lbagent.values import BadValue, Value, parse_value

DEFAULT_PATH = "/etc/mille-xterm/lbaconfig.xml"
DEFAULT_LISTEN = "0.0.0.0:8001"
DEFAULT_COMMAND_TIMEOUT = 2.0
VARIABLE_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")

# Which attributes each variable type needs, and which it may also take.
VARIABLE_TYPES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "command": (("command",), ("timeout",)),
    "process": (("pattern",), ()),
    "disk": (("path",), ()),
    "file": (("path",), ()),
    "constant": (("value",), ()),
}
_TYPE_ATTRIBUTES = ("command", "timeout", "pattern", "path", "value")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CustomVariable:
    """``<variable>``: one admin-defined value reported beside the built-ins.

    Only the fields of its ``type`` are set: ``command``/``timeout`` for
    command, ``pattern`` (compiled) for process, ``path`` for disk and file,
    ``value`` (already parsed) for constant.
    """

    name: str
    type: str
    line: int = 0
    command: str | None = None
    timeout: float = DEFAULT_COMMAND_TIMEOUT
    pattern: re.Pattern[str] | None = None
    path: str | None = None
    value: Value | None = None


@dataclass(frozen=True)
class AgentConfig:
    """The whole of lbaconfig.xml."""

    path: str
    listen: tuple[str, int] = ("0.0.0.0", 8001)
    sample_interval: float = 5.0
    max_request_bytes: int = 64 * 1024
    request_timeout: float = 5.0
    allow: tuple[Network, ...] | None = None
    """Networks that may query; None when there is no <access> (everyone may)."""
    variables: tuple[CustomVariable, ...] = ()
    log_file: str | None = None
    log_level: str | None = None
    secret_file: str | None = None
    secret: str | None = field(default=None, repr=False)
    """The shared secret every request must carry (HTTP Basic password); None: no authentication."""
    tls_cert: str | None = None
    tls_key: str | None = None
    ssl_context: ssl.SSLContext | None = field(default=None, repr=False, compare=False)
    """Server-side TLS context built from tls-cert/tls-key; None: plain HTTP."""


def _config_relative(r: Reader, path: str) -> str:
    """A path from the config, relative ones taken from the config file's directory."""
    if os.path.isabs(path):
        return path
    return os.path.join(os.path.dirname(os.path.abspath(r.path)), path)


def _warn_permissions(r: Reader, e: etree._Element, attr: str, path: str) -> None:
    # A warning, not an error: see common.secretfile for why.
    problem = permission_problem(path)
    if problem:
        log.warning("%s:%s: <%s> %s: %s", r.path, e.sourceline, e.tag, attr, problem)


def _load_security(r: Reader, agent: etree._Element) -> dict:
    """secret-file, tls-cert and tls-key of <agent>: read and checked now, so --check-config sees problems."""
    kw: dict = {}
    secret_file = r.text(agent, "secret-file")
    if secret_file is not None:
        path = _config_relative(r, secret_file)
        try:
            kw["secret"] = read_secret_file(path)
        except SecretFileError as exc:
            raise r.error(agent, f"<agent> secret-file: {exc}") from None
        _warn_permissions(r, agent, "secret-file", path)
        kw["secret_file"] = path
    cert, key = r.text(agent, "tls-cert"), r.text(agent, "tls-key")
    if key is not None and cert is None:
        raise r.error(agent, "<agent> tls-key needs tls-cert (the agent's certificate, PEM)")
    if cert is not None:
        cert = _config_relative(r, cert)
        key = _config_relative(r, key) if key is not None else None
        try:
            kw["ssl_context"] = server_context(cert, key)
        except TlsConfigError as exc:
            raise r.error(agent, f"<agent> tls-cert: {exc}") from None
        _warn_permissions(r, agent, "tls-key" if key else "tls-cert", key or cert)
        kw["tls_cert"], kw["tls_key"] = cert, key
    return kw


def _load_variable(r: Reader, e: etree._Element) -> CustomVariable:
    name = r.required(e, "name")
    if not VARIABLE_NAME.match(name):
        raise r.error(e, f"<variable> attribute name={name!r}: use upper-case letters, digits and '_', "
                         "starting with a letter (e.g. NBX11SESS)")
    if name in BUILTIN_VARIABLES:
        raise r.error(e, f"variable name {name!r} is a built-in variable; choose another name")
    vtype = r.required(e, "type")
    if vtype not in VARIABLE_TYPES:
        raise r.error(e, f"<variable name={name!r}> has unknown type {vtype!r} "
                         f"(expected {', '.join(VARIABLE_TYPES)})")
    needed, optional = VARIABLE_TYPES[vtype]
    for attr in _TYPE_ATTRIBUTES:
        if e.get(attr) is not None and attr not in needed + optional:
            raise r.error(e, f"<variable name={name!r}>: attribute {attr} does not apply to type {vtype}")
    for attr in needed:
        if e.get(attr) is None or not e.get(attr).strip():
            raise r.error(e, f"<variable name={name!r} type={vtype!r}> is missing attribute {attr}")
    kw: dict = {}
    if vtype == "command":
        kw["command"] = e.get("command")
        kw["timeout"] = r.number(e, "timeout", DEFAULT_COMMAND_TIMEOUT, positive=True)
    elif vtype == "process":
        raw = e.get("pattern")
        try:
            kw["pattern"] = re.compile(raw)
        except re.error as exc:
            raise r.error(e, f"<variable name={name!r}> attribute pattern={raw!r}: "
                             f"not a valid regular expression: {exc}") from None
    elif vtype in ("disk", "file"):
        kw["path"] = r.required(e, "path")
    else:
        raw = e.get("value")
        try:
            kw["value"] = parse_value(raw)
        except BadValue as exc:
            raise r.error(e, f"<variable name={name!r}> attribute value={raw!r}: {exc}") from None
    return CustomVariable(name=name, type=vtype, line=e.sourceline, **kw)


def _load_variables(r: Reader, root: etree._Element) -> tuple[CustomVariable, ...]:
    elem = root.find("variables")
    if elem is None:
        return ()
    seen: dict[str, int] = {}
    out: list[CustomVariable] = []
    for e in elem.iter("variable"):
        var = _load_variable(r, e)
        if var.name in seen:
            raise r.error(e, f"duplicate variable {var.name!r} (also defined at line {seen[var.name]})")
        seen[var.name] = var.line
        out.append(var)
    return tuple(out)


def _load_access(r: Reader, root: etree._Element) -> tuple[Network, ...] | None:
    elem = root.find("access")
    if elem is None:
        return None
    nets = tuple(r.network(a, "from") for a in elem.iter("allow"))
    if not nets:
        raise r.error(elem, "<access> has no <allow>: nobody could query the agent "
                            "(remove <access> to let every address query)")
    return nets


def _check_single(r: Reader, root: etree._Element) -> None:
    """The top-level elements may come in any order, but each at most once."""
    for tag in ("agent", "log", "access", "variables"):
        found = root.findall(tag)
        if len(found) > 1:
            raise r.error(found[1], f"<{tag}> given twice (first at line {found[0].sourceline}); "
                                    "merge them into one")


def load(path: str = DEFAULT_PATH) -> AgentConfig:
    """Load and validate lbaconfig.xml; raise ConfigError naming file and line."""
    root = parse_file(path, "lbaconfig.rng")
    r = Reader(path)
    _check_single(r, root)
    kw: dict = {}
    agent = root.find("agent")
    if agent is not None:
        kw["listen"] = r.listen(agent, "listen", DEFAULT_LISTEN)
        kw["sample_interval"] = r.number(agent, "sample-interval", 5.0, minimum=0.1)
        kw["max_request_bytes"] = r.integer(agent, "max-request-bytes", 64 * 1024, minimum=1024)
        kw["request_timeout"] = r.number(agent, "request-timeout", 5.0, positive=True)
        kw.update(_load_security(r, agent))
    logel = root.find("log")
    if logel is not None:
        kw["log_file"] = r.text(logel, "file")
        level = r.text(logel, "level")
        if level is not None and level.lower() not in LOG_LEVELS:
            raise r.error(logel, f"<log> attribute level={level!r}: expected one of {', '.join(LOG_LEVELS)}")
        kw["log_level"] = level.lower() if level else None
    return AgentConfig(path=path, allow=_load_access(r, root), variables=_load_variables(r, root), **kw)


def log_settings(config: AgentConfig) -> tuple[str | None, str | None]:
    """(log file or None for syslog, level) for the daemon runtime."""
    return config.log_file, config.log_level


__all__ = ["AgentConfig", "ConfigError", "CustomVariable", "VARIABLE_TYPES", "load", "log_settings"]
