"""The balancer's persistent admin state: which nodes are drained.

Written atomically (temporary file, fsync, rename) so a crash or power cut
never leaves a half-written file; an unreadable file is logged and treated
as empty rather than stopping the daemon.
"""

from __future__ import annotations

import json
import logging
import os

from common.atomicfile import write_atomic

log = logging.getLogger(__name__)


class DrainState:
    """The set of drained node names, saved to ``path`` on every change."""

    def __init__(self, path: str | None, nodes: set[str] | None = None) -> None:
        self.path = path
        self.nodes: set[str] = nodes or set()

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
            return cls(path, set(nodes))
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
        self.save()
        return True

    def save(self) -> None:
        """Write the file atomically; failures are logged, the state stays in memory."""
        if not self.path:
            return
        try:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            write_atomic(self.path, json.dumps({"drained": sorted(self.nodes)}), 0o644)
        except OSError as exc:
            log.error("cannot save state file %s (drained nodes kept in memory only): %s", self.path, exc)
