"""Declared configuration settings, shared by lbagent and lbserver.

Every attribute of lbaconfig.xml and lbsconfig.xml is declared once, as a
:class:`Setting`: the element and attribute it is written as, its kind, its
default, its bounds and what it means. The declarations of one element form
an :class:`Element`, those of one file a :class:`ConfigFile`
(:mod:`lbagent.settings`, :mod:`lbserver.config.settings`). From them:

* :func:`parse_config` checks every attribute of a file against its element's
  declarations (the RELAX NG schema checks the structure only, so a new
  attribute is declared here and nowhere else);
* the loaders read all the attributes of an element at once with
  :func:`read_all`, which hands each kind to the typed readers of
  :class:`common.xmlconfig.Reader` through :func:`read`;
* the configuration dataclasses take their field defaults
  (``interval: float = POLL.interval.default``), and the services receive
  those dataclasses rather than keeping defaults of their own;
* :func:`render_markdown` writes the reference tables of docs/settings.md;
  :data:`REGENERATE` is the command that rewrites that file, and a test
  fails, printing it, when the file is stale;
* scripts/gen-man writes the ELEMENTS AND ATTRIBUTES of the man pages
  lbaconfig.xml(5) and lbsconfig.xml(5) with :func:`kind_text` and
  :func:`default_text` (tests/test_manpages.py fails when they are stale).

``default`` is always the value the loader yields when the attribute is
absent: a float for a number, a ``(host, port)`` tuple for an address.
Checks that involve several attributes (a poll timeout shorter than the
interval, say) are the loaders' business, not the declarations'.
"""

from __future__ import annotations

import difflib
import importlib
import keyword
import sys
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterator

from lxml import etree

from common.sockets import format_listen
from common.xmlconfig import Reader, parse_file, parse_hostport

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
"""The level names a <log level> may give."""
AGENT_PORT = 8001
"""The agent's port: the default of its <agent listen>, and of a balancer's http <node address> that gives none."""

REGENERATE = ".venv/bin/python -m common.settings lbserver.config.settings lbagent.settings > docs/settings.md"
"""The command that writes docs/settings.md (run from the top of the source tree)."""

# Each kind :func:`read` knows, and what the documentation calls it. Text
# kinds differ only in their documentation; a keyword is text compared and
# returned in lower case; hostport is a HOST[:PORT] whose port defaults to
# the default's, an empty value meaning the default.
KINDS: dict[str, str] = {
    "text": "text",
    "keyword": "text, any case",
    "path": "file path",
    "url": "URL",
    "expression": "number or expression",
    "regex": "regular expression",
    "email": "e-mail address",
    "number": "number",
    "integer": "integer",
    "boolean": "boolean",
    "listen": "HOST:PORT",
    "hostport": "HOST[:PORT]",
    "network": "address or network",
}
_TEXT_KINDS = ("text", "path", "url", "regex", "email", "expression")


@dataclass(frozen=True)
class Setting:
    """One attribute of one element of a configuration file.

    ``kind`` is a key of :data:`KINDS`. ``minimum``, ``maximum`` and
    ``positive`` bound a number or integer; ``choices`` lists the values a
    text or keyword may take. ``required`` attributes have no default (the
    schema insists on them). ``default_doc`` describes, in words, a default
    that is not a plain value (``the system's CAs``); ``element`` is filled in
    by the :class:`Element` the setting belongs to. ``doc`` is plain prose,
    without markup, as every rendering of the declarations uses it.
    """

    attribute: str
    kind: str
    default: Any = None
    doc: str = ""
    minimum: float | None = None
    maximum: float | None = None
    positive: bool = False
    choices: tuple[str, ...] | None = None
    required: bool = False
    default_doc: str | None = None
    element: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"{self.attribute}: unknown kind {self.kind!r}")
        if self.required and self.default is not None:
            raise ValueError(f"{self.attribute}: a required attribute has no default")
        if (self.minimum is not None or self.maximum is not None) and self.kind not in ("number", "integer"):
            raise ValueError(f"{self.attribute}: only numbers and integers have bounds")
        if self.positive and self.kind != "number":
            raise ValueError(f"{self.attribute}: only a number can be declared positive (give an integer a minimum)")
        if self.choices is not None and self.kind not in _TEXT_KINDS + ("keyword",):
            raise ValueError(f"{self.attribute}: only text has choices")

    @property
    def name(self) -> str:
        """The Python name of the attribute: ``max-reply-bytes`` -> ``max_reply_bytes``, ``from`` -> ``from_``."""
        name = self.attribute.replace("-", "_")
        return name + "_" if keyword.iskeyword(name) else name


