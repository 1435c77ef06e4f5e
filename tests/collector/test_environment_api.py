"""Environment monitor and REST API on SQLite: thresholds with duration, district rule, views."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from collector.api import create_app
from collector.environment import (
    MIGRATIONS,
    EnvAlarm,
    EnvironmentMonitor,
    install,
    load_environment_config,
)
from collector.environment.rules import HOUR_MS
from collector.features import open_store
from collector.migrations import migrate
from collector.store import Accepted
from devices.contract import DataEnvelope, EventsEnvelope

T0 = 1_714_528_800_000  # 2024-05-01 02:00 UTC, an hour boundary
MIN = 60_000
SECTION: dict[str, Any] = {
    "defaults": {"nox_limit": 30, "nox_duration": "10min", "pm10_margin": 80},
    "districts": [{"id": "d1", "name": "One", "outline": [[0, 0], [1, 0], [1, 1]]},
                  {"id": "d2"}],
    "sites": [
        {"id": "s-a", "name": "A", "lat": 0.5, "lon": 0.5, "district": "d1", "kind": "dust",
         "devices": ["dust-a"]},
        {"id": "s-b", "name": "B", "lat": 0.6, "lon": 0.4, "district": "d1", "kind": "dust",
         "devices": ["dust-b"]},
        {"id": "s-c", "name": "C", "lat": 0.2, "lon": 0.7, "district": "d1", "kind": "dust",
         "devices": ["dust-c1", "dust-c2"], "limits": {"pm10_margin": 200}},
        {"id": "b-1", "name": "Boiler", "lat": 0.3, "lon": 0.3, "district": "d2",
         "kind": "boiler", "devices": ["boiler-1"], "limits": {"nox_duration": "5min"}},
        {"id": "b-2", "name": "Quiet boiler", "lat": 0.3, "lon": 0.1, "district": "d2",
         "kind": "boiler", "devices": ["boiler-2"]},
    ],
}


class Rig:
    """A migrated SQLite store, a monitor with a fake clock and a way to ingest readings."""

    def __init__(self, tmp: Path) -> None:
        self.store = open_store(f"sqlite:///{tmp / 'hub.sqlite'}")
        assert migrate(self.store.engine, [MIGRATIONS]) == []  # Store.open applied it
        self.clock = T0
        self.announced: list[EnvAlarm] = []
        self.monitor = self.make_monitor()
        self.seq = 0

    def make_monitor(self) -> EnvironmentMonitor:
        """A monitor over the store (a new one acts like a collector restart)."""
        return EnvironmentMonitor(self.store, load_environment_config(SECTION),
                                  on_alarm=self.announced.append, now=lambda: self.clock)

    def send(self, *readings: dict[str, Any]) -> list[EnvAlarm]:
        """Ingest one data envelope and run the hook as Ingest does after commit."""
        self.seq += 1
        received = max(self.clock, *(x["ts"] for x in readings))  # never in the future
        env = DataEnvelope.model_validate({"v": 1, "gateway": "gw1", "seq": self.seq,
                                           "sent": received, "readings": list(readings)})
        items = [Accepted("gw1", env, received)]
        self.store.ingest(items)
        before = len(self.announced)
        self.monitor.on_stored(items)
        return self.announced[before:]


def r(device: str, ts: int, q: str = "good", flag: str | None = None, **values: float) -> dict:
    """A wire reading."""
    out: dict[str, Any] = {"device": device, "ts": ts, "values": values, "q": q}
    if flag:
        out["flag"] = flag
    return out


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    """A fresh rig."""
    rig = Rig(tmp_path)
    try:
        yield rig
    finally:
        rig.store.close()


@pytest.fixture
def client(rig: Rig) -> TestClient:
    """The collector app with the environment routes."""
    app = create_app(rig.store)
    install(app, rig.monitor)
    return TestClient(app)


def test_boiler_nox_alarm_needs_the_site_duration_and_clears(rig: Rig) -> None:
    assert rig.send(r("boiler-1", T0, nox_converted=45, nox=33)) == []
    assert rig.send(r("boiler-1", T0 + 4 * MIN, nox_converted=41)) == []
    # A BAD (flag D) value neither raises nor restarts the duration.
    assert rig.send(r("boiler-1", T0 + 4 * MIN + 1, q="bad", flag="D", nox_converted=5)) == []
    (raised,) = rig.send(r("boiler-1", T0 + 5 * MIN, nox_converted=40))
    assert (raised.site, raised.rule, raised.action, raised.ts, raised.threshold) == \
        ("b-1", "nox_limit", "raise", T0 + 5 * MIN, 30)
    assert rig.send(r("boiler-1", T0 + 6 * MIN, nox_converted=42)) == []  # raised once
    # Minute/hourly series and the measured value do not drive the real-time rule.
    assert rig.send(r("boiler-1:hour", T0, nox_converted=10), r("boiler-1", T0, nox=5)) == []
    (cleared,) = rig.send(r("boiler-1", T0 + 7 * MIN, nox_converted=25))
    assert cleared.action == "clear"
    rows = rig.monitor.alarms()
    assert [(a["active"], a["cleared_at"]) for a in rows] == [(False, T0 + 7 * MIN)]


def test_default_duration_applies_without_override(rig: Rig) -> None:
    assert rig.send(r("boiler-2", T0, nox_converted=31)) == []
    assert rig.send(r("boiler-2", T0 + 9 * MIN, nox_converted=31)) == []
    assert [a.action for a in rig.send(r("boiler-2", T0 + 10 * MIN, nox_converted=31))] == \
        ["raise"]


def test_pm10_hourly_above_district_average_by_margin(rig: Rig) -> None:
    h = T0
    # Only one site so far: no district average, no verdict.
    assert rig.send(r("dust-a:hour", h, pm10=300)) == []
    # B arrives: average (300 + 60) / 2 = 180; A is 120 above (> 80): raise for A only.
    (raised,) = rig.send(r("dust-b:hour", h, pm10=60))
    assert (raised.site, raised.rule, raised.action, raised.ts) == ("s-a", "pm10_district",
                                                                   "raise", h)
    assert raised.threshold == pytest.approx(260)
    # C (two devices, averaged to 150, margin 200) joins: average 170, A still 130 above.
    assert rig.send(r("dust-c1:hour", h, pm10=100), r("dust-c2:hour", h, pm10=200)) == []
    # Real-time PM10 never drives the hourly rule.
    assert rig.send(r("dust-a", h + HOUR_MS, pm10=900)) == []
    # Next hour A is in line: cleared.
    rig.send(r("dust-b:hour", h + HOUR_MS, pm10=70))
    (cleared,) = rig.send(r("dust-a:hour", h + HOUR_MS, pm10=90))
    assert (cleared.site, cleared.action) == ("s-a", "clear")


def test_a_restarted_monitor_does_not_raise_again(rig: Rig) -> None:
    rig.send(r("dust-a:hour", T0, pm10=300), r("dust-b:hour", T0, pm10=50))
    assert len(rig.monitor.alarms(active=True)) == 1
    rig.monitor = rig.make_monitor()
    assert rig.send(r("dust-a:hour", T0 + HOUR_MS, pm10=320),
                    r("dust-b:hour", T0 + HOUR_MS, pm10=40)) == []
    assert len(rig.monitor.alarms(active=True)) == 1


def test_a_failing_callback_never_breaks_ingest(rig: Rig) -> None:
    def boom(_alarm: EnvAlarm) -> None:
        raise RuntimeError("bridge down")

    rig.monitor.on_alarm = boom
    rig.send(r("boiler-2", T0, nox_converted=31))
    rig.send(r("boiler-2", T0 + 10 * MIN, nox_converted=31))
    assert len(rig.monitor.alarms(active=True)) == 1


def test_sites_api_status_values_units_and_filters(rig: Rig, client: TestClient) -> None:
    rig.clock = T0 + MIN
    rig.send(r("dust-a", T0, pm10=85.0, tsp=120.0),
             r("dust-b", T0, q="bad", flag="D", pm10=0.0), r("dust-b", T0, tsp=100.0),
             r("dust-c1", T0, pm10=170.0),
             r("boiler-1", T0, nox_converted=45.0, o2=8.0),
             r("dust-a:hour", T0, pm10=80.0))
    sites = {s["id"]: s for s in client.get("/api/v1/environment/sites").json()}
    assert {k: v["status"] for k, v in sites.items()} == {
        "s-a": "ok", "s-b": "fault", "s-c": "exceeded", "b-1": "exceeded", "b-2": "offline"}
    a = sites["s-a"]
    assert a["latest"]["pm10"] == {"value": 85.0, "unit": "µg/m³", "quality": "good",
                                   "observed_at": "2024-05-01T02:00:00.000Z",
                                   "device": "dust-a"}
    assert a["hourly"]["pm10"]["value"] == 80.0
    assert a["hourly"]["pm10"]["device"] == "dust-a:hour"
    assert a["limits"] == {"pm10": 150.0}
    assert sites["b-1"]["latest"]["nox_converted"]["unit"] == "mg/m³"
    assert sites["s-b"]["latest"]["pm10"]["quality"] == "bad"
    exceeded = client.get("/api/v1/environment/sites?status=exceeded").json()
    assert sorted(s["id"] for s in exceeded) == ["b-1", "s-c"]
    assert [s["id"] for s in client.get("/api/v1/environment/sites?kind=boiler&"
                                        "status=offline").json()] == ["b-2"]
    rig.clock = T0 + 11 * MIN  # nothing new for 11 minutes: offline
    assert client.get("/api/v1/environment/sites/s-a").json()["status"] == "offline"


def test_alarmed_site_shows_its_alarm_and_history_by_interval(rig: Rig,
                                                              client: TestClient) -> None:
    rig.clock = T0 + 10 * MIN
    for minute in range(6):
        rig.send(r("boiler-1", T0 + minute * MIN, nox_converted=40.0 + minute))
    rig.send(r("boiler-1:min", T0, nox_converted=42.0), r("boiler-1:hour", T0,
                                                          nox_converted=41.0))
    site = client.get("/api/v1/environment/sites/b-1").json()
    assert site["status"] == "exceeded"
    assert [(a["rule"], a["active"], a["value"]) for a in site["alarms"]] == \
        [("nox_limit", True, 45.0)]
    hist = client.get("/api/v1/environment/sites/b-1/history",
                      params={"quantity": "nox_converted"}).json()
    assert [p["v"] for p in hist["points"]] == [40.0, 41.0, 42.0, 43.0, 44.0, 45.0]
    assert (hist["unit"], hist["limit"], hist["interval"]) == ("mg/m³", 30.0, "rt")
    hourly = client.get("/api/v1/environment/sites/b-1/history",
                        params={"quantity": "nox_converted", "interval": "hour"}).json()
    assert [(p["v"], p["device"]) for p in hourly["points"]] == [(41.0, "boiler-1:hour")]
    window = client.get("/api/v1/environment/sites/b-1/history", params={
        "quantity": "nox_converted", "since": "2024-05-01T02:02:00Z",
        "until": str(T0 + 4 * MIN)}).json()
    assert [p["v"] for p in window["points"]] == [42.0, 43.0]
    active = client.get("/api/v1/environment/alarms?active=true").json()
    assert [a["site"] for a in active] == ["b-1"]


def test_fault_event_from_the_gateway_marks_the_site(rig: Rig, client: TestClient) -> None:
    rig.clock = T0 + MIN
    rig.send(r("dust-a", T0, pm10=60.0))
    env = EventsEnvelope.model_validate({"v": 1, "gateway": "gw1", "seq": 99, "sent": T0,
                                         "events": [{"device": "dust-a", "ts": T0,
                                                     "kind": "instrument_fault",
                                                     "action": "raise", "severity": "minor"}]})
    rig.store.ingest([Accepted("gw1", env, T0)])
    assert client.get("/api/v1/environment/sites/s-a").json()["status"] == "fault"


def test_api_errors_and_districts(client: TestClient) -> None:
    assert client.get("/api/v1/environment/sites/nope").status_code == 404
    assert client.get("/api/v1/environment/sites/s-a/history?quantity=pm_10").status_code == 422
    assert client.get("/api/v1/environment/sites/s-a/history?interval=week").status_code == 422
    assert client.get("/api/v1/environment/sites?status=burning").status_code == 422
    districts = client.get("/api/v1/environment/districts").json()
    assert districts[0] == {"id": "d1", "name": "One", "outline": [[0, 0], [1, 0], [1, 1]]}
    page = client.get("/environment")
    assert page.status_code == 200
    assert "<svg" in page.text
