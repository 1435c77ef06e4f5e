"""Grids as geography and routing by place, through the REST API, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from citygate.cli import main
from citygate.rig import served
from tests.collector.grid_fixtures import IN_G1, IN_G2, GridCity, city, feature, grid_city, square

__all__ = ["grid_city"]


def import_city(g: GridCity, doc: dict[str, Any] | None = None) -> dict[str, Any]:
    r = g.client.put("/api/v1/grid/outlines", json=doc or city(), headers=g.h())
    assert r.status_code == 200, r.text
    return r.json()


def register(g: GridCity, site: str, lat: float, lon: float, unit: str = "",
             gateway: str | None = None) -> None:
    r = g.client.put(f"/api/v1/sites/{site}", headers=g.h(),
                     json={"name": site, "lat": lat, "lon": lon, "responsible_unit": unit})
    assert r.status_code == 204, r.text
    if gateway:
        r = g.client.post("/api/v1/gateways", json={"site": site, "id": gateway},
                          headers=g.h())
        assert r.status_code == 201, r.text


def incident(g: GridCity, iid: int) -> dict[str, Any]:
    r = g.client.get(f"/api/v1/incidents/{iid}", headers=g.h())
    assert r.status_code == 200, r.text
    return r.json()


def test_registered_site_lands_in_its_grid_and_reaches_its_unit(grid_city: GridCity) -> None:
    g = grid_city
    assert import_city(g) == {"imported": 4, "districts": 1, "areas": 1, "grids": 2}
    register(g, "tower-9", *IN_G1, gateway="gw-tower9")
    placed = {p["id"]: p for p in g.client.get("/api/v1/grid/placements",
                                               headers=g.h()).json()}
    assert {k: placed["tower-9"][k] for k in ("grid", "area", "district")} == \
        {"grid": "g1", "area": "a1", "district": "d1"}
    assert "site" not in placed["tower-9"]  # only a device names the site it is at
    g.event("gw-tower9", "lift-77", "door_fault")  # a device the config never heard of
    (inc,) = g.incidents()
    view = incident(g, inc["id"])
    assert (view["site"], view["unit"], view["grid"], view["district"]) == \
        ("tower-9", "crew-g1", "g1", "d1")
    assert view["assignee"]["name"] == "Li Wei"
    assert "line department for door_fault of g1" in view["routing"]["reason"]
    assert view["found_by"] == "device"
    assert [c for c, _ in g.sent] == ["push-crew-g1"]
    placed = {p["id"]: p for p in g.client.get("/api/v1/grid/placements",
                                               headers=g.h()).json()}
    assert {k: placed["lift-77"][k] for k in ("type", "site", "grid", "district")} == \
        {"type": "device", "site": "tower-9", "grid": "g1", "district": "d1"}


def test_changing_an_outline_reroutes_new_events(grid_city: GridCity) -> None:
    g = grid_city
    import_city(g)
    register(g, "tower-9", *IN_G2, gateway="gw-tower9")
    g.event("gw-tower9", "lift-77", "door_fault")
    # g1 grows over the site: the next event there is g1's; the open incident stays g2's
    import_city(g, city(g1_lon=113.62))
    g.event("gw-tower9", "lift-78", "door_fault")
    first, second = g.incidents()
    assert (first["unit"], first["grid"]) == ("crew-g2", "g2")
    assert (second["unit"], second["grid"]) == ("crew-g1", "g1")
    assert g.client.get("/api/v1/grid/locate", params={"lat": IN_G2[0], "lon": IN_G2[1]},
                        headers=g.h()).json()["grid"] == "g1"


def test_order_registry_unit_then_line_department_then_default(grid_city: GridCity) -> None:
    g = grid_city
    import_city(g)
    register(g, "mall-3", *IN_G1, unit="lift-co", gateway="gw-mall3")
    register(g, "dust-5", 34.71, 113.51, gateway="gw-dust5")  # in d1 only: no area, no grid
    g.event("gw-mall3", "lift-1", "trapped_passenger")
    g.event("gw-dust5", "pm-1", "dust")
    g.event("gw-dust5", "pm-1", "noise")
    g.event("gw-nowhere", "x-1", "door_fault")  # registered nowhere
    lift, dust, noise, lost = g.incidents()
    assert (lift["unit"], lift["route_reason"].split(" (")[0]) == \
        ("lift-co", "site registry: mall-3 is in the care of lift-co")
    assert (dust["unit"], dust["district"], dust["grid"]) == ("env-d1", "d1", "")
    assert "line department for dust of d1" in dust["route_reason"]
    assert noise["unit"] == "city-desk" and noise["route_reason"].startswith("default unit")
    assert (lost["site"], lost["unit"]) == ("gw:gw-nowhere", "city-desk")
    preview = g.client.get("/api/v1/grid/route", headers=g.h(), params={
        "kind": "dust", "lat": IN_G2[0], "lon": IN_G2[1]}).json()
    assert (preview["unit"], preview["grid"]) == ("crew-g2", "g2")  # g2's "*" before d1's dust


def test_bad_outlines_are_refused_and_keep_the_old_set(grid_city: GridCity) -> None:
    g = grid_city
    import_city(g)
    bowtie = {"type": "Polygon", "coordinates": [[[113.6, 34.8], [113.61, 34.81],
                                                  [113.61, 34.8], [113.6, 34.81],
                                                  [113.6, 34.8]]]}
    cases = [
        ({"type": "FeatureCollection", "features": [feature("x", "grid", bowtie)]},
         "invalid polygon: Self-intersection"),
        ({"type": "FeatureCollection", "features": [feature("x", "grid", square(1, 1),
                                                            "nope")]},
         "parent 'nope' must be an existing area"),
        ({"type": "FeatureCollection", "features": [feature("x", "block", square(1, 1))]},
         "level must be one of district, area, grid"),
        ({"type": "FeatureCollection", "features": [feature("x", "grid", {
            "type": "Polygon", "coordinates": [[[500, 1], [1, 2], [2, 2], [500, 1]]]})]},
         "positions must be [lon, lat]"),
        ({"type": "FeatureCollection", "features": [feature("x", "grid", {
            "type": "Polygon", "coordinates": [[[0.0, 0.0]] * 20_001]})]},
         "more than 20000 vertices"),
        ({"type": "Point"}, "not a GeoJSON FeatureCollection"),
    ]
    for doc, reason in cases:
        r = g.client.post("/api/v1/grid/outlines", json=doc, headers=g.h())
        assert r.status_code == 422, (reason, r.text)
        assert reason in r.json()["detail"][0]["msg"], r.text
    big = b'{"type": "FeatureCollection", "features": [' + b" " * 8_000_001 + b"]}"
    r = g.client.put("/api/v1/grid/outlines", content=big, headers=g.h())
    assert r.status_code == 413
    r = g.client.put("/api/v1/grid/outlines", content=b"{nope", headers=g.h())
    assert r.status_code == 422
    assert len(g.client.get("/api/v1/grid/outlines", headers=g.h()).json()["features"]) == 4
    reader = g.client.post("/api/v1/tokens", headers=g.h(),
                           json={"name": "viewer", "role": "reader"}).json()["token"]
    assert g.client.put("/api/v1/grid/outlines", json=city(),
                        headers=g.h(reader)).status_code == 403
    assert g.client.delete("/api/v1/grid/outlines/a1", headers=g.h()).status_code == 409
    assert g.client.delete("/api/v1/grid/outlines/g2", headers=g.h()).status_code == 204


def test_cli_imports_a_file_and_names_the_bad_feature(grid_city: GridCity, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    g = grid_city
    good, bad = tmp_path / "city.geojson", tmp_path / "bad.geojson"
    good.write_bytes(orjson.dumps(city()))
    doc = city()
    doc["features"][3]["geometry"]["coordinates"][0][2] = [113.60, 34.80]  # a collapsed ring
    bad.write_bytes(orjson.dumps(doc))
    with served(g.hub.app) as url:
        base = ["grid", "import", "--collector", url, "--token", g.admin]
        assert main([*base, str(good)]) == 0
        assert "imported 4 outlines: 1 districts, 1 areas, 2 grids" in capsys.readouterr().out
        assert main([*base, "--merge", str(bad)]) == 2
        err = capsys.readouterr().err
        assert "features[3] (g2)" in err and "invalid polygon" in err
    assert len(g.client.get("/api/v1/grid/outlines", headers=g.h()).json()["features"]) == 4


def test_a_collector_sharing_the_database_follows_another_ones_changes(
        grid_city: GridCity) -> None:
    import sqlalchemy as sa

    from collector.grid import repo
    from collector.grid.geo import parse_collection
    from collector.grid.tables import roster_units

    g = grid_city
    grid, roster = g.hub.app.state.grid, g.hub.app.state.roster
    with g.hub.store.engine.begin() as conn:  # as another collector would write them
        repo.save_outlines(conn, parse_collection(city()), replace=True, who="other", now=0)
        conn.execute(sa.insert(roster_units).values(
            unit_id="night-desk", body='{"members": [{"name": "Ma"}]}', updated_at=0))
    assert not grid.outlines.locate(*IN_G1).placed
    grid.reload()
    roster.refresh()
    assert grid.outlines.locate(*IN_G1).grid == "g1"
    member = g.engine.on_call("night-desk")
    assert member is not None and member.name == "Ma"
