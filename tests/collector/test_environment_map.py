"""Environment map data through REST on SQLite and PostgreSQL: exceedance from values (not the
data flag) and since when, the responsible person, averages per period with the limit."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from collector.api import create_app
from collector.environment import EnvironmentMonitor, install, load_environment_config
from collector.store import Accepted, Store
from devices.contract import DataEnvelope

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
MIN, HOUR = 60_000, 3_600_000
SECTION: dict[str, Any] = {
    "defaults": {"pm10_limit": 150, "offline_after": "10min"},
    "sites": [
        {"id": "works", "name": "Metro works", "lat": 34.80, "lon": 113.68, "kind": "dust",
         "devices": ["dust-1"],
         "responsible": {"name": "Zhang Wei", "phone": "139 0000 0001",
                         "unit": "Metro Construction Co."}},
        {"id": "quiet", "lat": 34.81, "lon": 113.70, "kind": "dust", "devices": ["dust-2"]},
    ],
}


class Rig:
    """A monitor on a store with a settable clock, and a REST client."""

    def __init__(self, store: Store) -> None:
        self.store, self.now, self.seq = store, T0, 0
        self.monitor = EnvironmentMonitor(store, load_environment_config(SECTION),
                                          now=lambda: self.now)
        app = create_app(store)
        install(app, self.monitor)
        self.client = TestClient(app)

    def send(self, device: str, ts: int, q: str = "good", **values: float) -> None:
        self.seq += 1
        env = DataEnvelope.model_validate({
            "v": 1, "gateway": "gw-env", "seq": self.seq, "sent": ts,
            "readings": [{"device": device, "ts": ts, "values": values, "q": q}]})
        items = [Accepted("gw-env", env, ts)]
        self.store.ingest(items)
        self.monitor.on_stored(items)

    def get(self, url: str) -> Any:
        resp = self.client.get(url)
        assert resp.status_code == 200, resp.text
        return resp.json()


@pytest.fixture
def rig(store: Store) -> Rig:
    return Rig(store)


def test_exceedance_is_judged_from_values_and_says_since_when(rig: Rig) -> None:
    rig.send("dust-1", T0, pm10=100)
    rig.send("dust-1", T0 + MIN, pm10=180)
    rig.send("dust-1", T0 + 2 * MIN, q="uncertain", pm10=422)  # flagged, but measured
    rig.now = T0 + 3 * MIN
    site = rig.get("/api/v1/environment/sites/works")
    exc = site["exceedance"]
    assert (exc["state"], exc["since"], exc["duration_s"]) == \
        ("exceeded", "2026-01-01T00:01:00.000Z", 120.0)
    assert exc["quantities"] == [{"quantity": "pm10", "value": 422.0, "unit": "µg/m³",
                                  "limit": 150.0, "since": "2026-01-01T00:01:00.000Z",
                                  "since_exact": True}]
    assert site["responsible"] == {"name": "Zhang Wei", "phone": "139 0000 0001",
                                   "unit": "Metro Construction Co."}
    rig.send("dust-1", T0 + 4 * MIN, q="bad", pm10=10)  # an instrument fault is no all-clear
    rig.now = T0 + 5 * MIN
    assert rig.get("/api/v1/environment/sites/works")["exceedance"]["state"] == "exceeded"
    rig.send("dust-1", T0 + 5 * MIN, pm10=90)
    assert rig.get("/api/v1/environment/sites/works")["exceedance"] == {
        "state": "normal", "since": None, "duration_s": None, "quantities": []}
    rig.now = T0 + 30 * MIN  # silent past offline_after
    assert rig.get("/api/v1/environment/sites/works")["exceedance"]["state"] == "unknown"
    quiet = rig.get("/api/v1/environment/sites/quiet")
    assert quiet["exceedance"]["state"] == "unknown"
    assert quiet["responsible"] == {"name": "", "phone": "", "unit": ""}


def test_averages_per_period_computed_or_from_the_logger(rig: Rig) -> None:
    for i, v in enumerate((100, 200, 300, 400)):  # two minutes, two values each
        rig.send("dust-1", T0 + i * 30_000, pm10=v)
    rig.now = T0 + 5 * MIN
    url = "/api/v1/environment/sites/works/averages?quantity=pm10"
    raw = rig.get(f"{url}&interval=rt&since=2026-01-01T00:00Z")
    assert (raw["source"], [p["avg"] for p in raw["points"]]) == ("raw", [100, 200, 300, 400])
    per_min = rig.get(f"{url}&interval=min&since=2026-01-01T00:00Z")
    assert per_min["source"] == "computed"
    assert [(p["t"], p["avg"], p["min"], p["max"], p["n"]) for p in per_min["points"]] == [
        ("2026-01-01T00:00:00.000Z", 150.0, 100.0, 200.0, 2),
        ("2026-01-01T00:01:00.000Z", 350.0, 300.0, 400.0, 2)]
    assert (per_min["limit"], per_min["limit_label"]) == (150.0, "pm10 limit 150 µg/m³")
    rig.send("dust-1:hour", T0, pm10=240)  # the logger's own hourly average (CN 2061)
    hourly = rig.get(f"{url}&interval=hour&since=2026-01-01T00:00Z")
    assert (hourly["source"], [(p["avg"], p["device"]) for p in hourly["points"]]) == \
        ("logger", [(240.0, "dust-1:hour")])
    assert rig.get(f"{url}&interval=day")["source"] == "computed"


def test_averages_refuse_bad_input(rig: Rig) -> None:
    for query in ("quantity=pm10&interval=week", "quantity=nonsense",
                  "quantity=pm10&interval=rt&since=2025-12-01T00:00Z",  # 2 days at most
                  "quantity=pm10&since=2026-01-02T00:00Z&until=2026-01-01T00:00Z",
                  "quantity=pm10&limit=0", "interval=hour"):
        url = f"/api/v1/environment/sites/works/averages?{query}"
        assert rig.client.get(url).status_code == 422, query
    assert rig.client.get("/api/v1/environment/sites/nowhere/averages?quantity=pm10") \
        .status_code == 404


def test_a_bad_responsible_phone_is_refused() -> None:
    bad = {"sites": [{**SECTION["sites"][1], "responsible": {"phone": "<script>"}}]}
    with pytest.raises(ValueError, match="phone"):
        load_environment_config(bad)


def test_a_run_older_than_the_values_looked_at_is_not_exact(rig: Rig) -> None:
    rig.send("dust-2", T0, pm10=200)
    rig.send("dust-2", T0 + MIN, pm10=300)
    rig.now = T0 + 2 * MIN
    [over] = rig.get("/api/v1/environment/sites/quiet")["exceedance"]["quantities"]
    assert (over["since"], over["since_exact"]) == ("2026-01-01T00:00:00.000Z", False)
