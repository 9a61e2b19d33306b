"""``lbctl``: the admin client of lbserver's management service."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request

from common.sockets import format_listen
from lbserver.config.settings import MGMTSERVICE
from lbserver.mgmt import routes
from lbserver.mgmt.status import node_table

DEFAULT_URL = "http://" + format_listen(MGMTSERVICE.listen.default)

DESCRIPTION = f"""\
lbctl talks to the management service of a running lbserver (the
<mgmtservice> element of lbsconfig.xml, {format_listen(MGMTSERVICE.listen.default)} by default).

commands:
  status [NODE]  the nodes of every group: health, weight, share of terminals,
                 load, memory, sessions, every other variable the rules weigh,
                 and why a node is excluded; then the DNS aliases with their
                 published addresses, and the peer balancers with their
                 state; with NODE, that node in detail: each rule's value,
                 capacity, critical and share of the weight
  drain NODE     send no new terminals to NODE and take it out of DNS aliases;
                 sessions already on it are untouched; survives restarts, and
                 reaches the balancer's <peers> at once
  enable NODE    undo drain (on the peers too)
  reload         re-read lbsconfig.xml (refused, with FILE:LINE, if invalid)
"""

EPILOG = """\
environment:
  LBCTL_URL      default for --url
  LBCTL_TOKEN    admin token, for a management service reached over the network
                 (the contents of its token-file); loopback needs none
  NO_COLOR       set to anything: no colour even on a terminal

exit status: 0 done, 1 the service refused (message on stderr), 2 unreachable

examples:
  lbctl status
  lbctl status xapp2         # why did xapp2 get fewer users?
  lbctl drain xapp2 && lbctl status
  lbctl --json status | jq '.nodes | keys'
"""


class CtlError(Exception):
    """A failure to report to the admin, with its exit status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Never follow a redirect: urllib would carry the admin token along to its target."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: D401 (urllib's API)
        raise urllib.error.HTTPError(req.full_url, code, f"redirect to {newurl} refused", headers, fp)


_OPENER = urllib.request.build_opener(_NoRedirect)


def request(url: str, method: str = "GET", token: str | None = None, timeout: float = 10.0) -> object:
    """Call the management service; return the decoded JSON (or text) answer."""
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with _OPENER.open(req, timeout=timeout) as resp:
            body = resp.read().decode("utf-8", "replace")
            ctype = resp.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        text = exc.read().decode("utf-8", "replace").strip()
        # The service's own words first (they name the node, or FILE:LINE); the HTTP code for the record.
        raise CtlError(f"lbctl: {text or exc.reason} (HTTP {exc.code} from {method} {url})", 1) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise CtlError(f"lbctl: cannot reach the management service at {url}: {reason}\n"
                       "  (is lbserver running? is --url right? see <mgmtservice> in lbsconfig.xml)", 2) from None
    return json.loads(body) if ctype.startswith("application/json") else body


COLOURS = {"up": "32", "unhealthy": "33", "drained": "36", "down": "31", "unknown": "90",
           "reachable": "32", "unreachable": "31"}


def paint(word: str, colour: bool = True) -> str:
    """A status word (up, down, ...) in its colour when ``colour``, else as it is."""
    return f"\033[{COLOURS.get(word, '0')}m{word}\033[0m" if colour else word


def format_status(status: dict, colour: bool) -> str:
    """A readable report of a /status document."""
    out: list[str] = []
    last = status.get("last_poll") or {}
    if last:
        age = time.time() - last["started"]
        out.append(f"last poll {age:.0f} s ago, took {last['duration']:.3f} s, "
                   f"{last['polled'] - last['failed']}/{last['polled']} agents answered")
    if status.get("unreported_variables"):
        out.append("warning: rule variables that no agent reports (a typo, or a variable missing from every "
                   "lbaconfig.xml): " + ", ".join(status["unreported_variables"]))
    for gname, group in status["groups"].items():
        out.append("")
        out.append(f"group {gname}{' (default)' if group['default'] else ''}")
        out.extend("  " + line for line in node_table(status, group["nodes"], group["shares"],
                                                        paint if colour else None))
    for alias in status.get("aliases", []):
        out.append("")
        out.append(f"alias {alias.get('fqdn') or alias.get('alias')}: " + ", ".join(alias.get("published", [])))
        for node, reason in (alias.get("excluded") or {}).items():
            out.append(f"  excluded {node}: {reason}")
        if alias.get("result"):
            out.append(f"  last update: {alias['result']}")
        if alias.get("lease"):
            out.append(f"  {_lease_text(alias['lease'])}")
    out.extend(_peer_lines(status.get("peers"), colour))
    out.extend(_session_map_lines(status.get("haproxy_map"), colour))
    return "\n".join(out).lstrip("\n") + "\n"


def _peer_lines(peers: dict | None, colour: bool) -> list[str]:
    """The peer balancers: reachable, last message, picks received, datagrams refused."""
    if not peers:
        return []
    out = ["", f"peers (listening on {peers['listen']}, {'signed' if peers['signed'] else 'unsigned'})"]
    for p in peers["peers"]:
        word = "reachable" if p["reachable"] else "unreachable"
        last = "never" if p["last_message"] is None else f"{time.time() - p['last_message']:.0f} s ago"
        refused = ", ".join(f"{n} {reason}" for reason, n in sorted(p["refused"].items())) or "none"
        out.append(f"  {p['address']}: {paint(word, colour)}"
                   f", last message {last}, {p['picks_received']} picks received, refused: {refused}"
                   + (f" ({p['error']})" if p.get("error") else ""))
    unknown = peers.get("refused_unknown") or {}
    if unknown:
        out.append("  refused from unknown senders: " + ", ".join(f"{n} {r}" for r, n in sorted(unknown.items())))
    return out


