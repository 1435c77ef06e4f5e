"""Agent updates at the collector: staged rollout policy, service and REST API, /metrics."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient

from collector import auth
from collector.api import create_app
from collector.features import open_store
from collector.updates import install
from collector.updates.metrics import render
from collector.updates.metrics import router as metrics_router
from collector.updates.service import Target, UpdateService, next_step
from devices.contract import ReplyMessage
from edge.update import build_bundle


def T(gw: str, wave: int, status: str) -> Target:
    """A target row."""
    return Target(gw, wave, status)


@pytest.mark.parametrize(("targets", "send", "state"), [
    ([T("a", 0, "pending"), T("b", 1, "pending")], ["a"], "canary"),
    ([T("a", 0, "sent"), T("b", 1, "pending")], [], "canary"),
    ([T("a", 0, "applied"), T("b", 1, "pending"), T("c", 1, "pending")], ["b", "c"],
     "rolling"),
    ([T("a", 0, "rolled_back"), T("b", 1, "pending")], [], "halted"),
    ([T("a", 0, "applied"), T("b", 0, "timeout"), T("c", 1, "pending")], [], "halted"),
    ([T("a", 0, "applied"), T("b", 1, "refused")], [], "done"),  # only canaries halt
    ([T("a", 0, "applied"), T("b", 1, "sent")], [], "rolling"),
])
def test_canaries_first_and_a_failed_canary_halts(targets: list[Target], send: list[str],
                                                   state: str) -> None:
    assert next_step(targets) == (send, state)


@dataclass
class FakeChannel:
    """Records commands; `up` False simulates a broker link that is down."""

    up: bool = True
    sent: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)

    def send(self, gateway: str, name: str, payload: bytes) -> bool:
        if self.up:
            self.sent.append((gateway, name, orjson.loads(payload)))
        return self.up


@dataclass
class Rig:
    client: TestClient
    service: UpdateService
    channel: FakeChannel
    admin: dict[str, str]
    reader: dict[str, str]


@pytest.fixture
def rig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Rig]:
    store = open_store(f"sqlite:///{tmp_path / 'hub.sqlite'}")
    channel = FakeChannel()
    service = UpdateService(store.engine, channel, "http://collector.example")
    app = create_app(store, ingest_stats=lambda: {"received": 7, "broker_connected": True})
    install(app, service)
    app.include_router(metrics_router)
    admin = auth.create_token(store.engine, "rm", auth.Role.ADMIN)
    reader = auth.create_token(store.engine, "ro", auth.Role.READER)
    with TestClient(app) as client:
        yield Rig(client, service, channel, {"Authorization": f"Bearer {admin}"},
                  {"Authorization": f"Bearer {reader}"})
    store.close()


def bundle(version: str) -> bytes:
    """A signed bundle with one (dummy) wheel."""
    return build_bundle({"wheels/citygate-x.whl": b"wheel " + version.encode()}, version,
                        Ed25519PrivateKey.generate())


def reply(gw: str, rid: str, ok: bool, status: str) -> ReplyMessage:
    """A gateway's answer to cmd/update."""
    return ReplyMessage(v=1, gateway=gw, command="update", id=f"{rid}:{gw}", ok=ok,
                        detail={"status": status})


