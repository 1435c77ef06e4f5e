"""Environment threshold rules as pure functions: duration, district average, status."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from collector.environment.config import EnvironmentConfig, load_environment_config
from collector.environment.rules import (
    HOUR_MS,
    DurationState,
    HourlyState,
    consecutive_hours,
    district_average,
    duration_step,
    hourly_step,
    site_status,
)

MIN = 60_000


def feed(values: list[tuple[int, float]], limit: float = 30, duration: int = 10 * MIN) -> list:
    """Run duration_step over (minute, value) pairs; return the changes in order."""
    state, out = DurationState(), []
    for minute, value in values:
        state, change = duration_step(state, minute * MIN, value, limit, duration)
        out.append(change)
    return out


def test_nox_raises_only_after_staying_above_for_the_duration() -> None:
    assert feed([(0, 31), (5, 40), (9, 35), (10, 33), (11, 50)]) == \
        [None, None, None, "raise", None]


def test_a_dip_below_the_limit_restarts_the_duration() -> None:
    assert feed([(0, 31), (5, 29), (6, 31), (15, 31), (16, 31)]) == \
        [None, None, None, None, "raise"]


def test_clears_once_back_at_or_below_the_limit() -> None:
    assert feed([(0, 31), (10, 31), (11, 30), (12, 20)]) == [None, "raise", "clear", None]


def test_zero_duration_raises_on_the_first_value_above() -> None:
    assert feed([(0, 30.1)], duration=0) == ["raise"]


@given(st.lists(st.tuples(st.integers(0, 100), st.floats(0, 60)), max_size=40))
def test_raise_and_clear_alternate(values: list[tuple[int, float]]) -> None:
    changes = [c for c in feed(sorted(values)) if c]
    assert all(a != b for a, b in itertools.pairwise(changes))
    assert not changes or changes[0] == "raise"


def test_district_average_needs_enough_sites() -> None:
    assert district_average({"a": 100}, 2) is None
    assert district_average({"a": 300, "b": 100}, 2) == 200


def test_consecutive_hours_stop_at_a_gap_or_a_clean_hour() -> None:
    h = HOUR_MS
    assert consecutive_hours({0: True, h: True, 2 * h: True}, 2 * h) == 3
    assert consecutive_hours({0: True, 2 * h: True}, 2 * h) == 1
    assert consecutive_hours({0: True, h: False, 2 * h: True}, 2 * h) == 1


def test_hourly_rule_needs_consecutive_hours_and_clears_on_a_clean_hour() -> None:
    h = HOUR_MS
    state = HourlyState({})
    state, c1 = hourly_step(state, 10 * h, True, 2)
    state, c2 = hourly_step(state, 11 * h, True, 2)
    state, c3 = hourly_step(state, 11 * h, True, 2)  # the same hour again (a resend)
    state, c4 = hourly_step(state, 12 * h, False, 2)
    assert [c1, c2, c3, c4] == [None, "raise", None, "clear"]
    assert max(state.exceeded) == 12 * h


def test_hourly_state_keeps_only_recent_hours() -> None:
    state = HourlyState({}, keep=3)
    for hour in range(10):
        state, _ = hourly_step(state, hour * HOUR_MS, False, 1)
    assert sorted(state.exceeded) == [7 * HOUR_MS, 8 * HOUR_MS, 9 * HOUR_MS]


@pytest.mark.parametrize(("kw", "status"), [
    ({"alarm_active": True, "last_seen": None}, "exceeded"),
    ({"last_seen": None}, "offline"),
    ({"last_seen": 0}, "offline"),
    ({"bad_values": True}, "fault"),
    ({"fault_events": True}, "fault"),
    ({"over_limit": True}, "exceeded"),
    ({}, "ok"),
])
def test_site_status_order(kw: dict, status: str) -> None:
    args = {"alarm_active": False, "last_seen": 990_000, "now": 1_000_000,
            "offline_after_ms": 600_000, "bad_values": False, "fault_events": False,
            "over_limit": False, **kw}
    assert site_status(**args)[0] == status


def test_config_merges_site_overrides_and_checks_cross_references() -> None:
    cfg = load_environment_config({
        "defaults": {"nox_limit": 30},
        "districts": [{"id": "d1"}],
        "sites": [{"id": "b1", "lat": 34.7, "lon": 113.6, "district": "d1", "kind": "boiler",
                   "devices": ["boiler-1"], "limits": {"nox_limit": 50, "nox_duration": "2min"}}],
    })
    limits = cfg.limits_of(cfg.sites[0])
    assert (limits.nox_limit, limits.nox_duration, limits.pm10_margin) == (50, 120, 80)
    with pytest.raises(ValueError, match="not one of"):
        EnvironmentConfig.model_validate({"districts": [{"id": "d1"}], "sites": [
            {"id": "x", "lat": 0, "lon": 0, "district": "d2", "kind": "dust", "devices": ["a"]}]})
    with pytest.raises(ValueError, match="already belongs"):
        EnvironmentConfig.model_validate({"sites": [
            {"id": "x", "lat": 0, "lon": 0, "kind": "dust", "devices": ["a"]},
            {"id": "y", "lat": 0, "lon": 0, "kind": "dust", "devices": ["a"]}]})
    with pytest.raises(ValueError, match="nox_limit"):
        EnvironmentConfig.model_validate({"sites": [
            {"id": "x", "lat": 0, "lon": 0, "kind": "dust", "devices": ["a"],
             "limits": {"nox_limit": -1}}]})


def test_the_shipped_demo_city_is_a_valid_section() -> None:
    from collector.environment.demo import DEMO_SECTION

    cfg = load_environment_config(DEMO_SECTION)
    assert {s.kind for s in cfg.sites} == {"dust", "boiler"}
    assert all(len(d.outline) >= 3 for d in cfg.districts)
