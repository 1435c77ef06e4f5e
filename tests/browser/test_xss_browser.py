"""Hostile text from a gateway and the config reaches every page as text, and never runs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from citygate.rig import served
from tests.browser.conftest import ARTIFACTS, CHROMIUM
from tests.collector.hostile_city import IMG, SCRIPT, SVG, HostileCity, hostile_city

if Path(CHROMIUM).exists():
    from playwright.sync_api import Page, expect
else:  # pragma: no cover - the module is skipped
    Page = Any

# Recorded by an init script (it runs before the page's own scripts, outside its CSP).
WATCH = """
window.__violations = [];
document.addEventListener("securitypolicyviolation",
  (e) => window.__violations.push(e.violatedDirective + " " + e.blockedURI));
"""
# Each page, what tells that it has drawn its data, and the hostile texts it must show.
PAGES = [
    ("/", 'body:not([data-updated="0"])', "#devices", [f"lift {IMG}"]),
    ("/crew", '#incidents[data-count="1"]', "#incidents", [SCRIPT, f"Li {SVG}"]),
    ("/ops", '#incidents[data-count="1"]', "#incidents", [SCRIPT, f"Li {SVG}"]),
    ("/parking", 'body[data-updated="1"]', "#zones", [f"Zone {SCRIPT}"]),
    ("/environment", 'body[data-updated="1"]', "#sites", [f"Site {IMG}"]),
]


@pytest.fixture
def city(tmp_path: Path) -> Iterator[HostileCity]:
    """The whole collector with hostile names in its config and hostile data sent over MQTT."""
    with hostile_city(tmp_path, over_mqtt=True) as c:
        c.feed_hostile()
        yield c


@pytest.fixture
def base(city: HostileCity) -> Iterator[str]:
    with served(city.hub.app) as url:
        yield url


@pytest.mark.parametrize(("path", "ready", "where", "texts"), PAGES,
                         ids=[p[0].strip("/") or "status" for p in PAGES])
def test_hostile_text_shows_literally_and_never_runs(page: Page, base: str, city: HostileCity,
                                                     path: str, ready: str, where: str,
                                                     texts: list[str]) -> None:
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.add_init_script(WATCH)
    page.goto(f"{base}{path}?token={city.token}")
    page.wait_for_selector(ready, state="attached", timeout=10_000)
    shown = page.locator(where)
    for text in texts:
        expect(shown).to_contain_text(text)
    marker = page.locator("path[data-layer]")
    if path in ("/parking", "/environment"):  # a map marker's tooltip shows the name as text
        marker.first.hover()
        expect(page.locator(".leaflet-tooltip-pane .leaflet-tooltip").last).to_contain_text(
            texts[0])
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"xss-{path.strip('/') or 'status'}.png"),
                    full_page=True)
    assert page.evaluate("window.__xss") is None
    assert dialogs == []
    # Nothing was injected for the CSP to block, and the page itself needs no exception.
    assert page.evaluate("window.__violations") == []
    assert page.locator("img, script:not([src]), [onerror], [onload]").count() == 0
