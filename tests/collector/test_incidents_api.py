"""REST and SSE of incidents, alarms and silences (FastAPI TestClient and a real uvicorn)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from citygate.rig import served
from collector.alarms import pages, router
from collector.alarms.tables import incidents
from collector.api import create_app
from collector.features import open_store
from collector.store import Store
from tests.collector.test_alarms_engine import CONFIG, MIN, T0, Rig, S

LI = {"Authorization": "Bearer tok-li"}
ZHAO = {"Authorization": "Bearer tok-zhao"}
OPS = {"Authorization": "Bearer tok-ops"}


def make_app(rig: Rig) -> FastAPI:
    app = create_app(rig.store)
    app.state.alarms = rig.desk
    app.include_router(router)
    app.include_router(pages)
    return app


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Store]:
    """A SQLite store with the alarm migrations applied."""
    s = open_store(f"sqlite:///{tmp_path / 'hub.db'}")
    yield s
    s.close()


@pytest.fixture
def rig(store: Store) -> Rig:
    return Rig(store, CONFIG)


@pytest.fixture
def client(rig: Rig) -> Iterator[TestClient]:
    with TestClient(make_app(rig)) as c:
        yield c


def trapped(rig: Rig, device: str = "lift-1") -> int:
    rig.events("gw-a", (device, "trapped_passenger", "raise"), severity="critical")
    return max(int(i["id"]) for i in rig.rows(incidents))


def test_tokens_are_required(client: TestClient) -> None:
    assert client.get("/api/v1/incidents").status_code == 401
    assert client.get("/api/v1/incidents", headers={"Authorization": "Bearer nope"}) \
        .status_code == 401
    assert client.get("/api/v1/incidents?token=tok-li").status_code == 200


def test_crew_sees_and_acts_on_its_own_unit_only(client: TestClient, rig: Rig) -> None:
    iid = trapped(rig)
    assert [i["id"] for i in client.get("/api/v1/incidents", headers=LI).json()] == [iid]
    assert client.get("/api/v1/incidents", headers=ZHAO).json() == []
    assert client.get(f"/api/v1/incidents/{iid}", headers=ZHAO).status_code == 403
    assert client.post(f"/api/v1/incidents/{iid}/ack", headers=ZHAO).status_code == 403
    assert client.get("/api/v1/incidents?unit=crew-north", headers=ZHAO).status_code == 403
    assert len(client.get("/api/v1/incidents", headers=OPS).json()) == 1


def test_lifecycle_with_history_and_409(client: TestClient, rig: Rig) -> None:
    iid = trapped(rig)
    url = f"/api/v1/incidents/{iid}"
    bad = client.post(f"{url}/resolve", headers=LI, json={"note": "x"})
    assert bad.status_code == 409
    assert bad.json()["detail"]["allowed"] == ["ack"]
    rig.clock.now += 90 * S
    got = client.post(f"{url}/ack", headers=LI, json={"note": "on my way"}).json()
    assert (got["state"], got["acknowledged_by"]) == ("acknowledged", "Li Wei")
    assert got["allowed"] == ["arrive", "resolve"]
    again = client.post(f"{url}/ack", headers=LI)
    assert again.status_code == 409
    assert again.json()["detail"]["state"] == "acknowledged"
    rig.clock.now += 10 * MIN
    assert client.post(f"{url}/arrive", headers=LI, json={"note": "at car 2"}) \
        .json()["state"] == "on_site"
    rig.clock.now += 5 * MIN
    rig.events("gw-a", ("lift-1", "trapped_passenger", "clear"))
    assert client.post(f"{url}/resolve", headers=LI, json={"note": "released"}) \
        .json()["state"] == "resolved"
    assert client.post(f"{url}/close", headers=OPS).json()["closed_by"] == "ops-room"
    detail = client.get(url, headers=LI).json()
    assert [(h["event"], h["to"], h["who"], h["note"]) for h in detail["history"]] == [
        ("opened", "open", "system", "event alarm"),
        ("escalation", "open", "system", "escalation fired: page → dingtalk-north"),
        ("transition", "acknowledged", "Li Wei", "on my way"),
        ("transition", "on_site", "Li Wei", "at car 2"),
        ("device_cleared", "on_site", "system", "cleared by device, awaiting confirmation"),
        ("transition", "resolved", "Li Wei", "released"),
        ("transition", "closed", "ops-room", "")]
    assert detail["link"] == f"https://cg.test/crew#incident-{iid}"
    assert client.post(f"{url}/explode", headers=LI).status_code == 422
    assert client.post("/api/v1/incidents/999/ack", headers=OPS).status_code == 404


def test_state_filter_and_stats(client: TestClient, rig: Rig) -> None:
    a, b = trapped(rig, "lift-1"), trapped(rig, "lift-2")
    rig.clock.now += 60 * S
    client.post(f"/api/v1/incidents/{a}/ack", headers=LI)
    rig.clock.now += 120 * S
    client.post(f"/api/v1/incidents/{b}/ack", headers=LI)
    rig.events("gw-a", ("lift-2", "trapped_passenger", "clear"))
    client.post(f"/api/v1/incidents/{b}/resolve", headers=LI)
    active = client.get("/api/v1/incidents?state=active", headers=OPS).json()
    assert sorted(i["id"] for i in active) == [a]
    assert client.get("/api/v1/incidents?state=nonsense", headers=OPS).status_code == 422
    stats = client.get("/api/v1/incidents/stats", headers=OPS).json()
    north = stats["units"]["crew-north"]
    assert (north["found"], north["acknowledged"], north["resolved"], north["closed"]) == \
        (2, 2, 1, 0)
    assert north["time_to_acknowledge"] == {"mean_s": 120.0, "p90_s": 180.0}
    assert stats["kinds"]["trapped_passenger"]["time_to_resolve"]["p90_s"] == 180.0
    assert client.get("/api/v1/incidents/stats", headers=ZHAO).json()["total"]["found"] == 0


def test_alarms_and_silences(client: TestClient, rig: Rig) -> None:
    rig.events("gw-a", ("lift-3", "door_close_fault", "raise"))
    [alarm] = client.get("/api/v1/alarms?active=true", headers=OPS).json()
    assert (alarm["device"], alarm["held"], alarm["occurrences"]) == ("lift-3", "wait", 1)
    assert client.post("/api/v1/silences", headers=LI, json={"duration": "1h"}) \
        .status_code == 422
    made = client.post("/api/v1/silences", headers=LI, json={
        "device": "lift-3", "duration": "2h", "reason": "rope replacement"})
    assert made.status_code == 201
    sil = made.json()
    assert (sil["created_by"], sil["in_force"]) == ("Li Wei", True)
    assert [s["id"] for s in client.get("/api/v1/silences", headers=OPS).json()] == [sil["id"]]
    rig.at(MIN)
    assert rig.notify.sent == []
    assert client.delete(f"/api/v1/silences/{sil['id']}", headers=OPS).status_code == 204
    assert client.delete(f"/api/v1/silences/{sil['id']}", headers=OPS).status_code == 404
    assert client.get("/api/v1/silences", headers=OPS).json() == []
    rig.at(2 * MIN)
    assert [c for c, _ in rig.notify.sent] == ["dingtalk-north"]


def test_pages_are_served_without_external_assets(client: TestClient) -> None:
    for path in ("/crew", "/ops"):
        html = client.get(path).text
        assert "http://" not in html
        assert "https://" not in html
    assert "EventSource" in client.get("/static/js/common.js").text  # the pages' shared module


@pytest.fixture
def server(rig: Rig) -> Iterator[str]:
    with served(make_app(rig)) as base:
        yield base


def _read_events(resp: httpx.Response, out: list[str], opened: threading.Event) -> None:
    try:
        for line in resp.iter_lines():
            if line.startswith(": open"):
                opened.set()
            if line.startswith("data:"):
                out.append(line)
                return
    except (httpx.HTTPError, httpx.StreamError, OSError):
        return  # the test closed the stream under us: that is how it ends


def test_stream_pushes_changes_filtered_by_unit(server: str, rig: Rig) -> None:
    got: dict[str, list[str]] = {"li": [], "zhao": []}
    with httpx.Client(base_url=server, timeout=10) as http:
        for who, token in (("li", "tok-li"), ("zhao", "tok-zhao")):
            opened = threading.Event()
            resp = http.send(http.build_request("GET", f"/api/v1/incidents/stream?token={token}"),
                             stream=True)
            assert resp.headers["content-type"].startswith("text/event-stream")
            t = threading.Thread(target=_read_events, args=(resp, got[who], opened), daemon=True)
            t.start()
            assert opened.wait(5)
        trapped(rig)
        deadline = time.monotonic() + 5
        while not got["li"]:
            assert time.monotonic() < deadline, "no incident pushed to the crew stream"
            time.sleep(0.02)
        assert '"state":"open"' in got["li"][0]
        # Then an incident of Zhao's unit: if Li's had leaked, it would come first.
        for minute in (0, 10):
            rig.reading("gw-plant", "boiler-1", rig.clock.now + minute * MIN, nox_converted=35)
        rig.at(rig.clock.now - T0 + MIN)
        while not got["zhao"]:
            assert time.monotonic() < deadline + 5, "no incident pushed to Zhao's stream"
            time.sleep(0.02)
        assert '"unit":"env-east"' in got["zhao"][0]
        # Zhao's stream stays silent; the server's shutdown ends it.


def test_an_administrator_token_acts_as_ops_and_other_roles_do_not(client: TestClient,
                                                                   rig: Rig) -> None:
    from collector.auth import Role, create_token

    iid = trapped(rig)
    admin = {"Authorization": f"Bearer {create_token(rig.store.engine, 'root', Role.ADMIN)}"}
    reader = {"Authorization":
              f"Bearer {create_token(rig.store.engine, 'city-brain', Role.READER)}"}
    assert [i["id"] for i in client.get("/api/v1/incidents", headers=admin).json()] == [iid]
    assert client.post(f"/api/v1/incidents/{iid}/ack", headers=admin,
                       json={"note": "from the control room"}).status_code == 200
    assert client.get("/api/v1/incidents", headers=reader).status_code == 403


def test_filters_sorting_running_age_and_arrival_sla(client: TestClient, rig: Rig) -> None:
    a = trapped(rig, "lift-1")
    rig.clock.now += 60 * S
    rig.events("gw-plant", ("boiler-9", "burner_fault", "raise"))
    rig.at(2 * MIN)
    b = max(int(i["id"]) for i in rig.rows(incidents))
    url = "/api/v1/incidents"
    assert [i["id"] for i in client.get(f"{url}?kind=trapped_passenger", headers=OPS).json()] \
        == [a]
    assert [i["id"] for i in client.get(f"{url}?district=east", headers=OPS).json()] == [b]
    assert [i["id"] for i in client.get(f"{url}?site=plant-7,jinshui-12&sort=opened_at",
                                        headers=OPS).json()] == [a, b]
    assert [i["id"] for i in client.get(f"{url}?sort=-age", headers=OPS).json()] == [a, b]
    assert [i["id"] for i in client.get(f"{url}?sort=severity", headers=OPS).json()] == [a, b]
    assert client.get(f"{url}?sort=password", headers=OPS).status_code == 422
    assert client.get(f"{url}?kind=" + ",".join(["k"] * 51), headers=OPS).status_code == 422
    first = client.get(f"{url}?kind=trapped_passenger", headers=OPS).json()[0]
    assert (first["district"], first["devices"], first["age_s"]) == ("north", ["lift-1"], 120.0)
    assert first["sla"] == {"state": "ok", "colour": "green", "target_s": 600.0,
                            "due_at": "2026-01-01T00:10:00.000Z"}
    rig.clock.now = T0 + 8 * MIN
    assert client.get(f"{url}/{a}", headers=OPS).json()["sla"]["state"] == "due_soon"
    rig.clock.now = T0 + 11 * MIN
    assert client.get(f"{url}/{a}", headers=OPS).json()["sla"]["colour"] == "red"
    other = client.get(f"{url}/{b}", headers=OPS).json()
    assert (other["sla"]["state"], other["devices"]) == ("none", ["boiler-9"])


def test_notes_and_override_history(client: TestClient, rig: Rig) -> None:
    iid = trapped(rig)
    url = f"/api/v1/incidents/{iid}"
    got = client.post(f"{url}/note", headers=LI, json={"note": "called the property desk"})
    assert got.status_code == 200
    assert got.json()["history"][-1]["event"] == "note"
    assert client.post(f"{url}/note", headers=LI, json={"note": ""}).status_code == 422
    assert client.post(f"{url}/note", headers=ZHAO, json={"note": "x"}).status_code == 403
    assert client.post("/api/v1/incidents/999/note", headers=OPS,
                       json={"note": "x"}).status_code == 404
    client.post(f"{url}/ack", headers=LI)
    forced = client.post(f"{url}/resolve", headers=OPS,
                         json={"override": True, "reason": "sensor stuck, car empty"})
    assert forced.json()["overrides"] == 1
    steps = client.get(f"{url}/history", headers=LI).json()
    assert [s["event"] for s in steps if s["event"] in ("note", "transition")] == \
        ["note", "transition", "transition"]
    assert steps[-1]["override"] == {"reason": "sensor stuck, car empty",
                                     "conditions": ["trapped_passenger still raised by the "
                                                    "device"]}
    assert steps[-1]["from"] == "acknowledged"
    assert client.get("/api/v1/incidents/999/history", headers=OPS).status_code == 404
