"""The phone report page and the assessment page in a real browser."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from citygate.rig import served
from collector import auth
from collector.alarms.tables import incidents
from collector.features import open_store
from tests.browser.conftest import CHROMIUM
from tests.collector.grid_fixtures import IN_G1, GridCity, city, grid_city_on

if Path(CHROMIUM).exists():
    from playwright.sync_api import Browser, Dialog, expect
else:  # pragma: no cover - the module is skipped
    Browser = Dialog = Any  # type: ignore[misc, assignment]

PNG = b"\x89PNG\r\n\x1a\n" + bytes(64)
HOSTILE = '<img src=x onerror="alert(1)">'
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 800}
SIDEWAYS = "document.documentElement.scrollWidth > document.documentElement.clientWidth"


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[GridCity]:
    store = open_store(f"sqlite:///{tmp_path / 'hub.db'}")
    try:
        with grid_city_on(store, tmp_path) as g:
            g.client.put("/api/v1/grid/outlines", json=city(), headers=g.h())
            yield g
    finally:
        store.close()


@pytest.fixture
def base(rig: GridCity) -> Iterator[str]:
    with served(rig.hub.app) as url:
        yield url


def test_citizen_reports_from_the_phone_page_with_location_and_photo(
        browser: Browser, base: str, rig: GridCity, tmp_path: Path, artifacts: Path) -> None:
    photo = tmp_path / "kerb.png"
    photo.write_bytes(PNG)
    intake = rig.hub.app.state.intake  # the city's own list of what citizens may report
    intake.settings = intake.settings.model_copy(update={"citizen_kinds": ("garbage", "potholes")})
    context = browser.new_context(geolocation={"latitude": IN_G1[0], "longitude": IN_G1[1]},
                                  permissions=["geolocation"], viewport=PHONE)
    page = context.new_page()
    page.goto(f"{base}/report")
    expect(page.locator("#who")).to_have_text("citizen")
    expect(page.locator("#sign-in")).to_have_count(0)  # public: no sign-in, no navigation
    assert page.locator("#nav").count() == 0 and not page.evaluate(SIDEWAYS)
    page.wait_for_selector('body[data-ready="yes"]', state="attached")
    assert page.locator("#kind option").all_inner_texts() == ["garbage", "potholes"]
    page.select_option("#kind", "garbage")
    page.click("#locate")
    expect(page.locator("#send")).to_be_enabled(timeout=10_000)
    page.fill("#text", "bins overflowing")
    page.set_input_files("#photo", str(photo))
    page.click("#send")
    page.wait_for_selector('body[data-sent="yes"]', state="attached", timeout=10_000)
    expect(page.locator("#status")).to_contain_text("is with grid g1")
    page.screenshot(path=str(artifacts / "grid-report.png"))
    page.set_viewport_size(DESKTOP)
    page.screenshot(path=str(artifacts / "grid-report-desktop.png"))
    context.close()
    (inc,) = rig.incidents()
    assert (inc["unit"], inc["found_by"], inc["grid"]) == ("crew-g1", "citizen", "g1")


def test_assessment_page_shows_figures_and_hostile_names_as_text(
        browser: Browser, base: str, rig: GridCity, artifacts: Path) -> None:
    t0 = 1_767_312_000_000  # 2026-01-02T00:00:00Z
    with rig.hub.store.engine.begin() as conn:
        for n, unit in enumerate(["crew-g1", HOSTILE, "crew-g1"]):
            conn.execute(sa.insert(incidents).values(
                alarm_id=n, unit=unit, site="s", grid="g1", kind="door_fault", device_id="d",
                severity="major", title="t", state="open", opened_at=t0, updated_at=t0,
                acked_at=t0 + 60_000))
    page = browser.new_page()
    dialogs: list[str] = []

    def refuse(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", refuse)
    page.goto(f"{base}/assessment")  # no token: the shared sign-in screen, not the figures
    expect(page.locator("#sign-in")).to_be_visible(timeout=10_000)
    expect(page.locator("#period")).to_be_hidden()
    page.goto(f"{base}/assessment?token={rig.admin}")
    expect(page.locator('#nav a[aria-current="page"]')).to_have_text("Assessment")
    page.fill("#from", "2026-01-01")
    page.fill("#to", "2026-02-01")
    page.click("button[type=submit]")
    table = page.locator("#figures")
    expect(table).to_contain_text(HOSTILE, timeout=10_000)
    expect(table.locator("tr", has_text="crew-g1").locator("td").first).to_have_text("2")
    expect(page.locator("#weeks")).to_contain_text("2025-12-29")
    page.screenshot(path=str(artifacts / "grid-assessment.png"), full_page=True)
    assert dialogs == [] and page.locator("#figures img").count() == 0
    page.set_viewport_size(PHONE)  # the tables fold into cards: nothing scrolls sideways
    expect(table.locator("tr", has_text="crew-g1").locator('td[data-label="found"]')) \
        .to_be_visible()
    assert not page.evaluate(SIDEWAYS)
    page.screenshot(path=str(artifacts / "grid-assessment-phone.png"), full_page=True)


@pytest.mark.parametrize(("role", "shown"), [(auth.Role.READER, True), (auth.Role.OPS, True),
                                             (auth.Role.CREW, False)])
def test_the_navigation_offers_assessment_to_those_who_may_read_it(
        browser: Browser, base: str, rig: GridCity, role: auth.Role, shown: bool) -> None:
    unit = {"unit": "crew-g1"} if role == auth.Role.CREW else {}
    token = auth.create_token(rig.hub.store.engine, f"nav-{role.value}", role, **unit)
    page = browser.new_page()
    page.goto(f"{base}/docs?token={token}")
    link = page.locator('#nav a[href="/assessment"]')
    expect(page.locator('#nav a[href="/ops"]')).to_be_visible()
    if shown:
        expect(link).to_be_visible(timeout=10_000)
    else:
        page.wait_for_selector(f'#nav[data-role="{role.value}"]', state="attached")
        expect(link).to_be_hidden()
