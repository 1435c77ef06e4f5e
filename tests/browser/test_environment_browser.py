"""The environment one-map page in a real headless Chromium: colours, alarms, chart, live update."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from citygate.rig import served
from collector.api import create_app
from collector.environment import install
from tests.browser.conftest import ARTIFACTS, CHROMIUM
from tests.collector.test_environment_api import MIN, T0, Rig, r

ALARM_RED = "#c62828"

if Path(CHROMIUM).exists():
    from playwright.sync_api import Page, expect
else:  # pragma: no cover - the module is skipped
    Page = Any


@pytest.fixture
def env_rig(tmp_path: Path) -> Iterator[Rig]:
    """A store with five sites and a monitor on a fake clock."""
    rig = Rig(tmp_path)
    try:
        yield rig
    finally:
        rig.store.close()


@pytest.fixture
def env_server(env_rig: Rig) -> Iterator[str]:
    """The collector app with the environment routes, served on a free port."""
    app = create_app(env_rig.store)
    install(app, env_rig.monitor)
    with served(app) as base:
        yield base


def test_map_draws_every_site_and_the_alarmed_one_in_alarm_colour(
        page: Page, env_server: str, env_rig: Rig) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    env_rig.clock = T0 + 6 * MIN
    for minute in range(6):
        env_rig.send(r("boiler-1", T0 + minute * MIN, nox_converted=40.0 + minute, o2=8.0))
    env_rig.send(r("boiler-2", T0 + 5 * MIN, nox_converted=18.0),
                 r("dust-a", T0 + 5 * MIN, pm10=62.0), r("dust-b", T0 + 5 * MIN, pm10=70.0),
                 r("dust-c1", T0 + 5 * MIN, q="bad", flag="D", pm10=0.0))
    assert [a["site_id"] for a in env_rig.monitor.alarms(active=True)] == ["b-1"]

    page.set_viewport_size({"width": 1200, "height": 800})
    page.goto(f"{env_server}/environment?refresh=0.5")
    # A selector, not wait_for_function: the page's CSP refuses string evaluation.
    page.wait_for_selector('body:not([data-updated="0"])', state="attached", timeout=10_000)
    circles = page.locator("circle.site")
    expect(circles).to_have_count(5)
    expect(page.locator("polygon.district")).to_have_count(1)  # d2 has no outline
    alarmed = page.locator('circle[data-site="b-1"]')
    expect(alarmed).to_have_attribute("data-status", "exceeded")
    expect(alarmed).to_have_attribute("fill", ALARM_RED)
    expect(page.locator('circle[data-site="s-c"]')).to_have_attribute("data-status", "fault")
    expect(page.locator('circle[data-site="s-a"]')).to_have_attribute("data-status", "ok")
    expect(page.locator("#alarms")).to_have_attribute("data-count", "1")
    expect(page.locator('#alarms li[data-site="b-1"]')).to_contain_text("Boiler")
    # Drawn where it is: b-1 (lon 0.3) lies left of s-a (lon 0.5), and below it (lat 0.3 < 0.5).
    b1 = alarmed.bounding_box()
    sa = page.locator('circle[data-site="s-a"]').bounding_box()
    assert b1 is not None and sa is not None
    assert b1["x"] < sa["x"] and b1["y"] > sa["y"]

    alarmed.click()
    chart = page.locator("#chart")
    expect(chart).to_have_attribute("data-site", "b-1")
    expect(chart).to_have_attribute("data-points", "6")
    expect(chart.locator("line.limit")).to_have_count(1)
    expect(page.locator("#chart-title")).to_contain_text("nox_converted (mg/m³)")
    page.screenshot(path=str(ARTIFACTS / "environment-map.png"), full_page=True)

    # The boiler is back under its limit: the page follows without a reload.
    env_rig.clock = T0 + 8 * MIN
    env_rig.send(r("boiler-1", T0 + 7 * MIN, nox_converted=22.0))
    expect(alarmed).to_have_attribute("data-status", "ok", timeout=10_000)
    expect(page.locator("#alarms")).to_have_attribute("data-count", "0")
    expect(chart).to_have_attribute("data-points", "7")
