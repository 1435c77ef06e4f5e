"""Parking routes for maps and drivers: GeoJSON of zones and bays, nearest free parking with a
navigation link, occupancy history per zone, sensor health per spot, one alert.

The routes hang on `collector.parking.api.router` (imported by the package), so whoever
includes that router serves them behind the same readers' token.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import HTTPException, Query
from pydantic import BaseModel, Field

from collector.api import iso, parse_time
from collector.geojson import Feature, FeatureCollection, point, polygon
from collector.params import RowId, ZoneIdPath
from collector.parking.api import (
    AlertOut,
    ParkingDep,
    SpotOut,
    ZoneOut,
    _alert_out,
    router,
    spot_out,
    zone_out,
)
from collector.parking.geo import directions_url, geo_uri, walk
from collector.parking.history import BUCKET_MS, buckets
from collector.parking.model import Zone
from collector.parking.service import ParkingService
from collector.parking.views import HEALTH_KINDS, spot_health

Lat = Annotated[float, Query(ge=-90, le=90, description="latitude of the driver, WGS-84 "
                                                       "degrees")]
Lon = Annotated[float, Query(ge=-180, le=180, description="longitude of the driver, WGS-84 "
                                                         "degrees")]
MAX_RANGE_MS = {"hour": 31 * 86_400_000, "day": 366 * 86_400_000}
DEFAULT_RANGE_MS = {"hour": 86_400_000, "day": 30 * 86_400_000}


class ZoneProps(BaseModel):
    """A zone on the map."""

    layer: Literal["parking"] = "parking"
    id: str
    name: str
    kind: str
    district: str
    total: int
    available: int
    occupied: int
    unknown: int
    closed: int
    free_share: float | None = Field(description="available / (total - closed)")
    level: Literal["free", "filling", "full", "unknown"] = Field(
        description="free: >= 30 % free; filling: some free; full: none free; unknown: no "
                    "sensor data")
    state: str = Field(description="same as level (the map colours by it)")
    colour: str = Field(description="suggested colour: green, amber, red, grey")
    updated: str | None
    lat: float
    lon: float


class BayProps(BaseModel):
    """A bay on the map."""

    id: str
    zone: str | None
    status: str
    health: list[str]
    since: str | None
    battery_mv: int | None


def level_of(z: Zone) -> Literal["free", "filling", "full", "unknown"]:
    """How full a zone looks: by its free share of the spaces whose state is known."""
    known = z.available + z.occupied
    if known == 0:
        return "unknown"
    if z.available == 0:
        return "full"
    return "free" if (z.free_share or 0) >= 0.3 else "filling"


COLOURS = {"free": "green", "filling": "amber", "full": "red", "unknown": "grey"}


def zone_feature(z: Zone) -> Feature[ZoneProps]:
    """A zone as a GeoJSON feature: its outline when drawn, else its point."""
    level = level_of(z)
    props = ZoneProps(id=z.id, name=z.name or z.id, kind=z.kind, district=z.district,
                      total=z.total, available=z.available, occupied=z.occupied,
                      unknown=z.unknown, closed=z.closed, free_share=z.free_share, level=level,
                      state=level, colour=COLOURS[level], updated=iso(z.updated), lat=z.lat,
                      lon=z.lon)
    geometry = polygon(z.outline) if z.outline else point(z.lat, z.lon)
    return Feature[ZoneProps](id=z.id, geometry=geometry, properties=props)


def zone_features(parking: ParkingService) -> FeatureCollection[ZoneProps]:
    """Every zone as a feature collection (lock taken here)."""
    with parking.lock:
        zones = sorted(parking.model.zones.values(), key=lambda z: z.id)
        return FeatureCollection[ZoneProps](features=[zone_feature(z) for z in zones])


@router.get("/api/v1/parking/zones.geojson")
def zones_geojson(parking: ParkingDep) -> FeatureCollection[ZoneProps]:
    """Every zone as GeoJSON (outline or point) with its counts, free share and level."""
    return zone_features(parking)


@router.get("/api/v1/parking/spots.geojson")
def spots_geojson(
    parking: ParkingDep,
    zone: Annotated[str | None, Query(max_length=64, description="zone id; omit for all")]
    = None,
    limit: Annotated[int, Query(ge=1, le=100_000, description="at most this many bays")]
    = 20_000,
) -> FeatureCollection[BayProps]:
    """Bays with a known position as GeoJSON points, with status and sensor health."""
    with parking.lock:
        if zone is not None and zone not in parking.model.zones:
            raise HTTPException(404, f"no parking zone {zone!r}")
        now, stuck = parking.clock(), parking.cfg.alerts.stuck_after
        out = []
        for sid, (lat, lon) in sorted(parking.model.locations.items()):
            s = parking.model.spots[sid]
            if zone is not None and s.zone != zone:
                continue
            out.append(Feature[BayProps](
                id=sid, geometry=point(lat, lon),
                properties=BayProps(id=sid, zone=s.zone, status=s.status.value,
                                    health=spot_health(s, now, stuck), since=iso(s.since),
                                    battery_mv=s.battery_mv)))
            if len(out) >= limit:
                break
    return FeatureCollection[BayProps](features=out)


class Navigation(BaseModel):
    """How to get there: a geo: URI for the phone's map app and a web directions link."""

    geo: str = Field(description="RFC 5870 geo: URI of the target")
    web: str = Field(description="walking directions, from the configured URL pattern")


