"""System install and service scripts, exercised for real.

``make install`` runs into a temporary DESTDIR; the installed SysV init
scripts then start, reload, query and stop the installed daemons (also one
that ignores SIGTERM, and as a user who may not signal them), and the
installed logrotate script makes them reopen their logs, with every path
(defaults file, configuration, pid file) pointing inside that root and the
daemons on free loopback ports. An install never wipes a LIBDIR it did not
create. The systemd units are checked with
``systemd-analyze verify`` where it exists, and parsed for the keys they
need in any case.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import xmlrpc.client
from pathlib import Path

import pytest

from tests.support import ROOT, free_port, wait_for_port, wait_until

pytestmark = pytest.mark.system

BINARIES = ("lbagent", "lbserver", "lbclient", "lbctl")


def make(*targets: str, destdir: Path, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """Run the project's Makefile into ``destdir`` with this interpreter (``extra``: more VAR=value)."""
    return subprocess.run(
        ["make", "--no-print-directory", "-C", str(ROOT), *targets, f"DESTDIR={destdir}",
         "PREFIX=/usr", f"SYSTEM_PYTHON={sys.executable}", *extra],
        capture_output=True, text=True, timeout=120,
    )


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A DESTDIR holding a fresh ``make install`` (read-only for the tests using it)."""
    destdir = tmp_path_factory.mktemp("destdir")
    result = make("install", destdir=destdir)
    assert result.returncode == 0, result.stdout + result.stderr
    return destdir


# ---------------------------------------------------------------- SysV scripts


class SysV:
    """Runs the installed init scripts against configs, pid files and defaults under ``tmp``."""

    def __init__(self, destdir: Path, tmp: Path) -> None:
        self.destdir = destdir
        self.tmp = tmp
        self.env: dict[str, str] = {}

    def setup(self, name: str, config_text: str, opts: str = "") -> Path:
        """Write ``name``'s config and /etc/default file; return the config path."""
        upper = name.upper()
        config = self.tmp / f"{name}.xml"
        config.write_text(config_text)
        defaults = self.tmp / f"default-{name}"
        defaults.write_text(
            f"{upper}_CONFIG={config}\n{upper}_PIDFILE={self.pidfile(name)}\n{upper}_OPTS={opts}\n"
            f"DAEMON={self.destdir}/usr/bin/{name}\n"
        )
        self.env[f"{upper}_DEFAULTS"] = str(defaults)
        return config

    def pidfile(self, name: str) -> Path:
        return self.tmp / f"{name}.pid"

    def pid(self, name: str) -> int:
        return int(self.pidfile(name).read_text().strip())

    def run(self, name: str, action: str, **env: str) -> subprocess.CompletedProcess:
        """``sh DESTDIR/etc/init.d/NAME ACTION`` with the test's defaults file."""
        full_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **self.env, **env}
        return subprocess.run(["sh", str(self.destdir / "etc" / "init.d" / name), action],
                              env=full_env, capture_output=True, text=True, timeout=60, cwd="/")

    def cleanup(self) -> None:
        """Leave no daemon behind, whatever the test did."""
        for name in ("lbserver", "lbagent"):
            try:
                pid = self.pid(name)
            except (OSError, ValueError):
                continue
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


@pytest.fixture
def sysv(installed, tmp_path):
    s = SysV(installed, tmp_path)
    yield s
    s.cleanup()


def agent_config(port: int, tmp: Path, extra: str = "") -> str:
    """A loopback-only agent configuration logging to a file in ``tmp``."""
    return f"""<?xml version="1.0"?>
<lbaconfig>
  <agent listen="127.0.0.1:{port}" sample-interval="1"/>
  <log file="{tmp}/lbagent.log" level="info"/>
  <access><allow from="127.0.0.0/8"/></access>
  <variables>{extra}</variables>
</lbaconfig>
"""


