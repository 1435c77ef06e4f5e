"""A gateway inventing device ids, against a real `collector run` and Mosquitto: it creates
at most collector.toml's `[ingest] max_devices_per_gateway` devices, the rest of what it
reports is refused and counted, and its own devices and other gateways go on."""

from __future__ import annotations

import time

import paho.mqtt.client as mqtt
import pytest

from citygate.rig import Broker, collector_health, http_json, wait_for
from devices import contract
from hil_tests.conftest import Procs

pytestmark = pytest.mark.hil


def publish(broker: Broker, gateway: str, seq: int, devices: list[str]) -> None:
    """One data envelope of `gateway` with a parking reading of each device, at QoS 1."""
    now = int(time.time() * 1000)
    readings = [{"device": d, "ts": now, "values": {"occupied": True}} for d in devices]
    body = contract.envelope(gateway, contract.DATA, seq, now, contract.orjson.dumps(readings))
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{gateway}-{seq}")
    c.connect("127.0.0.1", broker.port)
    c.loop_start()
    try:
        info = c.publish(contract.topic(gateway, contract.DATA), body, qos=1)
        info.wait_for_publish(10)
        assert info.is_published()
    finally:
        c.disconnect()
        c.loop_stop()


def test_a_gateway_creates_at_most_its_limit_of_devices(broker: Broker, procs: Procs) -> None:
    _proc, base = procs.collector(broker, config={"ingest": {"max_devices_per_gateway": 5}})
    publish(broker, "gw-flood", 1, [f"ghost-{i:03d}" for i in range(20)])
    publish(broker, "gw-flood", 2, ["ghost-000", "ghost-001", "ghost-new"])
    publish(broker, "gw-fair", 1, ["spot-1", "spot-2"])

    def stored() -> dict[str, object] | None:
        health = collector_health(base)
        ingest = (health or {}).get("ingest", {})
        return ingest if ingest.get("stored_messages") == 3 else None

    ingest = wait_for(stored, 30, "three envelopes stored")
    assert ingest["refused"] == {"device_limit": 16}
    flood = http_json(f"{base}/api/v1/devices?gateway=gw-flood")
    assert sorted(d["id"] for d in flood) == [f"ghost-{i:03d}" for i in range(5)]
    fair = http_json(f"{base}/api/v1/devices?gateway=gw-fair")
    assert sorted(d["id"] for d in fair) == ["spot-1", "spot-2"]
    latest = http_json(f"{base}/api/v1/devices/ghost-001/latest")
    assert latest["quantities"]["occupied"]["value"] is True


def test_a_bad_device_limit_stops_the_collector_with_the_key_named(
        broker: Broker, procs: Procs) -> None:
    log = procs.refused_config(broker, "bad", "[ingest]\nmax_devices_per_gateway = 0\n")
    assert "ingest.max_devices_per_gateway: 0 is not a whole number" in log
