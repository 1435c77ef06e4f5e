"""The whole collector (every feature) with the demo city's config, fed demo-like data.

Lifts at two sites behind two gateways, the demo's environment sites and parking zones, all in
the demo city the offline base map draws. Messages are decoded and stored as the collector's
Ingest stores them, then fanned out to every feature (no broker needed).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from citygate.demo_city import ENVIRONMENT, LIFT_SITE_FACTS, PARKING
from citygate.rig import served, wait_for
from collector.config import CollectorConfig
from collector.features import build_hub, open_store
from collector.hub import Hub
from collector.store import Accepted, Store
from devices.contract import decode, topic

LIFTS = {"gw-tcp-01": ("jinshui-tower", ["lift-t01", "lift-t02"]),
         "gw-rtu-01": ("erqi-plaza", ["lift-r01"])}
CONFIG: dict[str, Any] = {
    "alarms": {
        "sites": {site: {"name": site.replace("-", " ").title(), "gateways": [gw],
                         "unit": "lift-maintenance", "grid": "jinshui" if gw == "gw-tcp-01"
                         else "erqi", **LIFT_SITE_FACTS[site]}
                  for gw, (site, _) in LIFTS.items()},
        "units": {"lift-maintenance": {"name": "Lift maintenance",
                                       "members": [{"name": "Wang Wei"}]},
                  "env-inspection": {"name": "Environmental inspection"}},
        "routes": [{"kinds": ["nox_limit", "pm10_district"], "unit": "env-inspection"}],
        "default_unit": "lift-maintenance",
    },
    "sites": ENVIRONMENT,
    "parking": PARKING,
}


@dataclass
class DemoHub:
    """The hub, its admin token and base URL, and a way for gateways to talk to it."""

    hub: Hub
    store: Store
    token: str
    base: str = ""
    seq: int = 0

    def send(self, gateway: str, channel: str, body: dict[str, Any]) -> None:
        """One gateway message, decoded and stored as the Ingest does."""
        now = int(time.time() * 1000)
        if channel in ("data", "events"):
            self.seq += 1
            body = {"v": 1, "gateway": gateway, "seq": self.seq, "sent": now, **body}
        got = decode(topic(gateway, channel), orjson.dumps(body))
        if channel == "state":
            m: Any = got.message
            self.store.record_state(gateway, m.state, m.ts, m.reason, m.version, m.boot,
                                    m.devices)
            self.hub.on_state(gateway, m.state, list(m.devices))
            return
        result = self.store.ingest([Accepted(gateway, got.message, now)])
        self.hub.on_stored(result.fresh)

    def online(self) -> None:
        """Every gateway announces its devices, and each device reports once."""
        now = int(time.time() * 1000)
        for gw, (_, lifts) in LIFTS.items():
            self.send(gw, "state", {"v": 1, "gateway": gw, "state": "online", "ts": now,
                                "version": "1.0", "devices": {
                                    d: {"kind": "elevator", "profile": "gbt24476"}
                                    for d in lifts}})
            self.send(gw, "data", {"readings": [
                {"device": d, "ts": now, "values": {"floor": 3, "door_open": False}}
                for d in lifts]})
        stations = {d: "dust" if d.startswith("dust") else "boiler"
                    for s in ENVIRONMENT["sites"] for d in s["devices"]}
        self.send("gw-env-01", "state", {
            "v": 1, "gateway": "gw-env-01", "state": "online", "ts": now, "version": "1.0",
            "devices": {d: {"kind": k, "profile": f"{k}-hj212"} for d, k in stations.items()}})
        self.send("gw-env-01", "data", {"readings": [
            {"device": d, "ts": now, "values": {"pm10": 60.0} if k == "dust"
             else {"nox_converted": 20.0, "o2": 9.0}} for d, k in stations.items()]})
        bays = [f"pk-{n}" for n in range(1001, 1013)]
        self.send("gw-park-01", "state", {"v": 1, "gateway": "gw-park-01", "state": "online",
                                          "ts": now, "version": "1.0", "devices": {
                                              b: {"kind": "parking", "profile": "parking-rs485"}
                                              for b in bays}})
        self.send("gw-park-01", "data", {"readings": [
            {"device": f"pk-{n}", "ts": now, "values": {"occupied": n % 3 == 0}}
            for n in range(1001, 1013)]})

    def trapped(self, gateway: str, device: str) -> int:
        """A passenger is trapped in a lift: the incident's id once it is open."""
        now = int(time.time() * 1000)
        self.send(gateway, "events", {"events": [
            {"device": device, "ts": now, "kind": "trapped_passenger", "action": "raise",
             "severity": "critical", "message": "passenger trapped"}]})
        desk = self.hub.app.state.alarms

        def opened() -> int | None:
            return next((i["id"] for i in desk.incidents(None, None)
                         if i["device"] == device and i["state"] != "closed"), None)

        return int(wait_for(opened, 10, f"an incident for {device}"))


@contextmanager
def demo_hub(tmp: Path) -> Iterator[DemoHub]:
    """Build and serve the demo city's collector around a fresh SQLite store."""
    store = open_store(f"sqlite:///{tmp / 'hub.sqlite'}")
    token_file = tmp / "admin-token"
    hub = build_hub(store, CollectorConfig.model_validate(CONFIG), dict,
                    admin_token_file=token_file)
    city = DemoHub(hub, store, token_file.read_text().strip())
    try:
        with served(hub.app) as base:
            city.base = base
            yield city
    finally:
        closing = threading.Thread(target=asyncio.run, args=(hub.close(),))
        closing.start()
        closing.join(10)
        store.close()
