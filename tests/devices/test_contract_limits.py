"""The wire contract's limits as pure checks: what a gateway may emit and a collector stores."""

from __future__ import annotations

import pytest

from devices.contract import (
    INT32_MAX,
    INT64_MAX,
    MAX_FLAG,
    MAX_KIND,
    MAX_MESSAGE,
    MAX_NUMBER,
    MAX_TEXT,
    MAX_VALUES,
    event_problem,
    reading_problem,
)
from devices.model import Action, Event, Quality, Reading, Severity

TS = 1_700_000_000_000


def r(values: object, **kw: object) -> Reading:
    return Reading(**{"device": "lift-1", "ts": TS, "values": values, **kw})  # type: ignore[arg-type]


def e(**kw: object) -> Event:
    return Event(**{"device": "lift-1", "ts": TS, "kind": "gbt24476_2",  # type: ignore[arg-type]
                    "action": Action.RAISE, "severity": Severity.MAJOR, **kw})


GOOD_READINGS = [
    r({"floor": 3, "door_closed": True, "speed": 0.25, "fault_code": None}),
    r({"floor": 2.0}),  # integral float for an integer quantity
    r({"floor": -3, "service_mode": 2, "pm10": -MAX_NUMBER, "speed": MAX_NUMBER}),
    r({"trip_count": 10**15}),
    r({"battery_mv": INT32_MAX, "rssi": -(2**31)}),
    r({"wattage": 7.5, "future_text": "é" * MAX_TEXT}),  # unknown to this data model: bounded
    r({}, ts=0, mono=INT64_MAX),
    r({}, ts=INT64_MAX, quality=Quality.BAD, source_flag="D" * MAX_FLAG),
    r({f"q{i}": i for i in range(MAX_VALUES)}),
]


@pytest.mark.parametrize("reading", GOOD_READINGS)
def test_good_readings_pass(reading: Reading) -> None:
    assert reading_problem(reading) is None


@pytest.mark.parametrize(("reading", "reason"), [
    (r({}, device="-lift"), "bad_device_id"),
    (r({}, device="lift-1\n"), "bad_device_id"),
    (r({}, device="x" * 129), "bad_device_id"),
    (r({}, ts=-1), "bad_ts"),
    (r({}, ts=2**63), "bad_ts"),
    (r({}, ts=True), "bad_ts"),
    (r({}, ts=1.5), "bad_ts"),
    (r({}, mono=-1), "bad_mono"),
    (r({}, mono=2**63), "bad_mono"),
    (r({}, quality="fine"), "bad_quality"),
    (r({}, source_flag="D" * (MAX_FLAG + 1)), "too_long"),
    (r({}, source_flag="D\x00"), "nul_in_text"),
    (r({}, source_flag=7), "bad_flag"),
    (r({"floor": "B2"}), "type_mismatch"),
    (r({"speed": "fast"}), "type_mismatch"),
    (r({"door_closed": "yes"}), "type_mismatch"),
    (r({"service_mode": "normal"}), "type_mismatch"),
    (r({"speed": True}), "type_mismatch"),
    (r({"floor": False}), "type_mismatch"),
    (r({"door_closed": 1}), "type_mismatch"),
    (r({"floor": 2.5}), "not_integral"),
    (r({"service_mode": 1.5}), "not_integral"),
    (r({"speed": 1.7e308}), "out_of_range"),
    (r({"speed": -1.0000001e15}), "out_of_range"),
    (r({"trip_count": 2**63}), "out_of_range"),
    (r({"battery_mv": 2**31}), "out_of_range"),
    (r({"rssi": -(2**31) - 1}), "out_of_range"),
    (r({"speed": float("nan")}), "bad_value"),
    (r({"speed": float("inf")}), "bad_value"),
    (r({"speed": [1]}), "bad_value"),
    (r({"Floor": 1}), "bad_quantity"),
    (r({"q" * 65: 1}), "bad_quantity"),
    (r({"flo\x00or": 1}), "bad_quantity"),
    (r({"wattage": "a\x00b"}), "nul_in_text"),
    (r({"wattage": "a\ud800b"}), "bad_text"),
    (r({"wattage": "x" * (MAX_TEXT + 1)}), "too_long"),
    (r({f"q{i}": i for i in range(MAX_VALUES + 1)}), "too_many_values"),
    (r([("floor", 1)]), "bad_values"),
])
def test_bad_readings_are_named(reading: Reading, reason: str) -> None:
    problem = reading_problem(reading)
    assert problem is not None and problem[0] == reason, problem


@pytest.mark.parametrize("event", [
    e(),
    e(code=0, evidence={"floor": 3, "door_closed": True, "error": "x" * MAX_TEXT, "n": None}),
    e(code=INT32_MAX, kind="k" * MAX_KIND, message="m" * MAX_MESSAGE, mono=0),
    e(code=-(2**31), action=Action.CLEAR, severity=Severity.INFO),
])
def test_good_events_pass(event: Event) -> None:
    assert event_problem(event) is None


@pytest.mark.parametrize(("event", "reason"), [
    (e(device="lift 1"), "bad_device_id"),
    (e(ts=-1), "bad_ts"),
    (e(mono=2**63), "bad_mono"),
    (e(kind=""), "bad_kind"),
    (e(kind="k" * (MAX_KIND + 1)), "too_long"),
    (e(kind="trapped\x00"), "nul_in_text"),
    (e(action="explode"), "bad_action"),
    (e(severity="urgent"), "bad_severity"),
    (e(code=2**31), "bad_code"),
    (e(code=-(2**31) - 1), "bad_code"),
    (e(code=2**63), "bad_code"),
    (e(code=True), "bad_code"),
    (e(evidence={"k\x00": 1}), "nul_in_text"),
    (e(evidence={"k": "v\x00"}), "nul_in_text"),
    (e(evidence={"k": 1e300}), "out_of_range"),
    (e(evidence={"k": {"nested": 1}}), "bad_value"),
    (e(evidence={f"k{i}": i for i in range(MAX_VALUES + 1)}), "too_many_values"),
    (e(evidence=[1]), "bad_evidence"),
    (e(message="m" * (MAX_MESSAGE + 1)), "too_long"),
    (e(message="bad\x00"), "nul_in_text"),
])
def test_bad_events_are_named(event: Event, reason: str) -> None:
    problem = event_problem(event)
    assert problem is not None and problem[0] == reason, problem
