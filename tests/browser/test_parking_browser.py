"""The parking page in Chromium: zones on the map by free share, a zone recolouring when bays
change, the driver's nearest free parking from the phone's location or a tapped point, and a
sensor alert that opens its zone, at desktop and phone size."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from citygate.rig import served
from collector.features import open_store
from tests.browser.conftest import ARTIFACTS, CHROMIUM, settled
from tests.collector.test_parking_api import MIN, T0, City, occ

PHONE: Any = {"width": 390, "height": 844}
DESKTOP: Any = {"width": 1280, "height": 800}
NEAR_RENMIN: Any = {"latitude": 34.7470, "longitude": 113.6262}  # ~100 m from Renmin Rd north

if Path(CHROMIUM).exists():
    from playwright.sync_api import Browser, Page, expect
else:  # pragma: no cover - the module is skipped
    Browser = Page = Any


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[City, str]]:
    """Two zones: Renmin Rd north with one bay free of three, Erqi Square full; served."""
    store = open_store(f"sqlite:///{tmp_path_factory.mktemp('parking') / 'hub.sqlite'}")
    c = City(store)
    c.send(("pk-1001", T0, occ(False)), ("pk-1002", T0, occ(True)), ("pk-1003", T0, occ(True)),
           ("pk-2001", T0, occ(True)), ("pk-2002", T0, occ(True, battery_mv=3150)),
           ("pk-2003", T0, occ(True)))
    try:
        with served(c.client.app) as base:
            yield c, base
    finally:
        store.close()


def zone(page: Page, zone_id: str) -> Any:
    return page.locator(f'path[data-layer="parking"][data-id="{zone_id}"]')


def test_zones_on_the_map_follow_their_bays(page: Page, city: tuple[City, str]) -> None:
    c, base = city
    page.set_viewport_size(DESKTOP)
    page.goto(f"{base}/parking")
    page.wait_for_selector('body:not([data-updated="0"])', state="attached", timeout=10_000)
    expect(page.locator('path[data-layer="parking"]')).to_have_count(2)
    expect(page.locator("#map")).to_have_attribute("data-base", "vector")
    expect(zone(page, "renmin-n")).to_have_attribute("data-state", "free")  # 1 of 3 usable
    expect(zone(page, "erqi-sq")).to_have_attribute("data-state", "full")
    expect(zone(page, "erqi-sq")).to_have_attribute("fill", "#c62828")
    c.clock.now = T0 + MIN
    c.send(("pk-2001", T0 + MIN, occ(False)))  # a car leaves Erqi Square
    expect(zone(page, "erqi-sq")).to_have_attribute("data-state", "free", timeout=10_000)
    expect(zone(page, "erqi-sq")).to_have_attribute("fill", "#1a9c48")  # 1 of 3: a third free
    # An alert is one click from its zone and its sensor's health.
    page.locator('#alert-list li[data-spot="pk-2002"]').click()
    expect(page.locator("#zone-panel")).to_have_attribute("data-zone", "erqi-sq")
    expect(page.locator('#health li[data-spot="pk-2002"]')).to_have_count(1)
    settled(page, ARTIFACTS / "parking-desktop.png")
    c.send(("pk-2001", T0 + 2 * MIN, occ(True)))  # as it was, for the next test


def test_driver_finds_the_nearest_free_zone_from_the_phone_location(
        browser: Browser, city: tuple[City, str]) -> None:
    _, base = city
    context = browser.new_context(viewport=PHONE, geolocation=NEAR_RENMIN,
                                  permissions=["geolocation"], is_mobile=True, has_touch=True)
    try:
        page = context.new_page()
        page.goto(f"{base}/parking")
        page.wait_for_selector('body:not([data-updated="0"])', state="attached", timeout=10_000)
        page.get_by_role("button", name="Nearest free parking to me").click()
        found = page.locator("#nearest")
        expect(found).to_have_attribute("data-zone", "renmin-n")
        expect(found).to_contain_text("Renmin Rd north")
        walk = int(found.get_attribute("data-walking-m") or 0)
        assert 60 < walk < 300  # ~100 m as the crow flies, a little more on foot
        href = page.locator("#navigate").get_attribute("href") or ""
        assert href.startswith("https://") and "34.7466" in href
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        settled(page, ARTIFACTS / "parking-phone-driver.png")
    finally:
        context.close()


def test_a_tapped_point_finds_the_free_zone_nearest_to_it(page: Page,
                                                          city: tuple[City, str]) -> None:
    _, base = city
    page.set_viewport_size(PHONE)
    page.goto(f"{base}/parking")
    page.wait_for_selector('body:not([data-updated="0"])', state="attached", timeout=10_000)
    expect(zone(page, "erqi-sq")).to_have_count(1)
    # Tap beside Erqi Square (full): the nearest zone with a free bay is Renmin Rd north.
    full, free = zone(page, "erqi-sq").bounding_box(), zone(page, "renmin-n").bounding_box()
    assert full is not None and free is not None
    x, y = (2 * full["x"] + free["x"]) / 3, (2 * full["y"] + free["y"]) / 3
    page.mouse.click(x, y - 20)
    expect(page.locator("#nearest")).to_have_attribute("data-zone", "renmin-n")
    expect(page.locator("#driver")).to_have_attribute("data-state", "found")
