"""Where things are: sites, lifts, gateways and districts, from every place the config keeps one.

Sources, first found wins: the alarms config's sites (lift buildings: coordinates, grid), the
registry's sites (gateways are registered at one), the environment sites and the parking bays
and zones. A district is the site's own (alarm grid, registry or environment district), else the
configured district outline containing the point. A gateway with no site of its own is placed
at the centre of its devices' known positions.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from collector.parking.geo import inside
from collector.registry import repo as registry
from collector.store import Store
from devices.hj212.normalise import split_series_id

LatLon = tuple[float, float]


@dataclass(frozen=True, slots=True)
class Place:
    """A named place with coordinates (None when unknown) and its district."""

    site: str
    name: str
    lat: float | None
    lon: float | None
    district: str


@dataclass(frozen=True, slots=True)
class Located:
    """A gateway's place and how it was found."""

    place: Place
    located_by: Literal["site", "registry", "devices", "unknown"]


class Places:
    """A snapshot of every known location, built once per request from the app's state."""

    def __init__(self, state: Any, store: Store) -> None:
        desk = getattr(state, "alarms", None)
        cfg = desk.engine.cfg if desk is not None else None
        self.alarm_sites: dict[str, Any] = dict(cfg.sites) if cfg is not None else {}
        self.by_device = {d: n for n, s in self.alarm_sites.items() for d in s.devices}
        self.by_gateway = {g: n for n, s in self.alarm_sites.items() for g in s.gateways}
        self.registry_sites = {s["site_id"]: s for s in _safe(registry.sites, store)}
        self.registry_gateways = {g["gateway_id"]: g["site_id"]
                                  for g in _safe(registry.gateways, store)}
        env = getattr(state, "environment", None)
        self.districts = [(d.id, d.outline) for d in env.config.districts if d.outline] \
            if env is not None else []
        self.env_device_site = dict(env.site_of) if env is not None else {}
        self.parking = getattr(state, "parking", None)

    def district_at(self, lat: float | None, lon: float | None) -> str:
        """The configured district whose outline holds the point ('' when none)."""
        if lat is None or lon is None:
            return ""
        return next((d for d, ring in self.districts if inside(lon, lat, ring)), "")

    def site(self, site_id: str) -> Place:
        """An alarms or registry site as a place."""
        s = self.alarm_sites.get(site_id)
        reg = self.registry_sites.get(site_id, {})
        lat = s.lat if s is not None and s.lat is not None else reg.get("lat")
        lon = s.lon if s is not None and s.lon is not None else reg.get("lon")
        name = (s.name if s is not None else "") or reg.get("name") or site_id
        district = (s.grid if s is not None else "") or reg.get("district") or \
            self.district_at(lat, lon)
        return Place(site_id, name, lat, lon, district)

    def lift(self, device: str, gateway: str) -> Place:
        """Where a lift is: its alarm site (by device, else by gateway), else its gateway's."""
        site = self.by_device.get(device) or self.by_gateway.get(gateway) \
            or self.registry_gateways.get(gateway)
        return self.site(site) if site else Place("", "", None, None, "")

    def device_position(self, device: str, gateway: str) -> LatLon | None:
        """A device's coordinates when any source knows them."""
        plain = split_series_id(device)[0]
        env_site = self.env_device_site.get(plain)
        if env_site is not None:
            return (env_site.lat, env_site.lon)
        if self.parking is not None:
            where = self.parking.model.locations.get(device)
            if where is not None:
                return where
            spot = self.parking.model.spots.get(device)
            zone = self.parking.model.zones.get(spot.zone) if spot and spot.zone else None
            if zone is not None:
                return (zone.lat, zone.lon)
        place = self.lift(device, gateway)
        return None if place.lat is None or place.lon is None else (place.lat, place.lon)

    def gateway(self, gateway: str, devices: Iterable[str]) -> Located:
        """A gateway's place: its alarm site, its registry site, or its devices' centre."""
        if gateway in self.by_gateway:
            return Located(self.site(self.by_gateway[gateway]), "site")
        reg = self.registry_gateways.get(gateway)
        if reg is not None and self.registry_sites.get(reg, {}).get("lat") is not None:
            return Located(self.site(reg), "registry")
        points = [p for d in devices if (p := self.device_position(d, gateway)) is not None]
        if not points:
            return Located(Place("", "", None, None, ""), "unknown")
        lat = round(sum(p[0] for p in points) / len(points), 6)
        lon = round(sum(p[1] for p in points) / len(points), 6)
        return Located(Place(reg or "", "", lat, lon, self.district_at(lat, lon)), "devices")


def _safe(read: Any, store: Store) -> list[dict[str, Any]]:
    """Registry rows, or none on a store without the registry tables."""
    try:
        rows: list[dict[str, Any]] = read(store.engine)
    except Exception:  # a collector without the registry feature: no registry places
        return []
    return rows
