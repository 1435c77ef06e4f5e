"""History at scale: query latency, ingest with the hub feeds off and on, retention.

    .venv/bin/python bench/bench_history.py --sizes-pg 1e6,1e7,1e8 --sizes-sqlite 1e6,1e7
        [--reps 200] [--pg URL] [--backends sqlite,postgresql] [--batches 300] ...
    .venv/bin/python -m bench history          # default (small) sizes: bench/__main__.py
                                               # passes no options through

One store per backend grows through the sizes in turn (each step loads only the new rows), so
10^8 readings need one load. The data: 10,000 parking sensors in 100 zones (`pk-ZZZSSS`, zone
gateway `gw-ZZZ`), one `battery_mv` reading per device per minute, ending at T0 at the largest
size (10^8 readings span 6.9 days back from T0), plus the matching 1-minute and 1-hour
aggregates (`--aggregates none` skips them). The table grows forward in time, as a live
store does: each step appends the next minutes, and the queries look at the newest data. On
PostgreSQL the day partitions covering the data are created first (as `Store.maintain` does
around now) and rows are generated server-side (`INSERT ... SELECT FROM generate_series`,
one transaction per chunk of whole hours, `--loaders` connections side by side, then VACUUM
ANALYZE); on SQLite by recursive-CTE inserts (chunked transactions, then ANALYZE).

At each size:
- query latency p50/p99 (random zone or device per repetition; Python's GC off while timing
  unless --gc-in-queries): latest-by-zone (one zone's 100 devices from `latest`), one device's
  day (`Store.readings`, the 24 h ending at the newest reading: 1,440 rows once the data spans
  a day), a zone's hour (100 devices x 60 rows); the device's day and the zone's hour through
  the aggregates too (`HistoryKeeper.series` 1m/1h, the zone's hour on `history_1m`);
- ingest of 100-reading envelopes (2 values each), one envelope per `Store.ingest`: "off" =
  `Store.ingest` alone, "on" = with `install_ngsi` wired (the history row writer inside the
  transaction, then the feeds' stored-batch hook, a webhook subscription, the broker push to
  a local HTTP server, `HubFeedWorker.run` in a background event loop). Runs alternate
  off,on,off,on,off,on (medians of 3 each), with how long the worker took to empty its queues
  after each "on" run; then one diagnostic run each with only the history row writer and with
  the feeds installed but the worker not running;
- on PostgreSQL, at the first and last size, the plans of the device-day and zone-hour queries
  (partitions scanned, custom and generic plan).
At the largest size: `HistoryKeeper.prune(now=T0)` with a retention that drops the 2 oldest
days (partition drop on PostgreSQL, DELETE on SQLite), run in a thread while ingest goes on.

The PostgreSQL database (citygate_bench_<random>) is dropped at the end, also on error/SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import math
import os
import random
import re
import shutil
import signal
import sqlite3
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import psycopg
import psycopg.sql
import sqlalchemy as sa

from collector import partitions
from collector.api import create_app
from collector.config import CollectorConfig
from collector.features import open_store
from collector.ngsi.egress import EgressPolicy
from collector.ngsi.history import HistoryKeeper, Retention
from collector.ngsi.install import HubFeedSettings, install_ngsi
from collector.ngsi.subscriptions import validate_subscription
from collector.ngsi.tables import ngsi_subscriptions
from collector.ngsi.worker import HubFeedWorker
from collector.store import Accepted, Store
from devices.contract import DataEnvelope

ZONES, SPOTS = 100, 100
DEVICES = ZONES * SPOTS  # 10,000 parking sensors
MINUTE_MS, HOUR_MS, DAY_MS = 60_000, 3_600_000, 86_400_000
T0 = 1_760_000_000_000  # newest reading at the largest size (2025-10-09 08:53:20 UTC)
PG_BYTES_PER_ROW = 250  # readings + index + 1m aggregate + WAL slack, for the disk check
COLS = "device_id, quantity, ts, value, vtext, quality, gateway_id, seq, replay"
LOCAL_SINK = EgressPolicy.parse(["127.0.0.1"])  # the bench's webhook sink listens on loopback


def dev(i: int) -> str:
    """Device id of sensor i (0..9,999): pk-<zone><spot>."""
    return f"pk-{i // SPOTS:03d}{i % SPOTS:03d}"


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile (0..100) by linear interpolation."""
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def median(values: list[float]) -> float:
    """Median (nan when empty)."""
    return percentile(values, 50) if values else math.nan


# --- loading --------------------------------------------------------------------------------
#
# Row k (0-based) of a backend's data set: sensor k % 10,000 at minute k // 10,000 after its
# start, so that row n - 1 is at T0 when n is the largest size. A growth step appends rows
# [a, b) in time order, chunk by chunk, as live ingest would (a device's index keys are
# appended, its rows spread over the heap pages of each minute).

