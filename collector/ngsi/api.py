"""The NGSI-LD API subset under /ngsi-ld/v1: entities, one entity, temporal evolution.

Errors are NGSI-LD ProblemDetails (`application/json`, `type` under
https://uri.etsi.org/ngsi-ld/errors/). The @context goes in a Link header for
`application/json` and inline for `Accept: application/ld+json`.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from typing import Annotated, Any, Literal

import orjson
import sqlalchemy as sa
from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from collector import schema
from collector.api import parse_time
from collector.ngsi import model
from collector.ngsi.source import EntitySource
from collector.params import INT64_MAX

MAX_LIMIT = 1000
TEMPORAL_MAX = 10_000
TYPE_SAMPLE = 50  # entities looked at per type for /types?details=true attribute names


class EntityOut(BaseModel):
    """An NGSI-LD entity: id, type and its attributes (Property, GeoProperty, Relationship)."""

    model_config = ConfigDict(extra="allow")

    id: str = Field(description="urn:ngsi-ld:<Type>:<local id>")
    type: str


class TemporalEntityOut(EntityOut):
    """An entity whose attributes are arrays of instances, each with observedAt."""


class EntityTypeListOut(BaseModel):
    """NGSI-LD EntityTypeList: the types of entities available now."""

    id: str = Field(description="urn:ngsi-ld:EntityTypeList:<digest of the list>")
    type: Literal["EntityTypeList"] = "EntityTypeList"
    typeList: list[str]


class EntityTypeOut(BaseModel):
    """NGSI-LD EntityType: a type and the attributes its entities carry."""

    id: str = Field(description="the type (short name, expanded by the core @context)")
    type: Literal["EntityType"] = "EntityType"
    typeName: str
    attributeNames: list[str]


class NgsiError(Exception):
    """An error answered as NGSI-LD ProblemDetails."""

    def __init__(self, status: int, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.kind, self.detail = status, kind, detail


def bad_request(detail: str) -> NgsiError:
    """400 BadRequestData."""
    return NgsiError(400, "BadRequestData", detail)


def problem_response(exc: NgsiError) -> Response:
    """The ProblemDetails body of an error."""
    body = {"type": model.ERRORS + exc.kind, "title": exc.kind, "status": exc.status,
            "detail": exc.detail}
    return Response(orjson.dumps(body), status_code=exc.status,
                    media_type="application/json")


async def _problem_handler(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, NgsiError)
    return problem_response(exc)


def add_problem_handler(app: FastAPI) -> None:
    """Answer NgsiError as ProblemDetails in this app."""
    app.add_exception_handler(NgsiError, _problem_handler)


def get_source(request: Request) -> EntitySource:
    """The entity source attached to the app by install_ngsi."""
    src: EntitySource = request.app.state.ngsi_source
    return src


SourceDep = Annotated[EntitySource, Depends(get_source)]
router = APIRouter(prefix="/ngsi-ld/v1", tags=["NGSI-LD"])


def wants_ld(request: Request) -> bool:
    """Did the client ask for JSON-LD (context inline)?"""
    return "application/ld+json" in request.headers.get("accept", "")


def ngsi_response(request: Request, body: Any, headers: dict[str, str] | None = None) -> \
        Response:
    """JSON with a Link header, or JSON-LD with @context inline."""
    headers = dict(headers or {})
    if wants_ld(request):
        items = body if isinstance(body, list) else [body]
        for item in items:
            item["@context"] = model.CONTEXT
        return Response(orjson.dumps(body), media_type="application/ld+json", headers=headers)
    headers["Link"] = model.LINK_HEADER
    return Response(orjson.dumps(body), media_type="application/json", headers=headers)


def _types(type_: str | None, id_: str | None) -> list[str]:
    if type_ is None and id_ is None:
        raise bad_request("give type= (or id=): an unbounded query of every entity is refused")
    if type_ is None:
        assert id_ is not None
        return sorted({p[0] for i in id_.split(",") if (p := model.split_urn(i.strip()))})
    types = [t.strip() for t in type_.split(",") if t.strip()]
    unknown = [t for t in types if t not in model.ENTITY_TYPES]
    if unknown:
        raise bad_request(f"unknown type {unknown[0]!r}; CityGate serves "
                          f"{', '.join(model.ENTITY_TYPES)}")
    return types


def _shape(entity: dict[str, Any], attrs: set[str] | None, options: str | None) -> \
        dict[str, Any]:
    out = model.project(entity, attrs)
    opts = set((options or "").split(","))
    return model.key_values(out) if {"keyValues", "simplified"} & opts else out


TypeQ = Annotated[str | None, Query(
    max_length=500, description="entity type(s), comma-separated: ParkingSpot, "
    "OnStreetParking, OffStreetParking, AirQualityObserved, Device, Alert (see /types); "
    "type or id is required")]
IdQ = Annotated[str | None, Query(
    max_length=20_000, description="entity URN(s), comma-separated, e.g. "
    "urn:ngsi-ld:ParkingSpot:pk-1001")]
AttrsQ = Annotated[str | None, Query(
    max_length=2000, description="only these attributes, comma-separated (e.g. "
    "status,location); id and type are always returned")]
OptionsQ = Annotated[str | None, Query(
    max_length=100, description="keyValues (or simplified): plain values instead of "
    "Property objects")]
ENTITY_RESPONSES: dict[int | str, dict[str, Any]] = {200: {
    "model": list[EntityOut],
    "description": "entities as NGSI-LD JSON (@context in a Link header) or JSON-LD "
                   "(Accept: application/ld+json, @context inline)"}}


@router.get("/entities", response_model=None, responses=ENTITY_RESPONSES)
def query_entities(
    request: Request, source: SourceDep,
    type: TypeQ = None,
    id: IdQ = None,
    q: Annotated[str | None, Query(
        max_length=2000, description="NGSI-LD query language: attribute comparisons "
        "joined by ; (and), e.g. status==\"free\" or availableSpotNumber>0; attribute "
        "paths with . for sub-attributes")] = None,
    attrs: AttrsQ = None,
    georel: Annotated[str | None, Query(
        max_length=100, description="geo relation to `geometry`/`coordinates`: "
        "near;maxDistance==<metres> (nearest first) or within; needs geometry and "
        "coordinates")] = None,
    geometry: Annotated[str | None, Query(
        max_length=20, description="shape of the geo-query reference: Point (near) or "
        "Polygon (within)")] = None,
    coordinates: Annotated[str | None, Query(
        max_length=20_000, description="GeoJSON coordinates of the reference, [lon,lat] for a "
        "Point, [[[lon,lat],...]] for a Polygon")] = None,
    limit: Annotated[int, Query(ge=0, le=MAX_LIMIT, description="page size (0 with count=true "
                                                                "gives only the count)")] = 20,
    offset: Annotated[int, Query(ge=0, le=INT64_MAX, description="entities to skip (paging)")]
    = 0,
    count: Annotated[bool, Query(description="add the NGSILD-Results-Count header with the "
                                             "number of matches")] = False,
    options: OptionsQ = None,
) -> Response:
    """Entities of the given types matching q, a geo-query and id; paginated."""
    try:
        terms = model.parse_q(q) if q else []
        near = model.parse_geo(georel, geometry, coordinates) if georel else None
    except model.QueryError as exc:
        raise bad_request(str(exc)) from None
    ids = {i.strip() for i in id.split(",")} if id else None
    found: list[tuple[float, dict[str, Any]]] = []
    for e in source.entities(_types(type, id)):
        if ids is not None and e["id"] not in ids:
            continue
        if terms and not model.matches_q(e, terms):
            continue
        distance = 0.0
        if near is not None:
            d = model.within(e, near)
            if d is None:
                continue
            distance = d
        found.append((distance, e))
    if near is not None:
        found.sort(key=lambda x: x[0])
    wanted = {a.strip() for a in attrs.split(",")} if attrs else None
    page = [_shape(e, wanted, options) for _, e in found[offset:offset + limit]]
    headers = {"NGSILD-Results-Count": str(len(found))} if count else {}
    return ngsi_response(request, page, headers)


@router.get("/entities/{entity_id}", response_model=None, responses={200: {
    "model": EntityOut, "description": "the entity (JSON or JSON-LD as for /entities)"}})
def get_entity(request: Request,
               entity_id: Annotated[str, Path(max_length=600, description="the entity's URN, "
                                              "urn:ngsi-ld:<Type>:<id>")],
               source: SourceDep, attrs: AttrsQ = None, options: OptionsQ = None) -> Response:
    """One entity by its URN."""
    if model.split_urn(entity_id) is None:
        raise bad_request(f"{entity_id!r} is not an NGSI-LD URN (urn:ngsi-ld:<Type>:<id>)")
    e = source.entity(entity_id)
    if e is None:
        raise NgsiError(404, "ResourceNotFound", f"no entity {entity_id!r}")
    wanted = {a.strip() for a in attrs.split(",")} if attrs else None
    return ngsi_response(request, _shape(e, wanted, options))


# --- temporal ---------------------------------------------------------------------------------

def _series(source: EntitySource, entity: dict[str, Any]) -> dict[str, tuple[str, str | None]]:
    """Stored (device, quantity) series behind an entity: device_id -> attr naming."""
    etype, local = model.split_urn(entity["id"]) or ("", "")
    if etype == "AirQualityObserved":
        site = source.sites.get(local)
        return dict.fromkeys(site.devices, ("air", None)) if site else {}
    if etype in ("Device", "ParkingSpot") and not local.startswith("gateway:"):
        return {local: (etype, None)}
    return {}


def _instances(rows: list[Any], etype: str) -> dict[str, list[dict[str, Any]]]:
    attrs: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        value = model.ngsi_value(r.quantity, r.value, r.vtext)
        if value is None:
            continue
        if etype == "air":
            mapped = model.AIR_ATTRS.get(r.quantity)
            if mapped is None or r.quality != "good":
                continue
            name, unit = mapped
            value = model.air_value(r.quantity, float(value))
        elif etype == "ParkingSpot":
            if r.quantity != "occupied":
                continue
            name, unit, value = "status", None, "occupied" if value else "free"
        else:
            q = model.QUANTITIES.get(r.quantity)
            name, unit = model.camel(r.quantity), (q.unit_code if q else None) or None
        inst = model.prop(value, r.ts, unit)
        inst["instanceId"] = f"urn:ngsi-ld:Instance:{r.device_id}:{r.quantity}:{r.ts}"
        attrs[name].append(inst)
    return attrs


@router.get("/temporal/entities", response_model=None, responses={200: {
    "model": list[TemporalEntityOut],
    "description": "entities with each attribute an array of instances (observedAt)"}})
def temporal_entities(
    request: Request, source: SourceDep,
    type: TypeQ = None,
    id: IdQ = None,
    timerel: Annotated[str | None, Query(max_length=10, description="before, after or between "
                                         "(with endTimeAt); required")] = None,
    timeAt: Annotated[str | None, Query(max_length=40, description="ISO 8601 time the "
                                        "relation refers to; required")] = None,
    endTimeAt: Annotated[str | None, Query(max_length=40, description="ISO 8601 end of a "
                                           "between interval (exclusive)")] = None,
    attrs: AttrsQ = None,
    lastN: Annotated[int | None, Query(ge=1, le=TEMPORAL_MAX, description="at most this many "
                                       "instances per series (oldest first)")] = None,
    limit: Annotated[int, Query(ge=0, le=MAX_LIMIT, description="entities per page")] = 20,
    offset: Annotated[int, Query(ge=0, le=INT64_MAX, description="entities to skip")] = 0,
) -> Response:
    """Attribute histories (arrays of instances with observedAt) over a time interval."""
    since, until = _time_interval(timerel, timeAt, endTimeAt)
    wanted = {a.strip() for a in attrs.split(",")} if attrs else None
    ids = {i.strip() for i in id.split(",")} if id else None
    out = []
    entities = [e for e in source.entities(_types(type, id))
                if ids is None or e["id"] in ids][offset:offset + limit]
    r = schema.readings
    with source.store.engine.connect() as conn:
        for e in entities:
            series = _series(source, e)
            body: dict[str, Any] = {"id": e["id"], "type": e["type"]}
            for dev, (etype, _) in series.items():
                stmt = (sa.select(r.c.device_id, r.c.quantity, r.c.ts, r.c.value, r.c.vtext,
                                  r.c.quality).where(r.c.device_id == dev, r.c.ts >= since)
                        .order_by(r.c.ts).limit(lastN or TEMPORAL_MAX))
                if until is not None:
                    stmt = stmt.where(r.c.ts < until)
                for name, inst in _instances(list(conn.execute(stmt)), etype).items():
                    if wanted is None or name in wanted:
                        body.setdefault(name, []).extend(inst)
            out.append(body)
    return ngsi_response(request, out)


def _time_interval(timerel: str | None, time_at: str | None,
                   end_time_at: str | None) -> tuple[int, int | None]:
    try:
        at = parse_time(time_at, "timeAt")
        end = parse_time(end_time_at, "endTimeAt")
    except RequestValidationError as exc:  # NGSI-LD answers its own ProblemDetails
        err = exc.errors()[0]
        raise bad_request(f"{err['loc'][-1]}: {err['msg']}") from None
    if timerel is None or at is None:
        raise bad_request("temporal queries need timerel (before|after|between) and timeAt")
    if timerel == "between":
        if end is None or end <= at:
            raise bad_request("timerel=between needs endTimeAt after timeAt")
        return at, end
    if timerel == "after":
        return at, None
    if timerel == "before":
        return 0, at
    raise bad_request(f"timerel {timerel!r} is not before, after or between")


# --- discovery ----------------------------------------------------------------------------------

def _available(source: EntitySource) -> dict[str, list[str]]:
    """Sample local ids of every type that has entities now."""
    found = {t: source.sample_ids(t, TYPE_SAMPLE) for t in model.ENTITY_TYPES}
    return {t: ids for t, ids in found.items() if ids}


@router.get("/types", response_model=None, responses={200: {
    "model": EntityTypeListOut | list[EntityTypeOut],
    "description": "EntityTypeList, or with details=true a list of EntityType"}})
def entity_types(
    request: Request, source: SourceDep,
    details: Annotated[bool, Query(description="true: one EntityType per type with the "
                                               "attribute names its entities carry")] = False,
) -> Response:
    """The entity types available now (NGSI-LD discovery, EntityTypeList / EntityType)."""
    available = _available(source)
    if not details:
        digest = hashlib.sha256(",".join(sorted(available)).encode()).hexdigest()[:16]
        body: Any = EntityTypeListOut(id=f"urn:ngsi-ld:EntityTypeList:{digest}",
                                      typeList=sorted(available)).model_dump()
        return ngsi_response(request, body)
    out = []
    for etype, ids in sorted(available.items()):
        entities = source.entities_by_id(model.urn(etype, i) for i in ids).values()
        names = sorted({k for e in entities for k in e if k not in ("id", "type", "@context")})
        out.append(EntityTypeOut(id=etype, typeName=etype, attributeNames=names).model_dump())
    return ngsi_response(request, out)