def server_config(lb_port: int, mgmt_port: int, agent_port: int, tmp: Path, groups: str = "") -> str:
    """A loopback-only balancer configuration with the local agent as its only node."""
    return f"""<?xml version="1.0"?>
<lbsconfig>
  <lbservice listen="127.0.0.1:{lb_port}" returns="$IP"/>
  <mgmtservice listen="127.0.0.1:{mgmt_port}" state-file="{tmp}/lbserver.state"/>
  <log file="{tmp}/lbserver.log" level="info"/>
  <poll interval="1" timeout="0.5" rise="1" fall="1"/>
  <nodes>
    <group default="true" name="PROD"><node address="http://127.0.0.1:{agent_port}" name="local"/></group>
    {groups}
  </nodes>
</lbsconfig>
"""


def get_state(port: int) -> dict:
    return xmlrpc.client.ServerProxy(f"http://127.0.0.1:{port}/").get_state()


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs; a zombie (exited, its parent has yet to reap it) does not."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


def test_agent_start_status_reload_stop(sysv, tmp_path):
    port = free_port()
    config = sysv.setup("lbagent", agent_config(port, tmp_path))

    started = sysv.run("lbagent", "start")
    assert started.returncode == 0, started.stdout + started.stderr
    assert "Starting" in started.stdout
    wait_for_port("127.0.0.1", port)
    pid = sysv.pid("lbagent")
    assert pid_alive(pid)
    assert "ROOM" not in get_state(port)["variables"]

    status = sysv.run("lbagent", "status")
    assert status.returncode == 0
    assert f"running (pid {pid})" in status.stdout

    again = sysv.run("lbagent", "start")
    assert again.returncode == 0
    assert "already running" in again.stdout
    assert sysv.pid("lbagent") == pid

    # reload applies a changed file: a new constant variable appears.
    config.write_text(agent_config(port, tmp_path, '<variable name="ROOM" type="constant" value="7"/>'))
    reloaded = sysv.run("lbagent", "reload")
    assert reloaded.returncode == 0, reloaded.stdout + reloaded.stderr
    wait_until(lambda: get_state(port)["variables"].get("ROOM") == 7, what="ROOM=7 after reload")
    assert sysv.pid("lbagent") == pid
    wait_until(lambda: "configuration reloaded" in (tmp_path / "lbagent.log").read_text(),
               what="reload logged in the configured log file")

    # A broken file is refused with FILE:LINE and the running daemon keeps serving.
    config.write_text(agent_config(port, tmp_path).replace('sample-interval="1"', 'sample-interval="soon"'))
    refused = sysv.run("lbagent", "force-reload")
    assert refused.returncode == 6
    assert f"{config}:3:" in refused.stderr
    assert get_state(port)["variables"]["ROOM"] == 7

    stopped = sysv.run("lbagent", "stop")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert not sysv.pidfile("lbagent").exists()
    assert not pid_alive(pid)
    with pytest.raises(OSError):
        get_state(port)

    status = sysv.run("lbagent", "status")
    assert status.returncode == 3
    assert "not running" in status.stdout
    assert sysv.run("lbagent", "stop").returncode == 0  # stopping a stopped service is fine
    assert sysv.run("lbagent", "reload").returncode == 7


def test_agent_refuses_invalid_config(sysv, tmp_path):
    port = free_port()
    config = sysv.setup("lbagent", agent_config(port, tmp_path).replace("<access>", "<acess>", 1))

    result = sysv.run("lbagent", "start")
    assert result.returncode == 6
    assert f"{config}:5:" in result.stderr
    assert not sysv.pidfile("lbagent").exists()
    assert sysv.run("lbagent", "status").returncode == 3


