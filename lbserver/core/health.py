"""Per-node poll records: reply validation and up/down hysteresis.

Pure logic, no I/O: the poller calls :func:`validate_state` on each agent
reply, then :func:`record_success` or :func:`record_failure` with the result.

Policy: a node never polled yet takes the state of its first poll at once
(up on a success, down on a failure), so a freshly started balancer serves
without waiting ``rise`` cycles. After that a node goes down after ``fall``
failed polls in a row and comes back after ``rise`` successful polls in a
row; single glitches do not flip it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lbserver.core.sessions import check_sessions

MAX_VARIABLES = 1000
MAX_USERS = 10000
MAX_STRING = 4096


@dataclass
class NodeRecord:
    """What the poller knows about one node (mutable, owned by the poller)."""

    name: str
    up: bool | None = None              # None: never polled
    consecutive_ok: int = 0
    consecutive_failed: int = 0
    last_state: dict | None = None      # last validated get_state reply, kept across failures
    last_success: float | None = None   # epoch seconds
    last_error: str | None = None
    last_change: float | None = None    # epoch seconds of the last up/down transition


def record_success(rec: NodeRecord, state: dict, now: float, rise: int) -> str | None:
    """Record a successful poll with its validated ``state``.

    Returns ``"up"`` when the node just came up, else None.
    """
    rec.consecutive_ok += 1
    rec.consecutive_failed = 0
    rec.last_state = state
    rec.last_success = now
    rec.last_error = None
    if rec.up is None or (rec.up is False and rec.consecutive_ok >= rise):
        rec.up = True
        rec.last_change = now
        return "up"
    return None


def record_failure(rec: NodeRecord, error: str, now: float, fall: int) -> str | None:
    """Record a failed poll (``error`` says why, for logs and the status page).

    ``last_state`` is kept so the status page can still show the last known
    figures; a down node is never selectable whatever its last state said.
    Returns ``"down"`` when the node just went down, else None.
    """
    rec.consecutive_failed += 1
    rec.consecutive_ok = 0
    rec.last_error = error
    if rec.up is None or (rec.up is True and rec.consecutive_failed >= fall):
        rec.up = False
        rec.last_change = now
        return "down"
    return None


def _check_string(what: str, value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what}: expected a string, got {type(value).__name__}")
    if len(value) > MAX_STRING:
        raise ValueError(f"{what}: string of {len(value)} characters (at most {MAX_STRING})")
    return value


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _finite(value: int | float) -> bool:
    """A finite number that converts to a float: XML-RPC ints are unbounded, weights are floats."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def validate_state(reply: object) -> dict:
    """Check that an agent's ``get_state()`` reply has the documented shape.

    Returns a new dict with exactly ``hostname``, ``agent_version`` (``""``
    when the agent sent none), ``sampled_at``, ``variables``, ``users``,
    ``sessions`` (a tuple of :class:`~lbserver.core.sessions.Session`, None
    from an agent that sends none) and ``sessions_error`` (keys outside the
    contract are not kept, so the status page only ever shows JSON-safe
    values). Raises ValueError naming the first problem; no variable or
    user is dropped or repaired silently. A bad entry of ``sessions`` is
    the one exception: it is left out and named in ``sessions_error``
    (see :func:`~lbserver.core.sessions.check_sessions`).
    """
    if not isinstance(reply, dict):
        raise ValueError(f"get_state reply: expected a struct, got {type(reply).__name__}")
    for key in ("hostname", "variables", "users", "sampled_at"):
        if key not in reply:
            raise ValueError(f"get_state reply: missing {key!r}")
    hostname = _check_string("hostname", reply["hostname"])
    version = _check_string("agent_version", reply.get("agent_version", ""))
    sampled_at = reply["sampled_at"]
    if not _is_number(sampled_at) or not _finite(sampled_at):
        raise ValueError(f"sampled_at: expected a number, got {sampled_at!r:.80}")

    variables = reply["variables"]
    if not isinstance(variables, dict):
        raise ValueError(f"variables: expected a struct, got {type(variables).__name__}")
    if len(variables) > MAX_VARIABLES:
        raise ValueError(f"variables: {len(variables)} entries (at most {MAX_VARIABLES})")
    for name, value in variables.items():
        _check_string("variable name", name)
        if isinstance(value, str):
            _check_string(f"variable {name}", value)
        elif isinstance(value, (float, int)) and not isinstance(value, bool):
            # XML-RPC cannot carry NaN/inf portably, and an int beyond a float's
            # range would break the weighing: either means a broken agent.
            if not _finite(value):
                raise ValueError(f"variable {name}: not a finite number ({value!r:.40})")
        elif not isinstance(value, (bool, int)):
            raise ValueError(f"variable {name}: expected int, float, bool or string, "
                             f"got {type(value).__name__}")

    users = reply["users"]
    if not isinstance(users, list):
        raise ValueError(f"users: expected an array, got {type(users).__name__}")
    if len(users) > MAX_USERS:
        raise ValueError(f"users: {len(users)} entries (at most {MAX_USERS})")
    for i, user in enumerate(users):
        _check_string(f"users[{i}]", user)

    sessions, sessions_error = check_sessions(reply["sessions"]) if "sessions" in reply else (None, None)

    return {"hostname": hostname, "agent_version": version, "sampled_at": float(sampled_at),
            "variables": dict(variables), "users": list(users), "sessions": sessions,
            "sessions_error": sessions_error}


__all__ = ["MAX_STRING", "MAX_USERS", "MAX_VARIABLES", "NodeRecord", "record_failure",
           "record_success", "validate_state"]
