"""The environment one map in Chromium: sites on the map coloured by exceedance (not by the data
flag), a marker recolouring when a site goes over its limit, the range picker, phone size."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from citygate.rig import served
from collector.api import create_app
from collector.environment import EnvironmentMonitor, install, load_environment_config
from tests.browser.conftest import ARTIFACTS, CHROMIUM, settled
from tests.collector.test_environment_api import MIN, SECTION, Rig, r

RED, GREEN = "#c62828", "#1a9c48"
PHONE: Any = {"width": 390, "height": 844}
DESKTOP: Any = {"width": 1280, "height": 800}

if Path(CHROMIUM).exists():
    from playwright.sync_api import Page, expect
else:  # pragma: no cover - the module is skipped
    Page = Any


# The same sites, placed in the demo city (its offline base map shows under them).
WHERE = {"s-a": (34.80, 113.68), "s-b": (34.81, 113.70), "s-c": (34.83, 113.72),
         "b-1": (34.77, 113.65), "b-2": (34.78, 113.73)}
CITY = {**SECTION, "sites": [{**s, "lat": WHERE[s["id"]][0], "lon": WHERE[s["id"]][1]}
                             for s in SECTION["sites"]]}


class CityRig(Rig):
    """The environment rig with its sites in the demo city."""

    def make_monitor(self) -> EnvironmentMonitor:
        return EnvironmentMonitor(self.store, load_environment_config(CITY),
                                  on_alarm=self.announced.append, now=lambda: self.clock)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Rig, str]]:
    """Five sites with an hour of real-time, minute and hourly values ending now, served."""
    rig = CityRig(tmp_path_factory.mktemp("env"))
    now = int(time.time() * 1000) // MIN * MIN
    rig.clock = now
    for m in range(30, 0, -1):  # half an hour of minutes: boiler-1 within its limit (30)
        t = now - m * MIN
        rig.send(r("boiler-1", t, nox_converted=20.0 + m % 5),
                 r("boiler-1:min", t, nox_converted=21.0), r("dust-a", t, pm10=60.0))
    for h in range(1, 7):
        rig.send(r("boiler-1:hour", now - h * 60 * MIN, nox_converted=18.0 + h))
    # A flagged (bad) 0 at C: a data problem, not an exceedance; B is quiet: no data.
    rig.send(r("dust-c1", now - MIN, q="bad", flag="D", pm10=0.0))
    app = create_app(rig.store)
    install(app, rig.monitor)
    try:
        with served(app) as base:
            yield rig, base
    finally:
        rig.store.close()


def open_page(page: Page, base: str, size: Any) -> None:
    page.set_viewport_size(size)
    page.goto(f"{base}/environment?refresh=0.5")
    page.wait_for_selector('body:not([data-updated="0"])', state="attached", timeout=10_000)


def marker(page: Page, site: str) -> Any:
    return page.locator(f'path[data-layer="environment"][data-id="{site}"]')


def test_map_colours_sites_by_exceedance_and_follows_a_new_one(
        page: Page, env: tuple[Rig, str]) -> None:
    rig, base = env
    open_page(page, base, DESKTOP)
    expect(page.locator('path[data-layer="environment"]')).to_have_count(5)
    expect(page.locator("#map")).to_have_attribute("data-base", "vector")
    expect(page.locator(".leaflet-tooltip.district-label")).to_have_count(4)  # the base map
    expect(marker(page, "b-1")).to_have_attribute("data-state", "ok")
    expect(marker(page, "b-1")).to_have_attribute("fill", GREEN)
    # The flagged 0 is not "fine" and not "over": the site is coloured by its measurements.
    expect(page.locator('#sites tr[data-site="s-c"]')).to_have_attribute("data-state", "unknown")
    expect(marker(page, "s-b")).to_have_attribute("data-state", "unknown")

    rig.clock += MIN
    rig.send(r("boiler-1", rig.clock, nox_converted=55.0))  # over 30 mg/m³
    expect(marker(page, "b-1")).to_have_attribute("data-state", "exceeded", timeout=10_000)
    expect(marker(page, "b-1")).to_have_attribute("fill", RED)
    expect(page.locator("#n-exceeded")).to_have_text("1")
    marker(page, "b-1").click()
    expect(page.locator("#site-state")).to_have_text("over a limit")
    expect(page.locator("#chart text.limit-label")).to_contain_text("30")
    settled(page, ARTIFACTS / "environment-desktop.png")
    rig.send(r("boiler-1", rig.clock + 1, nox_converted=20.0))  # back under: the next test


def test_range_picker_loads_minute_and_hour_values(page: Page, env: tuple[Rig, str]) -> None:
    _, base = env
    open_page(page, base, DESKTOP)
    page.locator('#sites tr[data-site="b-1"]').click()
    chart = page.locator("#chart")
    expect(chart).to_have_attribute("data-interval", "rt")
    expect(chart).to_have_attribute("data-quantity", "nox_converted")
    real_time = int(chart.get_attribute("data-points") or 0)
    assert real_time >= 30
    page.get_by_role("button", name="Minute").click()
    expect(chart).to_have_attribute("data-interval", "min")
    expect(chart).to_have_attribute("data-points", "30")
    page.get_by_role("button", name="Hour").click()
    expect(chart).to_have_attribute("data-interval", "hour")
    expect(chart).to_have_attribute("data-points", "6")
    expect(chart.locator("line.limit")).to_have_count(1)


def test_phone_size_has_no_sideways_scrolling(page: Page, env: tuple[Rig, str]) -> None:
    _, base = env
    open_page(page, base, PHONE)
    expect(page.locator('path[data-layer="environment"]')).to_have_count(5)
    page.locator('#sites tr[data-site="s-a"]').click()
    expect(page.locator("#chart")).to_have_attribute("data-site", "s-a")
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    settled(page, ARTIFACTS / "environment-phone.png")
