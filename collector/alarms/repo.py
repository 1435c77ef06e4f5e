"""Persistence of alarms, incidents, history and silences: small functions over one connection.

The engine owns the transaction; these functions never commit, so a batch of transitions is one
commit. Queries use the indexes declared in collector.alarms.tables.
"""

from __future__ import annotations

import weakref
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson
import sqlalchemy as sa

from collector import schema
from collector.alarms.lifecycle import IncidentTimes
from collector.alarms.policy import AlarmKey, Silence
from collector.alarms.tables import (
    alarms,
    incident_escalations,
    incident_history,
    incidents,
    silences,
)
from collector.store import typed_value


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
                to_state: str, who: str, note: str = "", *, event: str = "transition",
                override_reason: str | None = None,
                conditions: list[str] | None = None) -> None:
    """Record one step: a transition, or an event (assigned, escalation, device cleared, ...)."""
    conn.execute(sa.insert(incident_history).values(
        incident_id=incident_id, ts=ts, from_state=from_state, to_state=to_state, who=who,
        note=note, event=event, override_reason=override_reason,
        conditions=None if conditions is None else orjson.dumps(conditions).decode()))


def history(conn: sa.Connection, incident_id: int) -> list[dict[str, Any]]:
    """Lifecycle steps of an incident, oldest first."""
    h = incident_history
    rows = conn.execute(sa.select(h).where(h.c.incident_id == incident_id).order_by(h.c.id))
    return [dict(r) for r in rows.mappings()]


SEVERITY_RANK = {"critical": 0, "major": 1, "minor": 2, "warning": 3, "info": 4}


def severity_rank(column: sa.ColumnElement[Any]) -> sa.ColumnElement[int]:
    """0 for critical … 4 for info, 5 for anything else, in SQL."""
    return sa.case(SEVERITY_RANK, value=column, else_=len(SEVERITY_RANK))


@dataclass(frozen=True, slots=True)
class IncidentFilter:
    """Which incidents a list shows (None: any) and in what order."""

    states: list[str] | None = None
    units: list[str] | None = None
    kinds: list[str] | None = None
    grids: list[str] | None = None
    sites: list[str] | None = None
    sort: str = "-opened_at"


def _order(sort: str) -> tuple[sa.ColumnElement[Any], ...]:
    """SQL order of a list sort key; `-` in front reverses it, ties by id."""
    i = incidents
    if sort == "urgency":
        return (severity_rank(i.c.severity), i.c.opened_at, i.c.id)
    desc = sort.startswith("-")
    key = sort.lstrip("-")
    column: sa.ColumnElement[Any] = {
        "opened_at": i.c.opened_at, "age": -i.c.opened_at, "severity": severity_rank(i.c.severity),
        "state": i.c.state, "unit": i.c.unit, "kind": i.c.kind, "district": i.c.grid,
        "site": i.c.site, "id": i.c.id}[key]
    return (column.desc(), i.c.id.desc()) if desc else (column.asc(), i.c.id.asc())


SORT_KEYS = ("opened_at", "age", "severity", "state", "unit", "kind", "district", "site", "id")


def list_incidents(conn: sa.Connection, states: list[str] | None, units: list[str] | None,
                   limit: int, urgency: bool = False,
                   where: IncidentFilter | None = None) -> list[dict[str, Any]]:
    """Incidents filtered by states and units (None: any): newest first, or most urgent first
    (severity, then the longest waiting); `where` adds filters and another order."""
    i = incidents
    f = where or IncidentFilter()
    order = _order("urgency" if urgency else f.sort)
    stmt = sa.select(incidents).order_by(*order).limit(limit)
    for column, wanted in ((i.c.state, states), (i.c.kind, f.kinds), (i.c.grid, f.grids),
                           (i.c.site, f.sites)):
        if wanted:
            stmt = stmt.where(column.in_(wanted))
    if units is not None:
        stmt = stmt.where(incidents.c.unit.in_(units))
    return [dict(r) for r in conn.execute(stmt).mappings()]


def incident_times(conn: sa.Connection, since: int, units: list[str] | None,
                   arrive_within: dict[str, int]) -> list[IncidentTimes]:
    """The timestamps the closed-loop figures are made of, for incidents opened since a time."""
    i = incidents
    stmt = sa.select(i.c.unit, i.c.kind, i.c.opened_at, i.c.acked_at, i.c.resolved_at,
                     i.c.closed_at, i.c.arrived_at, i.c.resolved_by).where(i.c.opened_at >= since)
    if units is not None:
        stmt = stmt.where(i.c.unit.in_(units))
    return [IncidentTimes(*r[:7], auto_resolved=r.resolved_by == "system",
                          arrive_within_ms=arrive_within.get(r.kind))
            for r in conn.execute(stmt)]


def incident_alarms(conn: sa.Connection, alarm_ids: list[int]) -> dict[int, dict[str, Any]]:
    """The alarm episodes behind incidents, by id (first seen, still active, evidence)."""
    if not alarm_ids:
        return {}
    rows = conn.execute(sa.select(alarms).where(alarms.c.id.in_(sorted(set(alarm_ids)))))
    return {r.id: asdict(_alarm_row(r)) for r in rows}


