"""Persistence of alarms, incidents, history and silences: small functions over one connection.

The engine owns the transaction; these functions never commit, so a batch of transitions is one
commit. Queries use the indexes declared in collector.alarms.tables.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import orjson
import sqlalchemy as sa

from collector import schema
from collector.alarms.lifecycle import IncidentTimes
from collector.alarms.policy import AlarmKey, Silence
from collector.alarms.tables import alarms, incident_history, incidents, silences


@dataclass
class AlarmRow:
    """A live alarm episode as the engine keeps it in memory (mirrors one `alarms` row)."""

    site: str
    device: str
    kind: str
    gateway: str
    source: str
    severity: str
    first_seen: int
    last_seen: int
    active: bool = True
    closed: bool = False
    cleared_at: int | None = None
    occurrences: int = 1
    incident_id: int | None = None
    held: str = ""
    message: str = ""
    evidence: dict[str, Any] = field(default_factory=dict)
    id: int | None = None

    @property
    def key(self) -> AlarmKey:
        """The dedup key (site, device, kind)."""
        return (self.site, self.device, self.kind)


def _new_id(result: sa.CursorResult[Any]) -> int:
    key = result.inserted_primary_key
    assert key is not None
    return int(key[0])


def _alarm_values(row: AlarmRow) -> dict[str, Any]:
    v = asdict(row)
    v.pop("id")
    v["device_id"] = v.pop("device")
    v["gateway_id"] = v.pop("gateway")
    v["evidence"] = orjson.dumps(row.evidence).decode()
    return v


def save_alarm(conn: sa.Connection, row: AlarmRow) -> None:
    """Insert a new alarm row (setting its id) or update an existing one."""
    values = _alarm_values(row)
    if row.id is None:
        row.id = _new_id(conn.execute(sa.insert(alarms).values(**values)))
    else:
        conn.execute(sa.update(alarms).where(alarms.c.id == row.id).values(**values))


def _alarm_row(r: Any) -> AlarmRow:
    return AlarmRow(site=r.site, device=r.device_id, kind=r.kind, gateway=r.gateway_id,
                    source=r.source, severity=r.severity, first_seen=r.first_seen,
                    last_seen=r.last_seen, active=bool(r.active), closed=bool(r.closed),
                    cleared_at=r.cleared_at, occurrences=r.occurrences,
                    incident_id=r.incident_id, held=r.held, message=r.message,
                    evidence=orjson.loads(r.evidence or "{}"), id=r.id)


def live_alarms(conn: sa.Connection) -> list[AlarmRow]:
    """Every alarm episode not yet closed."""
    rows = conn.execute(sa.select(alarms).where(alarms.c.closed == sa.false()))
    return [_alarm_row(r) for r in rows]


def list_alarms(conn: sa.Connection, active: bool | None, limit: int) -> list[dict[str, Any]]:
    """Alarms, newest first, optionally only active (or only inactive) ones."""
    stmt = sa.select(alarms).order_by(alarms.c.last_seen.desc(), alarms.c.id.desc()).limit(limit)
    if active is not None:
        stmt = stmt.where(alarms.c.active == active)
    return [asdict(_alarm_row(r)) for r in conn.execute(stmt)]


def close_alarms_of(conn: sa.Connection, incident_id: int) -> None:
    """End the alarm episodes of a closed incident: the next raise starts a new one."""
    conn.execute(sa.update(alarms).where(alarms.c.incident_id == incident_id)
                 .values(closed=True))


# --- incidents ---------------------------------------------------------------------------------

def insert_incident(conn: sa.Connection, values: dict[str, Any]) -> int:
    """Insert an incident and return its id."""
    return _new_id(conn.execute(sa.insert(incidents).values(**values)))


def get_incident(conn: sa.Connection, incident_id: int) -> dict[str, Any] | None:
    """One incident row, or None."""
    row = conn.execute(sa.select(incidents).where(incidents.c.id == incident_id)) \
        .mappings().first()
    return dict(row) if row else None


def update_incident(conn: sa.Connection, incident_id: int, values: dict[str, Any]) -> None:
    """Change fields of an incident."""
    conn.execute(sa.update(incidents).where(incidents.c.id == incident_id).values(**values))


def add_history(conn: sa.Connection, incident_id: int, ts: int, from_state: str | None,
                to_state: str, who: str, note: str = "") -> None:
    """Record one lifecycle step."""
    conn.execute(sa.insert(incident_history).values(
        incident_id=incident_id, ts=ts, from_state=from_state, to_state=to_state, who=who,
        note=note))


def history(conn: sa.Connection, incident_id: int) -> list[dict[str, Any]]:
    """Lifecycle steps of an incident, oldest first."""
    h = incident_history
    rows = conn.execute(sa.select(h).where(h.c.incident_id == incident_id).order_by(h.c.id))
    return [dict(r) for r in rows.mappings()]


def list_incidents(conn: sa.Connection, states: list[str] | None, units: list[str] | None,
                   limit: int) -> list[dict[str, Any]]:
    """Incidents, newest first, filtered by states and units (None: any)."""
    stmt = sa.select(incidents).order_by(incidents.c.id.desc()).limit(limit)
    if states:
        stmt = stmt.where(incidents.c.state.in_(states))
    if units is not None:
        stmt = stmt.where(incidents.c.unit.in_(units))
    return [dict(r) for r in conn.execute(stmt).mappings()]


def incident_times(conn: sa.Connection, since: int,
                   units: list[str] | None) -> list[IncidentTimes]:
    """The timestamps the closed-loop figures are made of, for incidents opened since a time."""
    i = incidents
    stmt = sa.select(i.c.unit, i.c.kind, i.c.opened_at, i.c.acked_at, i.c.resolved_at,
                     i.c.closed_at).where(i.c.opened_at >= since)
    if units is not None:
        stmt = stmt.where(i.c.unit.in_(units))
    return [IncidentTimes(*r) for r in conn.execute(stmt)]


# --- silences ----------------------------------------------------------------------------------

def insert_silence(conn: sa.Connection, values: dict[str, Any]) -> int:
    """Store a silence and return its id."""
    return _new_id(conn.execute(sa.insert(silences).values(**values)))


def delete_silence(conn: sa.Connection, silence_id: int, who: str, now: int) -> bool:
    """Mark a silence deleted (kept for the audit trail); False when there was none."""
    res = conn.execute(sa.update(silences).where(silences.c.id == silence_id,
                                                 silences.c.deleted_at.is_(None))
                       .values(deleted_at=now, deleted_by=who))
    return res.rowcount > 0


def list_silences(conn: sa.Connection, now: int, include_expired: bool) -> list[dict[str, Any]]:
    """Silences not deleted, current and future ones unless expired ones are asked for too."""
    s = silences
    stmt = sa.select(s).where(s.c.deleted_at.is_(None)).order_by(s.c.id)
    if not include_expired:
        stmt = stmt.where(s.c.ends_at > now)
    return [dict(r) for r in conn.execute(stmt).mappings()]


def silence_of(row: dict[str, Any]) -> Silence:
    """The matching rule of a stored silence."""
    return Silence(id=row["id"], starts_at=row["starts_at"], ends_at=row["ends_at"],
                   site=row["site"], device=row["device_id"], kind=row["kind"])


# --- what the collector already knows ---------------------------------------------------------

def inventory(conn: sa.Connection) -> dict[str, set[str]]:
    """Known devices per gateway (from the collector's devices table)."""
    out: dict[str, set[str]] = {}
    for dev, gw in conn.execute(sa.select(schema.devices.c.device_id,
                                          schema.devices.c.gateway_id)):
        out.setdefault(gw, set()).add(dev)
    return out


def raised_faults(conn: sa.Connection, kinds: list[str]) -> list[tuple[str, str]]:
    """(device, kind) of faults currently raised, of the given kinds."""
    af = schema.active_faults
    rows = conn.execute(sa.select(af.c.device_id, af.c.kind).where(af.c.kind.in_(kinds)))
    return [(d, k) for d, k in rows]


def gateway_states(conn: sa.Connection) -> dict[str, str]:
    """Last known online/offline state of every gateway."""
    g = schema.gateways
    return {str(gw): str(st) for gw, st in conn.execute(sa.select(g.c.gateway_id, g.c.state))}
