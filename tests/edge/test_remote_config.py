"""Remote configuration on the gateway: refuse with a reason, apply, or roll back."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest

from edge.config import GatewayConfig
from edge.remote_config import RemoteConfig

BASE = """schema_version = 1
[gateway]
id = "gw-1"
data_dir = "{data}"
[uplink]
brokers = ["mqtt://127.0.0.1:1883"]
"""


class FakeAgent:
    """Applies configs; its uplink comes back unless the broker URL names port 1."""

    def __init__(self) -> None:
        self.applied: list[GatewayConfig] = []
        self.connected = True
        self.replies: list[dict[str, object]] = []

    async def apply(self, cfg: GatewayConfig) -> None:
        self.applied.append(cfg)
        self.connected = not cfg.uplink.brokers[0].endswith(":1")

    def publish(self, payload: bytes) -> bool:
        if not self.connected:
            return False
        self.replies.append(orjson.loads(payload))
        return True


@pytest.fixture
def setup(tmp_path: Path) -> tuple[RemoteConfig, FakeAgent, Path]:
    path = tmp_path / "gateway.toml"
    path.write_text(BASE.format(data=tmp_path))
    agent = FakeAgent()
    rc = RemoteConfig(path, "gw-1", apply=agent.apply, uplink_ok=lambda: agent.connected,
                      publish_reply=agent.publish, deadline=0.5, poll=0.05)
    return rc, agent, path


def command(toml: str, ident: str = "c1") -> bytes:
    return orjson.dumps({"id": ident, "version": 2, "toml": toml})


def test_valid_config_is_written_applied_and_acknowledged(
        setup: tuple[RemoteConfig, FakeAgent, Path], tmp_path: Path) -> None:
    rc, agent, path = setup
    new = BASE.format(data=tmp_path) + 'health_interval = "5s"\n'
    outcome = asyncio.run(rc.handle(command(new)))
    assert outcome.ok and outcome.status == "applied"
    assert path.read_text() == new
    assert rc.previous.read_text() == BASE.format(data=tmp_path)
    assert agent.applied[-1].uplink.health_interval == 5.0
    assert agent.replies == [{"v": 1, "gateway": "gw-1", "command": "config", "id": "c1",
                              "ok": True, "detail": {"status": "applied", "version": 2}}]


@pytest.mark.parametrize(("toml", "reason"), [
    ("not toml [", "not valid TOML"),
    ('schema_version = 1\n[gateway]\nid = "gw-1"\nbogus = 1\n', "bogus"),
    ('schema_version = 1\n[gateway]\nid = "gw-2"\n', "for gateway 'gw-2'"),
    ('schema_version = 1\n[gateway]\nid = "gw-1"\ndata_dir = "/elsewhere"\n', "outbox path"),
])
def test_bad_configs_are_refused_with_the_reason_and_nothing_changes(
        setup: tuple[RemoteConfig, FakeAgent, Path], toml: str, reason: str) -> None:
    rc, agent, path = setup
    before = path.read_text()
    outcome = asyncio.run(rc.handle(command(toml)))
    assert not outcome.ok and outcome.status == "refused"
    assert reason in str(outcome.detail["reason"])
    assert path.read_text() == before and agent.applied == []
    assert agent.replies[-1]["ok"] is False and agent.replies[-1]["id"] == "c1"


def test_no_uplink_after_the_change_rolls_back(setup: tuple[RemoteConfig, FakeAgent, Path],
                                               tmp_path: Path) -> None:
    rc, agent, path = setup
    before = path.read_text()
    unreachable = before.replace("127.0.0.1:1883", "127.0.0.1:1")
    outcome = asyncio.run(rc.handle(command(unreachable, "c9")))
    assert outcome.status == "rolled_back" and not outcome.ok
    assert path.read_text() == before
    assert [c.uplink.brokers[0] for c in agent.applied] == ["mqtt://127.0.0.1:1",
                                                            "mqtt://127.0.0.1:1883"]
    reply = agent.replies[-1]
    assert reply["id"] == "c9" and reply["detail"]["status"] == "rolled_back"  # type: ignore[index]


def test_payload_that_is_not_a_command(setup: tuple[RemoteConfig, FakeAgent, Path]) -> None:
    rc, _, _ = setup
    outcome = asyncio.run(rc.handle(b'{"id": "x"}'))
    assert outcome.status == "refused" and "toml" in str(outcome.detail["reason"])


def test_reply_payload_is_a_contract_reply_the_collector_accepts() -> None:
    from devices import contract
    from edge.remote_config import reply_payload

    payload = reply_payload("gw-1", "update", "u7", False, {"status": "refused", "reason": "x"})
    received = contract.decode(contract.topic("gw-1", contract.REPLY), payload)
    assert received.message == contract.ReplyMessage(
        v=1, gateway="gw-1", command="update", id="u7", ok=False,
        detail={"status": "refused", "reason": "x"})
    assert orjson.loads(payload) == received.message.model_dump()
    with pytest.raises(contract.ContractError):
        reply_payload("Not A Gateway", "echo", "e1", True, {})
