"""Alarm policy as small pure functions: sites, thresholds, silences, inhibition, routing, paging.

No clocks, no database: every function takes `now` (epoch ms) and plain data, so the cadence of
paging can be tested with tables.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from collector.alarms.config import AlarmsConfig, Member, Route, Stage, ThresholdRule, Unit

GATEWAY_OFFLINE = "gateway_offline"
DEVICE_OFFLINE = "device_offline"
SITE_DEVICE = "*"  # the device part of the dedup key of a site-wide alarm

AlarmKey = tuple[str, str, str]  # (site, device, kind): the dedup key


# --- sites --------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class SiteIndex:
    """Where devices and gateways are: explicit `[alarms.sites]` entries first, then gateway."""

    by_device: dict[str, str]
    by_gateway: dict[str, str]
    grids: dict[str, str]
    units: dict[str, str]
    # Sites the config does not list: the registry's (device or gateway -> site), or None.
    resolve: Callable[[str | None, str], str | None] | None = None

    @classmethod
    def from_config(cls, cfg: AlarmsConfig) -> SiteIndex:
        """Index the sites of a config."""
        return cls(
            by_device={d: name for name, s in cfg.sites.items() for d in s.devices},
            by_gateway={g: name for name, s in cfg.sites.items() for g in s.gateways},
            grids={name: s.grid for name, s in cfg.sites.items()},
            units={name: s.unit for name, s in cfg.sites.items() if s.unit})

    def site_of(self, device: str | None, gateway: str) -> str:
        """Site of a device: listed device, else its gateway's listed site, else the
        registry's site of the device or gateway, else `gw:<gateway>`."""
        if device is not None and device in self.by_device:
            return self.by_device[device]
        if gateway in self.by_gateway:
            return self.by_gateway[gateway]
        found = self.resolve(device, gateway) if self.resolve is not None else None
        return found or f"gw:{gateway}"

    def grid_of(self, site: str) -> str:
        """Grid area of a site ("" when not configured)."""
        return self.grids.get(site, "")


# --- thresholds ---------------------------------------------------------------------------------

Phase = Literal["normal", "pending", "active"]
Transition = Literal["raise", "clear"]


@dataclass(frozen=True, slots=True)
class ThresholdState:
    """Where one rule stands for one device: normal, breaching since `since`, or raised."""

    phase: Phase = "normal"
    since: int = 0
    last_ts: int = -1


NORMAL = ThresholdState()


def rule_applies(rule: ThresholdRule, device: str, site: str) -> bool:
    """Say whether a rule covers a device (empty device and site lists cover every device)."""
    if not rule.devices and not rule.sites:
        return True
    return device in rule.devices or site in rule.sites


def _breach(rule: ThresholdRule, value: float) -> bool:
    if rule.above is not None:
        return value > rule.above
    assert rule.below is not None  # guaranteed by ThresholdRule's validator
    return value < rule.below


def _cleared(rule: ThresholdRule, value: float) -> bool:
    if rule.above is not None:
        below = rule.clear_below if rule.clear_below is not None else rule.above
        return value < below
    above = rule.clear_above if rule.clear_above is not None else rule.below
    assert above is not None
    return value > above


def step_threshold(state: ThresholdState, rule: ThresholdRule, value: float,
                   ts: int) -> tuple[ThresholdState, Transition | None]:
    """Advance one rule by one good reading; return the new state and a raise/clear, if any.

    Durations are measured on observation times, so replayed data raises what live data would.
    Readings older than the last one seen are ignored (out of order, replay overlap).
    """
    if ts < state.last_ts:
        return state, None
    if state.phase == "active":
        if _cleared(rule, value):
            return ThresholdState("normal", ts, ts), "clear"
        return ThresholdState("active", state.since, ts), None
    if not _breach(rule, value):
        return ThresholdState("normal", ts, ts), None
    since = state.since if state.phase == "pending" else ts
    if ts - since >= rule.for_ms:
        return ThresholdState("active", ts, ts), "raise"
    return ThresholdState("pending", since, ts), None


# --- silences and inhibition -------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Silence:
    """A maintenance window: alarms matching every set field raise no incident and no notice."""

    id: int
    starts_at: int
    ends_at: int
    site: str | None = None
    device: str | None = None
    kind: str | None = None
    life_safety: bool = False  # set only by ops with a reason: may hold life-safety kinds

    def matches(self, key: AlarmKey, now: int, life_safety: bool = False) -> bool:
        """Say whether this silence covers an alarm at a time (life-safety only if allowed)."""
        site, device, kind = key
        return (self.starts_at <= now < self.ends_at
                and (self.life_safety or not life_safety)
                and self.site in (None, site) and self.device in (None, device)
                and self.kind in (None, kind))


def silenced_by(silences: Iterable[Silence], key: AlarmKey, now: int,
                life_safety: bool = False) -> int | None:
    """Id of the first silence covering an alarm now, or None."""
    return next((s.id for s in silences if s.matches(key, now, life_safety)), None)


