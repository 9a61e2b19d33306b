"""Custom variable readers: real commands, files and processes (no network)."""

import logging
import os
import re
import selectors
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from types import SimpleNamespace

import psutil
import pytest

from tests.support import as_ordinary_user, wait_until
from tests.support.cluster import env_with_root
from lbagent import variables as variables_module
from lbagent.config import AgentConfig, CustomVariable
from lbagent.sampler import Sampler
from lbagent.variables import (MAX_COUNT, CustomSampler, RunningCommands, Stopped, VariableProblem, count_entries,
                               disk_used_pct, processes_running, read_file_value, run_command)


@pytest.mark.unit
def test_command_value_types():
    assert run_command("echo 12", 2) == 12
    assert run_command("printf '0.75\\nignored\\n'", 2) == 0.75
    assert run_command("echo TRUE", 2) is True
    assert run_command("echo north wing", 2) == "north wing"


@pytest.mark.unit
def test_command_runs_with_c_locale():
    assert run_command('echo "$LC_ALL"', 2) == "C"


@pytest.mark.unit
def test_command_failure_and_garbage():
    with pytest.raises(VariableProblem, match="exited with status 3"):
        run_command("echo 1; exit 3", 2)
    with pytest.raises(VariableProblem, match="unusable output"):
        run_command("printf '\\001\\377\\033[1m\\n'", 2)
    with pytest.raises(VariableProblem, match="empty"):
        run_command("true", 2)


@pytest.mark.unit
def test_hanging_command_is_killed_with_its_group():
    marker = "31.%d" % os.getpid()
    # The shell forks a pipeline: the group kill must take the grandchildren too.
    start = time.monotonic()
    with pytest.raises(VariableProblem, match="timed out after 0.5 s"):
        run_command(f"sleep {marker} | cat; echo 1", 0.5)
    assert time.monotonic() - start < 5  # bounded by the timeout, not by the command

    def gone():
        return not any(p.info["cmdline"] and marker in " ".join(p.info["cmdline"])
                       for p in psutil.process_iter(["cmdline"]))
    wait_until(gone, timeout=5, what="sleep of the killed command gone")


@pytest.mark.unit
def test_endless_output_is_cut_off():
    with pytest.raises(VariableProblem, match="printed more than"):
        run_command("yes", 5)


@pytest.mark.unit
def test_file_value(tmp_path):
    f = tmp_path / "queue"
    f.write_text("17\nsecond line\n")
    assert read_file_value(str(f)) == 17
    with pytest.raises(VariableProblem, match="No such file"):
        read_file_value(str(tmp_path / "absent"))
    with pytest.raises(VariableProblem, match="not a regular file"):
        read_file_value(str(tmp_path))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(VariableProblem, match="not a regular file"):
        read_file_value(str(fifo))  # and it did not block waiting for a writer


@pytest.mark.unit
def test_disk_value(tmp_path):
    assert disk_used_pct(str(tmp_path)) == pytest.approx(psutil.disk_usage(str(tmp_path)).percent, abs=0.5)
    with pytest.raises(VariableProblem, match="cannot stat"):
        disk_used_pct(str(tmp_path / "absent"))


@pytest.mark.daemon
def test_process_match_by_name_and_command_line():
    marker = f"lbagent-test-marker-{os.getpid()}"
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", marker])
    try:
        by_cmd = CustomVariable(name="MARK", type="process", pattern=re.compile(re.escape(marker)))
        by_name = CustomVariable(name="INIT", type="process", pattern=re.compile("^" + re.escape(
            psutil.Process(os.getpid()).name()) + "$"))
        none = CustomVariable(name="NONE", type="process", pattern=re.compile("^no-such-process-[0-9]{12}$"))
        found = processes_running([by_cmd, by_name, none])
        assert found == {"MARK": True, "INIT": True, "NONE": False}
    finally:
        proc.kill()
        proc.wait()
    assert processes_running([by_cmd]) == {"MARK": False}


