"""The Debian packages, for real: built with ``make deb``, checked by lintian, installed with apt-get.

The packages are built once for the module. lintian must report no error.
Then, on this machine (root, Debian or Ubuntu; without systemd as PID 1 the
SysV scripts run the daemons, with it ``service`` hands over to the units):

1. the install lines of the manual (README.md and docs/, see
   :func:`install_lines`), run as written from the top of the tree, with a
   policy-rc.d that refuses to start services, so nothing listens beyond
   loopback: each line alone, from a machine without any mille-xterm package,
   installs exactly the packages of one role (application server, boot
   server, thin-client image), every role has a line, and once all are run
   the user, the state directory, the conffiles, the rc links, the unit
   links and the man pages appear, and the installed lbagent run without
   Debian's Python modules names the packages to install (exit 5);
2. the listen addresses are moved to 127.0.0.1, ``service lbagent start`` and
   ``service lbserver start``; the agent answers XML-RPC on 127.0.0.1:8001,
   the balancer sends a terminal to it (127.0.0.1:8008, and the LDM hook),
   lbctl sees it, and ``man -w`` finds every page;
3. an upgrade to the same packages with a higher version, services allowed
   this time: the running daemons are restarted by the maintainer scripts
   and the edited conffiles are kept;
4. ``apt-get purge``: the daemons are stopped, and nothing is left: no
   process, no /etc/mille-xterm, no /var/lib/mille-xterm, no mille-xterm
   user, no file of the packages.

The machine is restored whatever happens (packages purged, daemons started
here stopped, policy-rc.d put back). The test does not run where any of
that could touch something it did not make: packages or files of mille-xterm
already there, or the loopback ports taken.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import xmlrpc.client
from pathlib import Path

import pytest

from tests.support import ROOT, wait_until

PACKAGES = ("mille-xterm-common", "mille-xterm-lbagent", "mille-xterm-lbserver", "mille-xterm-lbclient")
DIST = ROOT / "dist"
POLICY = Path("/usr/sbin/policy-rc.d")
DENY, ALLOW = "#!/bin/sh\nexit 101\n", "#!/bin/sh\nexit 0\n"
ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C.UTF-8",
       "HOME": os.environ.get("HOME", "/root")}
APT = ["apt-get", "-y", "-q", "-o", "DPkg::Lock::Timeout=120", "-o", "Dpkg::Options::=--force-confold"]
PORTS = (8001, 8008, 8009)
MANUAL = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))
ROLES = {frozenset({"mille-xterm-common", "mille-xterm-lbagent"}): "application server",
         frozenset({"mille-xterm-common", "mille-xterm-lbserver"}): "boot server",
         frozenset({"mille-xterm-lbclient"}): "thin-client image"}
"""What each role's install line must install, and nothing more."""

pytestmark = [pytest.mark.system,
              pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("apt-get"),
                                 reason="needs root and apt-get (Debian or Ubuntu): it builds and installs packages")]


def run(*cmd: str, timeout: float = 300, check: bool = True, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("env", ENV)
    result = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, **kw)
    if check:
        assert result.returncode == 0, f"{' '.join(cmd)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result


def version() -> str:
    return run("dpkg-parsechangelog", "-S", "Version", cwd=ROOT).stdout.strip()


def debs(directory: Path = DIST, ver: str | None = None) -> list[Path]:
    ver = ver or version()
    found = [directory / f"{name}_{ver}_all.deb" for name in PACKAGES]
    assert all(p.exists() for p in found), f"missing in {directory}: {[p.name for p in found if not p.exists()]}"
    return found


