"""Parking configuration: zones (street segments and lots), the spots in them, alert thresholds.

Read from a dict (e.g. the `parking` entry of CollectorConfig.sites) or a TOML file with a
`[parking]` table (or the same keys at top level):

    [parking]
    heartbeat = "30min"          # expected sensor heartbeat; silent after 2x this
    [[parking.zones]]
    id = "renmin-rd-north"
    name = "Renmin Rd (north side)"
    lat = 34.7466
    lon = 113.6253
    sensors = ["1001-1030"]      # device ids pk-1001 .. pk-1030
    spots = ["pk-2001"]          # and/or explicit device ids
    closed = ["pk-1007"]         # out of use (roadworks)
    district = "erqi"            # for the maps and per-district figures
    outline = [[113.6250, 34.7467], [113.6262, 34.7467], [113.6262, 34.7465], [113.6250, 34.7465]]
    kerb = [[113.6250, 34.7466], [113.6262, 34.7466]]   # bays spread evenly along this line
    bays = { "pk-2001" = [113.6251, 34.7466] }          # or placed one by one ([lon, lat])

Coordinates of outlines, kerbs and bays are [lon, lat] (GeoJSON order), WGS-84 degrees.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from devices.contract import DEVICE_ID_RE
from devices.durations import parse_duration

Duration = Annotated[float, BeforeValidator(parse_duration), Field(gt=0)]
Lon = Annotated[float, Field(ge=-180, le=180)]
Lat = Annotated[float, Field(ge=-90, le=90)]
LonLat = tuple[Lon, Lat]
DEFAULT_NAVIGATION_URL = ("https://www.openstreetmap.org/directions?engine=fossgis_osrm_foot"
                          "&route={from_lat}%2C{from_lon}%3B{to_lat}%2C{to_lon}")
NAV_FIELDS = ("from_lat", "from_lon", "to_lat", "to_lon")
ZONE_ID = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"


class ParkingConfigError(ValueError):
    """A parking config that cannot be used; the message names the source, key and fix."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def sensor_range(text: str, prefix: str) -> list[str]:
    """Expand '1001-1030' (or '1001') into device ids with the prefix."""
    lo, _, hi = text.partition("-")
    try:
        first, last = int(lo), int(hi or lo)
    except ValueError:
        raise ValueError(f"{text!r} is not a sensor id range like 1001-1030") from None
    if last < first or last - first > 100_000:
        raise ValueError(f"{text!r}: range must go up and hold at most 100,001 ids")
    return [f"{prefix}{n}" for n in range(first, last + 1)]


class ZoneConfig(_Model):
    """A street segment or lot with its bays."""

    id: str = Field(pattern=ZONE_ID)
    name: str = ""
    kind: Literal["onStreet", "offStreet"] = "onStreet"
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)
    capacity: int | None = Field(default=None, ge=0)  # default: the number of spots
    spots: list[str] = Field(default_factory=list)
    sensors: list[str] = Field(default_factory=list)  # id ranges, prefixed with device_prefix
    closed: list[str] = Field(default_factory=list)
    heartbeat: Duration | None = None  # default: the parking-wide heartbeat
    district: str = Field(default="", max_length=64)
    outline: list[LonLat] = Field(default_factory=list, max_length=1000)  # polygon ring
    kerb: list[LonLat] = Field(default_factory=list, max_length=1000)  # bays spread along it
    bays: dict[str, LonLat] = Field(default_factory=dict)  # explicit bay positions

    @model_validator(mode="after")
    def _shapes(self) -> ZoneConfig:
        if self.outline and len(self.outline) < 3:
            raise ValueError("outline: a polygon needs at least 3 [lon, lat] points")
        if len(self.kerb) == 1:
            raise ValueError("kerb: a line needs at least 2 [lon, lat] points")
        return self


class AlertSettings(_Model):
    """Thresholds of the sensor health alerts for the maintenance unit."""

    low_battery_mv: int = Field(default=3300, ge=0)
    battery_clear_mv: int = Field(default=100, ge=0)  # hysteresis above the threshold
    flapping_changes_per_hour: int = Field(default=12, ge=2)
    mag_jump_mg: int = Field(default=300, gt=0)  # field jump without an occupancy change
    mag_jump_quiet: Duration = 3600.0  # cleared after this long without another jump
    # A sensor still reporting but whose occupancy has not changed for this long is "stuck"
    # (a bay occupied for two days is rare; a frozen detector is not).
    stuck_after: Duration = 172_800.0


