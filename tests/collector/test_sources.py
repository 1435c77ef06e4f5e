"""Pollution sources: the attribution score, imports, and the owner task loop over REST."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from citygate.rig import free_port
from collector import auth
from collector.config import CollectorConfig
from collector.features import build_hub
from collector.hub import BrokerLink
from collector.sources.geo import Fix, Located, SourceIndex, TruckGrid, dwell_near
from collector.sources.importer import ImportRefused, parse
from collector.sources.model import Weights
from collector.sources.models import SourcesGeoJSON
from collector.sources.scoring import Evidence, Wind, rank, wind_factor
from collector.sources.tasks import TaskError, step
from collector.store import Accepted, Store
from devices.contract import DataEnvelope

W = Weights()
P = (34.7500, 113.6500)  # the exceedance point
DLAT_600M = 600 / 111_195  # 600 m north or south


# --- scoring -------------------------------------------------------------------------------

def test_an_upwind_source_outranks_a_downwind_one_at_the_same_distance() -> None:
    north = Evidence("site", 600, 0.0)
    south = Evidence("factory", 600, 180.0)
    ranked = rank([south, north], Wind(0.0, 3.0, "dust-1"), W)
    assert [s.source_id for s in ranked] == ["site", "factory"]
    assert ranked[0].factors["wind"] == pytest.approx(1.8)
    assert ranked[1].factors["wind"] == pytest.approx(0.2)
    assert ranked[0].reasons[1].startswith("upwind: wind from 0° (N) at 3.0 m/s")
    assert ranked[1].reasons[1].startswith("downwind")


def test_calm_or_missing_wind_leaves_distance_to_decide() -> None:
    for wind in (Wind(0.0, 0.2, "dust-1"), None):
        ranked = rank([Evidence("far", 900, 0.0), Evidence("near", 300, 180.0)], wind, W)
        assert [s.source_id for s in ranked] == ["near", "far"]
        assert ranked[0].factors["wind"] == 1.0


def test_own_monitor_and_truck_dwell_raise_the_score_and_say_why() -> None:
    plain = rank([Evidence("a", 500, 90.0)], None, W)[0]
    loud = rank([Evidence("a", 500, 90.0, 2.8, "pm10 420 at dust-9 (limit 150)")], None, W)[0]
    truck = rank([Evidence("t", 500, 90.0, dwell_min=12)], None, W)[0]
    assert loud.score == pytest.approx(plain.score * 2.0)
    assert truck.score == pytest.approx(plain.score * 2.0)
    assert "pm10 420 at dust-9 (limit 150) = 2.8× its limit" in loud.reasons[2]
    assert truck.reasons[-1] == "truck stayed 12 min near the point"
    assert plain.score == pytest.approx(100 * math.exp(-0.5))


def test_wind_strength_rises_from_calm_to_full() -> None:
    half = wind_factor(0.0, Wind(0.0, 1.25, "s"), W)[0]
    assert half == pytest.approx(1 + 0.8 * 0.5)
    assert wind_factor(90.0, Wind(0.0, 5.0, "s"), W)[0] == pytest.approx(1.0)
    assert wind_factor(None, Wind(0.0, 5.0, "s"), W)[1].startswith("the point lies on")


# --- geometry ------------------------------------------------------------------------------

def test_index_finds_points_and_outlines_within_the_radius() -> None:
    square = ((113.649, 34.749), (113.651, 34.749), (113.651, 34.751), (113.649, 34.751))
    idx = SourceIndex([Located("inside", 34.75, 113.65, square),
                       Located("north", P[0] + DLAT_600M, P[1]),
                       Located("far", P[0] + 0.1, P[1])])
    found = idx.within(*P, 1000)
    assert [(s.id, round(d)) for s, d in found] == [("inside", 0), ("north", 600)]


def test_truck_dwell_counts_time_inside_the_radius_only() -> None:
    t0 = 1_700_000_000_000
    track = [Fix("t1", t0 + i * 60_000, P[0] + (0.0 if 2 <= i <= 6 else 0.02), P[1])
             for i in range(10)]
    dwell = dwell_near(track, *P, 300, t0, t0 + 3_600_000)
    assert dwell is not None and dwell.minutes == 4 and dwell.closest_m < 1
    grid = TruckGrid()
    grid.add(track)
    assert [d.device for d in grid.near(*P, 300, t0, t0 + 3_600_000)] == ["t1"]
    assert grid.near(*P, 300, t0 + 7 * 60_000, t0 + 3_600_000) == []
    grid.prune(t0 + 2 * 3_600_000)
    assert grid.latest() == {}


# --- task lifecycle ------------------------------------------------------------------------

def test_a_task_closes_on_report_and_recovery_in_either_order() -> None:
    assert step("pushed", "report", recovered=False).state == "reported"
    assert step("reported", "recovered", recovered=True).closed_reason == "recovered"
    assert step("acknowledged", "report", recovered=True).closed_reason == "recovered"
    assert step("pushed", "recovered", recovered=True).state == "pushed"
    assert step("pushed", "verify", recovered=False).closed_reason == "verified"
    with pytest.raises(TaskError):
        step("closed", "report", recovered=True)


# --- import --------------------------------------------------------------------------------

CSV = """id,name,kind,district,lat,lon,company,contact_name,contact_phone,devices,outline
site-1,Metro works,construction_site,jinshui,34.755,113.65,Build Co,Wang,13800000001,dust-9;dust-10,
bad-lat,Bad,restaurant,jinshui,95,113.6,,,,,
shop-2,Noodles,restaurant,jinshui,,,Noodle Ltd,Li,13800000002,fume-1,\
113.66 34.74;113.661 34.74;113.661 34.741
truck-1,Truck,muck_truck,,,,Haul Co,Zhao,13800000003,,
"""


def test_csv_import_keeps_good_rows_and_names_bad_ones() -> None:
    parsed = parse(CSV.encode(), "text/csv")
    assert [s.id for s in parsed.sources] == ["site-1", "shop-2"]
    assert parsed.sources[0].devices == ["dust-9", "dust-10"]
    assert parsed.sources[1].lat == pytest.approx(34.74033, abs=1e-4)  # outline centre
    assert parsed.errors[0].startswith("line 3: lat")
    assert parsed.errors[1] == "line 5: Value error, a muck truck needs its tracker's device" \
        " id in devices"


def test_geojson_import_takes_points_and_polygons() -> None:
    doc = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "id": "f1", "geometry": {"type": "Point",
                                                     "coordinates": [113.6, 34.7]},
         "properties": {"kind": "industrial", "name": "Boiler <b>house</b>"}},
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[
            [113.6, 34.7], [113.61, 34.7], [113.61, 34.71], [113.6, 34.7]]]},
         "properties": {"id": "s2", "kind": "construction_site"}},
        {"type": "Feature", "geometry": {"type": "LineString", "coordinates": []},
         "properties": {"id": "x", "kind": "other"}},
        {"type": "Feature", "geometry": None, "properties": {"id": "x\u0000", "kind": "other"}}]}
    parsed = parse(orjson.dumps(doc), "application/geo+json")
    assert [s.id for s in parsed.sources] == ["f1", "s2"]
    assert len(parsed.sources[1].outline) == 3
    assert parsed.errors[0] == "feature 2: geometry must be a Point or a Polygon"
    assert parsed.errors[1].startswith("feature 3: id")
    with pytest.raises(ImportRefused):
        parse(b'{"type": "Feature"}')


# --- REST: registry, attribution, owner loop -------------------------------------------------

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z


@pytest.fixture
def hub(store: Store, tmp_path: Path) -> Iterator[tuple[TestClient, str, Any]]:
    cfg = CollectorConfig(
        sites={"sites": [{"id": "station-1", "lat": P[0], "lon": P[1], "kind": "dust",
                          "devices": ["dust-1"], "district": "jinshui"}]},
        sources={"owner_channel": "owners", "top": 2,
                 "escalation": [{"after": "0s", "channels": ["inspectors"]}]})
    hub = build_hub(store, cfg, ingest_stats=dict,
                    broker=BrokerLink(f"mqtt://127.0.0.1:{free_port()}"),
                    admin_token_file=tmp_path / "admin-token")
    admin = auth.create_token(store.engine, "ops-1", auth.Role.OPS)
    try:
        with TestClient(hub.app, raise_server_exceptions=False) as client:
            yield client, admin, hub
    finally:
        asyncio.run(hub.close())


def ingest(hub: Any, seq: int, readings: list[dict[str, Any]]) -> None:
    env = DataEnvelope.model_validate({"v": 1, "gateway": "gw1", "seq": seq, "sent": T0,
                                       "readings": readings})
    items = [Accepted("gw1", env, T0 + 100)]
    hub.store.ingest(items)
    hub.on_stored(items)


def test_owner_loop_over_rest(hub: tuple[TestClient, str, Any]) -> None:
    client, token, h = hub
    ops = {"Authorization": f"Bearer {token}"}
    csv = (f"id,name,kind,lat,lon,company,contact_phone,devices\n"
           f"site-n,North works,construction_site,{P[0] + DLAT_600M},{P[1]},Build Co,138,mon-n\n"
           f"factory-s,South plant,industrial,{P[0] - DLAT_600M},{P[1]},Plant Co,139,\n")
    r = client.post("/api/v1/sources/import", content=csv, headers={
        **ops, "Content-Type": "text/csv"})
    assert r.json() == {"created": 2, "updated": 0, "refused": 0, "errors": []}
    r = client.post("/api/v1/sources/import", content=csv.replace("Plant Co", "Plant Group"),
                    headers={**ops, "Content-Type": "text/csv"})
    assert r.json()["updated"] == 2
    assert client.get("/api/v1/sources/factory-s", headers=ops).json()["company"] == \
        "Plant Group"
    ingest(h, 1, [{"device": "dust-1", "ts": T0, "values": {
        "wind_direction": 5.0, "wind_speed": 3.0, "pm10": 420.0}},
        {"device": "mon-n", "ts": T0 - 60_000, "values": {"pm10": 300.0}}])
    r = client.post("/api/v1/sources/exceedances", headers=ops, json={
        "lat": P[0], "lon": P[1], "ts": T0, "quantity": "pm10", "value": 420.0})
    ex = r.json()
    assert [c["source"] for c in ex["candidates"]] == ["site-n", "factory-s"]
    assert ex["wind"]["station"] == "dust-1"
    assert [t["source_id"] for t in ex["tasks"]] == ["site-n", "factory-s"]
    pushed = h.app.state.notify_queue.list(channel="owners")
    assert {p["key"] for p in pushed} == {f"source-task-{t['id']}" for t in ex["tasks"]}
    task = ex["tasks"][0]
    row = next(p for p in pushed if p["key"] == f"source-task-{task['id']}")
    notice = h.app.state.notify_queue.load(row["id"])[0]
    assert notice.mention_phones == ("138",)
    assert any(r.startswith("upwind") for r in ex["candidates"][0]["reasons"])
    assert "own monitor: pm10 300 at mon-n (limit 150) = 2.0× its limit" in \
        ex["candidates"][0]["reasons"]
    assert ex["candidates"][0]["factors"]["monitor"] == 2.0
    key = notice.link.split("key=")[1]
    base = f"/api/v1/sources/tasks/{task['id']}"
    assert client.post(f"{base}/ack", params={"key": "wrong"}).status_code == 403
    assert client.post(f"{base}/ack").status_code == 401
    assert client.post(f"{base}/ack", params={"key": key}).json()["state"] == "acknowledged"
    photo = b"\xff\xd8\xff\xe0" + b"0" * 100
    assert client.put(f"{base}/photo", params={"key": key}, content=b"GIF89a",
                      headers={"Content-Type": "image/gif"}).status_code == 415
    assert client.put(f"{base}/photo", params={"key": key}, content=b"x" * (3 << 20),
                      headers={"Content-Type": "image/jpeg"}).status_code == 413
    assert client.put(f"{base}/photo", params={"key": key}, content=photo,
                      headers={"Content-Type": "image/jpeg"}).status_code == 204
    done = client.post(f"{base}/report", params={"key": key},
                       json={"text": "Sprayed the haul road, covered the spoil heap"}).json()
    assert done["state"] == "reported" and done["has_photo"]
    h.app.state.sources.recovered("station-1", T0)  # not this exceedance's site
    assert client.get(base, params={"key": key}).json()["state"] == "reported"
    back = client.post(f"/api/v1/sources/exceedances/{ex['id']}/recovered", headers=ops).json()
    assert back["tasks"][0]["state"] == "closed"
    assert back["tasks"][0]["closed_reason"] == "recovered"
    assert client.post(f"/api/v1/sources/tasks/{ex['tasks'][1]['id']}/verify",
                       headers=ops).json()["closed_reason"] == "verified"
    assert client.get(f"{base}/photo", headers=ops).content == photo
    figures = client.get("/api/v1/sources/figures", params={"by": "owner"}, headers=ops).json()
    assert [(f["owner"], f["tasks_pushed"], f["handled"], f["closed"]) for f in figures] == \
        [("Build Co", 1, 1, 1), ("Plant Group", 1, 0, 1)]
    assert all("district" not in f for f in figures)  # a group names only what it was asked by
    assert h.app.state.sources.escalate() == 0  # both tasks are past acknowledgement


def test_geojson_and_truck_tracks(hub: tuple[TestClient, str, Any]) -> None:
    client, token, h = hub
    ops = {"Authorization": f"Bearer {token}"}
    client.put("/api/v1/sources/truck-7", headers=ops, json={
        "id": "truck-7", "kind": "muck_truck", "devices": ["trk-7"], "company": "Haul Co"})
    client.put("/api/v1/sources/site-1", headers=ops, json={
        "id": "site-1", "kind": "construction_site", "contact_name": "Li Wei", "outline": [
            [113.64, 34.74], [113.65, 34.74], [113.65, 34.75]]})
    ingest(h, 1, [{"device": "trk-7", "ts": T0 + i * 30_000, "values": {
        "latitude": P[0], "longitude": P[1] + i * 1e-5, "vehicle_speed": 3.0}}
        for i in range(12)])
    answer = client.get("/api/v1/sources.geojson", headers=ops)
    assert answer.headers["content-type"] == "application/geo+json"
    geo = SourcesGeoJSON.model_validate_json(answer.content).model_dump()  # as documented
    kinds = {f["id"]: f["geometry"]["type"] for f in geo["features"]}
    assert kinds == {"truck-7": "Point", "site-1": "Polygon"}
    props = {f["id"]: f["properties"] for f in geo["features"]}
    assert props["site-1"]["contact_name"] == "Li Wei" and props["truck-7"]["ts"] is not None
    track = client.get("/api/v1/sources/trucks/trk-7/track", headers=ops).json()
    assert len(track) == 12 and track[0]["ts"] == T0
    ranked = client.post("/api/v1/sources/attribution", headers=ops, json={
        "lat": P[0], "lon": P[1], "ts": T0 + 6 * 60_000}).json()["candidates"]
    truck = next(c for c in ranked if c["source"] == "truck-7")
    assert truck["reasons"][-1] == "truck stayed 6 min near the point"
    svc = h.app.state.sources
    svc.now = lambda: T0 + 6 * 86_400_000 + 5 * 30_000  # within the 7-day retention of some
    assert svc.sweep() == 0
    svc.now = lambda: T0 + 7 * 86_400_000 + 5 * 30_000 + 1
    assert svc.sweep() == 6  # the first six fixes are past 7 days
    assert len(client.get("/api/v1/sources/trucks/trk-7/track", headers=ops).json()) == 6


def test_escalation_reaches_inspectors_when_nobody_acknowledges(
        hub: tuple[TestClient, str, Any]) -> None:
    client, token, h = hub
    ops = {"Authorization": f"Bearer {token}"}
    client.put("/api/v1/sources/site-1", headers=ops, json={
        "id": "site-1", "kind": "construction_site", "lat": P[0], "lon": P[1]})
    client.post("/api/v1/sources/exceedances", headers=ops, json={"lat": P[0], "lon": P[1]})
    assert h.app.state.sources.escalate() == 1
    assert h.app.state.sources.escalate() == 0  # a stage fires once
    assert len(h.app.state.notify_queue.list(channel="inspectors")) == 1


def test_bad_registry_input_gets_clear_errors(hub: tuple[TestClient, str, Any]) -> None:
    client, token, _ = hub
    ops = {"Authorization": f"Bearer {token}"}
    r = client.put("/api/v1/sources/s1", headers=ops, json={"id": "s1", "kind": "volcano",
                                                            "lat": 1, "lon": 2})
    assert r.status_code == 422
    r = client.put("/api/v1/sources/s1", headers=ops, json={
        "id": "s1", "kind": "other", "lat": 1, "lon": 2, "contact_phone": "<script>"})
    assert r.status_code == 422
    reader = auth.create_token(_.store.engine, "reader-1", auth.Role.READER)
    r = client.put("/api/v1/sources/s1", headers={"Authorization": f"Bearer {reader}"},
                   json={"id": "s1", "kind": "other", "lat": 1, "lon": 2})
    assert r.status_code == 403


def test_late_and_repeated_fixes_keep_one_track_in_time_order() -> None:
    grid = TruckGrid()
    t0 = 1_700_000_000_000
    grid.add([Fix("t1", t0 + 60_000, *P), Fix("t1", t0, *P), Fix("t1", t0 + 60_000, *P),
              Fix("t1", t0 + 30_000, *P)])
    dwell = grid.near(*P, 100, t0, t0 + 60_000)
    assert dwell[0].minutes == 1.0
    assert grid.latest()["t1"].ts == t0 + 60_000