@pytest.mark.unit
def test_sampler_runs_commands_concurrently(tmp_path):
    """Each command waits for the other to have started: only concurrent runs both succeed."""
    a, b = tmp_path / "a", tmp_path / "b"
    wait = "for i in $(seq 100); do [ -e {other} ] && echo 1 && exit 0; sleep 0.05; done; exit 1"
    variables = [
        CustomVariable(name="A", type="command", command=f"touch {a}; " + wait.format(other=b), timeout=10),
        CustomVariable(name="B", type="command", command=f"touch {b}; " + wait.format(other=a), timeout=10),
    ]
    sampler = CustomSampler()
    try:
        assert sampler.sample(variables) == {"A": 1, "B": 1}
    finally:
        sampler.close()


@pytest.mark.unit
def test_sampler_leaves_out_failures_and_logs_once(caplog, tmp_path):
    variables = [
        CustomVariable(name="HANG", type="command", command="sleep 30", timeout=0.3),
        CustomVariable(name="OK", type="command", command="echo 5", timeout=5),
        CustomVariable(name="ROOM", type="constant", value="B12"),
        CustomVariable(name="Q", type="file", path=str(tmp_path / "q")),
    ]
    sampler = CustomSampler()
    try:
        with caplog.at_level(logging.INFO, logger="lbagent.variables"):
            assert sampler.sample(variables) == {"OK": 5, "ROOM": "B12"}
            sampler.sample(variables)
            (tmp_path / "q").write_text("3\n")
            assert sampler.sample(variables)["Q"] == 3
        messages = [r.getMessage() for r in caplog.records]
        assert sum("HANG" in m and "timed out" in m for m in messages) == 1
        assert sum("Q (file" in m for m in messages) == 1
        assert any("Q has a value again" in m for m in messages)
    finally:
        sampler.close()


def _running(marker: str) -> bool:
    return any(marker in " ".join(p.info["cmdline"] or ()) for p in psutil.process_iter(["cmdline"]))


@pytest.mark.unit
def test_unexpected_error_still_kills_the_command(monkeypatch):
    """Whatever goes wrong while a command runs, it is not left running."""
    marker = "32.%d" % os.getpid()

    class Broken(selectors.DefaultSelector):
        def select(self, timeout=None):
            wait_until(lambda: _running(marker), timeout=5, what="the command started")
            raise RuntimeError("selector broke")

    monkeypatch.setattr(variables_module, "selectors", SimpleNamespace(DefaultSelector=Broken,
                                                                EVENT_READ=selectors.EVENT_READ))
    with pytest.raises(RuntimeError, match="selector broke"):
        run_command(f"sleep {marker}; echo 1", 30)
    wait_until(lambda: not _running(marker), timeout=5, what="the command gone")


@pytest.mark.unit
def test_close_kills_running_commands_at_once():
    """Closing the sampler does not wait for commands: a sample in progress ends promptly, and
    with Stopped rather than values missing the killed command."""
    marker = "33.%d" % os.getpid()
    sampler = CustomSampler()
    outcome: dict = {}
    variables = [CustomVariable(name="SLOW", type="command", command=f"sleep {marker}; echo 1", timeout=60),
                 CustomVariable(name="ROOM", type="constant", value="B12")]

    def sample():
        try:
            outcome["values"] = sampler.sample(variables)
        except Stopped as exc:
            outcome["stopped"] = exc
    thread = threading.Thread(target=sample)
    thread.start()
    try:
        wait_until(lambda: _running(marker), timeout=5, what="the slow command running")
        sampler.close()
        thread.join(10)  # far less than the command's 60 s timeout
        assert not thread.is_alive()
        assert "stopped" in outcome and "values" not in outcome, outcome
        assert not _running(marker)
        with pytest.raises(Stopped):  # and any later sample too
            sampler.sample(variables[1:])
    finally:
        sampler.close()
        thread.join(5)


