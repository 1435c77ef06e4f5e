"""The NGSI-LD API subset under /ngsi-ld/v1: entities, one entity, temporal evolution.

Errors are NGSI-LD ProblemDetails (`application/json`, `type` under
https://uri.etsi.org/ngsi-ld/errors/). The @context goes in a Link header for
`application/json` and inline for `Accept: application/ld+json`.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Annotated, Any

import orjson
import sqlalchemy as sa
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response

from collector import schema
from collector.api import parse_time
from collector.ngsi import model
from collector.ngsi.source import EntitySource
from collector.params import Offset

MAX_LIMIT = 1000
TEMPORAL_MAX = 10_000


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


@router.get("/entities")
def query_entities(
    request: Request, source: SourceDep,
    type: Annotated[str | None, Query()] = None,
    id: Annotated[str | None, Query()] = None,
    q: str | None = None, attrs: str | None = None, georel: str | None = None,
    geometry: str | None = None, coordinates: str | None = None,
    limit: Annotated[int, Query(ge=0, le=MAX_LIMIT)] = 20,
    offset: Offset = 0,
    count: bool = False, options: str | None = None,
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


@router.get("/entities/{entity_id}")
def get_entity(request: Request, entity_id: str, source: SourceDep,
               attrs: str | None = None, options: str | None = None) -> Response:
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


@router.get("/temporal/entities")
def temporal_entities(
    request: Request, source: SourceDep,
    type: Annotated[str | None, Query()] = None,
    id: Annotated[str | None, Query()] = None,
    timerel: str | None = None, timeAt: str | None = None,
    endTimeAt: str | None = None, attrs: str | None = None,
    lastN: Annotated[int | None, Query(ge=1, le=TEMPORAL_MAX)] = None,
    limit: Annotated[int, Query(ge=0, le=MAX_LIMIT)] = 20,
    offset: Offset = 0,
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
