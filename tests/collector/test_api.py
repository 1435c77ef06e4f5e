"""The public REST API over a real store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from collector.api import create_app
from collector.auth import Role, create_token
from collector.features import open_store
from collector.store import Accepted
from devices.contract import DataEnvelope

T0 = 1_763_000_000_000  # 2025-11-13T02:13:20Z


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    store = open_store(f"sqlite:///{tmp_path / 'hub.sqlite'}")
    store.record_state("gw-a", "online", T0, "", "0.1.0", "b", {
        "lift-1": {"kind": "elevator", "profile": "elevator-gbt24476"}})
    readings = [{"device": "lift-1", "ts": T0 + i * 1000,
                 "values": {"floor": i, "door_closed": i % 2 == 0, "speed": 0.5 * i}}
                for i in range(5)]
    store.ingest([Accepted("gw-a", DataEnvelope.model_validate(
        {"v": 1, "gateway": "gw-a", "seq": 1, "sent": T0, "readings": readings}), T0)])
    app = create_app(store, ingest_stats=lambda: {"broker_connected": True, "received": 1})
    token = create_token(store.engine, "city-brain", Role.READER)
    with TestClient(app, headers={"Authorization": f"Bearer {token}"}) as c:
        yield c
    store.close()


def test_health_reports_database_ingest_and_counts(client: TestClient) -> None:
    body = client.get("/api/v1/health").json()
    assert body["status"] == "ok" and body["database"] == "ok"
    assert body["counts"]["readings"] == 15 and body["counts_estimated"] == []
    assert body["ingest"]["received"] == 1


def test_gateways_and_devices(client: TestClient) -> None:
    gws = client.get("/api/v1/gateways").json()
    assert [(g["id"], g["state"], g["device_count"], g["last_seq"]) for g in gws] == \
        [("gw-a", "online", 1, 1)]
    devs = client.get("/api/v1/devices").json()
    assert [(d["id"], d["kind"], d["gateway"]) for d in devs] == [("lift-1", "elevator", "gw-a")]
    assert devs[0]["last_seen"] == "2025-11-13T02:13:20.000Z"  # when the hub heard it
    assert client.get("/api/v1/devices?kind=parking").json() == []


def test_latest_is_typed_with_units_and_observation_time(client: TestClient) -> None:
    q = client.get("/api/v1/devices/lift-1/latest").json()["quantities"]
    assert q["floor"] == {"value": 4, "unit": "", "observed_at": "2025-11-13T02:13:24.000Z",
                          "quality": "good"}
    assert q["door_closed"]["value"] is True
    assert q["speed"]["value"] == 2.0 and q["speed"]["unit"] == "m/s"


def test_readings_filter_and_truncation(client: TestClient) -> None:
    r = client.get("/api/v1/devices/lift-1/readings",
                   params={"quantity": "floor", "since": "2025-11-13T02:13:21Z",
                           "until": str(T0 + 3000)}).json()
    assert [x["value"] for x in r["readings"]] == [1, 2]
    assert r["truncated"] is False
    r = client.get("/api/v1/devices/lift-1/readings", params={"limit": 4}).json()
    assert len(r["readings"]) == 4 and r["truncated"] is True


@pytest.mark.parametrize(("url", "status"), [
    ("/api/v1/devices/nobody/latest", 404),
    ("/api/v1/devices/lift-1/readings?since=yesterday", 422),
    ("/api/v1/devices/lift-1/readings?quantity=wattage", 422),
    ("/api/v1/devices/lift-1/readings?limit=0", 422),
    ("/api/v1/devices/%3Cscript%3E/latest", 422),
    ("/api/v1/devices/lift-1%0A/latest", 422),  # "$" alone would let a trailing newline in
])
def test_bad_requests_get_clear_errors(client: TestClient, url: str, status: int) -> None:
    resp = client.get(url)
    assert resp.status_code == status
    assert "detail" in resp.json()


def test_status_page_and_openapi(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "CityGate" in page.text
    paths = client.get("/openapi.json").json()["paths"]
    for p in ("/api/v1/health", "/api/v1/gateways", "/api/v1/devices",
              "/api/v1/devices/{device_id}/latest", "/api/v1/devices/{device_id}/readings"):
        assert p in paths
    assert client.get("/docs").status_code == 200


def test_data_needs_a_token_and_health_does_not(client: TestClient) -> None:
    anonymous = {"Authorization": ""}
    resp = client.get("/api/v1/devices", headers=anonymous)
    assert resp.status_code == 401
    assert "token" in resp.json()["detail"]
    assert client.get("/api/v1/devices", headers={"Authorization": "Bearer cg_wrong"}) \
        .status_code == 401
    assert client.get("/api/v1/health", headers=anonymous).status_code == 200


@pytest.mark.parametrize(("role", "status"), [
    (Role.OPS, 200),  # the control room opens a device from an incident
    (Role.CREW, 200), (Role.TECHNICIAN, 200), (Role.ADMIN, 200), (Role.BROKER, 403)])
def test_which_roles_read_device_data(client: TestClient, role: Role, status: int) -> None:
    store = client.app.state.store  # type: ignore[attr-defined]
    token = create_token(store.engine, f"t-{role.value}", role,
                         **({"unit": "u1", "member": "m1"} if role is Role.CREW else {}))
    auth = {"Authorization": f"Bearer {token}"}
    for path in ("/api/v1/devices", "/api/v1/devices/lift-1/latest",
                 "/api/v1/devices/lift-1/readings?quantity=floor"):
        assert client.get(path, headers=auth).status_code == status, (role, path)
