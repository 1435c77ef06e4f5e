"""Public models of the incidents API: what pages and integrators receive (typed for OpenAPI).

The desk builds plain dicts (views.py, card.py); these models name and describe their fields.
`extra="allow"` keeps a field a newer desk adds visible before its model catches up.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Out(BaseModel):
    model_config = ConfigDict(extra="allow")


class FaultNameOut(_Out):
    """The plain-language name of a fault, in English and Chinese."""

    kind: str
    code: int | None
    en: str
    zh: str


class ContactOut(_Out):
    """Who lets the crew in."""

    name: str
    phone: str


class SiteInfoOut(_Out):
    """Where the crew goes."""

    id: str
    name: str
    address: str
    building: str
    entrance: str
    lat: float | None
    lon: float | None
    contact: ContactOut


class AssigneeOut(_Out):
    """The member an incident is assigned to."""

    name: str
    phone: str
    unit: str


class LiftNowOut(_Out):
    """The lift's latest state as its controller reported it."""

    floor: Any = None
    door: str | None = None
    door_zone: Any = None
    passenger_present: Any = None
    car_running: Any = None
    service_mode: Any = None
    at: str | None = None


class FiredStageOut(_Out):
    """An escalation stage that was sent."""

    stage: int
    unit: str
    when: str
    label: str
    to: str
    channels: list[str]
    at: str | None
    text: str


class NextStageOut(_Out):
    """The escalation stage due next, and when."""

    stage: int
    when: str
    label: str
    to: str
    due_at: str | None
    text: str


class SlaOut(_Out):
    """An incident against its arrival SLA."""

    state: str = Field(description="ok, due_soon (last quarter of the target), breached, met, "
                                   "missed, or none (no SLA for this kind / ended before)")
    colour: str = Field(description="green, amber, red or grey")
    target_s: float | None = Field(description="arrival target in seconds")
    due_at: str | None = Field(description="when someone must be on site")


class OverrideOut(_Out):
    """A forced step: why, and what the device still reported."""

    reason: str
    conditions: list[str]


class HistoryStepOut(_Out):
    """One step of an incident: who, when, what."""

    at: str | None
    from_: str | None = Field(alias="from", description="state before the step")
    to: str | None = Field(description="state after the step")
    who: str
    note: str
    event: str = Field(description="transition, note, assigned, escalation, device_cleared, ...")
    override: OverrideOut | None

    model_config = ConfigDict(extra="allow", populate_by_name=True, serialize_by_alias=True)


class IncidentOut(_Out):
    """An incident with what the crew card and the control room need."""

    id: int
    state: str = Field(description="open, acknowledged, on_site, resolved or closed")
    unit: str
    site: str
    grid: str
    district: str = Field(description="the district (grid) of the site")
    kind: str
    device: str = Field(description="the device, the gateway (gateway_offline) or * (whole "
                                    "site)")
    devices: list[str] = Field(description="devices concerned; every device behind a gateway "
                                           "that is offline")
    gateway: str
    severity: str
    title: str
    occurrences: int
    opened_at: str | None
    age_s: float = Field(description="seconds open (until resolved or closed)")
    sla: SlaOut
    acknowledged_at: str | None
    acknowledged_by: str | None
    on_site_at: str | None
    on_site_by: str | None
    resolved_at: str | None
    resolved_by: str | None
    closed_at: str | None
    closed_by: str | None
    escalation_stages_sent: int
    allowed: list[str] = Field(description="the lifecycle actions allowed next")
    link: str
    updated_at: str | None
    severity_rank: int
    life_safety: bool
    fault: FaultNameOut
    trapped_since: str | None
    device_cleared_at: str | None
    awaiting_confirmation: bool
    condition_present: bool
    conditions: list[str]
    assignee: AssigneeOut | None
    site_info: SiteInfoOut
    lift: LiftNowOut | None
    arrival_sla_s: int | None
    arrive_by: str | None
    arrival_overdue: bool
    escalations: list[FiredStageOut]
    next_escalation: NextStageOut | None
    overrides: int = Field(description="how many steps were forced over a present condition")


class IncidentDetailOut(IncidentOut):
    """An incident with its full history."""

    history: list[HistoryStepOut]


class AlarmEpisodeOut(_Out):
    """An alarm episode; `held` says why it has no incident (wait, silenced:..., suppressed:...)."""

    id: int
    site: str
    device: str
    kind: str
    gateway: str
    source: str = Field(description="event, threshold or group")
    severity: str
    active: bool
    occurrences: int
    first_seen: str | None
    last_seen: str | None
    cleared_at: str | None
    incident_id: int | None
    held: str
    message: str
    evidence: Any


class SilenceOut(_Out):
    """A maintenance window and whether it is in force now."""

    id: int
    site: str | None
    device: str | None
    kind: str | None
    starts_at: str | None
    ends_at: str | None
    created_by: str
    reason: str
    created_at: str | None
    role: str | None
    unit: str | None
    life_safety: bool
    deleted_at: str | None
    deleted_by: str | None
    in_force: bool


class DurationFigures(_Out):
    """Mean and 90th percentile of a duration, seconds (null without data)."""

    mean_s: float | None = None
    p90_s: float | None = None


class ClosedLoopFigures(_Out):
    """Found, handled and closed incidents and how fast, for one group."""

    found: int
    acknowledged: int
    unacknowledged: int
    resolved: int
    auto_resolved: int
    closed: int
    time_to_acknowledge: DurationFigures
    time_to_arrive: dict[str, Any] = Field(description="mean and p90 seconds, and the share "
                                                   "arrived within the SLA")
    time_to_resolve: DurationFigures


class StatsOut(_Out):
    """Closed-loop figures of incidents opened since a time: all, per unit, per kind."""

    total: ClosedLoopFigures
    units: dict[str, ClosedLoopFigures]
    kinds: dict[str, ClosedLoopFigures]
