"""A collector that falls behind keeps every time and every message (real Mosquitto, SQLite and
PostgreSQL): times of queued messages kept, clocks judged on evidence, births and a backlog
stored together without deadlock, no message acknowledged before it is stored, poison messages
quarantined, and no gateway acting on another's devices."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt
import pytest
from fastapi.testclient import TestClient

from citygate.rig import Broker, wait_for
from collector import ingest as ingest_mod
from collector.api import create_app
from collector.auth import Role, create_token
from collector.features import open_store
from collector.ingest import Ingest
from collector.placement import ClockPolicy
from collector.store import Accepted, GatewayMessage, Store, now_ms
from devices import contract

pytestmark = pytest.mark.hil

MIN = 60_000
LIFT = {"kind": "elevator", "profile": "elevator-gbt24476"}
SPOT = {"kind": "parking_sensor", "profile": "parking-geomagnetic"}


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database URL on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'hub.sqlite'}"
    return str(request.getfixturevalue("pg_db"))


class Publisher:
    """A gateway-side MQTT client that publishes at QoS 1 and waits for the broker's PUBACKs."""

    def __init__(self, broker: Broker, client_id: str = "test-pub") -> None:
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=mqtt.MQTTv311)
        self.client.max_queued_messages_set(0)
        self.client.max_inflight_messages_set(200)
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()

    def send(self, messages: list[tuple[str, bytes]], retain: bool = False) -> None:
        infos = [self.client.publish(t, p, qos=1, retain=retain) for t, p in messages]
        for info in infos:
            info.wait_for_publish(30)
            assert info.is_published()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def data_msg(gw: str, seq: int, readings: list[dict[str, Any]], sent: int,
             clock: dict[str, Any] | None = None) -> tuple[str, bytes]:
    body = {"v": 1, "gateway": gw, "seq": seq, "sent": sent,
            "clock": clock or {"synced": True}, "readings": readings}
    return contract.topic(gw, contract.DATA), orjson.dumps(body)


def event_msg(gw: str, seq: int, device: str, action: str, ts: int) -> tuple[str, bytes]:
    body = {"v": 1, "gateway": gw, "seq": seq, "sent": ts, "events": [
        {"device": device, "ts": ts, "kind": "trapped_passenger", "action": action,
         "severity": "critical"}]}
    return contract.topic(gw, contract.EVENTS), orjson.dumps(body)


def birth(gw: str, devices: dict[str, dict[str, str]]) -> tuple[str, bytes]:
    return (contract.topic(gw, contract.STATE),
            contract.state_payload(gw, "online", now_ms(), version="1", boot="b",
                                   devices=devices))


def health_msg(gw: str, sent: int) -> tuple[str, bytes]:
    return (contract.topic(gw, contract.HEALTH),
            orjson.dumps({"v": 1, "gateway": gw, "sent": sent, "counters": {"up": 1}}))


def started(store: Store, broker: Broker, client_id: str, **kw: Any) -> Ingest:
    ing = Ingest(store, broker.url, client_id=client_id, **kw)
    ing.start()
    wait_for(lambda: ing.stats.connected, 10, "collector connected")
    return ing


def make_session(store: Store, broker: Broker, client_id: str, **kw: Any) -> None:
    """Connect once and leave: the broker now queues for this persistent session."""
    started(store, broker, client_id, **kw).stop()


# --- times ----------------------------------------------------------------------------------------

