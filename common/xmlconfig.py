"""Safe XML configuration loading shared by lbagent and lbserver.

Files are parsed with entity expansion, DTD loading and network access off,
validated against a RELAX NG schema shipped in ``common/schemas`` (the
structure: the attributes are checked against their declarations by
:mod:`common.settings`), and every problem is reported as one ``FILE:LINE: message`` line (:class:`ConfigError`).
The typed readers below turn attributes into Python values and raise the same
kind of error, naming the element and attribute, when a value is wrong.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
from functools import lru_cache
from typing import Callable, TypeVar

from lxml import etree

SCHEMA_DIR = os.path.join(os.path.dirname(__file__), "schemas")
MAX_CONFIG_BYTES = 4 * 1024 * 1024

T = TypeVar("T")


class ConfigError(Exception):
    """A configuration problem located in a file: ``str()`` gives ``FILE:LINE: message``."""

    def __init__(self, path: str, line: int | None, message: str) -> None:
        self.path = path
        self.line = line or 0
        self.message = message
        super().__init__(f"{path}:{self.line}: {message}")


def _parser() -> etree.XMLParser:
    return etree.XMLParser(
        resolve_entities=False,
        load_dtd=False,
        no_network=True,
        huge_tree=False,
        remove_comments=True,
        remove_pis=True,
    )


@lru_cache(maxsize=None)
def _schema(name: str) -> etree.RelaxNG:
    path = os.path.join(SCHEMA_DIR, name)
    return etree.RelaxNG(etree.parse(path, _parser()))


def _describe_schema_error(err: etree._LogEntry) -> str:
    """Turn libxml2's RELAX NG wording into a message an admin can act on."""
    msg = err.message.rstrip(".")
    m = re.match(r"Expecting element (\S+), got (\S+)", msg)
    if m:
        return f"unexpected element <{m.group(2)}> here (expected <{m.group(1)}>)"
    m = re.match(r"Invalid attribute (\S+) for element (\S+)", msg)
    if m:  # on the root element: the others take any attribute here (see common.settings.check_attributes)
        return f"<{m.group(2)}> has unknown attribute {m.group(1)}"
    m = re.match(r"Element (\S+) has extra content: (\S+)", msg)
    if m:
        return f"unexpected element <{m.group(2)}> inside <{m.group(1)}>"
    m = re.match(r"Did not expect element (\S+) there", msg)
    if m:
        return f"unexpected element <{m.group(1)}> here (misplaced or repeated)"
    m = re.match(r"Expecting an element (\S+), got nothing", msg)
    if m:
        return f"missing element <{m.group(1)}>"
    return msg


