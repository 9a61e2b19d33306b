"""lbclient: ask the mille-xterm load balancer which application server to use.

This file is the whole of the ``lbclient`` command. It uses the Python
standard library only and imports nothing from the rest of the project (not
even from its own ``lbclient`` package), so it can be copied alone into a
thin-client image and run there with any Python 3, as ``python3 client.py``
or installed as an executable ``lbclient``. Where the project is installed,
the ``lbclient`` command and ``python3 -m lbclient`` run it too. It keeps to
syntax that old Python 3 releases understand (no f-strings, no ``:=``).
"""

import argparse
import ipaddress
import os
import re
import socket
import sys
import threading
import time

try:  # Python 3
    from urllib.parse import urlencode
except ImportError:  # pragma: no cover - Python 2 is not supported, but fail clearly
    sys.exit("lbclient needs Python 3")

VERSION = "0.1.0"
DEFAULT_PORT = 8008
DEFAULT_SERVER = "localhost"
DEFAULT_TIMEOUT = 2.0
MAX_RESPONSE = 65536  # a real answer is a few hundred bytes
MAX_HOST_LEN = 255

_LABEL = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")

DESCRIPTION = """\
Ask the mille-xterm load balancer (lbserver) which application server a
thin client should open its session on, and print that server's name or
address on standard output.

The balancers given with -s (or in $LBSERVER) are asked one after the other,
in order, until one gives a valid answer. A balancer counts as failed when
it refuses the connection, does not answer within the timeout, answers with
an HTTP status other than 200, or answers something that is not a single
host name or IP address; a one-line note about each failure goes to
standard error."""

EPILOG = """\
environment:
  LBSERVER      balancers to ask when no -s is given, separated by spaces or
                commas, each HOST[:PORT] (default: localhost:8008)

exit status:
  0  a balancer answered; the host is on standard output
  1  no balancer gave a valid answer (reasons on standard error)
  2  invalid command line

protocol:
  lbclient sends  GET /?group=GROUP&user=USER  over HTTP/1.0 to each
  balancer; the answer body is the host followed by a newline.

examples:
  lbclient -s boot1 -s boot2:8008 -g PROD
  LBSERVER="boot1 [fd00::2]:8008" lbclient -u alice -t 1
  host=$(lbclient -s boot1) && exec ssh -X "$host"
"""


class ServerError(Exception):
    """One balancer could not give an answer (the message says why)."""


def parse_server(spec, default_port=DEFAULT_PORT):
    """``HOST``, ``HOST:PORT``, ``[V6]``, ``[V6]:PORT`` or a bare IPv6 literal -> (host, port).

    Raises ValueError for an empty host or a bad port.
    """
    spec = spec.strip()
    port = default_port
    if spec.startswith("["):
        end = spec.find("]")
        if end < 0:
            raise ValueError("missing ']' in %r" % spec)
        host, rest = spec[1:end], spec[end + 1:]
        if rest:
            if not rest.startswith(":"):
                raise ValueError("unexpected text after ']' in %r" % spec)
            port = _port(rest[1:], spec)
    elif spec.count(":") == 1:
        host, port_text = spec.split(":")
        port = _port(port_text, spec)
    else:  # a plain name, IPv4 address, or bare IPv6 literal (several colons)
        host = spec
    if not host:
        raise ValueError("no host in %r" % spec)
    return host, port


def _port(text, spec):
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError("invalid port in %r" % spec)
    return int(text)


def valid_host(text):
    """True when ``text`` is a host name (RFC 1123, underscores tolerated) or an IP literal."""
    if not text or len(text) > MAX_HOST_LEN:
        return False
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        pass
    name = text[:-1] if text.endswith(".") else text
    if not name or name.replace(".", "").isdigit():  # all-numeric but not an IP: garbage
        return False
    return all(_LABEL.match(label) for label in name.split("."))


def build_request(host, port, group=None, user=None):
    """The HTTP/1.0 request bytes asking ``host:port`` for a server."""
    params = []
    if group:
        params.append(("group", group))
    if user:
        params.append(("user", user))
    target = "/?" + urlencode(params) if params else "/"
    host_header = "[%s]" % host if ":" in host else host
    if port != 80:
        host_header += ":%d" % port
    return ("GET %s HTTP/1.0\r\nHost: %s\r\nUser-Agent: lbclient/%s\r\nAccept: text/plain\r\n"
            "Connection: close\r\n\r\n" % (target, host_header, VERSION)).encode("utf-8")