def test_times_survive_an_outage_and_a_wrong_clock_is_still_caught(broker: Broker,
                                                                   db_url: str) -> None:
    store = open_store(db_url)
    make_session(store, broker, "coll-outage")
    pub = Publisher(broker)
    # Three synchronised gateways publish for six minutes of their time while the collector is
    # down: each envelope reaches it minutes after it was sent.
    start = now_ms() - 6 * MIN
    sent_ts: dict[str, list[int]] = {}
    msgs = []
    for g in range(3):
        gw = f"gw-{g}"
        for seq in range(1, 41):
            t = start + seq * 9000 + g * 7 + 123
            sent_ts.setdefault(f"lift-{g}", []).append(t)
            msgs.append(data_msg(gw, seq, [{"device": f"lift-{g}", "ts": t,
                                            "values": {"floor": seq}}], sent=t + 400))
    pub.send(msgs)
    ing = started(store, broker, "coll-outage")
    try:
        wait_for(lambda: ing.stats.stored_messages == 120, 60, "the backlog stored")
        for dev, expected in sent_ts.items():
            got = [r["ts"] for r in store.readings(dev, None, None, None, 1000)]
            assert got == expected, dev
        assert dict(ing.stats.time_corrected) == {}
        # Live now (the collector's probe came back): a gateway whose fresh messages show its
        # clock 10 minutes ahead, and one 10 minutes behind, are placed by the fallbacks.
        wait_for(lambda: ing._live(now_ms()), 20, "ingest live")
        now = now_ms()
        clock = {"synced": True, "boot": "b1", "sent_boot": "b1", "mono": 900_000}
        pub.send([data_msg("gw-ahead", 1, [{"device": "ahead-1", "ts": now + 10 * MIN - 1500,
                                            "mono": 898_500, "values": {"floor": 1}}],
                           sent=now + 10 * MIN, clock=clock),
                  data_msg("gw-behind", 1, [{"device": "behind-1", "ts": now - 10 * MIN - 1500,
                                             "values": {"floor": 1}}], sent=now - 10 * MIN)])
        wait_for(lambda: ing.stats.stored_messages == 122, 20, "the fresh messages")
        done = now_ms()
        assert dict(ing.stats.time_corrected) == {"monotonic": 1, "offset": 1}
        for dev in ("ahead-1", "behind-1"):
            [r] = store.readings(dev, None, None, None, 10)
            assert now - 1500 <= r["ts"] <= done - 1500, dev
        clocks = {g["gateway_id"]: Store.gateway_clock(g) for g in store.gateways()}
        assert (clocks["gw-ahead"].source, clocks["gw-ahead"].wrong) == ("ahead", True)
        assert (clocks["gw-behind"].source, clocks["gw-behind"].wrong) == ("live", True)
        assert -10 * MIN - 10_000 <= (clocks["gw-behind"].offset_ms or 0) <= -10 * MIN
        assert not any(clocks[f"gw-{g}"].wrong for g in range(3))
    finally:
        ing.stop()
        pub.close()
        store.close()


def test_messages_that_really_waited_longer_than_the_skew_window_keep_their_time(
        broker: Broker, db_url: str) -> None:
    store = open_store(db_url)
    store.clock_policy = ClockPolicy(max_skew_ms=1000, max_future_ms=1000, live_bound_ms=500)
    make_session(store, broker, "coll-wait")
    pub = Publisher(broker)
    expected = []
    for seq in range(1, 21):  # a gateway keeps publishing, in real time, for ~3 s
        t = now_ms()
        expected.append(t - 250)
        pub.send([data_msg("gw-1", seq, [{"device": "lift-1", "ts": t - 250,
                                          "values": {"floor": seq % 10}}], sent=t)])
        next_send = t + 150
        wait_for(lambda: now_ms() >= next_send, 1, "the next send")  # noqa: B023
    wait_for(lambda: now_ms() >= expected[0] + 250 + 3 * 1000, 5, "a wait beyond the window")
    ing = started(store, broker, "coll-wait")
    try:
        wait_for(lambda: ing.stats.stored_messages == 20, 20, "the waiting messages stored")
        got = [r["ts"] for r in store.readings("lift-1", None, None, None, 100)]
        assert got == expected
        assert dict(ing.stats.time_corrected) == {}
        [gw] = store.gateways()
        assert Store.gateway_clock(gw).wrong is False
    finally:
        ing.stop()
        pub.close()
        store.close()


