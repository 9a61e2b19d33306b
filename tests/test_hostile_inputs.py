"""Hostile input, property-based: every parser either succeeds or says clearly why not.

Targets: the two configuration loaders (generated documents and mutations of
the shipped files), the terminal request parser and the connection framing
above it, the agent-reply validator (and the weighing it feeds), the
submission-test page parser and the site-info importer. None may raise
anything but its documented error, whatever it is fed.

Example counts are moderate (see ``EXAMPLES``) so the module stays fast; the
truncation tests are exhaustive (every byte position of each seed file).
"""

from __future__ import annotations

import io
import math
import os
import re
import string
import xmlrpc.client
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.xmlconfig import ConfigError
from tests.support import ROOT
from lbagent import config as agent_config
from lbserver import config as server_config
from lbserver.dns import healthurl
from lbserver.terminal import request as httpreq
from lbserver.tools import siteinfo
from lbserver.core.health import validate_state
from lbserver.core.poller import PollError, parse_reply
from lbserver.terminal.service import TerminalService, _Connection
from tests.support.terminal_harness import terminal_config
from lbserver.core.weights import evaluate
from lbserver.core.selection import Snapshot, node_view, weigh

pytestmark = pytest.mark.unit

# HOSTILE_EXAMPLES=5000 runs a deeper search; the default keeps the suite fast.
EXAMPLES = int(os.environ.get("HOSTILE_EXAMPLES", "200"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                                   HealthCheck.too_slow])

# -- configuration files --------------------------------------------------------

KEY = 'key "lbkey" {\n\talgorithm hmac-sha256;\n\tsecret "bGJzZWNyZXRsYnNlY3JldGxic2VjcmV0bGJzZWNyZXQ=";\n};\n'

FULL_LBS = """<?xml version="1.0"?>
<lbsconfig>
  <lbservice listen="127.0.0.1:8008" returns="$NAME" idle-timeout="10" max-connections="4096"/>
  <mgmtservice listen="127.0.0.1:8009" token-file="admin.token" state-file="lbserver.state"/>
  <poll interval="10" timeout="2" rise="2" fall="2" max-reply-bytes="1048576"/>
  <log file="lbserver.log" level="info"/>
  <nodes>
    <group default="true" name="PROD">
      <node address="http://10.0.0.1:8001" name="xapp1"/>
      <node address="http://10.0.0.2:8001" name="xapp2" ip="192.168.1.2"/>
    </group>
    <group name="LAB">
      <node address="http://10.0.0.2:8001" name="xapp2" ip="192.168.1.2"/>
      <node address="http://[fd00::3]:8001" name="xapp3" ip6="fd00::3"/>
    </group>
  </nodes>
  <rules>
    <variable name="LOADAVG" weight="50" capacity="1.0" per-cpu="true" per-session="0.1"/>
    <variable name="MEMUSEDPCT" weight="30" capacity="90" critical="98"/>
    <variable name="NBX11SESS" weight="10" capacity="30" custom="true"/>
    <require name="GDM" equals="true"/>
    <require name="SCRATCH" min="1" max="90"/>
  </rules>
  <dns server="192.0.2.53" port="53" zone="grid.example.org" ttl="60" timeout="5"
       key-name="lbkey" key-file="dns.key" contact="a@example.org, b@example.org"
       smtp="mail.example.org:587" mail-from="lb@example.org">
    <alias name="wms-prod" group="PROD" num-out="1" health-url="http://mon.example.org/t.txt" health-max-age="600"/>
    <alias name="wms-lab" group="LAB" best-hosts="-1" enabled="false"/>
  </dns>
</lbsconfig>
"""

FULL_LBA = """<?xml version="1.0"?>
<lbaconfig>
  <agent listen="127.0.0.1:8001" sample-interval="5" max-request-bytes="65536" request-timeout="5"/>
  <log file="lbagent.log" level="info"/>
  <access>
    <allow from="127.0.0.0/8"/>
    <allow from="::1"/>
  </access>
  <variables>
    <variable name="NBX11SESS" type="command" timeout="2" command="echo 3"/>
    <variable name="GDM" type="process" pattern="^gdm3?$"/>
    <variable name="SCRATCH" type="disk" path="/"/>
    <variable name="QUEUE" type="file" path="/nonexistent/queue"/>
    <variable name="ROOM" type="constant" value="3"/>
  </variables>
</lbaconfig>
"""

