"""Modbus unit-id lists as people write them ("1-10,12")."""

from __future__ import annotations


def parse_units(text: str, lowest: int = 1) -> list[int]:
    """Parse "1-10,12" into unit ids between `lowest` and 247; raise ValueError otherwise."""
    units: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        try:
            units.extend(range(int(lo), int(hi or lo) + 1))
        except ValueError:
            raise ValueError(f"{text!r} is not a unit list like 1-10,12") from None
    if not units or min(units) < lowest or max(units) > 247:
        raise ValueError(f"unit ids are {lowest}..247")
    return units
