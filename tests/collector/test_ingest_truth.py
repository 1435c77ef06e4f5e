"""The ingest write path keeps the truth: times as observed, every message kind stored or kept,
poison messages isolated, devices bound to the gateway that owns them. On SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

from citygate.rig import wait_for
from collector import schema
from collector.failures import Failure, classify
from collector.features import open_store
from collector.ingest import Entry, IngestCore, IngestSettings, IngestStats
from collector.placement import ClockPolicy, clock_policy
from collector.store import Accepted, GatewayMessage, Store
from devices.contract import (
    ClockInfo,
    DataEnvelope,
    EventsEnvelope,
    HealthMessage,
    StateMessage,
    WireEvent,
)

T0 = 1_763_000_000_000
MIN = 60_000


def data(gw: str, seq: int, readings: list[dict[str, Any]], *, sent: int = T0,
         received: int = T0 + 50, live: bool = False, clock: dict[str, Any] | None = None,
         ) -> Accepted:
    env = DataEnvelope.model_validate({"v": 1, "gateway": gw, "seq": seq, "sent": sent,
                                       "clock": clock or {"synced": True}, "readings": readings})
    return Accepted(gw, env, received, live)


def events(gw: str, seq: int, evs: list[dict[str, Any]], received: int = T0 + 50) -> Accepted:
    env = EventsEnvelope.model_validate({"v": 1, "gateway": gw, "seq": seq, "sent": T0,
                                         "events": evs})
    return Accepted(gw, env, received)


# Poison that got past the contract: what a store refuses must be isolated whatever the
# contract lets through, so these messages are built without its validation.

def unchecked_events(gw: str, seq: int, evs: list[dict[str, Any]]) -> Accepted:
    env = EventsEnvelope.model_construct(
        v=1, gateway=gw, seq=seq, sent=T0, clock=ClockInfo(), replay=False,
        events=[WireEvent.model_construct(**ev) for ev in evs])
    return Accepted(gw, env, T0 + 50)


def unchecked_state(gw: str, devices: dict[str, dict[str, str]]) -> GatewayMessage:
    msg = StateMessage.model_construct(v=1, gateway=gw, state="online", ts=T0, reason="",
                                       version="", boot="", devices=devices)
    return GatewayMessage(gw, msg, T0)


def state(gw: str, devices: dict[str, dict[str, str]], received: int = T0) -> GatewayMessage:
    msg = StateMessage.model_validate({"v": 1, "gateway": gw, "state": "online", "ts": T0,
                                       "devices": devices})
    return GatewayMessage(gw, msg, received)


def health(gw: str, sent: int, received: int, live: bool) -> GatewayMessage:
    msg = HealthMessage.model_validate({"v": 1, "gateway": gw, "sent": sent})
    return GatewayMessage(gw, msg, received, live)


def ts_of(store: Store, device: str) -> list[int]:
    return [r["ts"] for r in store.readings(device, None, None, None, 1000)]


# --- time: kept however long a message waited; fallback only on evidence -------------------------

def test_a_synchronised_gateways_time_is_kept_however_long_the_message_waited(
        store: Store) -> None:
    # Sent (and observed) an hour before it reached the collector: it waited at the broker.
    waited = data("gw1", 1, [{"device": "l1", "ts": T0 - 1000, "values": {"floor": 3}}],
                  received=T0 + 60 * MIN)
    result = store.ingest([waited])
    assert ts_of(store, "l1") == [T0 - 1000]
    assert result.time_corrected == {}
    assert Store.gateway_clock(store.gateways()[0]).wrong is False


def test_a_gateway_clock_ahead_is_shown_wrong_by_any_message_and_placed_by_fallback(
        store: Store) -> None:
    ahead = 10 * MIN
    clock = {"synced": True, "boot": "b1", "sent_boot": "b1", "mono": 500_000}
    msg = data("gw1", 1, [{"device": "l1", "ts": T0 + ahead - 2000, "mono": 498_000,
                           "values": {"floor": 3}}], sent=T0 + ahead, received=T0, clock=clock)
    result = store.ingest([msg])
    assert ts_of(store, "l1") == [T0 - 2000]
    assert result.time_corrected == {"monotonic": 1}
    gw = store.gateways()[0]
    assert Store.gateway_clock(gw).as_dict() == {"offset_ms": ahead, "measured_at": T0,
                                                 "source": "ahead", "wrong": True}


def test_a_clock_behind_is_judged_on_live_messages_only_and_cleared_by_one(store: Store) -> None:
    behind = 10 * MIN
    # Live health shows the gateway 10 minutes behind: its data is placed by the fallback,
    # also data that may have waited (not live).
    store.ingest([health("gw1", T0 - behind, T0, live=True)])
    waited = data("gw1", 1, [{"device": "l1", "ts": T0 - behind - 1000, "values": {"floor": 1}}],
                  sent=T0 - behind, received=T0 + 5000)
    result = store.ingest([waited])
    assert result.time_corrected == {"offset": 1}
    assert ts_of(store, "l1") == [T0 + 4000]
    gw = Store.gateway_clock(store.gateways()[0])
    assert (gw.offset_ms, gw.source, gw.wrong) == (-behind, "live", True)
    # A queued message proves nothing; a live one on time clears the judgement.
    store.ingest([health("gw1", T0 + 10_000, T0 + 10_300, live=False)])
    assert Store.gateway_clock(store.gateways()[0]).wrong is True
    store.ingest([health("gw1", T0 + 20_000, T0 + 20_300, live=True)])
    gw = Store.gateway_clock(store.gateways()[0])
    assert (gw.offset_ms, gw.source, gw.wrong) == (-300, "live", False)
    store.ingest([data("gw1", 2, [{"device": "l1", "ts": T0 + 25_000, "values": {"floor": 2}}],
                       sent=T0 + 25_000, received=T0 + 30 * MIN)])
    assert ts_of(store, "l1") == [T0 + 4000, T0 + 25_000]


def test_a_measured_clock_is_stored_again_when_it_moves_changes_verdict_or_ages(
        store: Store) -> None:
    def stored() -> tuple[Any, ...]:
        c = Store.gateway_clock(store.gateways()[0])
        return c.offset_ms, c.measured_at, c.wrong

    store.ingest([health("gw1", T0 - 300, T0, live=True)])
    assert stored() == (-300, T0, False)
    # Jitter within CLOCK_MOVE_MS, within a minute: the stored measurement stands ...
    store.ingest([health("gw1", T0 + 1000 - 400, T0 + 1000, live=True)])
    assert stored() == (-300, T0, False)
    # ... while the batch itself is judged on the newest one: 3 minutes behind is wrong.
    store.ingest([health("gw1", T0 + 2000 - 3 * MIN, T0 + 2000, live=True)])
    assert stored() == (-3 * MIN, T0 + 2000, True)
    store.ingest([health("gw1", T0 + 3000 - 500, T0 + 3000, live=True)])  # verdict: right again
    assert stored() == (-500, T0 + 3000, False)
    store.ingest([health("gw1", T0 + 4000 - 800, T0 + 4000, live=True)])  # moved 300 ms
    assert stored() == (-800, T0 + 4000, False)
    store.ingest([health("gw1", T0 + 30_000 - 850, T0 + 30_000, live=True)])
    assert stored() == (-800, T0 + 4000, False)
    store.ingest([health("gw1", T0 + 64_000 - 850, T0 + 64_000, live=True)])  # a minute on
    assert stored() == (-850, T0 + 64_000, False)
    store.ingest([health("gw1", T0 + 70_000, T0 + 90_000, live=False)])  # proves nothing
    assert stored() == (-850, T0 + 64_000, False)
    store.ingest([health("gw1", T0 - 860, T0, live=True)])  # the collector's clock stepped back
    assert stored() == (-860, T0, False)


def test_clock_tolerances_come_from_the_ingest_section() -> None:
    assert clock_policy({"max_skew": "2s", "live_bound": "500ms"}) == \
        ClockPolicy(max_skew_ms=2000, max_future_ms=60_000, live_bound_ms=500)
    with pytest.raises(ValueError, match=r"ingest\.max_skew"):
        clock_policy({"max_skew": "soon"})
    with pytest.raises(ValueError, match="unknown key"):
        IngestSettings.from_section({"skew": "2s"})


def test_a_clamped_time_makes_the_reading_uncertain_and_is_counted_by_reason(
        store: Store) -> None:
    env = data("gw1", 1, [{"device": "l1", "ts": 5, "values": {"floor": 1}},
                          {"device": "l2", "ts": T0 + 86_400_000, "values": {"floor": 2}},
                          {"device": "l3", "ts": T0 - 1000, "values": {"floor": 3}}],
               received=T0 + 10)
    result = store.ingest([env])
    assert result.flagged == {"before_2000": 1, "future": 1}
    assert result.time_corrected == {"clamped": 2}
    quality = {d: store.latest(d)[0]["quality"] for d in ("l1", "l2", "l3")}
    assert quality == {"l1": "uncertain", "l2": "uncertain", "l3": "good"}


# --- state and data together --------------------------------------------------------------------

def test_a_state_before_or_with_the_first_data_leaves_the_inventory_kind(store: Store) -> None:
    lift = {"kind": "elevator", "profile": "elevator-gbt24476"}
    store.ingest([data("gw1", 1, [{"device": "l1", "ts": T0, "values": {"floor": 1}}]),
                  state("gw1", {"l1": lift, "l2": lift}),
                  data("gw1", 2, [{"device": "l2", "ts": T0, "values": {"floor": 1}}])])
    store.ingest([data("gw1", 3, [{"device": "l1", "ts": T0 + 1, "values": {"floor": 2}},
                                  {"device": "l3", "ts": T0 + 1, "values": {"floor": 2}}])])
    kinds = {d["device_id"]: (d["kind"], d["profile"]) for d in store.devices()}
    assert kinds == {"l1": ("elevator", "elevator-gbt24476"),
                     "l2": ("elevator", "elevator-gbt24476"), "l3": ("unknown", "")}


def test_a_devices_last_seen_moves_in_steps_and_an_inventory_still_lands(store: Store) -> None:
    """A device reporting every second would rewrite its row per envelope for a figure read in
    seconds: last_seen moves when a report is LAST_SEEN_STEP_MS or more past the stored one."""
    from collector.store_ingest import LAST_SEEN_STEP_MS as STEP

    def seen() -> tuple[int, int]:
        d = store.device("l1")
        assert d is not None
        return d["first_seen"], d["last_seen"]

    r0 = T0 + 50
    for seq, received in enumerate((r0, r0 + 1000, r0 + STEP - 1), start=1):
        store.ingest([data("gw1", seq, [{"device": "l1", "ts": T0 + seq, "values": {"floor": seq}}],
                           received=received)])
        assert seen() == (r0, r0), seq
    assert len(ts_of(store, "l1")) == 3  # every reading is stored all the same
    store.ingest([state("gw1", {"l1": {"kind": "elevator", "profile": "elevator-gbt24476"}},
                        received=r0 + 2000)])
    assert (store.device("l1") or {})["kind"] == "elevator"  # an inventory is never held back
    store.ingest([data("gw1", 4, [{"device": "l1", "ts": T0 + 4, "values": {"floor": 4}}],
                       received=r0 + STEP)])
    assert seen() == (r0, r0 + STEP)
    store.ingest([data("gw1", 5, [{"device": "l1", "ts": T0 + 5, "values": {"floor": 5}}],
                       received=r0)])  # a late delivery never moves it back
    assert seen() == (r0, r0 + STEP)
    lift = {"kind": "elevator", "profile": "elevator-gbt24476"}
    store.ingest([state("gw1", {"l1": lift}, received=r0 + STEP + 5),  # with its inventory
                  data("gw1", 6, [{"device": "l1", "ts": T0 + 6, "values": {"floor": 6}}],
                       received=r0 + STEP + 5)])
    assert seen() == (r0, r0 + STEP + 5)


def test_inventory_text_and_every_gateways_clock_are_stored_as_sent(store: Store) -> None:
    """Kinds and profiles with quotes, braces, commas, backslashes or the word NULL, and a
    batch of many gateways and devices, are stored exactly (PostgreSQL writes each batch
    column as one array literal)."""
    odd = {"kind": 'lift "A", {b}', "profile": "NULL"}
    odd2 = {"kind": "back\\slash", "profile": " spaced "}
    store.ingest([state("gw-odd", {"o1": odd, "o2": odd2})]
                 + [data(f"gw-{g:02d}", 1, [{"device": f"d{g}-{k}", "ts": T0 + k,
                                             "values": {"floor": k}} for k in range(3)],
                         sent=T0 + g, received=T0 + 50 + g, live=True) for g in range(30)])
    devices = {d["device_id"]: d for d in store.devices()}
    assert (devices["o1"]["kind"], devices["o1"]["profile"]) == ('lift "A", {b}', "NULL")
    assert (devices["o2"]["kind"], devices["o2"]["profile"]) == ("back\\slash", " spaced ")
    for g in range(30):
        for k in range(3):
            d = devices[f"d{g}-{k}"]
            assert (d["gateway_id"], d["last_seen"]) == (f"gw-{g:02d}", T0 + 50 + g)
    with store.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT gateway_id, last_seq, last_seen, clock_offset_ms,"
                                    " clock_source FROM gateways WHERE gateway_id LIKE 'gw-__'"
                                    " ORDER BY gateway_id")).all()
    assert [tuple(r) for r in rows] == [(f"gw-{g:02d}", 1, T0 + 50 + g, -50, "live")
                                        for g in range(30)]


@pytest.mark.postgres
def test_births_and_data_batches_at_once_never_deadlock(pg_url: str) -> None:
    """Two writers (a birth-heavy one and a data one, as two collectors would be) on the same
    gateways and devices, in opposite orders; every message stored, nothing retried."""
    store = open_store(pg_url)
    gws = [f"gw{i:02d}" for i in range(20)]
    lift = {"kind": "elevator", "profile": "p"}
    errors: list[BaseException] = []

    def births() -> None:
        for rnd in range(15):
            try:
                store.ingest([state(g, {f"{g}-l{k}": lift for k in range(3)}, T0 + rnd)
                              for g in reversed(gws)])
            except BaseException as exc:
                errors.append(exc)

    def batches() -> None:
        for rnd in range(15):
            try:
                store.ingest([data(g, rnd + 1, [{"device": f"{g}-l{k}", "ts": T0 + rnd,
                                                  "values": {"floor": k}} for k in (2, 1, 0)])
                              for g in gws])
            except BaseException as exc:
                errors.append(exc)

    try:
        threads = [threading.Thread(target=f) for f in (births, batches, births, batches)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert errors == []
        assert store.counts()["batches"] == 20 * 15
        assert {d["kind"] for d in store.devices()} == {"elevator"}
        assert len(store.devices()) == 60
    finally:
        store.close()


@pytest.mark.postgres
def test_two_writers_cannot_admit_a_gateways_devices_past_its_limit(pg_url: str) -> None:
    """Two collectors store one flooding gateway's reports at once (a shared subscription):
    the gateway's devices are counted under its row lock, so together they admit its limit,
    not the limit each."""
    stores = [open_store(pg_url) for _ in range(2)]
    for s in stores:
        s.max_devices_per_gateway = 10
    refused: list[int] = []
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def flood(k: int) -> None:
        start.wait()
        for rnd in range(6):
            try:
                r = stores[k].ingest([data("gw-flood", 2 * rnd + k + 1, [
                    {"device": f"ghost-{k}-{rnd}-{i}", "ts": T0, "values": {"floor": i}}
                    for i in range(4)])])
                refused.append(r.refused.get("device_limit", 0))
            except BaseException as exc:
                errors.append(exc)

    try:
        threads = [threading.Thread(target=flood, args=(k,)) for k in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert errors == []
        assert len(stores[0].devices(gateway="gw-flood")) == 10
        assert sum(refused) == 2 * 6 * 4 - 10
    finally:
        for s in stores:
            s.close()


# --- poison messages ------------------------------------------------------------------------------

class Core(IngestCore):
    """The shared ingest core on a real store, without a broker."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.stats = IngestStats()
        self.on_stored = lambda items: None
        self.on_state = lambda gateway, s, devices: None
        self._warned = set()
        self._accounting = threading.Lock()


