"""lbaconfig.xml: the agent's configuration as typed, immutable objects.

:func:`load` parses and validates a file (structure by the RELAX NG schema
``lbaconfig.rng``, attributes by their declarations, values and per-type
attributes here) and returns an :class:`AgentConfig`, or raises
:class:`~common.xmlconfig.ConfigError` with ``FILE:LINE: message``. Every attribute, with its default and bounds, is
declared once in :mod:`lbagent.settings`: the file's attributes are checked
against those declarations as it is parsed, the loader reads each element's
through them (:func:`common.settings.read_all`), and the dataclasses take
their defaults from them.
"""

from __future__ import annotations

import logging
import os
import re
import ssl
from dataclasses import dataclass, field, replace

from lxml import etree

from common.builtins import BUILTIN_VARIABLES
from common.netutil import Network
from common.secretfile import SecretFileError, permission_problem, read_secret_file
from common.settings import LOG_LEVELS, parse_config, read, read_all
from common.tls import TlsConfigError, server_context
from common.xmlconfig import ConfigError, Reader
from lbagent.settings import AGENT, ALLOW, CONFIG_FILE, DEFAULT_PATH, LOG, PROCESS, UTMP, VARIABLE, VARIABLE_TYPES, X2GO
from lbagent.values import BadValue, Value, parse_value

VARIABLE_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")
# The attributes of <variable> that only some types take, in the order they are checked.
_TYPE_ATTRIBUTES = tuple(s.attribute for s in VARIABLE if s.attribute not in ("name", "type"))


log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CustomVariable:
    """``<variable>``: one admin-defined value reported beside the built-ins.

    Only the fields of its ``type`` are set: ``command``/``timeout`` for
    command, ``pattern`` (compiled) for process, ``path`` for disk and file,
    ``path``/``timeout`` for count, ``value`` (already parsed) for constant.
    """

    name: str
    type: str
    line: int = 0
    command: str | None = VARIABLE.command.default
    timeout: float = VARIABLE.timeout.default
    pattern: re.Pattern[str] | None = VARIABLE.pattern.default
    path: str | None = VARIABLE.path.default
    value: Value | None = VARIABLE.value.default


@dataclass(frozen=True)
class SessionSource:
    """One child of ``<sessions>``: where some of the sessions are found.

    ``kind`` is the element's name (utmp, process or x2go); ``path`` is the
    utmp file or x2goserver's database, ``names`` the process names.
    """

    kind: str
    line: int = 0
    timeout: float = UTMP.timeout.default
    path: str | None = None
    names: tuple[str, ...] = ()


DEFAULT_SESSIONS = (SessionSource("utmp", path=UTMP.file.default),)
"""The sources without a <sessions> element: utmp alone, as before sessions had sources."""

_SESSION_ELEMENTS = {"utmp": (UTMP, "file"), "process": (PROCESS, None), "x2go": (X2GO, "db")}


@dataclass(frozen=True)
class AgentConfig:
    """The whole of lbaconfig.xml."""

    path: str
    listen: tuple[str, int] = AGENT.listen.default
    sample_interval: float = AGENT.sample_interval.default
    max_request_bytes: int = AGENT.max_request_bytes.default
    request_timeout: float = AGENT.request_timeout.default
    allow: tuple[Network, ...] | None = None
    """Networks that may query; None when there is no <access> (everyone may)."""
    variables: tuple[CustomVariable, ...] = ()
    log_file: str | None = LOG.file.default
    log_level: str | None = LOG.level.default
    secret_file: str | None = AGENT.secret_file.default
    secret: str | None = field(default=None, repr=False)
    """The shared secret every request must carry (HTTP Basic password); None: no authentication."""
    tls_cert: str | None = AGENT.tls_cert.default
    tls_key: str | None = AGENT.tls_key.default
    ssl_context: ssl.SSLContext | None = field(default=None, repr=False, compare=False)
    """Server-side TLS context built from tls-cert/tls-key; None: plain HTTP."""
    drain_file: str | None = AGENT.drain_file.default
    """Drain at the source: DRAINED while this file exists; None: not checked."""
    nologin_file: str | None = AGENT.nologin_file.default
    """Likewise for the system's nologin file; None: not checked."""
    sessions: tuple[SessionSource, ...] = DEFAULT_SESSIONS
    """Where sessions are found (the children of <sessions>)."""


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