def test_agent_restart_and_stale_pidfile_without_lsb_functions(sysv, tmp_path):
    """The plain fallbacks when /lib/lsb/init-functions is missing; a crashed daemon's pid file."""
    port = free_port()
    sysv.setup("lbagent", agent_config(port, tmp_path))
    plain = {"INIT_FUNCTIONS": str(tmp_path / "missing")}

    # A pid file left by a crash (its process is gone): status 1, start replaces it.
    dead = subprocess.Popen(["true"])
    dead.wait()
    sysv.pidfile("lbagent").write_text(f"{dead.pid}\n")
    status = sysv.run("lbagent", "status", **plain)
    assert status.returncode == 1
    assert "pid file" in status.stdout

    started = sysv.run("lbagent", "start", **plain)
    assert started.returncode == 0, started.stdout + started.stderr
    assert started.stdout.strip() == "Starting mille-xterm agent: lbagent."
    wait_for_port("127.0.0.1", port)
    first = sysv.pid("lbagent")

    restarted = sysv.run("lbagent", "restart", **plain)
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    second = sysv.pid("lbagent")
    assert second != first and not pid_alive(first)
    wait_until(lambda: get_state(port)["hostname"], what="agent answering after restart")

    assert sysv.run("lbagent", "bogus", **plain).returncode == 3
    assert sysv.run("lbagent", "stop", **plain).returncode == 0
    assert not sysv.pidfile("lbagent").exists()
    assert not pid_alive(second)


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""


def test_server_and_agent_services(sysv, tmp_path):
    agent_port, lb_port, mgmt_port = free_port(), free_port(), free_port()
    sysv.setup("lbagent", agent_config(agent_port, tmp_path))
    config = sysv.setup("lbserver", server_config(lb_port, mgmt_port, agent_port, tmp_path))

    assert sysv.run("lbagent", "start").returncode == 0
    started = sysv.run("lbserver", "start")
    assert started.returncode == 0, started.stdout + started.stderr
    wait_for_port("127.0.0.1", lb_port)
    pid = sysv.pid("lbserver")
    assert sysv.run("lbserver", "status").returncode == 0
    assert "already running" in sysv.run("lbserver", "start").stdout

    wait_until(lambda: http_get(f"http://127.0.0.1:{lb_port}/") == (200, "127.0.0.1\n"),
               what="the balancer choosing the local agent")
    assert http_get(f"http://127.0.0.1:{lb_port}/?group=LAB")[0] == 404

    config.write_text(server_config(lb_port, mgmt_port, agent_port, tmp_path,
                                    '<group name="LAB"><node address="http://127.0.0.1:'
                                    f'{agent_port}" name="local"/></group>'))
    assert sysv.run("lbserver", "reload").returncode == 0
    wait_until(lambda: http_get(f"http://127.0.0.1:{lb_port}/?group=LAB") == (200, "127.0.0.1\n"),
               what="group LAB served after reload")
    assert sysv.pid("lbserver") == pid

    stopped = sysv.run("lbserver", "stop")
    assert stopped.returncode == 0
    assert not sysv.pidfile("lbserver").exists()
    assert not pid_alive(pid)
    assert sysv.run("lbserver", "status").returncode == 3
    assert sysv.run("lbagent", "stop").returncode == 0
    assert not sysv.pidfile("lbagent").exists()


def test_init_scripts_shape(installed):
    # One body for both daemons (a fix in one reaches the other): each installed
    # script is its own head (LSB header, names, defaults) plus init/common.sysv.
    common = (ROOT / "init" / "common.sysv").read_text()
    code = "\n".join(line for line in common.splitlines() if not line.lstrip().startswith("#"))
    assert "lbagent" not in code.lower() and "lbserver" not in code.lower()
    for name in ("lbagent", "lbserver"):
        head = (ROOT / "init" / f"{name}.sysv").read_text()
        installed_script = installed / "etc/init.d" / name
        text = installed_script.read_text()
        assert text == (head + common).replace("@BINDIR@", "/usr/bin")
        assert text.startswith("#!/bin/sh\n")
        header = text[text.index("### BEGIN INIT INFO"):text.index("### END INIT INFO")]
        for key in ("Provides:", "Required-Start:", "Required-Stop:", "Default-Start:",
                    "Default-Stop:", "Short-Description:"):
            assert f"# {key}" in header, (name, key)
        assert f"# Provides:          {name}" in header
        assert f"${{{name.upper()}_DEFAULTS:-/etc/default/{name}}}" in text
        assert "# ---- common part" not in head
        assert subprocess.run(["sh", "-n", str(installed_script)]).returncode == 0