LOADERS = {"lbsconfig": server_config.load, "lbaconfig": agent_config.load}
SEEDS = {
    "lbsconfig": [(ROOT / "etc/lbsconfig.xml").read_text(), FULL_LBS],
    "lbaconfig": [(ROOT / "etc/lbaconfig.xml").read_text(), FULL_LBA],
}

# Values an admin (or an editor accident) might leave in an attribute.
JUNK_LIST = ["", " ", "-1", "0", "1e999", "nan", "inf", "-inf", "0x10", "1_000", "true", "maybe",
                     "http://[abc", "http://[::1", "http://h:99999", "http://h:-1", "ftp://x", "http://",
                     "[::1]:", "[::1", "host:port", ":8001", "0.0.0.0:0", "300.1.1.1/8", "10.0.0.0/33",
                     "(", "[a-", "*", "$IP", "$NOPE", "a@", "@b", "..", "a..b", "-", "\u00e9\u00e8", "\U0001f600",
                     "9" * 400, "1" * 5000, "0.0.0.0:8001:1", "x" * 300, "http://[fd00::1", "https://[x]:80",
                     "file://[", "http://h:8001/[", "a@b@c", "1.5.", "1,5", "-0", "1e-400"]
JUNK_VALUES = st.one_of(
    st.sampled_from(JUNK_LIST),
    st.text(max_size=40),
    st.integers().map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
)
ATTRIBUTE = re.compile(r'([A-Za-z-]+)="([^"]*)"')


def xml_escape(text: str) -> str:
    """Escape for an attribute value; characters XML 1.0 cannot carry are dropped."""
    text = "".join(c for c in text if c in "\t\n\r" or (" " <= c <= "\ud7ff") or ("\ue000" <= c <= "\ufffd")
                   or c >= "\U00010000")
    return text.replace("&", "&amp;").replace("<", "&lt;").replace('"', "&quot;")


@pytest.fixture(scope="module")
def cfgdir(tmp_path_factory):
    """A directory holding the files the full seeds refer to (key, token)."""
    d = tmp_path_factory.mktemp("hostile")
    (d / "dns.key").write_text(KEY)
    (d / "dns.key").chmod(0o600)
    return d


def check_load(kind: str, path: Path) -> str:
    """Load ``path`` with the real loader: 'ok', or 'error' after checking the error's form."""
    try:
        LOADERS[kind](str(path))
    except ConfigError as exc:
        text = str(exc)
        assert re.match(rf"{re.escape(str(path))}:\d+: \S", text), text
        assert "\n" not in text.rstrip() or text.count("\n") < 5, text  # one clear line, not a dump
        return "error"
    return "ok"


def write(cfgdir: Path, kind: str, text: str | bytes) -> Path:
    path = cfgdir / f"{kind}.xml"
    if isinstance(text, str):
        text = text.replace('"dns.key"', f'"{cfgdir}/dns.key"').encode("utf-8", "surrogatepass")
    path.write_bytes(text)
    return path


@pytest.mark.parametrize("kind", sorted(LOADERS))
def test_seeds_load(kind, cfgdir):
    for text in SEEDS[kind]:
        assert check_load(kind, write(cfgdir, kind, text)) == "ok"


@pytest.mark.parametrize("kind", sorted(LOADERS))
def test_truncated_at_every_position(kind, cfgdir):
    outcomes = {"ok": 0, "error": 0}
    for text in SEEDS[kind]:
        data = text.replace('"dns.key"', f'"{cfgdir}/dns.key"').encode()
        for cut in range(len(data)):
            outcomes[check_load(kind, write(cfgdir, kind, data[:cut]))] += 1
    # Every cut before the closing root tag is broken XML: it must be refused, never half-loaded.
    assert outcomes["error"] >= sum(len(t) for t in SEEDS[kind]) - 20 * len(SEEDS[kind]), outcomes


