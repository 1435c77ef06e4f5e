"""REST API of pollution sources: registry, import, GeoJSON, tracks, attribution, tasks, figures.

Readers see the registry, exceedances and tasks; operators (`ops`) edit the registry, import
files, open an exceedance by hand and verify tasks on site. A source's responsible person has
no account: the push carries a link with a per-task key (stored hashed) that lets them read,
acknowledge and report on that one task only.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Query, Request, Response
from pydantic import BaseModel, Field

from collector.api import READ_ROLES
from collector.auth import Principal, Role, authenticate, require
from collector.params import INT64_MAX, TIME_MAX_MS, RowId
from collector.sources.importer import MAX_BYTES, ImportRefused, parse
from collector.sources.model import KINDS, SOURCE_ID_RE, SourceIn
from collector.sources.models import (
    AttributionOut,
    ExceedanceOut,
    ExceedanceSummaryOut,
    FiguresOut,
    FixOut,
    ImportOut,
    SourceOut,
    SourcesGeoJSON,
    TaskOut,
    TruckOut,
    UpsertOut,
)
from collector.sources.service import MAX_PHOTO, MAX_REPORT, Exceedance, SourcesService
from collector.sources.tasks import Action, TaskError
from collector.store import now_ms
from devices.contract import DEVICE_ID_RE

readers = [Depends(require(*READ_ROLES, Role.OPS))]
router = APIRouter(prefix="/api/v1/sources", tags=["sources"])
Ops = Annotated[Principal, Depends(require(Role.OPS))]
SourceId = Annotated[str, Path(max_length=128, pattern=SOURCE_ID_RE.pattern,
                                description="a source id, e.g. cs-0042")]
DevicePath = Annotated[str, Path(max_length=128, pattern=DEVICE_ID_RE.pattern,
                                 description="the truck's tracker device id")]
Limit = Annotated[int, Query(ge=1, le=1000, description="at most this many, newest first")]
PHOTO_RESPONSES: dict[int | str, dict[str, Any]] = {200: {
    "description": "the photo as it was uploaded",
    "content": {t: {"schema": {"type": "string", "format": "binary"}}
                for t in ("image/jpeg", "image/png")}}}


class GeoJSONResponse(Response):
    """A GeoJSON (RFC 7946) body."""

    media_type = "application/geo+json"


def service(request: Request) -> SourcesService:
    """The collector's sources service."""
    svc: SourcesService = request.app.state.sources
    return svc


Service = Annotated[SourcesService, Depends(service)]


class ReportIn(BaseModel):
    """What the responsible person did about it."""

    text: str = Field(min_length=1, max_length=MAX_REPORT, pattern=r"^[^\x00]*$")


class PointIn(BaseModel):
    """An exceedance at a point, given by an operator (or an attribution question)."""

    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)
    ts: int | None = Field(default=None, ge=0, le=TIME_MAX_MS, description="epoch ms; default now")
    radius_m: float | None = Field(default=None, gt=0, le=50_000)
    quantity: str = Field(default="", max_length=64, pattern=r"^[a-z0-9_]*$")
    value: float | None = Field(default=None, allow_inf_nan=False)
    district: str = Field(default="", max_length=64, pattern=r"^[^\x00-\x1f]*$")


async def _bounded_body(request: Request, limit: int, what: str) -> bytes:
    """The request body, refused with 413 as soon as it passes `limit` bytes."""
    too_big = HTTPException(413, f"{what} is larger than {limit // 1024} KiB")
    if request.headers.get("content-length", "0").isdigit() and \
            int(request.headers.get("content-length", "0")) > limit:
        raise too_big
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > limit:
            raise too_big
    return bytes(data)


def _task_error(exc: TaskError) -> HTTPException:
    return HTTPException(exc.status, str(exc))


def _owner_or_ops(request: Request, svc: SourcesService, tid: RowId) -> str:
    """Admit the task's owner (link key) or an operator; return who acted."""
    key = request.query_params.get("key") or request.headers.get("x-task-key", "")
    if key:
        if not svc.owner_may(tid, key[:200]):
            raise HTTPException(403, "this link key does not open this task")
        return "owner"
    who = authenticate(request, None)
    if who.role not in (Role.OPS, Role.ADMIN):
        raise HTTPException(403, "open the task with the link it was pushed with, or as ops")
    return who.name


@router.get("", dependencies=readers, response_model=list[SourceOut])
def list_sources(svc: Service,
                 kind: Annotated[str | None, Query(max_length=32, description=(
                     "only this kind: " + ", ".join(KINDS)))] = None,
                 district: Annotated[str | None, Query(max_length=64, pattern=r"^[^\x00]*$",
                                                       description="only this district")]
                 = None,
                 limit: Annotated[int, Query(ge=1, le=20_000,
                                             description="at most this many, in id order")]
                 = 1000,
                 offset: Annotated[int, Query(ge=0, le=INT64_MAX,
                                              description="skip this many first")] = 0,
                 ) -> list[dict[str, Any]]:
    """Registered sources, by kind and district."""
    if kind is not None and kind not in KINDS:
        raise HTTPException(422, f"kind must be one of {', '.join(KINDS)}")
    return svc.sources(kind=kind, district=district, limit=limit, offset=offset)


