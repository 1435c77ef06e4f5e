"""Threshold rules as small pure functions: converted NOx for a duration, PM10 vs district,
cooking fume above its limit and the fan running while the fume purifier is off."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Literal

Change = Literal["raise", "clear"] | None
HOUR_MS = 3_600_000


@dataclass(frozen=True, slots=True)
class DurationState:
    """A value above its limit since `above_since` (observation ms); `raised` once long enough."""

    above_since: int | None = None
    raised: bool = False


def duration_step(state: DurationState, ts: int, value: float, limit: float,
                  duration_ms: int) -> tuple[DurationState, Change]:
    """Feed one GOOD value; raise once it stayed above `limit` for `duration_ms`, clear below."""
    if value <= limit:
        return DurationState(None, False), ("clear" if state.raised else None)
    since = ts if state.above_since is None else min(state.above_since, ts)
    if not state.raised and ts - since >= duration_ms:
        return DurationState(since, True), "raise"
    return replace(state, above_since=since), None


def district_average(values: Mapping[str, float], min_sites: int) -> float | None:
    """Mean of the sites' hourly values, or None when fewer than `min_sites` reported."""
    if len(values) < min_sites:
        return None
    return sum(values.values()) / len(values)


def consecutive_hours(exceeded: Mapping[int, bool], latest: int) -> int:
    """How many hours up to `latest` (hour start, ms) were exceeded without a gap."""
    count, hour = 0, latest
    while exceeded.get(hour):
        count += 1
        hour -= HOUR_MS
    return count


@dataclass(frozen=True, slots=True)
class HourlyState:
    """Per-hour exceedance of a site (bounded to the last `keep` hours) and whether raised."""

    exceeded: Mapping[int, bool]
    raised: bool = False
    keep: int = 48


def hourly_step(state: HourlyState, hour: int, exceeded: bool,
                hours_needed: int) -> tuple[HourlyState, Change]:
    """Record one hour's verdict; raise after `hours_needed` in a row, clear on a clean hour."""
    marks = {h: e for h, e in state.exceeded.items() if h > hour - state.keep * HOUR_MS}
    marks[hour] = exceeded
    latest = max(marks)
    run = consecutive_hours(marks, latest)
    if not state.raised and run >= hours_needed:
        return HourlyState(marks, True, state.keep), "raise"
    if state.raised and not marks[latest]:
        return HourlyState(marks, False, state.keep), "clear"
    return HourlyState(marks, state.raised, state.keep), None


Status = Literal["ok", "exceeded", "fault", "offline"]


def site_status(*, alarm_active: bool, last_seen: int | None, now: int, offline_after_ms: int,
                bad_values: bool, fault_events: bool, over_limit: bool) -> tuple[Status, str]:
    """A site's map status and why: an active alarm first, then no data, faults, limits."""
    if alarm_active:
        return "exceeded", "threshold alarm active"
    if last_seen is None:
        return "offline", "no data received"
    if now - last_seen > offline_after_ms:
        return "offline", f"no data for {(now - last_seen) // 1000} s"
    if bad_values or fault_events:
        return "fault", "instrument fault flag" if bad_values else "device fault raised"
    if over_limit:
        return "exceeded", "latest value above the limit"
    return "ok", ""


def running(state: float | None, current: float | None, on_current: float) -> bool | None:
    """Whether a fan or purifier runs: its state when sent (1 running), else its current above
    `on_current` amperes (platforms set it from the rating); None when neither is known."""
    if state is not None:
        return int(state) == 1
    if current is not None:
        return current > on_current
    return None


def unpurified(fan: bool | None, purifier: bool | None) -> bool | None:
    """The classic evasion: the exhaust fan runs while the purifier is off (None: unknown)."""
    if fan is None or purifier is None:
        return None
    return fan and not purifier
