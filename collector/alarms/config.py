"""The `[alarms]` section of collector.toml: thresholds, sites, units, rosters and routing."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|sec|min|m|h|d)?\s*$")
_UNIT_MS = {"ms": 1, "s": 1000, "sec": 1000, "min": 60_000, "m": 60_000, "h": 3_600_000,
            "d": 86_400_000}
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


class AlarmsConfigError(ValueError):
    """An `[alarms]` section that cannot be used; the message names the key and the fix."""


def parse_duration(value: Any) -> int:
    """Turn "250ms", "30s", "10min", "1h" (or plain seconds) into milliseconds."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration")
    if isinstance(value, int | float):
        return int(value * 1000)
    m = _DURATION_RE.match(str(value))
    if not m:
        raise ValueError(f"{value!r} is not a duration like \"30s\", \"10min\" or \"1h\"")
    return int(float(m.group(1)) * _UNIT_MS[m.group(2) or "s"])


DurationMs = Annotated[int, BeforeValidator(parse_duration)]
Severity = Literal["critical", "major", "minor", "warning", "info"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class ThresholdRule(_Section):
    """Raise `kind` when `quantity` stays beyond a limit for a duration; clear with hysteresis."""

    quantity: str
    kind: str
    above: float | None = None
    below: float | None = None
    for_ms: DurationMs = Field(default=0, alias="for")
    clear_below: float | None = None  # for `above` rules; defaults to `above`
    clear_above: float | None = None  # for `below` rules; defaults to `below`
    devices: tuple[str, ...] = ()
    sites: tuple[str, ...] = ()
    severity: Severity = "major"

    @model_validator(mode="after")
    def _one_direction(self) -> ThresholdRule:
        if (self.above is None) == (self.below is None):
            raise ValueError(f"threshold {self.kind!r}: set exactly one of `above` or `below`")
        if self.above is not None and self.clear_below is not None \
                and self.clear_below > self.above:
            raise ValueError(f"threshold {self.kind!r}: clear_below must be <= above "
                             "(hysteresis clears below the limit)")
        if self.below is not None and self.clear_above is not None \
                and self.clear_above < self.below:
            raise ValueError(f"threshold {self.kind!r}: clear_above must be >= below")
        return self


class Site(_Section):
    """A building or plant: its devices and gateways, grid and unit, and how a crew finds it."""

    name: str = ""
    devices: tuple[str, ...] = ()
    gateways: tuple[str, ...] = ()
    grid: str = ""
    unit: str = ""
    address: str = ""
    building: str = ""
    entrance: str = ""  # which door or lobby leads to the lifts
    contact_name: str = ""  # who lets the crew in: property desk, building manager
    contact_phone: str = ""
    lat: float | None = Field(default=None, ge=-90, le=90)  # WGS-84, for a map link
    lon: float | None = Field(default=None, ge=-180, le=180)

    @model_validator(mode="after")
    def _both_coordinates(self) -> Site:
        if (self.lat is None) != (self.lon is None):
            raise ValueError("give both lat and lon (WGS-84 degrees), or neither")
        return self


class Member(_Section):
    """A crew member: contact details and the SHA-256 (hex) of their bearer token."""

    name: str
    phone: str = ""
    email: str = ""
    token_hash: str = ""
    on_call: bool = True

    @model_validator(mode="after")
    def _hash_shape(self) -> Member:
        if self.token_hash and not _SHA256_RE.fullmatch(self.token_hash):
            raise ValueError(f"member {self.name!r}: token_hash must be 64 lower-case hex "
                             "digits (sha256 of the token), never the token itself")
        return self


Condition = Literal["not_acknowledged", "not_arrived", "not_resolved"]


class Stage(_Section):
    """One escalation stage: if the incident is still `when` this long after it came to the
    unit, notify these channels.

    A `not_arrived` stage without `after` is due at the kind's arrival SLA (`arrive_within`)
    and does not apply to kinds without one.
    """

    after_ms: DurationMs | None = Field(default=None, alias="after")
    channels: tuple[str, ...]
    when: Condition = "not_acknowledged"
    to: str = ""  # who the channels reach, as people say it: "supervisor", "duty manager"

    @model_validator(mode="after")
    def _delay(self) -> Stage:
        if self.after_ms is None and self.when != "not_arrived":
            object.__setattr__(self, "after_ms", 0)
        return self

    @property
    def audience(self) -> str:
        """The stage's audience name (its channels when `to` is not set)."""
        return self.to or ", ".join(self.channels)


class Unit(_Section):
    """A responsible unit (maintenance crew, department) with its roster and escalation chain."""

    name: str = ""
    members: tuple[Member, ...] = ()
    escalation: tuple[Stage, ...] = ()
    # A chain without a `not_arrived` stage gets one at the kind's arrival SLA, to the
    # audience of its last stage: nobody on site in time is never silent by omission.
    arrival_escalation: bool = True

    @model_validator(mode="after")
    def _ordered(self) -> Unit:
        for when in ("not_acknowledged", "not_arrived", "not_resolved"):
            delays = [s.after_ms for s in self.escalation
                      if s.when == when and s.after_ms is not None]
            if delays != sorted(delays):
                raise ValueError(f"escalation stages when = {when!r} must be in increasing "
                                 "`after` order")
        if self.arrival_escalation and self.escalation \
                and all(s.when != "not_arrived" for s in self.escalation):
            last = self.escalation[-1]
            arrival = Stage(channels=last.channels, when="not_arrived", to=last.audience)
            object.__setattr__(self, "escalation", (*self.escalation, arrival))
        return self


class Route(_Section):
    """Send incidents of these kinds at these sites/grids to `unit`; empty lists match all."""

    unit: str
    kinds: tuple[str, ...] = ()
    sites: tuple[str, ...] = ()
    grids: tuple[str, ...] = ()


class OpsToken(_Section):
    """An operations-room login: its name and the SHA-256 (hex) of its bearer token."""

    name: str
    token_hash: str


_STILL_PRESENT: dict[str, tuple[str, ...]] = {
    "trapped_passenger": ("passenger_present",), "alarm_button": ("alarm_button",)}


class AlarmsConfig(_Section):
    """Everything the alarm engine and incident service are configured with."""

    thresholds: tuple[ThresholdRule, ...] = ()
    sites: dict[str, Site] = Field(default_factory=dict)
    units: dict[str, Unit] = Field(default_factory=dict)
    routes: tuple[Route, ...] = ()
    default_unit: str = ""
    ops: tuple[OpsToken, ...] = ()
    # Event kinds that stand for a whole site (one alarm per site) and inhibit its per-device
    # alarms; "gateway_offline" is synthesised from state messages or all-devices-offline.
    site_kinds: tuple[str, ...] = ("power_loss",)
    # Never inhibited, never delayed: a trapped passenger during a power cut is the emergency.
    immediate_kinds: tuple[str, ...] = ("trapped_passenger", "alarm_button")
    ignore_kinds: tuple[str, ...] = ()
    # Per-device alarms wait this long before paging, so that a gateway or power loss that
    # explains them can arrive first and inhibit them (Alertmanager's group_wait).
    group_wait_ms: DurationMs = Field(default=30_000, alias="group_wait")
    # A cleared alarm without an incident that re-raises within this window is the same alarm.
    flap_window_ms: DurationMs = Field(default=900_000, alias="flap_window")
    # Kinds where a life may be at stake: never auto-resolved (a person confirms), silenced only
    # by ops with a reason, resolved or closed over a still-present condition only by override.
    life_safety_kinds: tuple[str, ...] = ("trapped_passenger",)
    # Arrival SLA per kind: `not_arrived` stages without `after` fire then; time to arrive is
    # measured against it. The seeds' rescue figure: about 10 minutes.
    arrive_within_ms: dict[str, DurationMs] = Field(
        default_factory=lambda: {"trapped_passenger": 600_000}, alias="arrive_within")
    # Boolean points that, while true in the device's latest reading, mean the condition of an
    # incident of that kind is still there (besides the alarm itself still being raised).
    still_present: dict[str, tuple[str, ...]] = Field(default_factory=lambda: dict(
        _STILL_PRESENT))
    # Longest silence a crew member may set (ops are not bounded).
    crew_silence_max_ms: DurationMs = Field(default=4 * 3_600_000, alias="crew_silence_max")

    @model_validator(mode="after")
    def _references(self) -> AlarmsConfig:
        known = set(self.units)
        for i, r in enumerate(self.routes):
            if r.unit not in known:
                raise ValueError(f"routes[{i}].unit = {r.unit!r} is not defined under "
                                 f"[alarms.units] (known: {sorted(known)})")
        for name, s in self.sites.items():
            if s.unit and s.unit not in known:
                raise ValueError(f"sites.{name}.unit = {s.unit!r} is not a defined unit")
        if self.default_unit and self.default_unit not in known:
            raise ValueError(f"default_unit = {self.default_unit!r} is not a defined unit")
        owner: dict[str, str] = {}
        for name, s in self.sites.items():
            for d in s.devices:
                if d in owner:
                    raise ValueError(f"device {d!r} is in sites {owner[d]!r} and {name!r}; "
                                     "a device belongs to one site")
                owner[d] = name
        return self


def load_alarms_config(raw: dict[str, Any], source: str = "collector.toml") -> AlarmsConfig:
    """Validate the raw `[alarms]` dict; errors name the file and the key."""
    try:
        return AlarmsConfig.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise AlarmsConfigError(f"{source}: [alarms] {where}: {first['msg']}") from None
