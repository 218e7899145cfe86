"""Fixtures of the browser tests: Debian's Chromium for pytest-playwright (see
/work/shared/NOTES-playwright.md), and the real system: a core that can be stopped and started
again on its port, the real web gateway in-process on a free port, and one browser context per
simulated user.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
STATIC_DIR = ROOT / "static"
RESULTS_DIR = ROOT / "test-results"

# Debian's chromium: Playwright cannot download its own browsers on this kind of machine.
# Elsewhere (a laptop), no chromium found means Playwright's own browser is used.
CHROMIUM = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium")


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    if not CHROMIUM:
        return browser_type_launch_args
    return {
        **browser_type_launch_args,
        "executable_path": CHROMIUM,
        "args": ["--no-sandbox", "--disable-gpu", "--disable-quic"],
    }


@pytest.fixture(scope="session")
def base_url() -> str | None:
    """No session-wide address: every test starts its own gateway and opens its contexts on it
    (see `open_user`). Defining it here also replaces pytest-playwright's own base_url fixture,
    which pytest 9 warns about."""
    return None
