"""What a crew card needs of an incident: where to go, the lift now, how urgent, who, what fired.

`describe` reads what the incident rows do not hold (the alarm episode, the device's latest
readings, the escalation stages fired) in three queries for any number of incidents, then
`card_fields` — pure — turns one row and those facts into the fields the API adds.
"""

from __future__ import annotations

import functools
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from collector.alarms import repo
from collector.alarms.config import AlarmsConfig, Member
from collector.alarms.lifecycle import ACTIVE_STATES
from collector.alarms.policy import (
    GATEWAY_OFFLINE,
    SITE_DEVICE,
    EscalationView,
    next_escalation,
    stage_label,
)
from collector.alarms.repo import SEVERITY_RANK
from collector.alarms.views import incident_view
from collector.clock import iso

FAULTS_FILE = Path(__file__).with_name("faults.toml")
LIFT_POINTS = ("floor", "door_closed", "door_zone", "passenger_present", "car_running",
               "service_mode")
_CODED_KINDS = {"gbt24476_fault": "gbt24476", "gbt24476_event": "gbt24476"}


@functools.cache
def fault_names() -> dict[str, dict[str, dict[str, str]]]:
    """The plain-language names of kinds and codes (faults.toml), read once."""
    with FAULTS_FILE.open("rb") as f:
        return tomllib.load(f)


def fault_name(kind: str, code: int | None) -> dict[str, Any]:
    """Name of a fault in English and Chinese: the code's, else the kind's, else the kind."""
    names = fault_names()
    table = _CODED_KINDS.get(kind)
    found = names.get(table, {}).get(str(code)) if table and code is not None else None
    found = found or names.get("kinds", {}).get(kind)
    plain = kind.replace("_", " ")
    return {"kind": kind, "code": code, "en": (found or {}).get("en", plain),
            "zh": (found or {}).get("zh", plain)}


@dataclass
class Facts:
    """What the database says of some incidents beyond their rows."""

    alarms: dict[int, dict[str, Any]] = field(default_factory=dict)
    points: dict[str, dict[str, tuple[Any, int]]] = field(default_factory=dict)
    escalations: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    registry: dict[str, dict[str, Any]] = field(default_factory=dict)  # sites' name, lat, lon


def gather(conn: sa.Connection, cfg: AlarmsConfig, rows: list[dict[str, Any]]) -> Facts:
    """The alarm episodes, device readings and fired stages of some incidents."""
    quantities = {*LIFT_POINTS, *(q for qs in cfg.still_present.values() for q in qs)}
    devices = [r["device_id"] for r in rows if r["device_id"] != SITE_DEVICE]
    unplaced = [r["site"] for r in rows if (s := cfg.sites.get(r["site"])) is None
                or s.lat is None]
    return Facts(repo.incident_alarms(conn, [r["alarm_id"] for r in rows]),
                 repo.latest_points(conn, devices, sorted(quantities)),
                 repo.escalations_of(conn, [r["id"] for r in rows]),
                 repo.registry_sites(conn, unplaced))


def conditions(row: dict[str, Any], facts: Facts, cfg: AlarmsConfig) -> list[str]:
    """What the device still reports of an incident's condition ([] when nothing)."""
    out = []
    alarm = facts.alarms.get(row["alarm_id"])
    if alarm is not None and alarm["active"] and not alarm["closed"]:
        out.append(f"{row['kind']} still raised by the device")
    points = facts.points.get(row["device_id"], {})
    out += [q for q in cfg.still_present.get(row["kind"], ())
            if q in points and points[q][0] is True]
    return out


def _member(cfg: AlarmsConfig, unit: str, name: str | None) -> Member | None:
    u = cfg.units.get(unit)
    return next((m for m in u.members if m.name == name), None) if u else None


def _site(cfg: AlarmsConfig, site_id: str, facts: Facts) -> dict[str, Any]:
    """The site as configured; name and coordinates from the registry when config has none."""
    s = cfg.sites.get(site_id)
    reg = facts.registry.get(site_id, {})
    lat, lon = (s.lat, s.lon) if s is not None and s.lat is not None \
        else (reg.get("lat"), reg.get("lon"))
    name = (s.name if s is not None else "") or reg.get("name") or site_id
    if s is None:
        return {"id": site_id, "name": name, "address": "", "building": "", "entrance": "",
                "lat": lat, "lon": lon, "contact": {"name": "", "phone": ""}}
    return {"id": site_id, "name": name, "address": s.address, "building": s.building,
            "entrance": s.entrance, "lat": lat, "lon": lon,
            "contact": {"name": s.contact_name, "phone": s.contact_phone}}


def _lift(points: dict[str, tuple[Any, int]]) -> dict[str, Any] | None:
    seen = {q: points[q] for q in LIFT_POINTS if q in points}
    if not seen:
        return None
    value = {q: v for q, (v, _ts) in seen.items()}
    closed = value.get("door_closed")
    return {"floor": value.get("floor"),
            "door": None if closed is None else ("closed" if closed else "open"),
            "door_zone": value.get("door_zone"),
            "passenger_present": value.get("passenger_present"),
            "car_running": value.get("car_running"),
            "service_mode": value.get("service_mode"),
            "at": iso(max(ts for _v, ts in seen.values()))}


def _fired_view(e: dict[str, Any]) -> dict[str, Any]:
    label = stage_label(e["condition"], e["stage"])
    return {"stage": e["stage"], "unit": e["unit"], "when": e["condition"], "label": label,
            "to": e["audience"], "channels": e["channels"], "at": iso(e["fired_at"]),
            "text": f"{label} → {e['audience']}"}


