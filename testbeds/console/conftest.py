"""Fixtures for the console's browser tests: the end-to-end harness (testbeds/tests/harness.py)
for real processes, and Debian's Chromium driven by Playwright. Every fixture that starts
something stops it in its finalizer, even when a test fails."""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from harness import REPO_ROOT, Launcher  # noqa: E402

CHROMIUM = os.environ.get("CHROMIUM_BIN", "/usr/bin/chromium")


@pytest.fixture(scope="session")
def log_dir() -> Path:
    path = Path(os.environ.get("E2E_LOG_DIR") or REPO_ROOT / "testbeds" / ".run" / "console-logs")
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


@pytest.fixture(scope="module")
def launcher(log_dir: Path, request: pytest.FixtureRequest) -> Iterator[Launcher]:
    launcher = Launcher(log_dir / re.sub(r"[^A-Za-z0-9_.-]+", "_", request.module.__name__))
    launcher.log_dir.mkdir(parents=True, exist_ok=True)
    try:
        yield launcher
    finally:
        launcher.stop_all()


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).is_file():
        raise AssertionError(f"no Chromium at {CHROMIUM}: testbeds/console/test.sh installs it")
    with sync_playwright() as p:
        # --no-sandbox: the tests run as root in containers, where Chromium's sandbox cannot
        # start; the pages are the gateway's own.
        browser = p.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            yield browser
        finally:
            browser.close()