def entry(a: Accepted | GatewayMessage) -> Entry:
    return Entry(a, f"citygate/v1/{a.gateway}/data", b"{raw}", a.received)


def test_a_poison_envelope_is_isolated_and_quarantined_and_the_rest_stored(store: Store) -> None:
    good = [data("gw1", s, [{"device": "l1", "ts": T0 + s, "values": {"floor": s}}])
            for s in range(1, 8)]
    # Past the contract: a sequence number no BIGINT holds (SQLite: OverflowError,
    # PostgreSQL: numeric value out of range).
    poison = data("gw1", 1, [{"device": "l1", "ts": T0, "values": {"floor": 0}}])
    poison = Accepted("gw1", poison.envelope.model_copy(update={"seq": 2**63}), T0 + 50)
    core = Core(store)
    batch = [entry(a) for a in good[:4]] + [entry(poison)] + [entry(a) for a in good[4:]]
    assert core.store_entries(batch, lambda s: pytest.fail("not an outage"))
    assert (core.stats.stored_messages, core.stats.quarantined, core.stats.store_errors) == \
        (7, 1, 0)
    assert store.counts()["batches"] == 7
    [q] = store.quarantined()
    assert (q["gateway_id"], q["channel"], q["seq"], bytes(q["payload"])) == \
        ("gw1", "data", str(2**63), b"{raw}")
    assert "range" in q["error"] or "too large" in q["error"]