@pytest.mark.unit
def test_stopping_mid_sample_publishes_nothing(tmp_path):
    """stop() while a sample waits on a command: the last complete sample stays current, for the
    requests still being served while the agent stops; the partial one is never published."""
    flag = tmp_path / "hang-now"
    marker = "34.%d" % os.getpid()
    slow = CustomVariable(name="SLOW", type="command", timeout=60,
                          command=f"if [ -e {flag} ]; then sleep {marker}; fi; echo 1")
    config = AgentConfig(path="lbaconfig.xml", listen=("127.0.0.1", 0), sample_interval=0.1, variables=(slow,))
    sampler = Sampler(config)
    sampler.start()
    try:
        flag.touch()
        wait_until(lambda: _running(marker), timeout=5, what="the slow command running")
        before = sampler.current
        assert before.state["variables"]["SLOW"] == 1
        sampler.stop()
        assert not sampler.alive()
        assert sampler.current is before
        with pytest.raises(Stopped):
            sampler.take()
        assert sampler.current is before
    finally:
        sampler.stop()


@pytest.mark.unit
def test_command_started_after_kill_all_is_killed_at_once():
    running = RunningCommands()
    running.kill_all()
    with pytest.raises(VariableProblem, match="killed by signal 9"):
        run_command("sleep 60; echo 1", 60, running=running)


# --- count: the length of a queue kept as files in a directory ----------------------------------------------

def _fill(directory, names):
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        (directory / name).write_text("job\n")


@pytest.mark.unit
def test_count_matches_like_the_shell(tmp_path):
    new = tmp_path / "jobdir" / "new"
    _fill(new, ["job1", "job2", "job3.lock", ".hidden", "x"])
    (new / "sub").mkdir()
    _fill(new / "sub", ["deep1", "deep2"])  # never descended into
    os.symlink(new / "job1", new / "link")
    assert count_entries(str(new / "*"), 2) == 6            # job1 job2 job3.lock x sub link; not .hidden
    assert count_entries(str(new / "job*"), 2) == 3
    assert count_entries(str(new / "job[0-9]"), 2) == 2
    assert count_entries(str(new / "job?"), 2) == 2
    assert count_entries(str(new / ".*"), 2) == 1             # hidden names only when the pattern says so
    assert count_entries(str(new / "**"), 2) == 6             # ** is a plain *: no recursion
    assert count_entries(str(new / "JOB*"), 2) == 0           # case matters, as in the shell
    assert count_entries(str(new / "nothing-*"), 2) == 0      # the directory is there: an empty queue
    # A directory without a pattern: every entry in it (not the hidden ones), like DIR/*.
    assert count_entries(str(new), 2) == 6
    assert count_entries(str(new) + "/", 2) == 6
    # A glob in the directory part: every directory it matches is counted.
    _fill(tmp_path / "other" / "new", ["a", "b"])
    assert count_entries(str(tmp_path / "*" / "new" / "*"), 2) == 8
    assert count_entries(str(tmp_path / "*" / "new"), 2) == 8


@pytest.mark.unit
def test_count_of_a_missing_directory_has_no_value(tmp_path):
    with pytest.raises(VariableProblem, match="cannot list .*absent: No such file or directory"):
        count_entries(str(tmp_path / "absent" / "*"), 2)
    with pytest.raises(VariableProblem, match="cannot list .*absent: No such file or directory"):
        count_entries(str(tmp_path / "absent"), 2)
    with pytest.raises(VariableProblem, match="no directory matches"):
        count_entries(str(tmp_path / "absent*" / "new" / "*"), 2)
    (tmp_path / "plain").write_text("1\n")
    with pytest.raises(VariableProblem, match="plain is not a directory"):
        count_entries(str(tmp_path / "plain"), 2)


