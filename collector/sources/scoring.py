"""The attribution score: why this source, and how much (pure; docs/environment-loop.md).

score = 100 × distance × wind × monitor × dwell, each factor explained in words:
- distance: exp(−d / distance_scale_m) — 1 at the point, 0.37 at the scale (1 km);
- wind: 1 + upwind × cos(Δ) × strength, Δ the angle between the direction the wind comes from
  and the bearing from the point to the source, strength 0 below `calm_wind` rising to 1 at
  `full_wind`: an upwind source gains up to ×1.8, a downwind one drops to ×0.2, calm leaves ×1;
- monitor: 1 + monitor × min(r, 2), r the highest ratio of the source's own monitor readings to
  their limits in the window (no data: ×1);
- dwell (trucks): 1 + dwell × min(minutes / dwell_full_min, 1) for the time a truck stayed
  within `dwell_radius_m` of the point before the exceedance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from collector.sources.model import Weights

COMPASS = ("N", "NE", "E", "SE", "S", "SW", "W", "NW")


@dataclass(frozen=True, slots=True)
class Wind:
    """The wind at the nearest station with data: direction it comes from, speed."""

    direction: float  # degrees, meteorological (where the wind comes from)
    speed: float  # m/s
    station: str = ""
    distance_m: float = 0.0


@dataclass(frozen=True, slots=True)
class Evidence:
    """What is known of one candidate at the time of the exceedance."""

    source_id: str
    distance_m: float
    bearing: float | None  # degrees from the point to the source; None: the point is on it
    monitor_ratio: float | None = None  # highest reading / limit of its own monitors
    monitor_detail: str = ""  # e.g. "pm10 420 µg/m³ (limit 150)"
    dwell_min: float | None = None  # trucks: minutes near the point in the window


@dataclass(frozen=True, slots=True)
class Scored:
    """A ranked candidate: its score, the factors and the reasons people read."""

    source_id: str
    score: float
    factors: dict[str, float]
    reasons: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {"source": self.source_id, "score": round(self.score, 2),
                "factors": {k: round(v, 3) for k, v in self.factors.items()},
                "reasons": self.reasons}


def compass(deg: float) -> str:
    """The 8-point compass name of a bearing."""
    return COMPASS[int(((deg % 360) + 22.5) // 45) % 8]


def angle_between(a: float, b: float) -> float:
    """The smaller angle between two bearings, 0–180 degrees."""
    d = abs(a - b) % 360.0
    return 360.0 - d if d > 180.0 else d


def wind_factor(bearing: float | None, wind: Wind | None, w: Weights,
                explain: bool = True) -> tuple[float, str]:
    """How much the wind points from the source to the exceedance, and why."""
    if bearing is None:
        return 1.0, "the point lies on the source: wind direction not used"
    if wind is None:
        return 1.0, "no wind data: direction not used"
    if wind.speed < w.calm_wind:
        return 1.0, f"calm ({wind.speed:.1f} m/s at {wind.station}): direction not used"
    strength = min(1.0, (wind.speed - w.calm_wind) / max(1e-9, w.full_wind - w.calm_wind))
    delta = angle_between(bearing, wind.direction)
    factor = 1.0 + w.upwind * math.cos(math.radians(delta)) * strength
    if not explain:
        return factor, ""
    side = "upwind" if delta < 60 else "downwind" if delta > 120 else "crosswind"
    return factor, (f"{side}: wind from {wind.direction:.0f}° ({compass(wind.direction)}) at"
                    f" {wind.speed:.1f} m/s ({wind.station}), source lies {bearing:.0f}°"
                    f" ({compass(bearing)}) of the point, {delta:.0f}° off the wind")


def factors(ev: Evidence, wind: Wind | None, w: Weights) -> dict[str, float]:
    """The four factors of one candidate (no text: cheap enough for thousands)."""
    windf = wind_factor(ev.bearing, wind, w, explain=False)[0]
    monitor = 1.0 if ev.monitor_ratio is None else \
        1.0 + w.monitor * min(max(ev.monitor_ratio, 0.0), 2.0)
    dwell = 1.0 if ev.dwell_min is None else \
        1.0 + w.dwell * min(ev.dwell_min / w.dwell_full_min, 1.0)
    return {"distance": math.exp(-ev.distance_m / w.distance_scale_m), "wind": windf,
            "monitor": monitor, "dwell": dwell}


def reasons(ev: Evidence, wind: Wind | None, w: Weights) -> list[str]:
    """Why a candidate scored as it did, in words."""
    out = [f"{ev.distance_m:.0f} m from the point" if ev.distance_m > 0
           else "the point lies on the source's site", wind_factor(ev.bearing, wind, w)[1]]
    if ev.monitor_ratio is not None:
        out.append(f"own monitor: {ev.monitor_detail} = {ev.monitor_ratio:.1f}× its limit")
    else:
        out.append("own monitor: no recent data")
    if ev.dwell_min is not None:
        out.append(f"truck stayed {ev.dwell_min:.0f} min near the point")
    return out


def score(ev: Evidence, wind: Wind | None, w: Weights, *, explain: bool = True) -> Scored:
    """Score one candidate and, when asked, explain it."""
    f = factors(ev, wind, w)
    return Scored(ev.source_id, 100.0 * math.prod(f.values()), f,
                  reasons(ev, wind, w) if explain else [])


def value(ev: Evidence, wind: Wind | None, w: Weights) -> float:
    """The score alone (the product of `factors`), without building anything per candidate."""
    monitor = 1.0 if ev.monitor_ratio is None else \
        1.0 + w.monitor * min(max(ev.monitor_ratio, 0.0), 2.0)
    dwell = 1.0 if ev.dwell_min is None else \
        1.0 + w.dwell * min(ev.dwell_min / w.dwell_full_min, 1.0)
    return 100.0 * math.exp(-ev.distance_m / w.distance_scale_m) * wind_factor(
        ev.bearing, wind, w, explain=False)[0] * monitor * dwell


def rank(evidence: list[Evidence], wind: Wind | None, w: Weights,
         limit: int = 100) -> list[Scored]:
    """The best `limit` candidates scored and explained, best first (ties: nearer, then id)."""
    keyed = sorted(((-value(e, wind, w), e.distance_m, e.source_id, e) for e in evidence),
                   key=lambda k: k[:3])
    return [score(k[3], wind, w) for k in keyed[:limit]]