Verdict = Literal["page", "wait", "silenced", "suppressed"]


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with an active alarm that has no incident yet."""

    verdict: Verdict
    until: int | None = None  # for "wait": when to decide again
    by: str = ""  # silence id or inhibiting alarm, for the record


def decide(key: AlarmKey, first_seen: int, now: int, *, is_group: bool, immediate: bool,
           group_wait_ms: int, inhibitor: str | None, silence: int | None) -> Decision:
    """Decide whether an active alarm pages now, waits for grouping, or is held back.

    Silences win over everything (a human decided); site-wide (group) alarms and immediate kinds
    are never inhibited nor delayed; other alarms wait `group_wait` so an inhibitor can arrive.
    """
    if silence is not None:
        return Decision("silenced", by=str(silence))
    if is_group or immediate:
        return Decision("page")
    if inhibitor is not None:
        return Decision("suppressed", by=inhibitor)
    if now < first_seen + group_wait_ms:
        return Decision("wait", until=first_seen + group_wait_ms)
    return Decision("page")


def gateway_all_offline(inventory: set[str], offline: set[str]) -> bool:
    """Say whether every known device of a gateway reports device_offline."""
    return bool(inventory) and inventory <= offline


# --- routing ------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class RouteQuery:
    """What routing knows of a new incident: its kind, where it is and what it carries."""

    kind: str
    site: str
    device: str = ""
    gateway: str = ""
    evidence: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RouteDecision:
    """The responsible unit of an incident, where it lies, and why it went there."""

    unit: str
    grid: str = ""
    reason: str = ""
    area: str = ""
    district: str = ""


def config_route(q: RouteQuery, cfg: AlarmsConfig, sites: SiteIndex) -> RouteDecision:
    """Routing by collector.toml alone: first matching route, site unit, default unit."""
    grid = sites.grid_of(q.site)
    for i, r in enumerate(cfg.routes):
        if ((not r.kinds or q.kind in r.kinds) and (not r.sites or q.site in r.sites)
                and (not r.grids or grid in r.grids)):
            return RouteDecision(r.unit, grid, f"[alarms] routes[{i}] matches {q.kind} at "
                                               f"{q.site}")
    if q.site in sites.units:
        return RouteDecision(sites.units[q.site], grid,
                             f"site {q.site} names its unit in [alarms.sites]")
    if cfg.default_unit:
        return RouteDecision(cfg.default_unit, grid, "default unit: no route or site unit")
    return RouteDecision("", grid, "no route, site unit or default unit")


def route(kind: str, site: str, grid: str, routes: Sequence[Route], site_unit: str = "",
          default_unit: str = "") -> str:
    """Responsible unit: first matching route, else the site's unit, else the default ("")."""
    for r in routes:
        if ((not r.kinds or kind in r.kinds) and (not r.sites or site in r.sites)
                and (not r.grids or grid in r.grids)):
            return r.unit
    return site_unit or default_unit


# --- assignment ---------------------------------------------------------------------------------

Assignee = Callable[[str, int], Member | None]  # (unit, now) -> who is on call


def pick_assignee(unit: Unit | None) -> Member | None:
    """The one named person of a new incident: the first on-call member, else the first one."""
    members = unit.members if unit else ()
    return next((m for m in members if m.on_call), members[0] if members else None)


# --- escalation ---------------------------------------------------------------------------------

LABELS: dict[str, str] = {"not_acknowledged": "ack overdue", "not_arrived": "not arrived",
                          "not_resolved": "not resolved"}
_HOLDS: dict[str, tuple[str, ...]] = {
    "not_acknowledged": ("open",),
    "not_arrived": ("open", "acknowledged"),
    "not_resolved": ("open", "acknowledged", "on_site"),
}


@dataclass(frozen=True, slots=True)
class EscalationView:
    """What escalation needs of an incident: state, its unit's clock, the stages already fired."""

    state: str
    since: int  # when the incident came to its unit (opening, or re-assignment)
    fired: frozenset[int] = frozenset()
    immediate: bool = False
    arrive_within_ms: int | None = None


def stage_label(when: str, index: int) -> str:
    """How people name a stage: "page" for the first, else what is overdue."""
    return "page" if index == 0 and when == "not_acknowledged" else LABELS.get(when, when)


def first_stage(chain: Sequence[Stage]) -> int | None:
    """Index of the chain's first not-acknowledged stage (an immediate kind sends it at once)."""
    return next((i for i, s in enumerate(chain) if s.when == "not_acknowledged"), None)


def stage_due_at(view: EscalationView, chain: Sequence[Stage], index: int) -> int | None:
    """When a stage is due, or None when it does not apply (arrival stage, kind without SLA)."""
    stage = chain[index]
    if view.immediate and index == first_stage(chain):
        return view.since
    after = stage.after_ms if stage.after_ms is not None else view.arrive_within_ms
    return None if after is None else view.since + after


def stage_holds(stage: Stage, state: str) -> bool:
    """Say whether a stage's condition still holds (ack, arrival and resolve each stop theirs)."""
    return state in _HOLDS[stage.when]


def due_escalations(view: EscalationView, chain: Sequence[Stage], now: int) -> list[int]:
    """Indices of the stages to send now: due, not yet fired, their condition still holding."""
    out = []
    for i, stage in enumerate(chain):
        due = stage_due_at(view, chain, i)
        if i not in view.fired and due is not None and due <= now \
                and stage_holds(stage, view.state):
            out.append(i)
    return out


def next_escalation(view: EscalationView, chain: Sequence[Stage]) -> tuple[int, int] | None:
    """(index, due time) of the next stage that fires if nothing changes, or None."""
    pending = [(due, i) for i, stage in enumerate(chain)
               if i not in view.fired and stage_holds(stage, view.state)
               and (due := stage_due_at(view, chain, i)) is not None]
    if not pending:
        return None
    due, i = min(pending)
    return i, due
