"""The live parking page in a real headless Chromium: it shows zones and follows changes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from citygate.rig import served
from collector.store import Store
from tests.browser.conftest import ARTIFACTS, CHROMIUM
from tests.collector.test_parking_api import T0, City, occ

if Path(CHROMIUM).exists():
    from playwright.sync_api import Page, expect
else:  # pragma: no cover - the module is skipped
    Page = Any


@pytest.fixture
def city(tmp_path: Path) -> Iterator[City]:
    """A parking city on SQLite."""
    store = Store.open(f"sqlite:///{tmp_path / 'hub.sqlite'}")
    try:
        yield City(store)
    finally:
        store.close()


@pytest.fixture
def app_url(city: City) -> Iterator[str]:
    """The city's app served on a free port; yields its base URL."""
    with served(city.client.app) as base:
        yield base


def test_parking_page_shows_zones_and_follows_changes(page: Page, app_url: str,
                                                      city: City) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    city.send(("pk-1001", T0, occ(False)), ("pk-1002", T0, occ(True)),
              ("pk-2001", T0, occ(True)))
    page.goto(f"{app_url}/parking")
    page.wait_for_selector('body[data-updated="1"]', timeout=10_000)
    row = page.locator('tr[data-zone="renmin-n"]')
    expect(row).to_have_attribute("data-available", "1")
    expect(row.locator("td.avail")).to_have_text("1 / 4")
    expect(page.locator('tr[data-zone="erqi-sq"]')).to_have_class("full")
    city.send(("pk-1003", T0 + 60_000, occ(False)))  # another bay is free
    expect(row).to_have_attribute("data-available", "2", timeout=10_000)
    expect(page.locator("#free")).to_have_text("2")
    page.screenshot(path=str(ARTIFACTS / "parking.png"), full_page=True)
