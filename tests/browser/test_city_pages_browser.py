"""Every page of the whole collector in Chromium, at desktop and phone size, on the demo city:
each draws its data, loads nothing from outside the collector, breaks no CSP rule and never
scrolls sideways on a phone; the control room's map shows the city's layers and recolours an
incident when it is acknowledged; without a token every page shows the sign-in screen."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.browser.conftest import ARTIFACTS, CHROMIUM, settled
from tests.browser.demo_hub import DemoHub, demo_hub

if Path(CHROMIUM).exists():
    from playwright.sync_api import Browser, Page, expect
else:  # pragma: no cover - the module is skipped
    Browser = Page = Any

SIZES: dict[str, Any] = {"desktop": {"width": 1280, "height": 800},
                         "phone": {"width": 390, "height": 844}}
# Recorded by an init script (it runs before the page's own scripts, outside its CSP).
WATCH = """
window.__violations = [];
document.addEventListener("securitypolicyviolation",
  (e) => window.__violations.push(e.violatedDirective + " " + e.blockedURI));
"""
# Boxes of the page (not Swagger UI's own) that would scroll sideways.
WIDE = """[...document.querySelectorAll("main .wrap, main section, main .panel")]
  .filter((e) => !e.closest("#swagger-ui") && e.scrollWidth > e.clientWidth + 1)
  .map((e) => e.id || e.className)"""
# Each page and what says it has drawn its data.
PAGES = {
    "/": '#kinds:not([data-count="0"])',
    "/ops": '#map:not([data-layers=""])',
    "/parking": 'body:not([data-updated="0"])',
    "/environment": 'body:not([data-updated="0"])',
    "/crew": '#incidents:not([data-count="0"])',
    "/assessment": 'body[data-loaded="yes"]',
    "/docs": 'body[data-docs="ready"]',
}


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoHub]:
    with demo_hub(tmp_path_factory.mktemp("city")) as c:
        c.online()
        c.trapped("gw-tcp-01", "lift-t02")
        yield c


def visit(page: Page, url: str, path: str) -> list[str]:
    """Open a page recording every request; returns the list it keeps filling."""
    requested: list[str] = []
    page.on("request", lambda r: requested.append(r.url))
    page.add_init_script(WATCH)
    page.goto(url)
    page.wait_for_selector(PAGES[path], state="attached", timeout=15_000)
    return requested


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("path", PAGES)
def test_every_page_draws_from_the_collector_alone(browser: Browser, city: DemoHub,
                                                   path: str, size: str) -> None:
    context = browser.new_context(viewport=SIZES[size])
    try:
        page = context.new_page()
        requested = visit(page, f"{city.base}{path}?token={city.token}", path)
        origin = urlsplit(city.base).netloc
        foreign = [u for u in requested
                   if not u.startswith("data:") and urlsplit(u).netloc != origin]
        assert foreign == []
        assert page.evaluate("window.__violations") == []
        assert not page.locator("#sign-in").is_visible()
        if size == "phone":  # neither the page nor a table in it scrolls sideways
            assert page.evaluate("document.documentElement.scrollWidth") <= SIZES[size]["width"]
            assert page.evaluate(WIDE) == []
        if path == "/crew":  # the shared CSS leaves the card's buttons button-sized
            expect(page.locator(".links a").first).to_be_visible()
            heights = page.evaluate("[...document.querySelectorAll('.links a')]"
                                    ".map((a) => a.getBoundingClientRect().height)")
            assert heights and max(heights) < 80
        name = path.strip("/") or "overview"
        settled(page, ARTIFACTS / f"page-{name}-{size}.png", full_page=path != "/docs")
    finally:
        context.close()


def test_the_control_room_map_shows_the_city_and_follows_an_incident(page: Page,
                                                                      city: DemoHub) -> None:
    page.set_viewport_size(SIZES["desktop"])
    visit(page, f"{city.base}/ops?token={city.token}", "/ops")
    expect(page.locator('path[data-layer="parking"]')).to_have_count(3)
    expect(page.locator('path[data-layer="environment"]')).to_have_count(5)
    expect(page.locator("#map")).to_have_attribute("data-base", "vector")
    desk = city.hub.app.state.alarms
    [incident] = [i for i in desk.incidents(None, None) if i["device"] == "lift-t02"]
    dot = page.locator(f'path[data-layer="incidents"][data-id="{incident["id"]}"]')
    expect(dot).to_have_attribute("data-state", "open")
    expect(dot).to_have_attribute("fill", "#c62828")
    # The list filters by district and unit and sorts by a header.
    page.select_option('#filters select[name="district"]', "jinshui")
    expect(page.locator("#incidents")).to_have_attribute("data-shown", "1")
    page.locator(f'#incident-{incident["id"]} button[data-act="ack"]').click()
    expect(page.locator(f'#incident-{incident["id"]}')).to_have_attribute(
        "data-state", "acknowledged")
    expect(dot).to_have_attribute("data-state", "acknowledged", timeout=10_000)
    expect(dot).to_have_attribute("fill", "#e8a200")
    page.locator(f'#incident-{incident["id"]} button[data-history]').click()
    expect(page.locator(f'tr[data-history-of="{incident["id"]}"]')).to_contain_text(
        "open → acknowledged")
    dot.click()  # the marker leads to its row
    expect(page.locator(f'#incident-{incident["id"]}')).to_have_class(re.compile("focused"))
    settled(page, ARTIFACTS / "ops-acknowledged.png")


@pytest.mark.parametrize("path", [p for p in PAGES if p != "/docs"])
def test_without_a_token_every_page_asks_to_sign_in(page: Page, city: DemoHub,
                                                    path: str) -> None:
    page.set_viewport_size(SIZES["phone"])
    page.goto(f"{city.base}{path}")
    expect(page.locator("#sign-in")).to_be_visible(timeout=10_000)
    expect(page.locator(".needs-auth")).to_be_hidden()
    if path == "/parking":  # a token pasted there opens the page
        page.locator("#sign-in-token").fill(city.token)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_selector(PAGES[path], state="attached", timeout=10_000)
        expect(page.locator("#sign-in")).to_have_count(0)
        settled(page, ARTIFACTS / "signed-in-parking-phone.png")


def test_a_one_time_link_pasted_in_the_sign_in_screen_signs_in_and_returns(
        page: Page, city: DemoHub) -> None:
    made = page.request.post(f"{city.base}/api/v1/signin-links",
                             headers={"Authorization": f"Bearer {city.token}"},
                             data={"member": "Wang Wei", "unit": "lift-maintenance",
                                   "ttl": "15min"})
    assert made.ok, made.text()
    page.set_viewport_size(SIZES["phone"])
    page.goto(f"{city.base}/environment")
    expect(page.locator("#sign-in")).to_be_visible(timeout=10_000)
    page.locator("#sign-in-token").fill(made.json()["url"])
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{city.base}/environment", timeout=10_000)
    page.wait_for_selector(PAGES["/environment"], state="attached", timeout=10_000)
    expect(page.locator("#sign-in")).to_have_count(0)
    assert page.evaluate("localStorage.getItem('citygate.token')") not in (None, city.token)


HOSTILE_PERSON = '<img src=x onerror="alert(1)">Zhou'
SOURCES = [  # around the demo's "Metro line 12 works" site (34.80, 113.68)
    {"id": "cs-metro", "kind": "construction_site", "name": "Metro depot pit",
     "company": "Metro Line 12 Construction Co.", "contact_name": HOSTILE_PERSON,
     "contact_phone": "13900000021", "outline": [[113.681, 34.801], [113.684, 34.801],
                                                [113.684, 34.803], [113.681, 34.803]]},
    {"id": "boiler-dongfeng", "kind": "boiler", "name": "Dongfeng Rd boiler",
     "lat": 34.805, "lon": 113.675, "contact_name": "Qian Bo"},
    {"id": "noodles-7", "kind": "restaurant", "name": "Noodle house 7", "lat": 34.799,
     "lon": 113.679},
]


def test_the_environment_map_shows_pollution_sources_and_their_open_tasks(
        page: Page, city: DemoHub) -> None:
    from collector.sources import Exceedance

    admin = {"Authorization": f"Bearer {city.token}"}
    for s in SOURCES:
        assert page.request.put(f"{city.base}/api/v1/sources/{s['id']}", headers=admin,
                                data=s).ok
    svc = city.hub.app.state.sources  # the district alarm at the site opens an exceedance
    opened = svc.open_exceedance(Exceedance("alarm:metro-12-works:pm10_district", 34.80, 113.68,
                                            svc.now(), site_id="metro-12-works",
                                            district="jinshui", quantity="pm10", value=300.0))
    assert opened["tasks"]
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.set_viewport_size(SIZES["desktop"])
    visit(page, f"{city.base}/environment?token={city.token}", "/environment")
    sources = page.locator('path[data-layer="sources"]')
    expect(sources).to_have_count(3)
    pit = page.locator('path[data-layer="sources"][data-id="cs-metro"]')
    expect(pit).to_have_attribute("data-kind", "construction_site")
    expect(pit).to_have_attribute("stroke", "#8d6e63")  # an outline in its kind's colour
    expect(page.locator('path[data-layer="sources"][data-id="boiler-dongfeng"]')) \
        .to_have_attribute("fill", "#37474f")
    pit.click()
    popup = page.locator('.source-popup[data-source="cs-metro"]')
    expect(popup.locator(".responsible")).to_contain_text(HOSTILE_PERSON)  # as text
    expect(popup.locator(".tasks")).to_contain_text("pushed")
    assert popup.locator("img").count() == 0
    page.locator('#sites tr[data-site="metro-12-works"]').click()
    tasks = page.locator("#owner-tasks")
    expect(tasks).to_have_attribute("data-count", str(len(opened["tasks"])))
    expect(tasks).to_contain_text("Metro depot pit")
    expect(tasks).to_contain_text(HOSTILE_PERSON)
    expect(tasks.locator("li").first).to_contain_text("#1")  # the best candidate first
    assert dialogs == [] and page.locator("#site-facts img").count() == 0
    settled(page, ARTIFACTS / "environment-sources.png")
    page.set_viewport_size(SIZES["phone"])
    assert page.evaluate("document.documentElement.scrollWidth") <= SIZES["phone"]["width"]
    settled(page, ARTIFACTS / "environment-sources-phone.png")
