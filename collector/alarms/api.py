"""REST and server-sent events for incidents, alarms and silences, plus the crew and ops pages.

Auth: a bearer token (header, or `?token=` for the page's EventSource): an API token
(collector.auth: role crew scoped to a unit, ops, or admin acting as ops), or, for existing
configs, one whose SHA-256 matches an `[alarms]` member's or ops login's `token_hash`.
Crew members see and act on their own unit's incidents; ops see and act on all.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from fastapi.responses import HTMLResponse, StreamingResponse
from pydantic import BaseModel, Field

from collector.alarms import repo
from collector.alarms.config import AlarmsConfig, parse_duration
from collector.alarms.desk import (
    BadRequest,
    ConditionPresent,
    IncidentDesk,
    IncidentNotFound,
    NotAllowed,
)
from collector.alarms.lifecycle import ACTIVE_STATES, IllegalTransition, State
from collector.alarms.models import (
    AlarmEpisodeOut,
    HistoryStepOut,
    IncidentDetailOut,
    IncidentOut,
    SilenceOut,
    StatsOut,
)
from collector.api import parse_time
from collector.auth import Role, admit, hash_token, lookup, presented_token
from collector.broadcast import DROPPED, HEARTBEAT, updates
from collector.pages import page
from collector.params import SSE_RESPONSES, RowId

KEEPALIVE_S = 15.0
TOKEN_RECHECK_S = 5.0  # an open stream notices a revoked token within this time
DEFAULT_STATS_WINDOW_MS = 30 * 86_400_000


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a crew member of some units, or an ops login."""

    name: str
    role: Literal["crew", "ops"]
    units: tuple[str, ...] = ()

    def may_see(self, unit: str) -> bool:
        """Say whether this caller may read and act on a unit's incidents."""
        return self.role == "ops" or unit in self.units


def find_principal(cfg: AlarmsConfig, token: str) -> Principal | None:
    """The principal a token belongs to; every hash is compared, in constant time each."""
    digest = hash_token(token)
    ops: str | None = None
    name: str | None = None
    units: list[str] = []
    for login in cfg.ops:
        if hmac.compare_digest(digest, login.token_hash):
            ops = login.name
    for unit_id, unit in cfg.units.items():
        for m in unit.members:
            if m.token_hash and hmac.compare_digest(digest, m.token_hash):
                name = m.name
                units.append(unit_id)
    if ops is not None:
        return Principal(ops, "ops")
    if name is not None:
        return Principal(name, "crew", tuple(units))
    return None


def get_desk(request: Request) -> IncidentDesk:
    """The incident desk attached to the app (`app.state.alarms`)."""
    desk: IncidentDesk = request.app.state.alarms
    return desk


DeskDep = Annotated[IncidentDesk, Depends(get_desk)]


def get_principal(request: Request, desk: DeskDep,
                  token: Annotated[str | None, Query(
                      description="the bearer token, for clients that cannot send the "
                                  "Authorization header (EventSource); the header wins")]
                  = None) -> Principal:
    """Authenticate `Authorization: Bearer <token>` or `?token=`; 401 otherwise.

    One token system: API tokens (collector.auth; role crew scoped to its unit, ops, admin
    acting as ops) and, for existing configs, the hashes of `[alarms]` members and ops logins.
    """
    del token  # read by presented_token (header first); declared for the API docs
    presented = presented_token(request)
    who = find_principal(desk.engine.cfg, presented) if presented else None
    if who is None and presented and hasattr(request.app.state, "store"):
        who = _api_token_principal(request, presented)
    if who is None:
        raise HTTPException(401, "a crew or ops token is required",
                            headers={"WWW-Authenticate": "Bearer"})
    return who


def _api_token_principal(request: Request, token: str) -> Principal | None:
    """The incident principal of an API token: crew of its unit, or ops (ops and admin roles)."""
    central = lookup(request.app.state.store.engine, token)
    if central is None:
        return None
    admit(request, central)
    if central.role in (Role.ADMIN, Role.OPS):
        return Principal(central.name, "ops")
    if central.role is Role.CREW and central.unit:
        return Principal(central.member or central.name, "crew", (central.unit,))
    raise HTTPException(403, f"role {central.role.value!r} may not see incidents; needs a crew "
                             "token (scoped to a unit), ops or admin")


PrincipalDep = Annotated[Principal, Depends(get_principal)]


router = APIRouter(prefix="/api/v1", tags=["incidents"])
pages = APIRouter(include_in_schema=False)