def latest_points(conn: sa.Connection, devices: list[str],
                  quantities: list[str]) -> dict[str, dict[str, tuple[Any, int]]]:
    """Latest good value and its time of some quantities of some devices."""
    if not devices or not quantities:
        return {}
    t = schema.latest
    rows = conn.execute(sa.select(t.c.device_id, t.c.quantity, t.c.ts, t.c.value, t.c.vtext)
                        .where(t.c.device_id.in_(sorted(set(devices))),
                               t.c.quantity.in_(quantities), t.c.quality == "good"))
    out: dict[str, dict[str, tuple[Any, int]]] = {}
    for r in rows:
        out.setdefault(r.device_id, {})[r.quantity] = (
            typed_value(r.quantity, r.value, r.vtext), int(r.ts))
    return out


_REGISTRY_SEEN: weakref.WeakSet[sa.Engine] = weakref.WeakSet()  # databases with reg_sites


def registry_sites(conn: sa.Connection, site_ids: list[str]) -> dict[str, dict[str, Any]]:
    """Name and coordinates of sites in the gateway registry (none when it is not installed)."""
    if not site_ids:
        return {}
    if conn.engine not in _REGISTRY_SEEN:  # tables are never dropped: ask until it is there
        if not sa.inspect(conn).has_table("reg_sites"):
            return {}
        _REGISTRY_SEEN.add(conn.engine)
    t = sa.table("reg_sites", sa.column("site_id"), sa.column("name"), sa.column("lat"),
                 sa.column("lon"))
    rows = conn.execute(sa.select(t).where(t.c.site_id.in_(sorted(set(site_ids)))))
    return {r.site_id: {"name": r.name, "lat": r.lat, "lon": r.lon} for r in rows}


def gateway_of(conn: sa.Connection, device: str) -> str:
    """The gateway a device last reported through ("" when unknown)."""
    d = schema.devices
    return str(conn.scalar(sa.select(d.c.gateway_id).where(d.c.device_id == device)) or "")


# --- escalations -------------------------------------------------------------------------------

def add_escalation(conn: sa.Connection, incident_id: int, unit: str, stage: int,
                   condition: str, audience: str, channels: list[str], now: int) -> bool:
    """Record a fired stage; False when that stage of that unit had already fired."""
    e = incident_escalations
    seen = conn.execute(sa.select(e.c.id).where(e.c.incident_id == incident_id,
                                                e.c.unit == unit, e.c.stage == stage)).first()
    if seen is not None:
        return False
    conn.execute(sa.insert(e).values(incident_id=incident_id, unit=unit, stage=stage,
                                     condition=condition, audience=audience,
                                     channels=orjson.dumps(channels).decode(), fired_at=now))
    return True


def escalations_of(conn: sa.Connection,
                   incident_ids: list[int]) -> dict[int, list[dict[str, Any]]]:
    """Fired stages per incident, oldest first."""
    if not incident_ids:
        return {}
    e = incident_escalations
    rows = conn.execute(sa.select(e).where(e.c.incident_id.in_(sorted(set(incident_ids))))
                        .order_by(e.c.fired_at, e.c.id)).mappings()
    out: dict[int, list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault(int(r["incident_id"]), []).append(
            {**r, "channels": orjson.loads(r["channels"])})
    return out


# --- silences ----------------------------------------------------------------------------------

def insert_silence(conn: sa.Connection, values: dict[str, Any]) -> int:
    """Store a silence and return its id."""
    return _new_id(conn.execute(sa.insert(silences).values(**values)))


def get_silence(conn: sa.Connection, silence_id: int) -> dict[str, Any] | None:
    """One silence (deleted or not), or None."""
    row = conn.execute(sa.select(silences).where(silences.c.id == silence_id)).mappings().first()
    return dict(row) if row else None


def delete_silence(conn: sa.Connection, silence_id: int, who: str, now: int) -> bool:
    """Mark a silence deleted (kept for the audit trail); False when there was none."""
    res = conn.execute(sa.update(silences).where(silences.c.id == silence_id,
                                                 silences.c.deleted_at.is_(None))
                       .values(deleted_at=now, deleted_by=who))
    return res.rowcount > 0


def list_silences(conn: sa.Connection, now: int, include_expired: bool,
                  include_deleted: bool = False) -> list[dict[str, Any]]:
    """Silences, current and future ones unless expired (and deleted) ones are asked for too."""
    s = silences
    stmt = sa.select(s).order_by(s.c.id)
    if not include_deleted:
        stmt = stmt.where(s.c.deleted_at.is_(None))
    if not include_expired:
        stmt = stmt.where(s.c.ends_at > now)
    return [dict(r) for r in conn.execute(stmt).mappings()]


def silence_of(row: dict[str, Any]) -> Silence:
    """The matching rule of a stored silence."""
    return Silence(id=row["id"], starts_at=row["starts_at"], ends_at=row["ends_at"],
                   site=row["site"], device=row["device_id"], kind=row["kind"],
                   life_safety=bool(row["life_safety"]))


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
