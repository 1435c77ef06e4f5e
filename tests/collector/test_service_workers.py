"""Ingest workers: the feed between workers and the hub (PostgreSQL), the leader lock, the
supervisor's policy and its health view."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from collector.features import open_store
from collector.feed import FeedReader, FeedWriter, ensure_feed
from collector.ingest import Entry, entry_of
from collector.leader import LeaderLock, dsn_of, lead
from collector.store import Accepted, Store
from collector.workers import (
    RESTART_MAX_S,
    RESTART_MIN_S,
    WorkersError,
    check_workers,
    exit_reason,
    merged_stats,
    restart_delay,
    worker_client_id,
)
from devices import contract
from devices.model import Reading

pytestmark = pytest.mark.postgres
T0 = 1_780_000_000_000


@pytest.fixture
def pg_store(pg_url: str) -> Iterator[Store]:
    """A migrated PostgreSQL store with the feed tables."""
    s = open_store(pg_url)
    ensure_feed(s.engine)
    try:
        yield s
    finally:
        s.close()


def data_entry(gateway: str, seq: int, floor: int, device: str = "lift-1") -> Entry:
    topic = contract.topic(gateway, contract.DATA)
    payload = contract.envelope(gateway, contract.DATA, seq, T0 + seq, contract.encode_batch(
        [Reading(device, T0 + seq, {"floor": floor})]))
    return entry_of(contract.decode(topic, payload), topic, payload, T0 + seq + 5, True)


def state_entry(gateway: str, state: str, ts: int) -> Entry:
    topic = contract.topic(gateway, contract.STATE)
    payload = contract.state_payload(gateway, state, ts)
    return entry_of(contract.decode(topic, payload), topic, payload, ts, False)


class Worker:
    """What a worker process does with its store: ingest with the feed row in the transaction."""

    def __init__(self, url: str) -> None:
        self.store = open_store(url)
        self.feed = FeedWriter("test")
        self.store.tx_writers.append(self.feed)

    def ingest(self, *entries: Entry) -> None:
        self.feed.expect(entries)
        self.store.ingest([e.record for e in entries if e.record is not None])


def test_every_fresh_envelope_is_fed_once_in_order_and_redelivery_is_not(pg_store: Store,
                                                                        pg_url: str) -> None:
    a, b = Worker(pg_url), Worker(pg_url)
    got: list[Accepted] = []
    reader = FeedReader(pg_store, got.extend, lambda *_: None)
    try:
        a.ingest(data_entry("gw1", 1, 3), data_entry("gw1", 3, 5))
        b.ingest(data_entry("gw1", 2, 4))
        a.ingest(data_entry("gw1", 2, 4))  # re-delivered to the other worker: not fresh
        assert reader.poll() == 2
        assert reader.poll() == 0
        assert [(x.gateway, x.envelope.seq) for x in got] == [("gw1", 1), ("gw1", 3), ("gw1", 2)]
        assert got[0].envelope.readings[0].values == {"floor": 3}
        assert got[0].received == T0 + 6 and got[0].live is True
        assert reader.stats.messages == 3
    finally:
        a.store.close()
        b.store.close()
    again = FeedReader(pg_store, got.extend, lambda *_: None)  # a restarted hub resumes
    assert again.poll() == 0 and len(got) == 3


def test_the_feed_carries_what_the_store_kept_of_a_rewritten_envelope(pg_store: Store,
                                                                     pg_url: str) -> None:
    """A device reported by a gateway that does not own it is left out: of the hooks too."""
    w = Worker(pg_url)
    got: list[Accepted] = []
    reader = FeedReader(pg_store, got.extend, lambda *_: None)
    topic = contract.topic("gw2", contract.DATA)
    payload = contract.envelope("gw2", contract.DATA, 1, T0, contract.encode_batch(
        [Reading("lift-1", T0, {"floor": 7}), Reading("lift-9", T0, {"floor": 2})]))
    try:
        w.ingest(data_entry("gw1", 1, 3))  # gw1 owns lift-1
        w.ingest(entry_of(contract.decode(topic, payload), topic, payload, T0 + 5, False))
        while reader.poll():
            pass
    finally:
        w.store.close()
    assert [(a.gateway, [r.device for r in a.envelope.readings]) for a in got] == \
        [("gw1", ["lift-1"]), ("gw2", ["lift-9"])]
    assert reader.stats.undecodable == 0


def test_a_feed_row_waits_for_its_commit_and_keeps_commit_order(pg_store: Store,
                                                              pg_url: str) -> None:
    """An ingest transaction holding the feed lock blocks the next one, so ids follow commits."""
    slow, fast = Worker(pg_url), Worker(pg_url)
    inside, release = threading.Event(), threading.Event()

    def stall(_cur: Any, _result: Any) -> None:
        inside.set()
        release.wait(10)

    slow.store.tx_writers.append(stall)  # after the feed row: holds the lock until released
    got: list[Accepted] = []
    reader = FeedReader(pg_store, got.extend, lambda *_: None)
    t = threading.Thread(target=slow.ingest, args=(data_entry("gw1", 1, 1),))
    t.start()
    try:
        assert inside.wait(10)
        t2 = threading.Thread(target=fast.ingest, args=(data_entry("gw2", 1, 1, "lift-2"),))
        t2.start()
        t2.join(0.5)
        assert t2.is_alive(), "the second transaction must wait for the first's commit"
        assert reader.poll() == 0
        release.set()
        t.join(10)
        t2.join(10)
        while reader.poll():
            pass
        assert [x.gateway for x in got] == ["gw1", "gw2"]
    finally:
        release.set()
        slow.store.close()
        fast.store.close()


def test_gateway_states_from_every_worker_are_fed_once_and_never_older(pg_store: Store,
                                                                      pg_url: str) -> None:
    a, b = Worker(pg_url), Worker(pg_url)
    states: list[tuple[str, str]] = []
    reader = FeedReader(pg_store, lambda _: None, lambda gw, st, _d: states.append((gw, st)))
    try:
        a.ingest(state_entry("gw1", "online", T0))
        a.ingest(state_entry("gw1", "offline", T0 + 10))
        b.ingest(state_entry("gw1", "online", T0))  # worker b lags: the same retained states
        b.ingest(state_entry("gw1", "offline", T0 + 10))
        while reader.poll():
            pass
        assert states == [("gw1", "online"), ("gw1", "offline")]
    finally:
        a.store.close()
        b.store.close()


def test_a_failing_hook_is_counted_and_the_cursor_moves_on(pg_store: Store, pg_url: str) -> None:
    w = Worker(pg_url)

    def broken(_items: list[Accepted]) -> None:
        raise RuntimeError("feature bug")

    reader = FeedReader(pg_store, broken, lambda *_: None)
    try:
        w.ingest(data_entry("gw1", 1, 1))
        assert reader.poll() == 1 and reader.stats.hook_errors == 1
        assert reader.poll() == 0
    finally:
        w.store.close()


def test_leader_lock_is_handed_over_when_the_leader_dies(pg_store: Store) -> None:
    first, second = LeaderLock(dsn_of(pg_store.engine)), LeaderLock(dsn_of(pg_store.engine))
    try:
        assert first.try_acquire()
        assert not second.try_acquire()
        first._conn.close()  # the leader's session dies with it
        assert not first.held()
        assert second.try_acquire() and second.held()
    finally:
        first.release()
        second.release()


def test_lead_runs_duties_only_while_holding_the_lock(pg_store: Store) -> None:
    async def scenario() -> list[str]:
        log: list[str] = []
        holder = LeaderLock(dsn_of(pg_store.engine))
        assert holder.try_acquire()
        started = asyncio.Event()

        async def duties() -> None:
            log.append("started")
            started.set()
            await asyncio.Event().wait()

        task = asyncio.create_task(lead(LeaderLock(dsn_of(pg_store.engine)), duties,
                                        check_every=0.05))
        await asyncio.sleep(0.3)
        log.append("standing by")
        holder.release()
        await asyncio.wait_for(started.wait(), 5)
        task.cancel()
        return log

    assert asyncio.run(scenario()) == ["standing by", "started"]


# --- policy without a database -------------------------------------------------------------------

@pytest.mark.parametrize(("count", "db", "ok"), [
    (1, "sqlite:///x.sqlite", True), (2, "sqlite:///x.sqlite", False),
    (4, "postgresql://u@h/db", True), (0, "postgresql://u@h/db", False),
    (65, "postgresql://u@h/db", False)])
def test_worker_count_is_checked_against_the_database(count: int, db: str, ok: bool) -> None:
    if ok:
        check_workers(count, db)
    else:
        with pytest.raises(WorkersError):
            check_workers(count, db)


def test_client_ids_restart_backoff_and_exit_reasons() -> None:
    assert [worker_client_id("collector-a", i) for i in (1, 2, 3)] == \
        ["collector-a", "collector-a-2", "collector-a-3"]
    assert restart_delay(0.0, 0.1) == RESTART_MIN_S
    assert restart_delay(RESTART_MIN_S, 1.0) == 2 * RESTART_MIN_S
    assert restart_delay(20.0, 1.0) == RESTART_MAX_S
    assert restart_delay(20.0, 3600.0) == RESTART_MIN_S
    assert exit_reason(-9) == "killed by SIGKILL" and exit_reason(1) == "exited with 1"


def test_health_sums_workers_and_names_the_one_not_running() -> None:
    ing = {"received": 10, "stored_messages": 9, "pending": 1, "broker_connected": True,
           "rejected": {"bad_json": 2}, "stuck": "", "source": "mqtt"}
    workers = [{"index": 1, "state": "running", "last_exit": "", "ingest": ing},
               {"index": 2, "state": "restarting", "last_exit": "killed by SIGKILL",
                "ingest": {**ing, "broker_connected": False}}]
    out = merged_stats(workers)
    assert out["received"] == 20 and out["stored_messages"] == 18 and out["pending"] == 2
    assert out["rejected"] == {"bad_json": 4}
    assert out["broker_connected"] is False
    assert out["stuck"] == "worker 2 restarting (killed by SIGKILL)"
    assert out["workers"] == workers
    workers[1].update(state="running", ingest=ing)
    healthy = merged_stats(workers)
    assert healthy["stuck"] == "" and healthy["broker_connected"] is True
