"""Edge rules: pure fault detection over decoded device snapshots (no I/O, no clocks)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from devices.profiles import Profile
from edge.rules.elevator import ElevatorRules, ElevatorThresholds, ThresholdError

__all__ = ["ElevatorRules", "ElevatorThresholds", "ThresholdError", "rules_for"]


def rules_for(device: str, profile: Profile,
              overrides: Mapping[str, Any] | None = None) -> ElevatorRules | None:
    """Return the edge rules for a device of this profile (None when its kind has none).

    Thresholds come from the profile's [rules] table, then per-device `overrides`.
    """
    if profile.kind != "elevator":
        return None
    try:
        thresholds = ElevatorThresholds.from_mapping({**profile.rules, **(overrides or {})})
    except ThresholdError as exc:
        raise ThresholdError(f"{profile.source or profile.name}: {exc}") from None
    return ElevatorRules(device, thresholds)
