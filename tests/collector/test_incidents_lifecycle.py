"""Incident lifecycle transitions and closed-loop figures, as tables."""

from __future__ import annotations

import pytest

from collector.alarms.lifecycle import (
    IllegalTransition,
    IncidentTimes,
    State,
    allowed_actions,
    can_auto_resolve,
    closed_loop_stats,
    next_state,
    percentile,
    reopen_to,
)

S = State


@pytest.mark.parametrize(("state", "action", "target"), [
    (S.OPEN, "ack", S.ACKNOWLEDGED),
    (S.ACKNOWLEDGED, "arrive", S.ON_SITE),
    (S.ACKNOWLEDGED, "resolve", S.RESOLVED),  # fixed remotely
    (S.ON_SITE, "resolve", S.RESOLVED),
    (S.RESOLVED, "close", S.CLOSED),
])
def test_legal_transitions(state: State, action: str, target: State) -> None:
    assert next_state(1, state, action) is target


@pytest.mark.parametrize(("state", "action", "allowed"), [
    (S.OPEN, "resolve", ["ack"]),  # nobody resolves what nobody acknowledged
    (S.OPEN, "close", ["ack"]),
    (S.OPEN, "arrive", ["ack"]),
    (S.ACKNOWLEDGED, "ack", ["arrive", "resolve"]),
    (S.ACKNOWLEDGED, "close", ["arrive", "resolve"]),
    (S.ON_SITE, "ack", ["resolve"]),
    (S.RESOLVED, "resolve", ["close"]),
    (S.CLOSED, "ack", []),
    (S.OPEN, "explode", ["ack"]),
])
def test_illegal_transitions_say_what_is_allowed(state: State, action: str,
                                                 allowed: list[str]) -> None:
    with pytest.raises(IllegalTransition) as info:
        next_state(7, state, action)
    assert info.value.allowed == allowed == allowed_actions(state)
    assert "incident 7" in str(info.value)


@pytest.mark.parametrize(("state", "auto"), [
    (S.OPEN, True), (S.ACKNOWLEDGED, True), (S.ON_SITE, True),
    (S.RESOLVED, False), (S.CLOSED, False),
])
def test_auto_resolve_only_while_active(state: State, auto: bool) -> None:
    assert can_auto_resolve(state) is auto


@pytest.mark.parametrize(("before", "back"), [
    ("acknowledged", S.ACKNOWLEDGED), ("on_site", S.ON_SITE), ("open", S.OPEN),
    (None, S.OPEN), ("resolved", S.OPEN), ("garbage", S.OPEN),
])
def test_reopen_returns_to_where_it_was(before: str | None, back: State) -> None:
    assert reopen_to(before) is back


@pytest.mark.parametrize(("values", "p", "expected"), [
    ([], 90, None),
    ([5.0], 90, 5.0),
    ([float(x) for x in range(1, 11)], 90, 9.0),
    ([float(x) for x in range(1, 11)], 100, 10.0),
    ([float(x) for x in range(1, 21)], 90, 18.0),
    ([3.0, 1.0, 2.0], 50, 2.0),
])
def test_percentile_nearest_rank(values: list[float], p: float, expected: float | None) -> None:
    assert percentile(values, p) == expected


def test_stats_per_unit_and_kind() -> None:
    s = 1000
    rows = [IncidentTimes("north", "trapped_passenger", 0, acked_at=(10 + i) * s,
                          resolved_at=(100 + 10 * i) * s, closed_at=200 * s if i < 3 else None)
            for i in range(10)]
    rows.append(IncidentTimes("east", "boiler_nox_exceedance", 0))
    stats = closed_loop_stats(rows, 30 * s)
    north = stats["units"]["north"]  # type: ignore[index]
    assert north["found"] == 10
    assert north["acknowledged"] == 10
    assert north["resolved"] == 10
    assert north["closed"] == 3
    assert north["time_to_acknowledge"] == {"mean_s": 14.5, "p90_s": 18.0}
    assert north["time_to_resolve"] == {"mean_s": 145.0, "p90_s": 180.0}
    east = stats["kinds"]["boiler_nox_exceedance"]  # type: ignore[index]
    assert (east["found"], east["acknowledged"], east["unacknowledged"]) == (1, 0, 1)
    # nobody acknowledged it: it counts with the 30 s it has waited so far, not left out
    assert east["time_to_acknowledge"] == {"mean_s": 30.0, "p90_s": 30.0}
    assert stats["total"]["found"] == 11  # type: ignore[index]
    assert stats["total"]["time_to_acknowledge"]["p90_s"] == 19.0  # type: ignore[index]
