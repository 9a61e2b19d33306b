"""Where the X2Go broker sends a user: the core's pick, and the X2Go session to resume there.

A ``selectsession`` is placed exactly as a terminal's ``?user=`` is: by
the balancer's own pick (``choose``, the core's ``answer_details``), so
weights, login-storm compensation, peers, drains, session limits and the
one return-home rule (:func:`lbserver.core.sessions.return_home`) all
apply. When that pick sends the user back to a node where his agent
reports an X2Go session of his, the session's line (``info``, as
``x2golistsessions`` prints it) goes with the answer, so the client
resumes it; a suspended session wins over a running one, the most recent
first, as x2gobroker prefers them.

A profile list shows, per profile, the server of the user's X2Go session
in its group, or all the group's nodes, as x2gobroker shows its ``host``
list: listing picks nothing, so it never counts as a new session. (No
``status`` key: PyHoca-CLI 0.6 fails on a profile that has one.)

Runs on the daemon's loop thread, like the core it reads (through
:mod:`lbserver.core.view`).
"""

from __future__ import annotations

from typing import Callable, Mapping

from lbserver.config import X2goProfile
from lbserver.config.model import answer_for
from lbserver.core.sessions import DISCONNECTED, Home, Session, return_home
from lbserver.core.view import BalancerView
from lbserver.x2go.broker import NO_SERVER, Placement

Choose = Callable[[str | None, str | None], Mapping]
"""The core's ``answer_details(group, user)``: ``{"host", "node", "group", "weight", "why"}``."""

X2GO = "x2go"


def _key(s: Session) -> tuple:
    return (s.state == DISCONNECTED, s.since is not None, s.since or 0.0)


def x2go_session(sessions: tuple[Session, ...], user: str) -> Session | None:
    """``user``'s X2Go session to resume among a node's ``sessions``: suspended first, then the most recent."""
    mine = [s for s in sessions if s.kind == X2GO and s.user == user and s.info]
    return max(mine, key=_key) if mine else None


class Farm:
    """Places broker users on the nodes of a profile's group, through the core's pick."""

    def __init__(self, view: BalancerView, choose: Choose) -> None:
        self._view = view
        self._choose = choose

    def place(self, profile: X2goProfile, user: str) -> Placement:
        """Pick a node for ``user`` in ``profile``'s group (a new session counts); with his session line to resume."""
        details = self._choose(profile.group, user or None)
        info = None
        if user and details["why"] == "user":
            view = self._view.snapshot.nodes.get(details["node"])
            session = x2go_session(view.sessions, user) if view is not None else None
            info = session.info if session is not None else None
        return Placement(details["host"], info)

    def listing(self, profile: X2goProfile, user: str) -> list[str]:
        """The hosts shown for ``profile`` in ``user``'s list: his X2Go session's server, else the group's nodes."""
        snap, config = self._view.snapshot, self._view.config
        members = snap.members(profile.group)
        sessions: dict[str, Session] = {}
        if user:
            for home in snap.homes(user):
                view = snap.nodes[home.node]
                if home.node in members and view.healthy and home.node not in sessions:
                    found = x2go_session(view.sessions, user)
                    if found is not None:
                        sessions[home.node] = found
        node = return_home((Home(n, s.state, s.since) for n, s in sessions.items()), lambda n: True)
        nodes = [node] if node is not None else list(snap.group_nodes(profile.group))
        return [answer_for(config.nodes[n], config.returns) if n in config.nodes else n for n in nodes] or [NO_SERVER]


__all__ = ["Choose", "Farm", "x2go_session"]
