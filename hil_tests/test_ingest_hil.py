"""Collector ingest against a real broker: bad payloads are counted, re-delivery is harmless,
and messages published while the collector is down arrive when it returns."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from citygate.rig import Broker, wait_for
from collector.features import open_store
from collector.ingest import Ingest
from collector.store import Store
from devices import contract

pytestmark = pytest.mark.hil


def publisher(broker: Broker) -> mqtt.Client:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-pub",
                    protocol=mqtt.MQTTv311)
    c.connect("127.0.0.1", broker.port)
    c.loop_start()
    return c


def send(c: mqtt.Client, topic: str, payload: bytes | str, retain: bool = False) -> None:
    c.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)


def data_msg(gw: str, seq: int, floor: int) -> bytes:
    return json.dumps({"v": 1, "gateway": gw, "seq": seq, "sent": 1_763_000_000_000,
                       "readings": [{"device": "l1", "ts": 1_763_000_000_000 + seq,
                                     "values": {"floor": floor}}]}).encode()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = open_store(f"sqlite:///{tmp_path / 'hub.sqlite'}")
    yield s
    s.close()


def test_bad_payloads_are_counted_and_duplicates_stored_once(broker: Broker,
                                                             store: Store) -> None:
    ingest = Ingest(store, broker.url, client_id="coll-1")
    ingest.start()
    try:
        wait_for(lambda: ingest.stats.connected, 10, "collector connected")
        pub = publisher(broker)
        data = contract.topic("gw1", contract.DATA)
        send(pub, data, data_msg("gw1", 1, 3))
        send(pub, data, data_msg("gw1", 1, 3))  # re-delivery of the same sequence number
        send(pub, data, b"{not json")
        send(pub, data, json.dumps({"v": 2, "gateway": "gw1", "seq": 2}))
        send(pub, data, data_msg("gw2", 5, 1))  # envelope claims another gateway
        send(pub, data, json.dumps({"v": 1, "gateway": "gw1", "seq": 0, "sent": 1,
                                    "readings": []}))
        send(pub, "citygate/v1/GW!/data", data_msg("gw1", 9, 9))
        send(pub, data, data_msg("gw1", 2, 4))
        wait_for(lambda: ingest.stats.stored_messages == 2, 10, "two stored messages")
        wait_for(lambda: sum(ingest.stats.rejected.values()) == 5, 10, "rejections counted")
        assert ingest.stats.duplicates == 1
        assert dict(ingest.stats.rejected) == {"bad_json": 1, "bad_version": 1,
                                               "gateway_mismatch": 1, "bad_envelope": 1,
                                               "bad_gateway_id": 1}
        assert store.counts()["readings"] == 2
        pub.loop_stop()
    finally:
        ingest.stop()


def test_messages_sent_while_the_collector_is_down_arrive_later(broker: Broker,
                                                                store: Store) -> None:
    first = Ingest(store, broker.url, client_id="coll-persistent")
    first.start()
    wait_for(lambda: first.stats.connected, 10, "collector connected")
    first.stop()
    pub = publisher(broker)
    for seq in range(1, 51):
        send(pub, contract.topic("gw1", contract.DATA), data_msg("gw1", seq, seq % 10))
    pub.loop_stop()
    second = Ingest(store, broker.url, client_id="coll-persistent")
    second.start()
    try:
        wait_for(lambda: store.counts()["readings"] == 50, 15, "the 50 queued messages")
        assert store.counts()["batches"] == 50
    finally:
        second.stop()