def escalation_view(row: dict[str, Any], cfg: AlarmsConfig,
                    fired: list[dict[str, Any]]) -> EscalationView:
    """What the escalation policy needs of an incident, given the stages it fired."""
    return EscalationView(
        row["state"], row["unit_since"] or row["opened_at"],
        frozenset(e["stage"] for e in fired if e["unit"] == row["unit"]),
        row["kind"] in cfg.immediate_kinds, cfg.arrive_within_ms.get(row["kind"]))


def _next(row: dict[str, Any], cfg: AlarmsConfig,
          fired: list[dict[str, Any]]) -> dict[str, Any] | None:
    unit = cfg.units.get(row["unit"])
    chain = unit.escalation if unit else ()
    nxt = next_escalation(escalation_view(row, cfg, fired), chain)
    if nxt is None:
        return None
    i, due = nxt
    label = stage_label(chain[i].when, i)
    return {"stage": i, "when": chain[i].when, "label": label, "to": chain[i].audience,
            "due_at": iso(due), "text": f"{label} → {chain[i].audience}"}


def card_fields(row: dict[str, Any], facts: Facts, cfg: AlarmsConfig,
                now: int) -> dict[str, Any]:
    """The fields a crew card and the ops page need beyond the incident row."""
    kind, state = row["kind"], row["state"]
    life = kind in cfg.life_safety_kinds
    alarm = facts.alarms.get(row["alarm_id"]) or {}
    code = (alarm.get("evidence") or {}).get("fault_code")
    present = conditions(row, facts, cfg)
    member = _member(cfg, row["unit"], row["assignee"])
    sla = cfg.arrive_within_ms.get(kind)
    arrive_by = None if sla is None else row["opened_at"] + sla
    fired = facts.escalations.get(row["id"], [])
    return {
        "severity_rank": SEVERITY_RANK.get(row["severity"], len(SEVERITY_RANK)),
        "life_safety": life,
        "fault": fault_name(kind, code if isinstance(code, int) else None),
        "trapped_since": iso(alarm.get("first_seen")) if life else None,
        "device_cleared_at": iso(row["device_cleared_at"]),
        "awaiting_confirmation": life and row["device_cleared_at"] is not None
        and state in ACTIVE_STATES,
        "condition_present": bool(present),
        "conditions": present,
        "assignee": None if not row["assignee"] else {
            "name": row["assignee"], "phone": member.phone if member else "",
            "unit": row["unit"]},
        "site_info": _site(cfg, row["site"], facts),
        "lift": _lift(facts.points.get(row["device_id"], {})),
        "arrival_sla_s": None if sla is None else sla // 1000,
        "arrive_by": iso(arrive_by),
        "arrival_overdue": arrive_by is not None and row["arrived_at"] is None
        and state in ("open", "acknowledged") and now >= arrive_by,
        "escalations": [_fired_view(e) for e in fired],
        "next_escalation": _next(row, cfg, fired),
        "overrides": row["overrides"],
        "devices": devices_of(row, alarm),
        "age_s": age_s(row, now),
        "sla": sla_view(row, sla, now),
        "district": row.get("district") or row["grid"],  # no outlines: the grid names it
    }


def devices_of(row: dict[str, Any], alarm: dict[str, Any]) -> list[str]:
    """The devices an incident is about: every device behind a gateway that is down."""
    if row["kind"] == GATEWAY_OFFLINE:
        listed = (alarm.get("evidence") or {}).get("device_ids")
        return [str(d) for d in listed] if isinstance(listed, list) else []
    return [] if row["device_id"] == SITE_DEVICE else [row["device_id"]]


def age_s(row: dict[str, Any], now: int) -> float:
    """How long the incident has been open, or was open until it was resolved or closed."""
    end = now if row["state"] in ACTIVE_STATES else \
        (row["resolved_at"] or row["closed_at"] or now)
    return max(0.0, (end - row["opened_at"]) / 1000)


def sla_view(row: dict[str, Any], target_ms: int | None, now: int) -> dict[str, Any]:
    """Where an incident stands against its arrival SLA, with the colour the ops map uses.

    ok (green) while more than a quarter of the target is left, due_soon (amber) in the last
    quarter, breached (red) past it; met (green) or missed (red) once someone arrived; none
    (grey) when the kind has no SLA or the incident ended before anyone had to go.
    """
    if target_ms is None:
        return {"state": "none", "colour": "grey", "target_s": None, "due_at": None}
    due = row["opened_at"] + target_ms
    arrived = row["arrived_at"]
    if arrived is not None:
        state = "met" if arrived <= due else "missed"
    elif row["state"] not in ACTIVE_STATES:
        state = "none"
    elif now >= due:
        state = "breached"
    else:
        state = "due_soon" if due - now <= target_ms // 4 else "ok"
    colour = {"ok": "green", "met": "green", "due_soon": "amber", "breached": "red",
              "missed": "red", "none": "grey"}[state]
    return {"state": state, "colour": colour, "target_s": target_ms / 1000, "due_at": iso(due)}


def describe(conn: sa.Connection, cfg: AlarmsConfig, public_url: str,
             rows: list[dict[str, Any]], now: int) -> list[dict[str, Any]]:
    """Incidents as the API returns them, with everything the crew card needs."""
    facts = gather(conn, cfg, rows)
    return [{**incident_view(r, public_url), **card_fields(r, facts, cfg, now)} for r in rows]
