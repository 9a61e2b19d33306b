"""What the agent-check port answers HAProxy: one line per question, read from one snapshot (pure, no I/O).

HAProxy's agent check connects, sends its ``agent-send`` string and reads
one line. Here that string names the node (``xapp1\\n``), optionally
followed by a group (``xapp1 PROD\\n``). The reply:

========================================  ====================================
the node is                               reply
========================================  ====================================
selectable (healthy, not drained)         ``up ready N%``
healthy but drained (lbctl or its agent)  ``up drain #drained by admin``
down, unhealthy, or not polled yet        ``down #REASON``
not in the configuration                  ``down #unknown node NAME``
========================================  ====================================

Every reply says ``up`` or ``down`` and, when up, ``ready`` or ``drain``,
because HAProxy changes only what a reply names: a weight alone would
never lift a drain, and a drain alone would leave a server DOWN. A drained
node that is also unhealthy answers ``down``: HAProxy then sends nobody
there, not even the users its stick table remembers (as ``GET /?user=``
only returns users to a healthy node).

``N`` is the node's weight as a percentage of the greatest weight among the
selectable nodes of the *scope*: every node, or the named group's nodes when
the line names one. HAProxy scales each server's configured weight by it, so
servers configured with the same weight get HAProxy weights in the
proportions of the balancer's (a node in several groups answers the same
percentage to every backend, which keeps any group's proportions). A
selectable node always gets at least 1 %, as HAProxy treats 0 % as a drain;
when every selectable node of the scope weighs 0 (all at capacity), the
percentages follow the nodes' sizes, as the balancer's overflow rule does.
"""

from __future__ import annotations

from typing import NamedTuple

from lbserver.core.selection import NodeView, Snapshot

MAX_LINE = 256
"""Bytes of the question read at most; the rest of a longer line is ignored."""
MAX_TEXT = 160
"""Characters of a reason (or of an unknown name) put into a reply."""
MAX_CACHED = 4096
"""Replies kept per snapshot (known node and group names only, so this only trips on huge configs)."""


class Question(NamedTuple):
    """What HAProxy asked: a node, and the group whose weights scale the answer (None: all nodes)."""

    node: str
    group: str | None


def line_end(buf: bytes) -> int:
    """Where the question in ``buf`` ends, or -1 while it may still grow.

    The first CR or LF ends it. So does a literal backslash-n at the end:
    HAProxy sends a single-quoted ``agent-send 'xapp1\\n'`` as the six
    characters ``xapp1\\n`` with no line end at all.
    """
    lf, cr = buf.find(b"\n"), buf.find(b"\r")
    if lf >= 0 or cr >= 0:
        return min(i for i in (lf, cr) if i >= 0)
    if buf.endswith(b"\\n"):
        return len(buf)
    return -1


def parse_question(data: bytes) -> Question:
    """The node (and group) named by one question; junk gives a name no node has, never an error."""
    text = data[:MAX_LINE].split(b"\n", 1)[0].split(b"\r", 1)[0].decode("utf-8", "replace")
    text = text.strip()
    while text.endswith(("\\n", "\\r")):  # a literal \n or \r\n sent by a single-quoted agent-send
        text = text[:-2].rstrip()
    words = text.rstrip("\\").split()
    if not words:
        return Question("", None)
    return Question(words[0], words[1] if len(words) > 1 else None)


def clean(text: str, limit: int = MAX_TEXT) -> str:
    """``text`` as one line of printable ASCII (others become ``?``), at most ``limit`` characters."""
    out = "".join(c if " " <= c <= "~" else "?" for c in text[:limit])
    return " ".join(out.split())


def percent(value: float, top: float) -> int:
    """``value`` as a whole percentage of ``top``, from 1 to 100."""
    if top <= 0:
        return 100
    return min(100, max(1, int(100.0 * value / top + 0.5)))


def drain_text(view: NodeView) -> str:
    """Why a node is drained, for the reply's comment."""
    parts = []
    if "admin" in view.drained_by:
        parts.append("by admin")
    if "agent" in view.drained_by:
        parts.append(f"at the source ({view.drain_reason})" if view.drain_reason else "at the source")
    return "drained " + " and ".join(parts) if parts else "drained"


class Replies:
    """The replies of one snapshot, each computed once.

    The service makes a new one when the balancer installs a new snapshot
    (a poll cycle, a drain, a reload), so every reply reflects the snapshot
    in force and HAProxy's many polls between two cycles cost a lookup.
    """

    __slots__ = ("snapshot", "_tops", "_cache")

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        self._tops: dict[str | None, tuple[bool, float]] = {}
        self._cache: dict[Question, bytes] = {}

    def answer(self, question: Question) -> bytes:
        """The reply line for ``question``, newline included."""
        line = self._cache.get(question)
        if line is None:
            text = self.text(question)
            line = (text + "\n").encode("ascii")
            snap = self.snapshot
            known = question.node in snap.nodes and (question.group is None or question.group in snap.groups)
            if known and len(self._cache) < MAX_CACHED:
                self._cache[question] = line
        return line

    def text(self, question: Question) -> str:
        """The reply for ``question``, without the line end."""
        snap = self.snapshot
        node, group = question
        if not node:
            return "down #no node name received (agent-send names the node)"
        view = snap.nodes.get(node)
        if view is None:
            return f"down #unknown node {clean(node, 64)}"
        if group is not None:
            members = snap.groups.get(group)
            if members is None:
                return f"down #unknown group {clean(group, 64)}"
            if node not in members:
                return f"down #node {node} is not in group {clean(group, 64)}"
        if not view.healthy:
            reason = "; ".join(view.reasons) or "unhealthy"
            return f"down #{clean(reason)}"
        if view.drained:
            return f"up drain #{clean(drain_text(view))}"
        by_weight, top = self._top(group)
        return f"up ready {percent(view.weight if by_weight else view.size, top)}%"

    def _top(self, group: str | None) -> tuple[bool, float]:
        """(whether weights decide, the greatest weight or size) among the scope's selectable nodes."""
        top = self._tops.get(group)
        if top is None:
            snap = self.snapshot
            names = snap.nodes.keys() if group is None else snap.groups[group]
            views = [snap.nodes[n] for n in names if snap.nodes[n].selectable]
            best = max((v.weight for v in views), default=0.0)
            top = (True, best) if best > 0 else (False, max((v.size for v in views), default=0.0))
            self._tops[group] = top
        return top


def reply(snapshot: Snapshot, data: bytes) -> bytes:
    """The reply to the question ``data`` (one-off: the service keeps a :class:`Replies` per snapshot)."""
    return Replies(snapshot).answer(parse_question(data))


__all__ = ["MAX_LINE", "Question", "Replies", "clean", "line_end", "parse_question", "percent", "reply"]
