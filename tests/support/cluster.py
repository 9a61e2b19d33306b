"""Build small clusters of real lbagents and a real lbserver on loopback for tests."""

from __future__ import annotations

import http.client
import http.server
import json
import os
from collections import Counter
import signal
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lbserver import config as configmod
from lbserver.config import Group, Node, ServerConfig
from lbserver.core.balancer import Balancer as BalancerService
from tests.support.processes import Procs, free_port, python_cmd, wait_for_port, wait_until


@dataclass
class Agent:
    """A real lbagent whose SIMLOAD variable is read from a file the test can rewrite."""

    name: str
    ip: str
    port: int
    load_file: Path
    config: Path
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{self.ip}:{self.port}"

    def set_load(self, value: float) -> None:
        """Change the SIMLOAD the agent reports (picked up at its next sample)."""
        self.load_file.write_text(f"{value}\n")

    @property
    def drain_file(self) -> Path:
        """The agent's drain-file (beside its load file; absent at start)."""
        return self.load_file.with_suffix(".drain")

    @property
    def nologin_file(self) -> Path:
        """The agent's nologin-file (beside its load file, never the system's /etc/nologin)."""
        return self.load_file.with_suffix(".nologin")


def agent_xml(ip: str, port: int, load_file: Path, extra: str = "", sessions: str = "") -> str:
    """An agent config: loopback listen, 0.2 s samples, SIMLOAD from ``load_file``, drain files beside it.

    ``extra``: more ``<variable>`` elements; ``sessions``: a ``<sessions>`` element, if any.
    """
    drain, nologin = load_file.with_suffix(".drain"), load_file.with_suffix(".nologin")
    return f"""<?xml version="1.0"?>
<lbaconfig>
  <agent listen="{ip}:{port}" sample-interval="0.2" drain-file="{drain}" nologin-file="{nologin}"/>
  <access><allow from="127.0.0.0/8"/></access>
  <variables>
    <variable name="SIMLOAD" type="file" path="{load_file}"/>
    {extra}
  </variables>
  {sessions}
</lbaconfig>
"""


def start_agent(procs: Procs, tmp: Path, name: str, ip: str, load: float = 0.0, extra: str = "",
                port: int | None = None, sessions: str = "") -> Agent:
    """Write a config for and start one real lbagent; return once it listens."""
    port = port or free_port(ip)
    load_file = tmp / f"{name}.load"
    load_file.write_text(f"{load}\n")
    cfg = tmp / f"{name}.xml"
    cfg.write_text(agent_xml(ip, port, load_file, extra, sessions))
    agent = Agent(name, ip, port, load_file, cfg)
    restart_agent(procs, agent)
    return agent


def restart_agent(procs: Procs, agent: Agent) -> None:
    """(Re)start ``agent``'s process on its address."""
    agent.proc = procs.start(python_cmd("lbagent", "-f", "-c", str(agent.config)))
    wait_for_port(agent.ip, agent.port, proc=agent.proc)


def stop(proc: subprocess.Popen) -> None:
    """Stop a process and wait for it."""
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=10)


@dataclass
class Balancer:
    """A real lbserver process and its addresses."""

    config: Path
    port: int
    mgmt_port: int
    proc: subprocess.Popen | None = None
    extra_args: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def mgmt_url(self) -> str:
        return f"http://127.0.0.1:{self.mgmt_port}"

    def status(self) -> dict:
        """The /status document."""
        with urllib.request.urlopen(self.mgmt_url + "/status", timeout=5) as resp:
            return json.load(resp)

    def ask(self, query: str = "") -> str:
        """One terminal request; the host answered."""
        with urllib.request.urlopen(self.url + "/" + query, timeout=5) as resp:
            return resp.read().decode().strip()

    def wait_health(self, node: str, health: str, timeout: float = 15.0) -> dict:
        """Wait until /status shows ``node`` with ``health``; return the status."""
        return wait_until(lambda: (s := self.status())["nodes"][node]["health"] == health and s,
                          timeout, what=f"node {node} {health}")


def server_xml(lb_port: int, mgmt_port: int, groups: dict[str, list[tuple[str, str]]], tmp: Path,
               rules: str = '<variable name="SIMLOAD" custom="true" weight="100" capacity="100"/>',
               poll: str = 'interval="0.5" timeout="0.4" rise="2" fall="2"', extra: str = "",
               lbservice: str = "", group_attrs: str = "") -> str:
    """An lbsconfig.xml on loopback; ``groups`` maps a group to (name, url) pairs, the first is default.

    ``lbservice``: more attributes of <lbservice>, such as ``algorithm="weighted-random"``;
    ``group_attrs``: more attributes of every <group>, such as ``max-sessions="2"``.
    """
    parts = []
    for i, (gname, members) in enumerate(groups.items()):
        nodes = "\n".join(f'      <node name="{n}" address="{u}"/>' for n, u in members)
        parts.append(f'    <group name="{gname}" default="{"true" if i == 0 else "false"}" {group_attrs}>\n{nodes}\n'
                     '    </group>')
    return f"""<?xml version="1.0"?>
<lbsconfig>
  <lbservice listen="127.0.0.1:{lb_port}" returns="$NAME" idle-timeout="5" {lbservice}/>
  <mgmtservice listen="127.0.0.1:{mgmt_port}" state-file="{tmp}/lbserver.state"/>
  <poll {poll}/>
  <nodes>
{chr(10).join(parts)}
  </nodes>
  <rules>
    {rules}
  </rules>
  {extra}
</lbsconfig>
"""