# --- births during a backlog, two collectors, PostgreSQL ------------------------------------------

def _births_and_backlog(broker: Broker, url: str, gateways: int, envelopes: int,
                        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    stores = [open_store(url), open_store(url)]
    ids = ["coll-a", "coll-b"]
    for s, cid in zip(stores, ids, strict=True):
        make_session(s, broker, cid, share_group="hub")
    pub = Publisher(broker)
    gws = [f"gw-{i:03d}" for i in range(gateways)]
    inventory = {gw: {f"{gw}-lift": LIFT, f"{gw}-spot": SPOT} for gw in gws}
    pub.send([birth(gw, inventory[gw]) for gw in gws], retain=True)
    backlog = []
    for n in range(envelopes):
        gw = gws[n % gateways]
        seq = n // gateways + 1
        dev = f"{gw}-lift" if seq % 2 else f"{gw}-spot"
        backlog.append(data_msg(gw, seq, [{"device": dev, "ts": now_ms(),
                                           "values": {"floor": seq % 10}}], sent=now_ms()))
    pub.send(backlog)
    ingests = [Ingest(s, broker.url, client_id=cid, share_group="hub")
               for s, cid in zip(stores, ids, strict=True)]
    try:
        for ing in ingests:  # both re-subscribe: the broker re-sends every retained birth
            ing.start()
        # ... and the gateways re-send their births while the backlog is being stored.
        pub.send([birth(gw, inventory[gw]) for gw in gws], retain=True)
        store = stores[0]
        wait_for(lambda: store.counts()["batches"] == envelopes, 300, "the backlog stored")
        wait_for(lambda: sum(i.stats.pending for i in ingests) == 0, 60, "all acknowledged")
        assert store.counts()["readings"] == envelopes
        assert [(i.stats.store_errors, i.stats.quarantined, i.stats.hook_errors)
                for i in ingests] == [(0, 0, 0), (0, 0, 0)]
        kinds = {d["device_id"]: (d["gateway_id"], d["kind"]) for d in store.devices()}
        assert kinds == {dev: (gw, info["kind"]) for gw in gws
                         for dev, info in inventory[gw].items()}
        gw_rows = store.gateways()
        assert len(gw_rows) == gateways and {g["state"] for g in gw_rows} == {"online"}
        assert not [r for r in caplog.records if "deadlock" in r.getMessage().lower()
                    or r.levelno >= logging.ERROR]
    finally:
        for ing in ingests:
            ing.stop()
        pub.close()
        for s in stores:
            s.close()


@pytest.mark.postgres
def test_births_resent_during_a_backlog_are_all_stored_without_deadlock(
        broker: Broker, pg_db: str, caplog: pytest.LogCaptureFixture) -> None:
    _births_and_backlog(broker, pg_db, gateways=50, envelopes=5000, caplog=caplog)


@pytest.mark.slow
@pytest.mark.postgres
def test_200_gateways_births_during_a_50000_envelope_backlog(
        broker: Broker, pg_db: str, caplog: pytest.LogCaptureFixture) -> None:
    _births_and_backlog(broker, pg_db, gateways=200, envelopes=50_000, caplog=caplog)


# --- a store failure of any message kind: never acknowledged, so never lost -----------------------

KINDS = ["data", "events", "state", "health"]


def _kind(record: Accepted | GatewayMessage) -> str:
    if isinstance(record, Accepted):
        return "data" if hasattr(record.envelope, "readings") else "events"
    return "state" if hasattr(record.message, "state") else "health"


@pytest.mark.parametrize("kind", KINDS)
def test_a_store_failure_of_any_kind_is_kept_for_redelivery(
        broker: Broker, db_url: str, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ingest_mod, "STUCK_AFTER_S", 0.5)
    store = open_store(db_url)
    make_session(store, broker, "coll-fail")
    broken = open_store(db_url)
    real = broken.ingest

    def failing(items: Any) -> Any:
        if any(_kind(r) == kind for r in items):
            raise sqlite3.OperationalError("disk I/O error")
        return real(items)

    broken.ingest = failing  # type: ignore[method-assign]
    pub = Publisher(broker)
    ing = started(broken, broker, "coll-fail")
    token = create_token(store.engine, "ops", Role.READER)
    # `ing` is rebound to the second collector below: health follows it.
    app = create_app(store, ingest_stats=lambda: ing.stats.as_dict())  # noqa: PLW0108
    client = TestClient(app, headers={"Authorization": f"Bearer {token}"})
    try:
        t = now_ms()
        pub.send([data_msg("gw-1", 1, [{"device": "lift-1", "ts": t, "values": {"floor": 2}}],
                           sent=t),
                  event_msg("gw-1", 2, "lift-1", "raise", t),
                  birth("gw-1", {"lift-1": LIFT}),
                  health_msg("gw-1", t)])
        wait_for(lambda: ing.stats.store_errors >= 2, 20, "the store failing")
        wait_for(lambda: client.get("/api/v1/health").json()["status"] == "degraded", 10,
                 "health degraded")
        reasons = client.get("/api/v1/health").json()["reasons"]
        assert len(reasons) == 1 and "store failing" in reasons[0], reasons
        assert ing.stats.pending == 4
    finally:
        ing.stop()  # with the store still failing: nothing was acknowledged
        broken.close()
    ing = started(store, broker, "coll-fail")
    try:
        wait_for(lambda: ing.stats.stored_messages == 2 and ing.stats.pending == 0, 20,
                 "the messages re-delivered and stored")
        assert store.counts()["readings"] == 1 and store.counts()["events"] == 1
        [gw] = store.gateways()
        assert (gw["state"], orjson.loads(gw["health"] or "{}").get("counters")) == \
            ("online", {"up": 1.0})
        assert store.device("lift-1")["kind"] == "elevator"  # type: ignore[index]
        assert client.get("/api/v1/health").json()["status"] == "ok"
    finally:
        ing.stop()
        client.close()
        pub.close()
        store.close()


# --- poison messages ------------------------------------------------------------------------------

def test_a_poison_envelope_is_quarantined_and_its_neighbours_stored(
        broker: Broker, db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Past the contract: seq 13 is swapped, after validation, for one that no BIGINT holds;
    # the database itself refuses it (SQLite OverflowError, PostgreSQL out of range).
    real_decode = contract.decode

    def decode(topic_name: str, payload: bytes) -> contract.Received:
        rec = real_decode(topic_name, payload)
        if rec.channel == contract.DATA and rec.message.seq == 13:  # type: ignore[union-attr]
            return contract.Received(rec.gateway, rec.channel,
                                     rec.message.model_copy(update={"seq": 2**63}))
        return rec

    monkeypatch.setattr(contract, "decode", decode)
    store = open_store(db_url)
    make_session(store, broker, "coll-poison")
    pub = Publisher(broker)
    t = now_ms()
    # Queued while the collector is down, so the poison arrives in one batch with the others.
    pub.send([data_msg("gw-1", s, [{"device": "lift-1", "ts": t + s, "values": {"floor": s}}],
                       sent=t + s) for s in range(1, 31)])
    ing = started(store, broker, "coll-poison")
    token = create_token(store.engine, "ops", Role.READER)
    client = TestClient(create_app(store, ingest_stats=ing.stats.as_dict),
                        headers={"Authorization": f"Bearer {token}"})
    try:
        wait_for(lambda: ing.stats.pending == 0 and ing.stats.received == 30, 30,
                 "the batch handled")
        pub.send([data_msg("gw-1", 31, [{"device": "lift-1", "ts": t + 31,
                                         "values": {"floor": 1}}], sent=t + 31)])
        wait_for(lambda: ing.stats.stored_messages == 30, 20, "the envelope after it")
        assert (ing.stats.quarantined, ing.stats.store_errors) == (1, 0)
        assert store.counts()["batches"] == 30 and store.counts()["readings"] == 30
        assert store.seq_gaps("gw-1") == [(13, 13)]
        [q] = client.get("/api/v1/quarantine").json()
        assert (q["gateway"], q["channel"], q["seq"]) == ("gw-1", "data", str(2**63))
        assert orjson.loads(q["payload"])["seq"] == 13  # kept as received
        assert client.get("/api/v1/health").json()["status"] == "ok"
    finally:
        ing.stop()
        client.close()
        pub.close()
        store.close()


# --- gateways cannot act on each other's devices --------------------------------------------------

def test_a_gateway_cannot_clear_take_or_write_another_gateways_device(
        broker: Broker, db_url: str) -> None:
    store = open_store(db_url)
    pub = Publisher(broker)
    ing = started(store, broker, "coll-own")
    admin = create_token(store.engine, "admin", Role.ADMIN)
    client = TestClient(create_app(store, ingest_stats=ing.stats.as_dict),
                        headers={"Authorization": f"Bearer {admin}"})
    try:
        t = now_ms()
        pub.send([birth("gw-a", {"lift-1": LIFT})])
        pub.send([data_msg("gw-a", 1, [{"device": "lift-1", "ts": t, "values": {"floor": 3}}],
                           sent=t),
                  event_msg("gw-a", 2, "lift-1", "raise", t)])
        wait_for(lambda: ing.stats.stored_messages == 2, 20, "gw-a's messages")
        # gw-b, on its own topics: a clear of gw-a's fault, a birth claiming the lift as its
        # own parking sensor, a reading in the lift's history.
        pub.send([event_msg("gw-b", 1, "lift-1", "clear", t + 1000),
                  birth("gw-b", {"lift-1": SPOT}),
                  data_msg("gw-b", 2, [{"device": "lift-1", "ts": t + 2000,
                                        "values": {"floor": 9}}], sent=t + 2000)])
        wait_for(lambda: ing.stats.stored_messages == 4 and ing.stats.pending == 0, 20,
                 "gw-b's messages")
        assert dict(ing.stats.refused) == {"foreign_device": 3}
        faults = client.get("/api/v1/devices/lift-1/faults").json()
        assert [f["kind"] for f in faults] == ["trapped_passenger"]
        dev = [d for d in client.get("/api/v1/devices").json() if d["id"] == "lift-1"]
        assert [(d["gateway"], d["kind"]) for d in dev] == [("gw-a", "elevator")]
        history = client.get("/api/v1/devices/lift-1/readings").json()["readings"]
        assert [r["value"] for r in history] == [3]
        # A real replacement: the admin moves the lift to gw-b, whose readings now count.
        moved = client.put("/api/v1/devices/lift-1/gateway", json={"gateway": "gw-b"})
        assert moved.status_code == 200 and moved.json()["gateway"] == "gw-b"
        pub.send([data_msg("gw-b", 3, [{"device": "lift-1", "ts": t + 3000,
                                        "values": {"floor": 4}}], sent=t + 3000)])
        wait_for(lambda: ing.stats.stored_messages == 5, 20, "gw-b's reading")
        history = client.get("/api/v1/devices/lift-1/readings").json()["readings"]
        assert [r["value"] for r in history] == [3, 4]
        assert dict(ing.stats.refused) == {"foreign_device": 3}
        reader = create_token(store.engine, "reader", Role.READER)
        denied = client.put("/api/v1/devices/lift-1/gateway", json={"gateway": "gw-a"},
                            headers={"Authorization": f"Bearer {reader}"})
        assert denied.status_code == 403
    finally:
        ing.stop()
        client.close()
        pub.close()
        store.close()