@pytest.mark.unit
def test_count_of_an_unreadable_directory_has_no_value():
    """Permission denied, said as such (as an ordinary user when the tests run as root: root reads anything)."""
    top = tempfile.mkdtemp(prefix="lbagent-count-")  # pytest's own directory is private to its user
    locked = os.path.join(top, "locked")
    try:
        os.chmod(top, 0o755)
        os.mkdir(locked, 0)
        code = ("from lbagent.variables import VariableProblem, count_entries\n"
                f"try:\n    count_entries({os.path.join(locked, '*')!r}, 2)\n"
                "except VariableProblem as exc:\n    print(exc)\n")
        res = subprocess.run(as_ordinary_user() + [sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=30, env=env_with_root())
        assert re.search(r"cannot list .*locked: Permission denied", res.stdout), (res.stdout, res.stderr)
    finally:
        os.chmod(locked, 0o700)
        shutil.rmtree(top)


@pytest.mark.unit
def test_count_is_bounded(tmp_path, monkeypatch):
    _fill(tmp_path, [f"job{i}" for i in range(50)])
    assert count_entries(str(tmp_path / "*"), 2, cap=20) == 20  # stops counting at the cap
    assert MAX_COUNT == 1_000_000
    from lbagent import settings
    assert "1000000" in settings.VARIABLE.path.doc  # the documented cap is the real one
    monkeypatch.setattr(variables_module, "_DEADLINE_EVERY", 1)
    with pytest.raises(VariableProblem, match="still counting after 0 s .*raise the timeout"):
        count_entries(str(tmp_path / "*"), 0)


@pytest.mark.unit
def test_sampler_counts_and_logs_a_missing_directory_once(caplog, tmp_path):
    queue = tmp_path / "workload_manager" / "jobdir" / "new"
    variables = [CustomVariable(name="WMQUEUE", type="count", path=str(queue / "*"), timeout=2),
                 CustomVariable(name="ROOM", type="constant", value="B12")]
    sampler = CustomSampler()
    try:
        with caplog.at_level(logging.INFO, logger="lbagent.variables"):
            assert sampler.sample(variables) == {"ROOM": "B12"}  # absent, not 0: the path is wrong
            assert sampler.sample(variables) == {"ROOM": "B12"}
            _fill(queue, ["a", "b", "c"])
            assert sampler.sample(variables)["WMQUEUE"] == 3
            (queue / "a").unlink()
            assert sampler.sample(variables)["WMQUEUE"] == 2
        messages = [r.getMessage() for r in caplog.records]
        assert sum("WMQUEUE (count" in m and "No such file or directory" in m for m in messages) == 1
        assert sum("WMQUEUE has a value again" in m for m in messages) == 1
    finally:
        sampler.close()


@pytest.mark.unit
def test_a_count_that_hangs_is_not_started_again(monkeypatch, caplog):
    """A listing stuck in the kernel (a dead NFS server) holds one thread, not one more per sample."""
    release = threading.Event()
    calls: list[str] = []

    def hanging(path, timeout):
        calls.append(path)
        release.wait(30)
        return 7
    monkeypatch.setattr(variables_module, "count_entries", hanging)
    monkeypatch.setattr(variables_module, "COUNT_MARGIN", 0.1)
    variables = [CustomVariable(name="Q", type="count", path="/nfs/queue/*", timeout=0.1)]
    sampler = CustomSampler()
    try:
        with caplog.at_level(logging.INFO, logger="lbagent.variables"):
            start = time.monotonic()
            assert sampler.sample(variables) == {}
            assert time.monotonic() - start < 5
            assert sampler.sample(variables) == {}
            assert sampler.sample(variables) == {}
            assert calls == ["/nfs/queue/*"]
            release.set()
            wait_until(lambda: sampler.sample(variables) == {"Q": 7}, timeout=5, what="a value again")
        messages = [r.getMessage() for r in caplog.records]
        assert any("no answer after 0.2 s" in m for m in messages)
        assert any("previous count has not finished" in m for m in messages)
    finally:
        release.set()
        sampler.close()
