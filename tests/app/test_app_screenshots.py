"""Optional: scripts/screenshots.py against a real server and headless Chromium.

Skipped unless Chromium is installed and ``SEQLENS_SCREENSHOTS=1`` is set (it starts a server and
a browser: about a minute on two cores)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "screenshots.py"

pytestmark = pytest.mark.slow


def test_screenshot_script_help():
    res = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0
    for flag in ("--out", "--model", "--page", "--actions", "--window-only", "--scale"):
        assert flag in res.stdout, flag


@pytest.mark.skipif(not any(shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome")),
                    reason="Chromium is not installed")
@pytest.mark.skipif(os.environ.get("SEQLENS_SCREENSHOTS") != "1", reason="set SEQLENS_SCREENSHOTS=1 to run")
def test_screenshots_of_every_page(tmp_path):
    res = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path)], capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    for page in ("model", "attention", "heads", "sinks", "states", "features", "attribution", "compare"):
        png = tmp_path / f"{page}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert png.stat().st_size > 20_000  # a drawn page, not an empty one