class ParkingConfig(_Model):
    """The whole parking section."""

    device_prefix: str = "pk-"
    heartbeat: Duration = 1800.0
    silent_factor: float = Field(default=2.0, ge=1.0)
    alerts: AlertSettings = Field(default_factory=AlertSettings)
    zones: list[ZoneConfig] = Field(default_factory=list)
    # "Nearest free parking": walking distance = great-circle distance x detour_factor (streets
    # are not straight lines; ~1.2-1.4 in gridded city centres), time at walking_speed.
    detour_factor: float = Field(default=1.3, ge=1.0, le=3.0)
    walking_speed: float = Field(default=1.3, gt=0, le=3.0, description="m/s")
    navigation_url: str = Field(default=DEFAULT_NAVIGATION_URL, max_length=500)
    history_every: Duration = 300.0  # a zone's counts are sampled this often for its history

    @model_validator(mode="after")
    def _navigation(self) -> ParkingConfig:
        if not self.navigation_url.startswith(("https://", "http://")):
            raise ValueError("navigation_url: must start with https:// or http://")
        try:
            self.navigation_url.format(**dict.fromkeys(NAV_FIELDS, 0.0))
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"navigation_url: only the placeholders {list(NAV_FIELDS)} "
                             f"may appear ({exc})") from None
        return self

    @model_validator(mode="after")
    def _one_zone_per_spot(self) -> ParkingConfig:
        owner: dict[str, str] = {}
        seen_zones: set[str] = set()
        for i, zone in enumerate(self.zones):
            if zone.id in seen_zones:
                raise ValueError(f"zones[{i}].id: {zone.id!r} appears twice")
            seen_zones.add(zone.id)
            spots = self.spots_of(zone)
            for spot in spots:
                if not DEVICE_ID_RE.fullmatch(spot):
                    raise ValueError(f"zones[{i}].spots: {spot!r} is not a device id")
                if spot in owner:
                    raise ValueError(f"zones[{i}]: spot {spot!r} is already in zone "
                                     f"{owner[spot]!r}; a spot belongs to one zone")
                owner[spot] = zone.id
            strays = set(zone.bays) - set(spots)
            if strays:
                raise ValueError(f"zones[{i}].bays: {sorted(strays)[:5]} are not spots of this "
                                 "zone")
            stray = set(zone.closed) - set(spots)
            if stray:
                raise ValueError(f"zones[{i}].closed: {sorted(stray)} are not spots of this zone")
            if zone.capacity is not None and zone.capacity < len(spots):
                raise ValueError(f"zones[{i}].capacity: {zone.capacity} is less than its "
                                 f"{len(spots)} spots")
        return self

    def spots_of(self, zone: ZoneConfig) -> list[str]:
        """Every spot (device id) of a zone, explicit ones first."""
        out = list(zone.spots)
        for r in zone.sensors:
            out.extend(sensor_range(r, self.device_prefix))
        return list(dict.fromkeys(out))


def _problem(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = str(err["msg"]).removeprefix("Value error, ")
        lines.append(f"{key}: {msg}")
    return "; ".join(lines)


def load_parking_config(source: Mapping[str, Any] | str | Path | None,
                        origin: str = "parking config") -> ParkingConfig:
    """Validate a parking section given as a dict or a TOML file path; None gives defaults."""
    if source is None:
        return ParkingConfig()
    if isinstance(source, str | Path):
        path = Path(source)
        origin = str(path)
        try:
            doc = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ParkingConfigError(f"{path}: cannot read: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ParkingConfigError(f"{path}: not valid TOML: {exc}") from None
        data: Mapping[str, Any] = doc.get("parking", doc)
    else:
        data = source
    try:
        return ParkingConfig.model_validate(dict(data))
    except ValidationError as exc:
        raise ParkingConfigError(f"{origin}: {_problem(exc)}") from None
