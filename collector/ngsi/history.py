"""History at city scale: incremental 1-minute / 1-hour aggregates, retention, history endpoint.

Aggregates are kept inside the ingest transaction (`Store.row_writers`): the numeric values of
the freshly stored rows are folded into (device, quantity, bucket) rows with an additive upsert,
so they never rescan readings, match the raw data exactly (a re-delivered batch is not fresh)
and survive a crash together with it.
Retention runs as a background task: raw readings older than `raw_days`, 1-minute buckets older
than `minute_days`, 1-hour buckets older than `hour_days`. On PostgreSQL `readings` and
`history_1m` are partitioned by day, so retention drops whole partitions and deletes only what
sits in the DEFAULT partition; on SQLite it deletes in bounded chunks so ingest is never locked
out for long. Each run also creates the coming days' partitions (`Store.maintain`,
`HistoryKeeper.maintain`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import sqlalchemy as sa
from fastapi import APIRouter, HTTPException, Query, Request
from pydantic import BaseModel

from collector import partitions, schema
from collector.clock import iso, now_ms
from collector.ngsi.tables import DAY_MS, history_1h, history_1m
from collector.params import DeviceIdPath, parse_time
from collector.store import Row, Store
from collector.store_ingest import pg_columns
from devices.quantities import QUANTITIES, ValueKind

log = logging.getLogger(__name__)
MINUTE_MS, HOUR_MS = 60_000, 3_600_000
NUMERIC = {ValueKind.NUMBER, ValueKind.INTEGER}
NUMERIC_QUANTITIES = frozenset(q for q, info in QUANTITIES.items() if info.kind in NUMERIC)


@dataclass(frozen=True, slots=True)
class Retention:
    """How long each resolution is kept (days; None keeps forever) and how often to prune."""

    raw_days: float | None = 90.0
    minute_days: float | None = 400.0
    hour_days: float | None = None
    every_s: float = 3600.0
    chunk: int = 50_000


Key = tuple[str, str, int]


def fold(rows: Iterable[Row], width_ms: int) -> dict[Key, list[float]]:
    """(device, quantity, bucket) -> [n, sum, min, max] of stored rows' numeric values."""
    acc: dict[Key, list[float]] = {}
    numeric = NUMERIC_QUANTITIES
    for row in rows:
        device, q, ts, x = row[0], row[1], row[2], row[3]
        if x is None or q not in numeric:
            continue
        key = (device, q, ts - ts % width_ms)
        cur = acc.get(key)
        if cur is None:
            acc[key] = [1.0, x, x, x]
        else:
            cur[0] += 1
            cur[1] += x
            if x < cur[2]:
                cur[2] = x
            if x > cur[3]:
                cur[3] = x
    return acc


def rollup(acc: dict[Key, list[float]], width_ms: int) -> dict[Key, list[float]]:
    """Accumulators of `fold` at a coarser width (a multiple of theirs), without the rows."""
    out: dict[Key, list[float]] = {}
    for (device, q, bucket), (n, total, low, high) in acc.items():
        key = (device, q, bucket - bucket % width_ms)
        cur = out.get(key)
        if cur is None:
            out[key] = [n, total, low, high]
        else:
            cur[0] += n
            cur[1] += total
            cur[2] = min(cur[2], low)
            cur[3] = max(cur[3], high)
    return out


_UPSERT_PG = ("INSERT INTO {t} (device_id, quantity, bucket, n, vsum, vmin, vmax)"
              " SELECT d, q, b, n, s, lo, hi FROM unnest(%s::text[], %s::text[], %s::bigint[],"
              " %s::bigint[], %s::float8[], %s::float8[], %s::float8[]) WITH ORDINALITY"
              " AS x(d, q, b, n, s, lo, hi, o) ORDER BY o"
              " ON CONFLICT (device_id, quantity, bucket) DO UPDATE SET n = {t}.n + excluded.n,"
              " vsum = {t}.vsum + excluded.vsum,"
              " vmin = CASE WHEN excluded.vmin < {t}.vmin THEN excluded.vmin ELSE {t}.vmin END,"
              " vmax = CASE WHEN excluded.vmax > {t}.vmax THEN excluded.vmax ELSE {t}.vmax END")
