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

from fastapi import FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

INT64_MAX = 2**63 - 1
# 0001-01-01T00:00:00Z .. 9999-12-31T23:59:59.999Z: every value has an ISO 8601 form.
TIME_MIN_MS = -62_135_596_800_000
TIME_MAX_MS = 253_402_300_799_999

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


def install_error_shape(app: FastAPI) -> None:
    """Answer every 422 in the documented shape, also a router's `HTTPException(422, "...")`."""
    from fastapi.exception_handlers import http_exception_handler

    async def handler(request: Request, exc: Exception) -> Any:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 422 and isinstance(exc.detail, str):
            return JSONResponse(status_code=422, headers=exc.headers, content={"detail": [
                {"type": "value_error", "loc": ["request"], "msg": exc.detail}]})
        return await http_exception_handler(request, exc)

    app.add_exception_handler(StarletteHTTPException, handler)
