"""The operations room in Chromium: overrides, silences, running ages, Close with a reason, and
a one-time sign-in link (QR) that signs a crew phone in."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from citygate.rig import served
from collector import auth
from collector.alarms import pages, router
from collector.alarms.tables import incidents
from collector.api import create_app
from collector.features import open_store
from collector.registry import install
from collector.registry.service import Registry, RegistrySettings
from tests.browser.conftest import ARTIFACTS, CHROMIUM, settled
from tests.collector.test_alarms_engine import CONFIG, MIN, Rig

if Path(CHROMIUM).exists():
    from playwright.sync_api import Browser, Page, expect
else:  # pragma: no cover - the module is skipped
    Browser = Page = Any

ADMIN = "cg_admin-" + "b" * 20
REASON = "car checked in person, the sensor is stuck"


@pytest.fixture
def rig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Rig]:
    """Alarms and access tables on SQLite, the engine on (about) this machine's clock."""
    store = open_store(f"sqlite:///{tmp_path / 'hub.db'}")
    r = Rig(store, CONFIG)
    r.clock.now = int(time.time() * 1000) - 15 * MIN  # the story below moves it 8 min on
    auth.create_token(store.engine, "root", auth.Role.ADMIN, token=ADMIN)
    yield r
    store.close()


@pytest.fixture
def server(rig: Rig) -> Iterator[str]:
    app = create_app(rig.store)
    app.state.alarms = rig.desk
    app.include_router(router)
    app.include_router(pages)
    install(app, Registry(rig.store.engine, RegistrySettings(broker_urls=["mqtt://127.0.0.1:1"])))
    with served(app) as base:
        yield base


def incident_ids(rig: Rig) -> list[int]:
    return [int(i["id"]) for i in rig.rows(incidents)]


def test_ops_sees_overrides_silences_ages_and_closes_with_a_reason(page: Page, server: str,
                                                                  rig: Rig) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    rig.reading("gw-a", "lift-1", rig.clock.now, floor=3, passenger_present=True)
    rig.events("gw-a", ("lift-1", "trapped_passenger", "raise"), severity="critical")
    [first] = incident_ids(rig)
    rig.clock.now += 2 * MIN
    rig.desk.transition(first, "ack", "Li Wei")
    rig.clock.now += 6 * MIN
    rig.desk.transition(first, "arrive", "Li Wei")
    rig.desk.transition(first, "resolve", "Li Wei", override=True, reason=REASON)
    rig.desk.add_silence(site=None, device="lift-3", kind=None, starts_at=rig.clock.now,
                         ends_at=rig.clock.now + 60 * MIN, who="ops-room",
                         reason="lift-3 modernisation")

    page.set_viewport_size({"width": 1400, "height": 900})
    page.goto(f"{server}/ops?token={ADMIN}")
    page.wait_for_selector('body[data-sse="open"]', timeout=10_000)
    expect(page.locator("#overrides")).to_have_attribute("data-count", "1")
    override = page.locator(f'#overrides tr[data-incident="{first}"]')
    expect(override).to_contain_text("Li Wei")
    expect(override).to_contain_text("passenger_present")
    expect(override).to_contain_text(REASON)
    silence = page.locator("#silences tr[data-silence]")
    expect(silence).to_have_count(1)
    expect(silence).to_contain_text("device lift-3")
    expect(silence).to_contain_text("ops-room")
    expect(silence).to_contain_text("lift-3 modernisation")
    expect(silence).to_contain_text("in force")
    expect(page.locator("#ttar")).to_have_text("8.0 min")  # opened → on site
    expect(page.locator("#sla")).to_have_text("100%")

    # A new entrapment arrives live; its age runs on the page.
    rig.events("gw-a", ("lift-2", "trapped_passenger", "raise"), severity="critical")
    second = max(incident_ids(rig))
    row = page.locator(f"#incident-{second}")
    expect(row.locator("td.esc li")).to_have_count(1)
    age = row.locator("td.age")
    expect(age).to_have_text(re.compile(r"^\d\d:\d\d$"))
    before = age.text_content() or ""
    expect(age).not_to_have_text(before, timeout=3000)

    # Close is refused while the passenger sensor still reads true: ops give a reason.
    page.locator(f'button[data-close="{first}"]').click()
    form = page.locator(f'form.close-form[data-id="{first}"]')
    expect(form).to_contain_text("passenger_present")
    form.locator("input").fill("closed after the site visit; sensor ticket raised")
    form.locator("button").click()
    expect(page.locator(f"#incident-{first}")).to_have_count(0)  # the list shows active ones
    page.select_option('#filters select[name="state"]', "")
    expect(page.locator(f"#incident-{first}")).to_have_attribute("data-state", "closed")
    expect(page.locator("#overrides")).to_have_attribute("data-count", "2")
    settled(page, ARTIFACTS / "ops-overrides-desktop.png")
    last = rig.desk.incident(first)["history"][-1]
    assert (last["to"], last["who"]) == ("closed", "root")
    assert last["override"]["reason"] == "closed after the site visit; sensor ticket raised"