def test_stop_kills_a_daemon_that_ignores_sigterm(sysv, tmp_path):
    port = free_port()
    sysv.setup("lbagent", agent_config(port, tmp_path))
    assert sysv.run("lbagent", "start").returncode == 0
    wait_for_port("127.0.0.1", port)
    pid = sysv.pid("lbagent")
    # A stopped process holds SIGTERM pending, as a hung daemon would: only SIGKILL ends it.
    os.kill(pid, signal.SIGSTOP)

    stopped = sysv.run("lbagent", "stop", STOP_TIMEOUT="1")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert f"pid {pid} ignored SIGTERM for 1s, killing it" in stopped.stderr
    assert not pid_alive(pid)
    assert not sysv.pidfile("lbagent").exists()  # a killed daemon cannot remove it itself
    assert sysv.run("lbagent", "status").returncode == 3


def test_stop_fails_when_the_daemon_survives(sysv, tmp_path):
    """A caller that may not signal the daemon gets a failure, and the pid file stays."""
    assert os.geteuid() == 0, "this test runs the init script as nobody against a root daemon"
    # Everything the unprivileged caller reads must be reachable outside the private tmp_path.
    shared = Path(tempfile.mkdtemp(prefix="sysv-shared."))
    try:
        shared.chmod(0o755)
        port = free_port()
        sysv.tmp = shared
        sysv.setup("lbagent", agent_config(port, tmp_path))
        (shared / "default-lbagent").chmod(0o644)
        assert sysv.run("lbagent", "start").returncode == 0
        wait_for_port("127.0.0.1", port)
        pid = sysv.pid("lbagent")
        script = shared / "lbagent.init"
        shutil.copy(sysv.destdir / "etc/init.d/lbagent", script)
        script.chmod(0o755)

        as_nobody = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "sh", str(script), "stop"],
            env={"PATH": "/usr/bin:/bin", **sysv.env}, capture_output=True, text=True, timeout=60, cwd="/")
        assert as_nobody.returncode == 1, as_nobody.stdout + as_nobody.stderr
        assert "failed" in as_nobody.stdout
        assert f"cannot signal pid {pid}" in as_nobody.stderr
        assert pid_alive(pid) and sysv.pid("lbagent") == pid
        assert get_state(port)["hostname"]

        assert sysv.run("lbagent", "stop").returncode == 0
        assert not pid_alive(pid)
    finally:
        sysv.cleanup()
        shutil.rmtree(shared, ignore_errors=True)


def postrotate(installed: Path) -> str:
    """The installed logrotate file's postrotate script, its init scripts taken from ``installed``."""
    text = (installed / "etc/logrotate.d/mille-xterm").read_text()
    body = text[text.index("postrotate") + len("postrotate"):text.index("endscript")]
    return body.replace("/etc/init.d/", f"{installed}/etc/init.d/")


