"""The management service's HTML dashboard (``GET /``).

One self-contained page: inline CSS and JavaScript from
``static/dashboard.html``, no CDN, no web fonts, because the networks these
servers live on are often closed. The page carries the current ``/status``
and ``/history`` so it paints at once, then refreshes itself from those two
endpoints every few seconds without reloading.

Node names, reasons and variables come from agents and the config and are
untrusted: the page inserts them with ``textContent`` only, the embedded
JSON is escaped so it cannot end its ``<script>`` element, and a
Content-Security-Policy allows only the page's own script and style (by
hash) and requests to its own origin.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import re
from pathlib import Path
from typing import Any

from lbserver.mgmt import routes

TEMPLATE = Path(__file__).with_name("static") / "dashboard.html"
DATA_MARK = "__INITIAL_DATA__"
CSP_MARK = "__CSP__"

# JSON inside <script> must never contain "</script" or "<!--"; these
# escapes keep it valid JSON and inert HTML.
_JSON_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
_JSON_ESCAPE_RE = re.compile("[<>&\u2028\u2029]")


def embed_json(doc: Any) -> str:
    """``doc`` as JSON safe to place inside an HTML ``<script>`` element."""
    text = json.dumps(doc, separators=(",", ":"), allow_nan=False, default=str)
    return _JSON_ESCAPE_RE.sub(lambda m: _JSON_ESCAPES[m.group(0)], text)


def _sha256_source(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def content_security_policy(template: str) -> str:
    """A policy allowing exactly the template's inline ``<script>`` and ``<style>`` blocks."""
    scripts = re.findall(r"<script>(.*?)</script>", template, re.S)
    styles = re.findall(r"<style>(.*?)</style>", template, re.S)
    return ("default-src 'none'; "
            f"script-src {' '.join(map(_sha256_source, scripts)) or chr(39) + 'none' + chr(39)}; "
            f"style-src {' '.join(map(_sha256_source, styles)) or chr(39) + 'none' + chr(39)}; "
            "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'")


@functools.lru_cache(maxsize=1)
def _template() -> str:
    text = TEMPLATE.read_text(encoding="utf-8")
    if text.count(DATA_MARK) != 1 or text.count(CSP_MARK) != 1:
        raise RuntimeError(f"{TEMPLATE}: expected one {DATA_MARK} and one {CSP_MARK}")
    return text.replace(CSP_MARK, content_security_policy(text))


def render_dashboard(status: dict[str, Any], history: dict[str, Any]) -> bytes:
    """The dashboard page with a /status and a /history document embedded.

    The page fetches later updates from the same endpoints, at paths taken
    from the route table (relative, so it works behind a reverse proxy's prefix).
    """
    data = {"status": status, "history": history,
            "routes": {a: routes.BY_ACTION[a].path().lstrip("/") for a in ("status", "history", "metrics")}}
    return _template().replace(DATA_MARK, embed_json(data)).encode("utf-8")


__all__ = ["content_security_policy", "embed_json", "render_dashboard"]
