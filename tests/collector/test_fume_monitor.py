"""Restaurant cooking-fume monitors: simulator frames through the gateway decoder, the store and
the site rules (fume limit, fan running while the purifier is off)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from collector.environment import EnvAlarm, EnvironmentMonitor
from collector.environment.config import load_environment_config
from collector.environment.rules import running, unpurified
from collector.features import open_store
from collector.store import Accepted, Store
from devices import contract
from devices.model import Reading
from devices.sim.environment import StationSim
from edge.config import DeviceSection, Hj212TcpBus
from edge.hj212_source import Hj212Source, Line

MN = "010000A8900016F018010001"
T0 = datetime(2026, 3, 1, 4, 0, tzinfo=UTC)


def kitchen(store: Store, alarms: list[EnvAlarm], **limits: object) -> EnvironmentMonitor:
    cfg = load_environment_config({"sites": [{
        "id": "noodle-house", "lat": 34.75, "lon": 113.66, "kind": "restaurant",
        "devices": ["fume-1"], "limits": {"unpurified_hold": "2min", "fume_duration": "3min",
                                          **limits}}]})
    return EnvironmentMonitor(store, cfg, on_alarm=alarms.append)


def upload(store: Store, monitor: EnvironmentMonitor, scenario: str, minutes: range,
           seq: list[int]) -> list[Reading]:
    """The simulated fume monitor's real-time frames, one a minute, decoded and stored."""
    out: list[Reading] = []
    source = Hj212Source(Hj212TcpBus(name="hj", type="hj212-tcp"),
                         [DeviceSection(id="fume-1", bus="hj", profile="fume-hj212", mn=MN)],
                         lambda items: out.extend(i for i in items if isinstance(i, Reading)))
    sim = StationSim(kind="fume", mn=MN, scenario=scenario, rng=random.Random(7))
    for minute in minutes:
        source.feed(Line("hj", lambda _: None), sim.wire("2011", T0 + timedelta(minutes=minute)))
    for reading in out:
        seq[0] += 1
        body = contract.envelope("gw1", contract.DATA, seq[0], reading.ts,
                                 contract.encode_batch([reading]))
        item = Accepted("gw1", contract.DataEnvelope.model_validate(orjson.loads(body)),
                        reading.ts + 500)
        store.ingest([item])
        monitor.on_stored([item])
    return out


@pytest.fixture
def sqlite_store(tmp_path) -> Store:  # type: ignore[no-untyped-def]
    s = open_store(f"sqlite:///{tmp_path / 'hub.sqlite'}")
    yield s
    s.close()


def test_fume_profile_decodes_platform_codes(sqlite_store: Store) -> None:
    alarms: list[EnvAlarm] = []
    readings = upload(sqlite_store, kitchen(sqlite_store, alarms), "normal", range(1), [0])
    values = readings[0].values
    assert values["fan_state"] == 1 and values["purifier_state"] == 1
    assert 0.3 < values["cooking_fume"] < 1.0 and values["fan_current"] > 1.5
    assert readings[0].station_time
    assert alarms == []


def test_fan_running_with_the_purifier_off_raises_after_the_hold(sqlite_store: Store) -> None:
    alarms: list[EnvAlarm] = []
    monitor = kitchen(sqlite_store, alarms, fume_limit=5.0)
    seq = [0]
    upload(sqlite_store, monitor, "normal", range(3), seq)
    upload(sqlite_store, monitor, "purifier_off", range(3, 5), seq)
    assert alarms == []  # one minute of evasion: below the two-minute hold
    upload(sqlite_store, monitor, "purifier_off", range(5, 6), seq)
    assert [(a.rule, a.action) for a in alarms] == [("fan_without_purifier", "raise")]
    upload(sqlite_store, monitor, "normal", range(6, 7), seq)
    assert [(a.rule, a.action) for a in alarms][-1] == ("fan_without_purifier", "clear")
    assert monitor.alarms(site="noodle-house")[0]["cleared_at"] is not None


def test_fume_above_the_limit_for_the_duration_raises(sqlite_store: Store) -> None:
    alarms: list[EnvAlarm] = []
    monitor = kitchen(sqlite_store, alarms)
    upload(sqlite_store, monitor, "fume_exceedance", range(4), [0])
    assert [(a.rule, a.action, a.threshold) for a in alarms] == [("fume_limit", "raise", 2.0)]


@pytest.mark.parametrize(("state", "current", "on"), [
    (1.0, 0.0, True), (0.0, 5.0, False), (None, 0.6, True), (None, 0.4, False),
    (None, None, None)])
def test_running_prefers_the_state_then_the_current(state: float | None,
                                                     current: float | None,
                                                     on: bool | None) -> None:
    assert running(state, current, 0.5) is on


def test_unpurified_only_when_the_fan_runs_and_the_purifier_does_not() -> None:
    assert unpurified(True, False) is True
    assert unpurified(True, True) is False
    assert unpurified(False, False) is False
    assert unpurified(True, None) is None
