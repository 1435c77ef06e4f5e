"""Hypothesis strategies for the wire contract: valid readings and events, and hostile values."""

from __future__ import annotations

import operator
from typing import Any

from hypothesis import strategies as st

from devices.contract import (
    INT32_MAX,
    INT32_MIN,
    INT64_MAX,
    MAX_NUMBER,
    MAX_TEXT,
)
from devices.quantities import QUANTITIES, Quantity, ValueKind

NAMES = sorted(QUANTITIES)
safe_text = st.text(st.characters(exclude_characters="\x00", exclude_categories=["Cs"]))
_ID_HEAD = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
device_ids = st.builds(operator.add, st.sampled_from(_ID_HEAD),
                       st.text(_ID_HEAD + "_.:-", max_size=20) | st.just("x" * 127))
numbers = st.floats(-MAX_NUMBER, MAX_NUMBER, allow_nan=False)


def _value_of(q: Quantity) -> st.SearchStrategy[Any]:
    if q.kind is ValueKind.BOOL:
        return st.booleans()
    low, high = q.limits or (-int(MAX_NUMBER), int(MAX_NUMBER))
    if q.kind is ValueKind.NUMBER:
        return numbers | st.integers(low, high)
    return st.integers(low, high) | st.integers(low, high).map(float)  # exact below 2**53


_ENTRIES = st.one_of([st.tuples(st.just(n), st.none() | _value_of(QUANTITIES[n]))
                      for n in NAMES])


def canonical_values(max_size: int = 6) -> st.SearchStrategy[dict[str, Any]]:
    """A reading's values: known quantities, each with a value of its kind, or null."""
    return st.lists(_ENTRIES, max_size=max_size, unique_by=lambda e: e[0]).map(dict)


def wire_readings() -> st.SearchStrategy[dict[str, Any]]:
    """A reading as a gateway puts it on the wire, valid."""
    return st.fixed_dictionaries(
        {"device": device_ids, "ts": st.integers(0, INT64_MAX), "values": canonical_values()},
        optional={"q": st.sampled_from(["good", "uncertain", "bad"]),
                  "mono": st.integers(0, INT64_MAX),
                  "flag": st.text(safe_text.filter(lambda c: len(c) == 1), max_size=8)})


scalars = st.none() | st.booleans() | numbers | st.text(
    st.characters(exclude_characters="\x00", exclude_categories=["Cs"]), max_size=40)


def wire_events() -> st.SearchStrategy[dict[str, Any]]:
    """An event as a gateway puts it on the wire, valid."""
    return st.fixed_dictionaries(
        {"device": device_ids, "ts": st.integers(0, INT64_MAX),
         "kind": st.text(st.characters(exclude_characters="\x00", exclude_categories=["Cs"]),
                         min_size=1, max_size=64),
         "action": st.sampled_from(["raise", "clear", "info"]),
         "severity": st.sampled_from(["critical", "major", "minor", "warning", "info"])},
        optional={"code": st.integers(INT32_MIN, INT32_MAX),
                  "evidence": st.dictionaries(st.text(max_size=20).filter(
                      lambda k: "\x00" not in k), scalars, max_size=4),
                  "message": st.text(max_size=40).filter(lambda m: "\x00" not in m),
                  "mono": st.integers(0, INT64_MAX)})


# Values a store cannot hold, or that are of the wrong kind, or of the wrong shape.
HOSTILE_VALUES = [2**63, 2**64, -1, -(2**63) - 1, 2**31, -(2**31) - 1, 1.7e308, -1.7e308,
                  1e15 + 1, 2.5, True, False, None, "", "a\x00b", "\x00", "x" * (MAX_TEXT + 1),
                  "B2", [], {}, [1, 2], {"a": 1}, {"a": "\x00"}, 0, 1, 1.0, "good", "raise"]
hostile = st.one_of(
    st.sampled_from(HOSTILE_VALUES),
    st.integers(-(2**70), 2**70), st.floats(-1e300, 1e300), st.text(max_size=20),
)
