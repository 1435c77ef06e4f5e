"""The contract guard between every source and the outbox (pure: a list sink)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import pytest

from devices.model import Action, Event, Quality, Reading, Severity
from edge.sources import ContractGuard

TS = 1_700_000_000_000


def guard() -> tuple[ContractGuard, list[Reading | Event]]:
    passed: list[Reading | Event] = []

    def sink(items: Sequence[Reading | Event]) -> None:
        passed.extend(items)

    return ContractGuard(sink, "b1"), passed


def test_only_bad_values_and_bad_items_are_dropped_and_counted(
        caplog: pytest.LogCaptureFixture) -> None:
    g, passed = guard()
    good = Reading("lift-1", TS, {"floor": 3, "speed": 1.5})
    with caplog.at_level(logging.WARNING, logger="edge.sources"):
        g([good,
           Reading("lift-1", TS, {"floor": 2**63, "speed": 1.0, "door_closed": "yes"}),
           Reading("lift-1", TS, {"speed": 1e300}),
           Reading("lift-1", -5, {"speed": 1.0}),
           Reading("env-1", TS, {"pm10": 1.0}, quality=Quality.BAD, source_flag="N" * 9),
           Event("lift-1", TS, "fault", Action.RAISE, Severity.MAJOR, code=2**40),
           Event("lift-1", TS, "fault", Action.RAISE, Severity.MAJOR, code=7)])
        g([Reading("lift-1", TS, {"floor": 2**63})])  # counted again, not logged again
    assert passed == [good, Reading("lift-1", TS, {"speed": 1.0}),
                      Event("lift-1", TS, "fault", Action.RAISE, Severity.MAJOR, code=7)]
    assert g.counters == {"contract_refused": 7, "contract_refused_out_of_range": 3,
                          "contract_refused_type_mismatch": 1, "contract_refused_bad_ts": 1,
                          "contract_refused_too_long": 1, "contract_refused_bad_code": 1}
    assert len(caplog.records) == 5  # once per device and reason


def test_nothing_left_is_not_handed_on() -> None:
    g, passed = guard()
    g([Reading("lift-1", TS, {"speed": float("nan")})])
    g([])
    assert passed == [] and g.counters == {"contract_refused": 1,
                                           "contract_refused_bad_value": 1}