def test_logrotate_reopens_logs_and_spares_reused_pids(sysv, tmp_path):
    port = free_port()
    config = sysv.setup("lbagent", agent_config(port, tmp_path))
    sysv.setup("lbserver", server_config(free_port(), free_port(), port, tmp_path))
    script = postrotate(sysv.destdir)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **sysv.env}

    # lbagent crashed and its pid went to an unrelated process, even one whose
    # command line happens to name it: it must not get the SIGUSR1 (which would end it).
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "lbagent"])
    try:
        sysv.pidfile("lbagent").write_text(f"{stranger.pid}\n")
        assert sysv.run("lbagent", "status").returncode == 1
        rotated = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True, timeout=60)
        assert rotated.returncode == 0, rotated.stdout + rotated.stderr
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()

    # The running daemon reopens its log: after the rename it writes a new file.
    assert sysv.run("lbagent", "start").returncode == 0
    wait_for_port("127.0.0.1", port)
    pid = sysv.pid("lbagent")
    log = tmp_path / "lbagent.log"
    wait_until(lambda: log.exists() and "started" in log.read_text(), what="agent logging to its file")
    # An edit in progress when logrotate runs: the rotation must not apply it
    # (nor check it: rotate is no reload).
    config.write_text(agent_config(port, tmp_path, '<variable name="ROOM" type="constant" value="7"/>')[:-60])
    log.rename(tmp_path / "lbagent.log.1")
    rotated = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert rotated.returncode == 0, rotated.stdout + rotated.stderr
    wait_until(lambda: log.exists() and "log file" in log.read_text() and "reopened" in log.read_text(),
               what="a new log file after rotation")
    for text in (log.read_text(), (tmp_path / "lbagent.log.1").read_text()):
        assert "reload" not in text and "ERROR" not in text, text
    assert sysv.pid("lbagent") == pid and pid_alive(pid)
    assert "ROOM" not in get_state(port)["variables"]
    assert sysv.run("lbagent", "reload").returncode == 6  # the file was broken indeed

    # The finished edit is applied by reload (SIGHUP), which does not reopen the log.
    config.write_text(agent_config(port, tmp_path, '<variable name="ROOM" type="constant" value="7"/>'))
    assert sysv.run("lbagent", "reload").returncode == 0
    wait_until(lambda: get_state(port)["variables"].get("ROOM") == 7, what="ROOM=7 after reload")
    wait_until(lambda: "configuration reloaded" in log.read_text(), what="reload logged")
    assert sysv.run("lbagent", "stop").returncode == 0


def test_rotate_sends_sighup_to_a_daemon_that_does_not_catch_sigusr1(sysv, tmp_path):
    """A daemon started before SIGUSR1 reopened the log (its pid file locked, SIGUSR1 left to the
    default action, which ends a process) gets the SIGHUP that reopened its log then."""
    sysv.setup("lbagent", agent_config(free_port(), tmp_path))
    got = tmp_path / "signals"
    older = subprocess.Popen([sys.executable, "-c", """if True:
        import fcntl, os, signal, sys, time
        pidfile, got = sys.argv[1], sys.argv[2]
        fd = os.open(pidfile, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.lockf(fd, fcntl.LOCK_EX)
        os.write(fd, b"%d\\n" % os.getpid())
        signal.signal(signal.SIGHUP, lambda *_: open(got, "a").write("HUP\\n"))
        open(got, "a").write("ready\\n")
        while True:
            time.sleep(1)
        """, str(sysv.pidfile("lbagent")), str(got), "lbagent"])
    try:
        wait_until(lambda: got.exists() and "ready" in got.read_text(), what="the older daemon ready")
        assert sysv.run("lbagent", "status").returncode == 0
        rotated = sysv.run("lbagent", "rotate")
        assert rotated.returncode == 0, rotated.stdout + rotated.stderr
        wait_until(lambda: "HUP" in got.read_text(), what="SIGHUP received")
        assert older.poll() is None
    finally:
        older.kill()
        older.wait()