def start_of(largest: int) -> int:
    """Time of the first minute of a data set whose largest size is `largest` rows."""
    return T0 - (largest // DEVICES - 1) * MINUTE_MS


def newest(start: int, n: int) -> int:
    """Time of the newest reading when n rows are loaded."""
    return start + (n // DEVICES - 1) * MINUTE_MS


def ingest_start(start: int, n: int) -> int:
    """Ingest-phase readings start at the whole hour after the newest loaded one."""
    e = newest(start, n)
    return e - e % HOUR_MS + HOUR_MS


PG_DEV = "'pk-' || to_char(d / 100, 'FM000') || to_char(d % 100, 'FM000')"
SQ_DEV = "printf('pk-%03d%03d', d / 100, d % 100)"


def _pg_rows(start: int, a: int, b: int) -> str:
    """Rows k in [a, b) as a PostgreSQL sub-select (d, k, ts, v)."""
    return (f"(SELECT k % {DEVICES} AS d, k, {start} + (k / {DEVICES}) * {MINUTE_MS} AS ts, "
            f"(3000 + (k * 7) % 600)::float8 AS v FROM generate_series({a}::bigint, "
            f"{b - 1}::bigint) AS k) g")


def _sq_rows(start: int, a: int, b: int) -> str:
    """Rows k in [a, b) as an SQLite sub-select (d, k, ts, v)."""
    return (f"(WITH RECURSIVE s(k) AS (SELECT {a} UNION ALL SELECT k + 1 FROM s WHERE k < "
            f"{b - 1}) SELECT k % {DEVICES} AS d, k, {start} + (k / {DEVICES}) * {MINUTE_MS} "
            "AS ts, 3000.0 + (k * 7) % 600 AS v FROM s)")


def _readings_sql(dev_expr: str, gw_expr: str, false: str, rows: str) -> str:
    return (f"INSERT INTO readings ({COLS}) SELECT {dev_expr}, 'battery_mv', ts, v, NULL, "
            f"'good', {gw_expr}, k / {DEVICES}, {false} FROM {rows}")


def _agg_1m_sql(dev_expr: str, rows: str) -> str:
    return ("INSERT INTO history_1m (device_id, quantity, bucket, n, vsum, vmin, vmax) "
            f"SELECT {dev_expr}, 'battery_mv', ts - ts % {MINUTE_MS}, 1, v, v, v FROM {rows}")


def _agg_1h_sql(dev_expr: str, rows: str, lo: str, hi: str) -> str:
    """The additive upsert of hour buckets, as HistoryKeeper does it (a chunk may split one)."""
    return ("INSERT INTO history_1h (device_id, quantity, bucket, n, vsum, vmin, vmax) "
            f"SELECT {dev_expr}, 'battery_mv', ts - ts % {HOUR_MS} AS b, count(*), sum(v), "
            f"min(v), max(v) FROM {rows} WHERE true GROUP BY d, b "
            "ON CONFLICT (device_id, quantity, bucket) DO UPDATE SET "
            "n = history_1h.n + excluded.n, vsum = history_1h.vsum + excluded.vsum, "
            f"vmin = {lo}(history_1h.vmin, excluded.vmin), "
            f"vmax = {hi}(history_1h.vmax, excluded.vmax)")


@dataclass
class LoadTimes:
    """Seconds spent on one growth step."""

    rows: int = 0
    readings_s: float = 0.0
    aggregates_s: float = 0.0
    analyze_s: float = 0.0


def plan_chunks(start: int, a: int, b: int, chunk: int) -> list[tuple[int, int]]:
    """Rows [a, b) cut at whole hours into pieces of at most `chunk` rows within one UTC day.

    No two pieces share an hour bucket, so loaders running side by side never upsert the same
    history_1h row. Ordered round-robin over the days, so they mostly fill different partitions.
    """
    pieces, lo = [], a
    for m in range(a // DEVICES + 1, b // DEVICES):
        t, prev = start + m * MINUTE_MS, start + (m - 1) * MINUTE_MS
        if t // HOUR_MS == prev // HOUR_MS:
            continue
        if t // DAY_MS != prev // DAY_MS or m * DEVICES - lo + 60 * DEVICES > chunk:
            pieces.append((lo, m * DEVICES))
            lo = m * DEVICES
    pieces.append((lo, b))
    by_day: dict[int, list[tuple[int, int]]] = {}
    for p in pieces:
        by_day.setdefault((start + p[0] // DEVICES * MINUTE_MS) // DAY_MS, []).append(p)
    days = list(by_day.values())
    return [d[i] for i in range(max(map(len, days))) for d in days if i < len(d)]


def _parallel(url: str, loaders: int, jobs: list[tuple[str, list[str]]]) -> float:
    """Run each (label, statements) job in its own transaction on `loaders` connections."""
    from concurrent.futures import ThreadPoolExecutor

    def one(job: tuple[str, list[str]]) -> None:
        label, statements = job
        t = time.perf_counter()
        with psycopg.connect(url) as conn:
            for sql in statements:
                conn.execute(sql)
        print(f"    {label}: {time.perf_counter() - t:.1f} s", flush=True)

    t = time.perf_counter()
    with ThreadPoolExecutor(loaders) as pool:
        list(pool.map(one, jobs))
    return time.perf_counter() - t


def load_pg(url: str, start: int, a: int, b: int, chunk: int, aggregates: bool,
            loaders: int) -> LoadTimes:
    """Rows [a, b) generated server-side, one transaction per chunk on `loaders` connections
    side by side (readings first, then the aggregates); then VACUUM ANALYZE."""
    times = LoadTimes()
    if a == 0:
        with psycopg.connect(url) as conn:
            _static_rows(conn, "%s")
    pieces = plan_chunks(start, a, b, chunk)
    times.readings_s = _parallel(url, loaders, [
        (f"readings [{lo:,}, {hi:,})", [_readings_sql(
            PG_DEV, "'gw-' || to_char(d / 100, 'FM000')", "false", _pg_rows(start, lo, hi))])
        for lo, hi in pieces])
    if aggregates:
        times.aggregates_s = _parallel(url, loaders, [
            (f"aggregates [{lo:,}, {hi:,})", [
                _agg_1m_sql(PG_DEV, _pg_rows(start, lo, hi)),
                _agg_1h_sql(PG_DEV, _pg_rows(start, lo, hi), "least", "greatest")])
            for lo, hi in pieces])
    with psycopg.connect(url) as conn:
        conn.execute("UPDATE latest SET ts = %s", (newest(start, b),))
    t = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET maintenance_work_mem = '1GB'")
        conn.execute("VACUUM (ANALYZE) readings, history_1m, history_1h, latest, devices")
    times.analyze_s = time.perf_counter() - t
    return times


def load_sqlite(path: Path, start: int, a: int, b: int, chunk: int,
                aggregates: bool) -> LoadTimes:
    """Rows [a, b) by recursive-CTE inserts in chunked transactions; then ANALYZE.

    A connection of its own (with a large page cache) so the store's pool keeps the default.
    """
    times = LoadTimes()
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA cache_size=-2000000")
        if a == 0:
            conn.execute("BEGIN")
            _static_rows(conn, "?")
            conn.execute("COMMIT")
        for lo in range(a, b, chunk):
            hi = min(b, lo + chunk)
            t = time.perf_counter()
            conn.execute("BEGIN")
            conn.execute(_readings_sql(SQ_DEV, "printf('gw-%03d', d / 100)", "0",
                                       _sq_rows(start, lo, hi)))
            conn.execute("COMMIT")
            times.readings_s += time.perf_counter() - t
            if aggregates:
                t = time.perf_counter()
                conn.execute("BEGIN")
                conn.execute(_agg_1m_sql(SQ_DEV, _sq_rows(start, lo, hi)))
                conn.execute(_agg_1h_sql(SQ_DEV, _sq_rows(start, lo, hi), "min", "max"))
                conn.execute("COMMIT")
                times.aggregates_s += time.perf_counter() - t
        conn.execute("UPDATE latest SET ts = ?", (newest(start, b),))
        t = time.perf_counter()
        conn.execute("ANALYZE")
        times.analyze_s = time.perf_counter() - t
    finally:
        conn.close()
    return times


def _static_rows(conn: Any, ph: str) -> None:
    """devices, gateways and `latest` (battery_mv and rssi of every sensor)."""
    def run(sql: str, rows: list[tuple[Any, ...]]) -> None:
        cur = conn.cursor()
        cur.executemany(sql.replace("?", ph), rows)
    run("INSERT INTO gateways (gateway_id, state, state_reason, version, boot, last_seq, "
        "last_seen) VALUES (?, 'online', '', '1', 'b', 0, ?)",
        [(f"gw-{z:03d}", T0) for z in range(ZONES)])
    run("INSERT INTO devices (device_id, gateway_id, kind, profile, first_seen, last_seen) "
        "VALUES (?, ?, 'parking_sensor', 'bench', ?, ?)",
        [(dev(i), f"gw-{i // SPOTS:03d}", T0 - 30 * DAY_MS, T0) for i in range(DEVICES)])
    run("INSERT INTO latest (device_id, quantity, ts, value, vtext, quality, gateway_id) "
        "VALUES (?, ?, ?, ?, NULL, 'good', ?)",
        [(dev(i), q, T0, v, f"gw-{i // SPOTS:03d}") for i in range(DEVICES)
         for q, v in (("battery_mv", 3000.0 + (i * 7) % 600), ("rssi", -60.0 - i % 40))])


# --- queries ----------------------------------------------------------------------------------

def timed(fn: Callable[[random.Random], object], reps: int, seed: int,
          gc_on: bool = False) -> tuple[float, float]:
    """p50 and p99 in ms over `reps` calls (each with its own random zone/device).

    Python's cyclic GC is off while timing unless asked: its full collections (60-100 ms in
    this process) otherwise land in the p99 of every query returning thousands of rows.
    """
    rnd = random.Random(seed)
    fn(rnd)  # warm the pool connection and the statement
    samples = []
    gc.collect()
    if not gc_on:
        gc.disable()
    try:
        for _ in range(reps):
            t = time.perf_counter()
            fn(rnd)
            samples.append((time.perf_counter() - t) * 1000)
    finally:
        gc.enable()
    return percentile(samples, 50), percentile(samples, 99)


def zone_devices(rnd: random.Random) -> list[str]:
    """The 100 sensors of a random zone."""
    z = rnd.randrange(ZONES)
    return [dev(z * SPOTS + s) for s in range(SPOTS)]


ZONE_HOUR = ("SELECT device_id, ts, value FROM readings WHERE device_id IN :d AND "
             "quantity = 'battery_mv' AND ts >= :a AND ts < :b")
ZONE_HOUR_1M = ("SELECT device_id, bucket, n, vsum, vmin, vmax FROM history_1m WHERE "
                "device_id IN :d AND quantity = 'battery_mv' AND bucket >= :a AND bucket < :b")
Shape = tuple[Callable[[random.Random], list[Any]], int]


def query_shapes(store: Store, keeper: HistoryKeeper, aggregates: bool, start: int,
                 n: int) -> dict[str, Shape]:
    """name -> (query taking a Random, rows it must return with n rows loaded)."""
    end = newest(start, n) + 1  # windows end just after the newest reading
    day, hour = (end - DAY_MS, end), (end - HOUR_MS, end)

    def rows_in(lo: int, hi: int, width: int) -> int:
        """Buckets (or readings) of one device in [lo, hi)."""
        first = start - start % width
        lo = max(lo + (-lo) % width, first)  # the first bucket start >= lo
        return max(0, (hi - 1 - (hi - 1) % width - lo) // width + 1)

    def in_list(sql: str) -> sa.TextClause:
        return sa.text(sql).bindparams(sa.bindparam("d", expanding=True))

    def latest_by_zone(rnd: random.Random) -> list[Any]:
        with store.engine.connect() as c:
            return list(c.execute(in_list("SELECT * FROM latest WHERE device_id IN :d"),
                                  {"d": zone_devices(rnd)}))

    def device_day(rnd: random.Random) -> list[Any]:
        return store.readings(dev(rnd.randrange(DEVICES)), "battery_mv", *day, 100_000)

    def zone_hour(rnd: random.Random) -> list[Any]:
        with store.engine.connect() as c:
            return list(c.execute(in_list(ZONE_HOUR), {"d": zone_devices(rnd),
                                                       "a": hour[0], "b": hour[1]}))

    def series(resolution: str) -> Callable[[random.Random], list[Any]]:
        def run(rnd: random.Random) -> list[Any]:
            return keeper.series(dev(rnd.randrange(DEVICES)), "battery_mv", *day, resolution,
                                 100_000)
        return run

    def zone_hour_1m(rnd: random.Random) -> list[Any]:
        with store.engine.connect() as c:
            return list(c.execute(in_list(ZONE_HOUR_1M), {"d": zone_devices(rnd),
                                                          "a": hour[0], "b": hour[1]}))

    minutes = n // DEVICES
    shapes: dict[str, Shape] = {
        "latest_by_zone": (latest_by_zone, 2 * SPOTS),
        "device_day": (device_day, min(1440, minutes)),
        "zone_hour": (zone_hour, SPOTS * min(60, minutes)),
    }
    if aggregates:
        shapes |= {"device_day_1m": (series("1m"), rows_in(*day, MINUTE_MS)),
                   "device_day_1h": (series("1h"), rows_in(*day, HOUR_MS)),
                   "zone_hour_1m": (zone_hour_1m, SPOTS * rows_in(*hour, MINUTE_MS))}
    return shapes


def run_queries(store: Store, keeper: HistoryKeeper, aggregates: bool, reps: int, start: int,
                n: int, gc_on: bool = False) -> dict[str, tuple[float, float]]:
    """p50/p99 of every query shape (after checking each returns the expected row count)."""
    out = {}
    for i, (name, (fn, want)) in enumerate(
            query_shapes(store, keeper, aggregates, start, n).items()):
        got = len(fn(random.Random(99)))
        if got != want:
            print(f"    WARNING {name}: {got} rows, expected {want}", flush=True)
        out[name] = p50, p99 = timed(fn, reps, 1000 + i, gc_on)
        print(f"    {name:15s} {got:>6,} rows  p50 {p50:8.2f} ms  p99 {p99:8.2f} ms",
              flush=True)
    return out


SCAN = re.compile(r"(Seq Scan|Index Only Scan|(?<!Bitmap )Index Scan|Bitmap Heap Scan)"
                  r"(?: using \S+)? on (readings_\w+)")


def explain_pg(store: Store, start: int, n: int) -> list[str]:
    """Partitions the device-day and zone-hour queries touch, with a custom and a generic plan.

    The SQL is captured from the real calls (Store.readings and the zone-hour query), prepared,
    and run under EXPLAIN ANALYZE with plan_cache_mode forced each way.
    """
    captured: list[tuple[str, Any]] = []

    def grab(_c: Any, _cur: Any, statement: str, params: Any, _ctx: Any, _many: bool) -> None:
        if "FROM readings" in statement:
            captured.append((statement, params))

    end = newest(start, n) + 1
    sa.event.listen(store.engine, "before_cursor_execute", grab)
    try:
        store.readings(dev(4217), "battery_mv", end - DAY_MS, end, 100_000)
        with store.engine.connect() as c:
            c.execute(sa.text(ZONE_HOUR).bindparams(sa.bindparam("d", expanding=True)),
                      {"d": [dev(4200 + s) for s in range(SPOTS)], "a": end - HOUR_MS,
                       "b": end})
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", grab)
    lines = []
    raw = store.engine.raw_connection()
    try:
        conn: Any = raw.driver_connection
        for label, (stmt, params) in zip(("device_day", "zone_hour"), captured, strict=True):
            names = list(params)
            sql = stmt
            for i, k in enumerate(names, 1):
                sql = sql.replace(f"%({k})s", f"${i}")
            args = ", ".join(psycopg.sql.Literal(params[k]).as_string(conn) for k in names)
            for mode in ("custom", "generic"):
                conn.execute(f"SET plan_cache_mode = force_{mode}_plan")
                conn.execute(f"PREPARE bench_q AS {sql}")
                plan = [r[0] for r in conn.execute(
                    "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) EXECUTE "
                    f"bench_q ({args})")]
                conn.execute("DEALLOCATE bench_q")
                scans = [m.groups() for line in plan if (m := SCAN.search(line))]
                scanned = sorted({table for _node, table in scans})
                nodes = sorted({node for node, _table in scans})
                removed = [line.strip() for line in plan if "Subplans Removed" in line]
                lines.append(f"  {label:10s} {mode:7s} plan: {len(scanned)} partition(s) "
                             f"scanned {scanned} by {nodes}"
                             + (f"; {'; '.join(removed)}" if removed else ""))
            conn.execute("RESET plan_cache_mode")
    finally:
        raw.rollback()
        raw.close()
    with store.engine.connect() as c:
        total = len(partitions.partitions(c, "readings"))
    lines.append(f"  ({total} day partitions of readings exist, plus readings_default)")
    return lines


# --- ingest with the hub feeds off and on ----------------------------------------------------

class Sink(BaseHTTPRequestHandler):
    """Context broker and webhook endpoint: accepts everything."""

    protocol_version = "HTTP/1.1"
    counts: dict[str, int] = {"broker": 0, "webhook": 0}  # noqa: RUF012
    lock = threading.Lock()

    def do_POST(self) -> None:
        """Read the body and answer 204."""
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with self.lock:
            self.counts["broker" if "entityOperations" in self.path else "webhook"] += 1
        self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


@contextlib.contextmanager
def sink_server() -> Iterator[str]:
    """A local HTTP server on a free port; its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class Feeds:
    """A Hub with the hub feeds installed and HubFeedWorker.run in a background event loop.

    install_ngsi also adds the history row writer to the store (aggregates inside the ingest
    transaction); close() takes it off again so the "off" runs are plain Store.ingest.
    """

    def __init__(self, store: Store, sink: str, worker: bool = True) -> None:
        self.store = store
        self.writers = list(store.row_writers)
        core = SimpleNamespace(store=store, config=CollectorConfig(), app=create_app(store),
                               readers=[])
        self.feeds = install_ngsi(core, HubFeedSettings(broker_url=sink, egress=LOCAL_SINK))
        self.worker: HubFeedWorker = self.feeds.worker
        self.busy = 0
        self._lock = threading.Lock()
        build = self.worker.enqueue_changes

        def enqueue_changes() -> int:  # counted, so "drained" cannot miss a build in flight
            with self._lock:
                self.busy += 1
            try:
                return build()
            finally:
                with self._lock:
                    self.busy -= 1

        self.worker.enqueue_changes = enqueue_changes  # type: ignore[method-assign]
        self.built, self.aborting = 0, False
        entities_by_id = self.worker.source.entities_by_id

        def counted(ids: Iterable[str]) -> dict[str, dict[str, Any]]:  # skipped when aborting
            if self.aborting:
                return {}
            found = entities_by_id(ids)
            self.built += len(found)
            return found

        self.worker.source.entities_by_id = counted  # type: ignore[method-assign,assignment]
        self.loop: asyncio.AbstractEventLoop | None = None
        started = threading.Event()

        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            started.set()
            await self.worker.run()

        self.thread: threading.Thread | None = None
        if worker:  # (not started: a diagnostic of the hooks' own cost)
            self.thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
            self.thread.start()
            started.wait(10)

    def drained(self) -> bool:
        """Nothing pending, nothing being built, nothing queued in the outbox/deliveries."""
        if self.worker.pending or self.busy:
            return False
        return not any(self.worker.backlog().values())

    def close(self, timeout: float = 600.0) -> None:
        """Stop the worker and wait for its thread; take the history writer off the store."""
        self.aborting = True
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.worker.stop)
        if self.thread is not None:
            self.thread.join(timeout)
        self.store.row_writers[:] = self.writers


def subscribe(store: Store, sink: str) -> None:
    """Register one webhook subscription on every Device change (as POST /subscriptions does)."""
    sub = validate_subscription({
        "id": "urn:ngsi-ld:Subscription:bench", "type": "Subscription",
        "entities": [{"type": "Device"}],
        "notification": {"endpoint": {"uri": f"{sink}/hook"}}}, LOCAL_SINK)
    with store.engine.begin() as conn:
        conn.execute(sa.insert(ngsi_subscriptions).values(
            id=sub["id"], body=orjson.dumps(sub).decode(), secret="s3cret", created=T0,
            active=True))


@dataclass
class IngestFigures:
    """Medians of the alternating off/on runs."""

    off: list[float] = field(default_factory=list)
    on: list[float] = field(default_factory=list)
    history: list[float] = field(default_factory=list)
    hooks: list[float] = field(default_factory=list)
    builds: list[float] = field(default_factory=list)  # entities built per second
    drain: list[float] = field(default_factory=list)  # nan: not drained before the deadline
    notes: list[str] = field(default_factory=list)


class IngestBench:
    """Envelopes for one store: zone z's 100 sensors, ts advancing one minute per 100 batches."""

    def __init__(self, store: Store, sink: str) -> None:
        self.store, self.sink = store, sink
        self.g = 0  # envelopes so far (their seq)
        self.t_ing, self.i = 0, 0  # where this size's ingest starts, envelopes at this size
        self.build_rate = math.nan  # Device entities built per second in the last "on" run

    def begin(self, t_ing: int) -> None:
        """Start a size: readings from t_ing on (the next whole hour after the loaded data)."""
        self.t_ing, self.i = t_ing, 0

    def envelopes(self, batches: int) -> list[list[Accepted]]:
        """The next envelopes, built (and validated) before the timed loop."""
        out = []
        for _ in range(batches):
            g, self.g, self.i = self.g, self.g + 1, self.i + 1
            z, ts = g % ZONES, self.t_ing + ((self.i - 1) // ZONES) * MINUTE_MS
            env = DataEnvelope.model_validate({
                "v": 1, "gateway": f"gw-{z:03d}", "seq": g + 1, "sent": ts + 1000,
                "readings": [{"device": dev(z * SPOTS + s), "ts": ts,
                              "values": {"battery_mv": 3000 + (g + s) % 600,
                                         "rssi": -60 - s % 40}} for s in range(SPOTS)]})
            out.append([Accepted(f"gw-{z:03d}", env, ts + 1500)])
        return out

    def run(self, batches: int, mode: str, drain_timeout: float) -> tuple[float, float, str]:
        """values/s of one run, seconds to drain (nan if not) and a note.

        mode "off": Store.ingest alone; "on": with the hub feeds installed (the history row
        writer inside Store.ingest, then Hub.on_stored(fresh) as the collector's ingest writer
        does, the feed worker running). Diagnostics: "history", Store.ingest with only the
        history row writer; "hooks", the feeds installed but the worker not running.
        """
        work = self.envelopes(batches)
        feeds = Feeds(self.store, self.sink, worker=mode == "on") \
            if mode in ("on", "hooks") else None
        writers = list(self.store.row_writers)
        if mode == "history":
            self.store.row_writers.append(HistoryKeeper(self.store, Retention()).write_rows)
        note = ""
        try:
            t0 = time.perf_counter()
            for items in work:
                result = self.store.ingest(items)
                if feeds is not None and result.fresh:
                    feeds.feeds.on_stored(result.fresh)
            elapsed = time.perf_counter() - t0
            rate = batches * SPOTS * 2 / elapsed
            drain = math.nan
            if feeds is not None and mode == "on":
                t = time.perf_counter()
                deadline = t + drain_timeout
                while time.perf_counter() < deadline:
                    if feeds.drained():
                        drain = time.perf_counter() - t
                        break
                    time.sleep(0.05)
                window = time.perf_counter() - t0
                self.build_rate = feeds.built / window
                s = feeds.worker.stats
                note = (f"{s['changes']:,} changes; in {window:.0f} s the worker built "
                        f"{feeds.built:,} entities ({feeds.built / window:,.0f}/s), pushed "
                        f"{s['upserted']:,} to the broker, delivered {s['delivered']:,} "
                        f"webhooks; dropped {s['dropped_changes']:,}, failures "
                        f"{s['broker_failures'] + s['delivery_failures']}")
                if math.isnan(drain):
                    note += (f"; NOT drained {drain_timeout:.0f} s after the ingest loop: "
                             f"pending {len(feeds.worker.pending):,}, building "
                             f"{bool(feeds.busy)}, backlog {feeds.worker.backlog()}")
            return rate, drain, note
        finally:
            self.store.row_writers[:] = writers
            if feeds is not None:
                feeds.close()
                with self.store.engine.begin() as conn:  # what an undrained run left behind
                    conn.execute(sa.text("DELETE FROM ngsi_outbox"))
                    conn.execute(sa.text("DELETE FROM ngsi_deliveries"))

    def cleanup(self) -> None:
        """Remove what the ingest runs stored, so the next size starts from the loaded data."""
        t = {"t": self.t_ing}
        with self.store.engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM readings WHERE ts >= :t"), t)
            conn.execute(sa.text("DELETE FROM history_1m WHERE bucket >= :t"), t)
            conn.execute(sa.text("DELETE FROM history_1h WHERE bucket >= :t"), t)
            conn.execute(sa.text("DELETE FROM batches"))


def measure_ingest(bench: IngestBench, batches: int, drain_timeout: float) -> IngestFigures:
    """off,on,off,on,off,on; then one run of each diagnostic ("history", "hooks")."""
    fig = IngestFigures()
    for i, mode in enumerate(["off", "on"] * 3 + ["history", "hooks"]):
        rate, drain, note = bench.run(batches, mode, drain_timeout)
        {"off": fig.off, "on": fig.on, "history": fig.history, "hooks": fig.hooks}[mode] \
            .append(rate)
        if mode == "on":
            fig.drain.append(drain)
            fig.builds.append(bench.build_rate)
            fig.notes.append(note)
        label = {"off": "feeds off", "on": "feeds on ", "history": "history writer only",
                 "hooks": "feeds on, worker not running"}[mode]
        print(f"    ingest run {i + 1} {label}: {rate:,.0f} values/s"
              + (f"; drained in {drain:.1f} s; {note}" if mode == "on" else ""), flush=True)
    return fig


# --- retention --------------------------------------------------------------------------------

def retention(store: Store, n: int, bench: IngestBench, start: int) -> list[str]:
    """Drop the 2 oldest days (fewer if the data spans fewer) with HistoryKeeper.prune.

    prune() runs in a thread (as run_retention does, via asyncio.to_thread) while this thread
    keeps ingesting one envelope every 100 ms (6x the city's nominal rate): the longest
    Store.ingest call during the prune shows how long retention holds ingest up.
    """
    oldest = T0 - (n // DEVICES - 1) * MINUTE_MS
    days = list(range(partitions.day_of(oldest), partitions.day_of(T0) + 1, DAY_MS))
    drop = min(2, len(days) - 1)
    if drop < 1:
        return ["retention: data spans one day, nothing to drop"]
    cutoff = days[drop]
    keep = (T0 - cutoff) / DAY_MS
    while int(keep * DAY_MS) < T0 - cutoff:  # the float must give back the exact day edge
        keep = math.nextafter(keep, math.inf)
    with store.engine.connect() as c:
        before = int(c.scalar(sa.text("SELECT count(*) FROM readings WHERE ts < :c"),
                              {"c": cutoff}) or 0)
    keeper = HistoryKeeper(store, Retention(raw_days=keep, minute_days=keep, hour_days=keep))
    parts: list[str] = []

    def timed_step(name: str, fn: Callable[..., int]) -> Callable[..., int]:
        def run(*args: Any) -> int:
            t = time.perf_counter()
            out = fn(*args)
            label = args[0] if isinstance(args[0], str) else args[0].name
            parts.append(f"{name}({label}) {out:,} in {time.perf_counter() - t:.2f} s")
            return out
        return run

    keeper._delete_chunks = timed_step("delete", keeper._delete_chunks)  # type: ignore[method-assign]
    keeper._drop_partitions = timed_step(  # type: ignore[method-assign]
        "drop partitions", keeper._drop_partitions)
    result: dict[str, Any] = {}

    def prune() -> None:
        t = time.perf_counter()
        try:
            result["removed"] = keeper.prune(now=T0)
        except Exception as exc:
            result["removed"] = f"FAILED: {exc!r}"
        result["s"] = time.perf_counter() - t

    bench.begin(ingest_start(start, n))
    thread = threading.Thread(target=prune)
    lat: list[float] = []
    errors: list[str] = []
    thread.start()
    while thread.is_alive():
        items = bench.envelopes(1)[0]
        t = time.perf_counter()
        try:
            store.ingest(items)
        except Exception as exc:
            errors.append(type(exc).__name__)
        lat.append((time.perf_counter() - t) * 1000)
        thread.join(max(0.0, 0.1 - (time.perf_counter() - t)))
    bench.cleanup()
    with store.engine.connect() as c:
        after = int(c.scalar(sa.text("SELECT count(*) FROM readings WHERE ts < :c"),
                             {"c": cutoff}) or 0)
    return [f"retention: prune(now=T0), raw/minute/hour days = {keep:.4f} (the {drop} oldest "
            f"day(s), before {time.strftime('%Y-%m-%d', time.gmtime(cutoff / 1000))}): "
            f"{before - after:,} readings removed ({after:,} left) in {result['s']:.2f} s; "
            f"returned {result['removed']}",
            f"  steps: {'; '.join(parts)}",
            f"  ingest alongside: {len(lat)} envelopes, Store.ingest p50 "
            f"{percentile(lat, 50):.1f} ms, max {max(lat):.1f} ms, errors "
            f"{dict(Counter(errors)) or 0}"]


# --- one backend -------------------------------------------------------------------------------

@dataclass
class Step:
    """Figures of one size."""

    n: int
    load: LoadTimes
    db_bytes: int
    queries: dict[str, tuple[float, float]]
    ingest: IngestFigures


def fmt_bytes(n: float) -> str:
    """Human-readable size."""
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def run_backend(kind: str, sizes: list[int], args: argparse.Namespace, tmp: Path,
                sink: str) -> list[Step]:
    """Grow one store through the sizes; measure at each; retention at the end."""
    db_name = f"citygate_bench_{uuid.uuid4().hex[:8]}"
    path = tmp / f"{db_name}.sqlite"
    if kind == "postgresql":
        with psycopg.connect(f"{args.pg}/postgres", autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{db_name}"')
        url = f"{args.pg}/{db_name}"
    else:
        url = f"sqlite:///{path}"
    store: Store | None = None
    steps: list[Step] = []
    try:
        store = open_store(url)  # migrates everything (core and feature tables)
        keeper = HistoryKeeper(store, Retention())
        start = start_of(max(sizes))
        with store.engine.begin() as conn:  # the data's days, the day before, the ingest's
            days = range(start - DAY_MS, T0 + 2 * DAY_MS, DAY_MS)
            partitions.ensure_days(conn, "readings", "ts", days)
            partitions.ensure_days(conn, "history_1m", "bucket", days)
        subscribe(store, sink)
        bench = IngestBench(store, sink)
        loaded = 0
        for n in sizes:
            print(f"\n  {kind}: growing {loaded:,} -> {n:,} readings", flush=True)
            if kind == "postgresql":
                free = shutil.disk_usage("/").free
                need = (n - loaded) * PG_BYTES_PER_ROW * (1 if args.aggregates else 0.6)
                print(f"    disk free {fmt_bytes(free)}, this step needs about "
                      f"{fmt_bytes(need)}", flush=True)
                if free < need + 5 * 2**30:
                    raise SystemExit(f"not enough disk for {n:,} readings")
                times = load_pg(url, start, loaded, n, args.chunk, args.aggregates,
                                args.loaders)
                with store.engine.connect() as c:
                    size = int(c.scalar(sa.text("SELECT pg_database_size(current_database())"))
                               or 0)
            else:
                times = load_sqlite(path, start, loaded, n, min(args.chunk, 2_000_000),
                                    args.aggregates)
                size = sum(p.stat().st_size for p in tmp.glob(f"{db_name}.sqlite*"))
            times.rows = n - loaded
            loaded = n
            print(f"    loaded: readings {times.readings_s:.1f} s "
                  f"({times.rows / times.readings_s:,.0f} rows/s), aggregates "
                  f"{times.aggregates_s:.1f} s, {'VACUUM ' if store.is_pg else ''}ANALYZE "
                  f"{times.analyze_s:.1f} s; database {fmt_bytes(size)}", flush=True)
            if store.is_pg and (n == sizes[0] or n == sizes[-1]):
                print("    query plans (partition pruning):", flush=True)
                for line in explain_pg(store, start, n):
                    print("  " + line, flush=True)
            q = run_queries(store, keeper, args.aggregates, args.reps, start, n,
                            args.gc_in_queries)
            bench.begin(ingest_start(start, n))
            fig = measure_ingest(bench, args.batches, args.drain_timeout)
            bench.cleanup()
            steps.append(Step(n, times, size, q, fig))
        for line in retention(store, loaded, bench, start):
            print("    " + line, flush=True)
        return steps
    finally:
        if store is not None:
            store.close()
        if kind == "postgresql":
            with psycopg.connect(f"{args.pg}/postgres", autocommit=True) as c:
                c.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
            print(f"    dropped database {db_name}", flush=True)


def print_table(kind: str, steps: list[Step]) -> None:
    """Per size: load rate, size and query p50/p99; then the ingest figures."""
    if not steps:
        return
    names = list(steps[0].queries)
    print(f"\n{kind}: query latency p50/p99 in ms ({kind} growing table)")
    print(f"{'readings':>11s} {'load rows/s':>11s} {'db size':>9s} "
          + " ".join(f"{n:>15s}" for n in names))
    for s in steps:
        print(f"{s.n:>11,} {s.load.rows / s.load.readings_s:>11,.0f} "
              f"{fmt_bytes(s.db_bytes):>9s} "
              + " ".join(f"{f'{a:.2f}/{b:.2f}':>15s}" for a, b in s.queries.values()))
    print(f"\n{kind}: ingest in values/s, median of 3 runs each (off/on alternating); "
          "history-only: Store.ingest with just the history row writer, 1 run; no-worker: feeds "
          "on but the worker not running, 1 run; drain: s after an 'on' run until the feed "
          "queues were empty (median); entities/s: Device entities the feed worker built per "
          "second (median)")
    print(f"{'readings':>11s} {'feeds off':>9s} {'feeds on':>9s} {'on/off':>6s} "
          f"{'history-only':>12s} {'no-worker':>9s} {'drain':>14s} {'entities/s':>10s}")
    for s in steps:
        f = s.ingest
        off, on = median(f.off), median(f.on)
        drains = [d for d in f.drain if not math.isnan(d)]
        drain = (f"{median(drains):.1f}" if len(drains) == len(f.drain)
                 else f"{len(f.drain) - len(drains)}/{len(f.drain)} not done")
        print(f"{s.n:>11,} {off:>9,.0f} {on:>9,.0f} {on / off:>6.2f} "
              f"{median(f.history):>12,.0f} {median(f.hooks):>9,.0f} {drain:>14s} "
              f"{median(f.builds):>10,.1f}")


def parse_sizes(text: str) -> list[int]:
    """'1e6,10000000' -> [1000000, 10000000] (ascending, whole minutes of 10,000 readings)."""
    sizes = sorted({int(float(s)) for s in text.split(",") if s.strip()})
    for s in sizes:
        if s % DEVICES or s <= 0:
            raise SystemExit(f"size {s} must be a positive multiple of {DEVICES}")
    return sizes


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print figures."""
    if argv is None:  # `python -m bench history` leaves the benchmark name(s) in argv
        argv = sys.argv[1:]
        while argv and not argv[0].startswith("-"):
            argv = argv[1:]
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes-pg", default="1e6,1e7")
    ap.add_argument("--sizes-sqlite", default="1e6")
    ap.add_argument("--pg", default=os.environ.get("CITYGATE_BENCH_PG",
                                                   "postgresql://postgres@127.0.0.1:5432"))
    ap.add_argument("--backends", default="sqlite,postgresql")
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--batches", type=int, default=300, help="envelopes per ingest run")
    ap.add_argument("--drain-timeout", type=float, default=60.0,
                    help="seconds to wait for the feed worker after an 'on' run")
    ap.add_argument("--chunk", type=int, default=5_000_000,
                    help="most rows per load transaction (cut at whole hours)")
    ap.add_argument("--loaders", type=int, default=os.cpu_count() or 2,
                    help="PostgreSQL connections loading side by side")
    ap.add_argument("--gc-in-queries", action="store_true",
                    help="keep Python's cyclic GC on while timing queries (default: off)")
    ap.add_argument("--aggregates", choices=("full", "none"), default="full")
    args = ap.parse_args(argv)
    args.aggregates = args.aggregates == "full"
    signal.signal(signal.SIGTERM, _terminate)  # so the finally blocks drop the database
    started = time.perf_counter()
    print(f"history bench at {_revision()}: {DEVICES:,} sensors x 1 reading/min; "
          f"{args.reps} reps per query (Python GC {'on' if args.gc_in_queries else 'off'} while "
          f"timing); ingest runs of {args.batches} envelopes x 100 readings x 2 values, one "
          f"envelope per Store.ingest; {os.cpu_count()} CPUs", flush=True)
    results: dict[str, list[Step]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-history-") as tmp, sink_server() as sink:
        for kind in args.backends.split(","):
            sizes = parse_sizes(args.sizes_pg if kind == "postgresql" else args.sizes_sqlite)
            if kind == "postgresql":
                try:
                    with psycopg.connect(f"{args.pg}/postgres", connect_timeout=5) as c:
                        settings = {k: c.execute(f"SHOW {k}").fetchone()[0]  # type: ignore[index]
                                    for k in ("server_version", "shared_buffers",
                                              "max_wal_size", "work_mem")}
                except psycopg.OperationalError as exc:
                    print(f"\npostgresql: skipped, cannot connect to {args.pg}: {exc}")
                    continue
                print(f"\npostgresql {settings}", flush=True)
            else:
                print(f"\nsqlite {sqlite3.sqlite_version}", flush=True)
            results[kind] = run_backend(kind, sizes, args, Path(tmp), sink)
    for kind, steps in results.items():
        print_table(kind, steps)
    print(f"\nwall time {time.perf_counter() - started:.0f} s", flush=True)


def _revision() -> str:
    """The commit being measured (and whether collector/ differs from it)."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, check=True,
                              capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "collector"], cwd=root,
                               check=True, capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "an unknown revision"
    return f"{head}{' (collector/ modified)' if dirty else ''}"


def _terminate(_sig: int, _frame: Any) -> None:
    raise SystemExit("terminated")


if __name__ == "__main__":
    main()