class Element:
    """The declared attributes of one XML element, reachable by their Python names (``POLL.max_reply_bytes``)."""

    def __init__(self, tag: str, doc: str, *settings: Setting, parent: str | None = None) -> None:
        self.tag = tag
        self.doc = doc
        self.parent = parent
        self.settings = tuple(replace(s, element=tag) for s in settings)
        self._by_name = {s.name: s for s in self.settings}
        if len(self._by_name) != len(self.settings):
            raise ValueError(f"<{tag}> declares an attribute twice")

    def __getattr__(self, name: str) -> Setting:
        try:
            return self.__dict__["_by_name"][name]
        except KeyError:
            raise AttributeError(f"<{self.__dict__.get('tag')}> declares no attribute {name!r}") from None

    def __iter__(self) -> Iterator[Setting]:
        return iter(self.settings)

    def __repr__(self) -> str:
        return f"Element({self.tag!r}, {len(self.settings)} settings)"


@dataclass(frozen=True)
class ConfigFile:
    """All elements of one configuration file, in the order the documentation gives them.

    ``schema`` names the RELAX NG schema, in ``common/schemas``, that checks
    the file's structure (which element goes where); the attributes are
    checked against the elements' declarations (:func:`check_attributes`).
    """

    name: str
    program: str
    path: str
    doc: str
    schema: str
    elements: tuple[Element, ...]


def _number(value: float) -> str:
    """``10.0`` -> ``10``, ``0.1`` -> ``0.1``, ``65535`` -> ``65535``."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def read(reader: Reader, elem: etree._Element, setting: Setting, *, check: bool = True) -> Any:
    """The value of ``setting`` on ``elem``, or its default when the attribute is absent.

    Raises :class:`~common.xmlconfig.ConfigError` naming the element and
    attribute when the value is malformed or (with ``check``) out of bounds
    or not one of ``choices``. ``check=False`` leaves bounds and choices to
    a caller that explains them in words of its own.
    """
    s, attr, kind = setting, setting.attribute, setting.kind
    minimum = s.minimum if check else None
    positive = s.positive and check
    if kind in _TEXT_KINDS or kind == "keyword":
        value = reader.required(elem, attr) if s.required else reader.text(elem, attr, s.default)
        if kind == "keyword" and value is not None:
            value = value.lower()
        if check and s.choices is not None and value is not None and value not in s.choices:
            raise reader.error(elem, f"<{elem.tag}> attribute {attr}={elem.get(attr)!r}: "
                                     f"expected one of {', '.join(s.choices)}")
        return value
    if kind == "boolean":
        return reader.boolean(elem, attr, s.default)
    if kind == "listen":
        return reader.listen(elem, attr, format_listen(s.default))
    if kind == "hostport":
        raw = elem.get(attr)
        if not raw:  # empty or absent: the default
            return s.default
        port = s.default[1] if s.default else None
        return reader._convert(elem, attr, raw, lambda text: parse_hostport(text, port), "HOST[:PORT]")
    if kind == "network":
        return reader.network(elem, attr)
    if kind == "number":
        value = reader.number(elem, attr, s.default, minimum=minimum, positive=positive)
    else:
        value = reader.integer(elem, attr, s.default, minimum=minimum)
    if check and s.maximum is not None and value is not None and value > s.maximum:
        raise reader.error(elem, f"<{elem.tag}> attribute {attr}={_number(value)}: "
                                 f"must be at most {_number(s.maximum)}")
    return value


def read_all(reader: Reader, elem: etree._Element | None, element: Element,
             names: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Every attribute ``element`` declares (or those of ``names``), read from ``elem`` by Python name.

    An absent ``elem`` (an optional element left out) gives the defaults.
    Raises :class:`~common.xmlconfig.ConfigError` as :func:`read` does, for
    the first bad attribute in the order of the declarations.
    """
    settings = element.settings if names is None else tuple(getattr(element, n) for n in names)
    if elem is None:
        return {s.name: s.default for s in settings}
    return {s.name: read(reader, elem, s) for s in settings}