def _load_security(r: Reader, agent: etree._Element, values: dict) -> dict:
    """secret-file, tls-cert and tls-key of <agent> (as ``values`` holds them): read and checked now, so
    --check-config sees problems; the paths made absolute."""
    kw: dict = {}
    secret_file = values["secret_file"]
    if secret_file is not None:
        path = _config_relative(r, secret_file)
        try:
            kw["secret"] = read_secret_file(path)
        except SecretFileError as exc:
            raise r.error(agent, f"<agent> secret-file: {exc}") from None
        _warn_permissions(r, agent, "secret-file", path)
        kw["secret_file"] = path
    cert, key = values["tls_cert"], values["tls_key"]
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
    name = read(r, e, VARIABLE.name)
    if not VARIABLE_NAME.match(name):
        raise r.error(e, f"<variable> attribute name={name!r}: use upper-case letters, digits and '_', "
                         "starting with a letter (e.g. NBX11SESS)")
    if name in BUILTIN_VARIABLES:
        raise r.error(e, f"variable name {name!r} is a built-in variable; choose another name")
    vtype = read(r, e, VARIABLE.type, check=False)
    if vtype not in VARIABLE.type.choices:
        raise r.error(e, f"<variable name={name!r}> has unknown type {vtype!r} "
                         f"(expected {', '.join(VARIABLE.type.choices)})")
    needed, optional = VARIABLE_TYPES[vtype]
    for attr in _TYPE_ATTRIBUTES:
        if e.get(attr) is not None and attr not in needed + optional:
            raise r.error(e, f"<variable name={name!r}>: attribute {attr} does not apply to type {vtype}")
    for attr in needed:
        if e.get(attr) is None or not e.get(attr).strip():
            raise r.error(e, f"<variable name={name!r} type={vtype!r}> is missing attribute {attr}")
    kw = read_all(r, e, VARIABLE, tuple(s.name for s in VARIABLE if s.attribute in needed + optional))
    if "path" in kw:
        kw["path"] = kw["path"].strip()
    if "pattern" in kw:
        try:
            kw["pattern"] = re.compile(kw["pattern"])
        except re.error as exc:
            raise r.error(e, f"<variable name={name!r}> attribute pattern={kw['pattern']!r}: "
                             f"not a valid regular expression: {exc}") from None
    if "value" in kw:
        try:
            kw["value"] = parse_value(kw["value"])
        except BadValue as exc:
            raise r.error(e, f"<variable name={name!r}> attribute value={kw['value']!r}: {exc}") from None
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


def _load_sessions(r: Reader, root: etree._Element) -> tuple[SessionSource, ...]:
    elem = root.find("sessions")
    if elem is None:
        return DEFAULT_SESSIONS
    out: list[SessionSource] = []
    seen: dict[str, int] = {}
    for e in elem.iterchildren(tag=etree.Element):
        if e.tag in seen:
            raise r.error(e, f"<{e.tag}> given twice in <sessions> (first at line {seen[e.tag]}); merge them into one")
        seen[e.tag] = e.sourceline
        element, path_attr = _SESSION_ELEMENTS[e.tag]
        kw = read_all(r, e, element)
        source = SessionSource(e.tag, line=e.sourceline, timeout=kw["timeout"])
        if path_attr is not None:
            path = kw[path_attr].strip()
            if not path:
                raise r.error(e, f"<{e.tag}> attribute {path_attr} is empty")
            source = replace(source, path=_config_relative(r, path))
        else:
            names = tuple(kw["names"].split())
            if not names:
                raise r.error(e, "<process> attribute names is empty: give process names such as Xvnc Xorg")
            bad = [n for n in names if len(n) > 15]
            if bad:
                # The kernel keeps 15 characters of a process name: a longer one would never match.
                raise r.error(e, f"<process> name {bad[0]!r} is longer than the 15 characters the kernel keeps")
            source = replace(source, names=names)
        out.append(source)
    if not out:
        raise r.error(elem, "<sessions> has no source: give <utmp/>, <process names=\"...\"/> or <x2go/> "
                            "(remove <sessions> to read utmp alone)")
    return tuple(out)


def _load_access(r: Reader, root: etree._Element) -> tuple[Network, ...] | None:
    elem = root.find("access")
    if elem is None:
        return None
    nets = tuple(read(r, a, ALLOW.from_) for a in elem.iter("allow"))
    if not nets:
        raise r.error(elem, "<access> has no <allow>: nobody could query the agent "
                            "(remove <access> to let every address query)")
    return nets


def _check_single(r: Reader, root: etree._Element) -> None:
    """The top-level elements may come in any order, but each at most once."""
    for tag in ("agent", "log", "access", "variables", "sessions"):
        found = root.findall(tag)
        if len(found) > 1:
            raise r.error(found[1], f"<{tag}> given twice (first at line {found[0].sourceline}); "
                                    "merge them into one")


def load(path: str = DEFAULT_PATH) -> AgentConfig:
    """Load and validate lbaconfig.xml; raise ConfigError naming file and line."""
    r, root = parse_config(path, CONFIG_FILE)
    _check_single(r, root)
    agent = root.find("agent")
    kw = read_all(r, agent, AGENT)
    kw.update(_load_security(r, agent, kw))
    for name in ("drain_file", "nologin_file"):
        value = kw[name].strip()
        kw[name] = _config_relative(r, value) if value else None
    kw.update({f"log_{name}": value for name, value in read_all(r, root.find("log"), LOG).items()})
    return AgentConfig(path=path, allow=_load_access(r, root), variables=_load_variables(r, root),
                       sessions=_load_sessions(r, root), **kw)


def log_settings(config: AgentConfig) -> tuple[str | None, str | None]:
    """(log file or None for syslog, level) for the daemon runtime."""
    return config.log_file, config.log_level


__all__ = ["AgentConfig", "ConfigError", "CustomVariable", "DEFAULT_PATH", "DEFAULT_SESSIONS", "LOG_LEVELS",
           "SessionSource", "VARIABLE_TYPES", "load", "log_settings"]
