"""Grid placement: points placed in a city of 5 districts, 30 areas and 189 grids (the
seeds' district), by the STRtree index (`Outlines.locate`) against a plain loop over every
polygon; and an import of the whole outline set (parse, validate, index).

Grids are irregular 24-sided polygons so point-in-polygon does real work. Medians over
several runs; environment: BENCH_POINTS (default 20000), BENCH_RUNS (default 5).
"""

from __future__ import annotations

import math
import os
import random
import time
from typing import Any

import shapely
from shapely.geometry import Point

from bench.common import median
from collector.grid.geo import Outlines, parse_collection

POINTS = int(os.environ.get("BENCH_POINTS", "20000"))
RUNS = int(os.environ.get("BENCH_RUNS", "5"))
LON0, LAT0 = 113.5, 34.6


def _blob(lon: float, lat: float, size: float, rng: random.Random) -> dict[str, Any]:
    """A 24-sided star-ish polygon inside the cell [lon, lon+size] x [lat, lat+size]."""
    cx, cy, r = lon + size / 2, lat + size / 2, size / 2
    ring = [[cx + r * (0.8 + 0.2 * rng.random()) * math.cos(2 * math.pi * k / 24),
             cy + r * (0.8 + 0.2 * rng.random()) * math.sin(2 * math.pi * k / 24)]
            for k in range(24)]
    return {"type": "Polygon", "coordinates": [[*ring, ring[0]]]}


def _rect(lon: float, lat: float, w: float, h: float) -> dict[str, Any]:
    ring = [[lon, lat], [lon + w, lat], [lon + w, lat + h], [lon, lat + h], [lon, lat]]
    return {"type": "Polygon", "coordinates": [ring]}


def city(rng: random.Random) -> dict[str, Any]:
    """5 districts side by side, 6 areas each, 189 grids over the areas."""
    feats: list[dict[str, Any]] = []

    def add(fid: str, level: str, geom: dict[str, Any], parent: str = "") -> None:
        feats.append({"type": "Feature", "id": fid, "geometry": geom,
                      "properties": {"level": level, "parent": parent, "departments":
                                     {"*": f"unit-{fid}"}}})

    for d in range(5):
        add(f"d{d}", "district", _rect(LON0 + d * 0.06, LAT0, 0.06, 0.09))
        for a in range(6):
            ax, ay = LON0 + d * 0.06 + (a % 2) * 0.03, LAT0 + (a // 2) * 0.03
            add(f"d{d}a{a}", "area", _rect(ax, ay, 0.03, 0.03), f"d{d}")
            for g in range(7 if d * 6 + a < 9 else 6):  # 9 areas of 7, 21 of 6: 189
                gx, gy = ax + (g % 3) * 0.01, ay + (g // 3) * 0.01
                add(f"d{d}a{a}g{g}", "grid", _blob(gx, gy, 0.01, rng), f"d{d}a{a}")
    return {"type": "FeatureCollection", "features": feats}


def _naive(outlines: Outlines, lat: float, lon: float) -> str:
    p = Point(lon, lat)
    for o in outlines.by_id.values():
        if o.level == "grid" and shapely.covers(o.geometry, p):
            return o.id
    return ""


def main() -> None:
    """Print placement rates, the ratio, and the import time."""
    rng = random.Random(7)
    doc = city(rng)
    levels = [f["properties"]["level"] for f in doc["features"]]
    print(f"city: {levels.count('district')} districts, {levels.count('area')} areas, "
          f"{levels.count('grid')} grids; {POINTS} points; {RUNS} runs (medians)")
    imports, tree, loop = [], [], []
    pts = [(LAT0 + rng.random() * 0.09, LON0 + rng.random() * 0.3) for _ in range(POINTS)]
    for _ in range(RUNS):
        t = time.perf_counter()
        outlines = Outlines.of(parse_collection(doc))
        imports.append(time.perf_counter() - t)
        t = time.perf_counter()
        fast = [outlines.locate(lat, lon).grid for lat, lon in pts]
        tree.append(time.perf_counter() - t)
        t = time.perf_counter()
        slow = [_naive(outlines, lat, lon) for lat, lon in pts[:POINTS // 10]]
        loop.append((time.perf_counter() - t) * 10)
        assert fast[:POINTS // 10] == slow, "the index and the loop disagree"
    placed = sum(1 for g in fast if g) / POINTS
    t_rate, l_rate = POINTS / median(tree), POINTS / median(loop)
    print(f"import (parse, validate, index): {median(imports) * 1000:.1f} ms")
    print(f"STRtree placement: {t_rate:,.0f} points/s ({median(tree) / POINTS * 1e6:.1f} µs "
          f"each); {placed:.0%} of points in a grid")
    print(f"plain loop over polygons: {l_rate:,.0f} points/s; STRtree is "
          f"{t_rate / l_rate:.1f}x faster")


if __name__ == "__main__":
    main()
