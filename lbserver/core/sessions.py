"""Users' sessions on the nodes, the one rule that sends a returning user home, and the session limit.

Pure functions and small values, no I/O: an agent's ``sessions`` (each
``{"user", "kind", "state", "since", "info"}``) are checked here
(:func:`check_sessions`) and counted (:func:`session_count`); each snapshot
indexes who has a session where (:func:`index_homes`); :func:`return_home`
is the rule every path that places a user follows (the terminal port's
``?user=`` and the HAProxy session map today, the X2Go broker as it
comes); :class:`PendingHomes` remembers the users just sent somewhere for
a new session, by this balancer or a peer, until the node's figures can
show the session.

Threading: none of its own. A :class:`PendingHomes` is used from one
thread (the daemon's loop), like the Selector beside it.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, Mapping, NamedTuple, Sequence

ACTIVE, DISCONNECTED = "active", "disconnected"
STATES = (ACTIVE, DISCONNECTED)
MAX_SESSIONS = 10000
"""Sessions one reply may carry (as many as users)."""
MAX_FIELD = 4096
"""Characters of a session's ``user``, ``kind`` or ``info`` at most."""
NAMED_PROBLEMS = 3
"""Bad entries named one by one in the node's error; the rest are counted."""
MAX_PENDING = 10_000
"""Users remembered as just sent to a node (the oldest are forgotten first)."""


class Session(NamedTuple):
    """One session of a user on a node, as its agent reported it."""

    user: str
    kind: str
    state: str
    since: float | None
    """When it took its state (seconds since the epoch); None when the agent does not say (older agents)."""
    info: str = ""


class Home(NamedTuple):
    """A node where a user has a session (or was just sent for one): what :func:`return_home` chooses among."""

    node: str
    state: str
    since: float | None


def _entry(raw: object) -> Session:
    """One ``sessions`` entry, checked; ValueError says what is wrong with it."""
    if not isinstance(raw, dict):
        raise ValueError(f"expected a struct, got {type(raw).__name__}")
    fields = {}
    # Any kind is kept (utmp, process and x2go today): a newer agent's new kind places users all the same.
    for key in ("user", "kind", "info"):
        value = raw.get(key, "" if key == "info" else None)
        if not isinstance(value, str):
            raise ValueError(f"{key}: expected a string, got {type(value).__name__}")
        if len(value) > MAX_FIELD or (key != "info" and not value):
            raise ValueError(f"{key}: a string of {len(value)} characters (1 to {MAX_FIELD})")
        fields[key] = value
    state = raw.get("state")
    if state not in STATES:
        raise ValueError(f"state: expected {' or '.join(STATES)}, got {state!r:.40}")
    since = raw.get("since")
    if isinstance(since, bool) or not isinstance(since, (int, float)):
        raise ValueError(f"since: expected a number, got {type(since).__name__}")
    try:
        since = float(since)
    except OverflowError:
        since = math.inf
    if not math.isfinite(since):
        raise ValueError("since: not a finite number")
    return Session(fields["user"], fields["kind"], state, since, fields["info"])


def check_sessions(raw: object) -> tuple[tuple[Session, ...], str | None]:
    """An agent's ``sessions`` array: its good entries, and what was wrong with the others (None: nothing).

    A bad entry is left out and named (the first :data:`NAMED_PROBLEMS`),
    the others are kept: sessions place returning users and count towards
    a limit, they never make a node unhealthy, so one odd entry must not
    cost the node its place. What is not an array at all, or one longer
    than :data:`MAX_SESSIONS`, raises ValueError: the whole reply is then
    refused, as for ``users``.
    """
    if not isinstance(raw, list):
        raise ValueError(f"sessions: expected an array, got {type(raw).__name__}")
    if len(raw) > MAX_SESSIONS:
        raise ValueError(f"sessions: {len(raw)} entries (at most {MAX_SESSIONS})")
    good: list[Session] = []
    problems: list[str] = []
    bad = 0
    for i, entry in enumerate(raw):
        try:
            good.append(_entry(entry))
        except ValueError as exc:
            bad += 1
            if len(problems) < NAMED_PROBLEMS:
                problems.append(f"sessions[{i}]: {exc}")
    if not bad:
        return tuple(good), None
    more = f" and {bad - len(problems)} more" if bad > len(problems) else ""
    return tuple(good), f"{bad} bad session entries left out: {'; '.join(problems)}{more}"


def from_users(users: Iterable[str]) -> tuple[Session, ...]:
    """The sessions of an agent that reports ``users`` only (older versions): one active session each."""
    return tuple(Session(u, "utmp", ACTIVE, None) for u in users)


def session_count(state: Mapping | None) -> int:
    """A node's sessions as its agent counts them: its ``sessions``, else ``NBSESSIONS``, else its users.

    ``state`` is a reply checked by :func:`lbserver.core.health.validate_state` (None: no reply yet, 0).
    """
    if not state:
        return 0
    if state.get("sessions") is not None:
        return len(state["sessions"])
    count = state["variables"].get("NBSESSIONS")
    if isinstance(count, (int, float)) and not isinstance(count, bool) and math.isfinite(count):
        return max(0, int(count))
    return len(state["users"])


