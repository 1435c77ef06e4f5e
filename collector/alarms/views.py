"""Public JSON forms of incidents, history, alarms and silences (what the API and streams send)."""

from __future__ import annotations

from typing import Any

import orjson

from collector.alarms.lifecycle import State, allowed_actions
from collector.alarms.notices import incident_link
from collector.clock import iso


def incident_view(row: dict[str, Any], public_url: str) -> dict[str, Any]:
    """An incident as the API returns it: ISO times, who did each step, what may come next."""
    return {
        "id": row["id"], "state": row["state"], "unit": row["unit"], "site": row["site"],
        "grid": row["grid"], "area": row.get("area", ""), "district": row.get("district", ""),
        "found_by": row.get("found_by", "device"),
        "routing": {"unit": row["unit"], "reason": row.get("route_reason", "")},
        "kind": row["kind"], "device": row["device_id"],
        "gateway": row["gateway_id"], "severity": row["severity"], "title": row["title"],
        "occurrences": row["occurrences"],
        "opened_at": iso(row["opened_at"]),
        "acknowledged_at": iso(row["acked_at"]), "acknowledged_by": row["acked_by"],
        "on_site_at": iso(row["arrived_at"]), "on_site_by": row["arrived_by"],
        "resolved_at": iso(row["resolved_at"]), "resolved_by": row["resolved_by"],
        "closed_at": iso(row["closed_at"]), "closed_by": row["closed_by"],
        "escalation_stages_sent": row["stages_sent"],
        "allowed": allowed_actions(State(row["state"])),
        "link": incident_link(public_url, row["id"]),
        "updated_at": iso(row["updated_at"]),
    }


def history_view(row: dict[str, Any]) -> dict[str, Any]:
    """One step: who, when, what (`event`), and the override when the step was forced."""
    override = None
    if row["override_reason"] is not None:
        override = {"reason": row["override_reason"],
                    "conditions": orjson.loads(row["conditions"] or "[]")}
    return {"at": iso(row["ts"]), "from": row["from_state"], "to": row["to_state"],
            "who": row["who"], "note": row["note"], "event": row["event"] or "transition",
            "override": override}


def alarm_view(row: dict[str, Any]) -> dict[str, Any]:
    """An alarm episode; `held` says why it has no incident (wait, silenced:…, suppressed:…)."""
    return {
        "id": row["id"], "site": row["site"], "device": row["device"], "kind": row["kind"],
        "gateway": row["gateway"], "source": row["source"], "severity": row["severity"],
        "active": row["active"], "occurrences": row["occurrences"],
        "first_seen": iso(row["first_seen"]), "last_seen": iso(row["last_seen"]),
        "cleared_at": iso(row["cleared_at"]), "incident_id": row["incident_id"],
        "held": row["held"], "message": row["message"], "evidence": row["evidence"],
    }


def silence_view(row: dict[str, Any], now: int) -> dict[str, Any]:
    """A maintenance window and whether it is in force now."""
    return {
        "id": row["id"], "site": row["site"], "device": row["device_id"], "kind": row["kind"],
        "starts_at": iso(row["starts_at"]), "ends_at": iso(row["ends_at"]),
        "created_by": row["created_by"], "reason": row["reason"],
        "created_at": iso(row["created_at"]), "role": row["role"], "unit": row["unit"],
        "life_safety": bool(row["life_safety"]),
        "deleted_at": iso(row["deleted_at"]), "deleted_by": row["deleted_by"],
        "in_force": row["starts_at"] <= now < row["ends_at"] and row["deleted_at"] is None,
    }