# ------------------------------------------------------------ make install


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_install_layout(installed):
    d = installed
    for name in BINARIES:
        script = d / "usr" / "bin" / name
        assert os.access(script, os.X_OK), script
        assert script.read_text().startswith(f"#!{sys.executable}\n")
    assert (d / "usr/lib/mille-xterm/lbagent/cli.py").is_file()
    assert (d / "usr/lib/mille-xterm/common/schemas/lbaconfig.rng").is_file()
    assert (d / "usr/lib/mille-xterm/lbserver/mgmt/static/dashboard.html").is_file()
    assert (d / "usr/lib/mille-xterm/lbclient/client.py").is_file()
    assert (d / "etc/mille-xterm/lbaconfig.xml").read_bytes() == (ROOT / "etc/lbaconfig.xml").read_bytes()
    assert (d / "etc/mille-xterm/lbsconfig.xml").read_bytes() == (ROOT / "etc/lbsconfig.xml").read_bytes()
    for name in ("lbagent", "lbserver"):
        init = d / "etc/init.d" / name
        assert os.access(init, os.X_OK)
        assert f"DAEMON=/usr/bin/{name}\n" in init.read_text()
        assert f"{name.upper()}_CONFIG=/etc/mille-xterm/" in (d / "etc/default" / name).read_text()
        unit = (d / "usr/lib/systemd/system" / f"{name}.service").read_text()
        assert f"ExecStart=/usr/bin/{name} -f " in unit
        assert "@BINDIR@" not in unit
    assert (d / "etc/logrotate.d/mille-xterm").is_file()
    assert "mille-xterm" in (d / "usr/lib/sysusers.d/mille-xterm.conf").read_text()
    assert (d / "var/lib/mille-xterm").is_dir()

    # The installed commands run the installed copy, from anywhere, without PYTHONPATH.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    for name, conf in (("lbagent", "lbaconfig.xml"), ("lbserver", "lbsconfig.xml")):
        result = subprocess.run([str(d / "usr/bin" / name), "--check-config", "-c", str(d / "etc/mille-xterm" / conf)],
                                capture_output=True, text=True, env=env, cwd="/", timeout=60)
        assert result.returncode == 0, result.stderr
        assert "configuration OK" in result.stdout
    result = subprocess.run([str(d / "usr/bin/lbclient"), "--help"], capture_output=True, text=True,
                            env=env, cwd="/", timeout=60)
    assert result.returncode == 0 and "usage: lbclient" in result.stdout, result.stderr
    probe = d / "usr/bin/.probe"
    probe.write_text((d / "usr/bin/lbagent").read_text().replace(
        "sys.exit(main())", "import lbagent\nprint(lbagent.__file__)"))
    try:
        where = subprocess.run([sys.executable, str(probe)], capture_output=True, text=True,
                               env=env, cwd="/", timeout=60)
    finally:
        probe.unlink()
    assert where.stdout.strip() == str(d / "usr/lib/mille-xterm/lbagent/__init__.py")


def test_reinstall_keeps_edited_config_and_uninstall(tmp_path):
    d = tmp_path / "root"
    assert make("install", destdir=d).returncode == 0
    etc = d / "etc/mille-xterm"
    edited = etc / "lbaconfig.xml"
    edited.write_text(edited.read_text().replace('sample-interval="5"', 'sample-interval="7"'))
    admin_sum = sha(edited)

    # An unedited file from an older release: updated in place.
    manifest = d / "usr/share/mille-xterm/install-manifest"
    old_default = b"<?xml version='1.0'?>\n<lbsconfig/>\n"
    (etc / "lbsconfig.xml").write_bytes(old_default)
    old_sum = hashlib.sha256(old_default).hexdigest()
    manifest.write_text("\n".join(
        "\t".join(line.split("\t")[:2] + [old_sum]) if "\t/etc/mille-xterm/lbsconfig.xml\t" in line else line
        for line in manifest.read_text().splitlines()) + "\n")

    # A module dropped from the package goes on reinstall: the tree is ours.
    stale = d / "usr/lib/mille-xterm/lbagent/dropped.py"
    stale.write_text("")

    again = make("install", destdir=d)
    assert again.returncode == 0, again.stderr
    assert not stale.exists()
    assert sha(edited) == admin_sum
    assert (etc / "lbaconfig.xml.dist").read_bytes() == (ROOT / "etc/lbaconfig.xml").read_bytes()
    assert "kept /etc/mille-xterm/lbaconfig.xml: it was edited; the new default is " \
           "/etc/mille-xterm/lbaconfig.xml.dist" in again.stdout
    assert (etc / "lbsconfig.xml").read_bytes() == (ROOT / "etc/lbsconfig.xml").read_bytes()
    assert "updated /etc/mille-xterm/lbsconfig.xml" in again.stdout
    assert not (etc / "lbsconfig.xml.dist").exists()

    removed = make("uninstall", destdir=d)
    assert removed.returncode == 0, removed.stderr
    assert "kept /etc/mille-xterm/lbaconfig.xml: it was edited" in removed.stdout
    assert sha(edited) == admin_sum
    assert sorted(p.name for p in etc.iterdir()) == ["lbaconfig.xml"]
    left = sorted(str(p.relative_to(d)) for p in d.rglob("*"))
    assert left == ["etc", "etc/mille-xterm", "etc/mille-xterm/lbaconfig.xml"]


