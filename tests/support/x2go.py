"""Real X2Go parts for the broker tests: x2goserver's session database, x2gobroker, and the Python X2Go clients.

* :func:`x2go_database` makes an x2goserver session database in a test
  directory with x2goserver's own tools (``x2godbadmin``, then
  ``x2goinsertsession``, ``x2gocreatesession`` and ``x2gochangestatus`` run
  as the session's user), in a private mount namespace where the directory
  is ``/var/lib/x2go``: the machine's database is left alone.
* :func:`start_x2gobroker` runs Debian's x2gobroker in HTTP mode on
  loopback, on a config and profiles of the test's own (no ssh agent, no
  port scans: it contacts nothing).
* :func:`x2gobroker_over_ssh` runs it as sites do with a load checker:
  in SSH agent mode, reaching its x2gobroker-agent on every server through
  a real sshd on loopback, the servers named in a private /etc/hosts and
  its ssh key in a private /root (a mount namespace: the machine's files
  are left alone), asking the load checker at a given socket.
* :func:`broker_post` asks a broker (ours or x2gobroker) as the clients do:
  a POSTed form, answered (status, body) whatever the status.
* :func:`python_x2go` runs a snippet with Debian's python3 (where
  python3-x2go and x2gobroker live) and returns what it printed as JSON.
"""

from __future__ import annotations

import grp
import json
import os
import ssl
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tests.support.processes import Procs, free_port, require_program, wait_for_port

SYSTEM_PYTHON = "/usr/bin/python3"
"""Debian's interpreter: python3-x2go, pyhoca-cli and x2gobroker are installed for it."""
X2GO_LIB = Path("/usr/lib/x2go")
SESSION_COOKIE = "0123456789abcdef0123456789abcdef"


def x2go_database(directory: Path, sessions: list[tuple[int, str, str, str]]) -> Path:
    """An x2goserver database in ``directory`` holding ``sessions``: (uid, session id, host, status R or S).

    Returns the database file's path. Needs root (a mount namespace) and
    x2goserver.
    """
    require_program("x2godbadmin")
    directory.mkdir(parents=True, exist_ok=True)
    os.chown(directory, 0, grp.getgrnam("x2gouser").gr_gid)
    directory.chmod(0o770)
    directory.parent.chmod(0o755)
    lines = ["set -e", f'mount --bind "{directory}" /var/lib/x2go', "x2godbadmin --createdb >&2"]
    for uid, sid, host, status in sessions:
        who = f"setpriv --reuid={uid} --regid={uid} --clear-groups"
        display = sid.split("-")[1]
        lines.append(f"{who} {X2GO_LIB}/x2goinsertsession {display} {host} {sid} >&2")
        lines.append(f"{who} {X2GO_LIB}/x2gocreatesession {sid} {SESSION_COOKIE} 4242 10.0.0.9 "
                     "30001 30002 30003 30004 30005 >&2")
        if status != "R":
            lines.append(f"{who} {X2GO_LIB}/x2gochangestatus {status} {sid} >&2")
    out = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", "\n".join(lines)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return directory / "x2go_sessions"


BROKER_CONF = """[global]
require-password = false
require-cookie = false
enable-plain-output = true
enable-json-output = true
default-auth-mech = none
default-agent-query-mode = NONE
default-portscan-x2goservers = false
default-use-load-checker = false
[broker_inifile]
enable = true
"""


def start_x2gobroker(procs: Procs, tmp: Path, profiles: str, conf: str = BROKER_CONF,
                     env: dict[str, str] | None = None) -> str:
    """Debian's x2gobroker in HTTP mode on 127.0.0.1 with ``profiles`` (its INI file); its base URL."""
    require_program("x2gobroker")
    (tmp / "x2gobroker.conf").write_text(conf)
    (tmp / "profiles.conf").write_text(profiles)
    port = free_port()
    proc = procs.start([SYSTEM_PYTHON, "/usr/bin/x2gobroker", "-M", "HTTP", "-b", f"127.0.0.1:{port}",
                        "-C", str(tmp / "x2gobroker.conf"), "-i"], cwd=str(tmp),
                       env={"X2GOBROKER_SESSIONPROFILES": str(tmp / "profiles.conf"), "HOME": str(tmp),
                            "PYTHONPATH": "", **(env or {})},
                       stdout=subprocess.DEVNULL, stderr=open(tmp / "x2gobroker.log", "w"))
    wait_for_port("127.0.0.1", port, timeout=30, proc=proc)
    return f"http://127.0.0.1:{port}"


