"""NGSI-LD entities from CityGate state: pure builders, keyValues, and the query language subset.

Nothing here touches the database or a clock: builders take rows, the query helpers take entity
dicts. Entities are built in the NGSI-LD *normalized* form; `key_values` derives the simplified
form (what the Smart Data Models JSON Schemas describe).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from collector.clock import iso
from collector.store import typed_value
from devices.quantities import QUANTITIES, ValueKind

CORE_CONTEXT = "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context-v1.8.jsonld"
SDM_CONTEXT = "https://smart-data-models.github.io/data-models/context.jsonld"
CONTEXT: list[str] = [SDM_CONTEXT, CORE_CONTEXT]
LINK_HEADER = (f'<{SDM_CONTEXT}>; rel="http://www.w3.org/ns/json-ld#context"; '
               'type="application/ld+json"')
ERRORS = "https://uri.etsi.org/ngsi-ld/errors/"
UNIT_ONE = "C62"  # UN/CEFACT "one": counts and ratios

ENTITY_TYPES = ("ParkingSpot", "OnStreetParking", "OffStreetParking", "AirQualityObserved",
                "Device", "Alert")


def urn(entity_type: str, local_id: str) -> str:
    """The NGSI-LD id of a CityGate object: urn:ngsi-ld:<Type>:<local id>."""
    return f"urn:ngsi-ld:{entity_type}:{local_id}"


def split_urn(entity_id: str) -> tuple[str, str] | None:
    """(type, local id) of an id built by `urn`, or None for anything else."""
    parts = entity_id.split(":", 3)
    if len(parts) != 4 or parts[0] != "urn" or parts[1] != "ngsi-ld" or not parts[3]:
        return None
    return parts[2], parts[3]


def prop(value: Any, observed: int | None = None, unit: str | None = None) -> dict[str, Any]:
    """An NGSI-LD Property with its observation time and UN/CEFACT unit code."""
    out: dict[str, Any] = {"type": "Property", "value": value}
    if observed is not None:
        out["observedAt"] = iso(observed)
    if unit:
        out["unitCode"] = unit
    return out


def rel(target: str, observed: int | None = None) -> dict[str, Any]:
    """An NGSI-LD Relationship."""
    out: dict[str, Any] = {"type": "Relationship", "object": target}
    if observed is not None:
        out["observedAt"] = iso(observed)
    return out


def geo_point(lon: float, lat: float) -> dict[str, Any]:
    """A GeoProperty holding a GeoJSON point (longitude first)."""
    return {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [lon, lat]}}


def key_values(entity: Mapping[str, Any]) -> dict[str, Any]:
    """The simplified (keyValues) form of a normalized entity."""
    out: dict[str, Any] = {}
    for name, attr in entity.items():
        if isinstance(attr, Mapping) and attr.get("type") in ("Property", "GeoProperty"):
            out[name] = attr.get("value")
        elif isinstance(attr, Mapping) and attr.get("type") == "Relationship":
            out[name] = attr.get("object")
        else:
            out[name] = attr
    return out


def ngsi_value(quantity: str, value: float | None, vtext: str | None) -> Any:
    """A stored value in its NGSI form: enum codes become labels, booleans stay booleans."""
    typed = typed_value(quantity, value, vtext)
    q = QUANTITIES.get(quantity)
    if q is not None and q.kind is ValueKind.ENUM and isinstance(typed, int):
        return q.labels.get(typed, typed)
    return typed


def camel(name: str) -> str:
    """snake_case quantity name as an NGSI-LD attribute name (camelCase)."""
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


# --- parking ---------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ZoneInfo:
    """What the builders need of a parking zone."""

    id: str
    name: str
    kind: str  # onStreet | offStreet
    lat: float
    lon: float


def zone_type(kind: str) -> str:
    """The Smart Data Model type of a zone kind."""
    return "OffStreetParking" if kind == "offStreet" else "OnStreetParking"


def parking_spot(row: Mapping[str, Any], zone: ZoneInfo | None) -> dict[str, Any]:
    """A ParkingSpot from a `parking_spots` row, located at its bay when configured, else at its
    zone; a spot without zone or bay position has no site or place."""
    observed = row.get("last_ts") or row.get("since")
    e: dict[str, Any] = {
        "id": urn("ParkingSpot", row["spot_id"]), "type": "ParkingSpot",
        "status": prop(row["status"], observed),
        "category": prop([zone.kind if zone else "onStreet"]),
        "refDevice": {"type": "Relationship", "object": [urn("Device", row["spot_id"])]},
    }
    if zone is not None:
        e["refParkingSite"] = rel(urn(zone_type(zone.kind), zone.id))
        e["location"] = geo_point(zone.lon, zone.lat)
    if row.get("lat") is not None and row.get("lon") is not None:  # the bay's own position
        e["location"] = geo_point(float(row["lon"]), float(row["lat"]))
    return e


def parking_zone(row: Mapping[str, Any], spot_ids: Iterable[str] = ()) -> dict[str, Any]:
    """An OnStreetParking (or OffStreetParking) from a `parking_zones` row."""
    kind = row.get("kind") or "onStreet"
    updated = row.get("updated")
    e: dict[str, Any] = {
        "id": urn(zone_type(kind), row["zone_id"]), "type": zone_type(kind),
        "name": prop(row.get("name") or row["zone_id"]),
        "location": geo_point(float(row["lon"]), float(row["lat"])),
        "totalSpotNumber": prop(int(row["total"]), updated, UNIT_ONE),
        "availableSpotNumber": prop(int(row["available"]), updated, UNIT_ONE),
        "occupancyDetectionType": prop(["singleSpaceDetection"]),
    }
    spots = [urn("ParkingSpot", s) for s in spot_ids]
    if spots:
        e["refParkingSpot"] = {"type": "Relationship", "object": spots}
    return e


# --- environment -----------------------------------------------------------------------------

# canonical quantity -> (AirQualityObserved attribute, UN/CEFACT code, conversion)
AIR_ATTRS: dict[str, tuple[str, str]] = {
    "pm10": ("pm10", "GQ"), "pm2_5": ("pm25", "GQ"), "pm1": ("pm1", "GQ"),
    "tsp": ("tsp", "GQ"), "temperature": ("temperature", "CEL"),
    "humidity": ("relativeHumidity", UNIT_ONE), "wind_speed": ("windSpeed", "MTS"),
    "wind_direction": ("windDirection", "DD"), "noise_laeq": ("noiseLevel", "2N"),
    "pressure": ("atmosphericPressure", "KPA"),
    # boiler flue gas (mg/m³ = GP); *_converted are referred to the reference O2
    "so2": ("so2", "GP"), "nox": ("nox", "GP"), "no": ("no", "GP"), "no2": ("no2", "GP"),
    "co": ("co", "GP"), "so2_converted": ("so2Converted", "GP"),
    "nox_converted": ("noxConverted", "GP"), "particulates": ("particulates", "GP"),
    "particulates_converted": ("particulatesConverted", "GP"), "o2": ("o2", "P1"),
    "flue_temp": ("flueTemperature", "CEL"), "flue_velocity": ("flueVelocity", "MTS"),
    "flue_pressure": ("fluePressure", "KPA"), "flue_humidity": ("flueHumidity", "P1"),
    "flue_flow": ("flueFlow", "MQH"),
}


def air_value(quantity: str, value: float) -> float:
    """Canonical value in the Smart Data Model's convention (humidity 0..1, wind ±180°)."""
    if quantity == "humidity":
        return min(1.0, max(0.0, value / 100.0))
    if quantity == "wind_direction":
        return ((value + 180.0) % 360.0) - 180.0
    return value


