"""Fixtures for DNS arbiter tests: a real BIND 9 and a real SMTP server on loopback.

``named_server``: ``named`` (Debian package bind9) as a child process on
127.0.0.1 and a free port, serving a throwaway primary zone
``lbtest.example`` that accepts dynamic updates signed with one hmac-sha256
key only. ``named_pair``: the same primary, notifying a second ``named``
(its own port) that serves the zone as its secondary (transfers signed with
the key). ``knot_server``: Knot DNS (``knotd``, Debian package knot) as the
primary instead, keeping no differences in its journal, then keeping
them. ``smtp_server``: aiosmtpd in a thread, collecting messages.
Both are stopped after the test. :class:`OneAnswer`: a one-shot DNS server
stand-in (a thread) for the crafted answers no real server gives on demand.
"""

from __future__ import annotations

import base64
import os
import secrets
import signal
import socket
import struct
import subprocess
import threading
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from typing import Callable

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.update
import pytest

from tests.support.processes import free_port, require_program, wait_until
from lbserver.config.tsigkey import load_key

ZONE = "lbtest.example"
KEY_NAME = "lbkey"


class OneAnswer:
    """A DNS server stand-in on loopback TCP for answers real servers do not give on demand (truncated, malformed).

    Accepts one connection, reads the query, sends ``reply(query)`` (bytes, framed), then closes; in a thread.
    """

    def __init__(self, reply: Callable[[dns.message.Message], bytes]) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.port = self.sock.getsockname()[1]
        self.reply = reply
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            conn.settimeout(5)
            (n,) = struct.unpack("!H", conn.recv(2))
            wire = b""
            while len(wire) < n:
                wire += conn.recv(n - len(wire))
            conn.sendall(self.reply(dns.message.from_wire(wire)))
        self.sock.close()


def framed(msg: dns.message.Message) -> bytes:
    """``msg`` as DNS over TCP sends it: its length on two bytes, then the message."""
    wire = msg.to_wire()
    return struct.pack("!H", len(wire)) + wire


def free_udp_tcp_port(address: str = "127.0.0.1") -> int:
    """A port free for both TCP and UDP on ``address`` (named listens on both)."""
    for _ in range(50):
        port = free_port(address)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            try:
                u.bind((address, port))
            except OSError:
                continue
        return port
    raise AssertionError("no free port for named")


def _key_and_zone(server: "NamedServer | KnotServer", zone_file: str) -> None:
    """Give ``server`` a new TSIG secret, the key file clients sign with (0600) and ZONE's first zone file."""
    server.secret_b64 = base64.b64encode(secrets.token_bytes(32)).decode()
    server.key_file = server.dir / "client.key"
    server.key_file.write_text(f'key "{KEY_NAME}" {{\n\talgorithm hmac-sha256;\n\tsecret "{server.secret_b64}";\n}};\n')
    os.chmod(server.key_file, 0o600)
    (server.dir / zone_file).write_text(
        "$TTL 300\n"
        f"@ IN SOA ns.{ZONE}. hostmaster.{ZONE}. 1 3600 600 86400 60\n"
        f"@ IN NS ns.{ZONE}.\n"
        "ns IN A 127.0.0.1\n"
    )


def _launch(server: "NamedServer | KnotServer", cmd: list[str]) -> None:
    """Start ``cmd`` (the server's daemon, logging to its log file); return once it answers the zone's SOA."""
    program = Path(cmd[0]).name
    log = open(server.log_path, "ab")
    server.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=server.dir)
    log.close()

    def ready() -> bool:
        if server.proc.poll() is not None:
            raise AssertionError(f"{program} exited with {server.proc.returncode}: {server.log_tail()}")
        return server.soa_serial() is not None

    try:
        wait_until(ready, timeout=15, what=f"{program} answering the SOA")
    except AssertionError:
        server.stop()
        raise AssertionError(f"{program} did not start: {server.log_tail()}") from None