class Place(BaseModel):
    """A WGS-84 point."""

    lat: float
    lon: float


class NearestResult(BaseModel):
    """A zone with free spaces and how far it is on foot."""

    zone: ZoneOut
    straight_m: float = Field(description="great-circle distance to the target, metres")
    walking_m: float = Field(description="straight_m x detour_factor")
    walking_min: float = Field(description="walking_m at walking_speed_m_s, minutes")
    target: Place = Field(description="the nearest free bay when bays are placed, else the "
                                      "zone's point")
    free_spots: list[SpotOut] = Field(description="free bays nearest first")
    navigation: Navigation


class NearestOut(BaseModel):
    """Free parking nearest to a point, by walking distance."""

    origin: Place
    method: Literal["great_circle_x_detour"] = Field(
        default="great_circle_x_detour",
        description="walking distance = great-circle distance x detour_factor (no road graph)")
    detour_factor: float
    walking_speed_m_s: float
    radius_m: float
    results: list[NearestResult]


def _free_bays(parking: ParkingService, z: Zone, lat: float,
               lon: float) -> list[tuple[float, str, tuple[float, float] | None]]:
    """Free bays of a zone, nearest first (bays without position last, by id)."""
    out: list[tuple[float, str, tuple[float, float] | None]] = []
    for s in parking.model.spots.values():
        if s.zone == z.id and s.status.value == "free":
            where = parking.model.locations.get(s.id)
            d = walk(lat, lon, *where, 1.0, 1.0).straight_m if where else float("inf")
            out.append((d, s.id, where))
    return sorted(out)


@router.get("/api/v1/parking/nearest")
def nearest(
    parking: ParkingDep, lat: Lat, lon: Lon,
    limit: Annotated[int, Query(ge=1, le=50, description="at most this many zones")] = 5,
    radius: Annotated[float, Query(gt=0, le=20_000, description="search radius in metres of "
                                                                "walking distance")] = 3000.0,
    spots: Annotated[int, Query(ge=0, le=50, description="free bays listed per zone")] = 3,
) -> NearestOut:
    """Zones with free spaces nearest to a point on foot, with their nearest free bays and a
    navigation link (geo: URI and a configurable web directions URL)."""
    cfg = parking.cfg
    found: list[NearestResult] = []
    with parking.lock:
        for z in parking.model.zones.values():
            if z.available <= 0:
                continue
            bays = _free_bays(parking, z, lat, lon)
            target = bays[0][2] if bays and bays[0][2] else (z.lat, z.lon)
            w = walk(lat, lon, target[0], target[1], cfg.detour_factor, cfg.walking_speed)
            if w.walking_m > radius:
                continue
            free = [spot_out(parking.model.spots[sid], parking) for _, sid, _ in bays[:spots]]
            found.append(NearestResult(
                zone=zone_out(z), straight_m=w.straight_m, walking_m=w.walking_m,
                walking_min=w.walking_min, target=Place(lat=target[0], lon=target[1]),
                free_spots=free,
                navigation=Navigation(geo=geo_uri(*target), web=directions_url(
                    cfg.navigation_url, (lat, lon), target))))
    found.sort(key=lambda r: (r.walking_m, r.zone.id))
    return NearestOut(origin=Place(lat=lat, lon=lon), detour_factor=cfg.detour_factor,
                      walking_speed_m_s=cfg.walking_speed, radius_m=radius,
                      results=found[:limit])


class HistoryPoint(BaseModel):
    """One hour or day of a zone: mean counts over the samples taken in it."""

    t: str = Field(description="start of the UTC hour or day")
    free_avg: float
    occupied_avg: float
    unknown_avg: float
    free_share_avg: float | None
    free_min: int
    total: int
    samples: int


class ZoneHistoryOut(BaseModel):
    """Occupancy of a zone over time."""

    zone: str
    by: Literal["hour", "day"]
    since: str
    until: str
    sample_every_s: float = Field(description="how often the counts are sampled")
    points: list[HistoryPoint]


