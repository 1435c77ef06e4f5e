"""The control room's map layers as GeoJSON: incidents, lifts, gateways, parking, environment.

Each builder reads the current state once and returns a FeatureCollection whose properties
carry `state` and a suggested `colour`; things without a known location keep `geometry: null`
so a page can still list them.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Annotated, Any, Literal

import orjson
import sqlalchemy as sa
from pydantic import BaseModel, Field

from collector import schema
from collector.api import iso
from collector.cityview.places import Places
from collector.cityview.viewer import Viewer
from collector.elevators import queries
from collector.elevators.stats import DAY_MS, risk_of
from collector.geojson import BBox, Feature, FeatureCollection, in_bbox, point
from collector.parking.driver_api import ZoneProps as ParkingProps
from collector.store import Store

LayerName = Literal["incidents", "lifts", "gateways", "parking", "environment"]
LAYERS: tuple[LayerName, ...] = ("incidents", "lifts", "gateways", "parking", "environment")
OFFLINE_KINDS = frozenset({"device_offline", "gateway_offline"})


class IncidentProps(BaseModel):
    """An incident on the map."""

    layer: Literal["incidents"] = "incidents"
    id: int
    name: str = Field(description="the incident's title")
    state: str
    colour: str = Field(description="red: critical or SLA breached; amber: major or SLA due "
                                    "soon; blue otherwise")
    kind: str
    severity: str
    unit: str
    district: str
    site: str
    device: str
    devices: list[str]
    gateway: str
    opened_at: str | None
    age_s: float = Field(description="seconds open at generated_at (the page keeps it running)")
    sla_state: str
    sla_colour: str
    sla_due_at: str | None
    link: str = Field(description="the incident in the API")


class LiftProps(BaseModel):
    """A lift on the map."""

    layer: Literal["lifts"] = "lifts"
    id: str
    name: str
    state: Literal["ok", "fault", "incident", "offline", "unknown"]
    colour: str
    site: str
    district: str
    gateway: str
    last_seen: str | None
    active_faults: list[str]
    active_incidents: int
    risk_score: float
    latest_url: str


class GatewayProps(BaseModel):
    """A gateway on the map."""

    layer: Literal["gateways"] = "gateways"
    id: str
    name: str
    state: str = Field(description="online, offline or unknown")
    colour: str
    district: str
    site: str
    located_by: str = Field(description="site, registry, devices (centre of its devices) or "
                                        "unknown")
    last_seen: str | None
    state_since: str | None
    device_count: int
    outbox_depth: float | None = Field(description="messages waiting in its outbox (last "
                                                   "health report)")
    outbox_age_s: float | None = Field(description="age of its oldest unsent message at the "
                                                   "last health report")
    health_at: str | None


class EnvSiteProps(BaseModel):
    """An environmental monitoring site on the map."""

    layer: Literal["environment"] = "environment"
    id: str
    name: str
    kind: str
    district: str
    state: str = Field(description="exceeded, normal or unknown: values against limits")
    colour: str
    status: str = Field(description="the site status (ok, exceeded, fault, offline)")
    exceeded_since: str | None
    exceeded_for_s: float | None
    exceeded: list[str] = Field(description="quantities above their limit")
    responsible_name: str
    responsible_phone: str


def incidents_layer(state: Any, places: Places, viewer: Viewer, box: BBox | None,
                    where: Any, states: list[str] | None,
                    unit: str | None) -> FeatureCollection[IncidentProps]:
    """Incidents the viewer may see, placed at their site, gateway or device."""
    desk = getattr(state, "alarms", None)
    if desk is None or viewer.incident_units is False:
        return FeatureCollection[IncidentProps](features=[])
    units = viewer.incident_units if unit is None else [unit]
    feats = []
    for inc in desk.incidents(states, units, 2000, False, where):
        lat, lon = inc["site_info"]["lat"], inc["site_info"]["lon"]
        if lat is None:
            gw = places.gateway(inc["gateway"], inc["devices"]).place
            lat, lon = gw.lat, gw.lon
        if not in_bbox(box, lat, lon):
            continue
        sla = inc["sla"]
        colour = "red" if inc["severity"] == "critical" or sla["colour"] == "red" else \
            "amber" if inc["severity"] == "major" or sla["colour"] == "amber" else "blue"
        feats.append(Feature[IncidentProps](id=inc["id"], geometry=point(lat, lon),
                                            properties=IncidentProps(
            id=inc["id"], name=inc["title"], state=inc["state"], colour=colour,
            kind=inc["kind"], severity=inc["severity"], unit=inc["unit"],
            district=inc["district"] or places.district_at(lat, lon), site=inc["site"],
            device=inc["device"], devices=inc["devices"], gateway=inc["gateway"],
            opened_at=inc["opened_at"], age_s=inc["age_s"], sla_state=sla["state"],
            sla_colour=sla["colour"], sla_due_at=sla["due_at"],
            link=f"/api/v1/incidents/{inc['id']}")))
    return FeatureCollection[IncidentProps](features=feats)


def _active_faults(store: Store) -> dict[str, list[str]]:
    t = schema.active_faults
    out: dict[str, list[str]] = defaultdict(list)
    with store.engine.connect() as conn:
        for device, kind in conn.execute(sa.select(t.c.device_id, t.c.kind)):
            out[device].append(kind)
    return out


def _incidents_per_device(state: Any) -> dict[str, int]:
    desk = getattr(state, "alarms", None)
    if desk is None:
        return {}
    from collector.alarms import repo
    from collector.alarms.lifecycle import ACTIVE_STATES

    with desk.engine.store.engine.connect() as conn:
        rows = repo.list_incidents(conn, [s.value for s in ACTIVE_STATES], None, 100_000)
    out: dict[str, int] = defaultdict(int)
    for r in rows:
        out[r["device_id"]] += 1
    return out


def lift_state(online: bool | None, faults: list[str],
               incidents: int) -> Literal["ok", "fault", "incident", "offline", "unknown"]:
    """A lift's map state: offline first, then an open incident, a raised fault, ok."""
    if online is None:
        return "unknown"
    if not online or OFFLINE_KINDS & set(faults):
        return "offline"
    if incidents:
        return "incident"
    return "fault" if faults else "ok"


