"""What a device can be commanded to do, as the device page's panel asks for it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from collector import auth, schema
from collector.api import create_app
from collector.commands.api import router
from collector.commands.service import CommandService, CommandSettings
from collector.features import open_store
from tests.collector.test_device_commands import Channel

DEVICES = {  # device -> (gateway, kind, profile, unit)
    "lift-a1": ("gw-1", "elevator", "elevator-gbt24476", "lifts-a"),
    "dust-1": ("gw-env", "dust_monitor", "dust-hj212", ""),
    "pk-2001": ("gw-park", "parking", "", ""),
    "odd-1": ("gw-1", "elevator", "no-such-profile", ""),
}


@pytest.fixture
def client(tmp_path: Path) -> Iterator[tuple[TestClient, dict[str, str]]]:
    store = open_store(f"sqlite:///{tmp_path / 'hub.db'}")
    service = CommandService(store.engine, Channel(),  # type: ignore[arg-type]
                             lambda device, _gw: DEVICES[device][3],
                             CommandSettings(confirm_within_s=120))
    app = create_app(store)
    app.state.commands = service
    app.state.device_site_of = lambda device, gw: f"site-of-{device}"
    app.include_router(router)
    with store.engine.begin() as conn:
        for device, (gw, kind, profile, _unit) in DEVICES.items():
            conn.execute(sa.insert(schema.devices).values(
                device_id=device, gateway_id=gw, kind=kind, profile=profile,
                last_seen=1_763_690_000_000))
        conn.execute(sa.insert(schema.gateways).values(gateway_id="gw-1", state="online"))
    tokens = {"ops": auth.create_token(store.engine, "ops-anna", auth.Role.OPS),
              "a": auth.create_token(store.engine, "crew-a", auth.Role.CREW, unit="lifts-a"),
              "b": auth.create_token(store.engine, "crew-b", auth.Role.CREW, unit="lifts-b"),
              "reader": auth.create_token(store.engine, "city", auth.Role.READER),
              "broker": auth.create_token(store.engine, "emqx", auth.Role.BROKER)}
    yield TestClient(app), tokens
    store.close()


def caps(client: tuple[TestClient, dict[str, str]], device: str,
         who: str = "ops") -> tuple[int, Any]:
    c, tokens = client
    r = c.get(f"/api/v1/devices/{device}/commands/capabilities",
              headers={"Authorization": f"Bearer {tokens[who]}"})
    return r.status_code, r.json()


def test_a_lift_offers_its_writable_points_with_their_bounds(client: Any) -> None:
    status, out = caps(client, "lift-a1")
    assert status == 200, out
    assert (out["kind"], out["profile"], out["gateway"], out["gateway_state"], out["site"],
            out["unit"], out["may_command"], out["why_not"]) == (
        "elevator", "elevator-gbt24476", "gw-1", "online", "site-of-lift-a1", "lifts-a",
        True, "")
    assert out["last_seen"] == "2025-11-21T01:53:20.000Z"
    assert [o["op"] for o in out["ops"]] == ["write"]
    points = {p["point"]: p for p in out["points"]}
    assert set(points) == {"home_floor", "service_mode"}
    home, mode = points["home_floor"], points["service_mode"]
    assert (home["minimum"], home["maximum"], home["allowed"], home["dangerous"]) == (
        -5, 128, [], False)
    assert (mode["allowed"], mode["dangerous"], mode["type"]) == ([0, 1], True, "enum")
    assert mode["labels"]["0"] == "out_of_service" and mode["labels"]["1"] == "normal"
    assert out["confirm_within_s"] == 120


def test_a_station_offers_the_hj212_operations(client: Any) -> None:
    status, out = caps(client, "dust-1")
    assert status == 200, out
    ops = {o["op"]: o for o in out["ops"]}
    assert set(ops) == {"set_time", "read_params", "request_history", "set_rtd_interval"}
    [interval] = ops["set_rtd_interval"]["args"]
    assert (interval["name"], interval["minimum"], interval["maximum"]) == \
        ("rtd_interval", 10, 3600)
    assert "write" not in ops and "configure" not in ops and out["points"] == []
    history = {a["name"]: a for a in ops["request_history"]["args"]}
    assert history["cn"]["choices"] == {"2051": "minute", "2061": "hour", "2031": "day"}
    assert history["begin"]["type"] == "time" and history["end"]["required"]
    assert "7 days" in ops["request_history"]["rule"]
    assert [a["name"] for a in ops["set_time"]["args"]] == ["time"]
    assert not ops["set_time"]["args"][0]["required"]


def test_a_parking_node_offers_configure_with_the_node_settings(client: Any) -> None:
    status, out = caps(client, "pk-2001")
    assert status == 200, out
    assert out["kind"] == "parking_node" and out["profile"] == ""
    ops = {o["op"]: o for o in out["ops"]}
    assert set(ops) == {"configure", "recalibrate"}
    settings = {a["name"]: (a["minimum"], a["maximum"]) for a in ops["configure"]["args"]}
    assert settings["heartbeat_s"] == (60, 86400)
    assert settings["leave_mg"] == (10, 900)
    assert ops["recalibrate"]["args"] == []
    assert out["gateway_state"] == "unknown"  # its gateway never sent a state


def test_an_unknown_device_is_404_and_an_unknown_profile_offers_nothing(client: Any) -> None:
    status, out = caps(client, "lift-zz")
    assert status == 404 and out["detail"]["reason"] == "unknown_device", out
    status, out = caps(client, "odd-1")
    assert status == 200 and out["ops"] == [] and "no-such-profile" in out["profile_problem"]


def test_who_may_command_follows_the_issuing_rules(client: Any) -> None:
    assert caps(client, "lift-a1", "a")[1]["may_command"] is True
    status, out = caps(client, "lift-a1", "b")  # another lift company: sees, may not command
    assert status == 200 and out["may_command"] is False and "lifts-a" in out["why_not"]
    status, out = caps(client, "lift-a1", "reader")
    assert status == 200 and out["may_command"] is False and "reader" in out["why_not"]
    assert [p["point"] for p in out["points"]]  # a reader still sees what could be written
    assert caps(client, "lift-a1", "broker")[0] == 403


def test_hostile_device_ids_are_refused_before_any_lookup(client: Any) -> None:
    c, tokens = client
    r = c.get("/api/v1/devices/%3Cimg%3E/commands/capabilities",
              headers={"Authorization": f"Bearer {tokens['ops']}"})
    assert r.status_code == 422
    r = c.get(f"/api/v1/devices/{'x' * 200}/commands/capabilities",
              headers={"Authorization": f"Bearer {tokens['ops']}"})
    assert r.status_code == 422