@router.get("/api/v1/parking/zones/{zone_id}/history")
def zone_history(
    zone_id: ZoneIdPath, parking: ParkingDep,
    by: Annotated[Literal["hour", "day"], Query(description="bucket size")] = "hour",
    since: Annotated[str | None, Query(description="ISO 8601 or epoch ms, inclusive; default: "
                                                   "24 h (by hour) or 30 days (by day) ago")]
    = None,
    until: Annotated[str | None, Query(description="ISO 8601 or epoch ms, exclusive; default "
                                                   "now")] = None,
) -> ZoneHistoryOut:
    """Occupancy of a zone by hour (up to 31 days) or by day (up to 366 days)."""
    if zone_id not in parking.model.zones:
        raise HTTPException(404, f"no parking zone {zone_id!r}")
    end = parse_time(until, "until") or parking.clock()
    start = parse_time(since, "since")
    if start is None:
        start = end - DEFAULT_RANGE_MS[by]
    if start >= end or end - start > MAX_RANGE_MS[by]:
        raise HTTPException(422, f"since must be before until, at most "
                                 f"{MAX_RANGE_MS[by] // 86_400_000} days apart by {by}")
    start -= start % BUCKET_MS[by]
    points = buckets(parking.samples(zone_id, start, end), by)
    return ZoneHistoryOut(
        zone=zone_id, by=by, since=iso(start) or "", until=iso(end) or "",
        sample_every_s=parking.cfg.history_every,
        points=[HistoryPoint(t=iso(p.t) or "", free_avg=p.free_avg,
                             occupied_avg=p.occupied_avg, unknown_avg=p.unknown_avg,
                             free_share_avg=p.free_share_avg, free_min=p.free_min,
                             total=p.total, samples=p.samples) for p in points])


class SpotHealthOut(BaseModel):
    """A spot whose sensor has a problem (or every spot with all=true)."""

    id: str
    zone: str | None
    status: str
    health: list[str]
    battery_mv: int | None
    last_report: str | None
    since: str | None
    lat: float | None
    lon: float | None
    alerts: list[int] = Field(description="ids of its active alerts (GET /alerts/{id})")


class HealthOut(BaseModel):
    """Sensor health of the parking sensors."""

    counts: dict[str, int] = Field(description="spots per problem, and `ok`")
    spots: list[SpotHealthOut]
    truncated: bool


@router.get("/api/v1/parking/health")
def sensor_health(
    parking: ParkingDep,
    zone: Annotated[str | None, Query(max_length=64, description="zone id; omit for all")]
    = None,
    all: Annotated[bool, Query(description="list healthy spots too")] = False,
    limit: Annotated[int, Query(ge=1, le=100_000, description="at most this many spots")]
    = 5000,
) -> HealthOut:
    """Per spot: offline, low battery, stuck, flapping or magnetic jump, with its alert ids."""
    if zone is not None and zone not in parking.model.zones:
        raise HTTPException(404, f"no parking zone {zone!r}")
    active: dict[str, list[int]] = {}
    for a in parking.alerts(active=True, zone=zone, limit=100_000):
        active.setdefault(a["spot_id"], []).append(int(a["id"]))
    counts = dict.fromkeys(("ok", *HEALTH_KINDS), 0)
    listed: list[SpotHealthOut] = []
    with parking.lock:
        now, stuck = parking.clock(), parking.cfg.alerts.stuck_after
        for s in sorted(parking.model.spots.values(), key=lambda s: s.id):
            if zone is not None and s.zone != zone:
                continue
            problems = spot_health(s, now, stuck)
            for p in problems or ["ok"]:
                counts[p] += 1
            if problems or all:
                where = parking.model.locations.get(s.id)
                listed.append(SpotHealthOut(
                    id=s.id, zone=s.zone, status=s.status.value, health=problems,
                    battery_mv=s.battery_mv, last_report=iso(s.last_ts), since=iso(s.since),
                    lat=where[0] if where else None, lon=where[1] if where else None,
                    alerts=sorted(active.get(s.id, []))))
    return HealthOut(counts=counts, spots=listed[:limit], truncated=len(listed) > limit)


class AlertDetailOut(AlertOut):
    """One alert with where its spot is."""

    lat: float | None
    lon: float | None


@router.get("/api/v1/parking/alerts/{alert_id}")
def alert(alert_id: RowId, parking: ParkingDep) -> AlertDetailOut:
    """One sensor health alert (the list's items link here)."""
    row = parking.alert(alert_id)
    if row is None:
        raise HTTPException(404, f"no parking alert {alert_id}")
    where = parking.model.locations.get(row["spot_id"])
    return AlertDetailOut(**_alert_out(row).model_dump(), lat=where[0] if where else None,
                          lon=where[1] if where else None)
