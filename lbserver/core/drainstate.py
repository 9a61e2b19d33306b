"""The balancer's persistent admin state: which nodes are drained, and since when.

``changed_at`` (seconds since the epoch) is when the set last changed, here
or at a peer balancer: peers exchange their sets and the newer one wins, so
a drain made on one boot server holds on the other, across restarts of
either. Written atomically (temporary file, fsync, rename) so a crash or power cut
never leaves a half-written file; an unreadable file is logged and treated
as empty rather than stopping the daemon.
"""

from __future__ import annotations

import json
import logging
import os
import time

from common.atomicfile import write_atomic

log = logging.getLogger(__name__)


class DrainState:
    """The set of drained node names, saved to ``path`` on every change."""

    def __init__(self, path: str | None, nodes: set[str] | None = None, changed_at: float = 0.0) -> None:
        self.path = path
        self.nodes: set[str] = nodes or set()
        self.changed_at = changed_at

    @classmethod
    def load(cls, path: str | None) -> "DrainState":
        """Read ``path``; a missing file means nothing is drained."""
        if not path:
            return cls(None)
        try:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
            nodes = data.get("drained", [])
            if not isinstance(nodes, list) or not all(isinstance(n, str) for n in nodes):
                raise ValueError("'drained' is not a list of node names")
            changed_at = data.get("changed_at", 0.0)
            if isinstance(changed_at, bool) or not isinstance(changed_at, (int, float)) or changed_at != changed_at:
                raise ValueError("'changed_at' is not a time")
            return cls(path, set(nodes), float(changed_at))
        except FileNotFoundError:
            return cls(path)
        except (OSError, ValueError) as exc:
            log.error("ignoring unreadable state file %s: %s", path, exc)
            return cls(path)

    def set(self, node: str, drained: bool) -> bool:
        """Drain or enable ``node``; return True when that changed anything."""
        if (node in self.nodes) == drained:
            return False
        if drained:
            self.nodes.add(node)
        else:
            self.nodes.discard(node)
        self.changed_at = max(time.time(), self.changed_at + 1e-6)  # newer than any set seen so far
        self.save()
        return True

    def adopt(self, nodes: set[str], changed_at: float) -> bool:
        """Take a peer's set when it is newer than ours; return True when ours changed."""
        if changed_at <= self.changed_at:
            return False
        changed = nodes != self.nodes
        self.nodes, self.changed_at = set(nodes), changed_at
        self.save()
        return changed

    def save(self) -> None:
        """Write the file atomically; failures are logged, the state stays in memory."""
        if not self.path:
            return
        try:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            write_atomic(self.path, json.dumps({"drained": sorted(self.nodes), "changed_at": self.changed_at}), 0o644)
        except OSError as exc:
            log.error("cannot save state file %s (drained nodes kept in memory only): %s", self.path, exc)
