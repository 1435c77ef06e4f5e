"""A site's values of one quantity per averaging period: logger averages or computed ones.

HJ 212 loggers send minute (CN 2051), hour (2061) and day (2031) averages besides real-time
values (2011); the collector keeps each as its own series. Where a logger sent a period, its
values are the official ones and are returned as they are; otherwise the period is computed
from the real-time values in the database (mean, min, max and count per UTC bucket).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import sqlalchemy as sa

from collector import schema
from collector.store import Store
from devices.hj212.normalise import Interval, series_id

BUCKET_MS = {Interval.MINUTE: 60_000, Interval.HOUR: 3_600_000, Interval.DAY: 86_400_000}
DAY_MS = 86_400_000
# Widest range per period (bounded work per request) and the default when none is given.
MAX_RANGE_MS = {Interval.REALTIME: 2 * DAY_MS, Interval.MINUTE: 14 * DAY_MS,
                Interval.HOUR: 92 * DAY_MS, Interval.DAY: 3 * 366 * DAY_MS}
DEFAULT_RANGE_MS = {Interval.REALTIME: 3_600_000, Interval.MINUTE: 6 * 3_600_000,
                    Interval.HOUR: 7 * DAY_MS, Interval.DAY: 90 * DAY_MS}


@dataclass(frozen=True, slots=True)
class Avg:
    """One point: the period's start and its mean (min, max and count when computed)."""

    t: int
    avg: float
    min: float | None
    max: float | None
    n: int | None
    device: str


Source = Literal["logger", "computed", "raw"]


def _series(store: Store, devices: Sequence[str], quantity: str, since: int, until: int,
            limit: int) -> list[Avg]:
    r = schema.readings
    stmt = (sa.select(r.c.device_id, r.c.ts, r.c.value)
            .where(r.c.device_id.in_(list(devices)), r.c.quantity == quantity,
                   r.c.ts >= since, r.c.ts < until, r.c.quality != "bad",
                   r.c.value.is_not(None))
            .order_by(r.c.ts, r.c.device_id).limit(limit))
    with store.engine.connect() as conn:
        return [Avg(int(x.ts), float(x.value), None, None, None, x.device_id)
                for x in conn.execute(stmt)]


def _computed(store: Store, devices: Sequence[str], quantity: str, interval: Interval,
              since: int, until: int, limit: int) -> list[Avg]:
    r = schema.readings
    size = BUCKET_MS[interval]
    bucket = (r.c.ts - r.c.ts % size).label("bucket")
    stmt = (sa.select(bucket, sa.func.avg(r.c.value), sa.func.min(r.c.value),
                      sa.func.max(r.c.value), sa.func.count())
            .where(r.c.device_id.in_(list(devices)), r.c.quantity == quantity,
                   r.c.ts >= since, r.c.ts < until, r.c.quality != "bad",
                   r.c.value.is_not(None))
            .group_by(bucket).order_by(bucket).limit(limit))
    with store.engine.connect() as conn:
        return [Avg(int(b), round(float(a), 4), float(lo), float(hi), int(n), "")
                for b, a, lo, hi, n in conn.execute(stmt)]


def averages(store: Store, devices: Sequence[str], quantity: str, interval: Interval,
             since: int, until: int, limit: int) -> tuple[Source, list[Avg]]:
    """Points of one period in [since, until), oldest first, and where they come from."""
    if interval is Interval.REALTIME:
        return "raw", _series(store, devices, quantity, since, until, limit)
    logged = _series(store, [series_id(d, interval) for d in devices], quantity, since, until,
                     limit)
    if logged:
        return "logger", logged
    return "computed", _computed(store, devices, quantity, interval, since, until, limit)
