"""Real node_exporters and a real Prometheus on loopback, and a page server standing in for either.

:func:`start_exporter` runs Debian's prometheus-node-exporter on one
127.0.0.N address with a textfile directory of its own; :func:`start_prometheus`
runs Debian's prometheus with a configuration naming loopback targets only
(no remote write, no alerting, no other scrape job), so neither contacts
anything off loopback. :class:`ExpositionServer` serves a page that a test
changes at will (a Prometheus text page, a JSON API answer, garbage), or
holds its answers (a slow server); its thread is the only one here.
"""

from __future__ import annotations

import http.server
import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from tests.support.processes import Procs, free_port, require_program, wait_for_port, wait_until


@dataclass
class Exporter:
    """A running node_exporter: its address, metrics URL and textfile directory."""

    ip: str
    port: int
    textfiles: Path
    proc: object

    @property
    def instance(self) -> str:
        return f"{self.ip}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.instance}/metrics"

    def write_textfile(self, name: str, text: str) -> None:
        """Write ``name``.prom atomically, as a site's cron job would."""
        tmp = self.textfiles / f".{name}.tmp"
        tmp.write_text(text)
        tmp.rename(self.textfiles / f"{name}.prom")

    def remove_textfile(self, name: str) -> None:
        (self.textfiles / f"{name}.prom").unlink(missing_ok=True)


def start_exporter(procs: Procs, tmp: Path, ip: str) -> Exporter:
    """Debian's node_exporter on ``ip`` (a free port), its textfile collector reading a fresh directory."""
    binary = require_program("prometheus-node-exporter")
    port = free_port(ip)
    textfiles = tmp / f"textfiles-{ip}"
    textfiles.mkdir()
    proc = procs.start([binary, f"--web.listen-address={ip}:{port}", f"--collector.textfile.directory={textfiles}",
                        "--log.level=warn"])
    wait_for_port(ip, port, proc=proc)
    return Exporter(ip, port, textfiles, proc)


def prometheus_yml(targets: list[str], interval: str = "1s", jobs: dict[str, list[str]] | None = None) -> str:
    """A prometheus.yml scraping ``targets`` (job "node") and ``jobs`` (honouring their labels and timestamps)."""
    for t in targets + [t for ts in (jobs or {}).values() for t in ts]:
        assert t.startswith("127."), f"loopback targets only, not {t}"
    out = [f"global:\n  scrape_interval: {interval}\n  evaluation_interval: {interval}\nscrape_configs:",
           f"  - job_name: node\n    static_configs:\n      - targets: {json.dumps(targets)}"]
    for job, ts in (jobs or {}).items():
        out.append(f"  - job_name: {job}\n    honor_labels: true\n    honor_timestamps: true\n"
                   f"    static_configs:\n      - targets: {json.dumps(ts)}")
    return "\n".join(out) + "\n"


@dataclass
class Prometheus:
    """A running Prometheus: its base URL."""

    url: str
    proc: object

    def query(self, promql: str) -> list:
        """An instant query's result list (for the tests' own waiting)."""
        import urllib.parse
        import urllib.request
        with urllib.request.urlopen(f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql}),
                                    timeout=5) as resp:
            return json.load(resp)["data"]["result"]


def start_prometheus(procs: Procs, tmp: Path, targets: list[str], interval: str = "1s",
                     jobs: dict[str, list[str]] | None = None) -> Prometheus:
    """Debian's prometheus on 127.0.0.1 scraping ``targets`` every ``interval``; returns once it answers queries."""
    binary = require_program("prometheus")
    port = free_port("127.0.0.1")
    config = tmp / "prometheus.yml"
    config.write_text(prometheus_yml(targets, interval, jobs))
    data = tmp / "prometheus-data"
    proc = procs.start([binary, f"--config.file={config}", f"--storage.tsdb.path={data}",
                        f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn",
                        "--storage.tsdb.retention.time=1h"])
    wait_for_port("127.0.0.1", port, timeout=30, proc=proc)
    prom = Prometheus(f"http://127.0.0.1:{port}", proc)
    wait_until(lambda: prom.query("up") is not None, timeout=30, what="prometheus answering queries")
    return prom


class ExpositionServer:
    """A loopback HTTP server answering every GET (whatever its path and query) with ``body``.

    ``status`` and ``content_type`` are those of the answer; ``delay``
    seconds are waited before it (a slow server); ``requests`` counts them
    and ``paths`` keeps the last request's path.
    """

    def __init__(self, body: bytes = b"", ip: str = "127.0.0.1") -> None:
        self.body, self.status, self.delay = body, 200, 0.0
        self.content_type = "text/plain; version=0.0.4"
        self.requests, self.path = 0, ""
        self._stop = threading.Event()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                server.requests += 1
                server.path = self.path
                if server.delay:
                    server._stop.wait(server.delay)
                body = server.body() if callable(server.body) else server.body
                try:
                    self.send_response(server.status)
                    self.send_header("Content-Type", server.content_type)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass  # the client gave up (its timeout or its size bound)

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer((ip, 0), Handler)
        self.httpd.daemon_threads = True
        self.host, self.port = ip, self.httpd.server_address[1]
        self.url = f"http://{ip}:{self.port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def exposition_with_timestamps(instances: dict[str, dict[str, float]], at: float | None = None) -> bytes:
    """A text page giving, for each instance, metrics with their values, all stamped ``at`` (epoch seconds)."""
    stamp = int((time.time() if at is None else at) * 1000)
    lines = []
    for instance, metrics in instances.items():
        for name, value in metrics.items():
            labels = name.split("{", 1)
            extra = ("," + labels[1][:-1]) if len(labels) > 1 else ""
            lines.append(f'{labels[0]}{{instance="{instance}"{extra}}} {value} {stamp}')
    return ("\n".join(lines) + "\n").encode()


__all__ = ["Exporter", "ExpositionServer", "Prometheus", "exposition_with_timestamps", "prometheus_yml",
           "start_exporter", "start_prometheus"]
