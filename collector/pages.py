"""The web pages: one way to serve a page (with its security headers) and the shared assets.

Every page is a static HTML file whose script and style come from same-origin files under
/static (ES modules in static/js, CSS in static/css). Pages carry a Content-Security-Policy
that forbids inline script, so a value a gateway or a config file smuggled into the DOM cannot
run even if one escaping slip lets it through. Nothing is loaded from outside the collector.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

STATIC = Path(__file__).parent / "static"

CONTENT_SECURITY_POLICY = "; ".join((
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
))
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

    map_url: str = Field(default=DEFAULT_MAP_URL, pattern=r"^https://",
                         description="map/navigation link; {lat} and {lon} are filled in")


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


router = APIRouter(include_in_schema=False)


@router.get("/pages/settings.json")
def settings(request: Request) -> dict[str, Any]:
    """What the pages need to know of the deployment (no secrets: served without a token)."""
    cfg: PagesConfig = getattr(request.app.state, "pages", None) or PagesConfig()
    return cfg.model_dump()


def install(app: FastAPI, config: PagesConfig | None = None) -> None:
    """Serve /static (the shared JS and CSS) and the pages' settings on an app."""
    app.state.pages = config or PagesConfig()
    app.mount("/static", _Assets(directory=STATIC), name="static")
    app.include_router(router)
