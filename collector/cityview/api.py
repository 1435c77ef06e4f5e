"""REST routes of the control-room map and the operator's overview."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import sqlalchemy as sa
from fastapi import APIRouter, HTTPException, Path, Query, Request
from pydantic import BaseModel, Field

from collector import schema
from collector.api import StoreDep, iso
from collector.cityview import layers as L
from collector.cityview.overview import DEFAULT_STALE_S, KindFigures, figures, gateway_counts
from collector.cityview.places import Places
from collector.cityview.viewer import Viewer, ViewerDep
from collector.elevators.api import RiskOut, risk
from collector.geojson import BBox, FeatureCollection, parse_bbox
from collector.params import invalid
from collector.store import Store, now_ms

router = APIRouter(prefix="/api/v1", tags=["city map and overview"])

Csv = Annotated[str | None, Query(max_length=2000)]


def _csv(name: str, text: str | None) -> list[str] | None:
    if not text:
        return None
    items = [t.strip() for t in text.split(",") if t.strip()]
    if len(items) > 50 or any(len(t) > 128 for t in items):
        raise invalid("query", name, "at most 50 comma-separated values of 128 characters")
    return items or None


def _bbox(text: str | None) -> BBox | None:
    try:
        return parse_bbox(text)
    except ValueError as exc:
        raise invalid("query", "bbox", str(exc), text) from None


class LayersOut(BaseModel):
    """Every requested map layer, built at one moment."""

    generated_at: str
    incidents: FeatureCollection[L.IncidentProps] | None = None
    lifts: FeatureCollection[L.LiftProps] | None = None
    gateways: FeatureCollection[L.GatewayProps] | None = None
    parking: FeatureCollection[L.ParkingProps] | None = None
    environment: FeatureCollection[L.EnvSiteProps] | None = None


BBoxQ = Annotated[str | None, Query(max_length=200, description="minLon,minLat,maxLon,maxLat: "
                                                                "only features inside")]
StateQ = Annotated[str | None, Query(max_length=200, description="incidents: a state, a comma "
                                     "list, or `active` (default), or `all`")]
UnitQ = Annotated[str | None, Query(max_length=128, description="incidents: one unit")]
KindQ = Annotated[str | None, Query(max_length=2000, description="incidents: kinds, "
                                                                 "comma-separated")]
DistrictQ = Annotated[str | None, Query(max_length=2000, description="districts, "
                                        "comma-separated (incidents and lifts)")]


def _incident_args(state: str | None, unit: str | None, kind: str | None,
                   district: str | None) -> tuple[list[str] | None, object]:
    from collector.alarms import repo
    from collector.alarms.api import _states

    states = None if state == "all" else _states(state or "active")
    return states, repo.IncidentFilter(kinds=_csv("kind", kind),
                                       grids=_csv("district", district))


def build_layer(request: Request, store: Store, viewer: Viewer, name: str, box: BBox | None,
                state: str | None, unit: str | None, kind: str | None,
                district: str | None) -> FeatureCollection[Any]:
    """One layer by name."""
    app_state = request.app.state
    places = Places(app_state, store)
    if name == "incidents":
        if unit is not None and not viewer.may_see(unit):
            raise HTTPException(403, f"{viewer.name} may not see unit {unit!r}")
        states, where = _incident_args(state, unit, kind, district)
        return L.incidents_layer(app_state, places, viewer, box, where, states, unit)
    if name == "lifts":
        districts = _csv("district", district)
        fc = L.lifts_layer(app_state, store, places, box, now_ms())
        if districts:
            fc.features = [f for f in fc.features if f.properties.district in districts]
        return fc
    if name == "gateways":
        return L.gateways_layer(store, places, box)
    if name == "parking":
        return L.parking_layer(app_state, box)
    return L.environment_layer(app_state, places, box)


@router.get("/map/layers")
def map_layers(
    request: Request, store: StoreDep, viewer: ViewerDep,
    layers: Annotated[str | None, Query(max_length=200, description="comma list of incidents, "
                                        "lifts, gateways, parking, environment; default all")]
    = None,
    bbox: BBoxQ = None, state: StateQ = None, unit: UnitQ = None, kind: KindQ = None,
    district: DistrictQ = None,
) -> LayersOut:
    """Every map layer of the control room at once (GeoJSON FeatureCollections, [lon, lat]);
    incidents only for ops and crew logins (crew: their units)."""
    wanted = _csv("layers", layers) or list(L.LAYERS)
    unknown = [w for w in wanted if w not in L.LAYERS]
    if unknown:
        raise invalid("query", "layers", f"unknown layer {unknown[0]!r}; one of "
                                         f"{list(L.LAYERS)}", layers)
    box = _bbox(bbox)
    out = LayersOut(generated_at=iso(now_ms()) or "")
    for name in wanted:
        setattr(out, name, build_layer(request, store, viewer, name, box, state, unit, kind,
                                       district))
    return out


@router.get("/map/layers/{layer}")
def map_layer(
    request: Request, store: StoreDep, viewer: ViewerDep,
    layer: Annotated[L.LayerName, Path(description="incidents, lifts, gateways, parking or "
                                                   "environment")],
    bbox: BBoxQ = None, state: StateQ = None, unit: UnitQ = None, kind: KindQ = None,
    district: DistrictQ = None,
) -> FeatureCollection[L.AnyProps]:
    """One map layer as a GeoJSON FeatureCollection ([lon, lat]); features without a known
    location have `geometry: null`."""
    if layer == "incidents" and viewer.incident_units is False:
        raise HTTPException(403, "incidents need an ops or crew login")
    return build_layer(request, store, viewer, layer, _bbox(bbox), state, unit, kind,
                       district)


# --- overview -----------------------------------------------------------------------------------

class KindOut(BaseModel):
    """How one family of devices is doing and how fresh its data is."""

    kind: str = Field(description="lift, parking, environment or other")
    devices: int
    online: int
    offline: int
    stale: int
    unknown: int
    newest: str | None = Field(description="the most recent report of any device")
    oldest: str | None = Field(description="the least recent last report of any device")
    freshness_s: float | None = Field(description="seconds since the most recent report")
    stale_after_s: float


class CountsOut(BaseModel):
    """Gateways by state."""

    total: int
    online: int
    offline: int
    unknown: int


class DeviceCountsOut(BaseModel):
    """Devices by state."""

    total: int
    online: int
    offline: int
    stale: int
    unknown: int


class IncidentCountsOut(BaseModel):
    """Active incidents the viewer may see (null counts: none visible to this token)."""

    active: int | None
    critical: int | None
    breached: int | None


class OverviewOut(BaseModel):
    """The whole system at a glance."""

    generated_at: str
    gateways: CountsOut
    devices: DeviceCountsOut
    kinds: list[KindOut]
    incidents: IncidentCountsOut
    links: dict[str, str] = Field(description="where the details are")


def _stale_limits(request: Request) -> dict[str, float]:
    limits = dict(DEFAULT_STALE_S)
    parking = getattr(request.app.state, "parking", None)
    if parking is not None:
        limits["parking"] = parking.cfg.heartbeat * parking.cfg.silent_factor
    env = getattr(request.app.state, "environment", None)
    if env is not None:
        limits["environment"] = env.config.defaults.offline_after
    return limits


def _devices(request: Request, store: Store, gateway: str | None = None) -> list[dict[str, Any]]:
    """Devices, with parking sensors known as such when their gateway did not name a kind."""
    rows = store.devices(gateway=gateway)
    parking = getattr(request.app.state, "parking", None)
    if parking is None:
        return rows
    return [{**d, "kind": "parking_sensor"} if d["kind"] == "unknown"
            and parking.model.is_parking(d["device_id"]) else d for d in rows]


def _offline_devices(store: Store) -> set[str]:
    t = schema.active_faults
    with store.engine.connect() as conn:
        return set(conn.scalars(sa.select(t.c.device_id).where(t.c.kind == "device_offline")))


def _kind_out(k: KindFigures, now: int) -> KindOut:
    return KindOut(kind=k.kind, devices=k.devices, online=k.online, offline=k.offline,
                   stale=k.stale, unknown=k.unknown, newest=iso(k.newest), oldest=iso(k.oldest),
                   freshness_s=None if k.newest is None else max(0.0, (now - k.newest) / 1000),
                   stale_after_s=k.stale_after_s)


@router.get("/overview")
def overview(request: Request, store: StoreDep, viewer: ViewerDep) -> OverviewOut:
    """Gateways and devices online/offline, data freshness per kind, active incidents."""
    now = now_ms()
    gws = store.gateways()
    kinds, listed = figures(_devices(request, store), {g["gateway_id"]: g["state"] for g in gws},
                            _offline_devices(store), now, _stale_limits(request))
    by_state = {s: sum(1 for d in listed if d["state"] == s)
                for s in ("online", "offline", "stale", "unknown")}
    incidents = IncidentCountsOut(active=None, critical=None, breached=None)
    desk = getattr(request.app.state, "alarms", None)
    if desk is not None and viewer.incident_units is not False:
        active = desk.incidents(["open", "acknowledged", "on_site"], viewer.incident_units,
                                5000)
        incidents = IncidentCountsOut(
            active=len(active), critical=sum(i["severity"] == "critical" for i in active),
            breached=sum(i["sla"]["state"] == "breached" for i in active))
    return OverviewOut(
        generated_at=iso(now) or "", gateways=CountsOut(**gateway_counts(g["state"]
                                                                         for g in gws)),
        devices=DeviceCountsOut(total=len(listed), **by_state),
        kinds=[_kind_out(k, now) for _, k in sorted(kinds.items())], incidents=incidents,
        links={"gateways": "/api/v1/gateways", "devices": "/api/v1/overview/devices",
               "latest": "/api/v1/devices/{id}/latest", "map": "/api/v1/map/layers"})


class DeviceRowOut(BaseModel):
    """A device, its state and where its raw values are."""

    id: str
    kind: str
    family: str
    gateway: str
    state: Literal["online", "offline", "stale", "unknown"]
    last_seen: str | None
    age_s: float | None
    latest_url: str = Field(description="its latest raw values")


@router.get("/overview/devices")
def overview_devices(
    request: Request, store: StoreDep, viewer: ViewerDep,
    kind: Annotated[str | None, Query(max_length=64, description="family (lift, parking, "
                                      "environment, other) or device kind")] = None,
    gateway: Annotated[str | None, Query(max_length=128, description="gateway id")] = None,
    state: Annotated[Literal["online", "offline", "stale", "unknown"] | None,
                     Query(description="only devices in this state")] = None,
    limit: Annotated[int, Query(ge=1, le=100_000, description="at most this many")] = 5000,
) -> list[DeviceRowOut]:
    """Devices with their state and a link to their latest values, stalest first."""
    del viewer
    now = now_ms()
    gws = {g["gateway_id"]: g["state"] for g in store.gateways()}
    _, listed = figures(_devices(request, store, gateway), gws, _offline_devices(store), now,
                        _stale_limits(request))
    chosen = [d for d in listed if (kind is None or kind in (d["family"], d["kind"]))
              and (state is None or d["state"] == state)]
    chosen.sort(key=lambda d: (d["last_seen"] is not None, d["last_seen"] or 0,
                               d["device_id"]))
    return [DeviceRowOut(id=d["device_id"], kind=d["kind"], family=d["family"],
                         gateway=d["gateway_id"], state=d["state"],
                         last_seen=iso(d["last_seen"]),
                         age_s=None if d["last_seen"] is None
                         else max(0.0, (now - d["last_seen"]) / 1000),
                         latest_url=f"/api/v1/devices/{d['device_id']}/latest")
            for d in chosen[:limit]]



@router.get("/overview/lift-risk")
def lift_risk(
    request: Request, store: StoreDep, viewer: ViewerDep,
    limit: Annotated[int, Query(ge=1, le=10_000, description="at most this many lifts")] = 20,
    district: Annotated[str | None, Query(max_length=128, description="only lifts of this "
                                                                      "district")] = None,
    rank_by: Annotated[Literal["score", "per_1000_trips"], Query(
        description="score, or score per 1000 trips (usage-scaled)")] = "per_1000_trips",
) -> list[RiskOut]:
    """The high-risk lift ranking with its explanations, for the control room's logins (the
    same as GET /api/v1/elevators/risk, ranked by use by default)."""
    del viewer
    return risk(request, store, limit, district, rank_by)
