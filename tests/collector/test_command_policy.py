"""Who may command, and when, through the REST API: technicians only while a gateway is being
commissioned, four eyes on dangerous commands, and no command to a gateway whose clock is
wrong."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from citygate import cli, command_cli
from collector import auth, schema
from collector.commands.service import CommandSettings
from collector.features import open_store
from collector.registry import repo as registry
from tests.collector.test_device_commands import T0, Rig

HOUR = 3_600_000


@pytest.fixture
def rig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Rig]:
    store = open_store(f"sqlite:///{tmp_path / 'hub.db'}")
    out = Rig(store)
    monkeypatch.setattr(registry, "now_ms", lambda: out.now)  # the registry on the rig's clock
    engine = store.engine
    out.tokens |= {
        "tech": auth.create_token(engine, "tech-li", auth.Role.TECHNICIAN),
        "tech-a": auth.create_token(engine, "tech-a", auth.Role.TECHNICIAN, unit="lifts-a"),
        "tech-b": auth.create_token(engine, "tech-b", auth.Role.TECHNICIAN, unit="lifts-b")}
    yield out
    store.close()


def register(rig: Rig, gateway: str = "gw-1") -> None:
    """Claim gw-1 at a site of unit lifts-a, at the rig's time."""
    registry.upsert_site(rig.service.engine, {"site_id": "tower-a", "name": "Tower A",
                                              "responsible_unit": "lifts-a"})
    registry.create_gateway(rig.service.engine, "tower-a", gateway, created_by="tech-li")


def commission(rig: Rig, run_id: str, passed: bool) -> None:
    registry.record_commissioning(rig.service.engine, "gw-1", {
        "run_id": run_id, "ts": rig.now, "technician": "li",
        "results": [{"name": "bus", "status": "PASS" if passed else "FAIL"}]})


def refusal(out: dict[str, object]) -> tuple[str, str]:
    detail = out["detail"]
    assert isinstance(detail, dict), out
    return detail["reason"], detail["message"]


def test_a_technician_commands_a_gateway_only_while_it_is_being_commissioned(rig: Rig) -> None:
    status, out = rig.post("tech", "lift-a1", point="home_floor", value=2)
    assert status == 403 and "not in the registry" in refusal(out)[1], out
    register(rig)
    status, first = rig.post("tech", "lift-a1", point="home_floor", value=2)
    assert status == 202 and first["issuer"] == "tech-li", first
    commission(rig, "run-1", passed=False)  # a failed run: still being commissioned
    rig.now += HOUR
    assert rig.post("tech", "lift-a1", point="home_floor", value=3)[0] == 202
    assert rig.get("tech", "/api/v1/devices/lift-a1/commands")[0] == 200
    commission(rig, "run-2", passed=True)
    rig.now += 1000
    status, out = rig.post("tech", "lift-a1", point="home_floor", value=4)
    reason, message = refusal(out)
    assert (status, reason) == (403, "forbidden")
    assert message.startswith("gw-1 was commissioned at 2025-11-21T"), message
    assert rig.get("tech", "/api/v1/devices/lift-a1/commands")[0] == 403
    assert rig.get("tech", f"/api/v1/commands/{first['id']}")[0] == 404  # its own, too
    assert rig.post("ops", "lift-a1", point="home_floor", value=4)[0] == 202  # ops still may
    assert len(rig.channel.sent) == 3


def test_the_commissioning_window_closes_hours_after_the_claim_or_the_last_run(
        rig: Rig) -> None:
    register(rig)
    rig.now = T0 + 24 * HOUR - 1
    assert rig.post("tech", "lift-a1", point="home_floor", value=2)[0] == 202
    rig.now = T0 + 24 * HOUR
    status, out = rig.post("tech", "lift-a1", point="home_floor", value=2)
    assert status == 403
    assert "window closed at 2025-11-22T" in refusal(out)[1], out
    assert "24 h after its claim" in refusal(out)[1], out
    commission(rig, "run-1", passed=False)  # the technician starts commissioning again
    rig.now += 23 * HOUR
    assert rig.post("tech", "lift-a1", point="home_floor", value=2)[0] == 202
    rig.now += 2 * HOUR
    status, out = rig.post("tech", "lift-a1", point="home_floor", value=2)
    assert status == 403 and "after its latest commissioning run" in refusal(out)[1], out
    rig.service.settings = CommandSettings(rate_per_min=5, technician_window_h=48)
    assert rig.post("tech", "lift-a1", point="home_floor", value=2)[0] == 202


def test_a_technician_scoped_to_a_unit_commands_only_its_sites(rig: Rig) -> None:
    register(rig)
    status, out = rig.post("tech-b", "lift-a1", point="home_floor", value=2)
    assert status == 403 and "unit 'lifts-a', not of unit 'lifts-b'" in refusal(out)[1]
    assert rig.post("tech-a", "lift-a1", point="home_floor", value=2)[0] == 202
    registry.revoke_gateway(rig.service.engine, "gw-1")
    status, out = rig.post("tech-a", "lift-a1", point="home_floor", value=2)
    assert status == 403 and "revoked" in refusal(out)[1]


