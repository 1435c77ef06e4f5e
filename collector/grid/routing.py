"""Who answers for an event, by where it is: pure routing over the registry, the grid and config.

Order (the first that names a known unit wins, and the reason says which):
1. an explicit `[alarms] routes` entry (an operator's override);
2. the site's responsible unit in the site registry (API), then in `[alarms.sites]`
   — for a lift, the maintenance company of that building;
3. the line department for the event kind of the grid, then its area, then its district
   — for dust, the district's environment inspection;
4. the default unit.
"""

from __future__ import annotations

from collections.abc import Container, Mapping
from dataclasses import dataclass
from typing import Any

from collector.alarms.config import AlarmsConfig
from collector.alarms.policy import RouteDecision, RouteQuery, SiteIndex
from collector.grid.geo import Outlines, Placement


@dataclass(frozen=True, slots=True)
class SiteFacts:
    """What the registry and the config say of a site: location, district label, unit."""

    lat: float | None = None
    lon: float | None = None
    district: str = ""  # a label, used only when the site is in no outline
    unit: str = ""  # the registry's responsible unit


def coordinates(evidence: Mapping[str, Any]) -> tuple[float, float] | None:
    """A reported event's own coordinates, when it carries valid ones."""
    lat, lon = evidence.get("lat"), evidence.get("lon")
    ok = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (lat, lon))
    if not ok or not (-90 <= lat <= 90 and -180 <= lon <= 180):  # type: ignore[operator]
        return None
    return float(lat), float(lon)  # type: ignore[arg-type]


def locate(q: RouteQuery, site: SiteFacts, cfg: AlarmsConfig, outlines: Outlines) -> Placement:
    """Where an event is: its own coordinates, else its site's (registry, then config)."""
    point = coordinates(q.evidence)
    if point is None and site.lat is not None and site.lon is not None:
        point = (site.lat, site.lon)
    configured = cfg.sites.get(q.site)
    if point is None and configured is not None and configured.lat is not None:
        point = (configured.lat, configured.lon)  # type: ignore[assignment]
    return outlines.locate(*point) if point is not None else Placement()


def _where(p: Placement) -> str:
    return "/".join(x for x in (p.district, p.area, p.grid) if x) or "no outline"


def decide(q: RouteQuery, site: SiteFacts, cfg: AlarmsConfig, sites: SiteIndex,
           outlines: Outlines, known_units: Container[str]) -> RouteDecision:
    """The responsible unit of a new incident, where it lies, and why."""
    placed = locate(q, site, cfg, outlines)
    grid = placed.grid or sites.grid_of(q.site) or site.district
    district = placed.district or site.district

    def done(unit: str, reason: str) -> RouteDecision:
        return RouteDecision(unit, grid, f"{reason} ({_where(placed)})", placed.area, district)

    skipped: list[str] = []
    for i, r in enumerate(cfg.routes):
        if ((not r.kinds or q.kind in r.kinds) and (not r.sites or q.site in r.sites)
                and (not r.grids or grid in r.grids)):
            return done(r.unit, f"[alarms] routes[{i}] matches {q.kind}")
    for unit, why in ((site.unit, f"site registry: {q.site} is in the care of {site.unit}"),
                      (sites.units.get(q.site, ""), f"[alarms.sites] {q.site} names its unit")):
        if unit and unit in known_units:
            return done(unit, why)
        if unit:
            skipped.append(f"unknown unit {unit!r} of site {q.site} skipped")
    unit, outline = outlines.department(placed, q.kind)
    if unit and unit in known_units:
        return done(unit, f"line department for {q.kind} of {outline}")
    if unit:
        skipped.append(f"unknown line department {unit!r} of {outline} skipped")
    note = "; ".join(skipped)
    if cfg.default_unit:
        return done(cfg.default_unit, "default unit: no site unit or line department for "
                                      f"{q.kind}" + (f"; {note}" if note else ""))
    return done("", "no unit: no site unit, line department or default" +
                (f"; {note}" if note else ""))