def scripted_agent(procs: Procs, ip: str, *args: str) -> Node:
    """A ``tests.support.fakeagent`` on ``ip`` started with ``args`` (its ``--mode`` and what that needs); its Node."""
    port = free_port(ip)
    proc = procs.start([sys.executable, "-m", "tests.support.fakeagent", "--listen", f"{ip}:{port}", *args])
    wait_for_port(ip, port, proc=proc)
    return Node(name=ip, address=f"http://{ip}:{port}", host=ip, port=port)


def fake_agent(procs: Procs, tmp_path: Path, ip: str, sampled_at: float) -> tuple[Node, Path]:
    """A scripted agent on ``ip`` answering from a JSON state file (see :func:`write_state`); (node, state file)."""
    state = tmp_path / f"{ip}.json"
    write_state(state, sampled_at)
    return scripted_agent(procs, ip, "--mode", "state", "--state", str(state)), state


def write_state(path: Path, sampled_at: float) -> None:
    """The scripted agent's state: one fixed sample taken at ``sampled_at``."""
    path.write_text(json.dumps({"hostname": "fake", "agent_version": "t", "sampled_at": sampled_at,
                                "variables": {"NBPROC": 2, "CPUFREQ": 2000, "LOADAVG": 0.5, "MEMUSEDPCT": 20},
                                "users": ["alice"]}))


def start_balancer(procs: Procs, tmp: Path, groups: dict[str, list[tuple[str, str]]], **kw) -> Balancer:
    """Write a config and start a real lbserver in the foreground; return once it serves."""
    bal = Balancer(tmp / "lbsconfig.xml", free_port(), free_port())
    bal.config.write_text(server_xml(bal.port, bal.mgmt_port, groups, tmp, **kw))
    bal.proc = procs.start(python_cmd("lbserver", "-f", "-c", str(bal.config)))
    wait_for_port("127.0.0.1", bal.port, timeout=20, proc=bal.proc)
    wait_for_port("127.0.0.1", bal.mgmt_port, timeout=20, proc=bal.proc)
    return bal


def lbctl(url: str, *args: str, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    """Run ``python -m lbserver.mgmt.ctl --url URL args``."""
    kw.setdefault("capture_output", True)
    return subprocess.run(python_cmd("lbserver.mgmt.ctl", "--url", url, *args), text=True, timeout=30,
                          env={"PYTHONPATH": str(Path(__file__).resolve().parent.parent), **(env or {})}, **kw)


def env_with_root() -> dict[str, str]:
    """Environment for running the project's modules as commands."""
    return dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))


def ask_many(port: int, n: int, query: str = "/") -> Counter:
    """``n`` terminal requests over one keep-alive connection; count the answers."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    counts: Counter = Counter()
    for _ in range(n):
        conn.request("GET", query)
        resp = conn.getresponse()
        assert resp.status == 200
        counts[resp.read().decode().strip()] += 1
    conn.close()
    return counts


def offline_balancer(tmp_path: Path, token: str | None = None) -> BalancerService:
    """A Balancer loaded from a config, never started: nothing listens, nothing is polled."""
    token_attr = ""
    if token is not None:
        tf = tmp_path / "admin.token"
        tf.write_text(token + "\n")
        tf.chmod(0o600)
        token_attr = f' token-file="{tf}"'
    cfg = tmp_path / "lbsconfig.xml"
    cfg.write_text(f"""<?xml version="1.0"?>
<lbsconfig>
  <mgmtservice listen="127.0.0.1:8009" state-file="{tmp_path}/state/lbserver.state"{token_attr}/>
  <nodes>
    <group name="PROD" default="true">
      <node name="xapp1" address="http://127.0.0.2:8001"/>
      <node name="xapp2" address="http://127.0.0.3:8001"/>
    </group>
  </nodes>
</lbsconfig>
""")
    return BalancerService(configmod.load(str(cfg)))


def offline_config(groups: Mapping[str, Sequence[str]], nodes: Sequence[str] | None = None,
                   default: str | None = None, **fields) -> ServerConfig:
    """A ServerConfig built in memory: a Node per name on 127.0.0.1, port 8001, 8002... in turn.

    ``groups`` maps a group to its members, the first group is the default
    unless ``default`` names another; ``nodes``: every node in port order
    (default: the members as they first appear); ``fields``: the other
    ServerConfig fields (rules, state_file...).
    """
    names = nodes if nodes is not None else list(dict.fromkeys(n for ms in groups.values() for n in ms))
    default = default or next(iter(groups))
    return ServerConfig(path="t.xml",
                        nodes={n: Node(n, f"http://127.0.0.1:{8001 + i}", "127.0.0.1", 8001 + i)
                               for i, n in enumerate(names)},
                        groups={g: Group(g, tuple(ms), g == default) for g, ms in groups.items()},
                        default_group=default, **fields)



class PageServer:
    """A text page served on loopback from a thread: ``body`` at ``path``, 404 anywhere else.

    ``root`` and ``url`` are its addresses. Its next request can be held open:
    set ``armed``; the request then sets ``got`` and waits for ``release``
    (set by :meth:`close` at the latest).
    """

    def __init__(self, body: bytes, path: str) -> None:
        self.body = body
        self.armed, self.got, self.release = threading.Event(), threading.Event(), threading.Event()
        page = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                if self.path != path:
                    self.send_error(404)
                    return
                if page.armed.is_set():
                    page.armed.clear()
                    page.got.set()
                    page.release.wait(30)
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(page.body)))
                self.end_headers()
                try:
                    self.wfile.write(page.body)
                except OSError:
                    pass  # the client gave up waiting (its timeout) while it was held

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.root = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.url = self.root + path
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