_UPSERT = ("INSERT INTO {t} (device_id, quantity, bucket, n, vsum, vmin, vmax) "
           "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (device_id, quantity, bucket) "
           "DO UPDATE SET n = {t}.n + excluded.n, vsum = {t}.vsum + excluded.vsum, "
           "vmin = CASE WHEN excluded.vmin < {t}.vmin THEN excluded.vmin ELSE {t}.vmin END, "
           "vmax = CASE WHEN excluded.vmax > {t}.vmax THEN excluded.vmax ELSE {t}.vmax END")


class HistoryKeeper:
    """Aggregates and retention over one store."""

    def __init__(self, store: Store, retention: Retention | None = None) -> None:
        self.store = store
        self.retention = retention or Retention()
        self.stats: dict[str, Any] = {"aggregated": 0, "errors": 0, "pruned": {},
                                      "last_prune_s": None}
        self._lock = threading.Lock()

    def write_rows(self, cur: Any, rows: list[Row]) -> None:
        """Store row writer: fold the fresh rows of an ingest transaction into both
        resolutions, in that transaction (driver cursor), so aggregates match raw data."""
        minute = fold(rows, MINUTE_MS)
        hour = rollup(minute, HOUR_MS)
        if not minute:
            return
        for table, acc in (("history_1m", minute), ("history_1h", hour)):
            rows = [(d, q, b, int(v[0]), v[1], v[2], v[3]) for (d, q, b), v in sorted(acc.items())]
            if self.store.is_pg:  # one statement, rows in key order
                cur.execute(_UPSERT_PG.format(t=table),
                            pg_columns(rows))
            else:
                cur.executemany(_UPSERT.format(t=table), rows)
        with self._lock:  # several ingest writers
            self.stats["aggregated"] += len(minute)

    def maintain(self, now: int | None = None, not_before: int | None = None) -> list[str]:
        """PostgreSQL: create the day partitions of history_1m around now (`make_days`, as for
        readings); never inside an ingest transaction. Buckets of other days go to its DEFAULT."""
        if not self.store.is_pg:
            return []
        with self.store.engine.begin() as conn:
            return partitions.make_days(conn, "history_1m", "bucket",
                                        now_ms() if now is None else now, not_before)

    # --- retention ---------------------------------------------------------------------------

    def prune(self, now: int | None = None) -> dict[str, int]:
        """Apply the retention periods once; rows (or partitions) removed per table."""
        now = now_ms() if now is None else now
        started = time.perf_counter()
        ret, out = self.retention, {}
        raw, minute, hour = (None if days is None else now - int(days * DAY_MS)
                             for days in (ret.raw_days, ret.minute_days, ret.hour_days))
        self.store.maintain(now, raw)
        self.maintain(now, minute)
        if raw is not None:
            out["readings_partitions"] = self._drop_partitions("readings", raw)
            out["readings"] = self._delete_chunks(schema.readings, schema.readings.c.ts, raw)
        if minute is not None:
            out["history_1m_partitions"] = self._drop_partitions("history_1m", minute)
            out["history_1m"] = self._delete_chunks(history_1m, history_1m.c.bucket, minute)
        if hour is not None:
            out["history_1h"] = self._delete_chunks(history_1h, history_1h.c.bucket, hour)
        self.stats["pruned"] = out
        self.stats["last_prune_s"] = round(time.perf_counter() - started, 3)
        return out

    def _delete_chunks(self, table: sa.Table, ts: sa.Column[Any], cutoff: int) -> int:
        """Delete rows older than `cutoff` in transactions of at most `chunk` rows, so the
        SQLite write lock (and PostgreSQL row locks) are never held for long."""
        # a ctid repeats across partitions: on PostgreSQL the key is (tableoid, ctid)
        cols: list[Any] = ([sa.literal_column("tableoid"), sa.literal_column("ctid")]
                           if self.store.is_pg else [sa.literal_column("rowid")])
        key: Any = sa.tuple_(*cols) if self.store.is_pg else cols[0]
        total = 0
        while True:
            sub = sa.select(*cols).select_from(table).where(ts < cutoff).limit(
                self.retention.chunk)
            with self.store.engine.begin() as conn:
                n = conn.execute(sa.delete(table).where(ts < cutoff, key.in_(sub))).rowcount
            total += max(0, n or 0)
            if not n or n < self.retention.chunk:
                return total

    def _drop_partitions(self, table: str, cutoff: int) -> int:
        if not self.store.is_pg:
            return 0
        with self.store.engine.begin() as conn:
            return len(partitions.drop_before(conn, table, cutoff))

    async def run_retention(self) -> None:
        """Background task: prune now and then every `every_s` seconds."""
        while True:
            try:
                removed = await asyncio.to_thread(self.prune)
                log.info("history: retention removed %s in %ss", removed,
                         self.stats["last_prune_s"])
            except Exception:
                self.stats["errors"] += 1
                log.exception("history: retention failed; will retry")
            await asyncio.sleep(self.retention.every_s)

    # --- queries -----------------------------------------------------------------------------

    def series(self, device: str, quantity: str, since: int, until: int,
               resolution: str, limit: int) -> list[dict[str, Any]]:
        """Points of one series: raw values or aggregate buckets, in time order."""
        with self.store.engine.connect() as conn:
            if resolution == "raw":
                r = schema.readings
                rows = conn.execute(sa.select(r.c.ts, r.c.value).where(
                    r.c.device_id == device, r.c.quantity == quantity, r.c.ts >= since,
                    r.c.ts < until, r.c.value.is_not(None)).order_by(r.c.ts).limit(limit))
                return [{"t": iso(x.ts), "value": x.value} for x in rows]
            t = history_1m if resolution == "1m" else history_1h
            rows = conn.execute(sa.select(t.c.bucket, t.c.n, t.c.vsum, t.c.vmin, t.c.vmax).where(
                t.c.device_id == device, t.c.quantity == quantity, t.c.bucket >= since,
                t.c.bucket < until).order_by(t.c.bucket).limit(limit))
            return [{"t": iso(x.bucket), "count": x.n, "avg": x.vsum / x.n if x.n else None,
                     "min": x.vmin, "max": x.vmax} for x in rows]


