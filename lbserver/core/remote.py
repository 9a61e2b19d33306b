"""Groups fed by another balancer: the WMS arbiter's regional balancing.

A ``<group name=... from="http://site-lbserver:8009" remote-group=...>`` has
no nodes of its own. At each poll the site balancer's ``/status`` is read
(one bounded HTTP/1.0 GET per site and cycle, like an agent poll: the whole
exchange within the poll timeout, the reply within ``max-reply-bytes``, with
the site's admin token when one is configured) and the group's nodes come
out of it: each node's address, its agent's variables and users, whether the
site can reach it, and whether it is drained there. A node drained at the
site arrives with ``DRAINED`` = true (drain at the source), so it is drained
here too. This balancer then weighs those nodes with its own rules.

Nothing the site sends is trusted: the reply is parsed as JSON and every
part checked (names, addresses, the variables as an agent's reply would
be); a site that cannot be read, or sends nonsense, fails the poll of all
its nodes, which go down after ``fall`` polls as an agent's would.
Runs on the balancer's loop thread.
"""

from __future__ import annotations

import json
import re
import time
import urllib.parse
from dataclasses import dataclass

from lbserver.config import Group, Node
from lbserver.config.model import agent_host_port
from lbserver.core.health import validate_state
from lbserver.core.poller import PollError, exchange

NODE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")
MAX_NODES = 100000


@dataclass(frozen=True)
class RemoteNode:
    """One node as a site balancer reports it: ``state`` (an agent-shaped reply) or ``error``."""

    node: Node
    state: dict | None
    error: str | None


def _request(group: Group) -> tuple[str, int, bytes]:
    url = urllib.parse.urlsplit(group.source)
    host, port = url.hostname, url.port or 80
    path = (url.path.rstrip("/") or "") + "/status"
    auth = f"Authorization: Bearer {group.token}\r\n" if group.token else ""
    shown = f"[{host}]" if ":" in host else host
    return host, port, (f"GET {path} HTTP/1.0\r\nHost: {shown}:{port}\r\nUser-Agent: lbserver\r\n"
                        f"Accept: application/json\r\n{auth}\r\n").encode()


async def fetch_status(group: Group, timeout: float, max_bytes: int) -> dict:
    """The site balancer's /status document; raises :class:`PollError` in words for the status page."""
    host, port, request = _request(group)
    try:
        raw = await exchange(host, port, request, timeout, max_bytes, server="lbserver")
    except PollError as exc:
        raise PollError(f"site balancer {group.source}: {exc}") from None
    head, sep, body = raw.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].split()
    if not sep or len(status) < 2 or not status[0].startswith(b"HTTP/"):
        raise PollError(f"site balancer {group.source}: reply is not HTTP")
    if status[1] != b"200":
        hint = " (check token-file)" if status[1] in (b"401", b"403") else ""
        raise PollError(f"site balancer {group.source}: HTTP {status[1].decode('latin-1')[:3]}{hint}")
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        raise PollError(f"site balancer {group.source}: reply is not JSON") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("nodes"), dict) or not isinstance(doc.get("groups"), dict):
        raise PollError(f"site balancer {group.source}: reply is not a /status document")
    return doc


def _address(name: str, entry: dict, max_sessions: int | None) -> Node:
    address, ip = entry.get("address"), entry.get("ip")
    if not isinstance(address, str):
        raise ValueError("no address")
    host, port = agent_host_port(address)
    if ip is not None and (not isinstance(ip, str) or not 0 < len(ip) <= 255):
        raise ValueError("ip is not an address")
    return Node(name=name, address=address, host=host, port=port, ip=ip, max_sessions=max_sessions)


def group_nodes(group: Group, doc: dict, now: float | None = None) -> list[RemoteNode]:
    """The nodes of ``group.remote_group`` in a site's /status document; raises PollError when it has none."""
    site_group = doc["groups"].get(group.remote_group)
    if not isinstance(site_group, dict) or not isinstance(site_group.get("nodes"), list):
        raise PollError(f"site balancer {group.source} has no group {group.remote_group!r}")
    names = site_group["nodes"][:MAX_NODES]
    out: list[RemoteNode] = []
    for name in names:
        entry = doc["nodes"].get(name) if isinstance(name, str) else None
        if not isinstance(entry, dict) or not NODE_NAME.match(name):
            continue
        try:
            node = _address(name, entry, group.max_sessions)
        except ValueError:
            continue
        if entry.get("up") is not True:
            why = entry.get("why") if isinstance(entry.get("why"), str) else ""
            out.append(RemoteNode(node, None, f"down at {group.source}" + (f": {why[:200]}" if why else "")))
            continue
        variables = entry.get("variables")
        variables = dict(variables) if isinstance(variables, dict) else {}
        drained_by = entry.get("drained_by") if isinstance(entry.get("drained_by"), list) else []
        if "admin" in drained_by and variables.get("DRAINED") is not True:
            # Drained by the site's admin: here it is drained at its source.
            variables["DRAINED"] = True
            variables["DRAIN_REASON"] = f"drained at {group.source}"
        try:
            state = validate_state({"hostname": name, "agent_version": "", "variables": variables,
                                    "users": entry.get("users", []), "sampled_at": now or time.time()})
        except ValueError as exc:
            out.append(RemoteNode(node, None, f"invalid site reply for {name}: {exc}"))
            continue
        out.append(RemoteNode(node, state, None))
    return out


async def fetch_group(group: Group, timeout: float, max_bytes: int) -> list[RemoteNode]:
    """Read one remote group's nodes; raises :class:`PollError` when the site cannot be read."""
    return group_nodes(group, await fetch_status(group, timeout, max_bytes))


__all__ = ["RemoteNode", "fetch_group", "fetch_status", "group_nodes"]