def node_sessions(state: Mapping | None) -> tuple[Session, ...]:
    """A node's sessions from its checked reply (None: no reply yet); older agents' users as active ones."""
    if not state:
        return ()
    sessions = state.get("sessions")
    return tuple(sessions) if sessions is not None else from_users(state["users"])


def state_counts(sessions: Sequence[Session]) -> tuple[int, int]:
    """(active, disconnected) among ``sessions``."""
    disconnected = sum(1 for s in sessions if s.state == DISCONNECTED)
    return len(sessions) - disconnected, disconnected


def index_homes(nodes: Iterable[tuple[str, Iterable[Session]]]) -> dict[str, tuple[Home, ...]]:
    """Per user, the nodes where he has a session: ``nodes`` is (node name, its sessions) pairs."""
    homes: dict[str, list[Home]] = {}
    for name, sessions in nodes:
        for s in sessions:
            homes.setdefault(s.user, []).append(Home(name, s.state, s.since))
    return {u: tuple(hs) for u, hs in homes.items()}


def return_home(homes: Iterable[Home], eligible: Callable[[str], bool],
                prefer: Callable[[str], tuple] | None = None) -> str | None:
    """The node a returning user goes back to, or None when he has no session on an eligible node.

    The one rule for every path that places a user (the terminal port's
    ``?user=``, the HAProxy session map, the X2Go broker, lbclient):

    * only ``homes`` on nodes for which ``eligible(node)`` holds count: the
      caller says which (the terminal port: members of the group whose
      agent answers and whose rules pass, *drained or at their session
      limit included*, since a drain and a limit stop new sessions only; a
      node down or unhealthy is no home, the user gets a new session);
    * a disconnected session wins over an active one (the user is coming
      back to it), the most recently disconnected first;
    * among active sessions only, the most recent one; sessions whose time
      is unknown (older agents) come after those with a time;
    * what is still tied goes to ``prefer(node)``, greatest first (the
      terminal port: selectable first, then the greater weight), then to
      the greatest node name, so every balancer decides alike.
    """
    best: tuple | None = None
    node = None
    for h in homes:
        if not eligible(h.node):
            continue
        key = (h.state == DISCONNECTED, h.since is not None, h.since or 0.0,
               prefer(h.node) if prefer is not None else (), h.node)
        if best is None or key > best:
            best, node = key, h.node
    return node


def at_limit(count: int, limit: int | None) -> bool:
    """Whether a node with ``count`` sessions (reported plus sent since) takes no new one under ``limit``."""
    return limit is not None and count >= limit


def limit_words(count: int, limit: int) -> str:
    """Why a node at its limit was passed over, as /status and lbctl say it."""
    return f"at its session limit {count}/{limit}"


MAX_USER_LENGTH = 255
"""The longest user name kept as a pending home (peers refuse longer ones too)."""


class PendingHomes:
    """Users just sent to a node for a new session, their home until the node's figures can show it.

    A user placed by this balancer or a peer, who asks again (a second
    terminal, a retried login) before the next poll shows his session, goes
    to the same node. An entry stands until figures of its node sampled at
    or after it arrive (:meth:`settle`): those show the session if it
    started, and say nothing of a login that never happened.
    """

    def __init__(self, limit: int = MAX_PENDING) -> None:
        self._limit = limit
        self._homes: dict[str, Home] = {}

    def add(self, user: str, node: str, at: float) -> None:
        """``user`` was sent to ``node`` at ``at`` for a new session (a name over 255 characters is not kept).

        No real login name is that long, and a client flooding the terminal
        port with made-up long names must not hold memory with them.
        """
        if len(user) > MAX_USER_LENGTH:
            return
        homes = self._homes
        homes.pop(user, None)  # re-inserted last: the dict's order is the age
        homes[user] = Home(node, ACTIVE, at)
        if len(homes) > self._limit:
            del homes[next(iter(homes))]

    def get(self, user: str) -> Home | None:
        """Where ``user`` was last sent for a new session, if the figures cannot show it yet."""
        return self._homes.get(user)

    def settle(self, sampled_at: Callable[[str], float | None]) -> None:
        """Forget the users whose node's figures are sampled at or after they were sent (or whose node is gone).

        ``sampled_at(node)`` is when the figures in force were measured; it
        raises KeyError for a node no longer configured.
        """
        keep: dict[str, Home] = {}
        for user, home in self._homes.items():
            try:
                at = sampled_at(home.node)
            except KeyError:
                continue
            if at is None or at < home.since:
                keep[user] = home
        self._homes = keep

    def __len__(self) -> int:
        return len(self._homes)


__all__ = ["ACTIVE", "DISCONNECTED", "Home", "MAX_SESSIONS", "PendingHomes", "STATES", "Session",
           "at_limit", "check_sessions", "from_users", "index_homes", "limit_words", "node_sessions",
           "return_home", "session_count", "state_counts"]
