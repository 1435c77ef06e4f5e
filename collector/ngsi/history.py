"""History at city scale: incremental 1-minute / 1-hour aggregates, retention, history endpoint.

Aggregates are maintained from the stored hook (numeric values of a committed batch, folded
into (device, quantity, bucket) rows with an additive upsert), so they never rescan readings.
Retention runs as a background task: raw readings older than `raw_days`, 1-minute buckets older
than `minute_days` (dropping whole day partitions on PostgreSQL), 1-hour buckets older than
`hour_days`. Deletes go in bounded chunks so ingest is never locked out for long.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import sqlalchemy as sa
from fastapi import APIRouter, HTTPException, Query, Request
from pydantic import BaseModel

from collector import schema
from collector.api import iso, parse_time
from collector.ngsi.tables import DAY_MS, ensure_partition, history_1h, history_1m
from collector.store import Accepted, Store, now_ms
from devices.contract import DataEnvelope
from devices.quantities import QUANTITIES, ValueKind

log = logging.getLogger(__name__)
MINUTE_MS, HOUR_MS = 60_000, 3_600_000
NUMERIC = {ValueKind.NUMBER, ValueKind.INTEGER}
SEEN_MAX = 200_000


@dataclass(frozen=True, slots=True)
class Retention:
    """How long each resolution is kept (days; None keeps forever) and how often to prune."""

    raw_days: float | None = 90.0
    minute_days: float | None = 400.0
    hour_days: float | None = None
    every_s: float = 3600.0
    chunk: int = 50_000


Key = tuple[str, str, int]


def fold(items: Iterable[Accepted], width_ms: int) -> dict[Key, list[float]]:
    """(device, quantity, bucket) -> [n, sum, min, max] of a batch's numeric values."""
    acc: dict[Key, list[float]] = {}
    for a in items:
        env = a.envelope
        if not isinstance(env, DataEnvelope):
            continue
        for r in env.readings:
            bucket = r.ts - r.ts % width_ms
            for q, v in r.values.items():
                info = QUANTITIES.get(q)
                if info is None or info.kind not in NUMERIC or v is None or \
                        isinstance(v, bool | str):
                    continue
                x = float(v)
                cur = acc.get((r.device, q, bucket))
                if cur is None:
                    acc[(r.device, q, bucket)] = [1.0, x, x, x]
                else:
                    cur[0] += 1
                    cur[1] += x
                    cur[2] = min(cur[2], x)
                    cur[3] = max(cur[3], x)
    return acc


_UPSERT = ("INSERT INTO {t} (device_id, quantity, bucket, n, vsum, vmin, vmax) "
           "VALUES (:d, :q, :b, :n, :s, :lo, :hi) ON CONFLICT (device_id, quantity, bucket) "
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
        self._days: set[int] = set()
        self._seen: dict[tuple[str, int], None] = {}

    def on_stored(self, items: list[Accepted]) -> None:
        """Stored hook: fold the batch into both resolutions (never raises into ingest).

        Hooks also see re-delivered (gateway, seq) pairs, so recently folded ones are skipped
        (an LRU of `SEEN_MAX` keys; see docs/hub-feed.md for the restart caveat).
        """
        fresh = []
        for a in items:
            key = (a.gateway, a.envelope.seq)
            if key in self._seen:
                continue
            self._seen[key] = None
            fresh.append(a)
        while len(self._seen) > SEEN_MAX:
            self._seen.pop(next(iter(self._seen)))
        try:
            self.add(fresh)
        except Exception:
            self.stats["errors"] += 1
            log.exception("history: aggregate update failed; raw readings are stored")

    def add(self, items: list[Accepted]) -> int:
        """Fold a batch into history_1m and history_1h; the number of minute rows touched."""
        minute, hour = fold(items, MINUTE_MS), fold(items, HOUR_MS)
        if not minute:
            return 0
        with self.store.engine.begin() as conn:
            for day in {b - b % DAY_MS for _, _, b in minute} - self._days:
                ensure_partition(conn, day)
                self._days.add(day)
            for table, acc in (("history_1m", minute), ("history_1h", hour)):
                conn.execute(sa.text(_UPSERT.format(t=table)), [
                    {"d": d, "q": q, "b": b, "n": int(v[0]), "s": v[1], "lo": v[2], "hi": v[3]}
                    for (d, q, b), v in sorted(acc.items())])
        self.stats["aggregated"] += len(minute)
        return len(minute)

    # --- retention ---------------------------------------------------------------------------

    def prune(self, now: int | None = None) -> dict[str, int]:
        """Apply the retention periods once; rows (or partitions) removed per table."""
        now = now_ms() if now is None else now
        started = time.perf_counter()
        ret, out = self.retention, {}
        if ret.raw_days is not None:
            out["readings"] = self._delete_chunks(schema.readings, schema.readings.c.ts,
                                                  now - int(ret.raw_days * DAY_MS))
        if ret.minute_days is not None:
            cutoff = now - int(ret.minute_days * DAY_MS)
            out["history_1m_partitions"] = self._drop_partitions(cutoff)
            out["history_1m"] = self._delete_chunks(history_1m, history_1m.c.bucket, cutoff)
        if ret.hour_days is not None:
            out["history_1h"] = self._delete_chunks(history_1h, history_1h.c.bucket,
                                                    now - int(ret.hour_days * DAY_MS))
        self.stats["pruned"] = out
        self.stats["last_prune_s"] = round(time.perf_counter() - started, 3)
        return out

    def _delete_chunks(self, table: sa.Table, ts: sa.Column[Any], cutoff: int) -> int:
        total = 0
        while True:
            with self.store.engine.begin() as conn:
                if table is schema.readings and not self.store.is_pg:
                    sub: Any = sa.select(sa.literal_column("rowid")).select_from(table).where(
                        ts < cutoff).limit(self.retention.chunk)
                    n = conn.execute(sa.delete(table).where(
                        sa.literal_column("rowid").in_(sub))).rowcount
                elif table is schema.readings:
                    sub = sa.select(sa.literal_column("ctid")).select_from(table).where(
                        ts < cutoff).limit(self.retention.chunk)
                    n = conn.execute(sa.delete(table).where(
                        sa.literal_column("ctid").in_(sub.scalar_subquery()))).rowcount
                else:
                    n = conn.execute(sa.delete(table).where(ts < cutoff)).rowcount
            total += max(0, n or 0)
            if not n or n < self.retention.chunk or table is not schema.readings:
                return total

    def _drop_partitions(self, cutoff: int) -> int:
        if not self.store.is_pg:
            return 0
        dropped = 0
        with self.store.engine.begin() as conn:
            names = conn.execute(sa.text(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'history_1m' "
                "AND c.relname ~ '^history_1m_d[0-9]+$'")).scalars().all()
            for name in names:
                day = int(name.removeprefix("history_1m_d")) * DAY_MS
                if day + DAY_MS <= cutoff:
                    conn.execute(sa.text(f"DROP TABLE {name}"))
                    self._days.discard(day)
                    dropped += 1
        return dropped

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
    request: Request, device_id: str, quantity: str,
    since: Annotated[str | None, Query(description="ISO 8601 or epoch ms (default: 24 h ago)")]
    = None,
    until: Annotated[str | None, Query(description="ISO 8601 or epoch ms (default: now)")] = None,
    resolution: Literal["raw", "1m", "1h"] = "1m",
    limit: Annotated[int, Query(ge=1, le=100_000)] = 10_000,
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
