"""A missing Python module is named as such, never taken for a bad configuration.

The daemons check their modules before anything else and exit 5 with
``cannot start: Python module lxml is missing (apt-get install python3-lxml)``;
the SysV scripts report that status apart from an invalid configuration;
``make install`` refuses an interpreter that lacks a module. The lists of
modules agree with what the code imports, setup.py, and debian/control.
"""

from __future__ import annotations

import ast
import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from common import deps
from tests.support import ROOT
from lbagent import entry as agent_entry
from lbserver import entry as server_entry


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory) -> str:
    """The interpreter of a virtualenv with nothing installed: none of the daemons' modules import there."""
    venv = tmp_path_factory.mktemp("bare") / "venv"
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    probe = subprocess.run([python, "-c", "import lxml"], capture_output=True, timeout=60)
    assert probe.returncode != 0, "the bare virtualenv can import lxml"
    return python


def _run(python: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([python, *args], capture_output=True, text=True, timeout=60, cwd="/",
                          env={"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), **env})


@pytest.mark.daemon
@pytest.mark.parametrize("prog,config", [("lbagent", "lbaconfig.xml"), ("lbserver", "lbsconfig.xml")])
def test_daemon_names_the_missing_module(bare_python, prog, config):
    result = _run(bare_python, "-m", prog, "--check-config", "-c", str(ROOT / "etc" / config))
    assert result.returncode == deps.EXIT_MISSING_MODULE == 5
    assert result.stdout == ""
    line = result.stderr.strip()
    assert line.startswith(f"{prog}: cannot start: Python modules lxml, ")
    assert "apt-get install python3-lxml " in line and "Traceback" not in line
    assert "invalid configuration" not in line


@pytest.mark.unit
def test_one_missing_module_reads_as_the_package_to_install(monkeypatch):
    monkeypatch.setattr(deps, "_debian_python", lambda: True)
    assert deps.missing_message("lbagent", {"lxml": ""}) == \
        "lbagent: cannot start: Python module lxml is missing (apt-get install python3-lxml)"
    assert deps.missing_message("lbserver", {"dns": "", "lxml": "libxslt.so.1: cannot open"}) == \
        "lbserver: cannot start: Python module dns is missing; Python module lxml cannot be imported " \
        "(libxslt.so.1: cannot open) (apt-get install python3-dnspython python3-lxml)"
    monkeypatch.setattr(deps, "_debian_python", lambda: False)
    assert deps.install_hint(["daemon"]) == f"apt-get install python3-daemon, or {sys.executable} -m pip install " \
                                           "python-daemon"


@pytest.mark.unit
def test_a_module_missing_under_a_dependency_is_named(tmp_path, monkeypatch):
    (tmp_path / "outer_dep.py").write_text("import lockfile_not_here_either\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert deps.unimportable(["outer_dep", "json"]) == {"lockfile_not_here_either": ""}


@pytest.mark.unit
def test_run_guarded_runs_the_real_entry_point_with_its_arguments():
    seen = []
    assert deps.run_guarded("x", ("json",), lambda: lambda argv: seen.append(argv) or 7, ["-v"]) == 7
    assert seen == [["-v"]]


@pytest.mark.unit
def test_a_missing_module_of_the_project_itself_is_not_hidden():
    def load():
        return importlib.import_module("lbagent.no_such_module").main

    with pytest.raises(ModuleNotFoundError):
        deps.run_guarded("lbagent", (), load)


# ------------------------------------------------------------ make install


@pytest.mark.system
def test_make_install_refuses_an_interpreter_without_the_modules(bare_python, tmp_path):
    result = subprocess.run(["make", "--no-print-directory", "-C", str(ROOT), "install", f"DESTDIR={tmp_path}/root",
                             "PREFIX=/usr", f"SYSTEM_PYTHON={bare_python}"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode != 0
    assert f"sysinstall: refusing to install: {bare_python} cannot import" in result.stderr
    packages = re.search(r"^    apt-get install (.*)$", result.stderr, re.M).group(1).split()
    assert {"python3-lxml", "python3-psutil", "python3-daemon", "python3-dnspython", "python3-defusedxml",
            "python3-prometheus-client"} <= set(packages)
    assert not (tmp_path / "root").exists()  # nothing installed


# ------------------------------------------------------------ SysV scripts


@pytest.fixture(scope="module")
def destdir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("destdir")
    result = subprocess.run(["make", "--no-print-directory", "-C", str(ROOT), "install", f"DESTDIR={d}",
                             "PREFIX=/usr", f"SYSTEM_PYTHON={sys.executable}"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return d


@pytest.mark.system
@pytest.mark.parametrize("action,verb", [("start", "not started"), ("restart", "not restarted")])
def test_init_script_reports_a_missing_module_not_a_bad_config(destdir, bare_python, tmp_path, action, verb):
    # The installed lbagent, run by an interpreter that lacks its modules.
    daemon = tmp_path / "lbagent"
    daemon.write_text(f"#!/bin/sh\nexec {bare_python} {destdir}/usr/bin/lbagent \"$@\"\n")
    daemon.chmod(0o755)
    defaults = tmp_path / "default-lbagent"
    defaults.write_text(f"LBAGENT_CONFIG={destdir}/etc/mille-xterm/lbaconfig.xml\n"
                        f"LBAGENT_PIDFILE={tmp_path}/lbagent.pid\nDAEMON={daemon}\n")
    result = subprocess.run(["sh", str(destdir / "etc/init.d/lbagent"), action], capture_output=True, text=True,
                            timeout=60, cwd="/", env={"PATH": os.environ["PATH"], "LBAGENT_DEFAULTS": str(defaults)})
    assert result.returncode == 5, result.stdout + result.stderr
    assert "lbagent: cannot start: Python modules lxml, psutil, daemon, defusedxml are missing (apt-get install " \
           "python3-lxml python3-psutil python3-daemon python3-defusedxml" in result.stderr
    out = result.stdout + result.stderr
    assert f"lbagent: {verb}, a Python module it needs is missing" in out
    assert "invalid configuration" not in out
    assert not (tmp_path / "lbagent.pid").exists()


# ------------------------------------------------------------ one list of modules


def _third_party_imports(package: str) -> set[str]:
    found = set()
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            found |= {n.split(".")[0] for n in names if n.split(".")[0] in deps.MODULES}
    return found


def _control_fields() -> dict[str, str]:
    text = (ROOT / "debian" / "control").read_text()
    out = {}
    for para in text.split("\n\n"):
        name = re.search(r"^Package: (\S+)", para, re.M)
        if name:
            out[name.group(1)] = para
    return out


@pytest.mark.unit
def test_each_daemon_lists_every_module_it_imports():
    common = _third_party_imports("common")
    assert common <= set(agent_entry.REQUIRES) and common <= set(server_entry.REQUIRES)
    assert _third_party_imports("lbagent") | common <= set(agent_entry.REQUIRES)
    assert _third_party_imports("lbserver") | common <= set(server_entry.REQUIRES) | set(server_entry.OPTIONAL)
    assert _third_party_imports("lbclient") == set()  # the standard library only


@pytest.mark.unit
def test_setup_py_and_debian_control_name_the_same_modules():
    setup = (ROOT / "setup.py").read_text()
    block = setup[setup.index("install_requires=["):setup.index("]", setup.index("install_requires=["))]
    pip_names = {re.match(r"[\w-]+", r).group() for r in re.findall(r'"([^"]+)"', block)}
    assert pip_names == {deps.pip_name(m) for m in agent_entry.REQUIRES + server_entry.REQUIRES}
    control = _control_fields()
    for package, modules in (("mille-xterm-lbagent", agent_entry.REQUIRES),
                             ("mille-xterm-lbserver", server_entry.REQUIRES)):
        depends = re.search(r"^Depends:(.*?)^\S", control[package], re.M | re.S).group(1)
        for module in modules:
            assert deps.debian_package(module) in depends, (package, module)
    for module in server_entry.OPTIONAL:
        assert f"Recommends: {deps.debian_package(module)}" in control["mille-xterm-lbserver"]
    lbclient = re.search(r"^Depends:(.*?)^\S", control["mille-xterm-lbclient"], re.M | re.S).group(1)
    assert "python3-" not in lbclient


@pytest.mark.unit
def test_debian_changelog_is_at_the_version_of_common_version_py():
    from common.version import __version__

    top = (ROOT / "debian" / "changelog").read_text().splitlines()[0]
    assert top.startswith(f"mille-xterm ({__version__}) "), f"{top!r}: add a changelog entry for {__version__}"