def test_rollout_offers_canary_then_the_rest(rig: Rig) -> None:
    r = rig.client.post("/api/v1/updates/bundles", content=bundle("0.2.0"), headers=rig.admin)
    assert r.status_code == 201 and r.json()["version"] == "0.2.0"
    r = rig.client.post("/api/v1/updates/rollouts", headers=rig.admin, json={
        "version": "0.2.0", "gateways": ["gw-a", "gw-b", "gw-c"], "canaries": 1})
    assert r.status_code == 201, r.text
    rid = r.json()["rollout_id"]
    assert [(g, n) for g, n, _ in rig.channel.sent] == [("gw-a", "update")]
    offer = rig.channel.sent[0][2]
    assert offer["url"] == "http://collector.example/api/v1/updates/bundles/0.2.0/download"
    # the one-time token downloads the bundle; nothing else does
    path = "/api/v1/updates/bundles/0.2.0/download"
    got = rig.client.get(path, headers={"Authorization": f"Bearer {offer['token']}"})
    assert got.status_code == 200 and got.content == bundle_bytes(rig, "0.2.0")
    assert rig.client.get(path, headers={"Authorization": "Bearer nope"}).status_code == 401
    assert rig.client.get(path).status_code == 401
    rig.service.step()
    assert len(rig.channel.sent) == 1  # the rest waits for the canary
    rig.service.on_reply(reply("gw-a", rid, True, "applied"))
    rig.service.step()
    assert sorted(g for g, _, _ in rig.channel.sent[1:]) == ["gw-b", "gw-c"]
    rig.service.on_reply(reply("gw-b", rid, True, "applied"))
    rig.service.on_reply(reply("gw-c", rid, False, "rolled_back"))
    rig.service.step()
    view = rig.client.get("/api/v1/updates", headers=rig.reader).json()
    assert view["rollouts"][0]["state"] == "done"
    assert {g: x["status"] for g, x in view["gateways"].items()} == {
        "gw-a": "applied", "gw-b": "applied", "gw-c": "rolled_back"}
    assert "token_hash" not in view["gateways"]["gw-a"]
    per_gw = rig.client.get("/api/v1/updates/gateways/gw-c", headers=rig.reader).json()
    assert per_gw[0]["detail"] == {"status": "rolled_back"}


def bundle_bytes(rig: Rig, version: str) -> bytes:
    """What the service stored."""
    return rig.service.download(version, _token_of(rig, version))


def _token_of(rig: Rig, version: str) -> str:
    return next(p["token"] for _, _, p in rig.channel.sent if p["version"] == version)


def test_a_failed_canary_halts_and_skips_the_rest(rig: Rig) -> None:
    rig.service.add_bundle(bundle("0.3.0"))
    rid = rig.service.start_rollout("0.3.0", ["gw-a", "gw-b"])
    rig.service.on_reply(reply("gw-a", rid, False, "refused"))
    rig.service.step()
    view = rig.service.overview()
    assert view["rollouts"][0]["state"] == "halted"
    assert view["gateways"]["gw-b"]["status"] == "skipped"
    assert [g for g, _, _ in rig.channel.sent] == ["gw-a"]


def test_silent_canary_times_out_and_a_down_link_retries(rig: Rig) -> None:
    now = [1_000_000]
    rig.service.now_ms = lambda: now[0]
    rig.service.add_bundle(bundle("0.4.0"))
    rig.channel.up = False
    rig.service.start_rollout("0.4.0", ["gw-a", "gw-b"], deadline_s=30)
    assert rig.service.overview()["gateways"]["gw-a"]["status"] == "pending"
    rig.channel.up = True
    rig.service.step()
    assert rig.service.overview()["gateways"]["gw-a"]["status"] == "sent"
    now[0] += 31_000
    rig.service.step()
    assert rig.service.overview()["rollouts"][0]["state"] == "halted"


def test_bad_requests_are_refused_clearly(rig: Rig) -> None:
    c = rig.client
    assert c.post("/api/v1/updates/bundles", content=b"junk",
                  headers=rig.admin).status_code == 422
    assert c.post("/api/v1/updates/bundles", content=bundle("1.0.0"),
                  headers=rig.reader).status_code == 403
    c.post("/api/v1/updates/bundles", content=bundle("1.0.0"), headers=rig.admin)
    r = c.post("/api/v1/updates/bundles", content=bundle("1.0.0"), headers=rig.admin)
    assert r.status_code == 409 and "new version number" in r.json()["detail"]
    r = c.post("/api/v1/updates/rollouts", json={"version": "9.9.9", "gateways": ["gw-a"]},
               headers=rig.admin)
    assert r.status_code == 404
    assert c.get("/api/v1/updates").status_code == 401


def test_collector_metrics(rig: Rig) -> None:
    r = rig.client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    assert "citygate_ingest_received_total 7" in r.text
    assert "citygate_ingest_broker_connected 1" in r.text
    assert "citygate_collector_up 1" in r.text
    assert 'citygate_store_rows{table="' in r.text
    assert render({}, {}, up=False).decode().splitlines()[1] == "citygate_collector_up 0"
