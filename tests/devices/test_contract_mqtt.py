"""Poison over MQTT: a collector fed envelopes the stores cannot hold keeps storing everyone's
data (the contract refuses the poison before the store sees it), on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from typing import Any

import paho.mqtt.client as mqtt

from citygate.rig import Broker, wait_for
from collector.ingest import Ingest
from collector.store import Store
from devices import contract
from tests.collector.conftest import pg_server, pg_url, store  # noqa: F401  (fixtures)

T0 = 1_763_690_000_000


def envelope(gw: str, seq: int, key: str, items: list[dict[str, Any]]) -> bytes:
    return json.dumps({"v": 1, "gateway": gw, "seq": seq, "sent": T0, key: items}).encode()


def lift(device: str, **over: Any) -> dict[str, Any]:
    return {"device": device, "ts": T0 - 1000, "values": {"floor": 3, "door_closed": True},
            **over}


def test_poison_envelopes_do_not_stop_ingest_or_take_good_readings_with_them(
        broker: Broker, store: Store) -> None:  # noqa: F811
    ingest = Ingest(store, broker.url, client_id="coll-poison")
    ingest.start()
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="gw-pub",
                      protocol=mqtt.MQTTv311)
    try:
        wait_for(lambda: ingest.stats.connected, 10, "collector connected")
        pub.connect("127.0.0.1", broker.port)
        pub.loop_start()
        fault = {"device": "lift-1", "ts": T0 - 1000, "kind": "gbt24476_2", "action": "raise",
                 "severity": "major"}
        for gw, channel, payload in [
            ("gw-a", contract.DATA, envelope("gw-a", 2**63, "readings", [lift("lift-1")])),
            ("gw-a", contract.DATA, envelope("gw-a", 1, "readings", [
                lift("lift-1"), lift("lift-2", values={"floor": "B\x002"}),
                lift("lift-3", ts=-631_152_000_000), lift("lift-4", flag="ABCDEFGHI"),
                lift("lift-5")])),
            ("gw-a", contract.EVENTS, envelope("gw-a", 2, "events", [
                {**fault, "code": 2**31}, {**fault, "kind": "door\x00fault"},
                {**fault, "message": "x\x00"}, {**fault, "device": "lift-2", "code": 7}])),
            ("gw-b", contract.DATA, envelope("gw-b", 1, "readings", [
                lift("lift-9", values={"speed": 1.7e308}), lift("lift-9")])),
        ]:
            pub.publish(contract.topic(gw, channel), payload, qos=1).wait_for_publish(5)
        wait_for(lambda: ingest.stats.stored_messages == 3, 20, "three envelopes stored")
        assert dict(ingest.stats.rejected) == {"bad_envelope": 1}  # seq beyond BIGINT
        assert ingest.stats.store_errors == 0
        # Each left-out reading and event is counted by reason; its neighbours are stored.
        assert dict(ingest.stats.refused) == {
            "type_mismatch": 1, "bad_ts": 1, "too_long": 1, "bad_code": 1, "nul_in_text": 2,
            "out_of_range": 1}
        assert (ingest.stats.readings, ingest.stats.events) == (6, 1)  # 3 lifts x 2 values
        assert sorted(d["device_id"] for d in store.devices()) == [
            "lift-1", "lift-2", "lift-5", "lift-9"]
    finally:
        pub.loop_stop()
        pub.disconnect()
        ingest.stop()
