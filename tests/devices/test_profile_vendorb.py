"""A second lift controller is a data file: vendor B's map round-trips the same canonical data."""

from __future__ import annotations

import pytest

from devices.modbus.codec import Table, decode
from devices.modbus.planner import plan_reads
from devices.model import Value
from devices.profiles import Profile, load_profile
from devices.sim.elevator import idle_values
from devices.sim.registers import encode_registers

REFERENCE = "elevator-gbt24476"
VENDOR_B = "elevator-vendorb"


def round_trip(profile: Profile, values: dict[str, Value]) -> dict[str, Value]:
    """Encode as the device would, then read it back the way the gateway polls it."""
    tables = encode_registers(profile, values)
    out: dict[str, Value] = {}
    for block in plan_reads(profile.points, max_gap=profile.max_gap):
        regs = tables.get(block.table, {})
        data = [regs.get(a, 0) for a in range(block.start, block.start + block.count)]
        for p in block.points:
            out[p.quantity] = decode(p, block.slice_for(p, data))
    return out


def _state(**changes: Value) -> dict[str, Value]:
    return {**idle_values(4), **changes}


STATES: dict[str, dict[str, Value]] = {
    **{f"idle_unit_{u}": idle_values(u) for u in (1, 2, 3, 6)},
    "running_up": _state(car_running=True, direction=1, speed=1.75, door_zone=False,
                         brake_open=True, floor=12, load_percent=37.5),
    "running_down_basement": _state(car_running=True, direction=2, speed=0.25, floor=-2),
    "trapped_between_floors": _state(door_zone=False, door_closed=True, door_lock=True,
                                     passenger_present=True, alarm_button=True, fault_code=90),
    "fault_and_battery": _state(fault_code=4, power_supply=1, safety_circuit=False,
                                service_mode=5, overload=True),
    "no_power": _state(power_supply=2, fault_code=41, service_mode=0),
    "modes_and_limits": _state(service_mode=6, fault_code=127, trip_count=2**32 - 1,
                               door_cycles=65_537, running_hours=429_496_729.5,
                               machine_room_temp=-12.5),
    "not_available": _state(speed=None, floor=None, load_percent=None, machine_room_temp=None,
                            service_mode=7),
}


def assert_same(decoded: dict[str, Value], values: dict[str, Value]) -> None:
    assert decoded.keys() == values.keys()
    for q, v in values.items():
        if isinstance(v, float):
            assert decoded[q] == pytest.approx(v), q
        else:
            assert decoded[q] == v, q
            assert type(decoded[q]) is type(v), q


def test_vendor_b_loads_with_the_same_quantities() -> None:
    ref, vendor = load_profile(REFERENCE), load_profile(VENDOR_B)
    assert vendor.kind == "elevator"
    # the reference board also has a setting (home floor); vendor B's map is read-only
    assert {p.quantity for p in vendor.points} == {p.quantity for p in ref.points} - {
        "home_floor"}
    assert len(vendor.points) == 20
    assert {p.table for p in vendor.points} == {Table.INPUT}
    assert min(p.address for p in vendor.points) == 100


@pytest.mark.parametrize("profile", [REFERENCE, VENDOR_B])
@pytest.mark.parametrize("state", STATES)
def test_round_trip_of_every_quantity(profile: str, state: str) -> None:
    loaded = load_profile(profile)
    values = {q: v for q, v in STATES[state].items() if q in {p.quantity for p in loaded.points}}
    assert_same(round_trip(loaded, values), values)


@pytest.mark.parametrize(("profile", "blocks"), [
    (REFERENCE, [(Table.HOLDING, 0, 24)]),
    (VENDOR_B, [(Table.INPUT, 100, 14), (Table.INPUT, 200, 1)]),
])
def test_read_plan(profile: str, blocks: list[tuple[Table, int, int]]) -> None:
    p = load_profile(profile)
    plan = plan_reads(p.points, max_gap=p.max_gap)
    assert [(b.table, b.start, b.count) for b in plan] == blocks
    assert sum(len(b.points) for b in plan) == len(p.points)


def test_vendor_b_wire_layout() -> None:
    """The raw registers really are vendor B's: packed status bits, CDAB words, own codes."""
    values = _state(car_running=True, door_closed=True, door_zone=False, passenger_present=True,
                    fault_code=5, direction=1, service_mode=1, power_supply=0,
                    trip_count=0x0001_0002, door_lock=True, safety_circuit=True,
                    alarm_button=False, brake_open=True, overload=False, speed=1.5)
    regs = encode_registers(load_profile(VENDOR_B), values)[Table.INPUT]
    assert regs[100] == 0b1011 | 5 << 8
    assert regs[101] == 0b01011
    assert regs[102] == 0  # vendor B: 0 = normal
    assert regs[103] == 2  # vendor B: 2 = up (canonical 1)
    assert regs[105] == 1500  # mm/s
    assert regs[106] == 1  # vendor B: 1 = mains (canonical 0)
    assert (regs[108], regs[109]) == (0x0002, 0x0001)  # low word first


def test_vendor_b_unknown_codes_decode_safely() -> None:
    p = load_profile(VENDOR_B)
    mode = p.point("service_mode")
    assert decode(mode, [9]) == 7  # an undocumented mode reads as "unknown"
    assert decode(p.point("direction"), [3]) is None