def event_with(**fields: Any) -> Accepted:
    ev = {"device": "l1", "ts": T0, "kind": "door_fault", "action": "info",
          "severity": "minor", **fields}
    return unchecked_events("gw1", 1, [ev])


@pytest.mark.parametrize(("field", "value"), [("code", 2**31), ("message", "door\x00open")])
def test_an_event_only_postgresql_refuses_is_quarantined_there_and_stored_on_sqlite(
        store: Store, field: str, value: object) -> None:
    core = Core(store)
    good = [data("gw1", s, [{"device": "l1", "ts": T0 + s, "values": {"floor": s}}])
            for s in range(2, 5)]
    batch = [entry(good[0]), entry(event_with(**{field: value})), *map(entry, good[1:])]
    assert core.store_entries(batch, lambda s: pytest.fail("not an outage"))
    refused = 1 if store.is_pg else 0
    assert (core.stats.stored_messages, core.stats.quarantined, core.stats.store_errors) == \
        (4 - refused, refused, 0)
    assert len(store.quarantined()) == refused
    assert store.counts()["events"] == 1 - refused


@pytest.mark.parametrize("kind", ["state", "health"])
def test_a_state_message_postgresql_refuses_is_quarantined_there(
        store: Store, kind: str) -> None:
    """A NUL in an inventory text is refused by PostgreSQL; in a health message it is stored
    (kept as JSON, where it is escaped)."""
    core = Core(store)
    if kind == "state":
        bad: GatewayMessage = unchecked_state("gw1",
                                              {"l1": {"kind": "elev\x00ator", "profile": ""}})
    else:
        msg = HealthMessage.model_construct(v=1, gateway="gw1", sent=T0, counters={},
                                            devices={"l1": {"note": "a\x00b"}})
        bad = GatewayMessage("gw1", msg, T0)
    good = data("gw1", 1, [{"device": "l1", "ts": T0, "values": {"floor": 1}}])
    assert core.store_entries([entry(good), entry(bad)], lambda s: pytest.fail("not an outage"))
    refused = 1 if store.is_pg and kind == "state" else 0
    assert (core.stats.stored_messages, core.stats.quarantined) == (1, refused)
    [q] = store.quarantined() if refused else [None]
    assert q is None or (q["gateway_id"], q["seq"]) == ("gw1", None)


