"""The data hub store, on SQLite and PostgreSQL: idempotent ingest, latest state, queries."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from citygate.rig import wait_for
from collector import schema
from collector.features import open_store
from collector.store import Accepted, Store
from devices.contract import DataEnvelope, EventsEnvelope


def data(gw: str, seq: int, readings: list[dict], replay: bool = False) -> Accepted:
    env = DataEnvelope.model_validate(
        {"v": 1, "gateway": gw, "seq": seq, "sent": 1_700_000_000_000, "replay": replay,
         "readings": readings})
    return Accepted(gw, env, 1_700_000_000_500)


def events(gw: str, seq: int, evs: list[dict]) -> Accepted:
    env = EventsEnvelope.model_validate(
        {"v": 1, "gateway": gw, "seq": seq, "sent": 1_700_000_000_000, "events": evs})
    return Accepted(gw, env, 1_700_000_000_500)


T0 = 1_700_000_000_000  # readings are observed around this time, sent at T0, received +0.5 s


def reading(dev: str, ts: int, **values: object) -> dict:
    """A reading observed `ts` ms before the message was sent (the store keeps `ts` as sent)."""
    return {"device": dev, "ts": T0 - 100_000 + ts, "values": values}


def test_ingest_is_idempotent_on_gateway_and_seq(store: Store) -> None:
    batch = [data("gw1", 1, [reading("l1", 1000, floor=3, door_closed=True)]),
             data("gw1", 2, [reading("l1", 2000, floor=4)])]
    first = store.ingest(batch)
    again = store.ingest([*batch, data("gw2", 1, [reading("l2", 1000, floor=1)])])
    assert (first.messages, first.duplicates, first.readings) == (2, 0, 3)
    assert (again.messages, again.duplicates, again.readings) == (1, 2, 1)
    assert store.counts()["readings"] == 4
    assert store.counts()["batches"] == 3


def test_a_key_twice_in_one_batch_is_stored_once_the_first_as_sent(store: Store) -> None:
    first = data("gw1", 5, [reading("l1", 1000, floor=3)])
    twin = data("gw1", 5, [reading("l1", 1000, floor=8)])  # same key, other content
    r = store.ingest([first, data("gw1", 6, [reading("l1", 2000, floor=4)]), twin])
    assert (r.messages, r.duplicates, r.readings) == (2, 1, 2)
    assert [a.envelope.seq for a in r.fresh] == [5, 6]
    assert r.fresh[0] is first
    assert [h["value"] for h in store.readings("l1", "floor", None, None, 10)] == [3.0, 4.0]


def test_claims_of_a_batch_larger_than_one_statement_count_exactly(store: Store) -> None:
    from collector.store_ingest import CLAIMS

    n = CLAIMS + 250  # two claim statements, with keys held before in both
    store.ingest([data("gw1", s, [reading("l1", s, floor=1)]) for s in range(1, n + 1, 7)])
    batch = [data("gw1", s, [reading("l1", s, floor=1)]) for s in range(n, 0, -1)]
    r = store.ingest(batch)
    held = len(range(1, n + 1, 7))
    assert (r.messages, r.duplicates) == (n - held, held)
    assert [a.envelope.seq for a in r.fresh] == [s for s in range(n, 0, -1) if s % 7 != 1]
    assert store.counts()["batches"] == n
    assert store.counts()["readings"] == n
    assert store.seq_gaps("gw1") == []


def test_same_seq_from_another_gateway_is_not_a_duplicate(store: Store) -> None:
    r = store.ingest([data("gw1", 7, [reading("a", 1, floor=1)]),
                      data("gw2", 7, [reading("b", 1, floor=1)])])
    assert r.messages == 2 and r.duplicates == 0


def test_latest_keeps_the_newest_observation_even_when_older_arrives_later(store: Store) -> None:
    store.ingest([data("gw1", 1, [reading("l1", 5000, floor=9, speed=1.5)])])
    store.ingest([data("gw1", 2, [reading("l1", 1000, floor=2)], replay=True)])
    latest = {r["quantity"]: r for r in store.latest("l1")}
    assert latest["floor"]["value"] == 9.0
    assert latest["floor"]["ts"] == T0 - 100_000 + 5000
    hist = store.readings("l1", "floor", None, None, 100)
    assert [(h["ts"] - T0 + 100_000, h["value"], bool(h["replay"])) for h in hist] == \
        [(1000, 2.0, True), (5000, 9.0, False)]


def test_readings_query_filters_by_quantity_and_time(store: Store) -> None:
    store.ingest([data("gw1", i, [reading("l1", i * 1000, floor=i, trip_count=100 + i)])
                  for i in range(1, 11)])
    base = T0 - 100_000
    rows = store.readings("l1", "floor", base + 3000, base + 6000, 100)
    assert [r["ts"] - base for r in rows] == [3000, 4000, 5000]
    assert len(store.readings("l1", None, None, None, 5)) == 5
    assert store.readings("nobody", None, None, None, 5) == []


def test_unknown_quantities_and_missing_values_are_dropped_and_counted(store: Store) -> None:
    r = store.ingest([data("gw1", 1, [reading("l1", 1, floor=1, wattage=7, speed=None)])])
    assert r.readings == 1
    assert r.dropped_values == {"unknown_quantity": 1}


def test_events_fold_into_active_faults(store: Store) -> None:
    ev = {"device": "l1", "kind": "trapped_passenger", "severity": "critical",
          "evidence": {"floor": 3}}
    store.ingest([events("gw1", 1, [{**ev, "ts": T0 - 5000, "action": "raise"}])])
    with store.engine.connect() as conn:
        active = conn.execute(sa.select(schema.active_faults)).mappings().all()
    assert [(a["device_id"], a["kind"], a["since"]) for a in active] == \
        [("l1", "trapped_passenger", T0 - 5000)]
    store.ingest([events("gw1", 2, [{**ev, "ts": T0 - 1000, "action": "clear"}])])
    with store.engine.connect() as conn:
        assert conn.execute(sa.select(schema.active_faults)).first() is None
        assert conn.scalar(sa.select(sa.func.count()).select_from(schema.events)) == 2


def test_gateway_state_inventory_and_last_seq(store: Store) -> None:
    store.record_state("gw1", "online", 123, "", "0.1.0", "boot-1",
                       {"l1": {"kind": "elevator", "profile": "elevator-gbt24476"}})
    store.ingest([data("gw1", 41, [reading("l1", 1, floor=1)]),
                  data("gw1", 40, [reading("l1", 1, floor=1)])])
    store.record_state("gw1", "offline", 456, "lost", "0.1.0", "boot-1", {})
    gw = store.gateways()[0]
    assert (gw["gateway_id"], gw["state"], gw["state_reason"], gw["last_seq"],
            gw["device_count"]) == ("gw1", "offline", "lost", 41, 1)
    dev = store.device("l1")
    assert dev is not None and (dev["kind"], dev["gateway_id"]) == ("elevator", "gw1")
    store.record_health("gw1", {"counters": {"outbox_messages": 3}})
    assert '"outbox_messages":3' in (store.gateways()[0]["health"] or "")


def test_unsynced_gateway_times_are_placed_on_the_collector_clock(store: Store) -> None:
    # The gateway booted in 1970 without a real-time clock and says it is not synchronised.
    env = DataEnvelope.model_validate({
        "v": 1, "gateway": "gw1", "seq": 1, "sent": 86_400_000,
        "clock": {"synced": False, "boot": "b1", "sent_boot": "b1", "mono": 50_000},
        "readings": [{"device": "l1", "ts": 86_390_000, "mono": 40_000, "values": {"floor": 1}},
                     {"device": "l2", "ts": 86_399_000, "values": {"floor": 2}}]})
    result = store.ingest([Accepted("gw1", env, T0)])
    assert result.time_corrected == {"monotonic": 1, "offset": 1}
    latest = {r["device_id"]: r["ts"] for d in ("l1", "l2") for r in store.latest(d)}
    assert latest == {"l1": T0 - 10_000, "l2": T0 - 1000}


def test_times_are_never_stored_before_2000_or_in_the_future(store: Store) -> None:
    env = DataEnvelope.model_validate({
        "v": 1, "gateway": "gw1", "seq": 1, "sent": T0,
        "readings": [{"device": "l1", "ts": 5, "values": {"floor": 1}},
                     {"device": "l2", "ts": T0 + 86_400_000, "values": {"floor": 2}}]})
    result = store.ingest([Accepted("gw1", env, T0 + 10)])
    assert result.time_corrected == {"clamped": 2}
    assert {r["ts"] for d in ("l1", "l2") for r in store.latest(d)} == {T0 + 10}


def test_claim_array_literals_read_back_as_sent(store: Store) -> None:
    from collector.store_ingest import _int_array, _text_array, pg_array

    texts = ['gw-1', 'a"b', 'c\\d', '{x,y}', 'NULL', ' sp ', '', 'é\t,"\\"']
    plain = ['gw-1', '{x,y}', 'NULL', 'None', ' sp ', '', 'é\t,']  # nothing to escape
    ints = [0, -1, 2**63 - 1, 7]
    floats = [0.1, -1e15, 1e15, 1e-7, 2.5e-300, 3.0, None]
    columns = [(_text_array(texts), "text", texts), (_int_array(ints), "bigint", ints),
               (pg_array([*texts, None]), "text", [*texts, None]),
               (pg_array(texts), "text", texts), (pg_array(plain), "text", plain),
               (pg_array(ints), "bigint", ints), (pg_array([*ints, None]), "bigint", [*ints, None]),
               (pg_array(floats), "float8", floats), (pg_array([None, None]), "text", [None, None]),
               (pg_array([1, 2.5, None, -3]), "float8", [1.0, 2.5, None, -3.0]),
               (pg_array([]), "text", []), (pg_array([True, False, None]), "boolean",
                                            [True, False, None])]
    if not store.is_pg:
        return  # (PostgreSQL's array syntax; SQLite claims with a VALUES list)
    with store.raw() as conn:
        got = conn.execute("SELECT " + ", ".join(f"%s::{t}[]" for _, t, _ in columns),
                           [literal for literal, _, _ in columns]).fetchone()
    assert list(got) == [want for _, _, want in columns]


@pytest.mark.postgres
def test_a_newer_latest_value_replaces_the_old_one_in_its_page_on_postgresql(
        pg_url: str) -> None:
    """`latest` is rewritten for every reading stored: on PostgreSQL each newer value must fit
    in the page of the one it replaces (a HOT update, no new index entry), which needs room
    left in the pages (fillfactor)."""
    store = open_store(pg_url)
    try:
        def rows(ts: int) -> list[tuple[object, ...]]:
            return [(f"dev-{d:03d}", f"q{q:02d}", ts, float(d * q), None, "good", "gw", 1,
                     False) for d in range(100) for q in range(20)]

        with store.raw() as conn:
            store._upsert_latest(conn.cursor(), rows(1_000))
        with store.raw() as conn:
            cur = conn.cursor()
            store._upsert_latest(cur, rows(2_000))
            cur.execute("SELECT pg_stat_get_xact_tuples_updated('latest'::regclass),"
                        " pg_stat_get_xact_tuples_hot_updated('latest'::regclass)")
            updated, hot = cur.fetchone()
        assert updated == 2_000
        assert hot >= 0.95 * updated, f"only {hot} of {updated} updates stayed in their page"
        assert {r["ts"] for r in store.latest("dev-007")} == {2_000}
    finally:
        store.close()


def test_health_counts_large_tables_from_statistics_and_small_ones_exactly(
        store: Store) -> None:
    readings = [{"device": f"l{i}", "ts": T0 + i, "values": {"floor": i, "speed": 0.5}}
                for i in range(20)]
    store.ingest([data("gw1", 1, readings), data("gw1", 2, readings[:5])])
    exact = store.counts()
    assert exact["readings"] == 50 and exact["batches"] == 2
    assert store.row_counts() == (exact, [])  # the default bound: 100,000 rows
    if not store.is_pg:
        assert store.row_counts(exact_below=10) == (exact, [])  # SQLite always counts
        return

    def live(table: str) -> int:  # the statistics system's live rows, flushed after commit
        with store.engine.connect() as conn:
            return int(conn.scalar(sa.text(
                "SELECT sum(pg_stat_get_live_tuples(relid)) FROM (SELECT relid FROM"
                " pg_partition_tree(CAST(:t AS regclass)) UNION SELECT CAST(:t AS regclass))"
                " AS leaves"), {"t": table}) or 0)

    # Never analysed (as where autovacuum is off): the live rows are the estimate, no scan.
    wait_for(lambda: live("readings") == 50 and live("devices") == 20, 10,
             "the statistics to count 50 readings of 20 devices")
    counts, estimated = store.row_counts(exact_below=10)
    # readings is partitioned, devices is not; batches (2 rows) is under the bound: counted
    assert estimated == ["devices", "readings"]
    assert counts["readings"] == 50 and counts["devices"] == 20 and counts["batches"] == 2
    with store.engine.begin() as conn:
        # As autovacuum leaves it: the partitions holding rows analysed, the empty ones (days
        # ahead, the DEFAULT) never.
        for (leaf,) in conn.execute(sa.text("SELECT DISTINCT tableoid::regclass::text"
                                            " FROM readings")).all():
            conn.execute(sa.text(f"ANALYZE {leaf}"))
        conn.execute(sa.text("DELETE FROM readings WHERE device_id = 'l0'"))
    wait_for(lambda: live("readings") == 46, 10, "the statistics to see the delete")
    # The planner's figure (50, until the next ANALYZE) is the larger: an estimate, not a scan.
    assert store.row_counts(exact_below=10)[0]["readings"] == 50
    assert store.counts()["readings"] == 46


def test_sqlite_connections_checkpoint_the_wal_every_4000_pages(tmp_path) -> None:
    """Every connection of an SQLite store, the ingest writer's and the API's alike, lets the
    WAL grow to WAL_AUTOCHECKPOINT_PAGES before a commit copies it into the database."""
    from collector.store import WAL_AUTOCHECKPOINT_PAGES

    store = open_store(f"sqlite:///{tmp_path}/hub.db")
    try:
        with store.engine.connect() as a, store.engine.connect() as b:
            for conn in (a, b):
                assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == \
                    WAL_AUTOCHECKPOINT_PAGES == 4000
                assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    finally:
        store.close()
