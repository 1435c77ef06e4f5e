"""Alarm policy: thresholds, silences, inhibition, routing, escalation timing — as tables."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from collector.alarms.config import (
    AlarmsConfig,
    AlarmsConfigError,
    Route,
    Stage,
    ThresholdRule,
    load_alarms_config,
    parse_duration,
)
from collector.alarms.policy import (
    NORMAL,
    EscalationView,
    Silence,
    SiteIndex,
    ThresholdState,
    decide,
    due_escalations,
    gateway_all_offline,
    next_escalation,
    route,
    rule_applies,
    silenced_by,
    step_threshold,
)

MIN = 60_000
NOX = ThresholdRule.model_validate({"quantity": "nox_converted", "above": 30, "for": "10min",
                                    "clear_below": 27, "kind": "boiler_nox_exceedance"})


def run(rule: ThresholdRule, series: list[tuple[int, float]]) -> list[tuple[int, str]]:
    """Feed (minute, value) pairs; return (minute, raise|clear) transitions."""
    state, out = NORMAL, []
    for minute, value in series:
        state, change = step_threshold(state, rule, value, minute * MIN)
        if change:
            out.append((minute, change))
    return out


@pytest.mark.parametrize(("series", "expected"), [
    # under the limit: nothing
    ([(0, 25), (5, 29), (20, 30)], []),
    # above for 10 min: raises at the reading that completes the duration
    ([(0, 31), (5, 32), (10, 33)], [(10, "raise")]),
    # dips below in between: the duration restarts
    ([(0, 31), (5, 29), (10, 31), (15, 31), (20, 31)], [(20, "raise")]),
    # hysteresis: 28 keeps it raised, 26 clears it
    ([(0, 31), (10, 31), (11, 28), (12, 29.9), (13, 26)], [(10, "raise"), (13, "clear")]),
    # after a clear it needs the full duration again
    ([(0, 31), (10, 31), (11, 20), (12, 31), (21, 31), (22, 31)],
     [(10, "raise"), (11, "clear"), (22, "raise")]),
    # a reading older than the last one seen changes nothing
    ([(0, 31), (10, 31), (5, 10)], [(10, "raise")]),
])
def test_threshold_duration_and_hysteresis(series: list[tuple[int, float]],
                                           expected: list[tuple[int, str]]) -> None:
    assert run(NOX, series) == expected


def test_below_rule_without_duration_raises_at_once_and_clears_above_band() -> None:
    rule = ThresholdRule.model_validate({"quantity": "battery", "below": 20, "clear_above": 25,
                                         "kind": "battery_low"})
    assert run(rule, [(0, 30), (1, 19), (2, 22), (3, 26)]) == [(1, "raise"), (3, "clear")]


def test_threshold_state_is_kept_only_while_breaching() -> None:
    state, _ = step_threshold(NORMAL, NOX, 25, 0)
    assert state.phase == "normal"
    state, _ = step_threshold(state, NOX, 31, MIN)
    assert state == ThresholdState("pending", MIN, MIN)


@given(st.lists(st.floats(min_value=0, max_value=60), min_size=1, max_size=60))
def test_threshold_transitions_alternate(values: list[float]) -> None:
    changes = [c for _, c in run(NOX, list(enumerate(values)))]
    assert all(a != b for a, b in itertools.pairwise(changes))
    assert not changes or changes[0] == "raise"


@pytest.mark.parametrize(("raw", "message"), [
    ({"quantity": "x", "kind": "k"}, "exactly one of"),
    ({"quantity": "x", "kind": "k", "above": 1, "below": 0}, "exactly one of"),
    ({"quantity": "x", "kind": "k", "above": 30, "clear_below": 31}, "clear_below"),
])
def test_threshold_config_errors(raw: dict[str, object], message: str) -> None:
    with pytest.raises(AlarmsConfigError, match=message):
        load_alarms_config({"thresholds": [raw]})


@pytest.mark.parametrize(("text", "ms"), [("250ms", 250), ("30s", 30_000), ("10min", 600_000),
                                          ("1h", 3_600_000), ("0s", 0), (5, 5000)])
def test_durations(text: str | int, ms: int) -> None:
    assert parse_duration(text) == ms


def test_config_errors_name_the_key() -> None:
    with pytest.raises(AlarmsConfigError, match=r"routes\[0\]\.unit = 'nobody'"):
        load_alarms_config({"routes": [{"unit": "nobody"}]})
    with pytest.raises(AlarmsConfigError, match="sha256"):
        load_alarms_config({"units": {"u": {"members": [{"name": "a", "token_hash": "x"}]}}})
    with pytest.raises(AlarmsConfigError, match="one site"):
        load_alarms_config({"sites": {"a": {"devices": ["d"]}, "b": {"devices": ["d"]}}})


def test_site_of_device_then_gateway_then_gateway_itself() -> None:
    idx = SiteIndex.from_config(AlarmsConfig.model_validate(
        {"sites": {"jinshui": {"devices": ["lift-1"], "grid": "north"},
                   "plant": {"gateways": ["gw-p"]}}}))
    assert idx.site_of("lift-1", "gw-p") == "jinshui"
    assert idx.site_of("boiler", "gw-p") == "plant"
    assert idx.site_of("other", "gw-x") == "gw:gw-x"
    assert idx.grid_of("jinshui") == "north"
    assert idx.grid_of("plant") == ""


@pytest.mark.parametrize(("rule", "device", "site", "applies"), [
    ({}, "d", "s", True),
    ({"devices": ["d"]}, "d", "s", True),
    ({"devices": ["e"]}, "d", "s", False),
    ({"sites": ["s"]}, "d", "s", True),
    ({"sites": ["t"], "devices": ["d"]}, "d", "s", True),
])
def test_rule_scope(rule: dict[str, list[str]], device: str, site: str, applies: bool) -> None:
    r = ThresholdRule.model_validate({"quantity": "q", "kind": "k", "above": 1, **rule})
    assert rule_applies(r, device, site) is applies


SILENCES = [Silence(1, 1000, 2000, device="lift-2"),
            Silence(2, 1000, 2000, site="plant", kind="boiler_nox_exceedance")]


@pytest.mark.parametrize(("key", "now", "expected"), [
    (("s", "lift-2", "door"), 1500, 1),
    (("s", "lift-2", "door"), 2000, None),  # the end is exclusive
    (("s", "lift-2", "door"), 999, None),
    (("plant", "b1", "boiler_nox_exceedance"), 1000, 2),
    (("plant", "b1", "other"), 1500, None),
    (("s", "lift-3", "door"), 1500, None),
])
def test_silence_matching(key: tuple[str, str, str], now: int, expected: int | None) -> None:
    assert silenced_by(SILENCES, key, now) == expected


@pytest.mark.parametrize(("kw", "verdict", "until"), [
    ({}, "wait", 30_000),
    ({"now": 30_000}, "page", None),
    ({"silence": 7}, "silenced", None),
    ({"silence": 7, "immediate": True}, "silenced", None),
    ({"inhibitor": "s/gw/gateway_offline"}, "suppressed", None),
    ({"inhibitor": "s/gw/gateway_offline", "now": 60_000}, "suppressed", None),
    ({"inhibitor": "s/*/power_loss", "immediate": True}, "page", None),  # trapped passenger
    ({"is_group": True}, "page", None),
    ({"immediate": True}, "page", None),
])
def test_decide(kw: dict[str, object], verdict: str, until: int | None) -> None:
    args: dict[str, object] = {"now": 0, "is_group": False, "immediate": False,
                               "group_wait_ms": 30_000, "inhibitor": None, "silence": None}
    args.update(kw)
    d = decide(("s", "lift-1", "door"), 0, **args)  # type: ignore[arg-type]
    assert (d.verdict, d.until) == (verdict, until)


@pytest.mark.parametrize(("inventory", "offline", "down"), [
    ({"a", "b"}, {"a"}, False),
    ({"a", "b"}, {"a", "b"}, True),
    ({"a"}, {"a", "z"}, True),
    (set(), set(), False),
])
def test_gateway_all_offline(inventory: set[str], offline: set[str], down: bool) -> None:
    assert gateway_all_offline(inventory, offline) is down


ROUTES = [Route(unit="rescue", kinds=("trapped_passenger",)),
          Route(unit="crew-north", grids=("north",)),
          Route(unit="env", kinds=("boiler_nox_exceedance",), sites=("plant",))]


@pytest.mark.parametrize(("kind", "site", "grid", "site_unit", "unit"), [
    ("trapped_passenger", "any", "south", "", "rescue"),
    ("door_fault", "x", "north", "", "crew-north"),
    ("boiler_nox_exceedance", "plant", "east", "", "env"),
    ("boiler_nox_exceedance", "other", "east", "", "fallback"),
    ("door_fault", "x", "south", "site-crew", "site-crew"),
])
def test_routing(kind: str, site: str, grid: str, site_unit: str, unit: str) -> None:
    assert route(kind, site, grid, ROUTES, site_unit, "fallback") == unit


CHAIN = [Stage.model_validate({"after": "1min", "channels": ["dingtalk-north"]}),
         Stage.model_validate({"after": "5min", "channels": ["wecom-supervisors"]}),
         Stage.model_validate({"after": "15min", "channels": ["email-ops"]})]


@pytest.mark.parametrize(("state", "sent", "immediate", "at_min", "due"), [
    ("open", 0, False, 0, []),
    ("open", 0, True, 0, [0]),  # trapped passenger: first stage at once
    ("open", 0, False, 1, [0]),
    ("open", 1, False, 4.9, []),
    ("open", 1, False, 5, [1]),
    ("open", 0, False, 20, [0, 1, 2]),  # a late tick sends everything due
    ("open", 3, False, 60, []),
    ("acknowledged", 1, False, 60, []),  # acknowledgement stops the chain
    ("on_site", 1, False, 60, []),
    ("resolved", 0, True, 0, []),
])
def test_due_escalations(state: str, sent: int, immediate: bool, at_min: float,
                         due: list[int]) -> None:
    view = EscalationView(state, 0, frozenset(range(sent)), immediate)
    assert due_escalations(view, CHAIN, int(at_min * MIN)) == due


STAGED = [Stage.model_validate({"after": "0s", "channels": ["crew"]}),
          Stage.model_validate({"after": "2min", "channels": ["sup"], "to": "supervisor"}),
          Stage.model_validate({"when": "not_arrived", "channels": ["sup"]}),
          Stage.model_validate({"when": "not_resolved", "after": "1h", "channels": ["ops"]})]


@pytest.mark.parametrize(("state", "fired", "sla_min", "at_min", "due", "nxt"), [
    ("open", {0}, 10, 1, [], (1, 2)),
    ("acknowledged", {0}, 10, 9.9, [], (2, 10)),  # ack stops stage 1, not the arrival SLA
    ("acknowledged", {0}, 10, 10, [2], (2, 10)),
    ("acknowledged", {0, 2}, 10, 30, [], (3, 60)),
    ("on_site", {0}, 10, 30, [], (3, 60)),  # arrival stops the not-arrived stage
    ("on_site", {0}, 10, 60, [3], (3, 60)),
    ("acknowledged", {0}, None, 30, [], (3, 60)),  # no SLA for the kind: no arrival stage
    ("resolved", set(), 10, 90, [], None),
])
def test_escalation_by_condition(state: str, fired: set[int], sla_min: float | None,
                                 at_min: float, due: list[int],
                                 nxt: tuple[int, float] | None) -> None:
    view = EscalationView(state, 0, frozenset(fired), False,
                          None if sla_min is None else int(sla_min * MIN))
    assert due_escalations(view, STAGED, int(at_min * MIN)) == due
    expected = None if nxt is None else (nxt[0], int(nxt[1] * MIN))
    assert next_escalation(view, STAGED) == expected


def test_escalation_stages_must_be_ordered() -> None:
    with pytest.raises(AlarmsConfigError, match="increasing"):
        load_alarms_config({"units": {"u": {"escalation": [
            {"after": "5min", "channels": ["a"]}, {"after": "0s", "channels": ["b"]}]}}})


def test_a_chain_without_arrival_stage_gets_one_at_the_sla() -> None:
    cfg = load_alarms_config({"units": {
        "u": {"escalation": [{"after": "0s", "channels": ["crew"]},
                             {"after": "5min", "channels": ["sup"], "to": "supervisor"}]},
        "v": {"escalation": [{"after": "0s", "channels": ["crew"]}],
              "arrival_escalation": False}}})
    added = cfg.units["u"].escalation[-1]
    assert (added.when, added.after_ms, added.channels, added.to) == \
        ("not_arrived", None, ("sup",), "supervisor")
    assert [s.when for s in cfg.units["v"].escalation] == ["not_acknowledged"]