def check_attributes(reader: Reader, root: etree._Element, config_file: ConfigFile) -> None:
    """Every attribute below ``root`` declared by its element, every required one given.

    Raises :class:`~common.xmlconfig.ConfigError` at the first element, in
    document order, with an unknown or a missing attribute. The root's own
    attributes are the schema's business (it allows none).
    """
    declared = {(e.parent or root.tag, e.tag): e for e in config_file.elements}
    for elem in root.iterdescendants(tag=etree.Element):
        element = declared.get((elem.getparent().tag, elem.tag))
        names = [s.attribute for s in element] if element is not None else []
        for attr in elem.attrib:
            if attr not in names:
                close = difflib.get_close_matches(attr, names, 1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                raise reader.error(elem, f"<{elem.tag}> has unknown attribute {attr}{hint}")
        missing = [s.attribute for s in element or () if s.required and elem.get(s.attribute) is None]
        if missing:
            raise reader.error(elem, f"<{elem.tag}> is missing attribute {', '.join(missing)}")


def parse_config(path: str, config_file: ConfigFile) -> tuple[Reader, etree._Element]:
    """Read ``path``, check its structure and its attributes; a :class:`Reader` for it and its root element.

    Raises :class:`~common.xmlconfig.ConfigError` with ``FILE:LINE: message``.
    """
    root = parse_file(path, config_file.schema)
    reader = Reader(path)
    check_attributes(reader, root, config_file)
    return reader, root


# --- documentation -------------------------------------------------------


def _md(text: str) -> str:
    """Prose made safe for a markdown table cell."""
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace("|", "\\|").replace("\n", " "))


def _code(text: str) -> str:
    """A value as markdown shows it."""
    return f"`{text}`"


def kind_text(setting: Setting, code: Callable[[str], str] = _code) -> str:
    """The type column: the kind, its bounds and its choices (``code`` marks up a literal value)."""
    s = setting
    if s.choices is not None:
        return "one of " + ", ".join(code(c) for c in s.choices)
    text = KINDS[s.kind]
    if s.minimum is not None and s.maximum is not None:
        text += f", {_number(s.minimum)} to {_number(s.maximum)}"
    elif s.minimum is not None:
        text += f", at least {_number(s.minimum)}"
    elif s.maximum is not None:
        text += f", at most {_number(s.maximum)}"
    if s.positive:
        text += ", greater than 0"
    return text


def default_text(setting: Setting, code: Callable[[str], str] = _code, prose: Callable[[str], str] = _md) -> str:
    """The default column: the value as written in a file, or words for one that is not a plain value.

    ``code`` marks up a literal value and ``prose`` escapes words, for
    markdown by default (the man pages pass roff ones).
    """
    s = setting
    if s.required:
        return "required"
    if s.default_doc is not None:
        return prose(s.default_doc)
    if s.default is None:
        return "none"
    if isinstance(s.default, bool):
        return code("true" if s.default else "false")
    if isinstance(s.default, tuple):
        return code(format_listen(s.default))
    if isinstance(s.default, (int, float)):
        return code(_number(s.default))
    return code(str(s.default))


def render_markdown(*files: ConfigFile) -> str:
    """docs/settings.md: per file, one section per element with a table of its attributes."""
    out = [f"<!-- generated by {REGENERATE}; do not edit -->", "",
           "# Configuration settings", "",
           "Every attribute of the configuration files, with its type, its default and its meaning.",
           "An attribute left out takes its default; \"none\" means the feature is off or the value unset.",
           ""]
    for f in files:
        out += [f"## {f.name}", "", f"{_md(f.doc)} Read by {f.program} from `{f.path}` by default.", ""]
        for e in f.elements:
            where = f" inside `<{e.parent}>`" if e.parent else ""
            out += [f"### `<{e.tag}>`{where}", "", _md(e.doc), ""]
            if not e.settings:
                continue
            out += ["| attribute | type | default | meaning |", "|---|---|---|---|"]
            for s in e.settings:
                out.append(f"| `{s.attribute}` | {kind_text(s)} | {default_text(s)} | {_md(s.doc)} |")
            out.append("")
    return "\n".join(out)


def main(argv: list[str]) -> int:
    """Print the markdown of the configuration files declared by the modules named in ``argv``."""
    if not argv or any(a.startswith("-") for a in argv):
        print(f"usage: python -m common.settings MODULE... (each defining CONFIG_FILE)\n"
              f"docs/settings.md is written by: {REGENERATE}", file=sys.stderr)
        return 2
    files = [importlib.import_module(name).CONFIG_FILE for name in argv]
    sys.stdout.write(render_markdown(*files))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