class NamedServer:
    """A private ``named`` serving ZONE; start/stop/restart keep the zone (and its journal)."""

    def __init__(self, workdir: Path, address: str = "127.0.0.1") -> None:
        require_program("named")
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.address = address
        self.port = free_udp_tcp_port(address)
        self.zone = ZONE
        self.key_name = KEY_NAME
        self.proc: subprocess.Popen | None = None
        self.log_path = self.dir / "named.log"
        _key_and_zone(self, f"{ZONE}.db")
        self.write_conf(
            # IXFR even for this tiny zone (BIND answers AXFR-style when the differences outweigh the zone).
            "  recursion no;\n  notify no;\n  max-ixfr-ratio unlimited;\n",
            f'zone "{ZONE}" {{ type primary; file "{self.dir}/{ZONE}.db"; '
            f'allow-update {{ key "{KEY_NAME}"; }}; }};\n',
            f'key "{KEY_NAME}" {{ algorithm hmac-sha256; secret "{self.secret_b64}"; }};\n')

    def write_conf(self, options: str, zones: str, head: str = "") -> None:
        """named.conf: loopback-only listening in this directory, plus ``options`` lines and ``zones``."""
        (self.dir / "named.conf").write_text(
            head
            + "options {\n"
            f'  directory "{self.dir}";\n'
            f'  pid-file "{self.dir}/named.pid";\n'
            f'  session-keyfile "{self.dir}/session.key";\n'
            f'  managed-keys-directory "{self.dir}";\n'
            f"  listen-on port {self.port} {{ {self.address}; }};\n"
            "  listen-on-v6 { none; };\n"
            "  dnssec-validation no;\n"
            + options
            + "};\ncontrols { };\n"
            + zones)

    def start(self) -> None:
        """Start named and return once it answers the zone's SOA over TCP."""
        assert self.proc is None or self.proc.poll() is not None
        _launch(self, [require_program("named"), "-g", "-n", "1", "-c", str(self.dir / "named.conf")])

    def stop(self) -> None:
        """Stop named (SIGTERM, then SIGKILL after 5 s)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def log_tail(self, n: int = 2000) -> str:
        """The end of named's log, for failure messages."""
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def update(self, *changes: tuple) -> int:
        """Apply ``(method, name, ttl, type, data)`` changes to the zone, signed with the test key; the rcode."""
        k = load_key(str(self.key_file)).dns_key()
        upd = dns.update.UpdateMessage(self.zone, keyring={k.name: k}, keyname=k.name)
        for method, *args in changes:
            getattr(upd, method)(*args)
        return dns.query.tcp(upd, self.address, port=self.port, timeout=3).rcode()

    def _query(self, name: str, rdtype: str):
        q = dns.message.make_query(name, rdtype)
        return dns.query.tcp(q, self.address, port=self.port, timeout=2)

    def soa_serial(self) -> int | None:
        """The zone's SOA serial as named serves it (None when it does not answer)."""
        try:
            resp = self._query(ZONE, "SOA")
        except (OSError, EOFError, dns.exception.DNSException):
            return None
        for rrset in resp.answer:
            if rrset.rdtype == dns.rdatatype.SOA:
                return rrset[0].serial
        return None

    def dig(self, name: str, rdtype: str = "A") -> list[str]:
        """Addresses for ``name`` (relative to the zone) as the real ``dig`` tool reports them, sorted."""
        fqdn = f"{name}.{ZONE}"
        out = subprocess.run(["dig", f"@{self.address}", "-p", str(self.port), "+short", "+tcp", "+time=2", "+tries=1",
                              fqdn, rdtype], capture_output=True, text=True, timeout=10)
        assert out.returncode == 0, out.stderr
        return sorted(line.strip() for line in out.stdout.splitlines() if line.strip())

    def ttl(self, name: str, rdtype: str = "A") -> int | None:
        """The TTL named serves for the RRset (None when empty)."""
        resp = self._query(f"{name}.{ZONE}", rdtype)
        for rrset in resp.answer:
            if rrset.rdtype == dns.rdatatype.from_text(rdtype):
                return rrset.ttl
        return None


    def nsupdate(self, *commands: str) -> None:
        """Edit the zone by hand with the real ``nsupdate`` (signed with the test key), as an admin would."""
        script = f"server {self.address} {self.port}\nzone {self.zone}\n" + "\n".join(commands) + "\nsend\n"
        out = subprocess.run([require_program("nsupdate"), "-v", "-t", "5", "-k", str(self.key_file)], input=script,
                             capture_output=True, text=True, timeout=20)
        assert out.returncode == 0, out.stdout + out.stderr

    def key_statement(self) -> str:
        """The TSIG key as a named.conf statement."""
        return f'key "{KEY_NAME}" {{ algorithm hmac-sha256; secret "{self.secret_b64}"; }};\n'

    def notify_secondary(self, secondary: "NamedServer") -> None:
        """Make this primary notify ``secondary`` of each change and let it transfer with the key (restart to apply)."""
        self.write_conf(
            "  recursion no;\n  notify explicit;\n  max-ixfr-ratio unlimited;\n"
            f"  also-notify {{ {secondary.address} port {secondary.port}; }};\n"
            f'  notify-source {self.address};\n',
            f'zone "{ZONE}" {{ type primary; file "{self.dir}/{ZONE}.db"; '
            f'allow-update {{ key "{KEY_NAME}"; }}; allow-transfer {{ key "{KEY_NAME}"; }}; }};\n',
            self.key_statement())

    def secondary_of(self, primary: "NamedServer") -> None:
        """Serve ZONE as a secondary of ``primary`` (same key), transferring when notified."""
        self.secret_b64 = primary.secret_b64
        self.key_file.write_text(primary.key_file.read_text())
        (self.dir / f"{ZONE}.db").unlink(missing_ok=True)
        self.write_conf(
            "  recursion no;\n  notify no;\n"
            f"  transfer-source {self.address};\n",
            f'zone "{ZONE}" {{ type secondary; file "{self.dir}/{ZONE}.sec"; '
            f'primaries {{ {primary.address} port {primary.port} key "{KEY_NAME}"; }}; '
            f'allow-notify {{ {primary.address}; }}; }};\n',
            self.key_statement())


