"""Parking REST API and the live page: zone availability, spots, sensor health alerts."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field

from collector.clock import iso
from collector.pages import page
from collector.params import ZoneIdPath
from collector.parking.model import Spot, Zone
from collector.parking.service import ParkingService
from collector.parking.views import spot_health


class ZoneOut(BaseModel):
    """A zone's live availability (NGSI-LD OnStreetParking / ParkingSite counts)."""

    id: str
    name: str
    kind: Literal["onStreet", "offStreet"] | str
    lat: float
    lon: float
    district: str = Field(default="", description="district id ('' when not configured)")
    outline: list[tuple[float, float]] | None = Field(
        default=None, description="the zone's outline as [lon, lat] points, when drawn")
    free_share: float | None = Field(
        default=None, description="available / (total - closed), 0..1; null when no space "
                                  "is in use")
    total: int = Field(description="totalSpotNumber: capacity of the zone")
    available: int = Field(description="availableSpotNumber: spots known to be free")
    occupied: int
    unknown: int = Field(description="silent sensors and capacity without a sensor")
    closed: int
    updated: str | None = Field(description="when a spot of this zone last changed status")
    distance_m: float | None = None


class SpotOut(BaseModel):
    """A spot (NGSI-LD ParkingSpot)."""

    id: str
    zone: str | None
    status: Literal["free", "occupied", "closed", "unknown"]
    since: str | None
    last_report: str | None
    battery_mv: int | None
    rssi: int | None
    lat: float | None = Field(default=None, description="the bay's position, when configured")
    lon: float | None = None
    health: list[str] = Field(
        default_factory=list, description="problems of its sensor: offline, low_battery, "
                                          "stuck, flapping, magnetic_jump; [] when healthy")


class AlertOut(BaseModel):
    """A sensor health alert for the maintenance unit."""

    id: int
    spot: str
    zone: str | None
    kind: str
    severity: str
    raised: str
    cleared: str | None
    active: bool
    value: float | None
    message: str


def get_parking(request: Request) -> ParkingService:
    """The parking service attached to the app."""
    service: ParkingService | None = getattr(request.app.state, "parking", None)
    if service is None:
        raise HTTPException(503, "parking is not configured on this collector")
    return service


ParkingDep = Annotated[ParkingService, Depends(get_parking)]
router = APIRouter(tags=["parking"])
pages = APIRouter()  # the page itself holds no data: it fetches with the viewer's token


def zone_out(z: Zone, distance: float | None = None) -> ZoneOut:
    """The public form of a zone."""
    return ZoneOut(id=z.id, name=z.name, kind=z.kind, lat=z.lat, lon=z.lon, total=z.total,
                   available=z.available, occupied=z.occupied, unknown=z.unknown,
                   closed=z.closed, updated=iso(z.updated),
                   distance_m=None if distance is None else round(distance, 1),
                   district=z.district, outline=list(z.outline) or None,
                   free_share=z.free_share)


def spot_out(s: Spot, parking: ParkingService | None = None) -> SpotOut:
    """The public form of a spot (with its position and health when the service is given)."""
    where = parking.model.locations.get(s.id) if parking else None
    return SpotOut(id=s.id, zone=s.zone, status=s.status.value, since=iso(s.since),
                   last_report=iso(s.last_ts), battery_mv=s.battery_mv, rssi=s.rssi,
                   lat=where[0] if where else None, lon=where[1] if where else None,
                   health=spot_health(s, parking.clock(), parking.cfg.alerts.stuck_after)
                   if parking else [])


def parse_near(text: str) -> tuple[float, float]:
    """Parse `lat,lon`."""
    try:
        lat_s, lon_s = text.split(",")
        lat, lon = float(lat_s), float(lon_s)
    except ValueError:
        raise HTTPException(422, f"near={text!r}: write near=LAT,LON, e.g. 34.7466,113.6253") \
            from None
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise HTTPException(422, f"near={text!r}: latitude or longitude out of range")
    return lat, lon


@router.get("/api/v1/parking/zones")
def zones(
    parking: ParkingDep,
    near: Annotated[str | None, Query(description="LAT,LON: only zones with free spaces, "
                                                  "nearest first")] = None,
    radius: Annotated[float, Query(gt=0, le=50_000, description="metres")] = 500.0,
) -> list[ZoneOut]:
    """Every zone with live counts, or with `near` the zones with free spaces around a point."""
    with parking.lock:
        if near is None:
            return [zone_out(z) for z in sorted(parking.model.zones.values(),
                                                key=lambda z: z.id)]
        lat, lon = parse_near(near)
        return [zone_out(z, d) for d, z in parking.model.near(lat, lon, radius)]


@router.get("/api/v1/parking/zones/{zone_id}")
def zone(zone_id: ZoneIdPath, parking: ParkingDep) -> ZoneOut:
    """One zone: total, available, occupied, unknown, closed, updated."""
    with parking.lock:
        z = parking.model.zones.get(zone_id)
        if z is None:
            raise HTTPException(404, f"no parking zone {zone_id!r}")
        return zone_out(z)


@router.get("/api/v1/parking/spots")
def spots(parking: ParkingDep,
          zone: Annotated[str | None, Query(description="zone id; omit for all")] = None,
          status: Annotated[Literal["free", "occupied", "closed", "unknown"] | None,
                            Query(description="only spots in this status")] = None,
          limit: Annotated[int, Query(ge=1, le=100_000, description="at most this many")]
          = 10_000) -> list[SpotOut]:
    """Spots and their status, optionally of one zone or one status."""
    with parking.lock:
        if zone is not None and zone not in parking.model.zones:
            raise HTTPException(404, f"no parking zone {zone_id_hint(parking, zone)}")
        chosen = [s for s in parking.model.spots.values()
                  if (zone is None or s.zone == zone) and (status is None or s.status == status)]
        chosen.sort(key=lambda s: s.id)
        return [spot_out(s, parking) for s in chosen[:limit]]


def zone_id_hint(parking: ParkingService, zone: str) -> str:
    """A 404 detail naming a few known zones."""
    known = sorted(parking.model.zones)[:5]
    return f"{zone!r}; known zones include {known}"


@router.get("/api/v1/parking/alerts")
def alerts(parking: ParkingDep,
           active: Annotated[bool | None, Query(description="true: open, false: cleared, "
                                                            "omit: both")] = True,
           kind: Annotated[Literal["low_battery", "silent", "flapping", "magnetic_jump"]
                           | None, Query(description="only alerts of this kind")] = None,
           zone: Annotated[str | None, Query(max_length=64, description="only this zone's")]
           = None,
           limit: Annotated[int, Query(ge=1, le=10_000, description="at most this many")]
           = 1000) -> list[AlertOut]:
    """Sensor health alerts (newest first) for the maintenance unit."""
    rows: list[dict[str, Any]] = parking.alerts(active=active, kind=kind, zone=zone, limit=limit)
    return [_alert_out(r) for r in rows]


def _alert_out(r: dict[str, Any]) -> AlertOut:
    return AlertOut(id=r["id"], spot=r["spot_id"], zone=r["zone_id"], kind=r["kind"],
                    severity=r["severity"], raised=iso(r["raised"]) or "",
                    cleared=iso(r["cleared"]), active=r["cleared"] is None, value=r["value"],
                    message=r["message"])


@pages.get("/parking", response_class=HTMLResponse, include_in_schema=False)
def parking_page() -> HTMLResponse:
    """The live availability page."""
    return page("parking.html")
