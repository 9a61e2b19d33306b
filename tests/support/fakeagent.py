"""A misbehaving (or scripted) agent peer for balancer tests, run as a real process.

    python -m tests.support.fakeagent --listen 127.0.0.9:PORT --mode MODE [--state FILE]

modes:
  state      a well-formed get_state reply read from FILE (JSON) at every call,
             so a test can script variables and logged-in users
  garbage    HTTP 200 with a body that is not XML-RPC
  truncated  an XML-RPC reply cut in the middle
  blackhole  accept connections and never answer
  huge       a reply of --size bytes (default 100 MB), streamed
  drip       one byte a second
  bomb       an XML entity-expansion bomb
"""

from __future__ import annotations

import argparse
import json
import socket
import threading
import time
import xmlrpc.client

BOMB = (b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaaaaaaaa">'
        + b"".join(b'<!ENTITY %s "%s">' % (bytes([98 + i]), (b"&" + bytes([97 + i]) + b";") * 10) for i in range(8))
        + b"]><methodResponse><params><param><value><string>&i;</string></value></param></params></methodResponse>")


def _reply(body: bytes) -> bytes:
    return (b"HTTP/1.0 200 OK\r\nContent-Type: text/xml\r\nContent-Length: %d\r\n\r\n" % len(body)) + body


def _read_request(conn: socket.socket) -> None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            return
        body += chunk


def serve(conn: socket.socket, args: argparse.Namespace) -> None:
    """Answer one connection according to the mode."""
    try:
        conn.settimeout(None if args.mode == "blackhole" else 30)
        if args.mode == "blackhole":
            while conn.recv(65536):
                pass
            return
        _read_request(conn)
        if args.mode == "state":
            with open(args.state) as fh:
                state = json.load(fh)
            conn.sendall(_reply(xmlrpc.client.dumps((state,), methodresponse=True).encode()))
        elif args.mode == "garbage":
            conn.sendall(_reply(b"\x00\xffthis is not xml-rpc at all <<<"))
        elif args.mode == "truncated":
            body = xmlrpc.client.dumps(({"hostname": "x", "variables": {}},), methodresponse=True).encode()
            conn.sendall(_reply(body)[: len(body) // 2])
        elif args.mode == "bomb":
            conn.sendall(_reply(BOMB))
        elif args.mode == "huge":
            conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: text/xml\r\nContent-Length: %d\r\n\r\n" % args.size)
            chunk = b"<" * 65536
            sent = 0
            while sent < args.size:
                conn.sendall(chunk)
                sent += len(chunk)
        elif args.mode == "drip":
            for byte in _reply(b"<methodResponse></methodResponse>"):
                conn.sendall(bytes([byte]))
                time.sleep(1)
    except OSError:
        pass
    finally:
        conn.close()


def main() -> None:
    """Listen and serve until killed."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", required=True)
    parser.add_argument("--mode", required=True)
    parser.add_argument("--state")
    parser.add_argument("--size", type=int, default=100 * 1024 * 1024)
    args = parser.parse_args()
    host, port = args.listen.rsplit(":", 1)
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, int(port)))
    srv.listen(128)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=serve, args=(conn, args), daemon=True).start()


if __name__ == "__main__":
    main()