def parse_response(data):
    """The host from a complete HTTP response (bytes); raises ServerError otherwise."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        head, sep, body = data.partition(b"\n\n")
        if not sep:
            raise ServerError("incomplete HTTP response")
    lines = head.decode("latin-1").splitlines()
    parts = lines[0].split(None, 2) if lines else []
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise ServerError("not an HTTP response")
    status = int(parts[1])
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length" and value.strip().isdigit():
            length = int(value.strip())
            if len(body) < length:
                raise ServerError("response body shorter than its Content-Length")
            body = body[:length]
    if status != 200:
        reason = body.decode("utf-8", "replace").strip().splitlines()
        detail = reason[0][:80] if reason else (parts[2] if len(parts) > 2 else "")
        raise ServerError("HTTP %d %s" % (status, detail))
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError:
        raise ServerError("answer is not ASCII")
    # exactly one line: the host, then optionally a newline
    if text.endswith("\r\n"):
        text = text[:-2]
    elif text.endswith("\n"):
        text = text[:-1]
    if not text:
        raise ServerError("empty answer")
    if len(text) > MAX_HOST_LEN:
        raise ServerError("answer longer than %d characters" % MAX_HOST_LEN)
    if not valid_host(text):
        raise ServerError("answer is not a host name or address: %r" % text[:60])
    return text


def resolve(host, port, timeout):
    """getaddrinfo bounded by ``timeout`` (the C library's resolver has its own, longer timeouts)."""
    result = []
    error = []

    def lookup():
        try:
            result.extend(socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM))
        except Exception as exc:  # reported to the caller below
            error.append(exc)

    worker = threading.Thread(target=lookup)
    worker.daemon = True
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise ServerError("name lookup timed out")
    if error:
        raise ServerError("cannot resolve %s: %s" % (host, getattr(error[0], "strerror", None) or error[0]))
    return result


def ask(host, port, group=None, user=None, timeout=DEFAULT_TIMEOUT):
    """Ask one balancer; return the host it chose, or raise ServerError.

    The whole exchange (lookup, connect, send, receive) is bounded by ``timeout``.
    """
    deadline = time.monotonic() + timeout
    addresses = resolve(host, port, timeout)
    request = build_request(host, port, group, user)
    last = None
    for family, socktype, proto, _, address in addresses:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ServerError("timed out")
        sock = socket.socket(family, socktype, proto)
        try:
            sock.settimeout(remaining)
            try:
                sock.connect(address)
            except socket.timeout:
                raise ServerError("connection timed out")
            except OSError as exc:
                last = ServerError(exc.strerror or str(exc))
                continue
            return parse_response(_exchange(sock, request, deadline))
        finally:
            sock.close()
    raise last or ServerError("no address")


def _exchange(sock, request, deadline):
    """Send ``request``, read until the server closes; everything before ``deadline``."""
    chunks = []
    size = 0
    try:
        sock.sendall(request)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ServerError("timed out waiting for the answer")
            sock.settimeout(remaining)
            chunk = sock.recv(8192)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_RESPONSE:
                raise ServerError("response too large")
    except socket.timeout:
        raise ServerError("timed out waiting for the answer")
    except OSError as exc:
        if not chunks:
            raise ServerError(exc.strerror or str(exc))
        # a reset after a complete answer still leaves the answer usable
    return b"".join(chunks)


def make_parser():
    """The command line parser (its --help is the manual)."""
    parser = argparse.ArgumentParser(
        prog="lbclient", description=DESCRIPTION, epilog=EPILOG,
        usage="%(prog)s [-s HOST[:PORT]]... [-g GROUP] [-u USER] [-t SECONDS]",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-s", "--server", action="append", metavar="HOST[:PORT]",
                        help="a balancer to ask; repeat for fallbacks, asked in order "
                             "(default: $LBSERVER, else localhost:%d); IPv6 as [ADDR]:PORT" % DEFAULT_PORT)
    parser.add_argument("-g", "--group", metavar="GROUP",
                        help="choose among the servers of this group (default: the balancer's default group)")
    parser.add_argument("-u", "--user", metavar="USER",
                        help="the user logging in: a server where this user already has a session is preferred")
    parser.add_argument("-t", "--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                        help="time allowed to each balancer, name lookup included (default %g)" % DEFAULT_TIMEOUT)
    parser.add_argument("-V", "--version", action="version", version="lbclient " + VERSION)
    return parser


def servers_from(args_servers, environ):
    """The balancers to ask, as (host, port) pairs; raises ValueError on a bad one."""
    specs = args_servers
    if not specs:
        env = environ.get("LBSERVER", "").replace(",", " ").split()
        specs = env or [DEFAULT_SERVER]
    return [parse_server(spec) for spec in specs]


def main(argv=None):
    """Command line entry point; returns the exit status."""
    parser = make_parser()
    args = parser.parse_args(argv)
    if not args.timeout > 0:
        parser.error("timeout must be positive")
    try:
        servers = servers_from(args.server, os.environ)
    except ValueError as exc:
        parser.error(str(exc))
    for host, port in servers:
        label = "[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)
        try:
            chosen = ask(host, port, args.group, args.user, args.timeout)
        except ServerError as exc:
            sys.stderr.write("lbclient: %s: %s\n" % (label, exc))
            continue
        sys.stdout.write(chosen + "\n")
        sys.stdout.flush()
        return 0
    sys.stderr.write("lbclient: no balancer answered (asked %d)\n" % len(servers))
    return 1


if __name__ == "__main__":
    sys.exit(main())
