"""The control room's map layers, the overview and the lift ranking through REST on the whole
collector app (SQLite and PostgreSQL): what the demo city's pages are built on."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from citygate.rig import free_port
from collector import auth
from collector.alarms import hash_token
from collector.config import CollectorConfig
from collector.features import build_hub
from collector.hub import BrokerLink, Hub
from collector.store import Accepted, Store, now_ms
from devices.contract import DataEnvelope, EventsEnvelope

OPS = {"Authorization": "Bearer tok-ops"}
JINSHUI = [[113.67, 34.757], [113.76, 34.757], [113.76, 34.86], [113.67, 34.86]]
ERQI = [[113.60, 34.70], [113.67, 34.70], [113.67, 34.757], [113.60, 34.757]]
CONFIG = CollectorConfig.model_validate({
    "alarms": {
        "group_wait": "0s",
        "sites": {"tower": {"name": "Jinshui tower", "gateways": ["gw-lift"], "grid": "jinshui",
                            "lat": 34.77, "lon": 113.69}},
        "units": {"ops-desk": {"escalation": []}},
        "default_unit": "ops-desk",
        "ops": [{"name": "ops-room", "token_hash": hash_token("tok-ops")}]},
    "sites": {
        "defaults": {"pm10_limit": 150},
        "districts": [{"id": "jinshui", "outline": JINSHUI}, {"id": "erqi", "outline": ERQI}],
        "sites": [{"id": "works", "name": "Metro works", "lat": 34.80, "lon": 113.68,
                   "district": "jinshui", "kind": "dust", "devices": ["dust-1"],
                   "responsible": {"name": "Zhang Wei", "phone": "13900000001"}}]},
    "parking": {"heartbeat": "30min", "zones": [
        {"id": "square", "name": "Erqi Square", "lat": 34.7538, "lon": 113.6650,
         "district": "erqi", "sensors": ["1001-1002"],
         "kerb": [[113.6648, 34.7538], [113.6652, 34.7538]]}]},
})


class City:
    """The whole collector app over a store, and ways to feed it like gateways do."""

    def __init__(self, hub: Hub, client: TestClient, reader: str) -> None:
        self.hub, self.client, self.seq = hub, client, 0
        self.reader = {"Authorization": f"Bearer {reader}"}

    def state(self, gateway: str, state: str, devices: dict[str, str]) -> None:
        inventory = {d: {"kind": k, "profile": ""} for d, k in devices.items()}
        self.hub.store.record_state(gateway, state, now_ms(), "", "1.0", "b", inventory)
        self.hub.on_state(gateway, state, list(devices))

    def send(self, gateway: str, device: str, **values: Any) -> None:
        self.seq += 1
        env = DataEnvelope.model_validate({
            "v": 1, "gateway": gateway, "seq": self.seq, "sent": now_ms(),
            "readings": [{"device": device, "ts": now_ms(), "values": values}]})
        self._store(gateway, env)

    def event(self, gateway: str, device: str, kind: str, ts: int) -> None:
        self.seq += 1
        env = EventsEnvelope.model_validate({
            "v": 1, "gateway": gateway, "seq": self.seq, "sent": ts,
            "events": [{"device": device, "ts": ts, "kind": kind, "action": "raise",
                        "severity": "major"}]})
        self._store(gateway, env)

    def _store(self, gateway: str, env: Any) -> None:
        items = [Accepted(gateway, env, now_ms())]
        self.hub.store.ingest(items)
        self.hub.on_stored(items)

    def get(self, url: str, headers: dict[str, str] | None = None) -> Any:
        resp = self.client.get(url, headers=OPS if headers is None else headers)
        assert resp.status_code == 200, resp.text
        return resp.json()


@pytest.fixture
def city(store: Store, tmp_path: Path) -> Iterator[City]:
    hub = build_hub(store, CONFIG, ingest_stats=dict,
                    broker=BrokerLink(f"mqtt://127.0.0.1:{free_port()}"),
                    admin_token_file=tmp_path / "admin-token")
    reader = auth.create_token(store.engine, "city-brain", auth.Role.READER)
    try:
        with TestClient(hub.app) as client:
            c = City(hub, client, reader)
            c.state("gw-lift", "online", {"lift-1": "elevator", "lift-2": "elevator"})
            c.state("gw-env", "online", {"dust-1": "dust_monitor"})
            c.state("gw-park", "online", {"pk-1001": "unknown",  # sensors behind a concentrator
                                          "pk-1002": "unknown"})
            yield c
    finally:
        asyncio.run(hub.close())


def features(fc: dict[str, Any]) -> dict[Any, dict[str, Any]]:
    return {f["id"]: f for f in fc["features"]}


def test_layers_place_and_colour_everything_and_one_offline_gateway_is_one_incident(
        city: City) -> None:
    city.send("gw-lift", "lift-1", trip_count=10)
    city.send("gw-lift", "lift-2", trip_count=10)
    city.send("gw-env", "dust-1", pm10=422)
    city.send("gw-park", "pk-1001", occupied=False)
    city.send("gw-park", "pk-1002", occupied=True)
    got = city.get("/api/v1/map/layers")
    lifts = features(got["lifts"])
    assert lifts["lift-1"]["geometry"]["coordinates"] == [113.69, 34.77]
    assert (lifts["lift-1"]["properties"]["state"], lifts["lift-1"]["properties"]["district"]) \
        == ("ok", "jinshui")
    gws = features(got["gateways"])
    assert gws["gw-lift"]["properties"]["located_by"] == "site"
    park = gws["gw-park"]
    assert (park["properties"]["located_by"], park["properties"]["district"]) == \
        ("devices", "erqi")
    assert features(got["parking"])["square"]["properties"]["free_share"] == 0.5
    env = features(got["environment"])["works"]["properties"]
    assert (env["state"], env["colour"], env["exceeded"], env["responsible_name"]) == \
        ("exceeded", "red", ["pm10"], "Zhang Wei")
    assert got["incidents"]["features"] == []

    city.state("gw-lift", "offline", {"lift-1": "elevator", "lift-2": "elevator"})
    got = city.get("/api/v1/map/layers?layers=incidents,lifts,gateways")
    [inc] = got["incidents"]["features"]
    assert inc["geometry"]["coordinates"] == [113.69, 34.77]
    p = inc["properties"]
    assert (p["kind"], p["devices"], p["district"], p["state"]) == \
        ("gateway_offline", ["lift-1", "lift-2"], "jinshui", "open")
    assert p["age_s"] >= 0 and p["link"] == f"/api/v1/incidents/{p['id']}"
    assert {f["properties"]["state"] for f in got["lifts"]["features"]} == {"offline"}
    assert features(got["gateways"])["gw-lift"]["properties"]["colour"] == "red"
    assert got["parking"] is None
    only = city.get("/api/v1/map/layers/incidents?kind=gateway_offline&district=jinshui")
    assert len(only["features"]) == 1
    assert city.get("/api/v1/map/layers/incidents?district=erqi")["features"] == []


def test_map_access_and_bounds(city: City) -> None:
    reader = city.reader
    assert city.get("/api/v1/map/layers", reader)["incidents"]["features"] == []
    assert city.client.get("/api/v1/map/layers/incidents", headers=reader).status_code == 403
    assert city.get("/api/v1/map/layers/gateways", reader)["type"] == "FeatureCollection"
    assert city.client.get("/api/v1/map/layers").status_code == 401
    boxed = city.get("/api/v1/map/layers/gateways?bbox=113.60,34.70,113.67,34.757")
    assert sorted(features(boxed)) == ["gw-park"]
    for bad in ("bbox=1,2,3", "bbox=10,0,5,1", "bbox=0,-91,1,1", "bbox=a,b,c,d",
                "layers=secrets"):
        assert city.client.get(f"/api/v1/map/layers?{bad}", headers=OPS).status_code == 422, bad
    assert city.client.get("/api/v1/map/layers/secrets", headers=OPS).status_code == 422


def test_overview_counts_freshness_and_links_to_raw_values(city: City) -> None:
    city.send("gw-lift", "lift-1", trip_count=10)
    city.send("gw-env", "dust-1", pm10=80)
    city.state("gw-park", "offline", {"pk-1001": "unknown", "pk-1002": "unknown"})
    got = city.get("/api/v1/overview", city.reader)
    assert got["gateways"] == {"total": 3, "online": 2, "offline": 1, "unknown": 0}
    kinds = {k["kind"]: k for k in got["kinds"]}
    assert (kinds["lift"]["online"], kinds["lift"]["unknown"]) == (1, 1)
    assert kinds["parking"]["offline"] == 2
    assert kinds["environment"]["freshness_s"] < 60
    assert got["incidents"] == {"active": None, "critical": None, "breached": None}
    assert city.get("/api/v1/overview")["incidents"]["active"] == 1  # ops: the parking gateway
    offline = city.get("/api/v1/overview/devices?state=offline", city.reader)
    assert [d["id"] for d in offline] == ["pk-1001", "pk-1002"]
    latest = city.get("/api/v1/overview/devices?kind=lift&state=online", city.reader)
    assert [d["id"] for d in latest] == ["lift-1"]
    raw = city.get(latest[0]["latest_url"], city.reader)
    assert raw["quantities"]["trip_count"]["value"] == 10
    assert city.client.get("/api/v1/overview/devices?state=gone",
                           headers=city.reader).status_code == 422


def test_lift_risk_is_scaled_by_trips_and_filtered_by_district(city: City) -> None:
    now = now_ms()
    city.send("gw-lift", "lift-1", trip_count=0)
    city.send("gw-lift", "lift-2", trip_count=0)
    city.send("gw-lift", "lift-1", trip_count=20_000)  # a busy lift...
    city.send("gw-lift", "lift-2", trip_count=500)  # ...and a quiet one
    for i in range(4):
        city.event("gw-lift", "lift-1", "run_timeout", now - (i + 1) * 1000)
    city.event("gw-lift", "lift-2", "run_timeout", now - 500)
    by_score = city.get("/api/v1/elevators/risk", city.reader)
    assert [r["device"] for r in by_score] == ["lift-1", "lift-2"]
    by_use = city.get("/api/v1/elevators/risk?rank_by=per_1000_trips", city.reader)
    assert [r["device"] for r in by_use] == ["lift-2", "lift-1"]
    quiet = by_use[0]
    assert (quiet["trips_30d"], quiet["district"], quiet["site"]) == (500, "jinshui", "tower")
    assert quiet["explanation"][-1].startswith("500 trip(s) in 30 days (counted as 1000)")
    assert city.get("/api/v1/elevators/risk?district=erqi", city.reader) == []
    # the control room's ops login reads the same ranking, by use unless told otherwise
    assert [r["device"] for r in city.get("/api/v1/overview/lift-risk")] == ["lift-2", "lift-1"]
    assert city.client.get("/api/v1/elevators/risk", headers=OPS).status_code == 401
    assert city.client.get("/api/v1/elevators/risk?rank_by=mood",
                           headers=city.reader).status_code == 422
