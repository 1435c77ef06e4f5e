"""Where sources and trucks are: a spatial index of the registry and a grid of recent truck fixes.

Distances are metres in a local equirectangular frame around a reference latitude — within a
city (±50 km) the error is well under 1 %, far below what attribution needs. The registry's
geometries (points and outlines) sit in a shapely STRtree, rebuilt when the registry changes;
truck fixes arrive all the time, so they go to a grid of cells keyed by rounded degrees.

shapely (with numpy, ~22 MiB resident) is imported when the first source is indexed, not with
this module: a collector with no registered sources does not carry it.
"""

from __future__ import annotations

import bisect
import math
from collections import defaultdict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

EARTH_M = 6_371_008.8
MAX_GAP_MS = 120_000  # a gap between two fixes longer than this is not counted as dwell


def bearing_deg(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Initial bearing from point 1 to point 2, degrees clockwise from north (0–360)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dl = math.radians(lon2 - lon1)
    y = math.sin(dl) * math.cos(p2)
    x = math.cos(p1) * math.sin(p2) - math.sin(p1) * math.cos(p2) * math.cos(dl)
    return (math.degrees(math.atan2(y, x)) + 360.0) % 360.0


def distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle (haversine) distance in metres."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    a = math.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(
        math.radians(lon2 - lon1) / 2) ** 2
    return 2 * EARTH_M * math.asin(math.sqrt(min(1.0, a)))


@dataclass(frozen=True, slots=True)
class Frame:
    """A local metric frame: x east, y north, metres, around `lat0`."""

    lat0: float

    def xy(self, lat: float, lon: float) -> tuple[float, float]:
        """Degrees to metres in this frame."""
        k = math.radians(1.0) * EARTH_M
        return lon * k * math.cos(math.radians(self.lat0)), lat * k


@dataclass(frozen=True, slots=True)
class Located:
    """A registered source as the index needs it: id, centre and optional outline."""

    id: str
    lat: float
    lon: float
    outline: tuple[tuple[float, float], ...] = ()  # (lon, lat)


class SourceIndex:
    """Fixed sources in an STRtree: which lie within a radius of a point, and how far."""

    def __init__(self, sources: Sequence[Located]) -> None:
        self.sources = list(sources)
        lat0 = sum(s.lat for s in self.sources) / len(self.sources) if self.sources else 0.0
        self.frame = Frame(lat0)
        self._geoms: Any = None
        self._tree: Any = None
        if self.sources:
            import numpy
            from shapely import STRtree

            self._geoms = numpy.array([self._geometry(s) for s in self.sources], dtype=object)
            self._tree = STRtree(self._geoms)

    def _geometry(self, s: Located) -> Any:
        import shapely
        from shapely.geometry import Point, Polygon

        if len(s.outline) >= 3:
            poly = Polygon([self.frame.xy(lat, lon) for lon, lat in s.outline])
            return poly if poly.is_valid else shapely.make_valid(poly)
        return Point(self.frame.xy(s.lat, s.lon))

    def __len__(self) -> int:
        return len(self.sources)

    def within(self, lat: float, lon: float, radius_m: float) -> list[tuple[Located, float]]:
        """Sources whose point or outline lies within `radius_m` of the point, with distance
        (0 inside an outline), nearest first."""
        if not self.sources:
            return []
        import shapely
        from shapely.geometry import Point

        here = Point(self.frame.xy(lat, lon))
        hits = self._tree.query(here, predicate="dwithin", distance=radius_m)
        distances = shapely.distance(self._geoms[hits], here)  # vectorised over the hits
        out = [(self.sources[i], float(d)) for i, d in zip(hits, distances, strict=True)]
        out.sort(key=lambda pair: (pair[1], pair[0].id))
        return out


@dataclass(frozen=True, slots=True)
class Fix:
    """One truck position."""

    device: str
    ts: int
    lat: float
    lon: float


@dataclass(frozen=True, slots=True)
class Dwell:
    """How long a truck stayed near a point in a window, and how close it came."""

    device: str
    minutes: float
    closest_m: float
    closest: Fix


