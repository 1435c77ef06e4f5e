"""Without a token every page shows the sign-in screen, not a raw 401; a token signs in."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from citygate.rig import served
from tests.browser.conftest import ARTIFACTS, CHROMIUM
from tests.collector.hostile_city import HostileCity, hostile_city

if Path(CHROMIUM).exists():
    from playwright.sync_api import Page, expect
else:  # pragma: no cover - the module is skipped
    Page = Any

# Each page, and what shows once it is signed in.
PAGES = [("/", 'body[data-updated]'), ("/crew", '#incidents[data-count="1"]'),
         ("/ops", '#incidents[data-count="1"]'), ("/parking", 'body[data-updated="1"]'),
         ("/environment", 'body[data-updated="1"]')]


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostileCity]:
    with hostile_city(tmp_path_factory.mktemp("city")) as c:
        c.feed_hostile()
        yield c


@pytest.fixture(scope="module")
def base(city: HostileCity) -> Iterator[str]:
    with served(city.hub.app) as url:
        yield url


@pytest.mark.parametrize(("path", "ready"), PAGES, ids=[p.strip("/") or "status" for p, _ in PAGES])
def test_sign_in_screen_instead_of_401_then_the_page(page: Page, base: str, city: HostileCity,
                                                     path: str, ready: str) -> None:
    page.set_viewport_size({"width": 360, "height": 740})
    page.goto(f"{base}{path}")
    screen = page.locator("#sign-in")
    expect(screen).to_be_visible(timeout=10_000)
    expect(page.locator("body")).to_have_attribute("data-auth", "required")
    expect(page.locator(".needs-auth")).to_be_hidden()
    if path == "/crew":
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "signin-screen-phone.png"), full_page=True)

    page.locator("#sign-in-token").fill("not a token")
    page.locator("#sign-in-form button").click()
    expect(page.locator("#sign-in-message")).to_have_text(
        "This token was not accepted. Sign in again.")

    page.locator("#sign-in-token").fill(city.token)
    page.locator("#sign-in-form button").click()
    page.wait_for_selector(ready, state="attached", timeout=10_000)
    expect(screen).to_have_count(0)
    assert page.evaluate("localStorage.getItem('citygate.token')") == city.token