@dataclass(frozen=True, slots=True)
class SiteInfo:
    """What the builders need of an environment site."""

    id: str
    name: str
    kind: str  # dust | boiler
    lat: float
    lon: float
    district: str
    devices: tuple[str, ...]


def air_quality(site: SiteInfo, latest: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """AirQualityObserved of a dust or boiler site from its real-time latest values."""
    e: dict[str, Any] = {
        "id": urn("AirQualityObserved", site.id), "type": "AirQualityObserved",
        "name": prop(site.name or site.id),
        "location": geo_point(site.lon, site.lat),
        "refDevice": rel(urn("Device", site.devices[0])),
    }
    if site.district:
        e["areaServed"] = prop(site.district)
    if site.kind == "boiler":
        e["description"] = prop("boiler flue-gas (stack) emission observation, HJ 212")
    newest = None
    for row in sorted(latest, key=lambda r: r["ts"]):
        attr = AIR_ATTRS.get(row["quantity"])
        if attr is None or row["value"] is None or row.get("quality") not in (None, "good"):
            continue
        name, unit = attr
        e[name] = prop(air_value(row["quantity"], float(row["value"])), row["ts"], unit)
        newest = row["ts"]
    e["dateObserved"] = prop(iso(newest) if newest is not None else None, newest)
    if newest is None:
        del e["dateObserved"]
    return e


# --- devices and alerts ----------------------------------------------------------------------

CONTROLLED: dict[str, list[str]] = {
    "parking": ["occupancy"], "parking_sensor": ["occupancy"],
    "dust_monitor": ["airPollution", "temperature", "humidity", "windSpeed", "windDirection",
                     "noiseLevel"],
    "boiler_cems": ["airPollution"], "elevator": ["motion", "speed"],
}
BATTERY_EMPTY_MV, BATTERY_FULL_MV = 2900, 3600


def battery_level(mv: float) -> float:
    """Battery millivolts as a 0..1 level (lithium primary cell: 2.9 V empty, 3.6 V full)."""
    return round(min(1.0, max(0.0, (mv - BATTERY_EMPTY_MV) /
                              (BATTERY_FULL_MV - BATTERY_EMPTY_MV))), 3)


def controlled_property(kind: str, quantities: Iterable[str]) -> list[str]:
    """What a device observes, in the Device model's vocabulary."""
    if kind in CONTROLLED:
        return CONTROLLED[kind]
    qs = set(quantities)
    if "occupied" in qs:
        return ["occupancy"]
    if qs & {"pm10", "so2", "nox"}:
        return ["airPollution"]
    if qs & {"floor", "car_running"}:
        return ["motion"]
    return ["location"] if not qs else ["power"]


def device(row: Mapping[str, Any], latest: Iterable[Mapping[str, Any]], state: str) -> \
        dict[str, Any]:
    """A field Device with its state, battery, signal and (elevators) its measurements."""
    rows = list(latest)
    newest = max((r["ts"] for r in rows), default=None)
    e: dict[str, Any] = {
        "id": urn("Device", row["device_id"]), "type": "Device",
        "category": prop(["sensor"]),
        "controlledProperty": prop(controlled_property(row["kind"], (r["quantity"] for r in rows))),
        "deviceState": prop(state, newest),
        "name": prop(row["device_id"]),
        "refGateway": rel(urn("Device", gateway_local(row["gateway_id"]))),
    }
    if row.get("profile"):
        e["refDeviceModel"] = prop(row["profile"])
    if newest is not None:
        e["dateLastValueReported"] = prop(iso(newest), newest)
    for r in rows:
        q, value = r["quantity"], ngsi_value(r["quantity"], r["value"], r["vtext"])
        if value is None:
            continue
        if q == "battery_mv":
            e["batteryLevel"] = prop(battery_level(float(value)), r["ts"], UNIT_ONE)
        elif q == "rssi":
            e["rssi"] = prop(float(value), r["ts"], QUANTITIES["rssi"].unit_code)
        elif row["kind"] == "elevator" or q not in AIR_ATTRS:
            info = QUANTITIES.get(q)
            e[camel(q)] = prop(value, r["ts"], info.unit_code if info and info.unit_code
                               else None)
    return e


def gateway_local(gateway_id: str) -> str:
    """Local id of a gateway's Device entity (kept apart from field device ids)."""
    return f"gateway:{gateway_id}"


def gateway(row: Mapping[str, Any], controlled: list[str]) -> dict[str, Any]:
    """A gateway as a network Device."""
    e: dict[str, Any] = {
        "id": urn("Device", gateway_local(row["gateway_id"])), "type": "Device",
        "category": prop(["network"]),
        "controlledProperty": prop(controlled or ["location"]),
        "deviceState": prop(row.get("state") or "unknown", row.get("state_ts")),
        "name": prop(row["gateway_id"]),
    }
    if row.get("version"):
        e["softwareVersion"] = prop(row["version"])
    if row.get("last_seen"):
        e["dateLastValueReported"] = prop(iso(row["last_seen"]), row["last_seen"])
    return e


SEVERITY = {"critical": "critical", "major": "high", "minor": "medium", "warning": "low",
            "info": "informational"}
ENV_KINDS = {"nox_limit", "pm10_district", "pm10", "nox", "so2", "particulates"}


def alert_category(kind: str) -> tuple[str, str | None]:
    """(category, subCategory) from the Alert model's enums; None where none fits."""
    if kind in ENV_KINDS or kind.startswith(("nox", "pm", "so2", "dust")):
        return "environment", "airPollution"
    if kind in {"trapped_passenger", "passenger_trapped"}:
        return "health", None
    return "security", None


def alert(row: Mapping[str, Any], source_url: str) -> dict[str, Any]:
    """An Alert from a live `alarms` row; the source is the device's entity URL."""
    category, sub = alert_category(row["kind"])
    e: dict[str, Any] = {
        "id": urn("Alert", str(row["id"])), "type": "Alert",
        "name": prop(row["kind"]),
        "category": prop(category),
        "severity": prop(SEVERITY.get(row["severity"], "medium"), row["last_seen"]),
        "alertSource": prop(source_url),
        "dateIssued": prop(iso(row["first_seen"]), row["first_seen"]),
        "description": prop(row.get("message") or row["kind"]),
        "data": prop({"site": row["site"], "device": row["device_id"],
                      "occurrences": row.get("occurrences", 1)}),
    }
    if sub:
        e["subCategory"] = prop(sub)
    return e


# --- query language subset -------------------------------------------------------------------

class QueryError(ValueError):
    """A query parameter CityGate cannot understand (answered as BadRequestData)."""


_TERM = re.compile(r"^\s*([A-Za-z_][\w.]*)\s*(==|!=|>=|<=|>|<)\s*(.+?)\s*$")


def parse_q(q: str) -> list[tuple[str, str, Any]]:
    """`attr==value;attr>value` as (attr, op, value) terms combined with AND."""
    terms: list[tuple[str, str, Any]] = []
    for part in q.split(";"):
        if not part.strip():
            continue
        m = _TERM.match(part)
        if m is None:
            raise QueryError(f"q term {part!r} is not 'attr<op>value' (op: == != > >= < <=)")
        terms.append((m.group(1), m.group(2), _literal(m.group(3))))
    return terms


def _literal(text: str) -> Any:
    if len(text) >= 2 and text[0] == text[-1] == '"':
        return text[1:-1]
    if text in ("true", "false"):
        return text == "true"
    try:
        return float(text) if any(c in text for c in ".eE") else int(text)
    except ValueError:
        return text


def _attr_value(entity: Mapping[str, Any], path: str) -> Any:
    name, _, sub = path.partition(".")
    attr = entity.get(name)
    if isinstance(attr, Mapping):
        value = attr.get("object") if attr.get("type") == "Relationship" else attr.get("value")
    else:
        value = attr
    if sub and isinstance(value, Mapping):
        value = value.get(sub)
    return value


def _compare(value: Any, op: str, want: Any) -> bool:
    if isinstance(value, list):
        return any(_compare(v, op, want) for v in value)
    if op in ("==", "!="):
        equal = value == want or (isinstance(want, int | float) and isinstance(value, int | float)
                                  and float(value) == float(want))
        return equal if op == "==" else not equal
    if not (isinstance(value, int | float) and isinstance(want, int | float)) and \
            not (isinstance(value, str) and isinstance(want, str)):
        return False
    a: Any = value
    return {">": a > want, ">=": a >= want, "<": a < want, "<=": a <= want}[op]


def matches_q(entity: Mapping[str, Any], terms: list[tuple[str, str, Any]]) -> bool:
    """Does an entity satisfy every term (absent attributes never match)."""
    for attr, op, want in terms:
        value = _attr_value(entity, attr)
        if value is None or not _compare(value, op, want):
            return False
    return True


EARTH_RADIUS_M = 6_371_008.8


def distance_m(lon1: float, lat1: float, lon2: float, lat2: float) -> float:
    """Great-circle distance in metres."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(math.sqrt(h))


@dataclass(frozen=True, slots=True)
class Near:
    """georel=near;maxDistance==N (or minDistance) around a point."""

    lon: float
    lat: float
    max_m: float | None
    min_m: float | None


def parse_geo(georel: str, geometry: str | None, coordinates: str | None) -> Near:
    """The supported geo-query: `near;maxDistance==N` or `near;minDistance==N` on a Point."""
    parts = [p.strip() for p in georel.split(";")]
    if parts[0] != "near":
        raise QueryError(f"georel {parts[0]!r} is not supported; use near;maxDistance==<m>")
    if geometry != "Point":
        raise QueryError("geometry must be Point for georel=near")
    try:
        lon, lat = (float(c) for c in (coordinates or "").strip("[] ").split(","))
    except ValueError:
        raise QueryError(f"coordinates {coordinates!r} must be [lon,lat]") from None
    limits: dict[str, float] = {}
    for p in parts[1:]:
        key, _, value = p.partition("==")
        if key not in ("maxDistance", "minDistance") or not value:
            raise QueryError(f"georel modifier {p!r}: use maxDistance==<m> or minDistance==<m>")
        limits[key] = float(value)
    if not limits:
        raise QueryError("georel=near needs maxDistance==<m> or minDistance==<m>")
    return Near(lon, lat, limits.get("maxDistance"), limits.get("minDistance"))


def within(entity: Mapping[str, Any], near: Near) -> float | None:
    """Distance of a located entity if it satisfies the geo-query, else None."""
    loc = _attr_value(entity, "location")
    if not isinstance(loc, Mapping) or loc.get("type") != "Point":
        return None
    lon, lat = loc["coordinates"][:2]
    d = distance_m(near.lon, near.lat, float(lon), float(lat))
    if near.max_m is not None and d > near.max_m:
        return None
    if near.min_m is not None and d < near.min_m:
        return None
    return d


def project(entity: Mapping[str, Any], attrs: set[str] | None) -> dict[str, Any]:
    """Only the requested attributes (id and type always stay)."""
    if not attrs:
        return dict(entity)
    return {k: v for k, v in entity.items() if k in ("id", "type", "@context") or k in attrs}
