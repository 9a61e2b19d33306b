"""lbaconfig.xml: the agent's configuration as typed, immutable objects.

:func:`load` parses and validates a file (structure by the RELAX NG schema
``lbaconfig.rng``, values and per-type attributes here) and returns an
:class:`AgentConfig`, or raises :class:`~common.xmlconfig.ConfigError` with
``FILE:LINE: message``.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from lxml import etree

from common.builtins import BUILTIN_VARIABLES
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
