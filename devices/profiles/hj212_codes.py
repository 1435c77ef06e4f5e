"""The ``[hj212]`` and ``[codes]`` tables of an HJ 212 profile: pollutant code → canonical quantity.

A code entry names the canonical quantity, the unit the device reports in and the factor to the
canonical unit (derived from a small table of known conversions when omitted, and checked
against it when given). ``converted`` names the quantity its ``-ZsRtd``/``-ZsAvg`` values go
to (boilers: concentrations referred to the reference O2); ``aliases`` lists HJ/T 212-2005
codes ("03" for NOx) that mean the same pollutant.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from devices.quantities import QUANTITIES

# (device unit, canonical unit) -> factor; the profile may state others with an explicit factor.
KNOWN_FACTORS: dict[tuple[str, str], float] = {
    ("mg/m³", "µg/m³"): 1000.0,
    ("ng/m³", "µg/m³"): 0.001,
    ("µg/m³", "mg/m³"): 0.001,
    ("m³/s", "m³/h"): 3600.0,
    ("Pa", "kPa"): 0.001,
    ("hPa", "kPa"): 0.1,
}
_CODE_RE = re.compile(r"^[A-Za-z0-9]{1,12}$")
_OFFSET_RE = re.compile(r"^([+-])(\d\d):(\d\d)$")


@dataclass(frozen=True, slots=True)
class Hj212Code:
    """One pollutant code of a device: where its values go and how to scale them."""

    code: str
    quantity: str
    unit: str  # as the device reports it
    factor: float = 1.0  # device unit -> canonical unit
    converted: str | None = None  # quantity of the -ZsRtd / -ZsAvg values, if any


@dataclass(frozen=True, slots=True)
class Hj212Settings:
    """Station-level settings of an HJ 212 profile."""

    st: str | None = None  # expected system code ("39" dust, "31" flue gas)
    utc_offset_minutes: int = 480  # DataTime is the station's local time (China: +08:00)


class CodeTableError(ValueError):
    """A ``[codes]`` or ``[hj212]`` entry that cannot be used; the message names the key."""


def parse_settings(spec: dict[str, Any]) -> Hj212Settings:
    """Validate the ``[hj212]`` table."""
    offset = str(spec.get("utc_offset", "+08:00"))
    m = _OFFSET_RE.match(offset)
    if not m:
        raise CodeTableError(f"hj212.utc_offset: {offset!r} is not like '+08:00'")
    minutes = int(m.group(2)) * 60 + int(m.group(3))
    st = spec.get("st")
    return Hj212Settings(st=None if st is None else str(st),
                         utc_offset_minutes=-minutes if m.group(1) == "-" else minutes)


def parse_codes(spec: dict[str, Any]) -> dict[str, Hj212Code]:
    """Validate the ``[codes]`` table; return every code and alias mapped to its entry."""
    out: dict[str, Hj212Code] = {}
    for code, entry in spec.items():
        key = f"codes.{code}"
        if not isinstance(entry, dict):
            raise CodeTableError(f"{key}: must be a table with quantity and unit")
        parsed = _entry(key, code, entry)
        for alias in [code, *map(str, entry.get("aliases", []))]:
            if not _CODE_RE.match(alias):
                raise CodeTableError(f"{key}: {alias!r} is not an HJ 212 pollutant code")
            if alias in out:
                raise CodeTableError(f"{key}: code {alias!r} is mapped twice")
            out[alias] = Hj212Code(alias, parsed.quantity, parsed.unit, parsed.factor,
                                   parsed.converted)
    return out


def _entry(key: str, code: str, entry: dict[str, Any]) -> Hj212Code:
    unknown = set(entry) - {"quantity", "unit", "factor", "converted", "aliases"}
    if unknown:
        raise CodeTableError(f"{key}: unknown key(s) {sorted(unknown)}")
    quantity = entry.get("quantity")
    if quantity not in QUANTITIES:
        raise CodeTableError(f"{key}.quantity: {quantity!r} is not a canonical quantity"
                             " (see docs/data-model.md)")
    canonical = QUANTITIES[quantity].unit
    unit = str(entry.get("unit", canonical))
    factor = _factor(key, unit, canonical, entry.get("factor"))
    converted = entry.get("converted")
    if converted is not None:
        if converted not in QUANTITIES or QUANTITIES[converted].unit != canonical:
            raise CodeTableError(f"{key}.converted: {converted!r} is not a canonical quantity"
                                 f" in {canonical}")
        if converted == quantity:
            raise CodeTableError(f"{key}.converted: must differ from quantity")
    return Hj212Code(code, quantity, unit, factor, converted)


def _factor(key: str, unit: str, canonical: str, given: Any) -> float:
    known = 1.0 if unit == canonical else KNOWN_FACTORS.get((unit, canonical))
    if given is None:
        if known is None:
            raise CodeTableError(f"{key}.factor: no known conversion from {unit} to"
                                 f" {canonical}; state the factor")
        return known
    try:
        factor = float(given)
    except (TypeError, ValueError):
        raise CodeTableError(f"{key}.factor: {given!r} is not a number") from None
    if factor <= 0 or (known is not None and abs(factor - known) > 1e-9 * known):
        raise CodeTableError(f"{key}.factor: {factor:g} does not convert {unit} to {canonical}"
                             f" (expected {known})")
    return factor
