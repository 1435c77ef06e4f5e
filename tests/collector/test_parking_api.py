"""Parking REST API on a SQLite store: zones, nearest free, spots, alerts, restart recovery."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from collector.api import create_app
from collector.features import open_store
from collector.parking import (
    ParkingService,
    apply_migrations,
    load_parking_config,
    router,
)
from collector.parking.api import pages
from collector.parking.schema import parking_spots, parking_zones
from collector.store import Accepted, Store
from devices.contract import DataEnvelope

MIN = 60_000
T0 = 1_760_000_000_000
CFG = load_parking_config({
    "heartbeat": "10min",
    "zones": [
        {"id": "renmin-n", "name": "Renmin Rd north", "lat": 34.7466, "lon": 113.6253,
         "sensors": ["1001-1004"], "closed": ["pk-1004"]},
        {"id": "erqi-sq", "name": "Erqi Square", "lat": 34.7538, "lon": 113.6650,
         "sensors": ["2001-2003"]},
    ],
})


class Clock:
    """A settable collector clock (epoch ms)."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> int:
        return self.now


class City:
    """A store, the parking service and an API client around them."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.clock = Clock()
        self.seq = 0
        self.service = ParkingService(store, CFG, clock=self.clock).open()
        app = create_app(store)
        app.state.parking = self.service
        app.include_router(router)
        app.include_router(pages)
        self.client = TestClient(app)

    def send(self, *readings: tuple[str, int, dict[str, Any]]) -> None:
        """Deliver readings (device, ts, values) as one stored batch from gateway gw-1."""
        self.seq += 1
        env = DataEnvelope.model_validate({
            "v": 1, "gateway": "gw-1", "seq": self.seq, "sent": self.clock.now,
            "readings": [{"device": d, "ts": ts, "values": v} for d, ts, v in readings]})
        self.service.on_stored([Accepted("gw-1", env, self.clock.now)])

    def get(self, url: str) -> Any:
        """GET a JSON answer, asserting 200."""
        resp = self.client.get(url)
        assert resp.status_code == 200, resp.text
        return resp.json()


@pytest.fixture
def city(tmp_path: Path) -> Iterator[City]:
    """A parking city on a fresh SQLite store."""
    store = open_store(f"sqlite:///{tmp_path / 'hub.sqlite'}")
    try:
        yield City(store)
    finally:
        store.close()


def occ(flag: bool, **extra: Any) -> dict[str, Any]:
    """Values of a sensor report."""
    return {"occupied": flag, "battery_mv": 3600, **extra}


def test_zone_availability_follows_arrivals_and_departures(city: City) -> None:
    z = city.get("/api/v1/parking/zones/renmin-n")
    assert (z["total"], z["available"], z["unknown"], z["closed"]) == (4, 0, 3, 1)
    city.send(("pk-1001", T0, occ(False)), ("pk-1002", T0, occ(False)),
              ("pk-1003", T0, occ(True)), ("pk-2001", T0, occ(False)))
    z = city.get("/api/v1/parking/zones/renmin-n")
    assert (z["available"], z["occupied"], z["unknown"], z["closed"]) == (2, 1, 0, 1)
    assert z["updated"] == "2025-10-09T08:53:20.000Z"
    city.clock.now += MIN
    city.send(("pk-1001", T0 + MIN, occ(True)))
    zones = {z["id"]: z for z in city.get("/api/v1/parking/zones")}
    assert zones["renmin-n"]["available"] == 1 and zones["erqi-sq"]["available"] == 1
    assert city.client.get("/api/v1/parking/zones/nowhere").status_code == 404


def test_silent_sensors_turn_unknown_on_tick(city: City) -> None:
    city.send(("pk-1001", T0, occ(False)), ("pk-1002", T0 + 5 * MIN, occ(False)))
    city.clock.now = T0 + 21 * MIN
    city.service.tick()
    z = city.get("/api/v1/parking/zones/renmin-n")
    assert (z["available"], z["unknown"]) == (1, 2)
    alerts = city.get("/api/v1/parking/alerts?kind=silent")
    assert [(a["spot"], a["severity"], a["active"]) for a in alerts] == [
        ("pk-1001", "major", True)]


def test_near_returns_zones_with_free_spaces_nearest_first(city: City) -> None:
    city.send(("pk-1001", T0, occ(False)), ("pk-2001", T0, occ(False)))
    near = city.get("/api/v1/parking/zones?near=34.7540,113.6640&radius=5000")
    assert [z["id"] for z in near] == ["erqi-sq", "renmin-n"]
    assert near[0]["distance_m"] < near[1]["distance_m"]
    assert [z["id"] for z in city.get(
        "/api/v1/parking/zones?near=34.7540,113.6640&radius=200")] == ["erqi-sq"]
    city.send(("pk-2001", T0 + MIN, occ(True)))  # the last free bay there is taken
    assert [z["id"] for z in city.get(
        "/api/v1/parking/zones?near=34.7540,113.6640&radius=5000")] == ["renmin-n"]
    bad = city.client.get("/api/v1/parking/zones?near=north")
    assert bad.status_code == 422 and "near=LAT,LON" in bad.text


def test_spots_of_a_zone(city: City) -> None:
    city.send(("pk-1001", T0, occ(True, rssi=-88)))
    spots = city.get("/api/v1/parking/spots?zone=renmin-n")
    assert [(s["id"], s["status"]) for s in spots] == [
        ("pk-1001", "occupied"), ("pk-1002", "unknown"), ("pk-1003", "unknown"),
        ("pk-1004", "closed")]
    assert spots[0]["rssi"] == -88 and spots[0]["battery_mv"] == 3600
    assert [s["id"] for s in city.get("/api/v1/parking/spots?status=closed")] == ["pk-1004"]
    assert city.client.get("/api/v1/parking/spots?zone=nowhere").status_code == 404


def test_health_alerts_are_listed_and_cleared(city: City) -> None:
    city.send(("pk-2002", T0, occ(False, battery_mv=3150)))
    active = city.get("/api/v1/parking/alerts")
    assert [(a["spot"], a["kind"], a["value"]) for a in active] == [
        ("pk-2002", "low_battery", 3150)]
    city.send(("pk-2002", T0 + MIN, occ(False, battery_mv=3550)))  # battery replaced
    assert city.get("/api/v1/parking/alerts") == []
    cleared = city.get("/api/v1/parking/alerts?active=false")
    assert cleared[0]["cleared"] is not None and not cleared[0]["active"]


def test_state_is_persisted_on_transitions_and_restored(city: City) -> None:
    city.send(("pk-1001", T0, occ(True)), ("pk-1002", T0, occ(False)),
              ("pk-2003", T0, occ(False, battery_mv=3000)))
    with city.store.engine.connect() as conn:
        zone = conn.execute(sa.select(parking_zones).where(
            parking_zones.c.zone_id == "renmin-n")).mappings().one()
        spot = conn.execute(sa.select(parking_spots).where(
            parking_spots.c.spot_id == "pk-1001")).mappings().one()
    assert (zone["available"], zone["occupied"], zone["unknown"]) == (1, 1, 1)
    assert spot["status"] == "occupied" and spot["last_ts"] == T0
    assert apply_migrations(city.store.engine) == []  # already applied once
    again = City(city.store)  # a collector restart on the same database
    again.clock.now = T0 + 2 * MIN
    z = again.get("/api/v1/parking/zones/renmin-n")
    assert (z["available"], z["occupied"], z["unknown"]) == (1, 1, 1)
    again.send(("pk-2003", T0 + 3 * MIN, occ(False, battery_mv=3000)))
    assert len(again.get("/api/v1/parking/alerts?kind=low_battery")) == 1  # not raised twice


def test_heartbeats_do_not_rewrite_spot_rows_and_their_time_survives_a_restart(
        city: City) -> None:
    writes: list[str] = []
    sa.event.listen(city.store.engine, "before_cursor_execute",
                    lambda _c, _cur, sql, *_a: writes.append(sql)
                    if "parking_spots" in sql and not sql.lstrip().startswith("SELECT") else None)
    city.send(("pk-1001", T0, occ(True)), ("pk-1002", T0, occ(False)))
    assert city.service.stats["spot_writes"] == 2
    for minute in range(1, 6):  # five heartbeats each, nothing else changes
        city.clock.now = T0 + minute * MIN
        city.send(("pk-1001", T0 + minute * MIN, occ(True)),
                  ("pk-1002", T0 + minute * MIN, occ(False)))
    assert city.service.stats["spot_writes"] == 2  # no row rewritten
    assert len([w for w in writes if w.startswith("INSERT")]) == 1
    city.send(("pk-1002", T0 + 6 * MIN, occ(True)))  # a change is written at once
    assert city.service.stats["spot_writes"] == 3
    city.service.tick()  # the heartbeat of pk-1001 (pk-1002's change carried its time)
    assert city.service.stats["heartbeats"] == 1
    assert len([w for w in writes if w.lstrip().startswith("UPDATE")]) == 1
    with city.store.engine.connect() as conn:
        rows = {r["spot_id"]: r for r in conn.execute(sa.select(parking_spots)).mappings()}
    assert rows["pk-1001"]["last_ts"] == T0 + 5 * MIN and rows["pk-1001"]["status"] == "occupied"
    assert rows["pk-1002"]["last_ts"] == T0 + 6 * MIN and rows["pk-1002"]["occupied"]
    city.clock.now = T0 + 7 * MIN
    city.send(("pk-1001", T0 + 7 * MIN, occ(True)))
    city.service.close()  # the heartbeat not yet written goes out on close
    again = City(city.store)
    again.clock.now = T0 + 16 * MIN  # 9 minutes after the last report: not silent yet
    again.service.tick()
    assert again.get("/api/v1/parking/spots?zone=renmin-n")[0]["status"] == "occupied"


def test_live_page_is_served_without_external_assets(city: City) -> None:
    resp = city.client.get("/parking")
    assert resp.status_code == 200
    assert "/static/js/parking.js" in resp.text  # the page's own module, from the collector
    assert "http://" not in resp.text and "https://" not in resp.text
    module = city.client.get("/static/js/parking.js")
    assert module.status_code == 200
    assert "/api/v1/parking/zones" in module.text  # it reads the zones from this collector


def test_unconfigured_collector_answers_503(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'bare.sqlite'}")
    try:
        app = create_app(store)
        app.include_router(router)
        resp = TestClient(app).get("/api/v1/parking/zones")
        assert resp.status_code == 503 and "not configured" in resp.text
    finally:
        store.close()


def test_a_spot_row_that_changed_in_any_field_is_not_taken_for_a_heartbeat() -> None:
    # The service keeps a digest of each spot's stored row; a heartbeat is a report that
    # leaves it equal. Values that hash alike in Python (-1 and -2, 1 and True) must differ.
    from collector.parking.service import _content

    base = {"spot_id": "pk-1", "zone_id": "z", "status": "free", "occupied": False,
            "since": 5, "last_ts": 9, "battery_mv": 3600, "rssi": -1, "lat": None, "lon": None}
    assert _content(base) == _content({**base, "last_ts": 10})
    for key, value in [("rssi", -2), ("occupied", 0), ("battery_mv", 3601), ("lat", 34.7),
                       ("status", "occupied"), ("since", 6)]:
        assert _content(base) != _content({**base, key: value}), key