def confirm(rig: Rig, who: str, ident: object) -> tuple[int, dict[str, object]]:
    r = rig.client.post(f"/api/v1/commands/{ident}/confirm",
                        headers={"Authorization": f"Bearer {rig.tokens[who]}"})
    return r.status_code, r.json()


def test_a_dangerous_command_is_confirmed_by_another_person(rig: Rig) -> None:
    out = rig.post("ops", "lift-a1", point="service_mode", value=0)[1]
    assert out["status"] == "awaiting_confirmation"
    status, refused = confirm(rig, "ops", out["id"])
    reason, message = refusal(refused)
    assert (status, reason) == (403, "same_person") and "ops-anna" in message
    assert rig.channel.sent == []
    status, done = confirm(rig, "ops2", out["id"])
    assert status == 200 and done["status"] == "sent" and done["confirmed_by"] == "ops-bo"
    _, shown = rig.get("ops", f"/api/v1/commands/{out['id']}")
    assert isinstance(shown, dict) and shown["issuer"] == "ops-anna"
    assert [(a["who"], a["what"]) for a in shown["audit"]][:2] == [
        ("ops-anna", "issued"), ("ops-bo", "confirmed")]
    rig.service.settings = CommandSettings(rate_per_min=5, four_eyes=False)
    alone = rig.post("ops", "lift-a1", point="service_mode", value=1)[1]
    assert confirm(rig, "ops", alone["id"])[0] == 200


def test_the_command_settings_read_four_eyes_and_the_technician_window() -> None:
    default = CommandSettings.from_section({})
    assert default.four_eyes and default.technician_window_h == 24
    read = CommandSettings.from_section({"four_eyes": False, "technician_window_h": 8})
    assert (read.four_eyes, read.technician_window_h) == (False, 8)
    for bad in ({"four_eyes": "yes"}, {"technician_window_h": 0},
                {"technician_window_h": 100_000}, {"technician_window_h": "8"},
                {"technician_window_h": True}, {"four_eye": True}):
        with pytest.raises(ValueError, match=r"\[commands\]"):
            CommandSettings.from_section(bad)


def test_no_command_is_issued_to_a_gateway_whose_clock_is_wrong(rig: Rig) -> None:
    waiting = rig.post("ops", "lift-a1", point="service_mode", value=0)[1]
    with rig.service.engine.begin() as conn:
        conn.execute(sa.insert(schema.gateways).values(
            gateway_id="gw-1", clock_offset_ms=3 * HOUR, clock_measured_at=T0,
            clock_source="ahead", clock_wrong=True))
    status, out = rig.post("ops", "lift-a1", point="home_floor", value=2)
    reason, message = refusal(out)
    assert (status, reason) == (409, "gateway_clock_wrong")
    assert "gw-1's clock is wrong (off by +10800 s, measured at 2025-11-21T" in message
    status, out = rig.post("ops", "lift-a1", op="write",
                           args={"point": "home_floor", "value": 2})
    assert status == 409
    status, out = confirm(rig, "ops2", waiting["id"])  # nor confirmed while it is wrong
    assert (status, refusal(out)[0]) == (409, "gateway_clock_wrong")
    assert rig.channel.sent == []
    _, stats = rig.get("ops", "/api/v1/commands/stats")
    assert isinstance(stats, dict)
    assert stats["counters"]["refused_clock_wrong"] == 3
    with rig.service.engine.begin() as conn:
        conn.execute(sa.update(schema.gateways).values(clock_wrong=False))
    assert rig.post("ops", "lift-a1", point="home_floor", value=2)[0] == 202
    assert confirm(rig, "ops2", waiting["id"])[0] == 200


def test_the_cli_says_who_may_confirm_and_why_a_technician_is_refused(
        rig: Rig, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def client(args: argparse.Namespace, _roles: str) -> contextlib.AbstractContextManager[Any]:
        token = rig.tokens[args.token]
        return contextlib.nullcontext(TestClient(rig.client.app, headers={
            "Authorization": f"Bearer {token}"}))

    monkeypatch.setattr(command_cli, "rest_client", client)
    assert cli.main(["command", "send", "lift-a1", "service_mode", "0", "--token", "ops"]) == 0
    out = capsys.readouterr()
    assert "awaiting_confirmation" in out.out and "another person confirms" in out.err
    ident = out.out.split()[0]
    assert cli.main(["command", "confirm", ident, "--token", "ops"]) == 2
    assert "403: same_person: 'ops-anna' issued command" in capsys.readouterr().err
    assert cli.main(["command", "confirm", ident, "--token", "ops2"]) == 0
    assert f"{ident}  lift-a1  service_mode=0  sent" in capsys.readouterr().out
    assert cli.main(["command", "send", "lift-a1", "home_floor", "2", "--token", "tech"]) == 2
    assert "403: forbidden: gw-1 is not in the registry" in capsys.readouterr().err