def parse_bytes(data: bytes, path: str, schema: str) -> etree._Element:
    """Parse and validate ``data`` (read from ``path``) against ``schema``.

    Raises :class:`ConfigError` on any XML or schema error, on a DOCTYPE
    (entities are never honoured) or on an oversized file.
    """
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(path, 0, f"file is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        root = etree.fromstring(data, _parser())
    except etree.XMLSyntaxError as exc:
        line = exc.lineno or (exc.position[0] if exc.position else 0)
        raise ConfigError(path, line, f"not well-formed XML: {exc.msg}") from None
    doc = root.getroottree()
    if doc.docinfo.doctype or doc.docinfo.internalDTD is not None:
        raise ConfigError(path, 1, "DOCTYPE declarations are not allowed in configuration files")
    validator = _schema(schema)
    if not validator.validate(root):
        errors = list(validator.error_log)
        # libxml2 often reports a cascade; the deepest-line, first error is the cause.
        err = errors[0]
        raise ConfigError(path, err.line, _describe_schema_error(err))
    return root


def parse_file(path: str, schema: str) -> etree._Element:
    """Read ``path`` and return its validated root element (see :func:`parse_bytes`)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(path, 0, f"cannot read file: {exc.strerror or exc}") from None
    return parse_bytes(data, path, schema)


class Reader:
    """Typed attribute access for one config file, raising located errors."""

    def __init__(self, path: str) -> None:
        self.path = path

    def error(self, elem: etree._Element | None, message: str) -> ConfigError:
        """Build a :class:`ConfigError` located at ``elem``."""
        return ConfigError(self.path, elem.sourceline if elem is not None else 0, message)

    def _convert(self, elem: etree._Element, attr: str, raw: str, conv: Callable[[str], T], what: str) -> T:
        try:
            return conv(raw.strip())
        except (ValueError, TypeError):
            raise self.error(elem, f"<{elem.tag}> attribute {attr}={raw!r}: expected {what}") from None

    def text(self, elem: etree._Element, attr: str, default: str | None = None) -> str | None:
        """The attribute's string value, or ``default``."""
        raw = elem.get(attr)
        return default if raw is None else raw

    def required(self, elem: etree._Element, attr: str) -> str:
        """The attribute's string value; a missing or empty one is an error."""
        raw = elem.get(attr)
        if raw is None or not raw.strip():
            raise self.error(elem, f"<{elem.tag}> is missing attribute {attr}")
        return raw.strip()

    def number(self, elem: etree._Element, attr: str, default: float | None = None, *,
               minimum: float | None = None, positive: bool = False) -> float | None:
        """A float attribute, optionally bounded."""
        raw = elem.get(attr)
        if raw is None:
            return default
        value = self._convert(elem, attr, raw, float, "a number")
        if value != value or value in (float("inf"), float("-inf")):
            raise self.error(elem, f"<{elem.tag}> attribute {attr}={raw!r}: expected a finite number")
        if positive and value <= 0:
            raise self.error(elem, f"<{elem.tag}> attribute {attr}={raw!r}: must be greater than 0")
        if minimum is not None and value < minimum:
            raise self.error(elem, f"<{elem.tag}> attribute {attr}={raw!r}: must be at least {minimum:g}")
        return value

    def integer(self, elem: etree._Element, attr: str, default: int | None = None, *,
                minimum: int | None = None) -> int | None:
        """An integer attribute, optionally bounded below."""
        raw = elem.get(attr)
        if raw is None:
            return default
        value = self._convert(elem, attr, raw, int, "a whole number")
        if minimum is not None and value < minimum:
            raise self.error(elem, f"<{elem.tag}> attribute {attr}={raw!r}: must be at least {minimum}")
        return value

    def boolean(self, elem: etree._Element, attr: str, default: bool = False) -> bool:
        """``true``/``false`` (also yes/no, 1/0)."""
        raw = elem.get(attr)
        if raw is None:
            return default
        low = raw.strip().lower()
        if low in ("true", "yes", "1", "on"):
            return True
        if low in ("false", "no", "0", "off"):
            return False
        raise self.error(elem, f"<{elem.tag}> attribute {attr}={raw!r}: expected true or false")

    def listen(self, elem: etree._Element, attr: str, default: str) -> tuple[str, int]:
        """A ``HOST:PORT`` or ``[V6]:PORT`` listen address; ``*:PORT`` (the ltsp-cluster form) is every IPv4 address."""
        raw = elem.get(attr, default)
        if raw.strip().startswith("*:"):
            raw = "0.0.0.0" + raw.strip()[1:]
        return self._convert(elem, attr, raw, parse_hostport, "HOST:PORT (e.g. 0.0.0.0:8001 or [::]:8001)")

    def network(self, elem: etree._Element, attr: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        """A CIDR network such as ``10.0.0.0/24`` (a bare address means a single host)."""
        raw = self.required(elem, attr)
        return self._convert(elem, attr, raw, lambda s: ipaddress.ip_network(s, strict=False),
                             "an address or CIDR network such as 10.0.0.0/24")


def warn_loopback_only(r: Reader, elem: etree._Element, host: str, allow: tuple, clients: str) -> None:
    """Warn that ``elem``'s service listens on ``host`` beyond loopback yet, with no ``<allow>``, answers
    loopback only (the safe default, and a likely surprise): the admin is told to list ``clients``."""
    if not allow and host not in ("localhost", "::1") and not host.startswith("127."):
        logging.getLogger(__name__).warning(
            "%s:%s: <%s> listens on %s but, without <allow>, answers loopback only: add <allow from=\"...\"/> "
            "for %s", r.path, elem.sourceline, elem.tag, host, clients)


def parse_hostport(value: str, default_port: int | None = None) -> tuple[str, int]:
    """Split ``host:port``, ``[v6]:port`` or (with ``default_port``) a bare host.

    Raises ValueError on anything else.
    """
    value = value.strip()
    if not value:
        raise ValueError("empty address")
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            raise ValueError("unclosed [")
        host, rest = value[1:end], value[end + 1:]
        ipaddress.IPv6Address(host)
        if not rest and default_port is not None:
            return host, default_port
        if not rest.startswith(":"):
            raise ValueError("missing port")
        port_s = rest[1:]
    elif value.count(":") == 1:
        host, port_s = value.split(":")
    elif default_port is not None and ":" not in value:
        return value, default_port
    else:
        raise ValueError("expected HOST:PORT")
    if not host or not port_s.isdigit() or not 0 < int(port_s) < 65536:
        raise ValueError("bad port")
    return host, int(port_s)