@pytest.mark.parametrize("kind", sorted(LOADERS))
def test_every_attribute_with_every_junk_value(kind, cfgdir):
    """Exhaustive: each attribute of the full example replaced by each junk value, and deleted."""
    seed = SEEDS[kind][1]
    outcomes = {"ok": 0, "error": 0}
    for m in ATTRIBUTE.finditer(seed):
        for value in [None, *JUNK_LIST]:
            text = seed[:m.start()] + seed[m.end():] if value is None else \
                seed[:m.start(2)] + xml_escape(value) + seed[m.end(2):]
            outcomes[check_load(kind, write(cfgdir, kind, text))] += 1
    assert outcomes["ok"] and outcomes["error"], outcomes


@pytest.mark.parametrize("kind", sorted(LOADERS))
@SETTINGS
@given(data=st.data())
def test_mutated_attribute(kind, cfgdir, data):
    seed = data.draw(st.sampled_from(SEEDS[kind]), "seed")
    attrs = list(ATTRIBUTE.finditer(seed))
    m = data.draw(st.sampled_from(attrs), "attribute")
    action = data.draw(st.sampled_from(["delete", "junk", "raw-junk", "duplicate"]), "action")
    if action == "delete":
        text = seed[:m.start()] + seed[m.end():]
    elif action == "junk":
        text = seed[:m.start(2)] + xml_escape(data.draw(JUNK_VALUES, "value")) + seed[m.end(2):]
    elif action == "raw-junk":  # unescaped: may break well-formedness too
        text = seed[:m.start(2)] + data.draw(JUNK_VALUES, "value") + seed[m.end(2):]
    else:
        text = seed[:m.end()] + " " + m.group(0) + seed[m.end():]
    check_load(kind, write(cfgdir, kind, text))


@pytest.mark.parametrize("kind", sorted(LOADERS))
@SETTINGS
@given(data=st.data())
def test_mutated_structure(kind, cfgdir, data):
    seed = data.draw(st.sampled_from(SEEDS[kind]), "seed")
    lines = seed.splitlines(keepends=True)
    ops = data.draw(st.lists(st.sampled_from(["drop-line", "dup-line", "swap-lines", "insert-bytes", "flip-byte"]),
                             min_size=1, max_size=4), "ops")
    text: str | bytes = seed
    for op in ops:
        if op in ("drop-line", "dup-line", "swap-lines") and isinstance(text, str):
            lines = text.splitlines(keepends=True)
            i = data.draw(st.integers(0, len(lines) - 1))
            if op == "drop-line":
                del lines[i]
            elif op == "dup-line":
                lines.insert(i, lines[i])
            else:
                j = data.draw(st.integers(0, len(lines) - 1))
                lines[i], lines[j] = lines[j], lines[i]
            text = "".join(lines)
        else:
            raw = text.encode() if isinstance(text, str) else text
            pos = data.draw(st.integers(0, max(0, len(raw) - 1)))
            if op == "insert-bytes":
                raw = raw[:pos] + data.draw(st.binary(min_size=1, max_size=16)) + raw[pos:]
            elif raw:
                raw = raw[:pos] + bytes([raw[pos] ^ data.draw(st.integers(1, 255))]) + raw[pos + 1:]
            text = raw
    if isinstance(text, bytes):
        text = text.replace(b'"dns.key"', f'"{cfgdir}/dns.key"'.encode())
    check_load(kind, write(cfgdir, kind, text))


# Documents built from the schemas' own vocabulary, so they get past the parser
# and exercise validation and the typed readers.
TAGS = ["lbsconfig", "lbaconfig", "lbservice", "mgmtservice", "poll", "log", "nodes", "group", "node", "rules",
        "variable", "require", "dns", "alias", "agent", "access", "allow", "variables", "bogus"]
ATTRS = ["name", "address", "ip", "ip6", "default", "listen", "returns", "idle-timeout", "max-connections",
         "interval", "timeout", "rise", "fall", "weight", "capacity", "critical", "per-cpu", "per-session",
         "custom", "equals", "min", "max", "server", "port", "zone", "ttl", "key-file", "group", "num-out",
         "best-hosts", "type", "command", "pattern", "path", "value", "from", "sample-interval", "level", "file"]
GOOD_VALUES = st.sampled_from(["PROD", "xapp1", "http://127.0.0.1:8001", "127.0.0.1:8008", "true", "false", "1",
                               "2", "0.5", "50", "$NAME", "LOADAVG", "NBSESSIONS", "constant", "command",
                               "file", "127.0.0.0/8", "info", "lbtest.example", "wms", "dns.key", "-1"])


