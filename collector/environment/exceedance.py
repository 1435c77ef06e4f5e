"""Whether a site is over its limits now, on which quantities, and since when (pure).

Decided from the measured values against the site's limits, never from the data flag: an
instrument's "N" (normal) flag beside PM10 = 422 µg/m³ is still an exceedance. Only values
flagged bad (instrument fault) are not measurements and are left out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

State = Literal["exceeded", "normal", "unknown"]


@dataclass(frozen=True, slots=True)
class Over:
    """One quantity above its limit."""

    quantity: str
    value: float
    limit: float
    since: int
    since_exact: bool  # False: the run is older than the rows looked at


@dataclass(frozen=True, slots=True)
class Exceedance:
    """A site's exceedance now."""

    state: State
    over: list[Over] = field(default_factory=list)

    @property
    def since(self) -> int | None:
        """When the oldest current exceedance began."""
        return min((o.since for o in self.over), default=None)


def is_measurement(row: Mapping[str, Any]) -> bool:
    """A stored value that is a number and not flagged as an instrument fault."""
    return row.get("quality") != "bad" and isinstance(row.get("value"), int | float)


def exceedance(latest: Mapping[str, Mapping[str, Any]], limits: Mapping[str, float],
               now: int, fresh_ms: int,
               runs: Mapping[str, tuple[int, bool]]) -> Exceedance:
    """The exceedance from the latest real-time values, limits and the runs found for them.

    unknown: no fresh measurement of any limited quantity (site offline or never heard).
    """
    fresh = {q: r for q, r in latest.items()
             if q in limits and is_measurement(r) and now - int(r["ts"]) <= fresh_ms}
    if not fresh:
        return Exceedance("unknown")
    over = []
    for q, r in sorted(fresh.items()):
        if float(r["value"]) > limits[q]:
            since, exact = runs.get(q, (int(r["ts"]), False))
            over.append(Over(q, float(r["value"]), limits[q], since, exact))
    return Exceedance("exceeded" if over else "normal", over)