@router.get(".geojson", dependencies=readers, response_model=SourcesGeoJSON,
            response_class=GeoJSONResponse)
def sources_geojson(svc: Service) -> Response:
    """Sources and the trucks' last positions as a GeoJSON FeatureCollection, for the map."""
    import orjson

    # Written as built: the whole registry is one answer, too big to validate on each read.
    return GeoJSONResponse(orjson.dumps(svc.geojson()))


@router.post("/import", response_model=ImportOut)
async def import_sources(request: Request, svc: Service, _who: Ops) -> dict[str, Any]:
    """Upsert sources from a CSV or GeoJSON body; refused rows are listed, the rest kept."""
    data = await _bounded_body(request, MAX_BYTES, "the file")
    try:
        parsed = parse(data, request.headers.get("content-type", ""))
    except ImportRefused as exc:
        raise HTTPException(422, str(exc)) from None
    counts = await asyncio.to_thread(svc.upsert, parsed.sources) if parsed.sources else \
        {"created": 0, "updated": 0}
    return {**counts, "refused": len(parsed.errors), "errors": parsed.errors[:200]}


@router.get("/trucks", dependencies=readers, response_model=list[TruckOut])
def trucks(svc: Service) -> list[dict[str, Any]]:
    """Every tracked truck's last fix."""
    return [{"device": f.device, "ts": f.ts, "lat": f.lat, "lon": f.lon}
            for f in sorted(svc.grid.latest().values(), key=lambda f: f.device)]


@router.get("/trucks/{device}/track", dependencies=readers, response_model=list[FixOut])
def truck_track(svc: Service, device: DevicePath,
                since: Annotated[int | None, Query(ge=0, le=INT64_MAX, description=(
                    "fixes from this time on, epoch ms"))] = None,
                until: Annotated[int | None, Query(ge=0, le=INT64_MAX, description=(
                    "fixes before this time, epoch ms"))] = None,
                limit: Annotated[int, Query(ge=1, le=100_000, description=(
                    "at most this many, oldest first"))] = 5000) -> list[dict[str, Any]]:
    """A truck's stored fixes in time order."""
    return svc.track(device, since, until, limit)


@router.post("/attribution", dependencies=readers, response_model=AttributionOut)
def attribution(svc: Service, point: PointIn) -> dict[str, Any]:
    """Rank the sources around a point now or at `ts` (a question: nothing is pushed)."""
    wind, ranked, considered = svc.attribute(point.lat, point.lon, point.ts or now_ms(),
                                             point.radius_m)
    return {"wind": None if wind is None else {
                "direction": wind.direction, "speed": wind.speed, "station": wind.station,
                "distance_m": round(wind.distance_m)},
            "considered": considered, "candidates": [s.as_dict() for s in ranked]}


@router.post("/exceedances", response_model=ExceedanceOut)
def open_exceedance(svc: Service, point: PointIn, who: Ops) -> dict[str, Any]:
    """Open an exceedance at a point by hand: rank the sources and push the best as tasks."""
    return svc.open_exceedance(Exceedance(
        f"manual:{who.name}", point.lat, point.lon, point.ts or now_ms(),
        district=point.district, quantity=point.quantity, value=point.value))


@router.get("/exceedances", dependencies=readers, response_model=list[ExceedanceSummaryOut])
def exceedance_list(svc: Service, limit: Limit = 100) -> list[dict[str, Any]]:
    """Exceedances, newest first."""
    return svc.exceedance_list(limit)


@router.get("/exceedances/{eid}", dependencies=readers, response_model=ExceedanceOut)
def exceedance(svc: Service, eid: RowId) -> dict[str, Any]:
    """One exceedance: wind, every ranked candidate with its reasons, and the tasks."""
    found = svc.exceedance(eid)
    if found is None:
        raise HTTPException(404, f"no exceedance {eid}")
    return found


@router.post("/exceedances/{eid}/recovered", response_model=ExceedanceOut)
def exceedance_recovered(svc: Service, eid: RowId, _who: Ops) -> dict[str, Any]:
    """An operator saw the reading recover (exceedances opened by hand have no alarm to
    clear them): tasks whose owners reported close."""
    if svc.exceedance(eid) is None:
        raise HTTPException(404, f"no exceedance {eid}")
    svc.recover([eid], now_ms())
    found = svc.exceedance(eid)
    if found is None:
        raise HTTPException(404, f"no exceedance {eid}")
    return found


