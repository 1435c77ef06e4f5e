"""Memory bounded in bytes: a store that falls behind makes the collector stop reading, the
broker keeps the rest, and nothing is lost once the store catches up (SQLite and PostgreSQL)."""

from __future__ import annotations

import threading
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from citygate.rig import Broker, wait_for
from collector.ingest import (
    HELD_PER_MESSAGE,
    HELD_PER_PAYLOAD_BYTE,
    Ingest,
    IngestSettings,
    pending_budget,
)
from collector.store import Store
from devices import contract
from devices.model import Reading
from tests.collector.conftest import pg_server, pg_url, store  # noqa: F401  (fixtures)

T0 = 1_763_690_000_000
BUDGET = 1024 * 1024


def payload(gw: str, seq: int) -> bytes:
    readings = [Reading(f"pk-{seq}-{i}", T0 + seq, {"occupied": bool(i % 2), "rssi": -80,
                                                     "battery_mv": 3600}) for i in range(40)]
    return contract.envelope(gw, contract.DATA, seq, T0 + seq, contract.encode_batch(readings))


def test_a_slow_store_holds_the_collector_to_its_byte_budget_and_loses_nothing(
        broker: Broker, store: Store) -> None:  # noqa: F811
    gate = threading.Event()
    ingest_batch = store.ingest

    def slow(items: Any) -> Any:  # a store that stalls until the test lets it go on
        gate.wait(30)
        return ingest_batch(items)

    store.ingest = slow  # type: ignore[method-assign]
    ingest = Ingest(store, broker.url, client_id="coll-slow", max_pending_bytes=BUDGET)
    ingest.start()
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="gw-pub")
    n = 150
    messages = [payload("gw-a", seq) for seq in range(1, n + 1)]
    held = len(messages[0]) * HELD_PER_PAYLOAD_BYTE + HELD_PER_MESSAGE
    fits = BUDGET // held + 1
    try:
        wait_for(lambda: ingest.stats.connected, 10, "collector connected")
        pub.connect("127.0.0.1", broker.port)
        pub.loop_start()
        infos = [pub.publish(contract.topic("gw-a", contract.DATA), p, qos=1) for p in messages]
        for info in infos:
            info.wait_for_publish(10)  # every message is at the broker
        wait_for(lambda: ingest.budget.waits >= 1, 10, "the MQTT thread to wait for room")
        health = ingest.stats.as_dict()
        assert 0 < health["pending_bytes"] <= BUDGET
        assert health["max_pending_bytes"] == BUDGET
        assert ingest.stats.received <= fits < n  # the broker keeps the rest
        assert ingest.stats.stored_messages == 0
        gate.set()
        wait_for(lambda: ingest.stats.stored_messages == n, 30, "every envelope stored")
        wait_for(lambda: ingest.budget.used == 0, 10, "the budget given back")
        assert ingest.stats.duplicates == 0 and ingest.stats.readings == n * 40 * 3
        assert store.counts()["batches"] == n
        assert store.seq_gaps("gw-a") == []
        assert ingest.stats.as_dict()["backpressure_waits"] >= 1
    finally:
        gate.set()
        pub.loop_stop()
        pub.disconnect()
        ingest.stop()


def test_the_budget_is_read_from_the_ingest_section() -> None:
    assert pending_budget({}) == 32 * 1024 * 1024
    assert pending_budget({"max_pending": "256MiB"}) == 256 * 1024 * 1024
    assert pending_budget({"max_pending": 5_000_000}) == 5_000_000
    with pytest.raises(ValueError, match=r"ingest.max_pending: .*below the 1 MB minimum"):
        pending_budget({"max_pending": "10KB"})
    with pytest.raises(ValueError, match=r"ingest.max_pending: 'lots' is not a size"):
        pending_budget({"max_pending": "lots"})
    settings = IngestSettings.from_section({"max_pending": "256MiB", "max_skew": "1min"})
    assert settings.max_pending == 256 * 1024 * 1024 and settings.clock.max_skew_ms == 60_000
    with pytest.raises(ValueError, match=r"unknown key.*max_queue.*known: .*max_pending"):
        IngestSettings.from_section({"max_queue": 5})


def test_a_stored_batch_is_acknowledged_in_one_write_and_never_redelivered(
        broker: Broker, store: Store) -> None:  # noqa: F811
    """Many envelopes per commit: their PUBACKs reach the broker (in order, in one write),
    so a collector restarted on the same session receives none of them again."""
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="gw-pub-acks")
    first = Ingest(store, broker.url, client_id="coll-acks")
    first.start()
    n = 300
    try:
        wait_for(lambda: first.stats.connected, 10, "collector connected")
        pub.connect("127.0.0.1", broker.port)
        pub.loop_start()
        for seq in range(1, n + 1):
            pub.publish(contract.topic("gw-b", contract.DATA), payload("gw-b", seq), qos=1)
        wait_for(lambda: first.stats.stored_messages == n, 30, "every envelope stored")
        assert first.stats.commits < n  # several envelopes per commit, acknowledged together
    finally:
        first.stop()
    again = Ingest(store, broker.url, client_id="coll-acks")
    again.start()
    try:
        wait_for(lambda: again.stats.connected, 10, "collector connected again")
        pub.publish(contract.topic("gw-b", contract.DATA), payload("gw-b", n + 1), qos=1)
        wait_for(lambda: again.stats.stored_messages == 1, 10, "the new envelope stored")
        assert again.stats.received == 1 and again.stats.duplicates == 0
        assert store.counts()["batches"] == n + 1
    finally:
        pub.loop_stop()
        pub.disconnect()
        again.stop()


def test_a_batch_is_stored_once_nothing_more_arrives_for_the_linger(
        broker: Broker, store: Store) -> None:  # noqa: F811
    """A batch fills up to 2,000 messages within max_wait, but when the broker sends nothing
    more (traffic paused, or a broker window smaller than a batch waiting for our acks) it is
    stored after the linger, not after the whole max_wait."""
    ingest = Ingest(store, broker.url, client_id="coll-linger", max_batch=2000, max_wait=30.0,
                    linger=0.05)
    ingest.start()
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="gw-pub")
    try:
        wait_for(lambda: ingest.stats.connected, 10, "collector connected")
        pub.connect("127.0.0.1", broker.port)
        pub.loop_start()
        for burst in range(2):
            for seq in range(burst * 5 + 1, burst * 5 + 6):
                pub.publish(contract.topic("gw-l", contract.DATA), payload("gw-l", seq), qos=1)
            # max_wait alone would hold each burst's batch for 30 s
            wait_for(lambda b=burst: ingest.stats.stored_messages == 5 * (b + 1), 10,
                     "the burst stored")
        assert ingest.stats.commits == 2
        assert store.seq_gaps("gw-l") == []
    finally:
        pub.loop_stop()
        pub.disconnect()
        ingest.stop()
