"""REST of units, shifts, rotations and hand-over. Ops (and admin) change rosters; a crew
member may read their own unit and hand over within it."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi import Path as FastPath
from pydantic import BaseModel, Field

from collector.alarms.api import Principal, PrincipalDep
from collector.alarms.config import DurationMs, Unit
from collector.api import iso, parse_time
from collector.grid.models import CreatedOut, HandoverOut, OnCallOut, ShiftOut, UnitOut
from collector.grid.roster import Roster, RosterError
from collector.grid.shifts import OnCall
from collector.params import RowId, invalid

router = APIRouter(prefix="/api/v1/units", tags=["rosters"])
UnitId = Annotated[str, FastPath(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$",
                                 description="a unit id, e.g. lift-crew-north")]
MemberName = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^\x00]*$")]
Note = Annotated[str, Field(max_length=2000, pattern=r"^[^\x00]*$")]
When = Annotated[str, Field(min_length=1, max_length=40, description="ISO 8601 or epoch ms")]


def get_roster(request: Request) -> Roster:
    """The roster attached to the app."""
    roster: Roster = request.app.state.roster
    return roster


RosterDep = Annotated[Roster, Depends(get_roster)]


def _ops(who: PrincipalDep) -> Principal:
    if who.role != "ops":
        raise HTTPException(403, "only ops or admin tokens may change rosters")
    return who


Ops = Annotated[Principal, Depends(_ops)]


def _sees(who: Principal, unit_id: str) -> None:
    if not who.may_see(unit_id):
        raise HTTPException(403, f"{who.name} is not in unit {unit_id!r}")


def _call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except RosterError as exc:
        raise HTTPException(exc.status, str(exc)) from None


def _time(text: str, name: str) -> int:
    ms = parse_time(text, name, "body")
    if ms is None:
        raise invalid("body", name, "a time is required")
    return ms


class ShiftIn(BaseModel):
    """A member on call over [starts_at, ends_at)."""

    member: MemberName
    starts_at: When
    ends_at: When
    note: Note = ""


class RotationIn(BaseModel):
    """Members taking turns of `period` each, the first from `starts_at`."""

    members: list[MemberName] = Field(min_length=1, max_length=100)
    starts_at: When
    period_ms: DurationMs = Field(alias="period", ge=60_000, le=31 * 86_400_000)


class HandoverIn(BaseModel):
    """`to` takes over now, until `until` (default: the end of the current turn, else 12 h)."""

    to: MemberName
    until: When | None = None
    note: Note = ""


def on_call_view(oc: OnCall) -> dict[str, Any]:
    """Who is on call, their phone, why and until when."""
    m = oc.member
    return {"member": m.name if m else None, "phone": m.phone if m else "",
            "why": oc.why, "until": iso(oc.until)}


def _shift_view(row: dict[str, Any]) -> dict[str, Any]:
    return {"id": row["id"], "member": row["member"], "starts_at": iso(row["starts_at"]),
            "ends_at": iso(row["ends_at"]), "note": row["note"],
            "handover_from": row["handover_from"], "created_by": row["created_by"]}


@router.get("", response_model=list[UnitOut])
def list_units(roster: RosterDep, who: PrincipalDep) -> list[dict[str, Any]]:
    """Units the caller may see: members, escalation, source, and who is on call now."""
    return [{"id": uid, "name": u.name, "source": roster.source(uid),
             "members": [{"name": m.name, "phone": m.phone, "email": m.email}
                         for m in u.members],
             "escalation": [s.model_dump(by_alias=True) for s in u.escalation],
             "on_call": on_call_view(roster.on_call(uid))}
            for uid, u in sorted(roster.units.items()) if who.may_see(uid)]


@router.put("/{unit_id}", status_code=204)
def put_unit(unit_id: UnitId, body: Unit, roster: RosterDep, who: Ops) -> None:
    """Create or replace a unit (as an `[alarms.units.<id>]` table); in force at once."""
    roster.put_unit(unit_id, body, who.name)


@router.delete("/{unit_id}", status_code=204)
def delete_unit(unit_id: UnitId, roster: RosterDep, _who: Ops) -> None:
    """Remove a unit put through the API."""
    _call(roster.delete_unit, unit_id)


@router.get("/{unit_id}/on-call", response_model=OnCallOut)
def get_on_call(unit_id: UnitId, roster: RosterDep, who: PrincipalDep,
                at: Annotated[str | None, Query(max_length=40, description=(
                    "the moment, ISO 8601 or epoch ms; default now"))] = None) -> dict[str, Any]:
    """Who a new incident of the unit goes to at a moment (default now), and why."""
    _sees(who, unit_id)
    _call(roster.unit, unit_id)
    return on_call_view(roster.on_call(unit_id, parse_time(at, "at")))


@router.get("/{unit_id}/shifts", response_model=list[ShiftOut])
def list_shifts(unit_id: UnitId, roster: RosterDep, who: PrincipalDep,
                since: Annotated[str | None, Query(max_length=40, description=(
                    "shifts ending after this, ISO 8601 or epoch ms; default now"))] = None,
                ) -> list[dict[str, Any]]:
    """Shifts of the unit ending after `since` (default now)."""
    _sees(who, unit_id)
    return [_shift_view(r) for r in roster.shifts(unit_id, parse_time(since, "since"))]


@router.post("/{unit_id}/shifts", status_code=201, response_model=CreatedOut)
def add_shift(unit_id: UnitId, body: ShiftIn, roster: RosterDep, who: Ops) -> dict[str, Any]:
    """Put a member on call over a period."""
    start, end = _time(body.starts_at, "starts_at"), _time(body.ends_at, "ends_at")
    sid = _call(roster.add_shift, unit_id, body.member, start, end, who.name, body.note)
    return {"id": sid}


@router.delete("/{unit_id}/shifts/{shift_id}", status_code=204)
def delete_shift(unit_id: UnitId, shift_id: RowId, roster: RosterDep, _who: Ops) -> None:
    """Cancel a shift."""
    _call(roster.delete_shift, unit_id, shift_id)


@router.put("/{unit_id}/rotation", status_code=204)
def put_rotation(unit_id: UnitId, body: RotationIn, roster: RosterDep, who: Ops) -> None:
    """Set the unit's on-call rotation."""
    start = _time(body.starts_at, "starts_at")
    _call(roster.set_rotation, unit_id, body.members, start, body.period_ms, who.name)


@router.delete("/{unit_id}/rotation", status_code=204)
def delete_rotation(unit_id: UnitId, roster: RosterDep, _who: Ops) -> None:
    """End the unit's rotation."""
    roster.delete_rotation(unit_id)


@router.post("/{unit_id}/handover", response_model=HandoverOut)
def handover(unit_id: UnitId, body: HandoverIn, roster: RosterDep,
             who: PrincipalDep) -> dict[str, Any]:
    """`to` takes over now; the unit's active incidents of the one handing over follow."""
    _sees(who, unit_id)
    got = _call(roster.handover, unit_id, body.to, who.name, body.note,
                _time(body.until, "until") if body.until else None)
    return {**got, "until": iso(got["until"])}
