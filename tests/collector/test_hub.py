"""The core's loop over features: every hook isolated and counted in the health report, failed
tasks restarted, and the core importing no feature."""

from __future__ import annotations

import ast
import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from citygate.rig import free_port
from collector.config import CollectorConfig
from collector.feature import BaseFeature, BrokerLink, Feature
from collector.features import build_hub, default_features
from collector.hub import Hub
from collector.store import Accepted, Store
from devices.contract import EventsEnvelope

COLLECTOR = Path(__file__).resolve().parents[2] / "collector"
# Every feature package, and the composition that names them all.
FEATURE_PACKAGES = {"alarms", "notify", "environment", "parking", "elevators", "ngsi",
                    "registry", "updates", "grid", "sources", "commands", "cityview",
                    "features"}
CORE_MODULES = ("hub.py", "api.py", "store.py", "migrations.py", "feature.py", "schema.py",
                "core_tables.py", "auth.py", "auth_tables.py", "clock.py", "broadcast.py",
                "mqtt_link.py", "pages.py", "params.py", "config.py", "ingest.py",
                "store_ingest.py", "failures.py", "feed.py", "placement.py", "partitions.py",
                "leader.py")
T0 = 1_760_000_000_000


def trapped(seq: int) -> list[Accepted]:
    env = EventsEnvelope.model_validate({
        "v": 1, "gateway": "gw-1", "seq": seq, "sent": T0,
        "events": [{"device": "lift-1", "ts": T0, "kind": "trapped_passenger",
                    "action": "raise", "severity": "critical", "message": "test"}]})
    return [Accepted("gw-1", env, T0)]


class Recorder(BaseFeature):
    """A feature that records what it is given."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.stored: list[list[Accepted]] = []
        self.states: list[tuple[str, str]] = []

    def on_stored(self, items: list[Accepted]) -> None:
        """Record the batch."""
        self.stored.append(items)

    def on_state(self, gateway: str, state: str, devices: list[str]) -> None:
        """Record the state."""
        self.states.append((gateway, state))


class Broken(Recorder):
    """A feature whose hooks raise while `broken` is set."""

    broken = True

    def on_stored(self, items: list[Accepted]) -> None:
        """Raise, or record once mended."""
        if self.broken:
            raise RuntimeError("stored hook is broken")
        super().on_stored(items)

    def on_state(self, gateway: str, state: str, devices: list[str]) -> None:
        """Raise."""
        raise ValueError("state hook is broken")


@pytest.fixture
def hub(store: Store, tmp_path: Path) -> Iterator[Hub]:
    h = build_hub(store, CollectorConfig(), ingest_stats=dict,
                  broker=BrokerLink(f"mqtt://127.0.0.1:{free_port()}"),
                  admin_token_file=tmp_path / "admin-token")
    try:
        yield h
    finally:
        asyncio.run(h.close())


def test_every_default_feature_meets_the_contract() -> None:
    features = default_features()
    assert [f.name for f in features] == ["alarms", "environment", "sources", "grid", "parking",
                                          "elevators", "hub_feeds", "registry", "updates",
                                          "commands", "cityview"]
    assert all(isinstance(f, Feature) for f in features)


def test_a_failing_stored_hook_skips_no_other_feature_and_shows_in_health(hub: Hub) -> None:
    alarms = hub.features[0]
    assert alarms.name == "alarms"

    def boom(items: list[Accepted]) -> None:
        raise RuntimeError("alarm engine down")

    alarms.on_stored = boom  # type: ignore[method-assign]
    after = Recorder("after")
    hub.features.append(after)
    hub.store.ingest(trapped(1))
    hub.on_stored(trapped(1))  # must not raise
    assert len(after.stored) == 1  # the feature after the failing one still got the batch
    assert hub.app.state.event_stream.published == 1  # so did the lift stream
    with TestClient(hub.app) as client:
        health = client.get("/api/v1/health").json()
    assert health["features"]["alarms"]["on_stored"]["failures"] == 1
    assert health["features"]["alarms"]["on_stored"]["failing"] is True
    assert "feature alarms: on_stored failing" in health["reasons"]
    assert health["status"] == "degraded"
    assert health["streams"]["lift_events"] == {"published": 1, "subscribers": 0,
                                                "slow_dropped": 0}
    assert {"incidents", "feed_readings", "feed_events"} <= set(health["streams"])


def test_failures_are_counted_per_feature_and_hook_and_recovery_clears_them(
        store: Store, caplog: pytest.LogCaptureFixture) -> None:
    broken, fine = Broken("broken"), Recorder("fine")
    hub = Hub(store, CollectorConfig(), app=None,  # type: ignore[arg-type]
              features=[broken, fine])
    for seq in range(1, 4):
        hub.on_stored(trapped(seq))
    hub.on_state("gw-1", "offline", ["lift-1"])
    assert len(fine.stored) == 3 and fine.states == [("gw-1", "offline")]
    report = hub.failures.as_dict()["broken"]
    assert report["on_stored"]["failures"] == 3 and report["on_state"]["failures"] == 1
    assert report["on_stored"]["last_error"] == "RuntimeError: stored hook is broken"
    logged = [r for r in caplog.records if "hook on_stored failed" in r.getMessage()]
    assert len(logged) == 1  # once per run of failures, the rest counted
    broken.broken = False
    hub.on_stored(trapped(9))
    assert hub.failures.as_dict()["broken"]["on_stored"]["failing"] is False
    assert hub.failures.as_dict()["broken"]["on_stored"]["failures"] == 3


def test_a_failing_task_is_restarted_and_counted(store: Store,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("collector.hub.TASK_BACKOFF_S", (0.01, 0.02))
    runs: list[int] = []

    class Flaky(BaseFeature):
        name = "flaky"

        def tasks(self) -> Any:
            async def work() -> None:
                runs.append(1)
                if len(runs) < 3:
                    raise OSError("worker fell over")
            return (work,)

    hub = Hub(store, CollectorConfig(), app=None, features=[Flaky()])  # type: ignore[arg-type]
    asyncio.run(asyncio.wait_for(hub.tasks[0](), timeout=5))
    assert len(runs) == 3
    assert hub.failures.as_dict()["flaky"]["task-0"]["failures"] == 2


def test_close_goes_on_past_a_failing_feature(store: Store) -> None:
    closed: list[str] = []

    class Closing(BaseFeature):
        def __init__(self, name: str, fail: bool) -> None:
            self.name, self.fail = name, fail

        async def close(self) -> None:
            closed.append(self.name)
            if self.fail:
                raise RuntimeError("close failed")

    hub = Hub(store, CollectorConfig(), app=None,  # type: ignore[arg-type]
              features=[Closing("a", False), Closing("b", True)])
    asyncio.run(hub.close())
    asyncio.run(hub.close())  # idempotent
    assert closed == ["b", "a"]
    assert hub.failures.as_dict()["b"]["close"]["failures"] == 1


@pytest.mark.parametrize("module", CORE_MODULES)
def test_the_core_imports_no_feature(module: str) -> None:
    path = COLLECTOR / module
    if not path.exists():
        pytest.skip(f"{module} does not exist")
    named = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        named += [n for n in names if n.split(".")[0] == "collector"
                  and len(n.split(".")) > 1 and n.split(".")[1] in FEATURE_PACKAGES]
    assert named == []