def _element(children):
    return st.tuples(st.sampled_from(TAGS),
                     st.dictionaries(st.sampled_from(ATTRS), st.one_of(GOOD_VALUES, JUNK_VALUES), max_size=5),
                     children)


ELEMENTS = st.recursive(_element(st.just([])), lambda kids: _element(st.lists(kids, max_size=4)), max_leaves=12)


def render(elem, depth=0) -> str:
    tag, attrs, kids = elem
    a = "".join(f' {k}="{xml_escape(v)}"' for k, v in attrs.items())
    inner = "".join(render(k, depth + 1) for k in kids)
    pad = "\n" + "  " * depth
    return f"{pad}<{tag}{a}>{inner}{pad}</{tag}>" if kids else f"{pad}<{tag}{a}/>"


@pytest.mark.parametrize("kind", sorted(LOADERS))
@SETTINGS
@given(children=st.lists(ELEMENTS, max_size=6))
def test_generated_documents(kind, cfgdir, children):
    body = "".join(render(c, 1) for c in children)
    check_load(kind, write(cfgdir, kind, f'<?xml version="1.0"?>\n<{kind}>{body}\n</{kind}>\n'))


# -- terminal requests ----------------------------------------------------------

STATUSES = {400, 411, 413, 431, 501, 505}
METHODS = st.sampled_from([b"GET", b"HEAD", b"POST", b"get", b"G\x00T", b"", b"OPTIONS"])
TARGETS = st.one_of(st.sampled_from([b"/", b"/?group=PROD", b"/?group=%ZZ", b"/?user=%C3%A9", b"/?user=%FF",
                                     b"/?group=a%00b", b"*", b"http://h/x?group=B", b"/?group=+&user=", b"//"]),
                    st.binary(max_size=30))
HEADERS = st.lists(st.one_of(
    st.sampled_from([b"Connection: close", b"Connection: keep-alive", b"Content-Length: 5", b"Content-Length: -1",
                     b"Content-Length: 99999999999999999999", b"Content-Length: 1", b"Content-Length: 2",
                     b"Transfer-Encoding: chunked", b" folded", b"\tfolded", b"NoColon", b": empty",
                     b"Host: x", b"X: \x00", b"Content-Length: 5\r\n continued"]),
    st.binary(max_size=20)), max_size=5)
EOL = st.sampled_from([b"\r\n", b"\n", b"\r"])


@st.composite
def requests(draw) -> bytes:
    eol = draw(EOL)
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.9", b"HTTX/1.1", b""]))
    line = draw(METHODS) + b" " + draw(TARGETS) + b" " + version
    return line + eol + b"".join(h + eol for h in draw(HEADERS)) + eol + draw(st.binary(max_size=8))


@SETTINGS
@given(buf=st.one_of(requests(), st.binary(max_size=300)))
def test_request_parser(buf):
    start, end = httpreq.find_head_end(buf)
    assert 0 <= start <= len(buf)
    if end < 0:
        return
    assert start < end <= len(buf)
    try:
        req = httpreq.parse_head(buf[start:end])
    except httpreq.HttpError as exc:
        assert exc.status in STATUSES and exc.reason
        return
    assert isinstance(req.method, bytes) and req.minor in (0, 1)
    assert 0 <= req.content_length <= httpreq.MAX_BODY
    try:
        group, user = httpreq.decode_query(req.query)
    except httpreq.HttpError as exc:
        assert exc.status == 400
        return
    for v in (group, user):
        assert v is None or (isinstance(v, str) and v and v.isprintable())


