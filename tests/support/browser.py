"""Debian's headless chromium, for the tests that look at the dashboard as a person would.

Each call runs the browser once, with a fresh profile, and waits for it
(bounded). No threads.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.support.processes import require_program

# Tests run as root in CI, where chromium's sandbox cannot start: --no-sandbox.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """Run headless chromium (Debian's chromium, or Ubuntu's chromium-browser) once; fail on a non-zero exit."""
    browser = require_program("chromium", "chromium-browser")
    profile = tmp_path / f"chromium-profile-{len(list(tmp_path.glob('chromium-profile-*')))}"
    profile.mkdir()
    res = subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                         capture_output=True, text=True, timeout=90)
    assert res.returncode == 0, res.stderr[-2000:]
    return res
