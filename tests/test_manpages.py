"""The man pages: current with the programs' --help and the settings, complete, and clean for groff and man."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import re
import shutil
import subprocess
import sys

import pytest

from tests.support import ROOT

GEN = ROOT / "scripts" / "gen-man"
PAGES = ("lbagent.8", "lbserver.8", "lbctl.8", "lbclient.1", "lbaconfig.xml.5", "lbsconfig.xml.5")


def _gen_man():
    loader = importlib.machinery.SourceFileLoader("gen_man", str(GEN))
    spec = importlib.util.spec_from_loader("gen_man", loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gen_man"] = module  # its dataclasses look themselves up there
    loader.exec_module(module)
    return module


gen_man = _gen_man()


def page_text(name: str) -> str:
    return (ROOT / "man" / name).read_text()


@pytest.mark.daemon
def test_man_pages_are_current():
    result = subprocess.run([sys.executable, str(GEN), "--check"], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (ROOT / "man").iterdir()) == sorted(PAGES)
    assert sorted(page.filename for page in gen_man.PAGES) == sorted(PAGES)


@pytest.mark.unit
def test_a_stale_page_is_named_with_the_command(tmp_path, monkeypatch):
    monkeypatch.setattr(gen_man, "MAN_DIR", tmp_path)
    for name in PAGES:
        (tmp_path / name).write_text(page_text(name))
    (tmp_path / "lbctl.8").write_text(page_text("lbctl.8").replace("status", "stat"))
    assert gen_man.main(["--check"]) == 1
    assert gen_man.main([]) == 0
    assert (tmp_path / "lbctl.8").read_text() == page_text("lbctl.8")


@pytest.mark.system
@pytest.mark.parametrize("name", PAGES)
def test_page_renders_without_warnings(name, tmp_path):
    path = ROOT / "man" / name
    groff = subprocess.run(["groff", "-ww", "-man", "-z", str(path)], capture_output=True, text=True, timeout=60)
    assert groff.returncode == 0 and groff.stderr == "", groff.stderr
    env = {**os.environ, "MANWIDTH": "80", "LC_ALL": "C.UTF-8", "MAN_KEEP_STDERR": "1"}
    man = subprocess.run(["man", "--warnings", "-l", str(path)], capture_output=True, text=True, timeout=60,
                         env=env)
    assert man.returncode == 0 and man.stderr == "", man.stderr
    assert "NAME" in man.stdout and "SEE ALSO" in man.stdout
    # ASCII source: any other character is written as a groff escape.
    assert all(ord(c) < 128 for c in path.read_text())


@pytest.mark.unit
@pytest.mark.parametrize("page", [p for p in gen_man.PAGES if isinstance(p, gen_man.CommandPage)],
                         ids=lambda p: p.filename)
def test_command_page_has_every_option_and_section(page):
    text = page_text(page.filename)
    for section in ("NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "EXIT STATUS", "FILES", "EXAMPLES", "SEE ALSO"):
        assert f"\n.SH {section}\n" in text, (page.filename, section)
    for action in page.parser()._actions:
        for option in action.option_strings:
            assert gen_man.esc(option) in text, (page.filename, option)
    if page.section == 8 and page.name != "lbctl":
        signals = text[text.index(".SH SIGNALS"):]
        for sig in ("SIGHUP", "SIGUSR1", "SIGTERM"):
            assert sig in signals
        exit_status = text[text.index(".SH EXIT STATUS"):]
        assert "\\fB5\\fR\na Python module it needs is missing" in exit_status


@pytest.mark.unit
@pytest.mark.parametrize("page", [p for p in gen_man.PAGES if isinstance(p, gen_man.ConfigPage)],
                         ids=lambda p: p.filename)
def test_config_page_has_every_attribute(page):
    text = page_text(page.filename)
    for element in page.config_file().elements:
        assert f".SS {gen_man.esc('<' + element.tag + '>')}" in text
        for setting in element:
            assert f".TP\n{gen_man.bold(setting.attribute)}\n" in text, (element.tag, setting.attribute)
    for section in ("NAME", "SYNOPSIS", "DESCRIPTION", "ELEMENTS AND ATTRIBUTES", "FILES", "EXAMPLES", "SEE ALSO"):
        assert f"\n.SH {section}\n" in text


@pytest.mark.unit
def test_examples_are_loaded_before_a_page_is_written():
    page = next(p for p in gen_man.PAGES if isinstance(p, gen_man.ConfigPage) and p.filename == "lbsconfig.xml.5")
    broken = gen_man.ConfigPage(page.module, page.summary, page.description, page.files,
                                [("broken", page.examples[0][1].replace('rise="2"', 'rise="0"'))], page.load)
    with pytest.raises(Exception, match="rise"):
        gen_man.render(broken)


@pytest.mark.unit
def test_help_sections_are_read_as_written():
    blocks = gen_man.blocks("Some prose\non two lines.\n\nexit status: 0 fine\n\nfiles:\n  /a   the a file\n"
                            "       continued\n  /b   the b file\n\nexamples:\n  cmd --x\n")
    assert [(b.title, b.inline) for b in blocks] == [(None, ""), ("exit status", "0 fine"), ("files", ""),
                                                    ("examples", "")]
    assert gen_man.definitions(blocks[2].body) == [("/a", ["the a file", "continued"]), ("/b", ["the b file"])]
    assert gen_man.definitions(blocks[3].body) is None  # shown as is
    assert gen_man.esc("a-b\\c é") == "a\\-b\\ec \\[u00E9]"
    assert gen_man.line(".starts with a dot") == "\\&.starts with a dot"
    assert re.fullmatch(r"\\fB\\-c\\fR \\fIFILE\\fR", gen_man.fonts("-c FILE"))


@pytest.mark.system
def test_make_install_puts_the_pages_in_mandir(tmp_path):
    if not shutil.which("make"):
        pytest.skip("no make")
    result = subprocess.run(["make", "--no-print-directory", "-C", str(ROOT), "install", f"DESTDIR={tmp_path}",
                             "PREFIX=/usr", f"SYSTEM_PYTHON={sys.executable}"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    for name in PAGES:
        section = name.rsplit(".", 1)[1]
        assert (tmp_path / f"usr/share/man/man{section}/{name}").read_text() == page_text(name)