class _Transport:
    """The few transport calls a terminal connection makes, recorded (no network)."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.closed = False
        self.eof = False

    def write(self, data: bytes) -> None:
        assert not self.closed and not self.eof
        self.out += data

    def close(self) -> None:
        self.closed = True

    abort = close

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


RESPONSE = re.compile(rb"HTTP/1\.1 (\d{3}) [^\r\n]+\r\n(?:[^\r\n]+\r\n)*?Content-Length: (\d+)\r\n(?:[^\r\n]+\r\n)*\r\n")


@SETTINGS
@given(stream=st.lists(st.one_of(requests(), st.binary(max_size=60)), min_size=1, max_size=6),
       cuts=st.lists(st.integers(0, 400), max_size=6))
def test_connection_framing(stream, cuts):
    """Any byte stream, cut anywhere: answers are whole HTTP responses, never an exception."""

    def answer(group, user):
        if group == "NOPE":
            from lbserver.core.selection import UnknownGroup
            raise UnknownGroup(group)
        return "xapp1"

    svc = TerminalService(answer, terminal_config(idle_timeout=5))
    conn = _Connection(svc)
    transport = _Transport()
    conn.connection_made(transport)
    data = b"".join(stream)
    points = sorted({c for c in cuts if c < len(data)} | {0, len(data)})
    for a, b in zip(points, points[1:]):
        conn.data_received(data[a:b])
    out = bytes(transport.out)
    pos = 0
    while pos < len(out):  # a sequence of complete responses, each framed by its Content-Length
        m = RESPONSE.match(out, pos)
        assert m, out[pos:pos + 200]
        assert int(m.group(1)) in {200, 404, 405} | STATUSES, m.group(1)
        with_body = m.end() + int(m.group(2))
        # A HEAD answer carries the headers of the GET answer without its body.
        pos = with_body if out.startswith(b"HTTP/1.1 ", with_body) or with_body == len(out) else m.end()
    assert pos == len(out)


# -- agent replies -------------------------------------------------------------

SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(-2**31, 2**31 - 1),
                    st.integers(min_value=2**63, max_value=10**400), st.floats(), st.text(max_size=20),
                    st.binary(max_size=8), st.just("x" * 5000))
ANY = st.recursive(SCALARS, lambda c: st.one_of(st.lists(c, max_size=4),
                                                st.dictionaries(st.one_of(st.text(max_size=8), st.integers()), c,
                                                                max_size=4)), max_leaves=20)
VARNAMES = st.sampled_from(["NBPROC", "CPUFREQ", "LOADAVG", "MEMUSEDPCT", "NBSESSIONS", "GDM", "X"])
SESSION_KEYS = st.sampled_from(["user", "kind", "state", "since", "info", "x"])
SESSION_VALUES = st.one_of(SCALARS, st.sampled_from(["active", "disconnected", "utmp", "x2go", "bob"]))


@st.composite
def replies(draw):
    """Mostly well-shaped get_state replies with hostile values; sometimes anything at all."""
    if draw(st.integers(0, 4)) == 0:
        return draw(ANY)
    reply = {"hostname": draw(st.one_of(st.text(max_size=10), SCALARS)),
             "sampled_at": draw(st.one_of(st.floats(), st.integers(), st.integers(min_value=10**300), SCALARS)),
             "variables": draw(st.one_of(st.dictionaries(VARNAMES, SCALARS, max_size=7), ANY)),
             "users": draw(st.one_of(st.lists(st.text(max_size=8), max_size=4), ANY))}
    if draw(st.booleans()):
        reply["sessions"] = draw(st.one_of(
            st.lists(st.one_of(st.dictionaries(SESSION_KEYS, SESSION_VALUES, max_size=6), ANY), max_size=4), ANY))
    for key in draw(st.sets(st.sampled_from(list(reply)), max_size=1)):
        del reply[key]
    return reply


def _check_reply(reply) -> None:
    try:
        state = validate_state(reply)
    except ValueError as exc:
        assert str(exc)
        return
    assert set(state) == {"hostname", "agent_version", "sampled_at", "variables", "users", "sessions",
                          "sessions_error"}
    assert math.isfinite(state["sampled_at"])
    # Whatever sessions pass are complete, and a node can be weighed, viewed and indexed from them.
    view = node_view("n", None, weigh(state, (), ()))
    assert all(isinstance(s.user, str) and s.user and math.isfinite(s.since) for s in state["sessions"] or ())
    assert Snapshot({"n": view}, {"g": ("n",)}, "g", 0.0).nodes_with_user("nobody") == ()
    # What passes validation must weigh without error: a valid reply never breaks a cycle.
    verdict = evaluate(state["variables"], server_config.DEFAULT_RULES,
                       (server_config.Require(name="GDM", equals="true", min=None, max=None),
                        server_config.Require(name="X", equals=None, min=0.0, max=10.0)), extra_sessions=3)
    assert math.isfinite(verdict.weight) and verdict.weight >= 0
    assert verdict.healthy or verdict.reasons


def _check_raw_reply(raw: bytes) -> None:
    """A whole HTTP reply: a clear PollError, or a value the validator handles."""
    try:
        value = parse_reply(raw, 1 << 20)
    except PollError as exc:
        assert str(exc)
        return
    _check_reply(value)


@SETTINGS
@given(reply=replies())
def test_agent_reply_validator(reply):
    _check_reply(reply)


@SETTINGS
@given(reply=replies())
def test_agent_reply_over_the_wire(reply):
    """The same, through the balancer's HTTP/XML-RPC reply parser."""
    try:
        body = xmlrpc.client.dumps((reply,), methodresponse=True, allow_none=True).encode()
    except (TypeError, OverflowError):
        # xmlrpc.client refuses to marshal these; a hostile agent can still write them by hand.
        body = (b"<?xml version='1.0'?><methodResponse><params><param><value><struct>"
                b"<member><name>sampled_at</name><value><int>" + str(10**400).encode() + b"</int></value></member>"
                b"</struct></value></param></params></methodResponse>")
    raw = b"HTTP/1.0 200 OK\r\nContent-Type: text/xml\r\n\r\n" + body
    _check_raw_reply(raw)