def _session_map_lines(smap: dict | None, colour: bool) -> list[str]:
    """The HAProxy session map: entries, last sync, commands, refused names, the last error."""
    if not smap:
        return []
    last = "never" if smap.get("last_sync") is None else f"{time.time() - smap['last_sync']:.0f} s ago"
    word = paint("in sync" if smap.get("in_sync") else "not in sync", colour)
    line = (f"HAProxy session map of group {smap['group']} ({smap['file']}): {word}, "
            f"{smap.get('entries') or 0} entries, last sync {last}, {smap.get('errors', 0)} errors")
    if smap.get("last_sync") is not None:
        line += f", {smap['commands_total']} map commands sent, {smap['refused']} user names refused"
    out = ["", line]
    if smap.get("error"):
        out.append(f"  last error: {smap['error']}")
    return out


def _lease_text(lease: dict) -> str:
    """The DNS lease of an alias: who writes it, until when, and what this balancer is."""
    holder, expires, me = lease.get("holder"), lease.get("expires"), lease.get("me")
    until = ""
    if expires is not None:
        left = expires - time.time()
        until = f" until {time.strftime('%H:%M:%S', time.localtime(expires))}" + \
            (f" ({left:.0f} s)" if left > 0 else " (expired)")
    role = lease.get("role") or "unknown"
    who = "this balancer" if role == "writer" and holder == me else (holder or "nobody known")
    text = f"DNS writer: {role} ({me}); lease {lease.get('name')} held by {who}{until}"
    return text + (f"; {lease['problem']}" if lease.get("problem") else "")


def format_node(status: dict, name: str, colour: bool) -> str:
    """One node in detail: health and why, then every rule's value, limits and share of the weight."""
    n = status["nodes"].get(name)
    if n is None:
        raise CtlError(f"lbctl: no such node: {name} (known: {', '.join(status['nodes']) or 'none'})", 1)
    out = [f"node {name}: {paint(n['health'], colour)}" + (f" ({n['why']})" if n["why"] else ""),
           f"  address {n['address']}, groups {', '.join(n['groups'])}, picks {n['picks']}",
           _sessions_line(n),
           f"  weight {n['weight']:.2f} = size {n['size']:.2f} x the sum of what each rule adds"]
    if n["rules"]:
        rows = [("RULE", "VALUE", "CAPACITY", "CRITICAL", "ADDS", "NOTE")]
        for r in n["rules"]:
            rows.append((r["name"], _num(r["value"]), _num(r["capacity"]), _num(r["critical"]),
                         _num(r["contribution"]), r.get("problem") or ""))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        out += ["  " + "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    elif n["up"] is not True:
        out.append("  no figures: the agent has not answered yet")
    variables = n["variables"]
    if variables:
        out.append("  variables: " + ", ".join(f"{k}={v}" for k, v in sorted(variables.items())))
    return "\n".join(out) + "\n"


def _sessions_line(n: dict) -> str:
    """A node's sessions: active and disconnected, and its limit against what it counts."""
    s = n.get("sessions") or {}
    line = f"  sessions {s.get('active', 0)} active, {s.get('disconnected', 0)} disconnected"
    if n.get("max_sessions"):
        line += f"; max-sessions {n['max_sessions']}, counting {s.get('counted', 0)}" + \
            (" (at the limit: no new session)" if n.get("at_session_limit") else "")
    return line


def _num(value: object) -> str:
    return "-" if value is None else f"{value:.4g}"


def use_colour() -> bool:
    """Colour only on a terminal, and never when NO_COLOR is set (https://no-color.org)."""
    return sys.stdout.isatty() and not os.environ.get("NO_COLOR")


def make_parser() -> argparse.ArgumentParser:
    """The command line of lbctl (its --help, and its man page, come from it)."""
    parser = argparse.ArgumentParser(prog="lbctl", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=os.environ.get("LBCTL_URL", DEFAULT_URL),
                        help=f"management service URL (default {DEFAULT_URL})")
    parser.add_argument("--json", action="store_true", help="print the service's JSON answer as is")
    parser.add_argument("-t", "--timeout", type=float, default=10.0, help="seconds to wait (default 10)")
    parser.add_argument("command", choices=("status", "drain", "enable", "reload"))
    parser.add_argument("node", nargs="?", help="node name: for drain and enable; with status, that node in detail")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``lbctl`` command."""
    parser = make_parser()
    args = parser.parse_args(argv)
    if args.command in ("drain", "enable") and not args.node:
        parser.error(f"{args.command} needs a NODE")
    base = args.url
    token = os.environ.get("LBCTL_TOKEN")
    try:
        if args.command == "status":
            doc = request(routes.url(base, "status"), timeout=args.timeout)
            if args.node and not args.json:
                sys.stdout.write(format_node(doc, args.node, use_colour()))
                return 0
            text = json.dumps(doc, indent=1) + "\n" if args.json else format_status(doc, use_colour())
        elif args.command == "reload":
            doc = request(routes.url(base, "reload"), "POST", token, args.timeout)
            text = json.dumps(doc) + "\n" if args.json else doc["message"] + "\n"
        else:
            doc = request(routes.url(base, args.command, node=args.node), "POST", token, args.timeout)
            text = json.dumps(doc) + "\n" if args.json else doc["message"] + "\n"
    except CtlError as exc:
        print(exc, file=sys.stderr)
        return exc.status
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
