"""REST of the grid: outlines (GeoJSON import), placement of points, sites and devices, and a
routing preview. Reads need a reader-class token; changing outlines needs admin."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi import Path as FastPath

from collector.alarms.policy import RouteQuery
from collector.api import READ_ROLES
from collector.auth import Principal, Role, require
from collector.grid.geo import MAX_BYTES, OutlineError
from collector.grid.models import ImportedOut, OutlinesOut, PlacementOut, PlaceOut, RouteOut
from collector.grid.service import GridService
from collector.params import invalid

router = APIRouter(prefix="/api/v1/grid", tags=["grid"])
Admin = Annotated[Principal, Depends(require(Role.ADMIN))]
Reader = Annotated[Principal, Depends(require(*READ_ROLES, Role.OPS))]
OutlineId = Annotated[str, FastPath(min_length=1, max_length=100,
                                    pattern=r"^[^\x00-\x1f\x7f/]+$",
                                    description="a district, area or grid id")]
Lat = Annotated[float, Query(ge=-90, le=90, description="latitude, WGS-84 degrees")]
Lon = Annotated[float, Query(ge=-180, le=180, description="longitude, WGS-84 degrees")]
Kind = Annotated[str, Query(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$",
                            description="the event kind, e.g. lift or dust")]


def get_grid(request: Request) -> GridService:
    """The grid service attached to the app."""
    grid: GridService = request.app.state.grid
    return grid


GridDep = Annotated[GridService, Depends(get_grid)]


async def bounded_json(request: Request, limit: int = MAX_BYTES) -> Any:
    """The request body as JSON, refused (413) past `limit` bytes before it is all read."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"body of {declared} bytes; at most {limit}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise HTTPException(413, f"body larger than {limit} bytes")
    try:
        return orjson.loads(bytes(body))
    except orjson.JSONDecodeError as exc:
        raise invalid("body", "json", f"not JSON: {exc}") from None


def _import(grid: GridService, doc: Any, replace: bool, who: Principal) -> dict[str, Any]:
    try:
        return grid.import_outlines(doc, replace=replace, who=who.name)
    except OutlineError as exc:
        raise invalid("body", exc.where, exc.reason) from None


@router.get("/outlines", response_model=OutlinesOut)
def get_outlines(grid: GridDep, _who: Reader) -> dict[str, Any]:
    """Every district, area and grid as a GeoJSON FeatureCollection."""
    return grid.feature_collection()


@router.put("/outlines", response_model=ImportedOut)
async def put_outlines(request: Request, grid: GridDep, who: Admin) -> dict[str, Any]:
    """Replace every outline by a FeatureCollection (the city's grid plan)."""
    return _import(grid, await bounded_json(request), True, who)


@router.post("/outlines", response_model=ImportedOut)
async def post_outlines(request: Request, grid: GridDep, who: Admin) -> dict[str, Any]:
    """Add outlines or change some (by id), keeping the others."""
    return _import(grid, await bounded_json(request), False, who)


@router.delete("/outlines/{outline_id}", status_code=204)
def delete_outline(outline_id: OutlineId, grid: GridDep, _who: Admin) -> None:
    """Remove an outline that is no other outline's parent."""
    try:
        found = grid.delete_outline(outline_id)
    except ValueError as exc:
        raise HTTPException(409, str(exc)) from None
    if not found:
        raise HTTPException(404, f"no outline {outline_id!r}")


@router.get("/locate")
def locate(lat: Lat, lon: Lon, grid: GridDep, _who: Reader) -> PlaceOut:
    """The grid, area and district a point is in."""
    return PlaceOut.model_validate(grid.outlines.locate(lat, lon).as_dict())


# exclude_unset: only a device names its `site`.
@router.get("/placements", response_model=list[PlacementOut], response_model_exclude_unset=True)
def placements(grid: GridDep, _who: Reader) -> list[dict[str, Any]]:
    """Every known site and device with its grid, area and district, as of now."""
    return grid.placements()


@router.get("/route", response_model=RouteOut)
def route_preview(kind: Kind, grid: GridDep, _who: Reader,
                  site: Annotated[str, Query(max_length=100, description="the site's id")] = "",
                  lat: Annotated[float | None, Query(ge=-90, le=90, description=(
                      "latitude of the event, WGS-84 (with lon)"))] = None,
                  lon: Annotated[float | None, Query(ge=-180, le=180, description=(
                      "longitude of the event, WGS-84 (with lat)"))] = None) -> dict[str, Any]:
    """Who would answer for an event of this kind at a site or point now, and why."""
    evidence = {"lat": lat, "lon": lon} if lat is not None and lon is not None else {}
    with grid.db.connect() as conn:
        d = grid.route(conn, RouteQuery(kind, site, evidence=evidence))
    return {"unit": d.unit, "grid": d.grid, "area": d.area, "district": d.district,
            "reason": d.reason}
