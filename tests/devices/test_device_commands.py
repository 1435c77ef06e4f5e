"""Device commands on the wire, the write rules of profiles, and writes planned from them."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from devices.commands import DONE, CommandResult, DeviceCommand, parse_command, parse_result
from devices.contract import ContractError
from devices.modbus.codec import DataType, Point, Table, WriteSpec
from devices.modbus.writes import WriteRefused, plan_write, read_back_matches, spec_problems
from devices.profiles import ProfileError, load_profile

T0 = 1_763_690_000_000


def command(**over: object) -> DeviceCommand:
    base: dict[str, object] = {
        "id": "c-1", "key": "k-1", "device": "lift-t01", "op": "write",
        "args": {"point": "home_floor", "value": 5}, "issuer": "ops-anna", "issued": T0,
        "expires": T0 + 60_000}
    base.update(over)
    return DeviceCommand(**base)  # type: ignore[arg-type]


def test_a_command_round_trips_and_expires_at_its_instant() -> None:
    cmd = command()
    assert parse_command(cmd.to_json()) == cmd
    assert not cmd.expired(T0 + 59_999) and cmd.expired(T0 + 60_000)


@pytest.mark.parametrize("change", [
    {"device": "bad id!"}, {"expires": T0}, {"expires": T0 + 8 * 86_400_000}, {"key": ""},
    {"issuer": "x" * 200}, {"args": [1]}, {"cv": 2}, {"issued": -1},
])
def test_bad_commands_are_refused_with_a_reason(change: dict[str, object]) -> None:
    doc = orjson.loads(command().to_json()) | change
    with pytest.raises(ContractError) as err:
        parse_command(orjson.dumps(doc))
    assert err.value.reason == "bad_command"


def test_results_carry_value_or_reason() -> None:
    done = CommandResult(DONE, T0, value=5)
    assert parse_result(done.detail()) == done
    assert parse_result({"status": "failed", "at": T0, "reason": "out_of_range"}).reason \
        == "out_of_range"
    with pytest.raises(ContractError):
        parse_result({"status": "maybe", "at": T0})


LIFT = load_profile("elevator-gbt24476")


def test_lift_profile_says_what_is_writable() -> None:
    assert LIFT.point("home_floor").write == WriteSpec(6, -5, 128)
    mode = LIFT.point("service_mode").write
    assert mode is not None and mode.dangerous and mode.allowed == (0, 1)
    assert LIFT.point("safety_circuit").write is None


@pytest.mark.parametrize(("name", "value", "reason"), [
    ("safety_circuit", True, "not_writable"), ("home_floor", 129, "out_of_range"),
    ("home_floor", -6, "out_of_range"), ("home_floor", 2.5, "bad_value"),
    ("home_floor", "3", "bad_value"), ("service_mode", 2, "not_allowed"),
    ("no_such", 1, "unknown_point"),
])
def test_writes_are_refused_with_a_reason(name: str, value: object, reason: str) -> None:
    point = next((p for p in LIFT.points if p.quantity == name), None)
    with pytest.raises(WriteRefused) as err:
        plan_write(point, name, value)
    assert err.value.reason == reason


def test_a_write_is_planned_as_its_registers_and_checked_on_read_back() -> None:
    plan = plan_write(LIFT.point("home_floor"), "home_floor", -2)
    assert (plan.function, plan.address, plan.words) == (6, 23, (0xFFFE,))
    assert read_back_matches(plan, -2) and not read_back_matches(plan, 3)
    assert not read_back_matches(plan, None)


def test_write_rules_that_cannot_work_are_profile_errors(tmp_path: Path) -> None:
    bad = Point("trip_count", 8, type=DataType.U32, write=WriteSpec(6))
    assert spec_problems(bad)[0][0] == "write.function"
    assert spec_problems(Point("floor", 3, table=Table.INPUT, write=WriteSpec(6)))
    text = Path(LIFT.source).read_text().replace(
        "[points.door_lock]\naddress = 14", "[points.door_lock]\naddress = 14\n"
        "write = { function = 6 }")
    path = tmp_path / "p.toml"
    path.write_text(text)
    with pytest.raises(ProfileError, match="never_write"):
        load_profile(str(path))