def test_install_refuses_a_foreign_libdir(tmp_path):
    """LIBDIR naming a directory we did not install (site-packages) is never wiped."""
    d = tmp_path / "root"
    foreign = d / "usr/lib/python3/dist-packages"
    (foreign / "somepkg").mkdir(parents=True)
    (foreign / "somepkg/__init__.py").write_text("# someone else's\n")

    result = make("install", destdir=d, extra=("LIBDIR=/usr/lib/python3/dist-packages",))
    assert result.returncode != 0
    assert ("LIBDIR /usr/lib/python3/dist-packages already exists and was not installed by "
            "mille-xterm") in result.stderr
    assert (foreign / "somepkg/__init__.py").read_text() == "# someone else's\n"
    assert sorted(p.name for p in foreign.iterdir()) == ["somepkg"]
    assert not (d / "usr/bin/lbagent").exists()

    # An empty directory holds nothing to lose: it is used.
    (foreign / "somepkg/__init__.py").unlink()
    (foreign / "somepkg").rmdir()
    result = make("install", destdir=d, extra=("LIBDIR=/usr/lib/python3/dist-packages",))
    assert result.returncode == 0, result.stderr
    assert (foreign / "lbagent/cli.py").is_file()


# ------------------------------------------------------------ systemd units


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A unit file as section -> key -> values (keys may repeat, like ExecReload)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


@pytest.mark.parametrize("name", ["lbagent", "lbserver"])
def test_systemd_unit(installed, tmp_path, name):
    unit_path = installed / "usr/lib/systemd/system" / f"{name}.service"
    unit = parse_unit(unit_path)
    svc = unit["Service"]
    assert svc["ExecStart"][0].split()[:2] == [f"/usr/bin/{name}", "-f"]
    assert f"${{{name.upper()}_CONFIG}}" in svc["ExecStart"][0]
    assert svc["EnvironmentFile"] == [f"-/etc/default/{name}"]
    assert svc["ExecReload"][-1] == "/bin/kill -HUP $MAINPID"
    assert "--check-config" in svc["ExecReload"][0]
    assert svc["Restart"] == ["on-failure"]
    assert "network-online.target" in unit["Unit"]["After"][0]
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]
    assert svc["ProtectSystem"] and svc["PrivateTmp"] == ["yes"]
    if name == "lbserver":
        assert svc["User"] == ["mille-xterm"]
        assert svc["StateDirectory"] == ["mille-xterm"]
        assert svc["ProtectSystem"] == ["strict"]
    else:
        # Runs as root so custom commands work; every process stays visible.
        assert "User" not in svc
        assert "ProtectProc" not in svc and "ProcSubset" not in svc

    if shutil.which("systemd-analyze"):
        # Point the commands at the DESTDIR install: verify checks they exist.
        copy = tmp_path / f"{name}.service"
        copy.write_text(unit_path.read_text().replace("/usr/bin/", f"{installed}/usr/bin/"))
        result = subprocess.run(["systemd-analyze", "verify", "--man=no", str(copy)],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert result.stderr.strip() == "", result.stderr
