"""Encode a device's canonical values into its register tables (for simulators and tests)."""

from __future__ import annotations

from collections import defaultdict

from devices.modbus.codec import Point, Table, bit_field_words, encode
from devices.model import Value
from devices.profiles import Profile


def register_span(profile: Profile, table: Table) -> tuple[int, int]:
    """Return (first address, count) covering every point of a table, or (0, 0)."""
    pts = [p for p in profile.points if p.table is table]
    if not pts:
        return 0, 0
    first = min(p.address for p in pts)
    return first, max(p.end for p in pts) - first


def encode_registers(profile: Profile, values: dict[str, Value]) -> dict[Table, dict[int, int]]:
    """Return address -> raw register (or bit) per table for the given canonical values."""
    out: dict[Table, dict[int, int]] = defaultdict(dict)
    shared: dict[tuple[Table, int], list[Point]] = defaultdict(list)
    for p in profile.points:
        if p.quantity not in values:
            continue
        if p.bits is not None:
            shared[(p.table, p.address)].append(p)
            continue
        for i, word in enumerate(encode(p, values[p.quantity])):
            out[p.table][p.address + i] = word
    for (table, address), pts in shared.items():
        for i, word in enumerate(bit_field_words(pts, values)):
            out[table][address + i] = word
    return dict(out)