@pytest.fixture
def named_pair(tmp_path):
    """A private BIND primary and its secondary, a second named with its own port (notified, transferring with
    the key). Both on 127.0.0.1: named listens only on addresses of an interface, and lo has no other."""
    primary = NamedServer(tmp_path / "named-primary")
    secondary = NamedServer(tmp_path / "named-secondary")
    primary.notify_secondary(secondary)
    secondary.secondary_of(primary)
    primary.start()
    try:
        secondary.start()
        wait_until(lambda: secondary.soa_serial() == primary.soa_serial(), 15, what="the secondary's first transfer")
        yield primary, secondary
    finally:
        secondary.stop()
        primary.stop()


class KnotServer:
    """A private Knot DNS (``knotd``) primary for ZONE on 127.0.0.1, taking updates and transfers with the key.

    ``journal`` is Knot's ``journal-content``: ``changes`` (Knot's default) keeps the differences and
    serves IXFR from them; ``none`` (this class's default) keeps none, so an IXFR is answered with the whole
    zone (AXFR-style) and the arbiter falls back to reading every alias. Same ``update``, ``soa_serial``,
    ``dig`` and ``nsupdate`` as NamedServer.
    """

    def __init__(self, workdir: Path, journal: str = "none") -> None:
        require_program("knotd")
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.journal = journal
        self.address = "127.0.0.1"
        self.port = free_udp_tcp_port()
        self.zone = ZONE
        self.key_name = KEY_NAME
        self.proc: subprocess.Popen | None = None
        self.log_path = self.dir / "knotd.log"
        (self.dir / "db").mkdir(exist_ok=True)  # the journal and timers (knotd does not create it)
        _key_and_zone(self, f"{ZONE}.zone")
        (self.dir / "knot.conf").write_text(
            "server:\n"
            f'    rundir: "{self.dir}"\n'
            f"    listen: {self.address}@{self.port}\n"
            "log:\n  - target: stderr\n    any: info\n"
            f'database:\n    storage: "{self.dir}/db"\n'
            f'control:\n    listen: "{self.dir}/knot.sock"\n'
            f"key:\n  - id: {KEY_NAME}\n    algorithm: hmac-sha256\n    secret: {self.secret_b64}\n"
            f"acl:\n  - id: lb\n    key: {KEY_NAME}\n    action: [update, transfer]\n"
            "zone:\n"
            f"  - domain: {ZONE}\n"
            f'    storage: "{self.dir}"\n'
            f"    file: {ZONE}.zone\n"
            "    acl: lb\n"
            f"    journal-content: {journal}\n"
            "    zonefile-sync: -1\n")

    def start(self) -> None:
        """Start knotd and return once it answers the zone's SOA over TCP."""
        _launch(self, [require_program("knotd"), "-c", str(self.dir / "knot.conf")])

    stop = NamedServer.stop
    log_tail = NamedServer.log_tail
    update = NamedServer.update
    _query = NamedServer._query
    soa_serial = NamedServer.soa_serial
    dig = NamedServer.dig
    nsupdate = NamedServer.nsupdate


