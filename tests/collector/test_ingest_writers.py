"""Several ingest writers (collector.toml [ingest] writers): each stores its share of the
gateways while the others store theirs, and every message is acknowledged in the order it
arrived, against a real Mosquitto and PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import paho.mqtt.client as mqtt
import pytest

import collector.ingest as ingest_module
from citygate.rig import Broker, wait_for
from collector.features import open_store
from collector.ingest import WRITERS_PG, Ingest, IngestSettings
from collector.store import Store
from devices import contract
from devices.model import Reading
from tests.collector.conftest import pg_server, pg_url, store  # noqa: F401  (fixtures)

T0 = 1_763_690_000_000


def payload(gw: str, seq: int) -> bytes:
    readings = [Reading(f"{gw}-lift", T0 + seq, {"floor": seq})]
    return contract.envelope(gw, contract.DATA, seq, T0 + seq, contract.encode_batch(readings))


def apart(lanes: int) -> tuple[str, str]:
    """Two gateway ids that this process gives to different writers."""
    first = "gw-a"
    other = next(f"gw-{i}" for i in range(1000) if hash(f"gw-{i}") % lanes != hash(first) % lanes)
    return first, other


@pytest.mark.postgres
def test_a_second_writer_stores_while_the_first_is_held_and_acks_wait_their_turn(
        broker: Broker, pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    hub = open_store(pg_url)
    slow_gw, fast_gw = apart(2)
    gate = threading.Event()
    ingest_batch = hub.ingest

    def held_for_slow(items: Any) -> Any:  # the slow gateway's writer waits for the test
        if any(i.gateway == slow_gw for i in items):
            gate.wait(30)
        return ingest_batch(items)

    hub.ingest = held_for_slow  # type: ignore[method-assign]
    acked: list[tuple[str, int]] = []
    real_ack_all = ingest_module.ack_all

    def recording(client: mqtt.Client, items: Sequence[Any]) -> None:
        acked.extend((i.entry.record.gateway, i.entry.record.envelope.seq) for i in items
                     if i.entry is not None and i.entry.record is not None)
        real_ack_all(client, items)

    monkeypatch.setattr(ingest_module, "ack_all", recording)
    monkeypatch.setattr(ingest_module, "STALLED_AFTER_S", 1.0)
    ingest = Ingest(hub, broker.url, client_id="coll-writers", writers=2)
    ingest.start()
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="gw-pub-writers")
    try:
        wait_for(lambda: ingest.stats.connected, 10, "collector connected")
        pub.connect("127.0.0.1", broker.port)
        pub.loop_start()
        pub.publish(contract.topic(slow_gw, contract.DATA), payload(slow_gw, 1),
                    qos=1).wait_for_publish(10)
        wait_for(lambda: ingest.stats.received == 1, 10, "the slow gateway's message received")
        for seq in range(1, 6):
            pub.publish(contract.topic(fast_gw, contract.DATA), payload(fast_gw, seq), qos=1)
        # One writer would still be held: the other stores the fast gateway meanwhile.
        wait_for(lambda: hub.counts()["batches"] == 5, 15, "the fast gateway stored")
        assert hub.seq_gaps(fast_gw) == [] and ingest.stats.stored_messages == 5
        assert acked == [] and ingest.stats.pending == 6  # stored, but after one not yet
        # The other writer's progress does not hide the held one from health.
        stuck = wait_for(lambda: ingest.stats.as_dict()["stuck"], 10, "ingest shown stuck")
        assert "a message unacknowledged for" in stuck and "6 messages" in stuck
        gate.set()
        wait_for(lambda: len(acked) == 6, 15, "every message acknowledged")
        assert acked == [(slow_gw, 1)] + [(fast_gw, s) for s in range(1, 6)]
        assert ingest.stats.pending == 0 and ingest.budget.used == 0
        assert ingest.stats.stuck() == ""
        assert ingest.stats.as_dict()["writers"] == 2
    finally:
        gate.set()
        ingest.stop()
    again = Ingest(hub, broker.url, client_id="coll-writers", writers=2)
    again.start()
    try:  # the acknowledgements reached the broker: nothing comes again
        wait_for(lambda: again.stats.connected, 10, "collector connected again")
        pub.publish(contract.topic(fast_gw, contract.DATA), payload(fast_gw, 6), qos=1)
        wait_for(lambda: again.stats.stored_messages == 1, 10, "the new envelope stored")
        assert again.stats.received == 1 and again.stats.duplicates == 0
        assert hub.counts()["batches"] == 7
    finally:
        pub.loop_stop()
        pub.disconnect()
        again.stop()
        hub.close()


@pytest.mark.postgres
def test_many_gateways_over_three_writers_are_stored_exactly_once_in_order(
        broker: Broker, pg_url: str) -> None:  # noqa: F811
    hub = open_store(pg_url)
    seen: list[tuple[str, int]] = []
    ingest = Ingest(hub, broker.url, client_id="coll-three", writers=3,
                    on_stored=lambda items: seen.extend((a.gateway, a.envelope.seq)
                                                        for a in items))
    ingest.start()
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="gw-pub-three")
    gateways, per = [f"gw-{i:02d}" for i in range(12)], 40
    try:
        wait_for(lambda: ingest.stats.connected, 10, "collector connected")
        pub.connect("127.0.0.1", broker.port)
        pub.loop_start()
        for seq in range(1, per + 1):
            for gw in gateways:
                pub.publish(contract.topic(gw, contract.DATA), payload(gw, seq), qos=1)
        total = len(gateways) * per
        wait_for(lambda: ingest.stats.handled == total, 30, "every envelope stored and acked")
        assert ingest.stats.stored_messages == total and ingest.stats.duplicates == 0
        assert hub.counts()["batches"] == total
        for gw in gateways:  # each gateway's messages reached the features in its order
            assert hub.seq_gaps(gw) == []
            assert [s for g, s in seen if g == gw] == list(range(1, per + 1))
    finally:
        pub.loop_stop()
        pub.disconnect()
        ingest.stop()
        hub.close()


def test_writers_are_read_from_the_ingest_section(store: Store) -> None:  # noqa: F811
    url = store.engine.url.render_as_string(hide_password=False)
    assert IngestSettings.from_section({}).writers_for(url) == \
        (WRITERS_PG if store.is_pg else 1)
    assert IngestSettings.from_section({"writers": 1}).writers_for(url) == 1
    for bad in (0, 9, True, "2", 1.5):
        with pytest.raises(ValueError, match=r"ingest\.writers: .* is not a whole number"):
            IngestSettings.from_section({"writers": bad})
    # NATS ingest takes one writer unless told otherwise (docs/deployment.md)
    assert IngestSettings.from_section({}).writers_for(url, "nats") == 1
    three = IngestSettings.from_section({"writers": 3})
    if store.is_pg:
        assert three.writers_for(url) == 3 and three.writers_for(url, "nats") == 3
    else:
        with pytest.raises(ValueError, match=r"ingest\.writers = 3 needs PostgreSQL"):
            three.writers_for(url)
    with pytest.raises(ValueError, match="writers: 0 is not from 1"):
        Ingest(store, "mqtt://127.0.0.1:1", writers=0)
