"""The crew card on a phone and a desktop: where to go, how urgent, what fired, and the alert.

Driven through the real incident engine and API (events and readings as the ingest stores them),
in headless Chromium with the notifications permission granted.
"""

from __future__ import annotations

import copy
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from citygate.rig import served
from collector.alarms.tables import incidents
from tests.browser.conftest import ARTIFACTS, CHROMIUM
from tests.collector.test_alarms_engine import CONFIG, MIN, Rig, S
from tests.collector.test_incidents_api import make_app, store  # noqa: F401  (fixture)

if Path(CHROMIUM).exists():
    from playwright.sync_api import Browser, Page, expect
else:  # pragma: no cover - the module is skipped
    Browser = Page = Any

PHONE = {"width": 360, "height": 740}
DESKTOP = {"width": 1280, "height": 800}
SITE = {"address": "12 Jinshui Road, Jinshui District, Zhengzhou", "building": "Tower A",
        "entrance": "North lobby, lift bank 2", "contact_name": "Property desk (Ms Zhang)",
        "contact_phone": "0371-6000 0001", "lat": 34.7597, "lon": 113.6651}


def card_config() -> dict[str, Any]:
    cfg = copy.deepcopy(CONFIG)
    cfg["sites"]["jinshui-12"].update(SITE)
    cfg["units"]["crew-north"]["escalation"].append(
        {"when": "not_arrived", "channels": ["wecom-supervisors"]})
    return cfg


@pytest.fixture
def rig(store: Any) -> Rig:  # noqa: F811
    """The incident engine on the clock of this machine (the page's timers use real time)."""
    r = Rig(store, card_config())
    r.clock.now = int(time.time() * 1000)
    return r


@pytest.fixture
def server(rig: Rig) -> Iterator[str]:
    with served(make_app(rig)) as base:
        yield base


@pytest.fixture
def phone(browser: Browser, server: str) -> Iterator[Page]:
    """A phone-sized page allowed to show notifications."""
    context = browser.new_context(viewport=PHONE, permissions=["notifications"],
                                  base_url=server)
    yield context.new_page()
    context.close()


def newest(rig: Rig) -> int:
    return max(int(i["id"]) for i in rig.rows(incidents))


def test_crew_card_tells_where_to_go_and_how_urgent(phone: Page, rig: Rig) -> None:
    page = phone
    ARTIFACTS.mkdir(exist_ok=True)
    # An older, lesser fault first: the critical one must still come first.
    rig.clock.now -= 2 * MIN
    rig.events("gw-a", ("lift-2", "gbt24476_fault", "raise"), severity="major")
    rig.clock.now += 31 * S  # past the group wait
    rig.engine.tick()
    major = newest(rig)
    rig.clock.now += 2 * MIN - 31 * S
    page.goto("/crew?token=tok-li")
    page.wait_for_selector('body[data-sse="open"]', timeout=10_000)
    expect(page.locator("body")).to_have_attribute("data-sw", "ready")

    # The page's timer counts on real time: the incident opens now, however long the page
    # took to load, so the timer below starts near zero.
    rig.clock.now = max(rig.clock.now, int(time.time() * 1000))
    rig.reading("gw-a", "lift-1", rig.clock.now, floor=7, door_closed=False,
                passenger_present=True)
    rig.events("gw-a", ("lift-1", "trapped_passenger", "raise"), severity="critical")
    trapped = newest(rig)
    box = page.locator("#incidents")
    expect(box).to_have_attribute("data-order", f"{trapped},{major}")
    card = page.locator(f"#incident-{trapped}")
    expect(card.locator(".sev")).to_have_text("CRITICAL")
    expect(card.locator(".fault-name")).to_have_text("Passenger trapped in the car")
    expect(card.locator(".zh")).to_have_text("困人")
    expect(page.locator(f"#incident-{major} .fault-name")).to_have_text("Lift controller fault")
    expect(card.locator(".address")).to_have_text(
        "12 Jinshui Road, Jinshui District, Zhengzhou · Tower A · North lobby, lift bank 2")
    expect(card.locator(".lift-now")).to_have_attribute("data-floor", "7")
    expect(card.locator(".lift-now")).to_contain_text("floor 7 · door open · passenger present")
    call = card.locator("a.call")
    expect(call).to_have_attribute("href", "tel:037160000001")
    expect(card.locator(".contact")).to_contain_text("Property desk (Ms Zhang)")
    expect(card.locator("a.nav")).to_have_attribute(
        "href", re.compile(r"^geo:34\.7597,113\.6651\?q=34\.7597,113\.6651\("))
    expect(card.locator("a.map")).to_have_attribute(
        "href", "https://www.openstreetmap.org/?mlat=34.7597&mlon=113.6651#map=18/34.7597/113.6651")
    expect(card.locator(".assignee")).to_have_text("Li Wei")
    expect(card.locator(".escalation li")).to_have_count(1)  # the first page went out at once

    # The timer runs on the page, every second.
    timer = card.locator(".timer")
    expect(timer).to_have_text(re.compile(r"^trapped for 00:0\d$"))
    first = timer.text_content()
    expect(timer).not_to_have_text(first or "", timeout=3000)

    # A new critical incident: tone, vibration and a system notification through the worker.
    expect(page.locator("body")).to_have_attribute("data-alerts", "1")
    expect(page.locator("body")).to_have_attribute("data-last-alert", str(trapped))
    expect(page.locator("body")).to_have_attribute("data-notified", "1")
    titles = page.evaluate("navigator.serviceWorker.getRegistration('/static/js/')"
                           ".then(r => r.getNotifications())"
                           ".then(ns => ns.map(n => [n.title, n.tag]))")
    assert titles == [["CRITICAL: Passenger trapped in the car", f"incident-{trapped}"]]
    page.screenshot(path=str(ARTIFACTS / "crew-card-phone.png"), full_page=True)

    # Nobody acknowledges for 5 min: the supervisor stage fires, and the crew sees it.
    rig.clock.now += 5 * MIN + S
    rig.engine.tick()
    expect(card.locator(".escalation li")).to_have_count(2)
    expect(card.locator(".escalation li").nth(1)).to_contain_text("supervisor")


    # On site; the device clears its alarm but the passenger sensor still reads true.
    for action, state in (("ack", "acknowledged"), ("arrive", "on_site")):
        card.locator(f'button[data-action="{action}"]').click()
        expect(card).to_have_attribute("data-state", state)
    rig.clock.now += 10 * S
    rig.events("gw-a", ("lift-1", "trapped_passenger", "clear"))
    expect(card.locator(".notice.cleared")).to_have_text(
        "Cleared by device, awaiting confirmation")
    expect(timer).to_have_text("trapped for 05:11")  # stopped when the device cleared
    page.screenshot(path=str(ARTIFACTS / "crew-card-cleared-phone.png"), full_page=True)

    # Resolve is refused while the condition is present: the card asks why, then overrides.
    card.locator('button[data-action="resolve"]').click()
    form = card.locator("form.override")
    expect(form).to_contain_text("passenger_present")
    form.locator("input").fill("car checked in person, the sensor is stuck")
    form.locator("button").click()
    expect(card).to_have_attribute("data-state", "resolved")
    expect(card.locator("form.override")).to_have_count(0)
    last = rig.desk.incident(trapped)["history"][-1]
    assert (last["to"], last["who"]) == ("resolved", "Li Wei")
    assert last["override"]["reason"] == "car checked in person, the sensor is stuck"

    page.set_viewport_size(DESKTOP)
    page.screenshot(path=str(ARTIFACTS / "crew-card-desktop.png"), full_page=True)
