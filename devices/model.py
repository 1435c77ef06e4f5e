"""Canonical readings and events, as produced at the edge and stored at the collector."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

Value = float | int | bool | str | None


class Quality(StrEnum):
    """Quality of a reading; only GOOD values count as valid measurements."""

    GOOD = "good"
    UNCERTAIN = "uncertain"  # e.g. calibrating, maintenance, manual value
    BAD = "bad"  # e.g. instrument fault, link fault, over range


class Action(StrEnum):
    """Whether an event raises or clears a condition; INFO events have no clear."""

    RAISE = "raise"
    CLEAR = "clear"
    INFO = "info"


class Severity(StrEnum):
    """Event severity, most urgent first."""

    CRITICAL = "critical"
    MAJOR = "major"
    MINOR = "minor"
    WARNING = "warning"
    INFO = "info"


@dataclass(frozen=True, slots=True)
class Reading:
    """One device's values observed at one instant (epoch milliseconds of the gateway clock)."""

    device: str
    ts: int
    values: dict[str, Value]
    quality: Quality = Quality.GOOD
    mono: int | None = None  # gateway monotonic clock at observation, ms
    source_flag: str | None = None  # raw vendor flag, e.g. HJ 212 data flag "D"
    # `ts` is the instrument's own clock (HJ 212 DataTime), not the gateway's: a collector
    # correcting an unsynchronised gateway's clock must leave it alone.
    station_time: bool = False

    def to_wire(self) -> dict[str, Any]:
        """Return the JSON-ready form used in the MQTT envelope."""
        out: dict[str, Any] = {"device": self.device, "ts": self.ts, "values": self.values}
        if self.quality is not Quality.GOOD:
            out["q"] = self.quality.value
        if self.mono is not None:
            out["mono"] = self.mono
        if self.source_flag is not None:
            out["flag"] = self.source_flag
        if self.station_time:
            out["station_time"] = True
        return out


@dataclass(frozen=True, slots=True)
class Event:
    """A fault, alarm or state event with an explicit raise/clear and its raw evidence."""

    device: str
    ts: int
    kind: str  # e.g. "trapped_passenger", "gbt24476_2", "device_offline"
    action: Action
    severity: Severity
    code: int | None = None  # GB/T 24476 code where the event has one
    evidence: dict[str, Value] = field(default_factory=dict)
    message: str = ""
    mono: int | None = None

    def to_wire(self) -> dict[str, Any]:
        """Return the JSON-ready form used in the MQTT envelope."""
        out: dict[str, Any] = {
            "device": self.device,
            "ts": self.ts,
            "kind": self.kind,
            "action": self.action.value,
            "severity": self.severity.value,
            "evidence": self.evidence,
        }
        if self.code is not None:
            out["code"] = self.code
        if self.message:
            out["message"] = self.message
        if self.mono is not None:
            out["mono"] = self.mono
        return out
