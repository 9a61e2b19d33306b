"""x2gobroker 0.0.4's HTTP broker protocol, as pure functions: a request's form in, a reply's status and body out.

The clients (X2Go Client on ``/plain/``, Python X2Go and PyHoca on
``/json/``) POST an ``application/x-www-form-urlencoded`` form with
``task`` (``listsessions``, ``listprofiles``, ``selectsession``,
``testcon``), ``user``, ``password``, ``authid`` and, for
``selectsession``, the profile as ``sid`` (plain) or ``profile-id``
(json). The replies are those of x2gobroker's ``web/plain.py`` and
``web/json.py``, field for field, because the clients parse exactly them:
X2Go Client looks for ``Access granted``, the INI text between
``START_USER_SESSIONS`` and ``END_USER_SESSIONS``, and the lines
``SERVER:host:port`` and ``SESSION_INFO:line``; Python X2Go reads the JSON
document's ``profiles`` and ``selected_session`` only when the reply's
content type starts with ``text/json``.

Nothing here does I/O, authenticates or picks: :func:`answer` is given
what the caller found (the user's profiles, a :class:`Placement`).
No threads.
"""

from __future__ import annotations

import json
import urllib.parse
from dataclasses import dataclass
from typing import Callable, Mapping, NamedTuple

from lbserver.config import X2goProfile

PLAIN, JSON = "plain", "json"
FRONTENDS = (PLAIN, JSON)
CONTENT_TYPES = {PLAIN: "text/plain; charset=utf-8", JSON: "text/json; charset=utf-8"}
"""As x2gobroker sends them: Python X2Go refuses a JSON reply whose type does not start with text/json."""
TASKS = ("listsessions", "listprofiles", "selectsession", "testcon")
MAX_FIELD = 4096
"""Characters of one form field at most (a user name, a password, a profile id)."""
NO_SERVER = "no-X2Go-Server-available"
"""x2gobroker's server name when no server of a multi-server profile can be reached."""
NO_PROFILE = "no-server-available"
"""x2gobroker's server name for a profile it does not have."""

# x2gobroker's X2GO_DESKTOP_SESSIONS: these commands run as a desktop (rootless false), in upper case.
DESKTOPS = frozenset(("KDE", "GNOME", "XFCE", "CINNAMON", "MATE", "LXDE", "TRINITY", "UNITY", "ICEWM",
                      "OPENBOX", "XDMCP"))

# x2gobroker's X2GOBROKER_SESSIONPROFILE_DEFAULTS without its access lists (never sent to clients), in the order
# its inifile backend lists them: every profile is sent with all of them, as x2gobroker sends its profiles.
PROFILE_DEFAULTS: tuple[tuple[str, object], ...] = (
    ("defsndport", True), ("useiconv", False), ("iconvfrom", "UTF-8"), ("height", 600), ("export", ""),
    ("quality", 9), ("fullscreen", False), ("layout", ""), ("useexports", True), ("width", 800), ("speed", 2),
    ("soundsystem", "pulse"), ("print", True), ("type", "auto"), ("sndport", 4713), ("xinerama", True),
    ("variant", ""), ("usekbd", True), ("fstunnel", True),
    ("applications", ["TERMINAL", "WWWBROWSER", "MAILCLIENT", "OFFICE"]), ("multidisp", False),
    ("sshproxyport", 22), ("sound", True), ("rootless", True), ("iconvto", "UTF-8"), ("soundtunnel", True),
    ("dpi", 96), ("sshport", 22), ("setdpi", 0), ("pack", "16m-jpeg"), ("directrdp", False), ("user", ""),
    ("kdrive", False),
)


class BadRequest(Exception):
    """A request the broker cannot read: answered 400 with this message (never holding what was sent)."""


@dataclass(frozen=True)
class Form:
    """What one broker request asks."""

    frontend: str
    task: str
    user: str
    login: str
    """The server login (``login``), the broker user when not given: the user whose sessions count."""
    password: str
    has_password: bool
    """Whether the form carried a non-empty password at all."""
    authid: str
    profile_id: str

    def __repr__(self) -> str:  # a password never reaches a log through a repr
        return (f"Form(frontend={self.frontend!r}, task={self.task!r}, user={self.user!r}, "
                f"profile_id={self.profile_id!r}, password={'<given>' if self.has_password else '<none>'})")


class Placement(NamedTuple):
    """Where a ``selectsession`` goes: the host to send, and the X2Go session line to resume there, if any."""

    host: str
    session_info: str | None = None


class Reply(NamedTuple):
    """An HTTP status, a content type and a body."""

    status: int
    content_type: str
    body: bytes


def frontend_of(path: str) -> str | None:
    """``plain`` or ``json`` for a request path (``/plain/``, ``/json``, ``/plain/inifile/``...); None for others."""
    first = path.strip("/").split("/", 1)[0]
    return first if first in FRONTENDS else None


