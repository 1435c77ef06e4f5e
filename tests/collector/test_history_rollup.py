"""The 1-hour aggregates: rolled up from the minutes after each hour on PostgreSQL, kept in
every ingest transaction on SQLite, and exact either way (collector.ngsi.history)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from citygate.rig import wait_for
from collector.clock import iso
from collector.features import open_store
from collector.ngsi.history import HOUR_MS, ROLLUP_GRACE_MS, HistoryKeeper, Retention
from collector.ngsi.tables import ROLLUP_NEVER, history_rollup
from collector.store import Accepted, Store
from devices.contract import DataEnvelope

T0 = 1_760_000_000_000
H0 = T0 - T0 % HOUR_MS  # the first hour not rolled up, in these tests


class Gateway:
    """Envelopes of one gateway, numbered; a speed reading each."""

    def __init__(self) -> None:
        self.seq = 0

    def send(self, *points: tuple[int, float]) -> Accepted:
        """One envelope of readings of device d at (ts, speed)."""
        self.seq += 1
        env = DataEnvelope.model_validate({
            "v": 1, "gateway": "g", "seq": self.seq, "sent": H0 + 3 * HOUR_MS,
            "readings": [{"device": "d", "ts": ts, "values": {"speed": v}} for ts, v in points]})
        return Accepted("g", env, H0 + 3 * HOUR_MS)


@pytest.fixture
def pg_store(pg_url: str) -> Iterator[Store]:
    """A migrated PostgreSQL store: the roll-up and its locks exist only there (SQLite keeps
    history_1h inside every ingest transaction)."""
    s = open_store(pg_url)
    try:
        yield s
    finally:
        s.close()


def keeper_on(store: Store, done_until: int) -> HistoryKeeper:
    keeper = HistoryKeeper(store)
    store.row_writers.append(keeper.write_rows)
    if store.is_pg:
        with store.engine.begin() as conn:
            conn.execute(sa.update(history_rollup).values(done_until=done_until))
    return keeper


def hour_rows(store: Store) -> dict[int, tuple[int, float, float, float]]:
    """history_1h as stored: bucket -> (n, sum, min, max)."""
    with store.engine.connect() as conn:
        return {b: (n, s, lo, hi) for b, n, s, lo, hi in conn.execute(sa.text(
            "SELECT bucket, n, vsum, vmin, vmax FROM history_1h WHERE device_id = 'd'"
            " ORDER BY bucket"))}


def truth(store: Store) -> list[tuple[str | None, int, float, float, float]]:
    """The hours of device d's speed computed from its raw readings."""
    hours: dict[int, list[float]] = {}
    for r in store.readings("d", "speed", None, None, 10_000):
        hours.setdefault(r["ts"] - r["ts"] % HOUR_MS, []).append(r["value"])
    return [(iso(h), len(v), sum(v) / len(v), min(v), max(v)) for h, v in sorted(hours.items())]


