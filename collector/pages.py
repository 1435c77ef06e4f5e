"""The web pages: one way to serve a page (with its security headers) and the shared assets.

Every page is a static HTML file whose script and style come from same-origin files under
/static (ES modules in static/js, CSS in static/css, vendored libraries in static/vendor).
Pages carry a Content-Security-Policy that forbids inline script, so a value a gateway or a
config file smuggled into the DOM cannot run even if one escaping slip lets it through.
Nothing is loaded from outside the collector, with one configured exception: the tiles of a
production base map (`[pages] tile_url`), whose origin alone is added to `img-src`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

STATIC = Path(__file__).parent / "static"
DEMO_BASE_MAP = "/static/map/demo-city.geojson"

_CSP_PARTS = (
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data:",
    "connect-src 'self'",
    "worker-src 'self'",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
)
CONTENT_SECURITY_POLICY = "; ".join(_CSP_PARTS)
# Tokens travel once in `?token=` links: never let them leave in a Referer.
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
DEFAULT_MAP_URL = "https://www.openstreetmap.org/?mlat={lat}&mlon={lon}#map=18/{lat}/{lon}"


class PagesConfig(BaseModel):
    """The `[pages]` section of collector.toml: what the pages link to outside the collector."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    map_url: str = Field(default=DEFAULT_MAP_URL, pattern=r"^https://", max_length=500,
                         description="map/navigation link; {lat} and {lon} are filled in")
    tile_url: str | None = Field(
        default=None, max_length=500,
        pattern=r"^https://(\{s\}\.)?[^/{}\s]+/\S*\{z\}\S*\{x\}\S*\{y\}",
        description="raster tiles of the production base map ({z}/{x}/{y}); unset, the pages "
                    "draw the offline vector map shipped with the collector")
    tile_attribution: str = Field(default="", max_length=300,
                                  description="the tile provider's attribution (shown as text)")
    tile_max_zoom: int = Field(default=19, ge=1, le=22)
    base_map: str = Field(default=DEMO_BASE_MAP, pattern=r"^/static/[\w./-]+\.geojson$",
                          description="the offline vector base map (GeoJSON under /static)")
    center: tuple[float, float] | None = Field(
        default=None, description="[lat, lon] the maps open at; unset, they fit their data")

    def tile_origin(self) -> str | None:
        """The scheme and host the tiles come from (the only origin the CSP adds)."""
        if not self.tile_url:
            return None
        parts = urlsplit(self.tile_url)  # "{s}." (subdomains a, b, c) becomes a CSP wildcard
        return f"{parts.scheme}://{parts.netloc.replace('{s}', '*')}"


def content_security_policy(config: PagesConfig | None) -> str:
    """The CSP of every page: strict, plus the tile server's origin for images when set."""
    origin = config.tile_origin() if config else None
    if not origin:
        return CONTENT_SECURITY_POLICY
    return "; ".join(f"{p} {origin}" if p.startswith("img-src") else p for p in _CSP_PARTS)


def page(name: str, cache: str = "no-cache") -> HTMLResponse:
    """Serve static/<name> as a page with the security headers every page carries."""
    return HTMLResponse((STATIC / name).read_text(encoding="utf-8"),
                        headers={**PAGE_HEADERS, "Cache-Control": cache})


class _Assets(StaticFiles):
    """Static files with the page headers (nosniff matters for scripts, CSP for the worker)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(k.lower().encode(), v.encode()) for k, v in PAGE_HEADERS.items()]
                message = {**message, "headers": headers}
            await send(message)

        await super().__call__(scope, receive, with_headers)


class _TileOrigin:
    """Widen the pages' CSP by the configured tile origin (read per request from app.state)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        config = getattr(scope["app"].state, "pages", None) if "app" in scope else None
        if scope["type"] != "http" or config is None or not config.tile_url:
            await self.app(scope, receive, send)
            return
        csp = content_security_policy(config).encode()

        async def widened(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [
                    (k, csp if k == b"content-security-policy" else v)
                    for k, v in message.get("headers", [])]}
            await send(message)

        await self.app(scope, receive, widened)


router = APIRouter(include_in_schema=False)


@router.get("/pages/settings.json")
def settings(request: Request) -> dict[str, Any]:
    """What the pages need to know of the deployment (no secrets: served without a token)."""
    cfg: PagesConfig = getattr(request.app.state, "pages", None) or PagesConfig()
    return cfg.model_dump()


@router.get("/docs", response_class=HTMLResponse)
def api_docs() -> HTMLResponse:
    """Swagger UI from the vendored assets, started by a same-origin script (no CDN)."""
    return page("docs.html")


@router.get("/device", response_class=HTMLResponse)
def device_page() -> HTMLResponse:
    """One device (`?id=`): who it is, its latest values, open incidents and command panel."""
    return page("device.html")


def install(app: FastAPI, config: PagesConfig | None = None) -> None:
    """Serve /static (the shared JS and CSS), /docs and the pages' settings on an app."""
    app.state.pages = config or PagesConfig()
    app.mount("/static", _Assets(directory=STATIC), name="static")
    app.include_router(router)
    app.add_middleware(_TileOrigin)
