"""Drain at the source, agent side: the drain and nologin files, lbagent --drain/--enable, a running agent."""

from __future__ import annotations

import logging
import os
import shutil
import stat
import subprocess
import tempfile
import textwrap

import pytest

from tests.support import as_ordinary_user, free_port, python_cmd, wait_for_port, wait_until
from tests.support.cluster import env_with_root
from common.builtins import BUILTIN_VARIABLES
from lbagent import config as agent_config
from lbagent.drain import (DEFAULT_REASON, DrainFileError, DrainWatch, clean_reason, drain_variables, first_line,
                           remove_drain, write_drain)
from lbagent.sampler import Sampler
from lbagent.values import MAX_STRING
from tests.support.agentclient import proxy

NOT_DRAINED = {"DRAINED": False, "DRAIN_REASON": ""}


def lbagent(*args: str, **kw) -> subprocess.CompletedProcess:
    """The real command, ``python -m lbagent ARGS``."""
    return subprocess.run(python_cmd("lbagent", *args), capture_output=True, text=True, timeout=30, env=env_with_root(),
                          **kw)


def agent_config_file(tmp_path, attrs: str) -> str:
    path = tmp_path / "lbaconfig.xml"
    path.write_text(f'<?xml version="1.0"?>\n<lbaconfig>\n  <agent {attrs}/>\n</lbaconfig>\n')
    return str(path)


# --- reading the files --------------------------------------------------------

@pytest.mark.unit
def test_absent_files_mean_not_drained(tmp_path):
    assert drain_variables(str(tmp_path / "drain"), str(tmp_path / "nologin")) == NOT_DRAINED
    assert drain_variables(None, None) == NOT_DRAINED
    # a path through a regular file cannot exist either
    (tmp_path / "file").write_text("x")
    assert first_line(str(tmp_path / "file" / "drain")) is None


@pytest.mark.unit
def test_each_file_drains_with_its_first_line(tmp_path):
    drain, nologin = tmp_path / "drain", tmp_path / "nologin"
    nologin.write_text("System is going down for a kernel update.\nSecond line.\n")
    assert drain_variables(str(drain), str(nologin)) == {
        "DRAINED": True, "DRAIN_REASON": "System is going down for a kernel update."}
    drain.write_text("  disk replacement  \r\nignored\n")
    # the drain file's reason wins when both exist
    assert drain_variables(str(drain), str(nologin)) == {"DRAINED": True, "DRAIN_REASON": "disk replacement"}
    # a check turned off is not looked at
    assert drain_variables(None, str(nologin))["DRAIN_REASON"].startswith("System is going down")
    assert drain_variables(str(drain), None)["DRAIN_REASON"] == "disk replacement"
    nologin.unlink()
    drain.unlink()
    assert drain_variables(str(drain), str(nologin)) == NOT_DRAINED


@pytest.mark.unit
def test_empty_files_have_a_default_reason(tmp_path):
    drain, nologin = tmp_path / "drain", tmp_path / "nologin"
    nologin.write_text("")
    assert drain_variables(str(drain), str(nologin)) == {"DRAINED": True, "DRAIN_REASON": "nologin"}
    drain.write_text("\n\nsecond line only\n")
    assert drain_variables(str(drain), str(nologin)) == {"DRAINED": True, "DRAIN_REASON": "drained"}


@pytest.mark.unit
def test_reasons_are_cleaned_for_xml_rpc(tmp_path):
    f = tmp_path / "drain"
    f.write_bytes(b"\x1b[1mbold\x1b[0m \x00 caf\xc3\xa9 \xff\n")
    assert first_line(str(f)) == "[1mbold [0m caf\u00e9 \ufffd"
    f.write_text("x" * 10000)
    assert first_line(str(f)) == "x" * MAX_STRING


@pytest.mark.unit
def test_a_file_that_exists_but_cannot_be_read_still_drains(tmp_path):
    d = tmp_path / "drain"
    d.mkdir()  # a directory in the way: it exists, so the server is drained
    assert drain_variables(str(d), None) == {"DRAINED": True, "DRAIN_REASON": "drained"}


@pytest.mark.unit
def test_drain_watch_logs_changes_once(tmp_path, caplog):
    drain = tmp_path / "drain"
    watch = DrainWatch()
    with caplog.at_level(logging.INFO, logger="lbagent.drain"):
        assert watch.read(str(drain), None) == NOT_DRAINED
        drain.write_text("kernel update\n")
        for _ in range(3):
            assert watch.read(str(drain), None) == {"DRAINED": True, "DRAIN_REASON": "kernel update"}
        drain.unlink()
        watch.read(str(drain), None)
        watch.read(str(drain), None)
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [f"drained at the source by {drain}: kernel update",
                        "no longer drained at the source: balancers may send new terminals here again"]


