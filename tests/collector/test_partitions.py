"""Day partitions of `readings` on PostgreSQL: creation ahead, routing, conversion, retention."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from collector import partitions, schema
from collector.core_tables import _partition_readings
from collector.features import open_store
from collector.ngsi.history import HistoryKeeper, Retention
from collector.store import Accepted, Store, make_engine
from devices.contract import DataEnvelope

pytestmark = pytest.mark.postgres
DAY = partitions.DAY_MS
NOW = 1_780_000_000_000 - 1_780_000_000_000 % DAY + 12 * 3_600_000  # noon of a UTC day


@pytest.fixture
def pg(pg_url: str) -> Iterator[Store]:
    store = open_store(pg_url)
    try:
        yield store
    finally:
        store.close()


def send(store: Store, seq: int, *times: int, at: int = NOW) -> None:
    env = DataEnvelope.model_validate({
        "v": 1, "gateway": "gw-1", "seq": seq, "sent": at, "clock": {"synced": True},
        "readings": [{"device": "lift-1", "ts": t, "values": {"speed": float(i)}}
                     for i, t in enumerate(times)]})
    store.ingest([Accepted("gw-1", env, at)])


def where(store: Store) -> list[tuple[str, int]]:
    with store.engine.connect() as conn:
        return [(str(t), int(ts)) for t, ts in conn.execute(sa.text(
            "SELECT tableoid::regclass, ts FROM readings ORDER BY ts"))]


def test_readings_is_partitioned_with_days_created_around_now(pg: Store) -> None:
    created = pg.maintain(NOW)
    assert created[0] == partitions.partition_name("readings", NOW - NOW % DAY - 7 * DAY)
    assert created[-1] == partitions.partition_name("readings", NOW - NOW % DAY + 3 * DAY)
    assert pg.maintain(NOW) == []  # idempotent
    with pg.engine.connect() as conn:
        assert partitions.is_partitioned(conn, "readings")
        bounds = partitions.partitions(conn, "readings")
    assert all(hi - lo == DAY and lo % DAY == 0 for _n, lo, hi in bounds)


def test_rows_go_to_their_day_and_far_ones_to_default(pg: Store) -> None:
    pg.maintain(NOW)
    old = NOW - 40 * DAY
    send(pg, 1, NOW, NOW - DAY, old)
    assert where(pg) == [("readings_default", old),
                         (partitions.partition_name("readings", NOW - DAY - (NOW - DAY) % DAY),
                          NOW - DAY),
                         (partitions.partition_name("readings", NOW - NOW % DAY), NOW)]
    # a day that has rows in DEFAULT is not given a partition (PostgreSQL would refuse it)
    with pg.engine.begin() as conn:
        assert partitions.ensure_days(conn, "readings", "ts", [old]) == []
    assert [r["ts"] for r in pg.readings("lift-1", "speed", old, NOW + 1, 10)] == \
        [old, NOW - DAY, NOW]


def test_conversion_keeps_existing_rows_as_one_partition(pg_url: str) -> None:
    engine = make_engine(pg_url)
    try:
        with engine.begin() as conn:  # the layout before migration 2
            schema.metadata.create_all(conn, tables=[schema.readings])
            conn.execute(sa.insert(schema.readings), [
                {"device_id": "d", "quantity": "speed", "ts": NOW - i * 3_600_000,
                 "value": float(i), "quality": "good", "gateway_id": "g", "seq": i,
                 "replay": False} for i in range(60)])
        with engine.begin() as conn:
            _partition_readings(conn)
        with engine.connect() as conn:
            bounds = {n: (lo, hi) for n, lo, hi in partitions.partitions(conn, "readings")}
            lo = (NOW - 59 * 3_600_000) - (NOW - 59 * 3_600_000) % DAY
            assert bounds["readings_legacy"] == (lo, NOW - NOW % DAY + DAY)
            assert conn.scalar(sa.text("SELECT count(*) FROM readings")) == 60
            assert conn.scalar(sa.text("SELECT sum(value) FROM readings")) == sum(range(60))
            indexed = conn.scalars(sa.text(
                "SELECT indexname FROM pg_indexes WHERE tablename = 'readings_legacy'")).all()
            assert indexed  # the old index was adopted as the partition's index
    finally:
        engine.dispose()


def test_retention_drops_old_days_and_deletes_only_old_rows_from_default(pg: Store) -> None:
    pg.maintain(NOW)
    old = NOW - 40 * DAY  # in DEFAULT
    send(pg, 1, old, old + 1000, NOW - 6 * DAY, NOW - 5 * DAY, NOW - DAY, NOW)
    send(pg, 2, old + 5 * 60_000)
    send(pg, 3, NOW + 10 * DAY, at=NOW + 10 * DAY)  # beyond the days made: DEFAULT, kept
    keeper = HistoryKeeper(pg, Retention(raw_days=5.25, minute_days=None, hour_days=None,
                                         chunk=1))
    removed = keeper.prune(now=NOW)
    cutoff = NOW - int(5.25 * DAY)  # 06:00 five days ago
    assert removed["readings_partitions"] == 2  # the days of NOW-7d and NOW-6d
    assert removed["readings"] == 3  # the DEFAULT rows older than the cutoff, one chunk each
    kept = [ts for _t, ts in where(pg)]
    assert kept == [NOW - 5 * DAY, NOW - DAY, NOW, NOW + 10 * DAY]
    assert all(ts >= cutoff for ts in kept)
    with pg.engine.connect() as conn:
        names = [n for n, _lo, _hi in partitions.partitions(conn, "readings")]
    assert partitions.partition_name("readings", NOW - NOW % DAY - 6 * DAY) not in names
    # the day that straddles the cutoff stays (a partition goes only when wholly expired)
    assert partitions.partition_name("readings", NOW - NOW % DAY - 5 * DAY) in names


def test_sqlite_has_no_partitions(tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = open_store(f"sqlite:///{tmp_path / 'hub.sqlite'}")
    try:
        assert store.maintain(NOW) == []
        with store.engine.connect() as conn:
            assert not partitions.is_partitioned(conn, "readings")
    finally:
        store.close()