LIFT_COLOURS = {"ok": "green", "fault": "amber", "incident": "red", "offline": "grey",
                "unknown": "grey"}


def lifts_layer(state: Any, store: Store, places: Places, box: BBox | None, now: int,
                district: str | None = None) -> FeatureCollection[LiftProps]:
    """Every lift at its site, coloured by state, with its 30-day risk score."""
    lifts = store.devices(kind="elevator")
    gw_state = {g["gateway_id"]: g["state"] for g in store.gateways()}
    faults = _active_faults(store)
    incidents = _incidents_per_device(state)
    by_device: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in queries.raised_events(store, now - 30 * DAY_MS, now + 1):
        by_device[e["device_id"]].append(e)
    feats = []
    for d in lifts:
        dev, gw = d["device_id"], d["gateway_id"]
        place = places.lift(dev, gw)
        if not in_bbox(box, place.lat, place.lon) or (district and place.district != district):
            continue
        online = None if d["last_seen"] is None else gw_state.get(gw) != "offline"
        st = lift_state(online, faults.get(dev, []), incidents.get(dev, 0))
        feats.append(Feature[LiftProps](id=dev, geometry=point(place.lat, place.lon),
                                        properties=LiftProps(
            id=dev, name=f"{dev} at {place.name}" if place.name else dev, state=st,
            colour=LIFT_COLOURS[st], site=place.site, district=place.district, gateway=gw,
            last_seen=iso(d["last_seen"]), active_faults=sorted(faults.get(dev, [])),
            active_incidents=incidents.get(dev, 0),
            risk_score=risk_of(dev, by_device.get(dev, []), now).score,
            latest_url=f"/api/v1/devices/{dev}/latest")))
    return FeatureCollection[LiftProps](features=feats)


