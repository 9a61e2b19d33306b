"""``<x2gobroker>`` and ``<x2go-loadchecker>`` of lbsconfig.xml: read, checked, and turned into their dataclasses.

Called by :mod:`lbserver.config.loader` with the file's reader; every
problem is a :class:`~common.xmlconfig.ConfigError` naming the file and the
line. No threads.
"""

from __future__ import annotations

import grp
import logging
from typing import Callable

from lxml import etree

from common.settings import read, read_all
from common.tls import TlsConfigError, server_context
from common.xmlconfig import Reader, warn_loopback_only
from lbserver.config.model import Group, X2goBroker, X2goLoadChecker, X2goProfile
from lbserver.config.settings import X2GO_ALLOW, X2GO_LOADCHECKER, X2GO_PROFILE, X2GOBROKER

log = logging.getLogger(__name__)

MAX_PROFILE_NAME = 200
"""The longest profile name: it travels in every client's request and reply."""


def _profile(r: Reader, elem: etree._Element, groups: dict[str, Group]) -> X2goProfile:
    values = read_all(r, elem, X2GO_PROFILE)
    name = values["name"]
    if not name or len(name) > MAX_PROFILE_NAME or any(c in name for c in "[]\r\n=") or name != name.strip():
        raise r.error(elem, f"<profile> name {name!r}: 1 to {MAX_PROFILE_NAME} characters, no brackets, '=', line "
                            "ends or surrounding blanks (X2Go Client reads profiles as an INI file)")
    if values["group"] not in groups:
        raise r.error(elem, f"<profile> {name!r} names group {values['group']!r}, which <nodes> does not have")
    for key in ("command", "user"):
        if values[key] is not None and any(c in values[key] for c in "\r\n"):
            raise r.error(elem, f"<profile> {name!r}: {key} may not hold a line end")
    return X2goProfile(**values, line=elem.sourceline)


def load_broker(r: Reader, elem: etree._Element, groups: dict[str, Group],
                relative: Callable[[str], str]) -> X2goBroker:
    """``<x2gobroker>`` with its ``<allow>`` and ``<profile>`` children; the TLS files are loaded once to check them."""
    values = read_all(r, elem, X2GOBROKER)
    for key in ("tls_cert", "tls_key"):
        values[key] = relative(values[key]) if values[key] else None
    if values["tls_key"] and not values["tls_cert"]:
        raise r.error(elem, "<x2gobroker> has tls-key but no tls-cert")
    if values["tls_cert"]:
        try:
            server_context(values["tls_cert"], values["tls_key"])
        except TlsConfigError as exc:
            raise r.error(elem, f"<x2gobroker>: {exc}") from None
    profiles: list[X2goProfile] = []
    for p in elem.iter("profile"):
        profile = _profile(r, p, groups)
        if any(q.name == profile.name for q in profiles):
            raise r.error(p, f"<profile> {profile.name!r} is given twice")
        profiles.append(profile)
    cfg = X2goBroker(**values, allow=tuple(read(r, a, X2GO_ALLOW.from_) for a in elem.iter("allow")),
                     profiles=tuple(profiles), line=elem.sourceline)
    if cfg.auth == "pam" and not cfg.tls_cert and not cfg.password_over_http:
        log.warning("%s:%s: <x2gobroker auth=\"pam\"> without tls-cert refuses every password (they would cross "
                    "the network in clear): give it tls-cert, or password-over-http=\"true\"", r.path,
                    elem.sourceline)
    warn_loopback_only(r, elem, cfg.listen[0], cfg.allow, "the X2Go clients' networks")
    return cfg


def load_loadchecker(r: Reader, elem: etree._Element, relative: Callable[[str], str]) -> X2goLoadChecker:
    """``<x2go-loadchecker>``: its socket path, mode and group, checked."""
    values = read_all(r, elem, X2GO_LOADCHECKER)
    values["socket"] = relative(values["socket"])
    try:
        mode = int(values["mode"], 8)
    except ValueError:
        mode = -1
    if not 0 <= mode <= 0o777:
        raise r.error(elem, f"<x2go-loadchecker> mode {values['mode']!r}: expected octal permission bits such as 0660")
    if values["socket_group"] is not None:
        try:
            grp.getgrnam(values["socket_group"])
        except KeyError:
            raise r.error(elem, f"<x2go-loadchecker> socket-group {values['socket_group']!r}: no such group") from None
    return X2goLoadChecker(**values, line=elem.sourceline)


__all__ = ["MAX_PROFILE_NAME", "load_broker", "load_loadchecker"]
