"""Device commands at the collector, through the REST API: scope, checks against the profile,
two-step confirmation, rate limit, idempotency, results from replies, expiry and the audit."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from collector import auth, schema
from collector.api import create_app
from collector.commands.api import router
from collector.commands.service import CommandService, CommandSettings
from collector.features import open_store
from collector.store import Store
from devices.commands import parse_command
from devices.contract import ReplyMessage

T0 = 1_763_690_000_000
UNITS = {"lift-a1": "lifts-a", "lift-b1": "lifts-b"}


class Channel:
    """The gateway side of the broker: what was sent, and whether the link is up."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, bytes]] = []
        self.up = True
        self.connected = threading.Event()
        self.connected.set()

    def send(self, gateway: str, name: str, payload: bytes) -> bool:
        if self.up:
            self.sent.append((gateway, name, payload))
        return self.up


class Rig:
    def __init__(self, store: Store) -> None:
        self.now = T0
        self.channel = Channel()
        self.service = CommandService(store.engine, self.channel,  # type: ignore[arg-type]
                                      lambda device, _gw: UNITS.get(device, ""),
                                      CommandSettings(rate_per_min=5), clock=lambda: self.now)
        app = create_app(store)
        app.state.commands = self.service
        app.include_router(router)
        self.client = TestClient(app)
        with store.engine.begin() as conn:
            for device in UNITS:
                conn.execute(sa.insert(schema.devices).values(
                    device_id=device, gateway_id="gw-1", kind="elevator",
                    profile="elevator-gbt24476"))
        self.tokens = {
            "ops": auth.create_token(store.engine, "ops-anna", auth.Role.OPS),
            "ops2": auth.create_token(store.engine, "ops-bo", auth.Role.OPS),
            "a": auth.create_token(store.engine, "crew-a", auth.Role.CREW, unit="lifts-a"),
            "b": auth.create_token(store.engine, "crew-b", auth.Role.CREW, unit="lifts-b"),
            "reader": auth.create_token(store.engine, "city", auth.Role.READER)}

    def post(self, who: str, device: str, **body: object) -> tuple[int, dict[str, object]]:
        r = self.client.post(f"/api/v1/devices/{device}/commands", json=body,
                             headers={"Authorization": f"Bearer {self.tokens[who]}"})
        return r.status_code, r.json()

    def get(self, who: str, url: str) -> tuple[int, object]:
        r = self.client.get(url, headers={"Authorization": f"Bearer {self.tokens[who]}"})
        return r.status_code, r.json()

    def reply(self, command_id: str, detail: dict[str, object], gateway: str = "gw-1") -> None:
        self.service.on_reply(ReplyMessage(v=1, gateway=gateway, command="device",
                                           id=command_id, ok=True, detail=detail))


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    store = open_store(f"sqlite:///{tmp_path / 'hub.db'}")
    yield Rig(store)
    store.close()


def test_a_write_is_sent_followed_to_its_result_and_audited(rig: Rig) -> None:
    status, out = rig.post("ops", "lift-a1", point="home_floor", value=5, ttl_s=60)
    assert status == 202 and out["status"] == "sent", out
    ((gateway, name, payload),) = rig.channel.sent
    cmd = parse_command(payload)
    assert (gateway, name, cmd.device, cmd.args, cmd.issuer) == (
        "gw-1", "device", "lift-a1", {"point": "home_floor", "value": 5}, "ops-anna")
    assert cmd.expires == T0 + 60_000
    rig.reply(cmd.id, {"cv": 1, "status": "accepted", "at": T0 + 10})
    rig.reply(cmd.id, {"cv": 1, "status": "done", "at": T0 + 900, "value": 5})
    rig.reply(cmd.id, {"cv": 1, "status": "accepted", "at": T0 + 10})  # a late duplicate
    rig.reply(cmd.id, {"cv": 1, "status": "failed", "at": T0, "reason": "x"}, gateway="gw-2")
    _, shown = rig.get("ops", f"/api/v1/commands/{cmd.id}")
    assert isinstance(shown, dict)
    assert (shown["status"], shown["value_read_back"]) == ("done", 5)
    assert [(a["who"], a["what"]) for a in shown["audit"]] == [
        ("ops-anna", "issued"), ("collector", "sent"), ("gw-1", "accepted"), ("gw-1", "done")]
    _, listed = rig.get("ops", "/api/v1/devices/lift-a1/commands")
    assert isinstance(listed, list) and [c["id"] for c in listed] == [cmd.id]


@pytest.mark.parametrize(("point", "value", "reason"), [
    ("safety_circuit", False, "not_writable"), ("home_floor", 129, "out_of_range"),
    ("service_mode", 4, "not_allowed"), ("nope", 1, "unknown_point")])
