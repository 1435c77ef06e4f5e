"""Life-safety incidents: nobody loses an entrapment, silences by role, escalation by stage.

The engine is fed the way the ingest feeds it (stored batches handed to `on_stored`); people
act through the REST API.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from collector.alarms import hash_token
from collector.alarms.tables import MIGRATIONS as ALARM_MIGRATIONS
from collector.alarms.tables import _v19, incidents
from collector.store import Store
from devices.contract import DataEnvelope, EventsEnvelope
from devices.model import Value
from devices.sim.elevator import ElevatorModel
from devices.sim.scenarios import SCENARIOS
from edge.rules import ElevatorRules
from tests.collector.test_alarms_engine import CONFIG, MIN, T0, Rig, S, store  # noqa: F401
from tests.collector.test_incidents_api import LI, OPS, ZHAO, make_app

# Li Wei is on call for crew-north but Chen is not; Sun is the second on call. A supervisor
# stage for an unacknowledged entrapment, one for not arrived (at the 10 min SLA) and one for
# not resolved.
SAFE: dict[str, Any] = copy.deepcopy(CONFIG)
SAFE["sites"]["jinshui-12"].update({
    "address": "12 Jinshui Road, Zhengzhou", "building": "Tower A",
    "entrance": "North lobby, lift bank 2", "contact_name": "Property desk",
    "contact_phone": "0371-60000001", "lat": 34.7597, "lon": 113.6651})
SAFE["units"]["crew-north"] = {
    "members": [{"name": "Chen", "phone": "13800000009", "on_call": False},
                {"name": "Li Wei", "phone": "13800000001", "token_hash": hash_token("tok-li")},
                {"name": "Sun", "phone": "13800000002"}],
    "escalation": [{"after": "0s", "channels": ["dingtalk-north"], "to": "crew"},
                   {"after": "3min", "channels": ["wecom-supervisors"], "to": "supervisor"},
                   {"when": "not_arrived", "channels": ["wecom-supervisors"],
                    "to": "supervisor"},
                   {"when": "not_resolved", "after": "1h", "channels": ["email-ops"],
                    "to": "duty manager"}]}


@pytest.fixture
def rig(store: Store) -> Rig:  # noqa: F811
    return Rig(store, SAFE)


@pytest.fixture
def client(rig: Rig) -> Iterator[TestClient]:
    with TestClient(make_app(rig)) as c:
        yield c


def lift_state(rig: Rig, device: str, **values: Value) -> None:
    """The lift's latest readings, stored like a gateway's data message."""
    rig.reading("gw-a", device, rig.clock.now, **values)  # type: ignore[arg-type]


def entrapment(rig: Rig, device: str = "lift-1") -> int:
    lift_state(rig, device, floor=7, door_closed=True, door_zone=False,
               passenger_present=True, car_running=False)
    rig.events("gw-a", (device, "trapped_passenger", "raise"), severity="critical")
    return max(int(i["id"]) for i in rig.rows(incidents))


# --- never lose a life-safety incident ----------------------------------------------------------

def simulate(rig: Rig, seconds: int, model: ElevatorModel, rules: ElevatorRules,
             start: int) -> list[str]:
    """Poll a simulated lift once a second through the edge rules; store what they report."""
    seen = []
    for t in range(start, start + seconds):
        rig.clock.now = T0 + t * S
        values = model.snapshot(t)
        rig.feed(DataEnvelope.model_validate({
            "v": 1, "gateway": "gw-a", "seq": 10_000 + t, "sent": rig.clock.now,
            "readings": [{"device": "lift-1", "ts": rig.clock.now, "values": {
                k: values[k] for k in ("floor", "door_closed", "door_zone",
                                       "passenger_present", "car_running")}}]}), "gw-a")
        events = rules.step(values, float(t), rig.clock.now)
        if events:
            rig.feed(EventsEnvelope.model_validate({
                "v": 1, "gateway": "gw-a", "seq": 20_000 + t, "sent": rig.clock.now,
                "events": [e.to_wire() for e in events]}), "gw-a")
            seen += [f"{e.kind}:{e.action}" for e in events]
        rig.engine.tick()
    return seen


def test_entrapment_that_clears_by_itself_stays_open_until_a_person_acts(
        client: TestClient, rig: Rig) -> None:
    model, rules = ElevatorModel(1, static=True), ElevatorRules("lift-1")
    trapped = SCENARIOS["trapped_passenger"]
    simulate(rig, 10, model, rules, 0)
    trapped.start(model, 10.0)
    assert simulate(rig, 96, model, rules, 10) == ["trapped_passenger:raise"]
    trapped.stop(model, 106.0)  # the scenario ends: the controller levels and opens the door
    assert simulate(rig, 30, model, rules, 106) == ["trapped_passenger:clear"]
    rig.at(2 * 3600 * S)  # hours of escalation ticks later
    [inc] = client.get("/api/v1/incidents", headers=OPS).json()
    assert (inc["state"], inc["resolved_by"], inc["allowed"]) == ("open", None, ["ack"])
    assert inc["life_safety"] is True
    assert inc["awaiting_confirmation"] is True
    assert inc["device_cleared_at"] is not None
    assert inc["condition_present"] is False
    history = client.get(f"/api/v1/incidents/{inc['id']}", headers=OPS).json()["history"]
    assert [(h["event"], h["note"]) for h in history if h["event"] == "device_cleared"] == [
        ("device_cleared", "cleared by device, awaiting confirmation")]
    # time to acknowledge does not leave it out: it counts with the two hours it waited
    stats = client.get("/api/v1/incidents/stats", headers=OPS).json()["total"]
    assert (stats["found"], stats["acknowledged"], stats["unacknowledged"]) == (1, 0, 1)
    opened = T0 + 10 * S + 60 * S  # the edge raises after trapped_after = 60 s
    assert stats["time_to_acknowledge"]["mean_s"] == (2 * 3600 * S - (opened - T0)) / 1000
    # a person confirms: acknowledges, then resolves (the device no longer reports anything)
    url = f"/api/v1/incidents/{inc['id']}"
    assert client.post(f"{url}/ack", headers=LI).json()["awaiting_confirmation"] is True
    done = client.post(f"{url}/resolve", headers=LI, json={"note": "nobody in the car"}).json()
    assert (done["state"], done["resolved_by"], done["awaiting_confirmation"]) == \
        ("resolved", "Li Wei", False)


def test_non_life_safety_kinds_still_auto_resolve(rig: Rig) -> None:
    rig.events("gw-a", ("lift-1", "alarm_button", "raise"))
    rig.events("gw-a", ("lift-1", "alarm_button", "clear"))
    [inc] = rig.rows(incidents)
    assert (inc["state"], inc["resolved_by"]) == ("resolved", "system")


def test_resolve_and_close_with_passenger_present_need_override(client: TestClient,
                                                                rig: Rig) -> None:
    iid = entrapment(rig)
    url = f"/api/v1/incidents/{iid}"
    client.post(f"{url}/ack", headers=LI)
    client.post(f"{url}/arrive", headers=LI)
    refused = client.post(f"{url}/resolve", headers=LI, json={"note": "done"})
    assert refused.status_code == 409
    detail = refused.json()["detail"]
    assert (detail["error"], detail["state"], detail["action"]) == \
        ("condition_present", "on_site", "resolve")
    assert detail["conditions"] == ["trapped_passenger still raised by the device",
                                    "passenger_present"]
    assert "override" in detail["message"]
    # the controller drops the alarm but the presence sensor still sees someone
    rig.clock.now += MIN
    rig.events("gw-a", ("lift-1", "trapped_passenger", "clear"))
    again = client.post(f"{url}/resolve", headers=LI)
    assert again.status_code == 409
    assert again.json()["detail"]["conditions"] == ["passenger_present"]
    assert client.post(f"{url}/resolve", headers=LI, json={"override": True}).status_code == 422
    assert client.get(url, headers=LI).json()["state"] == "on_site"
    forced = client.post(f"{url}/resolve", headers=LI, json={
        "note": "released", "override": True,
        "reason": "presence sensor stuck; car checked empty in person"})
    assert forced.status_code == 200
    assert (forced.json()["state"], forced.json()["overrides"]) == ("resolved", 1)
    # closing over the same condition is refused too, and accepted with an override
    assert client.post(f"{url}/close", headers=OPS).status_code == 409
    closed = client.post(f"{url}/close", headers=OPS, json={
        "override": True, "reason": "sensor ticket #88 raised"}).json()
    assert (closed["state"], closed["overrides"]) == ("closed", 2)
    steps = [h for h in client.get(url, headers=OPS).json()["history"] if h["override"]]
    assert [(h["to"], h["who"], h["override"]) for h in steps] == [
        ("resolved", "Li Wei", {"reason": "presence sensor stuck; car checked empty in person",
                                "conditions": ["passenger_present"]}),
        ("closed", "ops-room", {"reason": "sensor ticket #88 raised",
                                "conditions": ["passenger_present"]})]


def test_resolve_without_override_once_the_passenger_is_out(client: TestClient,
                                                            rig: Rig) -> None:
    iid = entrapment(rig)
    url = f"/api/v1/incidents/{iid}"
    client.post(f"{url}/ack", headers=LI)
    rig.clock.now += MIN
    lift_state(rig, "lift-1", passenger_present=False, door_closed=False, door_zone=True)
    rig.events("gw-a", ("lift-1", "trapped_passenger", "clear"))
    done = client.post(f"{url}/resolve", headers=LI).json()
    assert (done["state"], done["overrides"], done["conditions"]) == ("resolved", 0, [])


# --- silences by role ------------------------------------------------------------------------

def test_crew_cannot_silence_an_entrapment(client: TestClient, rig: Rig) -> None:
    post = client.post
    # a crew member of another unit: neither the kind nor the site
    assert post("/api/v1/silences", headers=ZHAO, json={
        "device": "lift-1", "kind": "trapped_passenger", "duration": "1h"}).status_code == 403
    assert post("/api/v1/silences", headers=ZHAO, json={
        "site": "jinshui-12", "kind": "door_close_fault", "duration": "1h"}).status_code == 403
    # nor any crew, even of the lift's own unit
    own = post("/api/v1/silences", headers=LI, json={
        "device": "lift-1", "kind": "trapped_passenger", "duration": "1h", "reason": "x"})
    assert own.status_code == 403
    assert "only ops" in own.json()["detail"]
    assert post("/api/v1/silences", headers=LI, json={
        "device": "lift-1", "duration": "1h", "life_safety": True}).status_code == 403
    assert post("/api/v1/silences", headers=LI, json={
        "kind": "door_close_fault", "duration": "1h"}).status_code == 403  # no site or device
    assert post("/api/v1/silences", headers=LI, json={
        "device": "lift-1", "duration": "5h"}).status_code == 422  # longer than 4 h
    # a crew silence of the whole lift holds its door faults, never an entrapment
    sil = post("/api/v1/silences", headers=LI, json={
        "device": "lift-1", "duration": "2h", "reason": "door operator swap"}).json()
    assert (sil["role"], sil["unit"], sil["life_safety"]) == ("crew", "crew-north", False)
    rig.events("gw-a", ("lift-1", "door_close_fault", "raise"))
    iid = entrapment(rig)
    rig.at(MIN)
    assert [(i["id"], i["kind"]) for i in client.get("/api/v1/incidents", headers=OPS).json()] \
        == [(iid, "trapped_passenger")]
    assert len(rig.rows(incidents)) == 1


def test_ops_silence_of_an_entrapment_needs_a_reason_and_crew_cannot_end_it(
        client: TestClient, rig: Rig) -> None:
    body = {"device": "lift-2", "kind": "trapped_passenger", "duration": "8h"}
    assert client.post("/api/v1/silences", headers=OPS, json=body).status_code == 422
    made = client.post("/api/v1/silences", headers=OPS,
                       json={**body, "reason": "car out of service for modernisation"})
    assert made.status_code == 201
    sil = made.json()
    assert (sil["role"], sil["life_safety"], sil["created_by"]) == ("ops", True, "ops-room")
    rig.events("gw-a", ("lift-2", "trapped_passenger", "raise"), severity="critical")
    assert rig.rows(incidents) == []
    assert client.delete(f"/api/v1/silences/{sil['id']}", headers=LI).status_code == 403
    mine = client.post("/api/v1/silences", headers=LI,
                       json={"device": "lift-3", "duration": "1h"}).json()
    assert client.delete(f"/api/v1/silences/{mine['id']}", headers=ZHAO).status_code == 403
    assert client.delete(f"/api/v1/silences/{mine['id']}", headers=LI).status_code == 204
    audit = client.get("/api/v1/silences?include_expired=true&include_deleted=true",
                       headers=OPS).json()
    assert [(s["id"], s["created_by"], s["deleted_by"], s["in_force"]) for s in audit] == [
        (sil["id"], "ops-room", None, True), (mine["id"], "Li Wei", "Li Wei", False)]
    assert [s["id"] for s in client.get("/api/v1/silences", headers=ZHAO).json()] == [sil["id"]]


# --- escalation by stage, one named person ---------------------------------------------------

def test_not_arrived_escalation_fires_at_its_time_and_stops_on_arrival(
        client: TestClient, rig: Rig) -> None:
    first = entrapment(rig, "lift-1")
    second = entrapment(rig, "lift-2")
    assert rig.channels() == ["dingtalk-north", "dingtalk-north"]
    rig.at(MIN)
    for iid in (first, second):
        client.post(f"/api/v1/incidents/{iid}/ack", headers=LI)
    rig.at(10 * MIN - S)
    assert len(rig.notify.sent) == 2  # acknowledged in time: no supervisor for "ack overdue"
    card = client.get(f"/api/v1/incidents/{first}", headers=LI).json()
    assert card["next_escalation"]["text"] == "not arrived → supervisor"
    assert card["next_escalation"]["due_at"] == "2026-01-01T00:10:00.000Z"
    assert card["arrival_overdue"] is False
    client.post(f"/api/v1/incidents/{first}/arrive", headers=LI)  # arrives in time
    rig.at(10 * MIN)
    assert rig.channels()[2:] == ["wecom-supervisors"]
    [(_, notice)] = rig.notify.sent[2:]
    assert notice.key == f"incident-{second}"
    assert "escalation stage 3: nobody on site yet" in notice.text
    late = client.get(f"/api/v1/incidents/{second}", headers=LI).json()
    assert [e["text"] for e in late["escalations"]] == ["page → crew",
                                                        "not arrived → supervisor"]
    assert late["escalations"][1]["at"] == "2026-01-01T00:10:00.000Z"
    assert late["arrival_overdue"] is True
    assert late["next_escalation"]["text"] == "not resolved → duty manager"
    on_time = client.get(f"/api/v1/incidents/{first}", headers=LI).json()
    assert [e["label"] for e in on_time["escalations"]] == ["page"]
    client.post(f"/api/v1/incidents/{second}/arrive", headers=LI)
    rig.at(59 * MIN)
    assert len(rig.notify.sent) == 3  # arrival stopped it; no repeat of the stage
    rig.at(60 * MIN)
    assert rig.channels()[3:] == ["email-ops", "email-ops"]  # neither is resolved after 1 h


def test_ack_overdue_escalation_names_its_stage(client: TestClient, rig: Rig) -> None:
    iid = entrapment(rig)
    rig.at(3 * MIN)
    card = client.get(f"/api/v1/incidents/{iid}", headers=LI).json()
    assert [(e["label"], e["to"], e["at"]) for e in card["escalations"]] == [
        ("page", "crew", "2026-01-01T00:00:00.000Z"),
        ("ack overdue", "supervisor", "2026-01-01T00:03:00.000Z")]
    history = client.get(f"/api/v1/incidents/{iid}", headers=OPS).json()["history"]
    assert [h["note"] for h in history if h["event"] == "escalation"] == [
        "escalation fired: page → crew", "escalation fired: ack overdue → supervisor"]


def test_one_named_person_is_paged_first_and_can_be_replaced(client: TestClient,
                                                             rig: Rig) -> None:
    iid = entrapment(rig)
    card = client.get(f"/api/v1/incidents/{iid}", headers=LI).json()
    assert card["assignee"] == {"name": "Li Wei", "phone": "13800000001", "unit": "crew-north"}
    [(_, first)] = rig.notify.sent
    assert first.mention_phones == ("13800000001",)  # Chen is off call; Sun waits
    rig.at(3 * MIN)
    assert rig.notify.sent[1][1].mention_phones == ("13800000001", "13800000002")
    moved = client.post(f"/api/v1/incidents/{iid}/assign", headers=LI,
                        json={"member": "Sun", "note": "closer to site"})
    assert moved.json()["assignee"]["name"] == "Sun"
    assert client.post(f"/api/v1/incidents/{iid}/assign", headers=LI,
                       json={"member": "Nobody"}).status_code == 422
    assert client.post(f"/api/v1/incidents/{iid}/assign", headers=LI,
                       json={"unit": "env-east"}).status_code == 403
    assert client.post(f"/api/v1/incidents/{iid}/assign", headers=ZHAO,
                       json={"member": "Zhao"}).status_code == 403
    handed = client.post(f"/api/v1/incidents/{iid}/assign", headers=OPS,
                         json={"unit": "env-east"}).json()
    assert (handed["unit"], handed["assignee"]["name"]) == ("env-east", "Zhao")
    rig.at(5 * MIN + S)  # env-east's first stage is 2 min after it got the incident
    assert rig.channels()[-1] == "wecom-env"
    history = client.get(f"/api/v1/incidents/{iid}", headers=OPS).json()["history"]
    assert [(h["who"], h["note"]) for h in history if h["event"] == "assigned"] == [
        ("Li Wei", "assigned to Sun (crew-north): closer to site"),
        ("ops-room", "assigned to Zhao (env-east)")]


# --- where to go ------------------------------------------------------------------------------

def test_card_says_where_to_go_and_how_urgent(client: TestClient, rig: Rig) -> None:
    rig.events("gw-a", ("lift-3", "door_close_fault", "raise"))
    rig.at(31 * S)
    rig.feed(EventsEnvelope.model_validate({
        "v": 1, "gateway": "gw-a", "seq": 900, "sent": rig.clock.now,
        "events": [{"device": "lift-2", "ts": rig.clock.now, "kind": "gbt24476_fault",
                    "action": "raise", "severity": "major", "code": 2,
                    "evidence": {"fault_code": 2}}]}), "gw-a")
    iid = entrapment(rig)
    rig.at(62 * S)  # the controller fault waited for group_wait: the newest incident
    newest = client.get("/api/v1/incidents?state=active", headers=LI).json()
    assert [c["kind"] for c in newest] == ["gbt24476_fault", "trapped_passenger",
                                           "door_close_fault"]
    urgent = client.get("/api/v1/incidents?state=active&order=urgency", headers=LI).json()
    assert [(c["kind"], c["severity_rank"]) for c in urgent] == [
        ("trapped_passenger", 0), ("door_close_fault", 1), ("gbt24476_fault", 1)]
    card = next(c for c in client.get("/api/v1/incidents", headers=LI).json() if c["id"] == iid)
    assert card["site_info"] == {
        "id": "jinshui-12", "name": "Jinshui Rd 12", "address": "12 Jinshui Road, Zhengzhou",
        "building": "Tower A", "entrance": "North lobby, lift bank 2",
        "lat": 34.7597, "lon": 113.6651,
        "contact": {"name": "Property desk", "phone": "0371-60000001"}}
    assert card["lift"] == {"floor": 7, "door": "closed", "door_zone": False,
                            "passenger_present": True, "car_running": False,
                            "service_mode": None, "at": "2026-01-01T00:00:31.000Z"}
    assert card["fault"] == {"kind": "trapped_passenger", "code": None,
                             "en": "Passenger trapped in the car", "zh": "困人"}
    assert card["trapped_since"] == "2026-01-01T00:00:31.000Z"
    assert (card["arrival_sla_s"], card["arrive_by"]) == (600, "2026-01-01T00:10:31.000Z")
    coded = next(c for c in client.get("/api/v1/incidents", headers=LI).json()
                 if c["kind"] == "gbt24476_fault")
    assert coded["fault"] == {"kind": "gbt24476_fault", "code": 2, "en": "Door close fault",
                              "zh": "关门故障"}
    assert (coded["trapped_since"], coded["arrival_sla_s"]) == (None, None)


# --- time to arrive --------------------------------------------------------------------------

def test_stats_include_time_to_arrive_with_share_within_sla(client: TestClient,
                                                            rig: Rig) -> None:
    a, b = entrapment(rig, "lift-1"), entrapment(rig, "lift-2")
    c = entrapment(rig, "lift-3")
    rig.clock.now = T0 + MIN
    for iid in (a, b, c):
        client.post(f"/api/v1/incidents/{iid}/ack", headers=LI)
    rig.clock.now = T0 + 5 * MIN
    client.post(f"/api/v1/incidents/{a}/arrive", headers=LI)
    rig.clock.now = T0 + 15 * MIN
    client.post(f"/api/v1/incidents/{b}/arrive", headers=LI)
    rig.clock.now = T0 + 20 * MIN  # c: nobody there yet, 10 minutes past its SLA
    stats = client.get("/api/v1/incidents/stats", headers=OPS).json()
    expected = {"mean_s": 600.0, "p90_s": 900.0, "arrived": 2, "with_sla": 3,
                "within_sla": 1, "share_within_sla": 0.333}
    assert stats["units"]["crew-north"]["time_to_arrive"] == expected
    assert stats["kinds"]["trapped_passenger"]["time_to_arrive"] == expected
    assert stats["total"]["time_to_arrive"] == expected


# --- migration ----------------------------------------------------------------------------------

def test_migration_19_adds_columns_to_existing_tables(store: Store) -> None:  # noqa: F811
    assert ALARM_MIGRATIONS.steps[-1][0] == 19
    with store.engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE incident_escalations"))
        for table, column in [("incidents", "assignee"), ("incidents", "overrides"),
                              ("incident_history", "event"), ("silences", "life_safety")]:
            conn.execute(sa.text(f"ALTER TABLE {table} DROP COLUMN {column}"))
        conn.execute(sa.text(
            "INSERT INTO silences (site, starts_at, ends_at, created_by, created_at) "
            "VALUES ('jinshui-12', 0, 1, 'old', 0)"))
    with store.engine.begin() as conn:
        _v19(conn)
    with store.engine.connect() as conn:
        row = conn.execute(sa.text("SELECT role, life_safety FROM silences")).one()
        cols = {c["name"] for c in sa.inspect(conn).get_columns("incidents")}
    assert (row[0], bool(row[1])) == ("ops", False)  # an old silence never holds an entrapment
    assert {"assignee", "overrides"} <= cols


def test_site_name_and_coordinates_come_from_the_registry_when_config_has_none(
        client: TestClient, rig: Rig) -> None:
    from collector.registry.tables import sites as reg_sites

    with rig.store.engine.begin() as conn:
        reg_sites.create(conn, checkfirst=True)
        conn.execute(sa.insert(reg_sites).values(site_id="plant-7", name="Boiler house 7",
                                                 lat=34.8012, lon=113.7021, created=0))
    rig.events("gw-plant", ("boiler-1", "alarm_button", "raise"))
    [card] = client.get("/api/v1/incidents", headers=OPS).json()
    assert {k: card["site_info"][k] for k in ("id", "name", "lat", "lon", "address")} == {
        "id": "plant-7", "name": "Boiler house 7", "lat": 34.8012, "lon": 113.7021,
        "address": ""}
    assert card["lift"] is None  # no lift readings for a boiler


def test_the_page_of_an_entrapment_carries_where_to_go(rig: Rig) -> None:
    entrapment(rig)
    [(_, page)] = rig.notify.sent
    facts = {f.key: f for f in page.facts}
    assert "12 Jinshui Road, Zhengzhou" in facts["address"].value
    assert "7" in facts["floor"].value
    assert facts["contact"].href == "tel:037160000001"
    assert facts["assignee"].value.startswith("Li Wei")
    assert facts["trapped_for"].since_ms == rig.clock.now
