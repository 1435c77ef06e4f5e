"""What an incident says when it pages people: title, markdown text, deep link, @-mentions."""

from __future__ import annotations

from typing import Any

from collector.alarms.config import Unit
from collector.alarms.policy import GATEWAY_OFFLINE, SITE_DEVICE
from collector.notify.facts import incident_facts
from collector.notify.model import Notice

_OVERDUE = {"not_acknowledged": "not acknowledged yet",
            "not_arrived": "nobody on site yet (arrival time passed)",
            "not_resolved": "not resolved yet"}


def incident_link(public_url: str, incident_id: int) -> str:
    """Deep link into the crew page, where the incident is acknowledged."""
    return f"{public_url.rstrip('/')}/crew#incident-{incident_id}"


def incident_title(kind: str, severity: str, site_name: str, device: str) -> str:
    """One line, e.g. "[CRITICAL] trapped passenger — lift-t03 at Jinshui Rd 12"."""
    what = kind.replace("_", " ")
    if device == SITE_DEVICE:
        return f"[{severity.upper()}] {what} — {site_name} (whole site)"
    if kind == GATEWAY_OFFLINE:
        return f"[{severity.upper()}] gateway {device} offline — {site_name}"
    return f"[{severity.upper()}] {what} — {device} at {site_name}"


def _on_call(unit: Unit | None, assignee: str | None,
             stage: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    # The first page goes to the incident's one named person; later stages to everyone on call.
    members = [m for m in (unit.members if unit else ()) if m.on_call or m.name == assignee]
    if stage == 0 and any(m.name == assignee for m in members):
        members = [m for m in members if m.name == assignee]
    return (tuple(m.phone for m in members if m.phone),
            tuple(m.email for m in members if m.email))


def page_notice(inc: dict[str, Any], stage: int, unit: Unit | None, public_url: str,
                now: int, card: dict[str, Any] | None = None) -> Notice:
    """The notice of an escalation stage of an incident (its stored row), with the crew card's
    fields (`collector.alarms.card.card_fields`: address, the lift now, contact) as facts."""
    link = incident_link(public_url, inc["id"])
    lines = [f"**{inc['title']}**", "",
             f"- incident: #{inc['id']} ({inc['state']}), unit {inc['unit'] or 'unassigned'}",
             f"- site: {inc['site']}" + (f", grid {inc['grid']}" if inc["grid"] else "")]
    if inc["device_id"] != SITE_DEVICE:
        lines.append(f"- device: {inc['device_id']} (gateway {inc['gateway_id'] or '?'})")
    if inc["occurrences"] > 1:
        lines.append(f"- occurrences: {inc['occurrences']}")
    if inc["device_id"] == SITE_DEVICE or inc["kind"] == GATEWAY_OFFLINE:
        lines.append("- per-device alarms at this site are held back while this lasts")
    if inc.get("assignee"):
        lines.append(f"- assigned to: {inc['assignee']}")
    if stage > 0 and unit is not None and stage < len(unit.escalation):
        overdue = _OVERDUE[unit.escalation[stage].when]
        lines.append(f"- escalation stage {stage + 1}: {overdue}")
    lines += ["", f"[Acknowledge in CityGate]({link})"]
    phones, emails = _on_call(unit, inc.get("assignee"), stage)
    return Notice(key=f"incident-{inc['id']}", title=inc["title"], text="\n".join(lines),
                  severity=inc["severity"], link=link, created_ms=now,
                  mention_phones=phones, emails=emails,
                  facts=incident_facts({**inc, **(card or {})}))