class HistoryOut(BaseModel):
    """A device's series at one resolution."""

    device: str
    quantity: str
    unit: str
    unitCode: str
    resolution: str
    since: str
    until: str
    points: list[dict[str, Any]]
    truncated: bool


history_router = APIRouter(prefix="/api/v1", tags=["history"])


@history_router.get("/devices/{device_id}/history")
def device_history(
    request: Request, device_id: DeviceIdPath,
    quantity: Annotated[str, Query(max_length=64, description="canonical quantity name")],
    since: Annotated[str | None, Query(description="ISO 8601 or epoch ms (default: 24 h ago)")]
    = None,
    until: Annotated[str | None, Query(description="ISO 8601 or epoch ms (default: now)")] = None,
    resolution: Annotated[Literal["raw", "1m", "1h"], Query(
        description="raw readings, or 1-minute / 1-hour min/avg/max/count")] = "1m",
    limit: Annotated[int, Query(ge=1, le=100_000, description="at most this many points")]
    = 10_000,
) -> HistoryOut:
    """A device quantity over time: raw readings or 1-minute / 1-hour min/avg/max/count."""
    keeper: HistoryKeeper = request.app.state.ngsi_history
    info = QUANTITIES.get(quantity)
    if info is None:
        raise HTTPException(422, f"unknown quantity {quantity!r}")
    end = parse_time(until, "until") or now_ms()
    start = parse_time(since, "since")
    start = end - DAY_MS if start is None else start
    if start >= end:
        raise HTTPException(422, "since must be before until")
    points = keeper.series(device_id, quantity, start, end, resolution, limit + 1)
    return HistoryOut(device=device_id, quantity=quantity, unit=info.unit,
                      unitCode=info.unit_code, resolution=resolution, since=iso(start) or "",
                      until=iso(end) or "", points=points[:limit],
                      truncated=len(points) > limit)