def waiting_for_hour(store: Store, hour: int) -> bool:
    """Is a session waiting for the roll-up lock of the hour starting at `hour`?"""
    with store.engine.connect() as conn:
        return bool(conn.scalar(sa.text(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            " AND objid = :h"), {"h": hour // HOUR_MS}))


def series(keeper: HistoryKeeper) -> list[tuple[Any, ...]]:
    return [(p["t"], p["count"], p["avg"], p["min"], p["max"])
            for p in keeper.series("d", "speed", H0 - 2 * HOUR_MS, H0 + 3 * HOUR_MS, "1h", 100)]


def test_hours_are_rolled_up_once_ended_and_late_data_counts_once(store: Store) -> None:
    keeper = keeper_on(store, H0)
    gw = Gateway()
    store.ingest([gw.send((H0 - HOUR_MS + 10_000, 1.0), (H0 + 10_000, 2.0), (H0 + 70_000, 4.0),
                          (H0 + HOUR_MS + 5_000, 8.0))])
    want = [(H0 - HOUR_MS, 1, 1.0, 1.0, 1.0), (H0, 2, 3.0, 2.0, 4.0),
            (H0 + HOUR_MS, 1, 8.0, 8.0, 8.0)]
    assert series(keeper) == truth(store) == [(iso(b), *rest) for b, *rest in want]
    if not store.is_pg:  # SQLite: every hour in history_1h at once, nothing to roll up
        assert keeper.rolled_until() == ROLLUP_NEVER
        assert sorted(hour_rows(store)) == [H0 - HOUR_MS, H0, H0 + HOUR_MS]
        assert keeper.roll_up(now=H0 + 10 * HOUR_MS) == 0
        return
    # PostgreSQL: only the hour rolled up already (late data) is in history_1h
    assert sorted(hour_rows(store)) == [H0 - HOUR_MS]
    assert keeper.roll_up(now=H0 + HOUR_MS + ROLLUP_GRACE_MS - 1) == 0
    assert keeper.roll_up(now=H0 + HOUR_MS + ROLLUP_GRACE_MS) == 1
    assert keeper.rolled_until() == H0 + HOUR_MS
    assert hour_rows(store)[H0] == (2, 6.0, 2.0, 4.0)
    assert series(keeper) == truth(store)
    # late data for the hour rolled up goes to history_1h by its own transaction, once
    late = gw.send((H0 + 30_000, 6.0))
    store.ingest([late])
    store.ingest([late])  # re-delivered
    assert hour_rows(store)[H0] == (3, 12.0, 2.0, 6.0)
    assert series(keeper) == truth(store)
    assert keeper.roll_up(now=H0 + 2 * HOUR_MS + ROLLUP_GRACE_MS) == 1
    assert series(keeper) == truth(store)
    assert hour_rows(store)[H0 + HOUR_MS] == (1, 8.0, 8.0, 8.0)
    assert keeper.stats["rolled_hours"] == 2


def test_retention_keeps_the_minutes_of_hours_not_rolled_up(store: Store) -> None:
    keeper = keeper_on(store, H0)
    store.ingest([Gateway().send((H0 - HOUR_MS + 10_000, 1.0), (H0 + 10_000, 2.0))])
    keeper.retention = Retention(raw_days=None, minute_days=0.0001, hour_days=None)
    keeper.prune(now=H0 + 30 * 86_400_000)
    with store.engine.connect() as conn:
        minutes = conn.scalars(sa.text(
            "SELECT bucket FROM history_1m WHERE device_id = 'd' ORDER BY bucket")).all()
    if store.is_pg:  # the hour not rolled up keeps its minutes; the one before is in 1h
        assert minutes == [H0]
        assert series(keeper) == truth(store)
    else:
        assert minutes == []


@pytest.mark.postgres
def test_a_roll_up_waits_for_an_ingest_writing_its_hour(pg_store: Store) -> None:
    """An ingest transaction holds its hours' lock until it commits: the hour's roll-up waits
    for it and counts its minutes, where without the lock they would be lost to history_1h."""
    store = pg_store
    keeper = keeper_on(store, H0)
    entered, release = threading.Event(), threading.Event()

    def hold(_cur: Any, _rows: list[Any]) -> None:  # runs after the history writer
        entered.set()
        assert release.wait(30)

    store.row_writers.append(hold)
    ingest = threading.Thread(target=store.ingest, args=([Gateway().send((H0 + 10_000, 2.0))],))
    ingest.start()
    assert entered.wait(30)
    rolled: list[int] = []
    roll = threading.Thread(target=lambda: rolled.append(
        keeper.roll_up(now=H0 + HOUR_MS + ROLLUP_GRACE_MS)))
    roll.start()

    wait_for(lambda: waiting_for_hour(store, H0), 10, "the roll-up waiting for the hour's lock")
    assert roll.is_alive() and not rolled
    release.set()
    ingest.join(30)
    roll.join(30)
    assert rolled == [1]
    assert hour_rows(store)[H0] == (1, 2.0, 2.0, 2.0)
    assert series(keeper) == truth(store)


@pytest.mark.postgres
def test_an_ingest_waits_for_the_roll_up_of_its_hour_and_adds_to_it(pg_store: Store) -> None:
    """The reverse order: an hour's roll-up is under way (its lock held, the mark moved, not
    committed) when a value of that hour arrives. The ingest waits, then sees the hour done
    and adds the value to history_1h itself; reading the mark before the lock would lose it."""
    store = pg_store
    from collector.ngsi.history import ROLLUP_LOCK

    keeper = keeper_on(store, H0)
    roll = store.engine.connect()
    tx = roll.begin()
    roll.execute(sa.text("SELECT pg_advisory_xact_lock(:k, :h)"),
                 {"k": ROLLUP_LOCK, "h": H0 // HOUR_MS})
    roll.execute(sa.update(history_rollup).values(done_until=H0 + HOUR_MS))
    ingest = threading.Thread(target=store.ingest, args=([Gateway().send((H0 + 10_000, 2.0))],))
    ingest.start()

    wait_for(lambda: waiting_for_hour(store, H0), 10, "the ingest waiting for the hour's lock")
    assert ingest.is_alive()
    tx.commit()  # the roll-up found no minutes of H0: history_1h holds none of it yet
    roll.close()
    ingest.join(30)
    assert hour_rows(store)[H0] == (1, 2.0, 2.0, 2.0)
    assert series(keeper) == truth(store)


def test_one_roll_up_catches_up_hour_by_hour_and_series_cut_at_any_time(store: Store) -> None:
    keeper = keeper_on(store, H0)
    gw = Gateway()
    store.ingest([gw.send(*[(H0 + h * HOUR_MS + m * 60_000, float(h * 10 + m))
                            for h in range(4) for m in (1, 30)])])
    rolled = keeper.roll_up(now=H0 + 3 * HOUR_MS + ROLLUP_GRACE_MS)
    assert rolled == (3 if store.is_pg else 0)
    if store.is_pg:
        assert keeper.rolled_until() == H0 + 3 * HOUR_MS  # the fourth hour from its minutes
        assert sorted(hour_rows(store)) == [H0, H0 + HOUR_MS, H0 + 2 * HOUR_MS]

    def cut(since: int, until: int, limit: int = 100) -> list[Any]:
        return [(p["t"], p["count"], p["avg"], p["min"], p["max"])
                for p in keeper.series("d", "speed", since, until, "1h", limit)]

    every = truth(store)
    assert cut(H0 - HOUR_MS, H0 + 5 * HOUR_MS) == every and len(every) == 4

    # an hour is in a series when it starts in [since, until): not on hour boundaries too
    assert cut(H0 - HOUR_MS // 2, H0 + HOUR_MS + HOUR_MS // 2) == every[:2]
    assert cut(H0 + 1, H0 + 3 * HOUR_MS + 1) == every[1:4]
    assert cut(H0 + 2 * HOUR_MS + 1, H0 + 4 * HOUR_MS) == every[3:]
    assert cut(H0, H0 + 4 * HOUR_MS, limit=3) == every[:3]


@pytest.mark.postgres
def test_an_ingest_locks_only_the_hours_not_rolled_up(pg_store: Store) -> None:
    """A gateway's backlog of 500 past hours takes no lock (PostgreSQL's lock table is
    shared by the whole server); a value of the hour running takes one."""
    store = pg_store
    keeper_on(store, H0)
    held: list[int] = []

    def count(cur: Any, _rows: list[Any]) -> None:  # runs after the history writer
        cur.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
                    " AND pid = pg_backend_pid()")
        held.append(cur.fetchone()[0])

    store.row_writers.append(count)
    gw = Gateway()
    backlog = gw.send(*[(H0 - h * HOUR_MS, float(h)) for h in range(1, 501)])
    store.ingest([backlog])
    store.ingest([gw.send((H0 + 10_000, 1.0), (H0 - HOUR_MS + 20_000, 2.0))])
    assert held == [0, 1]
    assert len(hour_rows(store)) == 500  # the backlog's hours, each added once
