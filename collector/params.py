"""What the API accepts in paths and queries: numbers the stores can hold, times they can show.

Every integer a client sends ends up in a SQL parameter: SQLite and PostgreSQL BIGINT hold
signed 64-bit values, and an id, offset or time outside them is a client error (422), not a
driver overflow (500). Times are epoch milliseconds within what `datetime` (and so every ISO
8601 answer) can represent. Invalid input answers FastAPI's documented `HTTPValidationError`
shape, including the checks routers make themselves (`invalid`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
from fastapi import FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import StringConstraints
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

INT64_MAX = 2**63 - 1
# 0001-01-01T00:00:00Z .. 9999-12-31T23:59:59.999Z: every value has an ISO 8601 form.
TIME_MIN_MS = -62_135_596_800_000
TIME_MAX_MS = 253_402_300_799_999

# PostgreSQL text cannot hold NUL: no identifier or text of ours has one.
NO_NUL = r"^[^\x00]*$"
Text = Annotated[str, StringConstraints(max_length=10_000, pattern=NO_NUL)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=NO_NUL)]

RowId = Annotated[int, Path(ge=1, le=INT64_MAX, description="a row id (1 .. 2^63-1)")]
Offset = Annotated[int, Query(ge=0, le=INT64_MAX)]


def invalid(where: str, name: str, msg: str, value: Any = None) -> RequestValidationError:
    """A 422 in the documented validation-error shape, for a check a router makes itself."""
    return RequestValidationError([{"type": "value_error", "loc": (where, name), "msg": msg,
                                    "input": value}])


def parse_time(text: str | None, name: str, where: str = "query") -> int | None:
    """An ISO 8601 time or epoch milliseconds (ASCII digits) as epoch ms; None when absent."""
    if text is None or text == "":
        return None
    if text.isascii() and text.isdigit():
        ms = int(text)
    else:
        try:
            dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
            if dt.tzinfo is None:
                dt = dt.replace(tzinfo=UTC)
            ms = int(dt.timestamp() * 1000)
        except (ValueError, OverflowError):
            raise invalid(where, name, "not an ISO 8601 time or epoch ms", text) from None
    if not TIME_MIN_MS <= ms <= TIME_MAX_MS:
        raise invalid(where, name, "out of range: epoch ms of years 1 to 9999", text)
    return ms


class RefuseNul:
    """ASGI middleware: a NUL in the path or query is a 422 before any router sees it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            where = ("path" if "\x00" in scope["path"] else
                     "query" if b"%00" in scope["query_string"].lower()
                     or b"\x00" in scope["query_string"] else None)
            if where is not None:
                body = orjson.dumps({"detail": [{"type": "value_error", "loc": [where],
                                                 "msg": "contains a NUL character"}]})
                await send({"type": "http.response.start", "status": 422,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def install_error_shape(app: FastAPI) -> None:
    """Answer every 422 in the documented shape, also a router's `HTTPException(422, "...")`,
    and refuse NUL characters in paths and queries."""
    app.add_middleware(RefuseNul)
    from fastapi.exception_handlers import http_exception_handler

    async def handler(request: Request, exc: Exception) -> Any:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 422 and isinstance(exc.detail, str):
            return JSONResponse(status_code=422, headers=exc.headers, content={"detail": [
                {"type": "value_error", "loc": ["request"], "msg": exc.detail}]})
        return await http_exception_handler(request, exc)

    app.add_exception_handler(StarletteHTTPException, handler)

# Path parameters that mean the same on every route (described once for the API docs).
GatewayIdPath = Annotated[str, Path(description="a gateway id, e.g. gw-tcp-01")]
DeviceIdPath = Annotated[str, Path(description="a field device id, e.g. lift-t01 or pk-1001")]
SiteIdPath = Annotated[str, Path(description="a site id (an environmental site, or a registry "
                                             "site)")]
ZoneIdPath = Annotated[str, Path(description="a parking zone id, e.g. renmin-rd-n")]

# OpenAPI response of routes that stream server-sent events or return non-JSON bodies.
SSE_RESPONSES: dict[int | str, dict[str, Any]] = {200: {
    "description": "server-sent events (text/event-stream): `event:` names the kind, `data:` "
                   "holds one JSON object; comments keep the connection alive",
    "content": {"text/event-stream": {"schema": {
        "type": "string", "description": "an endless stream of SSE frames"}}}}}


def binary_response(media_type: str, what: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI 200 of a route whose body is a file or text, not JSON."""
    schema = {"type": "string", "format": "binary"} if "text" not in media_type \
        else {"type": "string"}
    return {200: {"description": what, "content": {media_type: {"schema": schema}}}}
