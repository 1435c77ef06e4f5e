"""A zone's occupancy over time: count samples folded into hourly or daily buckets (pure)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
Bucket = Literal["hour", "day"]
BUCKET_MS: dict[str, int] = {"hour": HOUR_MS, "day": DAY_MS}


@dataclass(frozen=True, slots=True)
class Point:
    """One bucket: mean counts over the samples in it (UTC hours or days)."""

    t: int
    free_avg: float
    occupied_avg: float
    unknown_avg: float
    free_share_avg: float | None
    free_min: int
    total: int
    samples: int


def buckets(samples: Iterable[Mapping[str, Any]], by: Bucket) -> list[Point]:
    """Fold time-ordered samples into buckets; free share over capacity less closed spaces."""
    size = BUCKET_MS[by]
    groups: dict[int, list[Mapping[str, Any]]] = {}
    for s in samples:
        groups.setdefault(int(s["ts"]) - int(s["ts"]) % size, []).append(s)
    return [_point(t, rows) for t, rows in sorted(groups.items())]


def _point(t: int, rows: list[Mapping[str, Any]]) -> Point:
    n = len(rows)
    shares = [r["available"] / (r["total"] - r["closed"]) for r in rows
              if r["total"] - r["closed"] > 0]
    return Point(t, round(sum(r["available"] for r in rows) / n, 2),
                 round(sum(r["occupied"] for r in rows) / n, 2),
                 round(sum(r["unknown"] for r in rows) / n, 2),
                 round(sum(shares) / len(shares), 4) if shares else None,
                 min(int(r["available"]) for r in rows), int(rows[-1]["total"]), n)