def parse_form(frontend: str, body: bytes) -> Form:
    """Read a POSTed form (``application/x-www-form-urlencoded``; X2Go Client sends it so, whatever its header says).

    Raises :class:`BadRequest` for a body that is no form, a field given
    twice, a field over :data:`MAX_FIELD` characters or holding a control
    character (the user name and profile are written into replies).
    """
    try:
        text = body.decode("utf-8")
        pairs = urllib.parse.parse_qsl(text, keep_blank_values=True, strict_parsing=bool(text),
                                       max_num_fields=32)
    except (UnicodeDecodeError, ValueError):
        raise BadRequest("the request body is not a URL-encoded form") from None
    fields: dict[str, str] = {}
    for key, value in pairs:
        if key in fields:
            raise BadRequest(f"form field {key[:40]!r} is given twice")
        if len(value) > MAX_FIELD:
            raise BadRequest(f"form field {key[:40]!r} is longer than {MAX_FIELD} characters")
        if key != "password" and any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise BadRequest(f"form field {key[:40]!r} holds a control character")
        fields[key] = value
    user = fields.get("user", "")
    password = fields.get("password", "")
    profile_id = fields.get("profile-id", "")
    profile_id = fields.get("sid", profile_id)  # as x2gobroker: sid, when given, wins
    return Form(frontend=frontend, task=fields.get("task", ""), user=user, login=fields.get("login", "") or user,
                password=password, has_password=bool(password), authid=fields.get("authid", ""),
                profile_id=profile_id)


def profile_fields(profile: X2goProfile, user: str, hosts: list[str]) -> dict[str, object]:
    """One profile as x2gobroker lists it for ``user``: its own keys first, then every default, host a list."""
    command = profile.command
    fields: dict[str, object] = {"name": profile.name, "host": list(hosts), "command": command}
    for key, value in PROFILE_DEFAULTS:
        fields.setdefault(key, list(value) if isinstance(value, list) else value)
    fields["sshport"] = profile.sshport
    login = profile.user if profile.user is not None else "BROKER_USER"
    fields["user"] = user if login == "BROKER_USER" else login
    if command.upper() in DESKTOPS:
        fields["rootless"] = False
        fields["command"] = command.upper()
    return fields


def _plain_value(value: object) -> str:
    # x2gobroker's plain output: strings as they are, lists joined by commas, anything else as an integer.
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        return ",".join(value)
    return str(int(value))  # type: ignore[call-overload]


def _plain_profiles(profiles: Mapping[str, Mapping[str, object]]) -> str:
    if not profiles:
        return ""
    out = ["START_USER_SESSIONS\n\n"]
    for pid in sorted(profiles):
        out.append(f"[{pid}]\n")
        out.extend(f"{key}={_plain_value(value)}\n" for key, value in profiles[pid].items())
        out.append("\n")
    out.append("END_USER_SESSIONS\n")
    return "".join(out)


def answer(form: Form, profiles: Callable[[], Mapping[str, Mapping[str, object]]],
           select: Callable[[str], tuple[Placement, int] | None]) -> Reply:
    """The reply to an authenticated request, as x2gobroker 0.0.4 words it.

    ``profiles()`` gives the user's profiles (id -> :func:`profile_fields`);
    ``select(profile_id)`` places the user, returning the placement and the
    profile's ssh port, or None for a profile the broker does not have
    (answered, as x2gobroker does, with its ``no-server-available``
    server). A form without a task (the clients' login check) is answered
    ``Access granted`` alone on ``/plain/`` and with the empty task echoed
    on ``/json/``, as x2gobroker does; a task outside :data:`TASKS` is the
    caller's to refuse (x2gobroker would grant it too).
    """
    task = form.task
    if form.frontend == PLAIN:
        out = "Access granted\n"
        if task == "testcon":
            return Reply(200, CONTENT_TYPES[PLAIN], b"")
        if task == "listsessions":
            out += _plain_profiles(profiles())
        elif task == "selectsession" and form.profile_id:
            placed = select(form.profile_id)
            place, port = placed if placed is not None else (Placement(NO_PROFILE), 22)
            out += f"SERVER:{place.host}:{port}\n"
            if place.session_info:
                out += f"SESSION_INFO:{place.session_info}\n"
        return Reply(200, CONTENT_TYPES[PLAIN], out.encode())
    # json: listsessions is the old name of listprofiles
    task = "listprofiles" if task == "listsessions" else task
    payload: dict[str, object] = {"task": task, "auth-status": "Access granted"}
    if task == "testcon":
        return Reply(200, CONTENT_TYPES[JSON], b"")
    if task == "listprofiles":
        payload["profiles"] = dict(profiles())
    elif task == "selectsession":
        payload["selected_session"] = {}
        if form.profile_id:
            placed = select(form.profile_id)
            place, port = placed if placed is not None else (Placement(NO_PROFILE), 22)
            chosen: dict[str, str] = {"server": place.host, "port": str(port)}
            if place.session_info:
                chosen["session_info"] = place.session_info
            payload["selected_session"] = chosen
    return Reply(200, CONTENT_TYPES[JSON], json.dumps(payload, indent=4, sort_keys=True).encode())


def error(status: int, message: str) -> Reply:
    """An error reply: plain text, one line (X2Go Client shows the HTTP error; scripts read the line)."""
    return Reply(status, "text/plain; charset=utf-8", (message + "\n").encode())


__all__ = ["BadRequest", "CONTENT_TYPES", "DESKTOPS", "FRONTENDS", "Form", "JSON", "MAX_FIELD", "NO_PROFILE",
           "NO_SERVER", "PLAIN", "PROFILE_DEFAULTS", "Placement", "Reply", "TASKS", "answer", "error", "frontend_of",
           "parse_form", "profile_fields"]