@router.get("/tasks", dependencies=readers, response_model=list[TaskOut])
def task_list(svc: Service,
              state: Annotated[str | None, Query(
                  pattern="^(pushed|acknowledged|reported|closed)$",
                  description="only tasks in this state")] = None,
              source: Annotated[str | None, Query(max_length=128, pattern=SOURCE_ID_RE.pattern,
                                                  description="only this source's tasks")]
              = None,
              limit: Limit = 200) -> list[dict[str, Any]]:
    """Tasks, newest first."""
    return svc.tasks(state=state, source=source, limit=limit)


@router.get("/tasks/{tid}", response_model=TaskOut)
def task(request: Request, svc: Service, tid: RowId) -> dict[str, Any]:
    """One task (the owner's link opens it)."""
    _owner_or_ops(request, svc, tid)
    found = svc.task(tid)
    if found is None:
        raise HTTPException(404, f"no task {tid}")
    return found


def _act(request: Request, svc: SourcesService, tid: RowId, action: Action,
         text: str = "") -> dict[str, Any]:
    who = _owner_or_ops(request, svc, tid)
    try:
        return svc.act(tid, action, text=text, who=who)
    except TaskError as exc:
        raise _task_error(exc) from None


@router.post("/tasks/{tid}/ack", response_model=TaskOut)
def acknowledge(request: Request, svc: Service, tid: RowId) -> dict[str, Any]:
    """The responsible person has seen the task."""
    return _act(request, svc, tid, "ack")


@router.post("/tasks/{tid}/report", response_model=TaskOut)
def report(request: Request, svc: Service, tid: RowId, body: ReportIn) -> dict[str, Any]:
    """The action taken; closes the task once the reading has recovered."""
    return _act(request, svc, tid, "report", body.text)


@router.put("/tasks/{tid}/photo", status_code=204)
async def put_photo(request: Request, svc: Service, tid: RowId) -> None:
    """A photo of the action taken: the raw JPEG or PNG body, at most 2 MiB."""
    await asyncio.to_thread(_owner_or_ops, request, svc, tid)
    data = await _bounded_body(request, MAX_PHOTO, "the photo")
    try:
        await asyncio.to_thread(svc.attach_photo, tid, request.headers.get(
            "content-type", "").split(";", maxsplit=1)[0].strip().lower(), data)
    except TaskError as exc:
        raise _task_error(exc) from None


@router.get("/tasks/{tid}/photo", response_class=Response, responses=PHOTO_RESPONSES)
def get_photo(request: Request, svc: Service, tid: RowId) -> Response:
    """The task's photo."""
    _owner_or_ops(request, svc, tid)
    found = svc.photo(tid)
    if found is None:
        raise HTTPException(404, f"task {tid} has no photo")
    return Response(found[1], media_type=found[0],
                    headers={"X-Content-Type-Options": "nosniff"})


@router.post("/tasks/{tid}/verify", response_model=TaskOut)
def verify(request: Request, svc: Service, tid: RowId, who: Ops) -> dict[str, Any]:
    """An inspector verified the action on site: the task closes."""
    try:
        return svc.act(tid, "verify", who=who.name)
    except TaskError as exc:
        raise _task_error(exc) from None


# exclude_unset: a group names only the key it was asked by (`owner` or `district`).
@router.get("/figures", dependencies=readers, response_model=list[FiguresOut],
            response_model_exclude_unset=True)
def figures(svc: Service, by: Annotated[str, Query(
        pattern="^(owner|district)$", description="group by owner (company) or district")]
            = "owner") -> list[dict[str, Any]]:
    """Per owner or district: exceedances, tasks pushed, handled, closed, time to handle."""
    return svc.figures(by)


@router.get("/{source_id}", dependencies=readers, response_model=SourceOut)
def get_source(svc: Service, source_id: SourceId) -> dict[str, Any]:
    """One registered source."""
    found = svc.source(source_id)
    if found is None:
        raise HTTPException(404, f"no source {source_id!r}")
    return found


@router.put("/{source_id}", response_model=UpsertOut)
def put_source(svc: Service, source_id: SourceId, body: SourceIn, _who: Ops) -> dict[str, Any]:
    """Register or replace one source (the body's id must match the path)."""
    if body.id != source_id:
        raise HTTPException(422, "the id in the body must match the path")
    return svc.upsert([body])


@router.delete("/{source_id}", status_code=204)
def delete_source(svc: Service, source_id: SourceId, _who: Ops) -> None:
    """Remove a source from the registry (its past tasks stay)."""
    if not svc.delete(source_id):
        raise HTTPException(404, f"no source {source_id!r}")


def install(app: FastAPI, svc: SourcesService) -> None:
    """Serve the sources API from `svc`."""
    app.state.sources = svc
    app.include_router(router)
