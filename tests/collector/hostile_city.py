"""A whole collector (every feature, as `citygate collector` builds it) fed hostile text.

Names in the config and values a gateway sends carry markup that runs script if a page ever
writes it unescaped. Shared by the page-header tests and the browser XSS test.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from citygate.rig import Broker, wait_for
from collector.config import CollectorConfig
from collector.features import build_hub, open_store
from collector.hub import Hub
from collector.store import Accepted, Store
from devices.contract import decode, topic

# Each sets window.__xss (and would open a dialog) if it ever runs.
IMG = '<img src=x onerror="window.__xss=1;alert(1)">'
SCRIPT = '"><script>window.__xss=2;alert(2)</script>'
SVG = "<svg onload=window.__xss=3>"
HOSTILE = (IMG, SCRIPT, SVG)

GATEWAY = "gw-tower"
CONFIG: dict[str, Any] = {
    "alarms": {
        "sites": {"tower": {"name": f"Tower {SCRIPT}", "devices": ["lift-1"],
                            "unit": "crew-north"}},
        "units": {"crew-north": {"name": f"North {IMG}", "members": [{"name": f"Li {SVG}"}]}},
        "default_unit": "crew-north",
    },
    "sites": {
        "districts": [{"id": "d1", "name": f"District {SVG}", "outline": [[0, 0], [1, 0], [1, 1]]}],
        "sites": [{"id": "s-a", "name": f"Site {IMG}", "lat": 0.5, "lon": 0.5, "district": "d1",
                   "kind": "dust", "devices": ["dust-a"]}],
    },
    "parking": {"zones": [{"id": "z1", "name": f"Zone {SCRIPT}", "lat": 34.75, "lon": 113.62,
                           "sensors": ["1001-1002"]}]},
}


@dataclass
class HostileCity:
    """The hub, its store, an admin token that may open every page, and how gateways reach it.

    With `mqtt` set, messages go over a private broker to the collector's Ingest (the path a
    gateway's messages take); without, they are decoded and stored as the Ingest would.
    """

    hub: Hub
    store: Store
    token: str
    mqtt: Any = None  # a connected paho client publishing to the Ingest's broker
    seq: int = 0

    def send(self, channel: str, body: dict[str, Any]) -> None:
        """Send one gateway message (an envelope gets its header here)."""
        now = int(time.time() * 1000)
        if channel in ("data", "events"):
            self.seq += 1
            body = {"v": 1, "gateway": GATEWAY, "seq": self.seq, "sent": now, **body}
        payload = orjson.dumps(body)
        if self.mqtt is not None:
            info = self.mqtt.publish(topic(GATEWAY, channel), payload, qos=1,
                                     retain=channel == "state")
            info.wait_for_publish(10)
            return
        got = decode(topic(GATEWAY, channel), payload)
        if channel == "state":
            m: Any = got.message
            self.store.record_state(GATEWAY, m.state, m.ts, m.reason, m.version, m.boot,
                                    m.devices)
            self.hub.on_state(GATEWAY, m.state, list(m.devices))
            return
        items = [Accepted(GATEWAY, got.message, now)]  # type: ignore[arg-type]
        result = self.store.ingest(items)
        self.hub.on_stored(result.fresh)

    def feed_hostile(self) -> None:
        """A gateway announces its devices and sends hostile readings and events; wait for them."""
        now = int(time.time() * 1000)
        self.send("state", {"v": 1, "gateway": GATEWAY, "state": "online", "ts": now,
                            "version": "1.0",
                            "devices": {"lift-1": {"kind": f"lift {IMG}", "profile": "gbt24476"},
                                        "dust-a": {"kind": "dust", "profile": "hj212"}}})
        self.send("data", {"readings": [
            {"device": "lift-1", "ts": now, "values": {"fault_code": 7, "floor": 7}},
            # Text in an integer quantity (the stored XSS of old) is refused by the contract now.
            {"device": "lift-1", "ts": now, "values": {"fault_code": IMG}},
            {"device": "dust-a", "ts": now, "values": {"pm10": 42.0}},
            {"device": "pk-1001", "ts": now, "values": {"occupied": False}}]})
        self.send("events", {"events": [
            {"device": "lift-1", "ts": now, "kind": "trapped_passenger", "action": "raise",
             "severity": "critical", "message": SCRIPT},
            {"device": "lift-1", "ts": now, "kind": IMG, "action": "raise",
             "severity": "major", "message": SVG, "evidence": {"note": SCRIPT}}]})
        wait_for(self._stored, 15, "the hostile messages to be stored")

    def _stored(self) -> bool:
        latest = {r["quantity"] for r in self.store.latest("lift-1")}
        opened = self.hub.app.state.alarms.incidents(None, None)
        return "fault_code" in latest and any(i["kind"] == "trapped_passenger" for i in opened)


@contextmanager
def hostile_city(tmp: Path, *, over_mqtt: bool = False) -> Iterator[HostileCity]:
    """Build the collector around a fresh SQLite store with the hostile config."""
    store = open_store(f"sqlite:///{tmp / 'hub.sqlite'}")
    token_file = tmp / "admin-token"
    hub = build_hub(store, CollectorConfig.model_validate(CONFIG), dict,
                    admin_token_file=token_file)
    city = HostileCity(hub, store, token_file.read_text().strip())
    with contextlib.ExitStack() as stack:
        if over_mqtt:
            city.mqtt = stack.enter_context(_broker_and_ingest(tmp, hub, store))
        try:
            yield city
        finally:
            # In its own thread: a browser test's driver keeps an event loop running in this one.
            closing = threading.Thread(target=asyncio.run, args=(hub.close(),))
            closing.start()
            closing.join(10)
    store.close()


@contextmanager
def _broker_and_ingest(tmp: Path, hub: Hub, store: Store) -> Iterator[Any]:
    """A private broker, the collector's Ingest feeding the hub, and a gateway's MQTT client."""
    import paho.mqtt.client as paho

    from collector.ingest import Ingest

    broker = Broker(tmp / "broker").start()
    ingest = Ingest(store, broker.url, client_id="hostile-collector",
                    on_stored=hub.on_stored, on_state=hub.on_state)
    ingest.start()
    gateway = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=GATEWAY,
                          protocol=paho.MQTTv311)
    try:
        wait_for(lambda: ingest.stats.connected, 15, "the ingest to connect")
        gateway.connect("127.0.0.1", broker.port)
        gateway.loop_start()
        yield gateway
    finally:
        gateway.loop_stop()
        gateway.disconnect()
        ingest.stop()
        broker.stop()