def test_a_database_outage_is_retried_never_quarantined(tmp_path: Any) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'hub.sqlite'}")
    core = Core(store)
    real = store.ingest
    fails = iter([True, True, False])

    def flaky(items: Any) -> Any:
        if next(fails):
            raise psycopg.OperationalError("connection refused")
        return real(items)

    store.ingest = flaky  # type: ignore[method-assign]
    waits: list[float] = []

    def wait(seconds: float) -> bool:
        waits.append(seconds)
        return True

    ok = core.store_entries([entry(data("gw1", 1, [{"device": "l1", "ts": T0,
                                                    "values": {"floor": 1}}]))], wait)
    assert ok and waits == [1.0, 1.0]
    assert (core.stats.stored_messages, core.stats.quarantined, core.stats.store_errors) == \
        (1, 0, 2)
    store.close()


def test_a_deadlock_victim_is_retried_at_once(tmp_path: Any) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'hub.sqlite'}")
    core = Core(store)
    real = store.ingest
    victims = iter([True, True, False])

    def deadlocking(items: Any) -> Any:
        if next(victims):
            raise psycopg.errors.DeadlockDetected("deadlock detected")
        return real(items)

    store.ingest = deadlocking  # type: ignore[method-assign]
    ok = core.store_entries([entry(data("gw1", 1, [{"device": "l1", "ts": T0,
                                                    "values": {"floor": 1}}]))],
                            lambda s: pytest.fail("a deadlock victim waited"))
    assert ok
    assert (core.stats.stored_messages, core.stats.store_retries_now,
            core.stats.store_errors) == (1, 2, 0)
    store.close()