@pytest.fixture(scope="module")
def built() -> list[Path]:
    """``make deb`` once: the four packages in dist/."""
    result = subprocess.run(["make", "--no-print-directory", "-C", str(ROOT), "deb"], capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    return debs()


def install_lines() -> dict[str, list[str]]:
    """Each command of the manual's shell blocks that installs a package of ``dist/``, with where it is written.

    A command written in several places (its comment aside) is one entry;
    its places are ``FILE:LINE``.
    """
    lines: dict[str, list[str]] = {}
    for doc in MANUAL:
        fenced = False
        for no, line in enumerate(doc.read_text().splitlines(), 1):
            if line.lstrip().startswith("```"):
                fenced = not fenced
            elif fenced and "dist/mille-xterm-" in line and not line.lstrip().startswith("#"):
                command = re.sub(r"\s+#.*$", "", line).strip()
                lines.setdefault(command, []).append(f"{doc.relative_to(ROOT)}:{no}")
    return lines


def run_as_written(command: str, places: list[str], apt_conf: Path) -> None:
    """Run a line of the manual verbatim from the top of the tree, answering yes should apt ask to go on."""
    # The lock timeout comes from APT_CONFIG, not the line: the machine may be running apt for someone else.
    result = subprocess.run(["sh", "-c", command], cwd=ROOT, input="Y\n", capture_output=True, text=True,
                            timeout=300, env={**ENV, "APT_CONFIG": str(apt_conf)})
    assert result.returncode == 0, f"{', '.join(places)}: {command} exited {result.returncode}:\n" \
                                   f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"


def installed_packages() -> list[str]:
    out = run("dpkg-query", "-W", "-f", "${Package} ${db:Status-Abbrev}\n", *PACKAGES, check=False).stdout
    return [line.split()[0] for line in out.splitlines() if len(line.split()) > 1 and line.split()[1] != "un"]


def purge(check: bool = True) -> None:
    """``apt-get purge`` the packages installed: apt refuses the whole command when it knows one named nowhere."""
    names = installed_packages()
    if names:
        run(*APT, "purge", *names, check=check)


def port_taken(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def daemon_pids() -> dict[str, int]:
    """The running daemons of the installed services: the pid in the init script's pid file, or systemd's."""
    pids = {}
    for name in ("lbagent", "lbserver"):
        try:
            if os.path.isdir("/run/systemd/system"):
                pid = int(run("systemctl", "show", "-p", "MainPID", "--value", f"{name}.service").stdout)
            else:
                pid = int(Path(f"/run/{name}.pid").read_text().split()[0])
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError, AssertionError):
            continue
        if f"/usr/bin/{name}".encode() in cmdline:
            pids[name] = pid
    return pids


def installed_daemons() -> list[str]:
    """Processes of the installed commands, whoever started them."""
    out = run("ps", "-eo", "pid=,args=").stdout
    return [line for line in out.splitlines() if "/usr/bin/lbagent" in line or "/usr/bin/lbserver" in line]


@pytest.fixture
def machine():
    """Refuse to touch a machine that has mille-xterm already; leave it as found."""
    reasons = []
    if installed_packages():
        reasons.append(f"packages installed: {installed_packages()}")
    for path in ("/etc/mille-xterm", "/var/lib/mille-xterm", "/usr/share/mille-xterm"):
        if os.path.exists(path):
            reasons.append(f"{path} exists")
    if run("getent", "passwd", "mille-xterm", check=False).returncode == 0:
        reasons.append("the mille-xterm user exists")
    reasons += [f"127.0.0.1:{p} is taken" for p in PORTS if port_taken(p)]
    if reasons:
        pytest.skip("this machine has mille-xterm already (" + "; ".join(reasons) + "); the test installs and "
                    "purges the packages, so it runs only where it can leave nothing behind")
    saved = POLICY.read_bytes() if POLICY.exists() else None
    saved_mode = POLICY.stat().st_mode if POLICY.exists() else None
    try:
        yield
    finally:
        # Stop what the test started, then remove every trace of the packages.
        POLICY.write_text(ALLOW)
        POLICY.chmod(0o755)
        for name in daemon_pids():
            run("service", name, "stop", check=False, timeout=60)
        purge(check=False)
        if saved is None:
            POLICY.unlink(missing_ok=True)
        else:
            POLICY.write_bytes(saved)
            POLICY.chmod(saved_mode)


def set_policy(text: str) -> None:
    POLICY.write_text(text)
    POLICY.chmod(0o755)


def repack(deb: Path, old: str, new: str, out: Path) -> Path:
    """The same package as version ``new``: what an upgrade brings, without a second build."""
    tree = out / deb.name.replace(".deb", "")
    run("dpkg-deb", "-R", str(deb), str(tree))
    control = tree / "DEBIAN" / "control"
    control.write_text(control.read_text().replace(f"Version: {old}\n", f"Version: {new}\n")
                       .replace(f"(= {old})", f"(= {new})"))
    target = out / deb.name.replace(f"_{old}_", f"_{new}_")
    run("dpkg-deb", "--build", str(tree), str(target))
    return target


def curl_terminal() -> str:
    return run("curl", "-s", "--max-time", "2", "http://127.0.0.1:8008/", check=False).stdout


@pytest.mark.timeout(300)
def test_lintian_reports_no_error(built):
    result = run("lintian", "--no-tag-display-limit", *map(str, built), check=False, timeout=300)
    tags = [line for line in result.stdout.splitlines() if line[:2] in ("E:", "W:", "I:", "P:")]
    errors = [t for t in tags if t.startswith("E:")]
    assert not errors, "\n".join(tags)
    assert result.returncode == 0, result.stdout + result.stderr
    print("\n".join(tags) or "lintian: no tag")  # warnings, if any, show with -s


@pytest.mark.timeout(300)
def test_package_contents(built, tmp_path):
    files: dict[str, str] = {}
    for deb in built:
        name = deb.name.split("_")[0]
        paths = [line.split(None, 5)[5].lstrip(".") for line in run("dpkg-deb", "-c", str(deb)).stdout.splitlines()]
        for path in paths:
            if not path.endswith("/"):
                assert path not in files, f"{path} is in {name} and {files[path]}"
                files[path] = name
    owner = files
    assert owner["/usr/bin/lbagent"] == "mille-xterm-lbagent"
    assert owner["/usr/bin/lbserver"] == owner["/usr/bin/lbctl"] == "mille-xterm-lbserver"
    assert owner["/usr/bin/lbclient"] == owner["/usr/share/ldm/get_hosts"] == "mille-xterm-lbclient"
    assert owner["/usr/share/mille-xterm/common/runtime.py"] == "mille-xterm-common"
    assert owner["/etc/logrotate.d/mille-xterm"] == "mille-xterm-common"
    for page, pkg in (("man8/lbagent.8.gz", "lbagent"), ("man5/lbaconfig.xml.5.gz", "lbagent"),
                      ("man8/lbserver.8.gz", "lbserver"), ("man8/lbctl.8.gz", "lbserver"),
                      ("man5/lbsconfig.xml.5.gz", "lbserver"), ("man1/lbclient.1.gz", "lbclient")):
        assert owner[f"/usr/share/man/{page}"] == f"mille-xterm-{pkg}"
    assert owner["/usr/share/doc/mille-xterm-lbserver/examples/lbsconfig-wms.xml"] == "mille-xterm-lbserver"
    assert owner["/usr/share/doc/mille-xterm-lbagent/examples/lbaconfig-wms.xml"] == "mille-xterm-lbagent"
    assert not [p for p in files if p.endswith(".pyc") or "__pycache__" in p]

    fields = {deb.name.split("_")[0]: run("dpkg-deb", "-f", str(deb), "Depends", "Recommends").stdout
              for deb in built}
    # The terminal side needs Python 3 alone; each daemon names Debian's modules, not pip's.
    assert fields["mille-xterm-lbclient"].strip() == "Depends: python3:any (>= 3.10~)"
    for dep in ("python3-lxml", "python3-psutil", "python3-daemon", "python3-defusedxml", "mille-xterm-common (="):
        assert dep in fields["mille-xterm-lbagent"]
    for dep in ("python3-lxml", "python3-daemon", "python3-dnspython", "python3-defusedxml",
                "python3-prometheus-client", "mille-xterm-common (="):
        assert dep in fields["mille-xterm-lbserver"]
    assert "Recommends: python3-uvloop" in fields["mille-xterm-lbserver"]

    conffiles = {}
    for deb in built:
        out = tmp_path / deb.name
        run("dpkg-deb", "-e", str(deb), str(out))
        conffiles[deb.name.split("_")[0]] = (out / "conffiles").read_text().split() if (out / "conffiles").exists() \
            else []
    assert sorted(conffiles["mille-xterm-lbagent"]) == ["/etc/default/lbagent", "/etc/init.d/lbagent",
                                                        "/etc/mille-xterm/lbaconfig.xml"]
    assert sorted(conffiles["mille-xterm-lbserver"]) == ["/etc/default/lbserver", "/etc/init.d/lbserver",
                                                         "/etc/mille-xterm/lbsconfig.xml"]
    assert conffiles["mille-xterm-common"] == ["/etc/logrotate.d/mille-xterm"]


@pytest.mark.timeout(900)
def test_install_start_upgrade_purge(built, machine, tmp_path):
    old = version()

    # 1. Install with the manual's lines; the policy keeps the services from starting on 0.0.0.0.
    set_policy(DENY)
    apt_conf = tmp_path / "apt.conf"
    apt_conf.write_text('DPkg::Lock::Timeout "120";\n')
    lines = install_lines()
    roles = set()
    for command, places in lines.items():  # each alone, where no mille-xterm package is installed
        purge()
        run_as_written(command, places, apt_conf)
        got = frozenset(installed_packages())
        assert got in ROLES, f"{', '.join(places)}: {command} installs {sorted(got)}, not the packages of one role"
        roles.add(ROLES[got])
    assert roles == set(ROLES.values()), f"a role has no install line: {lines}"
    for command, places in lines.items():  # every role on this one machine, for the rest of the test
        run_as_written(command, places, apt_conf)
    assert sorted(installed_packages()) == sorted(PACKAGES)
    assert run("getent", "passwd", "mille-xterm").stdout.split(":")[5] == "/var/lib/mille-xterm"
    state = Path("/var/lib/mille-xterm")
    assert state.is_dir() and oct(state.stat().st_mode & 0o777) == "0o750"
    assert not installed_daemons()
    for name in ("lbagent", "lbserver"):
        assert Path(f"/etc/rc2.d/S01{name}").exists()
        assert Path(f"/etc/systemd/system/multi-user.target.wants/{name}.service").is_symlink()
    for page in ("lbagent", "lbserver", "lbctl", "lbclient", "lbaconfig.xml", "lbsconfig.xml"):
        found = run("man", "-w", page).stdout.strip()
        assert found.startswith("/usr/share/man/man"), found

    # Without Debian's modules (python3 -S: no dist-packages), the installed command says what to install.
    bare = run("python3", "-S", "/usr/bin/lbagent", "--check-config", check=False)
    assert bare.returncode == 5
    assert bare.stderr.startswith("lbagent: cannot start: Python modules lxml, psutil, daemon, defusedxml are "
                                  "missing (apt-get install python3-lxml python3-psutil python3-daemon "
                                  "python3-defusedxml)"), bare.stderr

    # 2. Loopback only, then start both services as an admin would.
    agent_conf = Path("/etc/mille-xterm/lbaconfig.xml")
    server_conf = Path("/etc/mille-xterm/lbsconfig.xml")
    agent_conf.write_text(agent_conf.read_text().replace('listen="0.0.0.0:8001"', 'listen="127.0.0.1:8001"'))
    server_conf.write_text(server_conf.read_text().replace('<lbservice listen="0.0.0.0:8008"',
                                                           '<lbservice listen="127.0.0.1:8008"'))
    assert run("service", "lbagent", "start").returncode == 0
    assert run("service", "lbserver", "start").returncode == 0
    pids = daemon_pids()
    assert set(pids) == {"lbagent", "lbserver"}
    state_of = wait_until(lambda: xmlrpc.client.ServerProxy("http://127.0.0.1:8001/").get_state(), timeout=30,
                          what="the agent's XML-RPC answer")
    assert state_of["variables"]["NBPROC"] >= 1
    assert wait_until(lambda: curl_terminal() == "127.0.0.1\n", timeout=60, what="a terminal sent to the agent")
    hook = run("sh", "/usr/share/ldm/get_hosts", env={**ENV, "LB_SERVERS": "127.0.0.1"})
    assert hook.stdout == "127.0.0.1\n"
    status = run("lbctl", "status")
    assert "localhost" in status.stdout and "up" in status.stdout
    assert run("service", "lbserver", "status").returncode == 0

    # 3. Upgrade, services allowed: the maintainer scripts restart the daemons.
    new = old + "+upgradetest1"
    upgrades = [repack(deb, old, new, tmp_path) for deb in built]
    set_policy(ALLOW)
    run(*APT, "install", *map(str, upgrades))
    for name in PACKAGES:
        assert run("dpkg-query", "-W", "-f", "${Version}", name).stdout == new
    restarted = daemon_pids()
    assert set(restarted) == {"lbagent", "lbserver"}
    assert all(restarted[n] != pids[n] for n in restarted), (pids, restarted)
    assert 'listen="127.0.0.1:8001"' in agent_conf.read_text()  # the edited conffile is kept
    assert wait_until(lambda: curl_terminal() == "127.0.0.1\n", timeout=60, what="a terminal after the upgrade")

    # 4. Purge: stopped, and nothing left.
    purge()
    assert not installed_packages()
    assert not installed_daemons()
    assert not [p for p in PORTS if port_taken(p)]
    for path in ("/etc/mille-xterm", "/var/lib/mille-xterm", "/usr/share/mille-xterm", "/etc/init.d/lbagent",
                 "/etc/init.d/lbserver", "/etc/default/lbagent", "/etc/logrotate.d/mille-xterm",
                 "/run/lbagent.pid", "/run/lbserver.pid", "/etc/rc2.d/S01lbagent",
                 "/etc/systemd/system/multi-user.target.wants/lbserver.service", "/usr/bin/lbagent"):
        assert not os.path.lexists(path), path
    assert run("getent", "passwd", "mille-xterm", check=False).returncode != 0
    assert run("getent", "group", "mille-xterm", check=False).returncode != 0
