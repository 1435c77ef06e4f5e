"""Where bays are and how far a driver walks to them: pure geometry over WGS-84 degrees.

Bays without an explicit position are spread evenly along their zone's kerb line, in sensor
order (street bays are painted one after the other). Walking distance is the great-circle
distance times a detour factor: no road graph is needed, and for a gridded city centre the
factor (1.2-1.4) is within a few percent of a routed walk at these distances.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

from collector.parking.config import ZoneConfig

LonLat = tuple[float, float]
EARTH_RADIUS_M = 6_371_008.8


def haversine_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in metres."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(math.sqrt(min(1.0, a)))


def along(line: Sequence[LonLat], fraction: float) -> LonLat:
    """The point at `fraction` (0..1) of a polyline's length (lengths in metres)."""
    if len(line) == 1:
        return line[0]
    legs = [haversine_m(a[1], a[0], b[1], b[0]) for a, b in itertools.pairwise(line)]
    target = max(0.0, min(1.0, fraction)) * sum(legs)
    for (a, b), leg in zip(itertools.pairwise(line), legs, strict=True):
        if target <= leg and leg > 0:
            t = target / leg
            return (a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t)
        target -= leg
    return line[-1]


def bay_positions(zone: ZoneConfig, spots: Sequence[str]) -> dict[str, tuple[float, float]]:
    """(lat, lon) of each spot of a zone that has a position: explicit, else along the kerb."""
    out = {s: (lonlat[1], lonlat[0]) for s, lonlat in zone.bays.items()}
    rest = [s for s in spots if s not in out]
    if zone.kerb and rest:
        for i, s in enumerate(rest):
            lon, lat = along(zone.kerb, (i + 0.5) / len(rest))
            out[s] = (round(lat, 7), round(lon, 7))
    return out


def inside(lon: float, lat: float, ring: Sequence[LonLat]) -> bool:
    """Whether a point lies inside a polygon ring (even-odd rule; the ring need not close)."""
    hit = False
    n = len(ring)
    for i in range(n):
        (x1, y1), (x2, y2) = ring[i], ring[(i + 1) % n]
        if (y1 > lat) != (y2 > lat) and lon < x1 + (lat - y1) * (x2 - x1) / (y2 - y1):
            hit = not hit
    return hit


@dataclass(frozen=True, slots=True)
class Walk:
    """How far and how long a walk is, by the documented approximation."""

    straight_m: float
    walking_m: float
    walking_min: float


def walk(lat1: float, lon1: float, lat2: float, lon2: float, detour: float,
         speed_m_s: float) -> Walk:
    """Great-circle distance x detour factor, and minutes at the walking speed."""
    straight = haversine_m(lat1, lon1, lat2, lon2)
    walking = straight * detour
    return Walk(round(straight, 1), round(walking, 1), round(walking / speed_m_s / 60, 1))


def geo_uri(lat: float, lon: float) -> str:
    """RFC 5870 geo: URI (phones open their map app on it)."""
    return f"geo:{lat:.6f},{lon:.6f}"


def directions_url(template: str, origin: tuple[float, float],
                   target: tuple[float, float]) -> str:
    """The configured directions URL with both ends filled in (numbers only, so safe)."""
    if not all(math.isfinite(v) for v in (*origin, *target)):
        raise ValueError("coordinates must be finite")
    return template.format(from_lat=f"{origin[0]:.6f}", from_lon=f"{origin[1]:.6f}",
                           to_lat=f"{target[0]:.6f}", to_lon=f"{target[1]:.6f}")