def test_failures_are_told_apart() -> None:
    assert classify(psycopg.errors.DeadlockDetected()) is Failure.RETRY_NOW
    assert classify(psycopg.errors.SerializationFailure()) is Failure.RETRY_NOW
    assert classify(psycopg.errors.NumericValueOutOfRange()) is Failure.DATA
    assert classify(psycopg.DataError("PostgreSQL text fields cannot contain NUL")) is \
        Failure.DATA
    assert classify(OverflowError("Python int too large")) is Failure.DATA
    assert classify(psycopg.OperationalError("connection refused")) is Failure.OPERATIONAL
    import sqlite3
    assert classify(sqlite3.OperationalError("database is locked")) is Failure.OPERATIONAL
    assert classify(RuntimeError("a bug")) is Failure.OPERATIONAL


# --- device ownership ----------------------------------------------------------------------------

TRAPPED = {"kind": "trapped_passenger", "severity": "critical"}


def test_another_gateway_cannot_clear_inject_or_take_a_device(store: Store) -> None:
    lift = {"kind": "elevator", "profile": "elevator-gbt24476"}
    store.ingest([state("gw-a", {"lift-1": lift}),
                  data("gw-a", 1, [{"device": "lift-1", "ts": T0, "values": {"floor": 3}}]),
                  events("gw-a", 2, [{**TRAPPED, "device": "lift-1", "ts": T0,
                                      "action": "raise"}])])
    r1 = store.ingest([events("gw-b", 1, [{**TRAPPED, "device": "lift-1", "ts": T0 + 1000,
                                           "action": "clear"}])])
    r2 = store.ingest([state("gw-b", {"lift-1": {"kind": "parking_sensor", "profile": "x"},
                                      "own-1": lift})])
    r3 = store.ingest([data("gw-b", 2, [{"device": "lift-1", "ts": T0 + 2000,
                                         "values": {"floor": 9}},
                                        {"device": "own-1", "ts": T0, "values": {"floor": 1}}])])
    assert [dict(r.refused) for r in (r1, r2, r3)] == [{"foreign_device": 1}] * 3
    assert [(f["device_id"], f["kind"]) for f in store.active_faults()] == \
        [("lift-1", "trapped_passenger")]
    dev = store.device("lift-1")
    assert dev is not None and (dev["gateway_id"], dev["kind"]) == ("gw-a", "elevator")
    assert [r["value"] for r in store.readings("lift-1", None, None, None, 10)] == [3.0]
    assert [r["value"] for r in store.readings("own-1", None, None, None, 10)] == [1.0]
    assert r3.fresh[0].envelope.readings[0].device == "own-1"  # hooks see only what is stored
    assert len(store.events(device="lift-1")) == 1
    # An admin moves the device to a replacement gateway: now gw-b may report it.
    assert store.move_device("lift-1", "gw-b")
    r4 = store.ingest([data("gw-b", 3, [{"device": "lift-1", "ts": T0 + 3000,
                                         "values": {"floor": 4}}])])
    r5 = store.ingest([data("gw-a", 3, [{"device": "lift-1", "ts": T0 + 3000,
                                         "values": {"floor": 5}}])])
    assert (dict(r4.refused), dict(r5.refused)) == ({}, {"foreign_device": 1})


