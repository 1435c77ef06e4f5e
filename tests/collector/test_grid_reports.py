"""Events reported by patrols and citizens through the REST API and the phone page's endpoints:
stored with their photo, placed, routed and tracked like a device's."""

from __future__ import annotations

import base64

from tests.collector.grid_fixtures import IN_G1, IN_G2, GridCity, city, grid_city

__all__ = ["grid_city"]

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(200)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_patrol_report_with_photo_becomes_an_incident_of_the_right_unit(
        grid_city: GridCity) -> None:
    g = grid_city
    assert g.client.put("/api/v1/grid/outlines", json=city(), headers=g.h()).status_code == 200
    crew = g.client.post("/api/v1/tokens", headers=g.h(), json={
        "name": "li", "role": "crew", "unit": "crew-g1", "member": "Li Wei"}).json()["token"]
    r = g.client.post("/api/v1/reports", headers=g.h(crew), json={
        "kind": "illegal_dumping", "lat": IN_G2[0], "lon": IN_G2[1], "text": "rubble by gate 3",
        "photo": "data:image/png;base64," + b64(PNG)})
    assert r.status_code == 201, r.text
    got = r.json()
    assert (got["grid"], got["district"], got["found_by"]) == ("g2", "d1", "patrol")
    inc = g.client.get(f"/api/v1/incidents/{got['incident']}", headers=g.h()).json()
    assert (inc["unit"], inc["found_by"], inc["kind"], inc["grid"], inc["state"]) == \
        ("crew-g2", "patrol", "illegal_dumping", "g2", "open")
    assert inc["assignee"]["name"] == "Zhao Lei"
    assert [c for c, _ in g.sent] == ["push-crew-g2"]  # paged at once, no group wait
    report = g.client.get(f"/api/v1/reports/{got['id']}", headers=g.h()).json()
    assert (report["reporter"], report["incident"], report["text"]) == \
        ("Li Wei", got["incident"], "rubble by gate 3")
    photo = g.client.get(report["photo"], headers=g.h())
    assert (photo.content, photo.headers["content-type"]) == (PNG, "image/png")
    assert photo.headers["x-content-type-options"] == "nosniff"
    # Li (crew-g1) may not see what went to crew-g2
    assert g.client.get(report["photo"], headers=g.h(crew)).status_code == 403
    # the incident goes through the same lifecycle as a device's
    zhao = g.client.post("/api/v1/tokens", headers=g.h(), json={
        "name": "zhao", "role": "crew", "unit": "crew-g2", "member": "Zhao Lei"}).json()
    acked = g.client.post(f"/api/v1/incidents/{got['incident']}/ack",
                          headers=g.h(zhao["token"]))
    assert acked.json()["state"] == "acknowledged"


def test_citizen_reports_are_bounded_placed_and_rate_limited(grid_city: GridCity) -> None:
    g = grid_city
    g.client.put("/api/v1/grid/outlines", json=city(), headers=g.h())
    offered = g.client.get("/api/v1/public/report-kinds").json()  # no token: the page asks
    assert "garbage" in offered["kinds"] and "lift_hack" not in offered["kinds"]
    assert offered["photo_max_bytes"] == g.hub.app.state.intake.settings.photo_max_bytes
    url = "/api/v1/public/reports"
    ok = {"kind": "garbage", "lat": IN_G1[0], "lon": IN_G1[1], "text": "<b>overflowing</b>",
          "photo": b64(b"\xff\xd8\xff\xe0" + bytes(100)), "contact": "+86 138 0000 0000"}
    r = g.client.post(url, json=ok)
    assert r.status_code == 201, r.text
    assert (r.json()["grid"], r.json()["district"]) == ("g1", "d1")
    (inc,) = g.incidents()
    assert (inc["unit"], inc["found_by"], inc["severity"]) == ("crew-g1", "citizen", "minor")
    bad = [({**ok, "lat": 10.0}, "outside the city's grids"),
           ({**ok, "kind": "lift_hack"}, "kind must be one of"),
           ({**ok, "photo": b64(b"<svg onload=alert(1)>")}, "JPEG, PNG or WebP"),
           ({**ok, "photo": "not base64!"}, "not valid base64")]
    for body, reason in bad:
        r = g.client.post(url, json=body)
        assert r.status_code == 422 and reason in r.text, (reason, r.text)
    assert len(g.incidents()) == 1
    # 5 a minute from one address (the 6th of this minute)
    r = g.client.post(url, json=ok)
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    big = {**ok, "photo": b64(b"\xff\xd8\xff" + bytes(2_100_000))}
    g.hub.app.state.citizen_limiter = None
    assert g.client.post(url, json=big).status_code == 413
    page = g.client.get("/report")
    assert page.status_code == 200 and "/static/js/report.js" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
