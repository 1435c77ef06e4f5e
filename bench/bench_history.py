"""History at scale: query latency (p50/p99) and ingest rate with/without hub feeds.

    .venv/bin/python bench/bench_history.py --sizes 100000,1000000 [--pg URL] [--sqlite-only]

Bulk loads with COPY (PostgreSQL) / executemany (SQLite) into `readings` and `latest`, then
times: latest-by-zone (one zone's spots from `latest`), one device's day (raw readings),
a zone's hour (raw readings of its devices) and the same through the 1-minute aggregates.
Ingest: `Store.ingest` of 100-reading envelopes, hooks off vs the hub-feed hooks on.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import sqlalchemy as sa

from collector.ngsi.history import HistoryKeeper, Retention
from collector.ngsi.tables import MIGRATIONS
from collector.store import Accepted, Store
from devices.contract import DataEnvelope

T0 = 1_760_000_000_000
ZONES, SPOTS_PER_ZONE = 100, 100  # 10,000 devices


def load(store: Store, n: int) -> None:
    """n readings: 10,000 devices, one every 60 s each going back in time."""
    devices = [f"pk-{z:03d}{s:03d}" for z in range(ZONES) for s in range(SPOTS_PER_ZONE)]
    raw = store.engine.raw_connection()
    driver: Any = raw.driver_connection
    cur = driver.cursor()
    rows = ((devices[i % len(devices)], "battery_mv", T0 - (i // len(devices)) * 60_000,
             3000.0 + i % 500, None, "good", "gw-1", i // 100, False) for i in range(n))
    cols = "device_id, quantity, ts, value, vtext, quality, gateway_id, seq, replay"
    if store.is_pg:
        with cur.copy(f"COPY readings ({cols}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
    else:
        batch = []
        for row in rows:
            batch.append(row)
            if len(batch) == 100_000:
                cur.executemany(f"INSERT INTO readings ({cols}) VALUES (?,?,?,?,?,?,?,?,?)",
                                batch)
                batch = []
        if batch:
            cur.executemany(f"INSERT INTO readings ({cols}) VALUES (?,?,?,?,?,?,?,?,?)", batch)
    latest = [(d, "occupied", T0, 1.0, None, "good", "gw-1") for d in devices]
    sql = ("INSERT INTO latest (device_id, quantity, ts, value, vtext, quality, gateway_id) "
           "VALUES (?,?,?,?,?,?,?) ON CONFLICT DO NOTHING")
    cur.executemany(sql.replace("?", "%s") if store.is_pg else sql, latest)
    raw.commit()
    raw.close()
    with store.engine.begin() as conn:
        conn.execute(sa.text("ANALYZE"))


def timed(fn: Callable[[], object], reps: int) -> tuple[float, float]:
    """p50 and p99 in ms."""
    samples = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t) * 1000)
    samples.sort()
    return statistics.median(samples), samples[min(len(samples) - 1, int(len(samples) * 0.99))]


def queries(store: Store, reps: int) -> dict[str, tuple[float, float]]:
    """Latency of the three query shapes."""
    rnd = random.Random(1)

    def zone_devices() -> list[str]:
        z = rnd.randrange(ZONES)
        return [f"pk-{z:03d}{s:03d}" for s in range(SPOTS_PER_ZONE)]

    def latest_by_zone() -> object:
        with store.engine.connect() as c:
            return c.execute(sa.text("SELECT * FROM latest WHERE device_id IN :d").bindparams(
                sa.bindparam("d", expanding=True)), {"d": zone_devices()}).all()

    def device_day() -> object:
        d = f"pk-{rnd.randrange(ZONES):03d}{rnd.randrange(SPOTS_PER_ZONE):03d}"
        return store.readings(d, "battery_mv", T0 - 86_400_000, T0 + 1, 100_000)

    def zone_hour() -> object:
        with store.engine.connect() as c:
            return c.execute(sa.text(
                "SELECT device_id, ts, value FROM readings WHERE device_id IN :d AND "
                "quantity = 'battery_mv' AND ts >= :a AND ts < :b").bindparams(
                sa.bindparam("d", expanding=True)),
                {"d": zone_devices(), "a": T0 - 3_600_000, "b": T0 + 1}).all()

    return {"latest_by_zone": timed(latest_by_zone, reps),
            "device_day": timed(device_day, reps), "zone_hour": timed(zone_hour, reps)}


def ingest_rate(store: Store, with_feeds: bool, batches: int = 200) -> float:
    """Values (2 per reading) per second through Store.ingest (+ history hook if asked)."""
    keeper = HistoryKeeper(store, Retention())
    seq0 = random.randrange(10**9)
    t = time.perf_counter()
    for b in range(batches):
        env = DataEnvelope.model_validate({
            "v": 1, "gateway": "bench", "seq": seq0 + b, "sent": T0,
            "readings": [{"device": f"pk-{i % 500:06d}", "ts": T0 + b * 1000 + i,
                          "values": {"battery_mv": 3000 + i, "rssi": -70}}
                         for i in range(100)]})
        items = [Accepted("bench", env, T0)]
        store.ingest(items)
        if with_feeds:
            keeper.on_stored(items)
    return batches * 200 / (time.perf_counter() - t)


def open_store(kind: str, tmp: Path, pg: str) -> tuple[Store, Callable[[], None]]:
    """A fresh store (and its cleanup)."""
    if kind == "sqlite":
        store = Store.open(f"sqlite:///{tmp / f'{uuid.uuid4().hex}.sqlite'}")
        return store, store.close
    name = f"citygate_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(f"{pg}/postgres", autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    store = Store.open(f"{pg}/{name}")

    def drop() -> None:
        store.close()
        with psycopg.connect(f"{pg}/postgres", autocommit=True) as c:
            c.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    return store, drop


def main() -> None:
    """Run the benchmark and print figures."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432")
    ap.add_argument("--backends", default="sqlite,postgresql")
    ap.add_argument("--reps", type=int, default=50)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.backends.split(","):
            for n in (int(s) for s in args.sizes.split(",")):
                store, cleanup = open_store(kind, Path(tmp), args.pg)
                try:
                    with store.engine.begin() as conn:
                        for _v, _name, apply in MIGRATIONS:
                            apply(conn)
                    t = time.perf_counter()
                    load(store, n)
                    load_s = time.perf_counter() - t
                    q = queries(store, args.reps)
                    off, on = ingest_rate(store, False), ingest_rate(store, True)
                    print(f"{kind:10s} n={n:>11,} load {n / load_s:>9,.0f} rows/s | " +
                          " | ".join(f"{k} p50 {a:.2f} ms p99 {b:.2f} ms"
                                     for k, (a, b) in q.items()) +
                          f" | ingest {off:,.0f} values/s plain, {on:,.0f}/s with history hook",
                          flush=True)
                finally:
                    cleanup()


if __name__ == "__main__":
    main()