def test_a_gateway_cannot_create_more_devices_than_its_limit(store: Store) -> None:
    """A gateway inventing device ids (a hostile or broken one) creates at most the limit of
    devices; what it reports of the rest is refused and counted, its own devices go on, and
    devices the registry assigns to it are admitted beyond the limit."""
    store.max_devices_per_gateway = 3
    r1 = store.ingest([data("gw-x", 1, [{"device": f"spot-{i}", "ts": T0,
                                        "values": {"occupied": True}} for i in range(2)])])
    r2 = store.ingest([data("gw-x", 2, [{"device": f"spot-{i}", "ts": T0 + 1,
                                         "values": {"occupied": False}} for i in range(5)]),
                       state("gw-x", {f"inv-{i}": {"kind": "parking_sensor", "profile": ""}
                                      for i in range(3)}),
                       data("gw-y", 1, [{"device": "other-1", "ts": T0, "values": {"floor": 1}}])])
    assert (dict(r1.refused), dict(r2.refused)) == ({}, {"device_limit": 5})
    with store.engine.connect() as conn:
        owned = sorted(conn.execute(sa.select(schema.devices.c.device_id).where(
            schema.devices.c.gateway_id == "gw-x")).scalars())
    assert owned == ["spot-0", "spot-1", "spot-2"]
    assert [r["value"] for r in store.readings("spot-1", None, None, None, 10)] == [1.0, 0.0]
    assert store.readings("spot-3", None, None, None, 10) == []
    assert store.device("other-1") is not None  # another gateway's own limit
    assert [len(m.envelope.readings) for m in r2.fresh if hasattr(m, "envelope")] == [3, 1]
    reg = sa.table("reg_devices", sa.column("gateway_id"), sa.column("device_id"))
    gws = sa.table("reg_gateways", sa.column("gateway_id"), sa.column("site_id"),
                   sa.column("mqtt_hash"), sa.column("created"), sa.column("revoked"))
    with store.engine.begin() as conn:
        conn.execute(sa.insert(gws).values(gateway_id="gw-x", site_id="s", mqtt_hash="",
                                           created=T0, revoked=False))
        conn.execute(sa.insert(reg).values(gateway_id="gw-x", device_id="spot-9"))
    r3 = store.ingest([data("gw-x", 3, [{"device": d, "ts": T0 + 2, "values": {"occupied": True}}
                                        for d in ("spot-9", "spot-8")])])
    assert dict(r3.refused) == {"device_limit": 1}
    assert store.device("spot-9") is not None and store.device("spot-8") is None