def test_a_sign_in_link_from_ops_signs_a_crew_phone_in_once(
        page: Page, server: str, browser: Browser, rig: Rig,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from collector.alarms import api as incidents_api

    monkeypatch.setattr(incidents_api, "KEEPALIVE_S", 0.5)  # streams re-check tokens quickly
    monkeypatch.setattr(incidents_api, "TOKEN_RECHECK_S", 0.5)
    ARTIFACTS.mkdir(exist_ok=True)
    rig.events("gw-a", ("lift-1", "trapped_passenger", "raise"), severity="critical")
    page.goto(f"{server}/ops?token={ADMIN}")
    page.wait_for_selector('body[data-sse="open"]', timeout=10_000)
    form = page.locator("#signin-link")
    form.locator('input[name="member"]').fill("Li Wei")
    form.locator('input[name="unit"]').fill("crew-north")
    form.locator("button").click()
    expect(page.locator("#signin-result")).to_have_attribute("data-member", "Li Wei")
    qr = page.locator("#signin-qr")
    expect(qr).to_be_visible()
    assert (qr.get_attribute("src") or "").startswith("data:image/svg+xml")
    assert qr.evaluate("img => img.complete && img.naturalWidth > 0")  # the SVG decodes
    url = page.locator("#signin-url").text_content() or ""
    code = url.rsplit("/signin/", 1)[1]
    page.locator("#signin-result").screenshot(path=str(ARTIFACTS / "ops-signin-link.png"))

    def open_link() -> Page:
        phone = browser.new_context(viewport={"width": 360, "height": 740}).new_page()
        phone.goto(f"{server}/signin/{code}")
        return phone

    phone = open_link()
    phone.wait_for_url(f"{server}/crew", timeout=10_000)
    phone.wait_for_selector('body[data-sse="open"]', timeout=10_000)
    expect(phone.locator("#incidents")).to_have_attribute("data-count", "1")
    token = phone.evaluate("localStorage.getItem('citygate.token')")
    assert token and token != ADMIN
    assert auth.lookup(rig.store.engine, token).role is auth.Role.CREW  # type: ignore[union-attr]

    again = open_link()  # the code was spent: a second phone is told so
    expect(again.locator("body")).to_have_attribute("data-signin", "failed")
    expect(again.locator("#signin-status")).to_contain_text("already been used")
    again.screenshot(path=str(ARTIFACTS / "signin-used-phone.png"), full_page=True)

    # Ops revoke the phone's token: the open page signs out at the stream's next re-check.
    assert auth.revoke_token(rig.store.engine, "crew.crew-north.li-wei")
    expect(phone.locator("#sign-in")).to_be_visible(timeout=10_000)
    expect(phone.locator("#sign-in-message")).to_contain_text("This sign-in has ended")
    assert phone.evaluate("localStorage.getItem('citygate.token')") is None
    for p in (phone, again):
        p.context.close()


