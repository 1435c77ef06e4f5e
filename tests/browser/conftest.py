"""Real-browser tests: Debian's headless Chromium driven by Playwright.

Playwright's sync API keeps an event loop running in the main thread for the whole session,
so these tests run in their own pytest process (`make test` runs `-m browser` separately).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test here `browser`, and skip them all when Chromium is missing."""
    here = Path(__file__).parent
    skip = pytest.mark.skip(reason="needs Debian's chromium (apt-get install -y "
                            "--no-install-recommends chromium fonts-liberation); "
                            "`make test` installs it")
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.browser)
            if not Path(CHROMIUM).exists():
                item.add_marker(skip)


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    """Drive the system Chromium and keep its background services off the closed network."""
    return {**browser_type_launch_args, "executable_path": CHROMIUM,
            "args": ["--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1 , "
                     "EXCLUDE localhost"]}


@pytest.fixture
def artifacts() -> Path:
    """Where screenshots are kept (git-ignored); look at them."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


def settled(page: Any, path: Path, full_page: bool = True) -> None:
    """Screenshot a page once its maps have stopped panning and zooming."""
    page.wait_for_selector('.leaflet-container[data-moving="1"]', state="detached", timeout=5_000)
    page.wait_for_selector(".leaflet-zoom-anim", state="detached", timeout=5_000)
    page.screenshot(path=str(path), full_page=full_page)