def test_the_registry_assignment_outranks_a_first_claim(store: Store) -> None:
    reg = sa.table("reg_devices", sa.column("gateway_id"), sa.column("device_id"))
    gws = sa.table("reg_gateways", sa.column("gateway_id"), sa.column("site_id"),
                   sa.column("mqtt_hash"), sa.column("created"), sa.column("revoked"))
    store.ingest([data("gw-b", 1, [{"device": "lift-1", "ts": T0, "values": {"floor": 9}}])])
    with store.engine.begin() as conn:
        conn.execute(sa.insert(gws), [{"gateway_id": g, "site_id": "s", "mqtt_hash": "",
                                       "created": T0, "revoked": False}
                                      for g in ("gw-a", "gw-d")])
        conn.execute(sa.insert(reg).values(gateway_id="gw-a", device_id="lift-1"))
    ra = store.ingest([data("gw-a", 1, [{"device": "lift-1", "ts": T0 + 1,
                                         "values": {"floor": 1}}])])
    rb = store.ingest([data("gw-b", 2, [{"device": "lift-1", "ts": T0 + 2,
                                         "values": {"floor": 2}}])])
    rc = store.ingest([data("gw-c", 1, [{"device": "lift-9", "ts": T0, "values": {"floor": 2}}])])
    assert (dict(ra.refused), dict(rb.refused), dict(rc.refused)) == \
        ({}, {"foreign_device": 1}, {})
    with store.engine.connect() as conn:
        owners = dict(conn.execute(sa.select(schema.devices.c.device_id,
                                             schema.devices.c.gateway_id)).all())
    assert owners == {"lift-1": "gw-a", "lift-9": "gw-c"}
    # A replacement: gw-a is revoked and gw-d registered with the lift; it reports at once.
    with store.engine.begin() as conn:
        conn.execute(sa.update(gws).where(gws.c.gateway_id == "gw-a").values(revoked=True))
        conn.execute(sa.insert(reg).values(gateway_id="gw-d", device_id="lift-1"))
    rd = store.ingest([data("gw-d", 1, [{"device": "lift-1", "ts": T0 + 3,
                                         "values": {"floor": 3}}])])
    ra = store.ingest([data("gw-a", 2, [{"device": "lift-1", "ts": T0 + 4,
                                         "values": {"floor": 4}}])])
    assert (dict(rd.refused), dict(ra.refused)) == ({}, {"foreign_device": 1})
    assert [r["value"] for r in store.readings("lift-1", None, None, None, 10)] == \
        [9.0, 1.0, 3.0]


