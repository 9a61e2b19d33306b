"""The HAProxy session map's content: user key to node address, and what to send to change it (pure, no I/O).

For each user with a session on a node of the map's group, his home by
:func:`lbserver.core.sessions.return_home` (the same eligibility as the
terminal port: a member of the group that is healthy, drained or not)
gives one map entry ``KEY ADDRESS``, ADDRESS being what ``$IP`` answers for
that node. It reads the poll's figures only: a tie between two homes of
the same age goes by the polled weight, where the terminal port counts the
terminals sent since, and a user placed since the last poll is not in the
map yet (the recipe's stick table holds him until then).

Keys follow what RDP clients put in ``Cookie: mstshash=IDENTIFIER``
(MS-RDPBCGR 2.2.1.1; its note on 3.2.5.3.1 says Microsoft's clients send
the login name truncated to nine characters; FreeRDP sends the user name
without its domain, up to 255 characters; mstsc sends ``DOMAIN\\user`` when
the user typed it so). :func:`map_key` lower-cases and drops a
``DOMAIN\\`` prefix, and HAProxy's lookup does the same to the cookie
(``lower`` and the last ``\\``-separated field). A name longer than
:data:`TRUNCATED` characters gets its truncated form as a second key,
unless another user's name truncates the same way (then neither has
one: a wrong server is worse than a balanced pick).

A user name is data: :func:`map_key` refuses any name that could break a
map file line or the runtime API's line protocol (whitespace, control
characters, quotes, ``;``, ``#``, over :data:`MAX_NAME` characters...);
such users are left out of the map and counted by the caller.
"""

from __future__ import annotations

import re
from typing import Iterable, Mapping, NamedTuple

from lbserver.core.selection import Snapshot
from lbserver.core.sessions import return_home

TRUNCATED = 9
"""Characters of the user name Microsoft's RDP clients put in the cookie."""
MAX_NAME = 64
"""Characters of a user name (domain included) at most; longer ones are refused."""
_SAFE = re.compile(r"[A-Za-z0-9._@$+-]+")
"""What a map key may hold: no separator, quote, comment or escape character of the file or the runtime API."""
_ADDRESS = re.compile(r"[A-Za-z0-9.:_-]+")
"""What a map value may hold (an address or a host name); a node whose ``$IP`` is anything else gets no entry."""


class Changes(NamedTuple):
    """What turns one map into another: keys to add, keys whose address changes, keys to delete."""

    adds: dict[str, str]
    sets: dict[str, str]
    dels: tuple[str, ...]


def map_key(user: str) -> str | None:
    """The map key of ``user``: lower case, without a ``DOMAIN\\`` prefix; None for a name that is refused."""
    if len(user) > MAX_NAME:
        return None
    name = user.rpartition("\\")[2]
    if not _SAFE.fullmatch(name):
        return None
    return name.lower()


def addresses(snapshot: Snapshot, group: str, answer: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """``{user: address}`` of the users with a home in ``group``, and the refused user names.

    ``answer`` is each node's address as ``$IP`` answers it.
    """
    nodes = snapshot.nodes
    members = snapshot.members(group)
    users = {s.user for n in members for s in nodes[n].sessions}
    homes: dict[str, str] = {}
    refused: list[str] = []
    for user in users:
        node = return_home(snapshot.homes(user), lambda n: n in members and nodes[n].healthy,
                           lambda n: (nodes[n].selectable, nodes[n].weight))
        if node is None:
            continue
        if map_key(user) is None:
            refused.append(user)
        elif _ADDRESS.fullmatch(answer[node]):
            homes[user] = answer[node]
    return homes, refused


def entries(homes: Mapping[str, str]) -> dict[str, str]:
    """The map ``{key: address}`` of ``{user: address}`` (safe names only), truncated keys added where unambiguous."""
    full: dict[str, str] = {}
    clash: set[str] = set()
    for user, address in homes.items():
        key = map_key(user)
        if key in full and full[key] != address:
            clash.add(key)  # two names differing only in case or domain, in two places: nobody knows which
        full[key] = address
    for key in clash:
        del full[key]
    short: dict[str, str | None] = {}
    for key, address in full.items():
        if len(key) > TRUNCATED:
            cut = key[:TRUNCATED]
            short[cut] = address if cut not in short else None
    out = dict(full)
    for cut, address in short.items():
        if address is not None and cut not in full:
            out[cut] = address
    return out


def changes(old: Mapping[str, str], new: Mapping[str, str]) -> Changes:
    """What changes ``old`` into ``new``."""
    adds = {k: v for k, v in new.items() if k not in old}
    sets = {k: v for k, v in new.items() if k in old and old[k] != v}
    return Changes(adds, sets, tuple(k for k in old if k not in new))


def commands(map_name: str, diff: Changes) -> list[str]:
    """The runtime API commands (without line ends) applying ``diff`` to the map ``map_name``."""
    out = [f"del map {map_name} {k}" for k in diff.dels]
    out.extend(f"set map {map_name} {k} {v}" for k, v in diff.sets.items())
    out.extend(f"add map {map_name} {k} {v}" for k, v in diff.adds.items())
    return out


def file_text(entries: Mapping[str, str]) -> str:
    """The map file: a comment, then ``KEY ADDRESS`` lines sorted by key."""
    lines = ["# Written by lbserver (<haproxy-map>): user -> the address of his session's server.\n"]
    lines.extend(f"{k} {entries[k]}\n" for k in sorted(entries))
    return "".join(lines)


def parse_show_map(lines: Iterable[str]) -> dict[str, str]:
    """The map from ``show map FILE``'s answer (``0xID KEY VALUE`` lines)."""
    out: dict[str, str] = {}
    for line in lines:
        parts = line.split()
        if len(parts) == 3 and parts[0].startswith("0x"):
            out[parts[1]] = parts[2]
    return out


__all__ = ["Changes", "MAX_NAME", "TRUNCATED", "addresses", "changes", "commands", "entries", "file_text",
           "map_key", "parse_show_map"]