def test_writes_the_profile_forbids_are_refused_with_the_reason(rig: Rig, point: str,
                                                                value: object,
                                                                reason: str) -> None:
    status, out = rig.post("ops", "lift-a1", point=point, value=value)
    assert status == 422 and out["detail"]["reason"] == reason, out  # type: ignore[index]
    assert rig.channel.sent == []
    _, stats = rig.get("ops", "/api/v1/commands/stats")
    assert stats == {"counters": {"issued": 0, "refused": 1, "refused_clock_wrong": 0,
                                  "sent": 0, "send_failures": 0, "replies": 0,
                                  "bad_replies": 0, "expired_here": 0},
                     "broker_connected": True}


def test_a_lift_company_commands_only_its_own_lifts(rig: Rig) -> None:
    status, out = rig.post("b", "lift-a1", point="home_floor", value=2)
    assert status == 403 and "lifts-a" in str(out), out
    assert rig.post("a", "lift-a1", point="home_floor", value=2)[0] == 202
    assert rig.post("reader", "lift-a1", point="home_floor", value=2)[0] == 403
    sent = parse_command(rig.channel.sent[0][2])
    assert rig.get("b", f"/api/v1/commands/{sent.id}")[0] == 404  # not even its existence
    assert rig.get("b", "/api/v1/devices/lift-a1/commands")[0] == 403
    assert len(rig.channel.sent) == 1


def test_a_dangerous_write_waits_for_a_confirmation(rig: Rig) -> None:
    status, out = rig.post("ops", "lift-a1", point="service_mode", value=0)
    assert status == 202 and out["status"] == "awaiting_confirmation" and out["dangerous"]
    assert rig.channel.sent == []
    ident = out["id"]
    r = rig.client.post(f"/api/v1/commands/{ident}/confirm",
                        headers={"Authorization": f"Bearer {rig.tokens['b']}"})
    assert r.status_code == 403  # another company cannot confirm it either
    r = rig.client.post(f"/api/v1/commands/{ident}/confirm",
                        headers={"Authorization": f"Bearer {rig.tokens['ops2']}"})
    assert r.status_code == 200 and r.json()["status"] == "sent"
    assert r.json()["confirmed_by"] == "ops-bo" and len(rig.channel.sent) == 1
    r = rig.client.post(f"/api/v1/commands/{ident}/confirm",
                        headers={"Authorization": f"Bearer {rig.tokens['ops2']}"})
    assert r.status_code == 409


def test_one_key_is_one_command_and_commands_are_rate_limited(rig: Rig) -> None:
    first = rig.post("ops", "lift-a1", point="home_floor", value=3, key="k1")[1]
    again = rig.post("ops", "lift-a1", point="home_floor", value=3, key="k1")[1]
    assert first["id"] == again["id"] and len(rig.channel.sent) == 1
    codes = [rig.post("ops", "lift-a1", point="home_floor", value=3)[0] for _ in range(6)]
    assert codes == [202, 202, 202, 202, 429, 429]  # 5 a minute; a repeated key is free
    assert rig.post("a", "lift-a1", point="home_floor", value=3)[0] == 202  # per token


def test_an_undelivered_command_expires_here_and_is_never_sent_late(rig: Rig) -> None:
    rig.channel.up = False
    out = rig.post("ops", "lift-a1", point="home_floor", value=6, ttl_s=5)[1]
    assert out["status"] == "queued"
    rig.now += 5_000
    rig.channel.up = True
    rig.service.sweep()
    rig.service.resend_to("gw-1")
    assert rig.channel.sent == []
    _, shown = rig.get("ops", f"/api/v1/commands/{out['id']}")
    assert isinstance(shown, dict) and shown["status"] == "expired"
    assert shown["audit"][-1]["who"] == "collector"


def test_a_command_not_taken_is_sent_again_with_the_same_key(rig: Rig) -> None:
    out = rig.post("ops", "lift-a1", point="home_floor", value=6, ttl_s=600)[1]
    rig.now += 16_000
    rig.service.sweep()
    assert len(rig.channel.sent) == 2
    keys = {parse_command(p).key for _, _, p in rig.channel.sent}
    assert len(keys) == 1
    rig.reply(str(out["id"]), {"cv": 1, "status": "accepted", "at": T0})
    rig.now += 16_000
    rig.service.sweep()
    assert len(rig.channel.sent) == 2  # accepted: the gateway holds it
    assert orjson.loads(rig.channel.sent[0][2])["expires"] == T0 + 600_000