def test_a_wrong_clock_is_shown_with_its_gateway(store: Store) -> None:
    from fastapi.testclient import TestClient

    from collector.api import create_app
    from collector.auth import Role, create_token

    store.ingest([health("gw-ok", T0, T0 + 200, live=True),
                  health("gw-ahead", T0 + 10 * MIN, T0, live=False)])
    token = create_token(store.engine, "reader", Role.READER)
    with TestClient(create_app(store), headers={"Authorization": f"Bearer {token}"}) as c:
        listed = {g["id"]: g["clock"] for g in c.get("/api/v1/gateways").json()}
        one = c.get("/api/v1/gateways/gw-ahead").json()
        assert c.get("/api/v1/gateways/gw-nobody").status_code == 404
    assert listed["gw-ok"] == {"offset_ms": -200, "measured_at": "2025-11-13T02:13:20.200Z",
                               "source": "live", "wrong": False}
    assert listed["gw-ahead"] == one["clock"] == {
        "offset_ms": 10 * MIN, "measured_at": "2025-11-13T02:13:20.000Z", "source": "ahead",
        "wrong": True}


def test_a_device_first_reported_by_two_gateways_at_once_has_one_owner(store: Store) -> None:
    """The second transaction to create a device waits for the first, then sees its owner."""
    if not store.is_pg:
        pytest.skip("SQLite stores one transaction at a time")
    held, release = threading.Event(), threading.Event()

    def hold_gw_a(cur: Any, rows: list[Any]) -> None:  # inside gw-a's transaction
        if any(r[6] == "gw-a" for r in rows):
            held.set()
            release.wait(30)

    store.row_writers.append(hold_gw_a)
    new = {"device": "lift-new", "ts": T0, "values": {"floor": 1}}
    results: dict[str, Any] = {}

    def report(gw: str, own: str) -> None:
        results[gw] = store.ingest([data(gw, 1, [new, {"device": own, "ts": T0,
                                                       "values": {"floor": 2}}])])

    a = threading.Thread(target=report, args=("gw-a", "lift-a"))
    b = threading.Thread(target=report, args=("gw-b", "lift-b"))
    a.start()
    try:
        assert held.wait(10), "gw-a's transaction never reached its readings"
        b.start()

        def b_waits_on_a() -> bool:
            with store.engine.connect() as conn:
                return bool(conn.scalar(sa.text(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND datname = current_database()")))

        wait_for(b_waits_on_a, 10, "gw-b's transaction to wait for gw-a's new device")
    finally:
        release.set()
        a.join(10)
        b.join(10)
    assert dict(results["gw-a"].refused) == {}
    assert dict(results["gw-b"].refused) == {"foreign_device": 1}
    with store.engine.connect() as conn:
        owners = dict(conn.execute(sa.select(schema.devices.c.device_id,
                                             schema.devices.c.gateway_id)).all())
    assert owners == {"lift-new": "gw-a", "lift-a": "gw-a", "lift-b": "gw-b"}
    assert [r["value"] for r in store.readings("lift-new", None, None, None, 10)] == [1.0]
    assert [r["value"] for r in store.readings("lift-b", None, None, None, 10)] == [2.0]