@SETTINGS
@given(raw=st.binary(max_size=400))
def test_agent_raw_http_reply(raw):
    _check_raw_reply(raw)


# -- submission-test pages -----------------------------------------------------

TS = st.one_of(st.integers(-10**12, 10**12).map(str), st.floats().map(repr),
               st.sampled_from(["2024-06-10T08:00:00", "2024-06-10T08:00:00Z", "0001-01-01", "9999-12-31T23:59:59",
                                "9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+23:59", "2024-13-01", "z", "Z",
                                "nan", "inf", "-inf", "1e400", "yesterday", "2024-06-10T08:00:00+99:00"]),
               st.text(alphabet=string.digits + "-:TZ+.", min_size=1, max_size=25))
PAGE_LINE = st.one_of(st.builds(lambda t, f, h: f"{t} {f} {h}", TS,
                                st.one_of(st.integers(-5, 5).map(str), st.sampled_from(["x", "1" * 5000, "0x1"])),
                                st.sampled_from(["wms01", "WMS01.example.org.", ".", "..", "a" * 300])),
                      st.text(max_size=60))


@SETTINGS
@given(lines=st.lists(PAGE_LINE, max_size=12), now=st.floats(-1e12, 1e12), max_age=st.floats(0.001, 1e12))
def test_health_page_parser(lines, now, max_age):
    page = healthurl.parse_page("\n".join(lines), now, max_age)
    for key, res in page.results.items():
        assert key == res.host and res.ok == (res.flag == 0) and math.isfinite(res.timestamp)
    for problem in page.problems:
        assert re.match(r"line \d+: ", problem)
    healthurl.match_nodes(page, [("wms01", "wms01.example.org"), ("wms02", "10.0.0.2")])


# -- site-info importer ----------------------------------------------------------

SI_NAMES = st.sampled_from(["ALIAS_LIST", "DNS_SERVER", "DNS_ZONE", "DNS_KEYSTRING", "LOAD_BALANCING_SITE_CONTACT",
                            "WMS-A_FLAG", "WMS-A_WMSLIST", "WMS-A_NUM_OUT", "WMS-A_SUBMISSION_TEST_ENABLE",
                            "WMS-A_SUBMISSION_TEST_PATH", "wms-a_FLAG", "OTHER", "1BAD", "export DNS_ZONE"])
SI_VALUES = st.one_of(st.sampled_from(["wms-a", "wms-a, wms-b", "wms-a.grid.example.org", "1", "0", "2", "-1",
                                       "h1.example.org h2.example.org", "h1, -bad, h1", "10.0.0.1", "fd00::1",
                                       "grid.example.org", "dns1.example.org#5353", "[fd00::1]:53", "host:99999",
                                       "k:bGJzZWNyZXQ=", "hmac-sha256:k:bGJzZWNyZXQ=", "bogus:k:x", "k:!!!", ":",
                                       "a@example.org", "not-mail", "http://m.example.org/t.txt", "file:///t", "http://[bad/t.txt",
                                       "'quoted value'", '"unclosed', "a\\ b", "x # comment", "", "--", "\x00",
                                       "a" * 300]),
                      st.text(max_size=30))


