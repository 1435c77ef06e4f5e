"""`collector run` with several ingest writers (collector.toml [ingest] writers), against
Mosquitto and PostgreSQL: four by default, every envelope of many gateways stored once; refused
on SQLite with the key named."""

from __future__ import annotations

import time

import paho.mqtt.client as mqtt
import pytest

from citygate.rig import Broker, collector_health, wait_for
from collector.ingest import WRITERS_PG
from devices import contract
from hil_tests.conftest import Procs

pytestmark = pytest.mark.hil


def test_a_collector_on_postgresql_stores_through_its_default_writers(
        broker: Broker, procs: Procs, pg_db: str) -> None:
    _proc, base = procs.collector(broker, pg_db)
    gateways, per = [f"gw-w{i:02d}" for i in range(10)], 30
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="gw-pub-writers-hil")
    pub.connect("127.0.0.1", broker.port)
    pub.loop_start()
    try:
        now = int(time.time() * 1000)
        for seq in range(1, per + 1):
            for gw in gateways:
                body = contract.envelope(gw, contract.DATA, seq, now, contract.orjson.dumps(
                    [{"device": f"{gw}-lift", "ts": now + seq, "values": {"floor": seq}}]))
                pub.publish(contract.topic(gw, contract.DATA), body, qos=1)

        def stored() -> dict[str, object] | None:
            ingest = (collector_health(base) or {}).get("ingest", {})
            return ingest if ingest.get("stored_messages") == len(gateways) * per else None

        ingest = wait_for(stored, 30, "every envelope stored")
        assert ingest["writers"] == WRITERS_PG and ingest["duplicates"] == 0
        wait_for(lambda: (collector_health(base) or {}).get("ingest", {}).get("pending") == 0,
                 10, "every envelope acknowledged")
    finally:
        pub.loop_stop()
        pub.disconnect()


def test_several_writers_on_sqlite_stop_the_collector_with_the_key_named(
        broker: Broker, procs: Procs) -> None:
    log = procs.refused_config(broker, "writers", "[ingest]\nwriters = 2\n")
    assert "ingest.writers = 2 needs PostgreSQL" in log