@pytest.fixture(params=["none", "changes"])
def knot_server(request, tmp_path):
    """A running private Knot DNS serving ZONE: keeping no differences (the arbiter's fall-back path), then
    keeping them (IXFR from Knot's journal); each test using it runs once with each."""
    server = KnotServer(tmp_path / "knot", journal=request.param)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def named_server(tmp_path):
    """A running private BIND serving ZONE with a TSIG-protected update policy."""
    server = NamedServer(tmp_path / "named")
    server.start()
    yield server
    server.stop()


@dataclass
class SmtpServer:
    """A loopback aiosmtpd server; ``messages`` collects parsed mails, ``envelopes`` the raw ones."""

    host: str
    port: int
    messages: list[Message] = field(default_factory=list)
    envelopes: list = field(default_factory=list)
    logins: list[tuple[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def wait_count(self, n: int, timeout: float = 10.0) -> list[Message]:
        """Wait until at least ``n`` messages arrived; return them."""
        wait_until(lambda: len(self.messages) >= n, timeout=timeout, what=f"{n} mail(s)")
        with self.lock:
            return list(self.messages)


class _Handler:
    def __init__(self, server: SmtpServer) -> None:
        self.server = server

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd's hook name)
        with self.server.lock:
            self.server.envelopes.append(envelope)
            self.server.messages.append(message_from_bytes(envelope.original_content or envelope.content))
        return "250 OK"


def start_smtp(auth: dict[str, str] | None = None, port: int | None = None, tls_context=None):
    """Start aiosmtpd on 127.0.0.1 (``port`` or a free one); returns (SmtpServer, controller to stop).

    With ``tls_context`` the server offers STARTTLS and refuses mail without it.
    """
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult, LoginPassword

    srv = SmtpServer(host="127.0.0.1", port=port or free_port())
    kw = {}
    if auth is not None:
        def authenticator(server, session, envelope, mechanism, auth_data):
            if isinstance(auth_data, LoginPassword):
                user, pw = auth_data.login.decode(), auth_data.password.decode()
                srv.logins.append((user, pw))
                ok = auth.get(user) == pw
                return AuthResult(success=ok, handled=ok)  # not handled: aiosmtpd answers 535
            return AuthResult(success=False, handled=False)

        # PLAIN only: aiosmtpd's LOGIN does not take smtplib's initial response, and a failed
        # PLAIN would make smtplib fall back to LOGIN and stall until its timeout.
        kw = dict(authenticator=authenticator, auth_require_tls=False, auth_required=True,
                  auth_exclude_mechanism=["LOGIN"])
    if tls_context is not None:
        kw.update(tls_context=tls_context, require_starttls=True)
    ctl = Controller(_Handler(srv), hostname=srv.host, port=srv.port, ready_timeout=10, **kw)
    ctl.start()
    return srv, ctl


@pytest.fixture
def smtp_server():
    """A real SMTP server on 127.0.0.1 collecting mails (no authentication)."""
    srv, ctl = start_smtp()
    yield srv
    ctl.stop()


@pytest.fixture
def smtp_auth_server():
    """A real SMTP server on 127.0.0.1 requiring AUTH PLAIN as user 'lb' with password 's3cret pw'."""
    srv, ctl = start_smtp({"lb": "s3cret pw"})
    yield srv
    ctl.stop()


#: Test nodes: names and documentation addresses. The addresses are only DATA
#: published in the private zone; nothing ever connects to them.
NODES = {"wms01": "192.0.2.11", "wms02": "192.0.2.12", "wms03": "192.0.2.13", "wms04": "192.0.2.14"}


def write_config(path: Path, named: NamedServer, aliases: str, *, nodes: dict[str, str] | None = None,
                 dns_attrs: str = "", key_file: Path | None = None, extra_node_attrs: dict[str, str] | None = None) -> Path:
    """Write an lbsconfig.xml whose <dns> points at ``named`` (group WMS holds ``nodes``)."""
    nodes = NODES if nodes is None else nodes
    extra_node_attrs = extra_node_attrs or {}
    node_xml = "\n".join(
        f'      <node name="{n}" address="http://{ip}:8001" {extra_node_attrs.get(n, "")}/>' for n, ip in nodes.items())
    path.write_text(
        '<?xml version="1.0"?>\n<lbsconfig>\n  <nodes>\n    <group name="WMS" default="true">\n'
        f"{node_xml}\n    </group>\n  </nodes>\n"
        f'  <dns server="127.0.0.1" port="{named.port}" zone="{named.zone}" ttl="120" timeout="3" '
        f'key-file="{key_file or named.key_file}" {dns_attrs}>\n{aliases}\n  </dns>\n</lbsconfig>\n')
    return path
