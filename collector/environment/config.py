"""Environment sites: metadata, districts and per-site thresholds from the collector config.

In collector.toml the ``[sites]`` section holds it::

    [sites.defaults]            # thresholds every site starts from
    nox_limit = 30              # mg/m³, converted NOx (Zhengzhou low-NOx gas boilers)
    nox_duration = "10min"
    [[sites.districts]]
    id = "jinshui"
    name = "Jinshui"
    outline = [[113.60, 34.76], [113.75, 34.76], [113.75, 34.86], [113.60, 34.86]]
    [[sites.sites]]
    id = "site-a"
    name = "Metro line 12 works"
    lat = 34.80
    lon = 113.68
    district = "jinshui"
    kind = "dust"
    devices = ["dust-1"]
    limits = { pm10_margin = 60 }   # per-site override
    responsible = { name = "Zhang Wei", phone = "13900000001", unit = "Metro Construction Co." }
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from devices.durations import parse_duration

Duration = Annotated[float, BeforeValidator(parse_duration), Field(ge=0)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Limits(_Model):
    """Thresholds of a site (defaults from field practice; every one is configurable)."""

    nox_limit: float = Field(default=30.0, gt=0, description="converted NOx, mg/m³")
    nox_duration: Duration = 600.0  # NOx must stay above the limit this long, seconds
    pm10_margin: float = Field(default=80.0, ge=0, description="µg/m³ above the district average")
    pm10_hours: int = Field(default=1, ge=1, description="consecutive hours above before raising")
    pm10_limit: float = Field(default=150.0, gt=0, description="map colour: real-time PM10, µg/m³")
    particulates_limit: float = Field(default=30.0, gt=0, description="map colour, mg/m³ converted")
    so2_limit: float = Field(default=50.0, gt=0, description="map colour, mg/m³ converted")
    offline_after: Duration = 600.0  # no data this long: the site is offline
    fume_limit: float = Field(default=2.0, gt=0, description="cooking fume, mg/m³ (GB 18483)")
    fume_duration: Duration = 600.0  # fume must stay above the limit this long, seconds
    unpurified_hold: Duration = 300.0  # fan on with the purifier off this long raises, seconds
    fan_on_current: float = Field(default=0.5, ge=0, description="A: fan running above it")
    purifier_on_current: float = Field(default=0.1, ge=0, description="A: purifier running")

    def colour_limits(self, kind: str) -> dict[str, float]:
        """The latest-value thresholds a site of this kind is coloured by."""
        if kind == "dust":
            return {"pm10": self.pm10_limit}
        if kind == "restaurant":
            return {"cooking_fume": self.fume_limit}
        return {"nox_converted": self.nox_limit, "particulates_converted":
                self.particulates_limit, "so2_converted": self.so2_limit}


class District(_Model):
    """A district and its outline as (lon, lat) points, drawn on the map."""

    id: str
    name: str = ""
    outline: list[tuple[float, float]] = Field(default_factory=list)


class Responsible(_Model):
    """The person answerable for a site: who the map names and the inspector calls."""

    name: str = Field(default="", max_length=100)
    phone: str = Field(default="", max_length=40, pattern=r"^[0-9+()\- ]*$")
    unit: str = Field(default="", max_length=100, description="company or department")


class Site(_Model):
    """A monitored site: a construction site with dust monitors, a boiler house or a
    restaurant kitchen with a cooking-fume monitor."""

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    name: str = ""
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)
    district: str = ""
    kind: Literal["dust", "boiler", "restaurant"]
    devices: list[str] = Field(min_length=1)
    limits: dict[str, Any] = Field(default_factory=dict)
    responsible: Responsible = Field(default_factory=Responsible)


class EnvironmentConfig(_Model):
    """The whole ``[sites]`` section."""

    defaults: Limits = Field(default_factory=Limits)
    min_district_sites: int = Field(default=2, ge=1, description="sites for a district average")
    districts: list[District] = Field(default_factory=list)
    sites: list[Site] = Field(default_factory=list)

    @model_validator(mode="after")
    def _cross_checks(self) -> EnvironmentConfig:
        ids = [s.id for s in self.sites]
        if len(ids) != len(set(ids)):
            raise ValueError(f"sites: duplicate site id among {ids}")
        known = {d.id for d in self.districts}
        owner: dict[str, str] = {}
        for i, s in enumerate(self.sites):
            if known and s.district not in known:
                raise ValueError(f"sites[{i}].district: {s.district!r} is not one of"
                                 f" {sorted(known)} — add a [[sites.districts]] entry")
            for dev in s.devices:
                if dev in owner:
                    raise ValueError(f"sites[{i}].devices: {dev!r} already belongs to site"
                                     f" {owner[dev]!r}")
                owner[dev] = s.id
            self.limits_of(s)  # overrides must validate
        return self

    def limits_of(self, site: Site) -> Limits:
        """The site's thresholds: defaults with its overrides."""
        return Limits.model_validate({**self.defaults.model_dump(), **site.limits})

    def site(self, site_id: str) -> Site | None:
        """The site of this id, or None."""
        return next((s for s in self.sites if s.id == site_id), None)


def load_environment_config(section: dict[str, Any] | None) -> EnvironmentConfig:
    """Validate the collector config's ``sites`` section (empty: no sites)."""
    return EnvironmentConfig.model_validate(section or {})
