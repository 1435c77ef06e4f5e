"""The alarm engine on real stores: dedup, flapping, grouping, silences, thresholds, paging."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from collector.alarms import AlarmEngine, IncidentDesk, hash_token, load_alarms_config
from collector.alarms.tables import alarms, incidents
from collector.features import open_store
from collector.notify.model import Notice
from collector.store import Accepted, Store
from devices.contract import DataEnvelope, EventsEnvelope

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
S, MIN = 1000, 60_000
CONFIG: dict[str, Any] = {
    "group_wait": "30s",
    "sites": {
        "jinshui-12": {"name": "Jinshui Rd 12", "devices": ["lift-1", "lift-2", "lift-3"],
                       "grid": "north", "unit": "crew-north"},
        "plant-7": {"gateways": ["gw-plant"], "grid": "east"},
    },
    "units": {
        "crew-north": {
            "members": [{"name": "Li Wei", "phone": "13800000001", "email": "li@example.org",
                         "token_hash": hash_token("tok-li")}],
            "escalation": [{"after": "0s", "channels": ["dingtalk-north"]},
                           {"after": "5min", "channels": ["wecom-supervisors", "email-ops"]}]},
        "env-east": {"members": [{"name": "Zhao", "token_hash": hash_token("tok-zhao")}],
                     "escalation": [{"after": "2min", "channels": ["wecom-env"]}]},
    },
    "routes": [{"kinds": ["boiler_nox_exceedance"], "unit": "env-east"}],
    "default_unit": "crew-north",
    "ops": [{"name": "ops-room", "token_hash": hash_token("tok-ops")}],
    "thresholds": [{"quantity": "nox_converted", "above": 30, "for": "10min",
                    "clear_below": 27, "sites": ["plant-7"], "kind": "boiler_nox_exceedance"}],
}


class Clock:
    """A settable collector clock."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> int:
        return self.now


