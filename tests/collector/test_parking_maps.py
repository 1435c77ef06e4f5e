"""Parking for maps and drivers through REST, on SQLite and PostgreSQL: bay positions (also in
NGSI-LD), GeoJSON, nearest free parking with navigation links, occupancy history, sensor
health."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from collector.api import create_app
from collector.ngsi.source import EntitySource
from collector.parking import ParkingConfigError, ParkingService, load_parking_config, router
from collector.store import Accepted, Store
from devices.contract import DataEnvelope

MIN, HOUR = 60_000, 3_600_000
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
CFG = load_parking_config({
    "heartbeat": "10min",
    "history_every": "10min",
    "detour_factor": 1.25,
    "navigation_url": "https://maps.example/walk?from={from_lat},{from_lon}&to={to_lat},{to_lon}",
    "alerts": {"stuck_after": "6h"},
    "zones": [
        {"id": "renmin-n", "name": "Renmin Rd north", "lat": 34.7466, "lon": 113.6253,
         "district": "erqi", "sensors": ["1001-1004"], "closed": ["pk-1004"],
         "kerb": [[113.6250, 34.7466], [113.6258, 34.7466]],
         "outline": [[113.6249, 34.7467], [113.6259, 34.7467], [113.6259, 34.7465],
                     [113.6249, 34.7465]]},
        {"id": "erqi-sq", "name": "Erqi Square", "kind": "offStreet", "lat": 34.7538,
         "lon": 113.6650, "sensors": ["2001-2002"], "bays": {"pk-2001": [113.6651, 34.7539]}},
    ],
})


class City:
    """The parking service on a store, a settable clock and a REST client."""

    def __init__(self, store: Store) -> None:
        self.now = T0
        self.store = store
        self.service = ParkingService(store, CFG, clock=lambda: self.now).open()
        app = create_app(store)
        app.state.parking = self.service
        app.include_router(router)
        self.client = TestClient(app)
        self.seq = 0

    def send(self, device: str, **values: Any) -> None:
        self.seq += 1
        env = DataEnvelope.model_validate({
            "v": 1, "gateway": "gw-1", "seq": self.seq, "sent": self.now,
            "readings": [{"device": device, "ts": self.now, "values": values}]})
        self.service.on_stored([Accepted("gw-1", env, self.now)])

    def get(self, url: str) -> Any:
        resp = self.client.get(url)
        assert resp.status_code == 200, resp.text
        return resp.json()


@pytest.fixture
def city(store: Store) -> City:
    return City(store)


def test_bays_are_placed_along_the_kerb_and_in_ngsi(city: City) -> None:
    spots = {s["id"]: s for s in city.get("/api/v1/parking/spots?zone=renmin-n")}
    lons = [spots[f"pk-100{i}"]["lon"] for i in range(1, 5)]
    assert lons == sorted(lons) and 113.6250 < lons[0] < lons[-1] < 113.6258
    assert {spots[s]["lat"] for s in spots} == {34.7466}
    bays = city.get("/api/v1/parking/spots.geojson?zone=erqi-sq")["features"]
    assert [(f["id"], f["geometry"]["coordinates"]) for f in bays] == \
        [("pk-2001", [113.6651, 34.7539])]  # pk-2002 has no position: not on the bay layer
    city.send("pk-2001", occupied=False)
    [entity] = EntitySource(city.store).spots(["pk-2001"])
    assert entity["location"]["value"] == {"type": "Point", "coordinates": [113.6651, 34.7539]}


def test_zones_geojson_has_outline_free_share_and_level(city: City) -> None:
    city.send("pk-1001", occupied=False)
    city.send("pk-1002", occupied=True)
    fc = city.get("/api/v1/parking/zones.geojson")
    zones = {f["id"]: f for f in fc["features"]}
    north = zones["renmin-n"]
    assert north["geometry"]["type"] == "Polygon"
    ring = north["geometry"]["coordinates"][0]
    assert ring[0] == ring[-1] and len(ring) == 5
    assert (north["properties"]["free_share"], north["properties"]["level"],
            north["properties"]["district"]) == (pytest.approx(1 / 3, abs=1e-4), "free", "erqi")
    assert zones["erqi-sq"]["geometry"] == {"type": "Point", "coordinates": [113.665, 34.7538]}
    assert zones["erqi-sq"]["properties"]["level"] == "unknown"
    city.send("pk-1001", occupied=True)
    assert city.get("/api/v1/parking/zones.geojson")["features"][1]["properties"]["level"] \
        == "full"


def test_nearest_free_parking_by_walking_distance_with_navigation(city: City) -> None:
    city.send("pk-1003", occupied=False)
    city.send("pk-2001", occupied=False)
    near_square = "lat=34.7540&lon=113.6640"
    got = city.get(f"/api/v1/parking/nearest?{near_square}&radius=5000")
    assert [r["zone"]["id"] for r in got["results"]] == ["erqi-sq", "renmin-n"]
    first = got["results"][0]
    assert first["walking_m"] == pytest.approx(first["straight_m"] * 1.25, abs=0.2)
    assert first["target"] == {"lat": 34.7539, "lon": 113.6651}  # the free bay itself
    assert [s["id"] for s in first["free_spots"]] == ["pk-2001"]
    assert first["navigation"] == {
        "geo": "geo:34.753900,113.665100",
        "web": "https://maps.example/walk?from=34.754000,113.664000&to=34.753900,113.665100"}
    assert got["method"] == "great_circle_x_detour" and got["detour_factor"] == 1.25
    city.send("pk-2001", occupied=True)  # taken: the square drops out
    got = city.get(f"/api/v1/parking/nearest?{near_square}&radius=5000&limit=1")
    assert [r["zone"]["id"] for r in got["results"]] == ["renmin-n"]
    assert city.get(f"/api/v1/parking/nearest?{near_square}&radius=100")["results"] == []
    for bad in ("lat=91&lon=113", "lat=34&lon=181", "lat=x&lon=1", "lat=34&lon=113&limit=0",
                "lat=34&lon=113&radius=1e9", "lat=34"):
        assert city.client.get(f"/api/v1/parking/nearest?{bad}").status_code == 422, bad


def test_occupancy_history_by_hour_and_day(city: City) -> None:
    for step in range(1, 13):  # two hours of ten-minute samples; one bay taken in hour two
        city.now = T0 + step * 10 * MIN
        city.send("pk-1001", occupied=step >= 6)
        city.send("pk-1002", occupied=False)
        city.service.tick()
    got = city.get("/api/v1/parking/zones/renmin-n/history?by=hour&since=2026-01-01T00:00Z"
                   "&until=2026-01-01T03:00Z")
    assert [(p["t"], p["free_avg"], p["free_min"], p["samples"]) for p in got["points"]] == [
        ("2026-01-01T00:00:00.000Z", 1.67, 0, 6),  # nothing heard at start, then 2 free
        ("2026-01-01T01:00:00.000Z", 1.0, 1, 6),
        ("2026-01-01T02:00:00.000Z", 1.0, 1, 1)]
    assert got["points"][1]["free_share_avg"] == pytest.approx(1 / 3, abs=1e-4)
    day = city.get("/api/v1/parking/zones/renmin-n/history?by=day&since=2026-01-01T00:00Z"
                   "&until=2026-01-02T00:00Z")
    assert [p["samples"] for p in day["points"]] == [13]
    assert city.client.get("/api/v1/parking/zones/nowhere/history").status_code == 404
    too_long = "by=hour&since=2026-01-01T00:00Z&until=2026-03-01T00:00Z"
    assert city.client.get(f"/api/v1/parking/zones/renmin-n/history?{too_long}") \
        .status_code == 422
    assert city.client.get("/api/v1/parking/zones/renmin-n/history?by=week").status_code == 422


def test_sensor_health_offline_low_battery_and_stuck(city: City) -> None:
    city.send("pk-1001", occupied=True, battery_mv=3100)
    city.send("pk-1002", occupied=False, battery_mv=3600)
    city.now = T0 + 25 * MIN  # pk-1001 keeps reporting, pk-1002 goes silent (20 min)
    city.send("pk-1001", occupied=True, battery_mv=3100)
    city.service.tick()
    health = city.get("/api/v1/parking/health?zone=renmin-n")
    by_id = {s["id"]: s for s in health["spots"]}
    assert by_id["pk-1001"]["health"] == ["low_battery"]
    assert by_id["pk-1002"]["health"] == ["offline"]
    assert by_id["pk-1003"]["health"] == ["offline"]  # never heard
    assert "pk-1004" in by_id  # closed, but its sensor was never heard either
    assert health["counts"]["low_battery"] == 1
    for step in range(1, 8):  # six more hours occupied, still reporting: stuck
        city.now = T0 + 25 * MIN + step * HOUR
        city.send("pk-1001", occupied=True, battery_mv=3100)
    by_id = {s["id"]: s for s in city.get("/api/v1/parking/health")["spots"]}
    assert by_id["pk-1001"]["health"] == ["low_battery", "stuck"]
    [alert_id] = by_id["pk-1001"]["alerts"]
    alert = city.get(f"/api/v1/parking/alerts/{alert_id}")
    assert (alert["spot"], alert["kind"], alert["lat"]) == ("pk-1001", "low_battery", 34.7466)
    assert city.client.get("/api/v1/parking/alerts/999999").status_code == 404
    assert city.client.get("/api/v1/parking/alerts/0").status_code == 422
    assert city.client.get("/api/v1/parking/health?zone=nowhere").status_code == 404


@pytest.mark.parametrize(("change", "words"), [
    ({"navigation_url": "https://x/{secret}"}, "placeholders"),
    ({"navigation_url": "javascript:alert(1)"}, "https://"),
    ({"zones": [{"id": "z", "lat": 1, "lon": 1, "spots": ["pk-1"], "bays": {"pk-9": [1, 1]}}]},
     "not spots of this zone"),
    ({"zones": [{"id": "z", "lat": 1, "lon": 1, "outline": [[1, 1], [2, 2]]}]}, "at least 3"),
    ({"zones": [{"id": "z", "lat": 1, "lon": 1, "kerb": [[1, 95], [1, 1]]}]}, "kerb"),
])
def test_bad_map_config_is_refused_with_the_key(change: dict[str, Any], words: str) -> None:
    with pytest.raises(ParkingConfigError, match=words):
        load_parking_config(change)
