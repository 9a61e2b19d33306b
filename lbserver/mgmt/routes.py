"""The management API's one route table: the server routes by it, lbctl and the dashboard build URLs from it.

Standard library only: lbctl imports this module and nothing heavier.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass


@dataclass(frozen=True)
class Route:
    """One endpoint: ``method`` and ``pattern`` (``{name}`` matches one path segment) run ``action``."""

    method: str
    pattern: str
    action: str
    admin: bool = False
    """Admin actions change state: only loopback or a token holder may call them."""
    ok: int = 200
    """The HTTP status of a success (202: accepted, carried out after the answer)."""

    def path(self, **params: str) -> str:
        """This route's path with ``params`` filled in (each quoted as one segment)."""
        return self.pattern.format(**{k: urllib.parse.quote(v, safe="") for k, v in params.items()})

    def match(self, path: str) -> dict[str, str] | None:
        """The parameters when ``path`` is this route's, else None."""
        want = self.pattern.strip("/").split("/")
        got = path.strip("/").split("/")
        if len(want) != len(got):
            return None
        params: dict[str, str] = {}
        for w, g in zip(want, got):
            if w.startswith("{") and w.endswith("}"):
                if not g:
                    return None
                params[w[1:-1]] = urllib.parse.unquote(g)
            elif w != g:
                return None
        return params


ROUTES: tuple[Route, ...] = (
    Route("GET", "/status", "status"),
    Route("GET", "/history", "history"),
    Route("GET", "/metrics", "metrics"),
    Route("GET", "/", "dashboard"),
    Route("POST", "/nodes/{node}/drain", "drain", admin=True),
    Route("POST", "/nodes/{node}/enable", "enable", admin=True),
    Route("POST", "/reload", "reload", admin=True, ok=202),
)

BY_ACTION: dict[str, Route] = {r.action: r for r in ROUTES}


def url(base: str, action: str, **params: str) -> str:
    """The full URL of ``action`` on the management service at ``base``."""
    return base.rstrip("/") + BY_ACTION[action].path(**params)


def resolve(method: str, path: str) -> tuple[Route | None, dict[str, str], bool]:
    """(route, parameters, path known) for a request; route is None when nothing matches.

    ``path known`` tells a wrong method on a real path (405) from an unknown path (404).
    """
    known = False
    for route in ROUTES:
        params = route.match(path)
        if params is None:
            continue
        known = True
        if route.method == method:
            return route, params, True
    return None, {}, known
