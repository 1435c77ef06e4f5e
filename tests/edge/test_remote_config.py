"""Remote configuration on the gateway: refuse with a reason, apply, or roll back."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest

from edge.config import GatewayConfig, parse_config
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
        self.running: GatewayConfig | None = None

    def answering(self) -> set[str]:
        """Only units 1 and 2 exist: a device given another unit id is silent."""
        return {d.id for d in self.running.devices if d.unit in (1, 2)} if self.running else set()

    async def apply(self, cfg: GatewayConfig) -> None:
        self.applied.append(cfg)
        self.running = cfg
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
                      publish_reply=agent.publish, deadline=0.5, poll=0.05,
                      answering=agent.answering, device_grace=0.5)
    return rc, agent, path


def command(toml: str, ident: str = "c1") -> bytes:
    return orjson.dumps({"id": ident, "version": 2, "toml": toml})


def test_valid_config_is_written_applied_and_acknowledged(
        setup: tuple[RemoteConfig, FakeAgent, Path], tmp_path: Path) -> None:
    rc, agent, path = setup
    new = BASE.format(data=tmp_path) + 'health_interval = "5s"\n'
    outcome = asyncio.run(rc.handle(command(new)))
    assert outcome.ok and outcome.status == "confirmed"
    assert path.read_text() == new
    assert rc.previous.read_text() == BASE.format(data=tmp_path)
    assert agent.applied[-1].uplink.health_interval == 5.0
    head = {"v": 1, "gateway": "gw-1", "command": "config", "id": "c1", "ok": True}
    assert agent.replies == [
        {**head, "detail": {"status": "applied", "version": 2, "watching": [],
                            "grace_s": 0.5}},
        {**head, "detail": {"status": "confirmed", "version": 2, "devices": []}}]


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
    assert reply["detail"]["reason"] == "uplink_lost"  # type: ignore[index]


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


LIFTS = """
[[buses]]
name = "lifts"
type = "modbus-tcp"
host = "127.0.0.1"
port = 5020

[[devices]]
id = "lift-1"
bus = "lifts"
profile = "elevator-gbt24476"
unit = 1
poll = "100ms"

