"""Every page: served with its security headers, no inline script or style, nothing external."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from collector.config import CollectorConfig, CollectorConfigError
from collector.features import build_hub, open_store
from collector.pages import CONTENT_SECURITY_POLICY, DEFAULT_MAP_URL, STATIC
from tests.collector.hostile_city import hostile_city

PAGES = ["/", "/crew", "/ops", "/parking", "/environment", "/signin/not-a-code", "/docs",
         "/report", "/assessment", "/device"]
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; worker-src 'self'; object-src 'none'; base-uri 'none'; "
       "form-action 'self'; frame-ancestors 'none'")


class Markup(HTMLParser):
    """What a page pulls in, and anything that would run or style inline."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[str] = []
        self.sheets: list[str] = []
        self.inline: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.inline += [f"<{tag} {k}>" for k in a if k.startswith("on") or k == "style"]
        if tag == "script":
            if a.get("src"):
                self.scripts.append(a["src"] or "")
            else:
                self._in_script = True
                self.inline.append("<script> without src")
        elif tag == "style":
            self.inline.append("<style>")
        elif tag == "link" and a.get("rel") == "stylesheet":
            self.sheets.append(a.get("href") or "")
        for k in ("href", "src", "action"):
            v = a.get(k) or ""
            if v.startswith(("javascript:", "//")) or "://" in v:
                self.inline.append(f"<{tag} {k}={v}> leaves the collector")


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with hostile_city(tmp_path) as city, TestClient(city.hub.app) as c:
        yield c


def parse(text: str) -> Markup:
    m = Markup()
    m.feed(text)
    return m


@pytest.mark.parametrize("path", PAGES)
def test_every_page_carries_the_security_headers_and_no_inline_code(client: TestClient,
                                                                    path: str) -> None:
    resp = client.get(path)
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/html")
    assert resp.headers["content-security-policy"] == CSP == CONTENT_SECURITY_POLICY
    assert resp.headers["x-content-type-options"] == "nosniff"
    assert resp.headers["referrer-policy"] == "no-referrer"
    m = parse(resp.text)
    assert m.inline == []
    # One module of ours, after the vendored libraries it uses (Leaflet, Swagger UI).
    assert m.scripts[-1].startswith("/static/js/")
    assert all(s.startswith("/static/vendor/") for s in m.scripts[:-1])
    assert "/static/css/base.css" in m.sheets
    for asset in m.scripts + m.sheets:
        got = client.get(asset)
        assert got.status_code == 200, asset
        assert got.headers["x-content-type-options"] == "nosniff"
        kind = "text/javascript" if asset.endswith(".js") else "text/css"
        assert got.headers["content-type"].startswith(kind), asset


def test_no_page_file_has_inline_code_or_external_urls() -> None:
    """Every HTML file shipped, including ones no route serves yet."""
    files = sorted(STATIC.glob("*.html"))
    assert {f.name for f in files} >= {"status.html", "crew.html", "ops.html",
                                      "parking.html", "environment.html", "signin.html",
                                      "device.html"}
    for f in files:
        assert parse(f.read_text(encoding="utf-8")).inline == [], f.name
    for js in STATIC.glob("js/*.js"):
        text = js.read_text(encoding="utf-8")
        assert "http://" not in text.replace("http://www.w3.org/2000/svg", ""), js.name
        assert ".innerHTML =" not in text.replace("el.innerHTML = markup", ""), js.name
        assert "eval(" not in text and "new Function" not in text, js.name


def test_static_module_imports_resolve(client: TestClient) -> None:
    """Every relative import of a module names a file that is served."""
    for js in STATIC.glob("js/*.js"):
        for name in re.findall(r'from "\./([\w.-]+)"', js.read_text(encoding="utf-8")):
            assert client.get(f"/static/js/{name}").status_code == 200, (js.name, name)


def test_the_api_docs_come_from_the_package_under_the_pages_csp(client: TestClient) -> None:
    docs = client.get("/docs")
    assert docs.headers["content-security-policy"] == CSP
    assert "/static/vendor/swagger-ui/swagger-ui-bundle.js" in parse(docs.text).scripts
    assert client.get("/openapi.json").json()["info"]["title"] == "CityGate data hub"
    assert client.get("/redoc").status_code == 404  # it would load its script from a CDN


def test_a_tile_server_is_the_one_origin_added_and_only_for_images(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'hub.sqlite'}")
    tiles = {"tile_url": "https://{s}.tiles.example.org/{z}/{x}/{y}.png",
             "tile_attribution": "© Example"}
    hub = build_hub(store, CollectorConfig(pages=tiles), dict, admin_token_file=tmp_path / "t")
    try:
        c = TestClient(hub.app)
        for path in ("/parking", "/static/js/map.js"):
            csp = c.get(path).headers["content-security-policy"]
            assert csp == CSP.replace("img-src 'self' data:",
                                      "img-src 'self' data: https://*.tiles.example.org"), path
        assert c.get("/pages/settings.json").json()["tile_url"] == tiles["tile_url"]
        for bad in ("http://tiles.example.org/{z}/{x}/{y}.png", "https://x.org/{z}/{y}.png",
                    "https://x.org'; script-src *; /{z}/{x}/{y}"):
            with pytest.raises(CollectorConfigError, match=r"\[pages\] tile_url"):
                build_hub(store, CollectorConfig(pages={"tile_url": bad}), dict,
                          admin_token_file=tmp_path / "t")
    finally:
        asyncio.run(hub.close())
        store.close()


def test_the_demo_base_map_is_shipped_and_covers_the_districts(client: TestClient) -> None:
    base = client.get("/static/map/demo-city.geojson").json()
    layers = {f["properties"]["layer"] for f in base["features"]}
    assert layers == {"district", "road", "place"}
    districts = {f["properties"]["id"] for f in base["features"]
                 if f["properties"]["layer"] == "district"}
    assert districts == {"zhongyuan", "jinshui", "erqi", "guancheng"}
    for asset in ("vendor/leaflet/leaflet.js", "vendor/leaflet/leaflet.css",
                  "vendor/swagger-ui/swagger-ui-bundle.js", "vendor/swagger-ui/swagger-ui.css"):
        assert client.get(f"/static/{asset}").status_code == 200, asset


def test_map_link_base_comes_from_the_config(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'hub.sqlite'}")

    def settings(pages: dict[str, str]) -> object:
        hub = build_hub(store, CollectorConfig(pages=pages), dict,
                        admin_token_file=tmp_path / "t")
        try:
            return TestClient(hub.app).get("/pages/settings.json").json()
        finally:
            asyncio.run(hub.close())

    try:
        assert settings({})["map_url"] == DEFAULT_MAP_URL  # type: ignore[index]
        amap = "https://uri.amap.com/marker?position={lon},{lat}"
        assert settings({"map_url": amap})["map_url"] == amap  # type: ignore[index]
        with pytest.raises(CollectorConfigError, match=r"\[pages\] map_url"):
            build_hub(store, CollectorConfig(pages={"map_url": "javascript:alert(1)"}), dict,
                      admin_token_file=tmp_path / "t")
    finally:
        store.close()
