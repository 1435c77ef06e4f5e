"""The collector's one wall clock: epoch milliseconds and their ISO 8601 form.

Every stored time is epoch milliseconds (see collector/schema.py); every time a page or API
shows is `iso(ms)`. One definition keeps the rounding and the "Z" suffix the same everywhere.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime


def now_ms() -> int:
    """Wall-clock epoch milliseconds."""
    return time.time_ns() // 1_000_000


def iso(ms: int | None) -> str | None:
    """Epoch milliseconds as ISO 8601 UTC with milliseconds (`2026-12-03T11:36:01.250Z`)."""
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds") \
        .replace("+00:00", "Z")


def iso_seconds(ms: int) -> str:
    """Epoch milliseconds as ISO 8601 UTC to the second (`2026-12-03T11:36:01Z`), for links
    and messages people read."""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