@SETTINGS
@given(entries=st.lists(st.tuples(SI_NAMES, st.sampled_from([" = ", "=", " ="]), SI_VALUES), max_size=14),
       junk=st.lists(st.text(max_size=30), max_size=3), with_key=st.booleans())
def test_siteinfo_importer(tmp_path, entries, junk, with_key):
    text = "\n".join([f"{n}{eq}{v}" for n, eq, v in entries] + junk)
    src = tmp_path / "site-info.def"
    src.write_bytes(text.encode("utf-8", "surrogatepass"))
    key_out = tmp_path / "dns.key"
    key_out.unlink(missing_ok=True)
    out, err = io.StringIO(), io.StringIO()
    rc = siteinfo.main_import(str(src), str(key_out) if with_key else None, out=out, err=err)
    assert rc in (0, 1)
    if rc == 1:
        assert err.getvalue().strip().splitlines()[-1].startswith("error: ")
        assert out.getvalue() == ""
        return
    # A configuration was written: it is a well-formed lbsconfig.xml, its structure and attributes valid.
    from common.settings import check_attributes
    from common.xmlconfig import Reader, parse_bytes
    from lbserver.config.settings import CONFIG_FILE

    check_attributes(Reader("imported.xml"), parse_bytes(out.getvalue().encode(), "imported.xml", "lbsconfig.rng"),
                     CONFIG_FILE)
    assert "bGJzZWNyZXQ=" not in out.getvalue()  # the key goes to its own file only
    if with_key and key_out.exists():
        # With its key written, the imported file either loads or is refused as any config is.
        cfg = tmp_path / "imported.xml"
        cfg.write_text(out.getvalue())
        check_load("lbsconfig", cfg)


@SETTINGS
@given(text=st.text(max_size=300))
def test_siteinfo_parser(text):
    info, notes = siteinfo.parse_siteinfo(text, "site-info.def")
    for name, (value, line) in info.values.items():
        assert name == name.upper() and line >= 1 and isinstance(value, str)
    for note in notes:
        assert note.startswith("site-info.def:")
    try:
        siteinfo.convert(info, "/etc/mille-xterm/dns.key")
    except siteinfo.SiteInfoError as exc:
        assert str(exc).startswith("site-info.def")


# -- the cases these searches found, kept as plain regression tests ---------------

def test_found_cases(cfgdir, tmp_path):
    # An agent reply with an int no float can hold used to raise OverflowError and fail the whole poll cycle.
    with pytest.raises(ValueError, match="sampled_at"):
        validate_state({"hostname": "h", "sampled_at": 10**400, "variables": {}, "users": []})
    with pytest.raises(ValueError, match="variable LOADAVG: not a finite number"):
        validate_state({"hostname": "h", "sampled_at": 1.0, "variables": {"LOADAVG": 10**400}, "users": []})
    # A constant of 400 digits used to escape the agent's loader (and end the agent on SIGHUP).
    big = FULL_LBA.replace('value="3"', 'value="' + "9" * 400 + '"')
    assert check_load("lbaconfig", write(cfgdir, "lbaconfig", big)) == "error"
    # Addresses urllib cannot split used to escape the balancer's loader.
    for bad in ('address="http://[10.0.0.1:8001"', 'health-url="http://[mon.example.org/t.txt"'):
        text = re.sub(r'address="http://10\.0\.0\.1:8001"' if "address" in bad else r'health-url="[^"]*"', bad,
                      FULL_LBS, count=1)
        assert check_load("lbsconfig", write(cfgdir, "lbsconfig", text)) == "error"
    with pytest.raises(healthurl.HealthFetchError, match="not a valid URL"):
        healthurl.fetch("http://[bad/t.txt", 1)
    # A control character in a site-info value used to crash the importer inside lxml.
    src = tmp_path / "si.def"
    src.write_text("ALIAS_LIST=wms-a\nDNS_SERVER=\x1b\nDNS_ZONE=grid.example.org\nWMS-A_WMSLIST=h1 h2\n")
    err = io.StringIO()
    assert siteinfo.main_import(str(src), None, out=io.StringIO(), err=err) == 1
    assert "DNS_SERVER contains control characters" in err.getvalue()