def _health_figures(raw: str | None) -> tuple[float | None, float | None, int | None]:
    """(outbox messages, oldest unsent age s, sent ms) of a stored health message."""
    if not raw:
        return None, None, None
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None, None, None
    counters = doc.get("counters") if isinstance(doc, dict) else None
    counters = counters if isinstance(counters, dict) else {}
    depth, age = counters.get("outbox_messages"), counters.get("outbox_oldest_age_s")
    sent = doc.get("sent") if isinstance(doc, dict) else None
    return (float(depth) if isinstance(depth, int | float) else None,
            float(age) if isinstance(age, int | float) else None,
            int(sent) if isinstance(sent, int) else None)


GATEWAY_COLOURS = {"online": "green", "offline": "red"}


def gateways_layer(store: Store, places: Places,
                   box: BBox | None) -> FeatureCollection[GatewayProps]:
    """Every gateway at its site (or its devices' centre) with state and outbox figures."""
    devices: dict[str, list[str]] = defaultdict(list)
    for d in store.devices():
        devices[d["gateway_id"]].append(d["device_id"])
    feats = []
    for g in store.gateways():
        gid = g["gateway_id"]
        located = places.gateway(gid, devices.get(gid, []))
        p = located.place
        if not in_bbox(box, p.lat, p.lon):
            continue
        depth, age, sent = _health_figures(g["health"])
        feats.append(Feature[GatewayProps](id=gid, geometry=point(p.lat, p.lon),
                                           properties=GatewayProps(
            id=gid, name=p.name or gid, state=g["state"],
            colour=GATEWAY_COLOURS.get(g["state"], "grey"), district=p.district, site=p.site,
            located_by=located.located_by, last_seen=iso(g["last_seen"]),
            state_since=iso(g["state_ts"]), device_count=g["device_count"],
            outbox_depth=depth, outbox_age_s=age, health_at=iso(sent))))
    return FeatureCollection[GatewayProps](features=feats)


ENV_COLOURS = {"exceeded": "red", "normal": "green", "unknown": "grey"}


def environment_layer(state: Any, places: Places,
                      box: BBox | None) -> FeatureCollection[EnvSiteProps]:
    """Every monitoring site coloured by exceedance (values against limits)."""
    monitor = getattr(state, "environment", None)
    if monitor is None:
        return FeatureCollection[EnvSiteProps](features=[])
    from collector.environment.api import all_sites

    feats = []
    for s in all_sites(monitor):
        if not in_bbox(box, s.lat, s.lon):
            continue
        exc = s.exceedance
        feats.append(Feature[EnvSiteProps](id=s.id, geometry=point(s.lat, s.lon),
                                           properties=EnvSiteProps(
            id=s.id, name=s.name or s.id, kind=s.kind,
            district=s.district or places.district_at(s.lat, s.lon), state=exc.state,
            colour=ENV_COLOURS[exc.state], status=s.status, exceeded_since=exc.since,
            exceeded_for_s=exc.duration_s, exceeded=[q.quantity for q in exc.quantities],
            responsible_name=s.responsible.name, responsible_phone=s.responsible.phone)))
    return FeatureCollection[EnvSiteProps](features=feats)


def parking_layer(state: Any, box: BBox | None) -> FeatureCollection[ParkingProps]:
    """Every parking zone coloured by free share (outline when drawn, else point)."""
    parking = getattr(state, "parking", None)
    if parking is None:
        return FeatureCollection[ParkingProps](features=[])
    from collector.parking.driver_api import zone_features

    fc = zone_features(parking)
    fc.features = [f for f in fc.features
                   if in_bbox(box, f.properties.lat, f.properties.lon)]
    return fc


AnyProps = Annotated[IncidentProps | LiftProps | GatewayProps | ParkingProps | EnvSiteProps,
                     Field(discriminator="layer")]