def broker_post(url: str, context: ssl.SSLContext | None = None, timeout: float = 30.0,
                **form: str) -> tuple[int, str]:
    """One broker request as the X2Go clients send it (a POSTed form); (status, body), for errors too."""
    req = urllib.request.Request(url, data=urllib.parse.urlencode(form).encode(), method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def python_x2go(code: str, home: Path, timeout: float = 60.0) -> object:
    """Run ``code`` with Debian's python3 (python3-x2go importable); it prints one JSON document, returned."""
    env = {"HOME": str(home), "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
    out = subprocess.run([SYSTEM_PYTHON, "-c", code], capture_output=True, text=True, timeout=timeout, env=env,
                         cwd=str(home))
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def plain_ini(text: str) -> dict[str, dict[str, str]]:
    """The profiles of a ``/plain/`` listsessions reply, read the way X2Go Client reads them (an INI text)."""
    body = text.split("START_USER_SESSIONS\n")[1].split("END_USER_SESSIONS\n")[0]
    profiles: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for line in body.splitlines():
        if line.startswith("[") and line.endswith("]"):
            current = profiles.setdefault(line[1:-1], {})
        elif "=" in line and current is not None:
            key, value = line.split("=", 1)
            current[key] = value
    return profiles


SSH_BROKER_CONF = BROKER_CONF.replace("default-agent-query-mode = NONE", "default-agent-query-mode = SSH").replace(
    "default-use-load-checker = false", "default-use-load-checker = true\ndefault-agent-hostkey-policy = AutoAddPolicy")
"""x2gobroker as a site with its load checker runs it: servers asked through its ssh agent (the test's own sshd)."""


def _ssh_keygen(path: Path, kind: str) -> None:
    out = subprocess.run([require_program("ssh-keygen"), "-q", "-t", kind, "-N", "", "-m", "PEM", "-f", str(path)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr


def x2gobroker_over_ssh(procs: Procs, work: Path, servers: dict[str, str], socket_path: Path,
                        profiles: str) -> tuple[str, int]:
    """x2gobroker in SSH agent mode with its load checker at ``socket_path``; (its URL, the servers' ssh port).

    ``servers`` maps each server name (as the profiles' ``host=`` give
    them) to its loopback address, where one sshd listens for
    x2gobroker's agent user. ``profiles`` may use ``{sshport}``. ``work``
    must be a directory others may traverse (sshd reads the keys as the
    agent user).
    """
    for ip in servers.values():
        assert ip.startswith("127."), f"sshd listens on loopback addresses only, not {ip}"
    sshd = require_program("sshd")
    work.chmod(0o755)
    _ssh_keygen(work / "host_key", "ed25519")
    home = work / "home"
    (home / ".ssh").mkdir(parents=True)
    home.chmod(0o700)
    _ssh_keygen(home / ".ssh" / "id_rsa", "rsa")
    authorized = work / "authorized_keys"
    authorized.write_text((home / ".ssh" / "id_rsa.pub").read_text())
    authorized.chmod(0o644)
    port = free_port(next(iter(servers.values())))
    listen = "".join(f"ListenAddress {ip}:{port}\n" for ip in servers.values())
    (work / "sshd_config").write_text(
        f"{listen}HostKey {work}/host_key\nAuthorizedKeysFile {authorized}\nStrictModes no\nUsePAM yes\nMaxStartups 100\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nAllowUsers x2gobroker\n"
        f"PidFile {work}/sshd.pid\nPermitRootLogin no\nSubsystem sftp internal-sftp\n")
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation directory
    proc = procs.start([sshd, "-D", "-e", "-f", str(work / "sshd_config")], stdout=subprocess.DEVNULL,
                       stderr=open(work / "sshd.log", "w"))
    for ip in servers.values():
        wait_for_port(ip, port, proc=proc)
    hosts = work / "hosts"
    hosts.write_text("127.0.0.1 localhost\n" + "".join(f"{ip} {name}\n" for name, ip in servers.items()))
    (work / "x2gobroker.conf").write_text(SSH_BROKER_CONF)
    (work / "profiles.conf").write_text(profiles.format(sshport=port))
    http = free_port()
    script = (f'set -e\nmount --bind "{home}" /root\nmount --bind "{hosts}" /etc/hosts\n'
              f'exec {SYSTEM_PYTHON} /usr/bin/x2gobroker -M HTTP -b 127.0.0.1:{http} -C "{work}/x2gobroker.conf" -i')
    broker = procs.start(["unshare", "--mount", "--propagation", "private", "sh", "-c", script], cwd=str(work),
                         env={"X2GOBROKER_SESSIONPROFILES": str(work / "profiles.conf"),
                              "X2GOBROKER_LOADCHECKER_SOCKET": str(socket_path), "PYTHONPATH": ""},
                         stdout=subprocess.DEVNULL, stderr=open(work / "x2gobroker.log", "w"))
    wait_for_port("127.0.0.1", http, timeout=30, proc=broker)
    return f"http://127.0.0.1:{http}", port


__all__ = ["BROKER_CONF", "SYSTEM_PYTHON", "broker_post", "plain_ini", "python_x2go", "start_x2gobroker",
           "x2go_database", "x2gobroker_over_ssh"]
