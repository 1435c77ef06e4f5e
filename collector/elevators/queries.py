"""The database reads behind the lift statistics (SQLAlchemy Core; SQLite and PostgreSQL)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from collector import schema
from collector.store import Store


def trip_samples(store: Store, device: str, since: int,
                 until: int) -> tuple[float | None, list[tuple[int, float]]]:
    """The last trip_count before `since` (or None) and the samples in [since, until)."""
    r = schema.readings
    base = (sa.select(r.c.ts, r.c.value)
            .where(r.c.device_id == device, r.c.quantity == "trip_count",
                   r.c.value.is_not(None)))
    before = base.where(r.c.ts < since).order_by(r.c.ts.desc()).limit(1)
    inside = base.where(r.c.ts >= since, r.c.ts < until).order_by(r.c.ts)
    with store.engine.connect() as conn:
        first = conn.execute(before).first()
        rows = [(int(ts), float(v)) for ts, v in conn.execute(inside)]
    return (float(first[1]) if first else None), rows


def raised_events(store: Store, since: int, until: int,
                  device: str | None = None) -> list[dict[str, Any]]:
    """Raise events in [since, until), optionally of one device, in time order."""
    e = schema.events
    stmt = (sa.select(e.c.device_id, e.c.kind, e.c.action, e.c.code, e.c.ts)
            .where(e.c.action == "raise", e.c.ts >= since, e.c.ts < until)
            .order_by(e.c.ts))
    if device is not None:
        stmt = stmt.where(e.c.device_id == device)
    with store.engine.connect() as conn:
        return [dict(row) for row in conn.execute(stmt).mappings()]


def trip_samples_many(store: Store, devices: list[str], since: int, until: int,
                      ) -> dict[str, tuple[float | None, list[tuple[int, float]]]]:
    """`trip_samples` of many lifts in two queries per 500 lifts (not two per lift)."""
    r, r2 = schema.readings, schema.readings.alias("before")
    out: dict[str, tuple[float | None, list[tuple[int, float]]]] = {}
    for i in range(0, len(devices), 500):
        chunk = devices[i:i + 500]
        last_before = (sa.select(sa.func.max(r2.c.ts))
                       .where(r2.c.device_id == r.c.device_id, r2.c.quantity == "trip_count",
                              r2.c.ts < since).scalar_subquery())
        base = (sa.select(r.c.device_id, r.c.value)
                .where(r.c.device_id.in_(chunk), r.c.quantity == "trip_count",
                       r.c.value.is_not(None), r.c.ts == last_before))
        inside = (sa.select(r.c.device_id, r.c.ts, r.c.value)
                  .where(r.c.device_id.in_(chunk), r.c.quantity == "trip_count",
                         r.c.value.is_not(None), r.c.ts >= since, r.c.ts < until)
                  .order_by(r.c.device_id, r.c.ts))
        with store.engine.connect() as conn:
            baselines = {d: float(v) for d, v in conn.execute(base)}
            samples: dict[str, list[tuple[int, float]]] = {}
            for d, ts, v in conn.execute(inside):
                samples.setdefault(d, []).append((int(ts), float(v)))
        for d in chunk:
            out[d] = (baselines.get(d), samples.get(d, []))
    return out