class NoteIn(BaseModel):
    """The body of a lifecycle step; `override` + `reason` force resolve/close over a
    condition the device still reports."""

    note: str = Field(default="", max_length=2000)
    override: bool = False
    reason: str = Field(default="", max_length=2000)


class NoteOnlyIn(BaseModel):
    """A note for the incident's history."""

    note: str = Field(min_length=1, max_length=2000, description="free text, kept as written")


class AssignIn(BaseModel):
    """Give an incident to a member and/or another unit (a unit alone: its on-call first)."""

    member: str | None = None
    unit: str | None = None
    note: str = Field(default="", max_length=2000)


class SilenceIn(BaseModel):
    """A maintenance window; at least one of site, device or kind."""

    site: str | None = None
    device: str | None = None
    kind: str | None = None
    starts_at: str | None = Field(default=None, description="ISO 8601 or epoch ms; default now")
    ends_at: str | None = Field(default=None, description="ISO 8601 or epoch ms")
    duration: str | None = Field(default=None, description='instead of ends_at, e.g. "2h"')
    reason: str = Field(default="", max_length=500)
    life_safety: bool = Field(default=False, description="also hold back life-safety kinds "
                                                         "(ops only, with a reason)")


def _units(who: Principal, unit: str | None) -> list[str] | None:
    if unit is not None:
        if not who.may_see(unit):
            raise HTTPException(403, f"{who.name} is not in unit {unit!r}")
        return [unit]
    return None if who.role == "ops" else list(who.units)


def _states(state: str | None) -> list[str] | None:
    if not state:
        return None
    if state == "active":
        return [s.value for s in ACTIVE_STATES]
    names = [s.strip() for s in state.split(",") if s.strip()]
    unknown = [s for s in names if s not in State.__members__.values()]
    if unknown:
        raise HTTPException(422, f"unknown state {unknown[0]!r}; one of "
                                 f"{[s.value for s in State]} or 'active'")
    return names


def _csv(name: str, text: str | None) -> list[str] | None:
    """A comma list query parameter, each item bounded."""
    if not text:
        return None
    items = [t.strip() for t in text.split(",") if t.strip()]
    if len(items) > 50 or any(len(t) > 128 for t in items):
        raise HTTPException(422, f"{name}: at most 50 comma-separated values of 128 characters")
    return items or None


@router.get("/incidents", response_model=list[IncidentOut])
def list_incidents(
    desk: DeskDep, who: PrincipalDep,
    state: Annotated[str | None, Query(description="a state, a comma list of states, or "
                                                   "`active` (open, acknowledged, on_site)")]
    = None,
    unit: Annotated[str | None, Query(description="responsible unit id (crew: one of theirs)")]
    = None,
    kind: Annotated[str | None, Query(description="incident kind(s), comma-separated, e.g. "
                                                  "trapped_passenger,gateway_offline")] = None,
    district: Annotated[str | None, Query(description="district (grid) id(s), comma-separated")]
    = None,
    site: Annotated[str | None, Query(description="site id(s), comma-separated")] = None,
    limit: Annotated[int, Query(ge=1, le=5000, description="at most this many")] = 500,
    order: Annotated[Literal["newest", "urgency"],
                     Query(description="legacy order: newest, or urgency (critical first, "
                                       "then longest waiting); `sort` wins when given")]
    = "newest",
    sort: Annotated[str | None, Query(
        description="sort key, `-` in front for descending: opened_at, age, severity, state, "
                    "unit, kind, district, site, id, or urgency", max_length=16)] = None,
) -> list[dict[str, Any]]:
    """Incidents newest first, filtered by state, unit, kind, district and site, in any order;
    each with its running age and arrival-SLA state."""
    if sort is not None and sort != "urgency" and sort.lstrip("-") not in repo.SORT_KEYS:
        raise HTTPException(422, f"sort={sort!r}: one of {list(repo.SORT_KEYS)} "
                                 "(optionally with a leading -) or urgency")
    where = repo.IncidentFilter(kinds=_csv("kind", kind), grids=_csv("district", district),
                                sites=_csv("site", site), sort=sort or "-opened_at")
    return desk.incidents(_states(state), _units(who, unit), limit,
                          sort is None and order == "urgency", where)