@pytest.mark.unit
def test_sampler_reports_the_drain_among_the_builtins(tmp_path):
    drain = tmp_path / "drain"
    cfg = agent_config.AgentConfig(path="t.xml", drain_file=str(drain), nologin_file=str(tmp_path / "nologin"))
    sampler = Sampler(cfg)
    variables = sampler.take().state["variables"]
    assert set(BUILTIN_VARIABLES) <= set(variables)
    assert (variables["DRAINED"], variables["DRAIN_REASON"]) == (False, "")
    drain.write_text("kernel update tonight\n")
    variables = sampler.take().state["variables"]
    assert (variables["DRAINED"], variables["DRAIN_REASON"]) == (True, "kernel update tonight")
    assert b"<name>DRAINED</name>\n<value><boolean>1</boolean>" in sampler.current.response


# --- configuration ------------------------------------------------------------

@pytest.mark.unit
def test_config_defaults_relative_paths_and_off(tmp_path):
    cfg = agent_config.load(agent_config_file(tmp_path, 'listen="127.0.0.1:8001"'))
    assert (cfg.drain_file, cfg.nologin_file) == ("/var/lib/mille-xterm/lbagent.drain", "/etc/nologin")
    assert agent_config.AgentConfig(path="x").drain_file == cfg.drain_file
    cfg = agent_config.load(agent_config_file(tmp_path, 'drain-file="state/agent.drain" nologin-file=""'))
    assert cfg.drain_file == str(tmp_path / "state" / "agent.drain")
    assert cfg.nologin_file is None


@pytest.mark.unit
def test_a_custom_variable_may_not_take_a_drain_name(tmp_path):
    path = tmp_path / "lbaconfig.xml"
    path.write_text('<lbaconfig><variables><variable name="DRAINED" type="constant" value="true"/>'
                    '</variables></lbaconfig>')
    with pytest.raises(agent_config.ConfigError, match="'DRAINED' is a built-in variable"):
        agent_config.load(str(path))


# --- writing and removing -----------------------------------------------------

@pytest.mark.unit
def test_clean_reason():
    assert clean_reason(None) == clean_reason([]) == clean_reason(["  "]) == DEFAULT_REASON
    assert clean_reason(["kernel", "update\n", "tonight"]) == "kernel update tonight"
    assert clean_reason("a\r\nb\tc") == "a b c"
    with pytest.raises(DrainFileError, match=f"at most {MAX_STRING}"):
        clean_reason("x" * (MAX_STRING + 1))


@pytest.mark.unit
def test_write_creates_the_directory_and_replaces_atomically(tmp_path):
    path = tmp_path / "var" / "lib" / "mille-xterm" / "lbagent.drain"
    write_drain(str(path), "first")
    assert path.read_text() == "first\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    inode = path.stat().st_ino
    write_drain(str(path), "second")
    assert path.read_text() == "second\n" and path.stat().st_ino != inode  # renamed over, never half written
    assert os.listdir(path.parent) == ["lbagent.drain"]  # no temporary file left behind
    assert remove_drain(str(path)) is True
    assert remove_drain(str(path)) is False


