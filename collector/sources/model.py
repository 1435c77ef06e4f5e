"""What callers send about sources (registry rows, imports) and the `[sources]` settings.

Everything here is untrusted input bounded at the edge: ids, names and contacts have length
limits and no control characters, coordinates are WGS-84 degrees, an outline has at most
MAX_OUTLINE points, a source lists at most MAX_DEVICES monitors.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    model_validator,
)

from collector.alarms.config import Stage
from devices.contract import DEVICE_ID_RE
from devices.durations import parse_duration

SOURCE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
MAX_OUTLINE = 500
MAX_DEVICES = 32
KINDS = ("construction_site", "industrial", "boiler", "restaurant", "muck_truck", "other")
Kind = Literal["construction_site", "industrial", "boiler", "restaurant", "muck_truck", "other"]
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _clean(value: str) -> str:
    if _CONTROL.search(value):
        raise ValueError("must not contain control characters")
    return value.strip()


def _device(value: str) -> str:
    if not DEVICE_ID_RE.fullmatch(value):
        raise ValueError(f"{value[:40]!r} is not a device id")
    return value


Text = Annotated[str, Field(max_length=200), AfterValidator(_clean)]
DeviceId = Annotated[str, Field(max_length=128), AfterValidator(_device)]
Duration = Annotated[float, BeforeValidator(parse_duration), Field(ge=0)]
LonLat = tuple[Annotated[float, Field(ge=-180, le=180)], Annotated[float, Field(ge=-90, le=90)]]


class SourceIn(BaseModel):
    """A pollution source as registered (REST body, CSV row or GeoJSON feature)."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)

    id: Annotated[str, Field(pattern=SOURCE_ID_RE.pattern)]
    name: Text = ""
    kind: Kind
    district: Text = ""
    lat: float | None = Field(default=None, ge=-90, le=90)
    lon: float | None = Field(default=None, ge=-180, le=180)
    outline: list[LonLat] = Field(default_factory=list, max_length=MAX_OUTLINE)
    company: Text = ""
    contact_name: Text = ""
    contact_phone: Annotated[str, Field(max_length=32, pattern=r"^[0-9+ ()-]*$")] = ""
    contact_email: Annotated[str, Field(max_length=200,
                                        pattern=r"^$|^[^@\s]+@[^@\s]+\.[^@\s]+$")] = ""
    channel: Annotated[str, Field(max_length=64, pattern=r"^$|^[a-z0-9][a-z0-9_.-]{0,63}$")] = ""
    devices: list[DeviceId] = Field(default_factory=list, max_length=MAX_DEVICES)
    plate: Text = ""

    @model_validator(mode="after")
    def _located(self) -> SourceIn:
        if self.outline and len(self.outline) < 3:
            raise ValueError("outline needs at least 3 [lon, lat] points")
        if not self.outline and (self.lat is None or self.lon is None) \
                and self.kind != "muck_truck":
            raise ValueError("give lat and lon, or an outline of [lon, lat] points")
        if self.kind == "muck_truck" and not self.devices:
            raise ValueError("a muck truck needs its tracker's device id in devices")
        if self.outline and (self.lat is None or self.lon is None):
            lon = sum(p[0] for p in self.outline) / len(self.outline)
            lat = sum(p[1] for p in self.outline) / len(self.outline)
            object.__setattr__(self, "lat", lat)
            object.__setattr__(self, "lon", lon)
        return self


class Weights(BaseModel):
    """The score's constants (docs/environment-loop.md, "Attribution")."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    distance_scale_m: float = Field(default=1000.0, gt=0)  # e-folding distance
    upwind: float = Field(default=0.8, ge=0, le=1)  # weight of the wind alignment
    calm_wind: float = Field(default=0.5, ge=0)  # m/s: below it the wind says nothing
    full_wind: float = Field(default=2.0, gt=0)  # m/s: from it the alignment counts fully
    monitor: float = Field(default=0.5, ge=0)  # weight of the source's own monitor
    dwell: float = Field(default=1.0, ge=0)  # weight of a truck's dwell near the point
    dwell_full_min: float = Field(default=10.0, gt=0)  # minutes of dwell that count fully


class SourcesConfig(BaseModel):
    """The `[sources]` section of collector.toml."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    radius_m: float = Field(default=3000.0, gt=0, le=50_000)
    top: int = Field(default=3, ge=1, le=20)  # candidates pushed per exceedance
    min_score: float = Field(default=5.0, ge=0)  # weaker candidates are shown, not pushed
    rules: tuple[str, ...] = ("pm10_district",)  # environment alarm rules that open one
    owner_channel: str = ""  # notify channel for owners without their own `channel`
    escalation: tuple[Stage, ...] = ()  # as incidents: when = not_acknowledged | not_resolved
    wind_window: Duration = 3600.0  # a wind reading at most this far from the exceedance
    monitor_window: Duration = 1800.0  # a source monitor's reading at most this old
    dwell_window: Duration = 1800.0  # truck dwell counted over this long before the exceedance
    dwell_radius_m: float = Field(default=300.0, gt=0)
    truck_retention: Duration = 7 * 86400.0
    max_trucks: int = Field(default=20_000, ge=1)
    weights: Weights = Field(default_factory=Weights)
    # limits a source's own monitor is compared with (canonical units)
    monitor_limits: dict[str, float] = Field(default_factory=lambda: {
        "pm10": 150.0, "tsp": 300.0, "cooking_fume": 2.0, "nox_converted": 30.0,
        "particulates_converted": 30.0, "so2_converted": 50.0})


def load_sources_config(section: dict[str, Any] | None) -> SourcesConfig:
    """Validate the collector config's `sources` section (empty: defaults)."""
    return SourcesConfig.model_validate(section or {})
