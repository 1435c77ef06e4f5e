"""Public models of the grid, roster, report and assessment answers (typed for OpenAPI).

The services build plain dicts; these models name and describe their fields. `extra="allow"`
keeps a field a newer service adds visible before its model names it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Out(BaseModel):
    model_config = ConfigDict(extra="allow")


Position = Annotated[list[float], Field(min_length=2, max_length=3,
                                        description="[lon, lat] or [lon, lat, altitude]")]


class OutlineGeometryOut(_Out):
    """A Polygon (rings) or MultiPolygon (polygons of rings), as GeoJSON."""

    type: Literal["Polygon", "MultiPolygon"]
    coordinates: list[list[Position]] | list[list[list[Position]]] = Field(
        description="Polygon: [ring, ...]; MultiPolygon: [[ring, ...], ...]; the first ring of "
                    "a polygon is its outer edge")


class OutlinePropsOut(_Out):
    """What an outline is and who handles each kind of event inside it."""

    level: Literal["district", "area", "grid"]
    name: str
    parent: str = Field(description="the id of the area or district it lies in; '' for none")
    departments: dict[str, str] = Field(description="event kind -> the unit that handles it")


class OutlineFeatureOut(_Out):
    """One district, area or grid."""

    type: Literal["Feature"]
    id: str
    properties: OutlinePropsOut
    geometry: OutlineGeometryOut


class OutlinesOut(_Out):
    """Every outline as a GeoJSON FeatureCollection, in id order."""

    type: Literal["FeatureCollection"]
    features: list[OutlineFeatureOut]


class ImportedOut(_Out):
    """An outline import: how many were taken, and how many of each level there are now."""

    imported: int
    districts: int
    areas: int
    grids: int


class PlaceOut(_Out):
    """The grid, area and district ids a point lies in ('' where no outline contains it)."""

    grid: str
    area: str
    district: str


class PlacementOut(PlaceOut):
    """A known site or device and where it lies."""

    type: Literal["site", "device"]
    id: str
    lat: float | None
    lon: float | None
    source: str = Field(description="where its position came from: registry, config, or "
                                    "site (a device takes its site's)")
    site: str | None = Field(default=None, description="devices: the site it is at")


class RouteOut(PlaceOut):
    """Who would answer for an event, where it lies, and why."""

    unit: str
    reason: str


class OnCallOut(_Out):
    """Who a new incident of a unit goes to, their phone, why and until when."""

    member: str | None
    phone: str
    why: str = Field(description="shift <id>, rotation, roster (the unit's first member) or "
                                 "nobody")
    until: str | None = Field(description="ISO 8601; null when open-ended")


class MemberOut(_Out):
    """A member of a unit."""

    name: str
    phone: str
    email: str


class UnitOut(_Out):
    """A unit, its members and escalation, where it was defined, and who is on call."""

    id: str
    name: str
    source: str = Field(description="config (collector.toml) or api")
    members: list[MemberOut]
    escalation: list[dict[str, Any]] = Field(description="the stages, as in [alarms.units]")
    on_call: OnCallOut


class ShiftOut(_Out):
    """A member on call over [starts_at, ends_at)."""

    id: int
    member: str
    starts_at: str | None = Field(description="ISO 8601")
    ends_at: str | None = Field(description="ISO 8601")
    note: str
    handover_from: str | None
    created_by: str


class CreatedOut(_Out):
    """The id of what was created."""

    id: int


class HandoverOut(_Out):
    """A hand-over: the new shift, who handed over to whom, and the incidents that moved."""

    shift: int = Field(description="the id of the new shift")
    from_: str | None = Field(alias="from", description="who was on call")
    to: str
    until: str | None = Field(description="ISO 8601")
    incidents: list[int] = Field(description="the active incidents now assigned to `to`")


class AcceptedReportOut(_Out):
    """A report taken: the incident it opened and where it lies."""

    id: int
    incident: int
    found_by: str = Field(description="patrol or citizen")
    grid: str
    area: str
    district: str


class ReportKindsOut(_Out):
    """What the report page offers: the kinds citizens may report ([grid] citizen_kinds)."""

    kinds: list[str]
    photo_max_bytes: int = Field(description="the largest photo taken, in bytes")


class CitizenReceiptOut(_Out):
    """What a citizen learns of their report: its number and where it lies."""

    id: int
    grid: str
    district: str


class ReportOut(_Out):
    """A reported event: who found it, where, and the incident it became."""

    id: int
    found_by: str = Field(description="patrol or citizen")
    reporter: str = Field(description="the patrol token's name; '' for citizens")
    contact: str
    kind: str
    severity: str
    lat: float
    lon: float
    text: str
    site: str
    grid: str
    area: str
    district: str
    photo: str | None = Field(description="the URL of its photo, if it has one")
    incident: int | None
    created_at: str | None = Field(description="ISO 8601")


class StepTimesOut(_Out):
    """How long a step took from opening, in seconds, over the incidents that reached it."""

    n: int
    mean_s: float | None
    p90_s: float | None


class FiguresOut(_Out):
    """Counts, times and share within SLA of some incidents."""

    found: int
    found_by: dict[str, int] = Field(description="device, patrol and citizen")
    dispatched: int
    acknowledged: int
    arrived: int
    handled: int = Field(description="resolved by a person, not cleared by the device")
    closed: int
    reopened: int
    overdue: int
    within_sla: float | None = Field(description="share resolved in time, 0..1")
    times: dict[str, StepTimesOut] = Field(description="acknowledge, arrive, resolve, close")


class WeekOut(FiguresOut):
    """The figures of one week."""

    week: str = Field(description="the Monday the week starts on (a date)")


class TrendFiguresOut(FiguresOut):
    """Figures over the period and week by week."""

    weeks: list[WeekOut]


class GroupOut(TrendFiguresOut):
    """The figures of one unit, grid or district."""

    key: str


class AssessmentOut(_Out):
    """Figures per unit, grid or district, and in all, over [from, to)."""

    from_: str | None = Field(alias="from", description="ISO 8601")
    to: str | None = Field(description="ISO 8601")
    as_of: str | None = Field(description="ISO 8601: open incidents are judged as of now")
    by: Literal["unit", "grid", "district"]
    groups: list[GroupOut]
    total: TrendFiguresOut
