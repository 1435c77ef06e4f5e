"""Public models of the pollution-source API answers (typed for OpenAPI).

The service builds plain dicts (service.py); these models name and describe their fields.
`extra="allow"` keeps a column added later visible before its model names it.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from collector.geojson import FeatureCollection
from collector.sources.model import Kind


class _Out(BaseModel):
    model_config = ConfigDict(extra="allow")


class SourceOut(_Out):
    """A registered pollution source and who answers for it."""

    id: str
    name: str
    kind: Kind
    district: str
    lat: float = Field(description="WGS-84; an outline's centre when only an outline was given")
    lon: float
    outline: list[tuple[float, float]] = Field(description="[[lon, lat], ...]; empty: a point")
    company: str = Field(description="the owner (the responsible company)")
    contact_name: str = Field(description="the responsible person")
    contact_phone: str
    contact_email: str
    channel: str = Field(description="notify channel of its tasks; empty: [sources] "
                                     "owner_channel")
    devices: list[str] = Field(description="its own monitors (a truck: its tracker)")
    plate: str
    updated: int = Field(description="epoch ms")


class UpsertOut(_Out):
    """How many sources were new and how many replaced."""

    created: int
    updated: int


class ImportOut(UpsertOut):
    """An import: the rows kept, and the rows refused with the reason (the first 200)."""

    refused: int
    errors: list[str] = Field(description="'<line or feature>: <reason>' per refused row")


class SourcePropsOut(_Out):
    """What the map shows of a source (a truck: at its last fix)."""

    id: str
    name: str
    kind: Kind
    district: str
    company: str
    contact_name: str = Field(description="the responsible person")
    contact_phone: str
    devices: list[str]
    ts: int | None = Field(default=None, description="trucks: time of the last fix, epoch ms")


SourcesGeoJSON = FeatureCollection[SourcePropsOut]


class TruckOut(_Out):
    """A tracked truck's last fix."""

    device: str
    ts: int = Field(description="epoch ms")
    lat: float
    lon: float


class FixOut(_Out):
    """One stored truck fix."""

    ts: int = Field(description="epoch ms")
    lat: float
    lon: float
    speed: float | None = Field(description="km/h (vehicle_speed), if the tracker sent it")


class WindOut(_Out):
    """The wind at the nearest station with data: where it comes from, how fast."""

    direction: float = Field(description="degrees, where the wind comes from")
    speed: float = Field(description="m/s")
    station: str
    distance_m: int = Field(description="from the point to the station")


class CandidateOut(_Out):
    """A ranked candidate source: its score, the factors and the reasons in words."""

    source: str = Field(description="the source id")
    score: float
    factors: dict[str, float] = Field(description="distance, wind, monitor and dwell")
    reasons: list[str]


class AttributionOut(_Out):
    """The sources around a point ranked, best first (the best 100)."""

    wind: WindOut | None
    considered: int = Field(description="how many sources and truck dwells were scored")
    candidates: list[CandidateOut]


class TaskOut(_Out):
    """A task of a source's responsible person: pushed → acknowledged → reported → closed."""

    id: int
    exceedance_id: int
    source_id: str
    company: str
    district: str
    rank: int = Field(description="the source's place among the candidates, from 1")
    score: float
    state: str = Field(description="pushed, acknowledged, reported or closed")
    pushed_at: int = Field(description="epoch ms")
    acked_at: int | None
    reported_at: int | None
    closed_at: int | None
    closed_reason: str = Field(description="recovered or verified once closed")
    report_text: str
    photo_type: str
    has_photo: bool
    verified_by: str
    escalations: list[int] = Field(description="the escalation stages sent")


class ExceedanceSummaryOut(_Out):
    """An air-quality exceedance at a point and whether its reading recovered."""

    id: int
    origin: str = Field(description="alarm:<site>:<rule> or manual:<who>")
    site_id: str
    district: str
    lat: float
    lon: float
    ts: int = Field(description="observation time, epoch ms")
    quantity: str
    value: float | None
    wind: dict[str, Any] = Field(description="the wind used, as in attribution; {} without "
                                             "wind data")
    recovered_at: int | None
    created: int


class ExceedanceOut(ExceedanceSummaryOut):
    """An exceedance with every ranked candidate (the best 50) and its tasks."""

    candidates: list[CandidateOut]
    tasks: list[TaskOut]


class FiguresOut(_Out):
    """What one owner (company) or district did with its tasks; the group is in `owner` or
    `district`, as asked."""

    owner: str | None = Field(default=None, description="the company (by=owner)")
    district: str | None = Field(default=None, description="the district (by=district)")
    exceedances: int
    tasks_pushed: int
    handled: int = Field(description="tasks reported on")
    closed: int
    median_time_to_handle_s: float | None = Field(description="push to report")