class Recorder:
    """Records what the engine would enqueue."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, Notice]] = []

    def __call__(self, channel: str, notice: Notice) -> int:
        self.sent.append((channel, notice))
        return len(self.sent)


class Rig:
    """A store, an engine and a recording notify: feeds envelopes like the ingest does."""

    def __init__(self, store: Store, config: dict[str, Any]) -> None:
        self.store, self.clock, self.notify = store, Clock(), Recorder()
        self.cfg = load_alarms_config(config)
        self.engine = self._engine()
        self.desk = IncidentDesk(self.engine)
        self._seq = itertools.count(1)

    def _engine(self) -> AlarmEngine:
        engine = AlarmEngine(self.store, self.cfg, self.notify, public_url="https://cg.test",
                             clock=self.clock)
        engine.load()
        return engine

    def restart(self) -> None:
        self.engine = self._engine()
        self.desk = IncidentDesk(self.engine)

    def feed(self, env: EventsEnvelope | DataEnvelope, gateway: str) -> None:
        item = Accepted(gateway, env, self.clock.now)
        self.store.ingest([item])
        self.engine.on_stored([item])

    def events(self, gateway: str, *evs: tuple[str, str, str], severity: str = "major",
               ts: int | None = None) -> None:
        """Feed (device, kind, raise|clear) events observed at `ts` (default: now)."""
        when = self.clock.now if ts is None else ts
        self.feed(EventsEnvelope.model_validate({
            "v": 1, "gateway": gateway, "seq": next(self._seq), "sent": when,
            "events": [{"device": d, "ts": when, "kind": k, "action": a, "severity": severity}
                       for d, k, a in evs]}), gateway)

    def reading(self, gateway: str, device: str, ts: int, **values: float) -> None:
        self.feed(DataEnvelope.model_validate({
            "v": 1, "gateway": gateway, "seq": next(self._seq), "sent": ts,
            "readings": [{"device": device, "ts": ts, "values": values}]}), gateway)

    def at(self, ms: int) -> None:
        self.clock.now = T0 + ms
        self.engine.tick()

    def rows(self, table: sa.Table) -> list[dict[str, Any]]:
        with self.store.engine.connect() as conn:
            return [dict(r) for r in conn.execute(sa.select(table).order_by(table.c.id))
                    .mappings()]

    def channels(self) -> list[str]:
        return [c for c, _ in self.notify.sent]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path,
          monkeypatch: pytest.MonkeyPatch) -> Iterator[Store]:
    """A store with the alarm migrations (15–18) applied, on SQLite and PostgreSQL."""
    url = f"sqlite:///{tmp_path / 'hub.db'}" if request.param == "sqlite" \
        else request.getfixturevalue("pg_url")
    s = open_store(url)
    yield s
    s.close()


@pytest.fixture
def rig(store: Store) -> Rig:
    return Rig(store, CONFIG)


def test_trapped_passenger_pages_at_once_with_deep_link(rig: Rig) -> None:
    rig.events("gw-a", ("lift-1", "trapped_passenger", "raise"), severity="critical")
    [inc] = rig.rows(incidents)
    assert (inc["state"], inc["unit"], inc["site"], inc["grid"]) == \
        ("open", "crew-north", "jinshui-12", "north")
    [(channel, notice)] = rig.notify.sent
    assert channel == "dingtalk-north"
    assert notice.link == f"https://cg.test/crew#incident-{inc['id']}"
    assert notice.title == "[CRITICAL] trapped passenger — lift-1 at Jinshui Rd 12"
    assert notice.mention_phones == ("13800000001",)
    assert notice.severity == "critical"
    assert inc["stages_sent"] == 1


def test_flapping_fault_is_one_alarm_one_incident_one_notice(rig: Rig) -> None:
    rig.events("gw-a", ("lift-2", "door_close_fault", "raise"))
    assert rig.rows(incidents) == []  # waiting for group_wait
    rig.at(31 * S)
    assert len(rig.notify.sent) == 1
    for i in range(25):
        rig.clock.now = T0 + 40 * S + i * 2 * S
        rig.events("gw-a", ("lift-2", "door_close_fault", "clear"))
        rig.clock.now += S
        rig.events("gw-a", ("lift-2", "door_close_fault", "raise"))
    [alarm] = rig.rows(alarms)
    [inc] = rig.rows(incidents)
    assert alarm["occurrences"] == 26
    assert alarm["active"] is True
    assert inc["occurrences"] == 26
    assert inc["state"] == "open"
    assert rig.channels() == ["dingtalk-north"]
    history = [h for h in rig.desk.incident(inc["id"])["history"] if h["event"] != "escalation"]
    assert [h["to"] for h in history[:3]] == ["open", "resolved", "open"]


def test_duplicate_raise_is_not_a_new_occurrence(rig: Rig) -> None:
    rig.events("gw-a", ("lift-1", "trapped_passenger", "raise"))
    rig.events("gw-a", ("lift-1", "trapped_passenger", "raise"))
    [alarm] = rig.rows(alarms)
    assert alarm["occurrences"] == 1
    assert len(rig.notify.sent) == 1


def test_clear_auto_resolves_and_closing_ends_the_episode(rig: Rig) -> None:
    rig.events("gw-a", ("lift-1", "alarm_button", "raise"))
    [inc] = rig.rows(incidents)
    rig.desk.transition(inc["id"], "ack", "Li Wei")
    rig.events("gw-a", ("lift-1", "alarm_button", "clear"))
    got = rig.desk.incident(inc["id"])
    assert (got["state"], got["resolved_by"]) == ("resolved", "system")
    rig.desk.transition(inc["id"], "close", "Li Wei", "button released, nobody in the car")
    rig.clock.now += 60 * S
    rig.events("gw-a", ("lift-1", "alarm_button", "raise"))
    assert [i["state"] for i in rig.rows(incidents)] == ["closed", "open"]
    assert [a["closed"] for a in rig.rows(alarms)] == [True, False]


def test_recurrence_after_auto_resolve_returns_to_acknowledged(rig: Rig) -> None:
    rig.events("gw-a", ("lift-1", "trapped_passenger", "raise"))
    [inc] = rig.rows(incidents)
    rig.desk.transition(inc["id"], "ack", "Li Wei")
    rig.clock.now += S
    rig.events("gw-a", ("lift-1", "trapped_passenger", "clear"))
    rig.clock.now += S
    rig.events("gw-a", ("lift-1", "trapped_passenger", "raise"))
    assert rig.desk.incident(inc["id"])["state"] == "acknowledged"


def test_gateway_offline_inhibits_site_alarms_and_pages_once(rig: Rig) -> None:
    rig.events("gw-a", ("lift-1", "door_open_fault", "raise"), ("lift-2", "door_open_fault",
                                                                "raise"))
    rig.clock.now += 5 * S
    rig.engine.on_gateway_state("gw-a", "offline", ["lift-1", "lift-2", "lift-3"])
    rig.events("gw-a", ("lift-3", "door_open_fault", "raise"))
    rig.at(2 * MIN)
    [inc] = rig.rows(incidents)
    assert inc["kind"] == "gateway_offline"
    assert inc["title"] == "[MAJOR] gateway gw-a offline — Jinshui Rd 12"
    assert rig.channels() == ["dingtalk-north"]
    held = {a["device_id"]: a["held"] for a in rig.rows(alarms) if a["kind"] != "gateway_offline"}
    assert held == dict.fromkeys(["lift-1", "lift-2", "lift-3"],
                                 "suppressed:jinshui-12/gw-a/gateway_offline")
    # a trapped passenger is never held back
    rig.events("gw-a", ("lift-2", "trapped_passenger", "raise"), severity="critical")
    assert len(rig.rows(incidents)) == 2
    # back online: the group resolves; faults that cleared meanwhile page nobody
    rig.events("gw-a", *[(d, "door_open_fault", "clear") for d in ("lift-1", "lift-2")])
    rig.engine.on_gateway_state("gw-a", "online")
    rig.at(3 * MIN)
    assert rig.desk.incident(inc["id"])["state"] == "resolved"
    # ...but lift-3's fault is still there and now pages on its own
    assert [i["device_id"] for i in rig.rows(incidents)] == ["gw-a", "lift-2", "lift-3"]


def test_all_devices_offline_is_one_gateway_notice(rig: Rig) -> None:
    for d in ("lift-1", "lift-2", "lift-3"):
        rig.reading("gw-a", d, rig.clock.now, door_closed=True)
    rig.events("gw-a", ("lift-1", "device_offline", "raise"))
    rig.clock.now += 10 * S
    rig.events("gw-a", ("lift-2", "device_offline", "raise"), ("lift-3", "device_offline",
                                                               "raise"))
    rig.at(5 * MIN - S)
    assert [i["kind"] for i in rig.rows(incidents)] == ["gateway_offline"]
    assert rig.channels() == ["dingtalk-north"]
    rig.clock.now += S
    rig.events("gw-a", ("lift-2", "device_offline", "clear"))
    assert rig.rows(incidents)[0]["state"] == "resolved"


def test_power_loss_is_one_site_alarm_and_one_notice(rig: Rig) -> None:
    rig.events("gw-a", *[(d, "power_loss", "raise") for d in ("lift-1", "lift-2", "lift-3")])
    rig.events("gw-a", ("lift-1", "door_close_fault", "raise"))
    rig.at(2 * MIN)
    [alarm] = [a for a in rig.rows(alarms) if a["kind"] == "power_loss"]
    assert (alarm["device_id"], alarm["occurrences"]) == ("*", 1)
    [inc] = rig.rows(incidents)
    assert inc["title"] == "[MAJOR] power loss — Jinshui Rd 12 (whole site)"
    assert rig.channels() == ["dingtalk-north"]
    assert "held back" in rig.notify.sent[0][1].text
    rig.events("gw-a", *[(d, "power_loss", "clear") for d in ("lift-1", "lift-2")])
    assert rig.rows(incidents)[0]["state"] == "open"  # lift-3 still without mains
    rig.events("gw-a", ("lift-3", "power_loss", "clear"))
    assert rig.rows(incidents)[0]["state"] == "resolved"


def test_silence_suppresses_notices_until_it_ends(rig: Rig) -> None:
    sil = rig.desk.add_silence(site=None, device="lift-2", kind=None, starts_at=T0,
                               ends_at=T0 + 10 * MIN, who="ops-room", reason="annual inspection",
                               life_safety=True)
    rig.events("gw-a", ("lift-2", "trapped_passenger", "raise"))
    rig.events("gw-a", ("lift-1", "trapped_passenger", "raise"))
    [inc] = rig.rows(incidents)
    assert inc["device_id"] == "lift-1"
    held = {a["device_id"]: a["held"] for a in rig.rows(alarms)}
    assert held == {"lift-1": "", "lift-2": f"silenced:{sil['id']}"}
    rig.at(9 * MIN)
    assert len(rig.rows(incidents)) == 1
    rig.at(10 * MIN)  # the window ended and the passenger is still reported trapped
    assert [i["device_id"] for i in rig.rows(incidents)] == ["lift-1", "lift-2"]


def test_deleted_silence_releases_held_alarm(rig: Rig) -> None:
    sil = rig.desk.add_silence(site="jinshui-12", device=None, kind="door_close_fault",
                               starts_at=T0, ends_at=T0 + 60 * MIN, who="ops", reason="")
    rig.events("gw-a", ("lift-3", "door_close_fault", "raise"))
    rig.at(5 * MIN)
    assert rig.notify.sent == []
    assert rig.desk.delete_silence(sil["id"], "ops")
    rig.at(6 * MIN)
    assert rig.channels() == ["dingtalk-north"]


def test_threshold_raises_after_duration_and_clears_with_hysteresis(rig: Rig,
                                                                    store: Store) -> None:
    statements: list[str] = []
    sa.event.listen(store.engine, "before_cursor_execute",
                    lambda *a: statements.append(a[2]))
    for minute, value in [(0, 25), (1, 31), (6, 32)]:
        rig.reading("gw-plant", "boiler-1", T0 + minute * MIN, nox_converted=value)
    # readings that change no alarm cost the alarm engine no statement at all
    assert not [s for s in statements if "alarms" in s or "incidents" in s]
    assert rig.rows(alarms) == []
    rig.reading("gw-plant", "boiler-1", T0 + 11 * MIN, nox_converted=33)
    [alarm] = rig.rows(alarms)
    assert (alarm["site"], alarm["kind"], alarm["source"]) == \
        ("plant-7", "boiler_nox_exceedance", "threshold")
    rig.at(11 * MIN + 31 * S)
    [inc] = rig.rows(incidents)
    assert inc["unit"] == "env-east"
    assert rig.notify.sent == []  # env-east's first stage waits 2 min
    rig.at(13 * MIN + 31 * S)
    assert rig.channels() == ["wecom-env"]
    rig.reading("gw-plant", "boiler-1", T0 + 14 * MIN, nox_converted=28)
    assert rig.rows(incidents)[0]["state"] == "open"
    rig.reading("gw-plant", "boiler-1", T0 + 15 * MIN, nox_converted=26)
    assert rig.rows(incidents)[0]["state"] == "resolved"


def test_bad_quality_readings_do_not_count(rig: Rig) -> None:
    for minute in (0, 5, 11):
        rig.feed(DataEnvelope.model_validate({
            "v": 1, "gateway": "gw-plant", "seq": 100 + minute, "sent": T0,
            "readings": [{"device": "boiler-1", "ts": T0 + minute * MIN, "q": "bad",
                          "values": {"nox_converted": 99}}]}), "gw-plant")
    assert rig.rows(alarms) == []


def test_escalation_stops_on_acknowledgement(rig: Rig) -> None:
    rig.events("gw-a", ("lift-1", "trapped_passenger", "raise"), ("lift-2",
                                                                  "trapped_passenger", "raise"))
    first, second = rig.rows(incidents)
    assert rig.channels() == ["dingtalk-north", "dingtalk-north"]
    rig.at(4 * MIN)
    rig.desk.transition(first["id"], "ack", "Li Wei", "on my way")
    rig.at(5 * MIN)
    assert rig.channels()[2:] == ["wecom-supervisors", "email-ops"]
    assert {n.key for _, n in rig.notify.sent[2:]} == {f"incident-{second['id']}"}
    rig.at(10 * MIN - S)
    assert len(rig.notify.sent) == 4
    # nobody arrived within the 10 min SLA: the chain's last audience hears it, once, for each
    rig.at(10 * MIN)
    assert rig.channels()[4:] == ["wecom-supervisors", "email-ops"] * 2
    assert all("nobody on site yet" in n.text for _, n in rig.notify.sent[4:])
    rig.at(60 * MIN)
    assert len(rig.notify.sent) == 8


def test_failed_enqueue_is_retried_by_the_next_tick(rig: Rig) -> None:
    calls: list[str] = []

    def flaky(channel: str, notice: Notice) -> None:
        calls.append(channel)
        if len(calls) == 1:
            raise OSError("queue database locked")

    rig.engine.notify = flaky
    rig.events("gw-a", ("lift-1", "trapped_passenger", "raise"))
    assert rig.rows(incidents)[0]["stages_sent"] == 0
    rig.at(10 * S)
    assert calls == ["dingtalk-north", "dingtalk-north"]
    assert rig.rows(incidents)[0]["stages_sent"] == 1


def test_restart_restores_live_alarms(rig: Rig) -> None:
    rig.events("gw-a", ("lift-1", "alarm_button", "raise"))
    rig.restart()
    rig.clock.now += S
    rig.events("gw-a", ("lift-1", "alarm_button", "clear"))
    assert rig.rows(incidents)[0]["state"] == "resolved"
    assert len(rig.rows(alarms)) == 1


def test_bus_carries_incident_changes(rig: Rig) -> None:
    seen: list[dict[str, Any]] = []
    rig.engine.bus.publish = seen.append  # type: ignore[method-assign]
    rig.events("gw-a", ("lift-1", "trapped_passenger", "raise"))
    rig.desk.transition(rig.rows(incidents)[0]["id"], "ack", "Li Wei")
    # opened with its first stage fired (one message: the page went out first), then acked
    assert [(s["state"], s["unit"], len(s["escalations"])) for s in seen] == [
        ("open", "crew-north", 1), ("acknowledged", "crew-north", 1)]
    assert seen[1]["allowed"] == ["arrive", "resolve"]
    assert seen[1]["assignee"]["name"] == "Li Wei"


def test_hook_errors_never_reach_the_ingest_writer(rig: Rig,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*_a: Any) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr("collector.alarms.repo.save_alarm", boom)
    rig.events("gw-a", ("lift-1", "trapped_passenger", "raise"))  # must not raise
    assert rig.engine.stats.write_errors == 1
    monkeypatch.undo()
    rig.at(S)  # reloads from the database; the raise is lost but the engine lives on
    rig.events("gw-a", ("lift-2", "trapped_passenger", "raise"))
    assert len(rig.rows(incidents)) == 1


SPREAD: dict[str, Any] = {
    **CONFIG,
    # One gateway serving six buildings, each its own site (a concentrator on a street).
    "sites": {f"bldg-{n}": {"name": f"Building {n}", "devices": [f"lift-{n}"], "grid": "north",
                            "unit": "crew-north"} for n in range(1, 7)},
}


def test_gateway_offline_over_six_sites_is_one_incident_listing_its_devices(
        store: Store) -> None:
    rig = Rig(store, SPREAD)
    lifts = [f"lift-{n}" for n in range(1, 7)]
    rig.engine.on_gateway_state("gw-a", "online", lifts)
    rig.engine.on_gateway_state("gw-a", "offline", lifts)
    rig.events("gw-a", ("lift-4", "door_open_fault", "raise"))
    rig.at(2 * MIN)
    [inc] = rig.rows(incidents)
    assert (inc["kind"], inc["device_id"]) == ("gateway_offline", "gw-a")
    assert rig.desk.incident(inc["id"])["devices"] == lifts
    # the building's own fault is explained by the gateway being down: held back
    [held] = [a["held"] for a in rig.rows(alarms) if a["device_id"] == "lift-4"]
    assert held.startswith("suppressed:") and held.endswith("/gw-a/gateway_offline")
    rig.engine.on_gateway_state("gw-a", "online", lifts)
    rig.at(3 * MIN)
    assert rig.desk.incident(inc["id"])["state"] == "resolved"
