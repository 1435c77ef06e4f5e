"""The crew and ops pages in a real headless Chromium: SSE push, acknowledge click → API state."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from collector.alarms.tables import incidents
from tests.browser.conftest import ARTIFACTS, CHROMIUM
from tests.collector.test_alarms_engine import Rig
from tests.collector.test_incidents_api import rig, server, store  # noqa: F401  (fixtures)

if Path(CHROMIUM).exists():
    from playwright.sync_api import Page, expect
else:  # pragma: no cover - the module is skipped
    Page = Any


def test_crew_page_receives_incident_and_acknowledges_it(page: Page, server: str,  # noqa: F811
                                                         rig: Rig) -> None:  # noqa: F811
    ARTIFACTS.mkdir(exist_ok=True)
    page.set_viewport_size({"width": 390, "height": 844})  # a phone
    page.goto(f"{server}/crew?token=tok-li")
    page.wait_for_selector('body[data-sse="open"]', timeout=10_000)
    assert "token=" not in page.url  # the token leaves the address bar at once

    rig.events("gw-a", ("lift-1", "trapped_passenger", "raise"), severity="critical")
    [inc] = rig.rows(incidents)
    card = page.locator(f"#incident-{inc['id']}")
    expect(card).to_have_attribute("data-state", "open", timeout=10_000)
    expect(card.locator(".fault-name")).to_have_text("Passenger trapped in the car")
    expect(card.locator(".where")).to_have_text("lift-1 · Jinshui Rd 12")
    card.locator("textarea").fill("on my way, 8 min")
    card.locator('button[data-action="ack"]').click()
    expect(page.locator(f'#incident-{inc["id"]}[data-state="acknowledged"]')).to_be_visible()
    expect(card.locator("textarea")).to_have_value("")  # the note went with the step
    page.screenshot(path=str(ARTIFACTS / "crew.png"), full_page=True)

    got = rig.desk.incident(inc["id"])
    assert (got["state"], got["acknowledged_by"]) == ("acknowledged", "Li Wei")
    assert got["history"][-1]["note"] == "on my way, 8 min"

    # The device clears: an entrapment waits for a person, and the card says so without a reload.
    rig.clock.now += 60_000
    rig.events("gw-a", ("lift-1", "trapped_passenger", "clear"))
    expect(card.locator(".notice.cleared")).to_have_text(
        "Cleared by device, awaiting confirmation")
    expect(card).to_have_attribute("data-state", "acknowledged")
    assert rig.desk.incident(inc["id"])["awaiting_confirmation"] is True
    card.locator('button[data-action="resolve"]').click()
    expect(card).to_have_attribute("data-state", "resolved")
    expect(card.locator('button[data-action="close"]')).to_be_visible()


def test_ops_page_shows_all_incidents_and_figures(page: Page, server: str,  # noqa: F811
                                                  rig: Rig) -> None:  # noqa: F811
    ARTIFACTS.mkdir(exist_ok=True)
    rig.events("gw-a", ("lift-1", "trapped_passenger", "raise"), severity="critical")
    first = rig.rows(incidents)[0]["id"]
    rig.clock.now += 95_000
    rig.desk.transition(first, "ack", "Li Wei")
    page.goto(f"{server}/ops?token=tok-ops")
    page.wait_for_selector('body[data-sse="open"]', timeout=10_000)
    expect(page.locator("#stats")).to_have_attribute("data-found", "1")
    rig.events("gw-a", ("lift-2", "trapped_passenger", "raise"), severity="critical")
    expect(page.locator("#incidents")).to_have_attribute("data-count", "2")
    expect(page.locator("#stats")).to_have_attribute("data-found", "2")
    # 95 s for the first; the second, not acknowledged, counts with the 0 s it has waited so
    # far: (95 + 0) / 2, shown rounded.
    expect(page.locator("#tta")).to_have_text("48 s")
    page.screenshot(path=str(ARTIFACTS / "ops.png"), full_page=True)