[[devices]]
id = "lift-2"
bus = "lifts"
profile = "elevator-gbt24476"
unit = {unit2}
poll = "100ms"
"""


def lifts(tmp_path: Path, unit2: int = 2, extra: str = "") -> str:
    return BASE.format(data=tmp_path) + extra + LIFTS.replace("{unit2}", str(unit2))


def running(rc: RemoteConfig, agent: FakeAgent, toml: str) -> None:
    """Start from `toml` as the running config (as on site)."""
    rc.path.write_text(toml)
    agent.running = parse_config(toml)


def test_devices_silent_after_the_change_roll_it_back_naming_them(
        setup: tuple[RemoteConfig, FakeAgent, Path], tmp_path: Path) -> None:
    rc, agent, path = setup
    before = lifts(tmp_path)
    running(rc, agent, before)
    wrong_unit = lifts(tmp_path, unit2=7)
    outcome = asyncio.run(rc.handle(command(wrong_unit, "c5")))
    assert outcome.status == "rolled_back" and not outcome.ok
    assert outcome.detail["reason"] == "devices_silent"
    assert outcome.detail["devices"] == ["lift-2"]
    assert "lift-2" in str(outcome.detail["message"])
    assert path.read_text() == before
    assert agent.running is not None and agent.running.devices[1].unit == 2
    statuses = [r["detail"]["status"] for r in agent.replies]  # type: ignore[index]
    assert statuses == ["applied", "rolled_back"]
    assert agent.replies[0]["detail"]["watching"] == ["lift-1", "lift-2"]  # type: ignore[index]
    assert rc.counters["rolled_back"] == 1


def test_a_change_keeping_the_devices_answering_is_confirmed(
        setup: tuple[RemoteConfig, FakeAgent, Path], tmp_path: Path) -> None:
    rc, agent, path = setup
    running(rc, agent, lifts(tmp_path))
    new = lifts(tmp_path, extra='health_interval = "9s"\n')
    outcome = asyncio.run(rc.handle(command(new)))
    assert outcome.status == "confirmed" and outcome.ok
    assert outcome.detail["devices"] == ["lift-1", "lift-2"]
    assert path.read_text() == new and rc.counters["confirmed"] == 1


def test_only_devices_that_answered_before_and_stay_configured_are_watched(
        setup: tuple[RemoteConfig, FakeAgent, Path], tmp_path: Path) -> None:
    rc, agent, _ = setup
    running(rc, agent, lifts(tmp_path, unit2=9))  # lift-2 was silent already
    outcome = asyncio.run(rc.handle(command(lifts(tmp_path, unit2=8))))
    assert outcome.status == "confirmed" and outcome.detail["devices"] == ["lift-1"]
    removed = BASE.format(data=tmp_path)  # no devices left: nothing to wait for
    assert asyncio.run(rc.handle(command(removed, "c2"))).status == "confirmed"


def test_the_grace_period_comes_from_the_command_and_is_bounded(
        setup: tuple[RemoteConfig, FakeAgent, Path], tmp_path: Path) -> None:
    rc, agent, _ = setup
    running(rc, agent, lifts(tmp_path))
    doc = {"id": "g1", "version": 3, "toml": lifts(tmp_path, unit2=5), "device_grace_s": 0.6}
    outcome = asyncio.run(rc.handle(orjson.dumps(doc)))
    assert outcome.status == "rolled_back"
    assert agent.replies[0]["detail"]["grace_s"] == 0.6  # type: ignore[index]
    for bad in (0, 10_000, "5", True):
        out = asyncio.run(rc.handle(orjson.dumps({**doc, "device_grace_s": bad})))
        assert out.status == "refused" and "device_grace_s" in str(out.detail["reason"])


def test_oversize_and_hostile_commands_are_refused_and_counted(
        setup: tuple[RemoteConfig, FakeAgent, Path]) -> None:
    rc, agent, path = setup
    before = path.read_text()
    huge = orjson.dumps({"id": "big", "version": 1, "toml": "#" * 300_000})
    for payload in (huge, b"\xff\x00", b"[]", orjson.dumps({"id": "v", "version": "x",
                                                           "toml": ""})):
        assert asyncio.run(rc.handle(payload)).status == "refused"
    assert "at most" in str(agent.replies[0]["detail"]["reason"])  # type: ignore[index]
    assert rc.counters["refused"] == 4 and path.read_text() == before and agent.applied == []


def test_against_the_lift_simulator_a_wrong_unit_or_port_is_rolled_back(tmp_path: Path) -> None:
    """The gateway's own device figures (edge.managed.answering_devices) on real Modbus buses."""
    import contextlib
    import socket
    from types import SimpleNamespace
    from typing import cast

    from devices.sim.elevator import make_bank, serve_tcp
    from edge.agent import Agent
    from edge.managed import answering_devices
    from edge.sources import build_source

    def free_port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])

    async def until(condition: object, seconds: float = 10.0) -> None:
        end = asyncio.get_running_loop().time() + seconds
        while not condition():  # type: ignore[operator]
            assert asyncio.get_running_loop().time() < end, "condition not met in time"
            await asyncio.sleep(0.02)

    async def main() -> None:
        port, started = free_port(), asyncio.Event()
        server = asyncio.create_task(serve_tcp(make_bank([1], static=True), "127.0.0.1", port,
                                               started=started))
        await asyncio.wait_for(started.wait(), 5)
        gw = SimpleNamespace(buses=[], tasks=[])

        async def apply(cfg: GatewayConfig) -> None:  # what the supervisor's restart does
            for task in gw.tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            gw.buses = [build_source(b, [d for d in cfg.devices if d.bus == b.name],
                                     lambda items: None) for b in cfg.buses]
            gw.tasks = [asyncio.create_task(b.run()) for b in gw.buses]

        def answering() -> set[str]:
            return answering_devices(cast(Agent, gw))

        text = (BASE.format(data=tmp_path) + LIFTS.replace("5020", str(port))
                .split("[[devices]]\nid = \"lift-2\"")[0])
        path = tmp_path / "gateway.toml"
        path.write_text(text)
        await apply(parse_config(text))
        replies: list[dict[str, object]] = []

        def publish(payload: bytes) -> bool:
            replies.append(orjson.loads(payload))
            return True

        rc = RemoteConfig(path, "gw-1", apply=apply, uplink_ok=lambda: True,
                          publish_reply=publish,
                          deadline=2, poll=0.05, answering=answering, device_grace=1.0)
        try:
            await until(lambda: answering() == {"lift-1"})
            for broken in (text.replace("unit = 1", "unit = 7"),
                           text.replace(f"port = {port}", f"port = {free_port()}")):
                out = await rc.handle(command(broken))
                assert out.status == "rolled_back", out
                assert out.detail["reason"] == "devices_silent"
                assert out.detail["devices"] == ["lift-1"]
                assert path.read_text() == text
                await until(lambda: answering() == {"lift-1"})
            out = await rc.handle(command(text.replace('poll = "100ms"', 'poll = "150ms"')))
            assert out.status == "confirmed" and out.detail["devices"] == ["lift-1"]
            assert [r["detail"]["status"] for r in replies] == [  # type: ignore[index]
                "applied", "rolled_back", "applied", "rolled_back", "applied", "confirmed"]
        finally:
            for task in [*gw.tasks, server]:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    asyncio.run(main())