@dataclass
class TruckGrid:
    """Recent truck fixes, bucketed by cell, for "which trucks were near here lately"."""

    keep_ms: int = 3_600_000
    cell_deg: float = 0.01  # ~1.1 km north-south
    max_trucks: int = 20_000
    _cells: dict[tuple[int, int], set[str]] = field(default_factory=lambda: defaultdict(set))
    _tracks: dict[str, deque[Fix]] = field(default_factory=dict)
    refused: int = 0  # fixes of trucks beyond max_trucks

    def _cell(self, lat: float, lon: float) -> tuple[int, int]:
        return math.floor(lat / self.cell_deg), math.floor(lon / self.cell_deg)

    def add(self, fixes: Iterable[Fix]) -> None:
        """Remember fixes (any order); old ones fall out on `prune`."""
        for fix in fixes:
            track = self._tracks.get(fix.device)
            if track is None:
                if len(self._tracks) >= self.max_trucks:
                    self.refused += 1
                    continue
                track = self._tracks[fix.device] = deque()
            if not track or fix.ts > track[-1].ts:
                track.append(fix)
            else:  # late or repeated: keep the track in time order, each instant once
                at = bisect.bisect_left(track, fix.ts, key=lambda f: f.ts)
                if at < len(track) and track[at].ts == fix.ts:
                    continue
                track.insert(at, fix)
            self._cells[self._cell(fix.lat, fix.lon)].add(fix.device)

    def prune(self, now: int) -> None:
        """Forget fixes older than `keep_ms` and cells no truck visited since."""
        horizon = now - self.keep_ms
        for device in list(self._tracks):
            track = self._tracks[device]
            while track and track[0].ts < horizon:
                track.popleft()
            if not track:
                del self._tracks[device]
        live = {d: {self._cell(f.lat, f.lon) for f in t} for d, t in self._tracks.items()}
        cells: dict[tuple[int, int], set[str]] = defaultdict(set)
        for device, visited in live.items():
            for cell in visited:
                cells[cell].add(device)
        self._cells = cells

    def latest(self) -> dict[str, Fix]:
        """The last fix of every truck."""
        return {d: t[-1] for d, t in self._tracks.items() if t}

    def near(self, lat: float, lon: float, radius_m: float, since: int,
             until: int) -> list[Dwell]:
        """Trucks that came within `radius_m` of the point between `since` and `until`."""
        span = radius_m / 111_000.0 + self.cell_deg
        lo, hi = self._cell(lat - span, lon - span / max(0.1, math.cos(math.radians(lat)))), \
            self._cell(lat + span, lon + span / max(0.1, math.cos(math.radians(lat))))
        devices: set[str] = set()
        for i in range(lo[0], hi[0] + 1):
            for j in range(lo[1], hi[1] + 1):
                devices |= self._cells.get((i, j), set())
        out = []
        for device in sorted(devices):
            dwell = dwell_near(self._tracks.get(device, ()), lat, lon, radius_m, since, until)
            if dwell is not None:
                out.append(dwell)
        return out


def dwell_near(track: Iterable[Fix], lat: float, lon: float, radius_m: float, since: int,
               until: int) -> Dwell | None:
    """Minutes a track spent within `radius_m` of a point in [since, until] (consecutive fixes
    both inside count their gap, up to MAX_GAP_MS), or None when it never came that close."""
    best: tuple[float, Fix] | None = None
    inside_ms = 0
    previous: tuple[Fix, bool] | None = None
    # A box a little larger than the circle: fixes outside it are far, no haversine needed.
    dlat = radius_m * 1.01 / 111_000.0
    dlon = dlat / max(0.05, math.cos(math.radians(lat)))
    for fix in track:
        if fix.ts < since or fix.ts > until:
            continue
        if abs(fix.lat - lat) > dlat or abs(fix.lon - lon) > dlon:
            previous = (fix, False)
            continue
        d = distance_m(lat, lon, fix.lat, fix.lon)
        inside = d <= radius_m
        if best is None or d < best[0]:
            best = (d, fix)
        if previous is not None and inside and previous[1]:
            inside_ms += min(fix.ts - previous[0].ts, MAX_GAP_MS)
        previous = (fix, inside)
    if best is None or best[0] > radius_m:
        return None
    return Dwell(best[1].device, inside_ms / 60_000, best[0], best[1])
