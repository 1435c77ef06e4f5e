"""History at city scale: incremental 1-minute / 1-hour aggregates, retention, history endpoint.

The 1-minute aggregates are kept inside the ingest transaction (`Store.row_writers`): the
numeric values of the freshly stored rows are folded into (device, quantity, bucket) rows with
an additive upsert, so they never rescan readings, match the raw data exactly (a re-delivered
batch is not fresh) and survive a crash together with it.

The 1-hour aggregates: on SQLite the same way. On PostgreSQL an hour is rolled up from its
minutes once it has ended (`roll_up`, a background task), because upserting a lift's hour row
on each of its reports cost PostgreSQL 9 % of its ingest CPU in the busiest hour's mix
(docs/deployment.md). `history_rollup.done_until` marks how far history_1h is complete; the
history endpoint answers later hours from history_1m, so a 1-hour series is always whole. Data
arriving for an hour rolled up already is added to history_1h by its ingest transaction, and
an advisory lock per hour orders the two (`_of_rolled_hours`).
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
from collector.ngsi.tables import (
    DAY_MS,
    HOUR_MS,
    ROLLUP_NAME,
    ROLLUP_NEVER,
    history_1h,
    history_1m,
    history_rollup,
)
from collector.params import DeviceIdPath, parse_time
from collector.store import Row, Store
from collector.store_ingest import pg_columns
from devices.quantities import QUANTITIES, ValueKind

log = logging.getLogger(__name__)
MINUTE_MS = 60_000
ROLLUP_LOCK = 7212043  # advisory lock class of an hour's roll-up (key 2: the hour's number)
ROLLUP_GRACE_MS = 120_000  # an hour is rolled up this long after its end
ROLLUP_EVERY_S = 60.0
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
            cur[2] = min(cur[2], x)
            cur[3] = max(cur[3], x)
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


# The hour's roll-up: its minutes summed into one row per device and quantity, replacing what
# history_1h held of that hour (the part an ingest wrote before the roll-up existed).
# How far history_1h is complete (None: the mark is missing, read as ROLLUP_NEVER)
_MARK = sa.select(history_rollup.c.done_until).where(history_rollup.c.name == ROLLUP_NAME)
_ROLLUP_PG = ("INSERT INTO history_1h (device_id, quantity, bucket, n, vsum, vmin, vmax)"
              " SELECT device_id, quantity, :lo, sum(n), sum(vsum), min(vmin), max(vmax)"
              " FROM history_1m WHERE bucket >= :lo AND bucket < :hi"
              " GROUP BY device_id, quantity ORDER BY device_id, quantity"
              " ON CONFLICT (device_id, quantity, bucket) DO UPDATE SET n = excluded.n,"
              " vsum = excluded.vsum, vmin = excluded.vmin, vmax = excluded.vmax")


class HistoryKeeper:
    """Aggregates and retention over one store."""

    def __init__(self, store: Store, retention: Retention | None = None) -> None:
        self.store = store
        self.retention = retention or Retention()
        self.stats: dict[str, Any] = {"aggregated": 0, "errors": 0, "pruned": {},
                                      "last_prune_s": None, "rolled_hours": 0,
                                      "rolled_until": None, "rollup_errors": 0}
        self._lock = threading.Lock()

    def write_rows(self, cur: Any, rows: list[Row]) -> None:
        """Store row writer: fold the fresh rows of an ingest transaction into history_1m, and
        into history_1h for the hours rolled up already (all of them on SQLite), in that
        transaction (driver cursor), so aggregates match raw data."""
        minute = fold(rows, MINUTE_MS)
        if not minute:
            return
        hour = rollup(minute, HOUR_MS)
        if self.store.is_pg:
            hour = self._of_rolled_hours(cur, hour)
        for table, acc in (("history_1m", minute), ("history_1h", hour)):
            if not acc:
                continue
            rows = [(d, q, b, int(v[0]), v[1], v[2], v[3]) for (d, q, b), v in sorted(acc.items())]
            if self.store.is_pg:  # one statement, rows in key order
                cur.execute(_UPSERT_PG.format(t=table),
                            pg_columns(rows))
            else:
                cur.executemany(_UPSERT.format(t=table), rows)
        with self._lock:  # several ingest writers
            self.stats["aggregated"] += len(minute)

    def _of_rolled_hours(self, cur: Any, hour: dict[Key, list[float]]) -> dict[Key, list[float]]:
        """PostgreSQL: the hour accumulators of hours rolled up already (late data), which the
        transaction adds to history_1h itself; the others reach it by `roll_up`.

        The mark only moves forward, so an hour before it as first read is done for good. The
        transaction holds the lock of each later hour it writes (the hour running, one or two
        around it: the roll-up trails the clock by ROLLUP_GRACE_MS) shared until it commits,
        and reads the mark again after taking them: an hour's roll-up (the lock exclusive)
        waits for it and reads its minutes, or it waits for the roll-up and sees the hour done.
        Either way each value is counted in history_1h exactly once.
        """
        done = self._mark(cur)
        hours = sorted({b // HOUR_MS for _d, _q, b in hour if b >= done})
        if hours:
            cur.execute("SELECT pg_advisory_xact_lock_shared(%s, h) FROM unnest(%s::integer[]) h",
                        (ROLLUP_LOCK, "{" + ",".join(map(str, hours)) + "}"))
            done = self._mark(cur)
        return {k: v for k, v in hour.items() if k[2] < done}

    @staticmethod
    def _mark(cur: Any) -> int:
        cur.execute("SELECT done_until FROM history_rollup WHERE name = %s", (ROLLUP_NAME,))
        found = cur.fetchone()
        return ROLLUP_NEVER if found is None else int(found[0])

    # --- roll-up of history_1h (PostgreSQL) ----------------------------------------------------

    def rolled_until(self) -> int:
        """Every hour before this one is complete in history_1h."""
        with self.store.engine.connect() as conn:
            done = conn.scalar(_MARK)
        return ROLLUP_NEVER if done is None else int(done)

    def roll_up(self, now: int | None = None) -> int:
        """PostgreSQL: write every hour that ended ROLLUP_GRACE_MS before `now` and is not
        rolled up yet from its minutes in history_1m into history_1h, an hour per transaction,
        oldest first; the hours written. Safe beside any number of ingest writers and of other
        collectors rolling up (see `_of_rolled_hours`)."""
        if not self.store.is_pg:
            return 0
        now = now_ms() if now is None else now
        rolled = 0
        while True:
            with self.store.engine.begin() as conn:
                done = conn.scalar(_MARK)
                if done is None or done + HOUR_MS + ROLLUP_GRACE_MS > now:
                    break
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k, :h)"),
                             {"k": ROLLUP_LOCK, "h": done // HOUR_MS})
                if conn.scalar(_MARK.with_for_update()) != done:
                    continue  # another collector rolled it up meanwhile
                conn.execute(sa.text(_ROLLUP_PG), {"lo": done, "hi": done + HOUR_MS})
                conn.execute(sa.update(history_rollup).where(
                    history_rollup.c.name == ROLLUP_NAME).values(done_until=done + HOUR_MS))
            rolled += 1
            with self._lock:
                self.stats["rolled_hours"] += 1
                self.stats["rolled_until"] = done + HOUR_MS
        return rolled

    async def run_rollup(self) -> None:
        """Background task (PostgreSQL): roll up the ended hours now and every
        ROLLUP_EVERY_S seconds."""
        if not self.store.is_pg:
            return
        while True:
            try:
                await asyncio.to_thread(self.roll_up)
            except Exception:
                self.stats["rollup_errors"] += 1
                log.exception("history: hourly roll-up failed; will retry")
            await asyncio.sleep(ROLLUP_EVERY_S)

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
            minute = min(minute, self.rolled_until())  # never minutes not rolled up yet
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
            m = history_1m
            if resolution == "1m":
                rows = conn.execute(sa.select(m.c.bucket, m.c.n, m.c.vsum, m.c.vmin, m.c.vmax)
                                    .where(m.c.device_id == device, m.c.quantity == quantity,
                                           m.c.bucket >= since, m.c.bucket < until)
                                    .order_by(m.c.bucket).limit(limit))
            else:
                rows = conn.execute(_hours(device, quantity, since, until, limit))
            return [{"t": iso(x.bucket), "count": int(x.n),
                     "avg": x.vsum / x.n if x.n else None, "min": x.vmin, "max": x.vmax}
                    for x in rows]


def _hours(device: str, quantity: str, since: int, until: int, limit: int) -> sa.Select[Any]:
    """The hour buckets of a series starting in [since, until): from history_1h for the hours
    rolled up, summed from history_1m for the later ones, in one statement (one snapshot, so a
    roll-up committing meanwhile neither hides nor repeats an hour)."""
    h, m = history_1h, history_1m
    done = sa.func.coalesce(_MARK.scalar_subquery(), ROLLUP_NEVER)
    rolled = sa.select(h.c.bucket, h.c.n, h.c.vsum, h.c.vmin, h.c.vmax).where(
        h.c.device_id == device, h.c.quantity == quantity, h.c.bucket >= since,
        h.c.bucket < until, h.c.bucket < done)
    hour = (m.c.bucket - m.c.bucket % HOUR_MS).label("bucket")
    first, end = -(-since // HOUR_MS) * HOUR_MS, -(-until // HOUR_MS) * HOUR_MS
    recent = sa.select(hour, sa.cast(sa.func.sum(m.c.n), sa.BigInteger).label("n"),
                       sa.func.sum(m.c.vsum).label("vsum"), sa.func.min(m.c.vmin).label("vmin"),
                       sa.func.max(m.c.vmax).label("vmax"),
                       ).where(m.c.device_id == device, m.c.quantity == quantity,
                               m.c.bucket >= first, m.c.bucket < end,
                               m.c.bucket >= done,
                               ).group_by(hour)
    both = sa.union_all(rolled, recent).subquery()
    return sa.select(both).order_by(both.c.bucket).limit(limit)


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