@pytest.mark.unit
def test_write_failure_names_the_file(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(DrainFileError, match=r"cannot write the drain file .*/file/x\.drain: "):
        write_drain(str(tmp_path / "file" / "x.drain"), "r")


# --- the command line ---------------------------------------------------------

@pytest.mark.daemon
def test_drain_and_enable_command(tmp_path):
    drain = tmp_path / "state" / "lbagent.drain"
    nologin = tmp_path / "nologin"
    cfg = agent_config_file(tmp_path, f'sample-interval="3" drain-file="{drain}" nologin-file="{nologin}"')

    res = lbagent("-c", cfg, "--drain", "kernel", "update", "tonight")
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("\n") == 1 and res.stderr == ""
    assert res.stdout.startswith(f"lbagent: drained: wrote {drain} (reason: kernel update tonight); ")
    assert "next sample (within 3 s)" in res.stdout
    assert drain.read_text() == "kernel update tonight\n"
    assert stat.S_IMODE(drain.stat().st_mode) == 0o644

    res = lbagent("-c", cfg, "--drain")
    assert res.returncode == 0, res.stderr
    assert drain.read_text() == f"{DEFAULT_REASON}\n"

    res = lbagent("-c", cfg, "--enable")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(f"lbagent: enabled: removed {drain}; ") and res.stdout.count("\n") == 1
    assert "next sample (within 3 s)" in res.stdout
    assert not drain.exists()

    res = lbagent("-c", cfg, "--enable")
    assert res.returncode == 0
    assert res.stdout == f"lbagent: not drained by {drain} (no such file); nothing to do\n"

    # enabling says so when the nologin file still drains the server
    nologin.write_text("")
    res = lbagent("-c", cfg, "--enable")
    assert res.returncode == 0
    assert res.stderr == f"lbagent: note: {nologin} exists, so the agent still reports DRAINED (nologin)\n"


@pytest.mark.daemon
def test_drain_command_errors(tmp_path):
    (tmp_path / "file").write_text("")
    cfg = agent_config_file(tmp_path, f'drain-file="{tmp_path}/file/lbagent.drain"')
    res = lbagent("-c", cfg, "--drain", "x")
    assert res.returncode == 1 and res.stdout == ""
    assert res.stderr.startswith(f"lbagent: cannot write the drain file {tmp_path}/file/lbagent.drain: ")

    off = agent_config_file(tmp_path, 'drain-file=""')
    res = lbagent("-c", off, "--drain")
    assert res.returncode == 1 and "drain at the source is off" in res.stderr

    res = lbagent("-c", str(tmp_path / "absent.xml"), "--drain")
    assert res.returncode == 1 and "absent.xml" in res.stderr

    res = lbagent("-c", cfg, "--drain", "--enable")
    assert res.returncode == 2 and "not allowed with" in res.stderr
    res = lbagent("-c", cfg, "--enable", "--check-config")
    assert res.returncode == 2 and "--check-config does not go with" in res.stderr


@pytest.mark.unit
def test_drain_command_without_permission(tmp_path):
    """Permission denied: a clear message and exit 1 (run as an ordinary user when the tests run as root)."""
    prefix = as_ordinary_user()
    # pytest's own directory is private to its user: work where the ordinary user can read
    top = tempfile.mkdtemp(prefix="lbagent-drain-")
    try:
        os.chmod(top, 0o755)
        state = os.path.join(top, "state")
        os.mkdir(state)
        os.chmod(state, 0o555)
        drain = os.path.join(state, "lbagent.drain")
        cfg = os.path.join(top, "lbaconfig.xml")
        with open(cfg, "w") as fh:
            fh.write(f'<lbaconfig><agent drain-file="{drain}"/></lbaconfig>')
        os.chmod(cfg, 0o644)
        for args, verb in ((("--drain", "x"), "write"), (("--enable",), "remove")):
            if verb == "remove":
                os.chmod(state, 0o755)
                with open(drain, "w") as fh:
                    fh.write("kept\n")
                os.chmod(state, 0o555)
            res = subprocess.run(prefix + python_cmd("lbagent", "-c", cfg, *args), capture_output=True, text=True,
                                 timeout=30, env=env_with_root())
            assert res.returncode == 1, (res.stdout, res.stderr)
            assert res.stdout == ""
            assert res.stderr == f"lbagent: cannot {verb} the drain file {drain}: Permission denied\n"
        assert open(drain).read() == "kept\n"
    finally:
        os.chmod(os.path.join(top, "state"), 0o755)
        shutil.rmtree(top)


@pytest.mark.daemon
def test_help_mentions_drain():
    res = lbagent("--help")
    assert res.returncode == 0
    for word in ("--drain", "--enable", "DRAINED", "DRAIN_REASON", "drain-file"):
        assert word in res.stdout


# --- a running agent ----------------------------------------------------------

@pytest.mark.daemon
def test_running_agent_picks_up_both_files_without_reload(procs, tmp_path):
    drain, nologin = tmp_path / "lbagent.drain", tmp_path / "nologin"
    port = free_port("127.0.0.43")
    cfg = tmp_path / "lbaconfig.xml"
    cfg.write_text(textwrap.dedent(f"""\
        <?xml version="1.0"?>
        <lbaconfig>
          <agent listen="127.0.0.43:{port}" sample-interval="0.2" drain-file="{drain}" nologin-file="{nologin}"/>
        </lbaconfig>
        """))
    log = tmp_path / "agent.log"
    proc = procs.start(python_cmd("lbagent", "-f", "-c", str(cfg)), stderr=open(log, "w"),
                       stdout=subprocess.DEVNULL)
    wait_for_port("127.0.0.43", port, proc=proc)
    rpc = proxy("127.0.0.43", port)

    def drain_state():
        v = rpc.get_state()["variables"]
        return v["DRAINED"], v["DRAIN_REASON"]

    assert drain_state() == (False, "")
    assert lbagent("-c", str(cfg), "--drain", "kernel update tonight").returncode == 0
    wait_until(lambda: drain_state() == (True, "kernel update tonight"), 5, what="DRAINED by the drain file")
    assert lbagent("-c", str(cfg), "--enable").returncode == 0
    wait_until(lambda: drain_state() == (False, ""), 5, what="enabled")
    nologin.write_text("")
    wait_until(lambda: drain_state() == (True, "nologin"), 5, what="DRAINED by the nologin file")
    nologin.unlink()
    wait_until(lambda: drain_state() == (False, ""), 5, what="nologin removed")
    assert proc.poll() is None
    text = log.read_text()
    assert f"drained at the source by {drain}: kernel update tonight" in text
    assert f"drained at the source by {nologin}: nologin" in text
