"""The management API as data: each action returns a document or raises a named :class:`ApiError`.

Nothing here knows HTTP: :mod:`lbserver.mgmt.http` parses requests,
authorises them and maps the error codes to statuses. The actions read the
core through :class:`~lbserver.core.view.BalancerView` and act through
:class:`~lbserver.core.view.AdminActions`; the DNS aliases come from an
:class:`AliasSource` (the DNS service, or nothing), the peer exchange from a
:class:`PeerSource`. Actions run on the daemon's loop thread, except the
reads of an :meth:`Api.frozen` copy, which may run on any thread.
"""

from __future__ import annotations

from typing import Any

from lbserver.core.view import AdminActions, BalancerView, ReloadRefused, UnknownNode
from lbserver.mgmt.aliases import AliasSource, NoAliases
from lbserver.mgmt.dashboard import render_dashboard
from lbserver.mgmt.frozen import FrozenAliases, FrozenPeers, FrozenSessionMap, FrozenView, FrozenX2go
from lbserver.mgmt.metrics import render_metrics
from lbserver.mgmt.peers import NoPeers, PeerSource
from lbserver.mgmt.sessionmap import NoSessionMap, SessionMapSource
from lbserver.mgmt.x2go import NoX2go, X2goSource
from lbserver.mgmt.status import build_status, source_drain_words

# Error codes (the ``error`` member of an error document), each with its HTTP status.
BAD_REQUEST = "bad-request"
NOT_FOUND = "not-found"
UNKNOWN_NODE = "unknown-node"
RELOAD_REFUSED = "reload-refused"
FORBIDDEN = "forbidden"
METHOD_NOT_ALLOWED = "method-not-allowed"
TOO_LARGE = "too-large"
INTERNAL = "internal"

HTTP_STATUS = {BAD_REQUEST: 400, NOT_FOUND: 404, UNKNOWN_NODE: 404, RELOAD_REFUSED: 400, FORBIDDEN: 403,
               METHOD_NOT_ALLOWED: 405, TOO_LARGE: 413, INTERNAL: 500}


class ApiError(Exception):
    """A refusal with a code from this module and a message for the admin."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Api:
    """The actions of the management service (one per route of :mod:`lbserver.mgmt.routes`)."""

    def __init__(self, view: BalancerView, admin: AdminActions, aliases: AliasSource | None = None,
                 peers: PeerSource | None = None, session_map: SessionMapSource | None = None,
                 x2go: X2goSource | None = None) -> None:
        self.view = view
        self.admin = admin
        self.aliases = aliases or NoAliases()
        self.peers = peers or NoPeers()
        self.session_map = session_map or NoSessionMap()
        self.x2go = x2go or NoX2go()

    def frozen(self) -> "Api":
        """An Api over copies taken now (on the loop thread), whose reads may then run on any thread.

        Its admin actions are this one's, and belong on the loop thread still.
        """
        return Api(FrozenView(self.view), self.admin, FrozenAliases(self.aliases), FrozenPeers(self.peers),
                   FrozenSessionMap(self.session_map), FrozenX2go(self.x2go))

    def status(self) -> dict[str, Any]:
        """The /status document (schema in the manual's API chapter)."""
        return build_status(self.view, self.aliases.alias_status(), self.peers.peers_status(),
                            self.session_map.session_map_status(), self.x2go.x2go_status(),
                            self.aliases.dns_figures())

    def history(self, since: str | None = None) -> dict[str, Any]:
        """Recent weights per node; ``since`` (seconds since the epoch) keeps only newer points."""
        when = None
        if since is not None:
            try:
                when = float(since)
            except ValueError:
                raise ApiError(BAD_REQUEST, "since must be a number (seconds since the epoch)") from None
        return self.view.history.to_dict(when)

    def metrics(self) -> bytes:
        """The Prometheus text exposition."""
        return render_metrics(self.view, self.aliases, self.peers)

    def dashboard(self) -> bytes:
        """The HTML dashboard with the current status and history embedded."""
        return render_dashboard(self.status(), self.view.history.to_dict())

    def drain(self, node: str) -> dict[str, Any]:
        """Send no new terminals to ``node`` and take it out of DNS aliases."""
        return self._set_drained(node, True)

    def enable(self, node: str) -> dict[str, Any]:
        """Undo :meth:`drain`."""
        return self._set_drained(node, False)

    def _set_drained(self, node: str, drained: bool) -> dict[str, Any]:
        try:
            changed = self.admin.set_drained(node, drained)
        except UnknownNode as exc:
            raise ApiError(UNKNOWN_NODE, str(exc)) from None
        word = "drained" if drained else "enabled"
        message = f"node {node} {word}" + ("" if changed else " (no change)")
        view = self.view.snapshot.nodes.get(node)
        if not drained and view is not None and "agent" in view.drained_by:
            # An admin enable does not undo a drain at the source: say so rather than let it look back.
            configured = self.view.config.nodes.get(node)
            agentless = configured is not None and configured.source != "agent"
            how = ("removing the server's mille_xterm_drained textfile ends that" if agentless
                   else "lbagent --enable on the server ends that")
            message += f"; still {source_drain_words(view)} ({how})"
        return {"node": node, "drained": drained, "message": message}

    async def reload(self) -> dict[str, Any]:
        """Re-read the configuration file; refused, with FILE:LINE, when it does not load."""
        try:
            path = await self.admin.request_reload()
        except ReloadRefused as exc:
            raise ApiError(RELOAD_REFUSED, f"reload refused, configuration kept: {exc}") from None
        return {"message": f"reloading {path}"}