@router.get("/incidents/stats", response_model=StatsOut)
def incident_stats(
    desk: DeskDep, who: PrincipalDep,
    since: Annotated[str | None, Query(max_length=40, description="ISO 8601 or epoch ms: "
                                       "incidents opened since; default 30 days ago")] = None,
    unit: Annotated[str | None, Query(max_length=128, description="one unit (crew: one of "
                                      "theirs)")] = None,
) -> dict[str, Any]:
    """Per unit and per kind: found, acknowledged, resolved, closed; mean and p90 time to
    acknowledge, arrive and resolve, with the share arrived within the SLA."""
    start = parse_time(since, "since")
    if start is None:
        start = desk.engine.clock() - DEFAULT_STATS_WINDOW_MS
    return desk.stats(start, _units(who, unit))


@router.get("/incidents/stream", response_class=StreamingResponse, responses=SSE_RESPONSES)
async def incident_stream(request: Request, desk: DeskDep, who: PrincipalDep,
                          unit: Annotated[str | None, Query(
                              max_length=128, description="only this unit's incidents")]
                          = None) -> StreamingResponse:
    """Server-sent events: `incident` with the incident's JSON on every change."""
    units = _units(who, unit)
    token = presented_token(request)
    return StreamingResponse(_events(request, desk, units, lambda: _valid(request, desk, token)),
                             media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _valid(request: Request, desk: IncidentDesk, token: str) -> bool:
    """Whether a stream's token still signs someone in (it may be revoked meanwhile)."""
    if find_principal(desk.engine.cfg, token) is not None:
        return True
    return lookup(request.app.state.store.engine, token) is not None


async def _events(request: Request, desk: IncidentDesk, units: list[str] | None,
                  valid: Callable[[], bool]) -> AsyncIterator[str]:
    checked = time.monotonic()
    mine = None if units is None else (lambda item: item["unit"] in units)
    with desk.engine.bus.subscribe(mine) as sub:
        yield "retry: 3000\n: open\n\n"
        async for item in updates(sub, request, KEEPALIVE_S):
            if time.monotonic() - checked >= TOKEN_RECHECK_S or item is HEARTBEAT:
                checked = time.monotonic()
                if not await asyncio.to_thread(valid):  # revoked: end the stream now
                    yield "event: signed-out\ndata: {}\n\n"
                    return
            if item is HEARTBEAT:
                yield ": keepalive\n\n"
            elif item is DROPPED:  # this listener missed changes: reload, then reconnect
                yield "event: reload\ndata: {}\n\n"
            else:
                yield f"event: incident\ndata: {orjson.dumps(item).decode()}\n\n"


@router.get("/incidents/{incident_id}", response_model=IncidentDetailOut)
def get_incident(incident_id: RowId, desk: DeskDep, who: PrincipalDep) -> dict[str, Any]:
    """One incident with its history (who did what, when, with which note)."""
    inc = _incident(desk, incident_id)
    if not who.may_see(inc["unit"]):
        raise HTTPException(403, f"incident {incident_id} belongs to unit {inc['unit']!r}")
    return inc


@router.get("/incidents/{incident_id}/history", response_model=list[HistoryStepOut])
def incident_history(incident_id: RowId, desk: DeskDep,
                     who: PrincipalDep) -> list[dict[str, Any]]:
    """The steps of an incident oldest first: transitions, notes, assignments, pages sent,
    and every forced step with its override reason and the conditions it overrode."""
    _visible(desk, incident_id, who)
    return desk.history(incident_id)


@router.post("/incidents/{incident_id}/note", response_model=IncidentDetailOut)
def add_note(incident_id: RowId, body: NoteOnlyIn, desk: DeskDep,
             who: PrincipalDep) -> dict[str, Any]:
    """Add a note to the incident's history (no state change)."""
    _visible(desk, incident_id, who)
    return desk.note(incident_id, who.name, body.note)


@router.post("/incidents/{incident_id}/assign", response_model=IncidentOut)
def assign(incident_id: RowId, body: AssignIn, desk: DeskDep,
           who: PrincipalDep) -> dict[str, Any]:
    """Re-assign to another member and/or unit (crew: within their own units); recorded."""
    _visible(desk, incident_id, who)
    if body.member is None and body.unit is None:
        raise HTTPException(422, "give a member, a unit, or both")
    try:
        return desk.assign(incident_id, member=body.member, unit=body.unit, who=who.name,
                           units=None if who.role == "ops" else list(who.units),
                           note=body.note)
    except NotAllowed as exc:
        raise HTTPException(403, str(exc)) from None
    except BadRequest as exc:
        raise HTTPException(422, str(exc)) from None


@router.post("/incidents/{incident_id}/{action}", response_model=IncidentOut)
def act(incident_id: RowId,
        action: Annotated[Literal["ack", "arrive", "resolve", "close"], Path(
            description="the lifecycle step: ack(nowledge), arrive (on site), resolve, close")],
        desk: DeskDep, who: PrincipalDep, body: NoteIn | None = None) -> dict[str, Any]:
    """Move an incident one step; 409 with the allowed next steps when the step is illegal,
    or with the conditions still present when resolve/close lacks an override."""
    _visible(desk, incident_id, who)
    body = body or NoteIn()
    try:
        return desk.transition(incident_id, action, who.name, body.note,
                               override=body.override, reason=body.reason)
    except IllegalTransition as exc:
        raise HTTPException(409, {"error": "illegal_transition", "state": exc.state.value,
                                  "action": action, "allowed": exc.allowed,
                                  "message": str(exc)}) from None
    except ConditionPresent as exc:
        raise HTTPException(409, {"error": "condition_present", "state": exc.state,
                                  "action": action, "conditions": exc.conditions,
                                  "message": str(exc)}) from None
    except BadRequest as exc:
        raise HTTPException(422, str(exc)) from None


def _visible(desk: IncidentDesk, incident_id: int, who: Principal) -> None:
    inc = _incident(desk, incident_id)
    if not who.may_see(inc["unit"]):
        raise HTTPException(403, f"incident {incident_id} belongs to unit {inc['unit']!r}")


def _incident(desk: IncidentDesk, incident_id: int) -> dict[str, Any]:
    try:
        return desk.incident(incident_id)
    except IncidentNotFound as exc:
        raise HTTPException(404, str(exc)) from None


@router.get("/alarms", response_model=list[AlarmEpisodeOut])
def list_alarms(
    desk: DeskDep, _who: PrincipalDep,
    active: Annotated[bool | None, Query(description="true: active only; false: cleared "
                                         "only; omit: both")] = None,
    limit: Annotated[int, Query(ge=1, le=10_000, description="at most this many")] = 1000,
) -> list[dict[str, Any]]:
    """Alarm episodes newest first; `held` says why an active one has no incident."""
    return desk.alarms(active, limit)


@router.get("/silences", response_model=list[SilenceOut])
def list_silences(
    desk: DeskDep, who: PrincipalDep,
    include_expired: Annotated[bool, Query(description="also windows that have ended")] = False,
    include_deleted: Annotated[bool, Query(description="also windows deleted early")] = False,
) -> list[dict[str, Any]]:
    """Maintenance windows in force or planned (past and deleted ones on request: the audit
    trail); crew see their units' and ops' silences."""
    return desk.silences(include_expired, include_deleted,
                         None if who.role == "ops" else who.units)


@router.post("/silences", status_code=201, response_model=SilenceOut)
def create_silence(body: SilenceIn, desk: DeskDep, who: PrincipalDep) -> dict[str, Any]:
    """Open a maintenance window: matching alarms raise no incident and no notice."""
    if not (body.site or body.device or body.kind):
        raise HTTPException(422, "a silence needs at least one of site, device or kind")
    start = parse_time(body.starts_at, "starts_at") or desk.engine.clock()
    end = parse_time(body.ends_at, "ends_at")
    if end is None and body.duration:
        try:
            end = start + parse_duration(body.duration)
        except ValueError as exc:
            raise HTTPException(422, f"duration: {exc}") from None
    if end is None or end <= start:
        raise HTTPException(422, "give ends_at after starts_at, or a duration")
    try:
        return desk.add_silence(site=body.site, device=body.device, kind=body.kind,
                                starts_at=start, ends_at=end, who=who.name,
                                reason=body.reason, role=who.role, units=who.units,
                                life_safety=body.life_safety)
    except NotAllowed as exc:
        raise HTTPException(403, str(exc)) from None
    except BadRequest as exc:
        raise HTTPException(422, str(exc)) from None


@router.delete("/silences/{silence_id}", status_code=204)
def delete_silence(silence_id: RowId, desk: DeskDep, who: PrincipalDep) -> None:
    """End a maintenance window now (crew: only their unit's crew silences)."""
    try:
        found = desk.delete_silence(silence_id, who.name, who.role, who.units)
    except NotAllowed as exc:
        raise HTTPException(403, str(exc)) from None
    if not found:
        raise HTTPException(404, f"no silence {silence_id}")


@pages.get("/crew", response_class=HTMLResponse)
def crew_page() -> HTMLResponse:
    """The crew's mobile page: my unit's open incidents, live."""
    return page("crew.html")


@pages.get("/ops", response_class=HTMLResponse)
def ops_page() -> HTMLResponse:
    """The operations page: all incidents and the closed-loop figures."""
    return page("ops.html")
