"""Device profiles: the shipped files load, and bad files fail naming the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from devices.modbus.codec import DataType, Table, WordOrder
from devices.profiles import ModbusTiming, ProfileError, available, load_profile
from devices.quantities import QUANTITIES, ValueKind

HEAD = 'name = "test-lift"\nkind = "elevator"\nprotocol = "modbus"\n'


def write(tmp_path: Path, body: str, head: str = HEAD) -> str:
    path = tmp_path / "lift.toml"
    path.write_text(head + body, encoding="utf-8")
    return str(path)


def load_error(path: str) -> str:
    with pytest.raises(ProfileError) as info:
        load_profile(path)
    return str(info.value)


# --- shipped profiles ----------------------------------------------------------------------------

def test_elevator_profile_is_shipped() -> None:
    assert "elevator-gbt24476" in available()


@pytest.mark.parametrize("name", available())
def test_shipped_profiles_load(name: str) -> None:
    profile = load_profile(name)
    assert profile.name == name
    if profile.protocol == "modbus":
        assert profile.points
    else:
        assert profile.points or profile.codes
    assert profile.source.endswith(f"{name}.toml")
    for p in profile.points:
        assert p.quantity in QUANTITIES
        q = QUANTITIES[p.quantity]
        for label in p.enum.values():
            if q.kind is ValueKind.ENUM:
                assert label in q.labels.values()
    # Within one table no two points claim the same register, unless they are bit fields.
    for table in Table:
        claimed: dict[int, str] = {}
        for p in (p for p in profile.points if p.table is table and p.bits is None):
            for address in range(p.address, p.end):
                assert address not in claimed, f"{p.quantity} overlaps {claimed.get(address)}"
                claimed[address] = p.quantity


def test_elevator_profile_contents() -> None:
    profile = load_profile("elevator-gbt24476")
    assert (profile.kind, profile.protocol) == ("elevator", "modbus")
    assert len(profile.points) == 21  # 20 GB/T 24476 items and the home floor setting
    assert profile.timing.response_timeout == pytest.approx(0.3)
    assert profile.timing.retries == 1
    assert profile.heartbeat == 60.0
    assert profile.max_gap == 8
    floor = profile.point("floor")
    assert (floor.address, floor.type, floor.not_available) == (3, DataType.I16, (-32768,))
    trips = profile.point("trip_count")
    assert (trips.address, trips.type, trips.order, trips.count) == (
        8, DataType.U32, WordOrder.ABCD, 2)
    speed = profile.point("speed")
    assert (speed.scale, speed.deadband, speed.not_available) == (0.01, 0.05, (65535,))
    assert profile.point("service_mode").enum[4] == "firefighter"
    assert all(p.table is Table.HOLDING for p in profile.points)
    with pytest.raises(KeyError, match="no point 'pm10'"):
        profile.point("pm10")


def test_load_by_path_equals_load_by_name() -> None:
    by_name = load_profile("elevator-gbt24476")
    by_path = load_profile(by_name.source)
    assert [p.quantity for p in by_path.points] == [p.quantity for p in by_name.points]


def test_unknown_profile_name_lists_shipped_ones() -> None:
    msg = load_error("no-such-lift")
    assert "'no-such-lift'" in msg
    assert "elevator-gbt24476" in msg


# --- a profile written by hand -------------------------------------------------------------------

def test_full_point_spec(tmp_path: Path) -> None:
    path = write(tmp_path, """
description = "hand-written"
max_gap = 3
[timing]
response_timeout = "250ms"
retries = 2
inter_frame_chars = 4.0
[report]
heartbeat = "2min"
[rules]
trapped_after = "30s"
[points.trip_count]
address = 8
table = "input"
type = "u32"
order = "CDAB"
scale = 2.0
offset = 1.5
deadband = 3.0
not_available = [4294967295]
[points.direction]
address = 2
bits = [4, 2]
enum = { 0 = "none", 1 = "up", 2 = "down" }
[points.alarm_button]
address = 0
table = "coil"
type = "bool"
""")
    profile = load_profile(path)
    assert profile.description == "hand-written"
    assert profile.max_gap == 3
    assert profile.timing == ModbusTiming(response_timeout=0.25, retries=2, inter_frame_chars=4.0)
    assert profile.heartbeat == 120.0
    assert profile.rules == {"trapped_after": "30s"}
    trips = profile.point("trip_count")
    assert (trips.table, trips.type, trips.order) == (Table.INPUT, DataType.U32, WordOrder.CDAB)
    assert (trips.scale, trips.offset, trips.deadband) == (2.0, 1.5, 3.0)
    assert trips.not_available == (4294967295,)
    direction = profile.point("direction")
    assert direction.bits == (4, 2)
    assert direction.enum == {0: "none", 1: "up", 2: "down"}
    alarm = profile.point("alarm_button")
    assert (alarm.table, alarm.type, alarm.count) == (Table.COIL, DataType.BOOL, 1)


def test_defaults(tmp_path: Path) -> None:
    profile = load_profile(write(tmp_path, "[points.floor]\naddress = 3\n"))
    floor = profile.point("floor")
    assert (floor.table, floor.type, floor.order) == (Table.HOLDING, DataType.U16, WordOrder.ABCD)
    assert (floor.scale, floor.offset, floor.bits, floor.enum) == (1.0, 0.0, None, {})
    assert profile.timing == ModbusTiming()
    assert profile.heartbeat == 60.0


# --- errors name the file and the key ------------------------------------------------------------

@pytest.mark.parametrize(("body", "key", "words"), [
    ("[points.lift_speed]\naddress = 1\n", "points.lift_speed", "not a canonical quantity"),
    ("[points.floor]\ntype = \"i16\"\n", "points.floor", "missing 'address'"),
    ("[points.floor]\naddress = 3\ntype = \"u17\"\n", "points.floor", "'u17'"),
    ("[points.floor]\naddress = 3\ntype = \"u32\"\norder = \"ABDC\"\n", "points.floor",
     "'ABDC'"),
    ("[points.floor]\naddress = 3\ntable = \"register\"\n", "points.floor", "'register'"),
    ("[points.floor]\naddress = \"three\"\n", "points.floor", "three"),
    ("[points.floor]\naddress = 3\nscale = \"tenth\"\n", "points.floor", "tenth"),
    ("[points.floor]\naddress = 3\nbits = 4\n", "points.floor", ""),
    ("[points.floor]\naddress = 3\nbits = [4]\n", "points.floor", ""),
    ("[points.floor]\naddress = 3\nenum = \"up\"\n", "points.floor", ""),
    ("[points]\nfloor = 3\n", "points.floor", ""),
    ("[points.direction]\naddress = 2\nenum = { 1 = \"upward\" }\n", "points.direction",
     "'upward'"),
    ("[points.floor]\naddress = 3\n[timing]\nresponse_timeout = \"5 parsecs\"\n", "[timing]",
     "'5 parsecs' is not a duration"),
    ("[points.floor]\naddress = 3\n[report]\nheartbeat = \"soon\"\n", "[report]", "'soon'"),
])
def test_errors_name_file_and_key(tmp_path: Path, body: str, key: str, words: str) -> None:
    path = write(tmp_path, body)
    msg = load_error(path)
    assert msg.startswith(f"{path}: ")
    assert key in msg
    assert words in msg


@pytest.mark.parametrize("missing", ["name", "kind", "protocol"])
def test_missing_top_level_key(tmp_path: Path, missing: str) -> None:
    head = "".join(line + "\n" for line in HEAD.splitlines() if not line.startswith(missing))
    path = write(tmp_path, "[points.floor]\naddress = 3\n", head=head)
    assert load_error(path) == f"{path}: missing top-level key {missing!r}"


def test_bad_toml_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "[points.floor\naddress = 3\n")
    msg = load_error(path)
    assert msg.startswith(f"{path}: ")
    assert "line 4" in msg


def test_unreadable_file(tmp_path: Path) -> None:
    path = str(tmp_path / "absent.toml")
    msg = load_error(path)
    assert msg.startswith(f"{path}: ")
    assert "No such file" in msg


def test_profile_error_is_value_error() -> None:
    assert issubclass(ProfileError, ValueError)


# --- timing --------------------------------------------------------------------------------------

def test_inter_frame_gap_at_9600_baud() -> None:
    gap = ModbusTiming().inter_frame_gap(9600)
    assert gap == pytest.approx(3.5 * 11 / 9600)
    assert gap == pytest.approx(0.00401, abs=1e-5)


def test_inter_frame_gap_scales_with_baud_rate_up_to_19200() -> None:
    timing = ModbusTiming()
    assert timing.inter_frame_gap(19200) == pytest.approx(3.5 * 11 / 19200)
    assert timing.inter_frame_gap(4800) == pytest.approx(2 * timing.inter_frame_gap(9600))
    assert timing.inter_frame_gap(9600, bits_per_char=10) == pytest.approx(3.5 * 10 / 9600)
    assert ModbusTiming(inter_frame_chars=4.0).inter_frame_gap(9600) == pytest.approx(
        4.0 * 11 / 9600)


@pytest.mark.parametrize("baud", [19201, 38400, 57600, 115200, 921600])
def test_inter_frame_gap_fixed_above_19200(baud: int) -> None:
    assert ModbusTiming().inter_frame_gap(baud) == 0.00175
    assert ModbusTiming(inter_frame_chars=10).inter_frame_gap(baud) == 0.00175


# --- what the decoder can honour ------------------------------------------------------------------

@pytest.mark.parametrize(("point", "message"), [
    ("address = 1\nbits = [0, 0]", "points.car_running.bits: [0, 0] needs lowest bit >= 0"),
    ("address = 1\nbits = [-1, 1]", "points.car_running.bits: [-1, 1] needs lowest bit >= 0"),
    ("address = 1\nbits = [16, 1]", "reaches bit 16, beyond the 16 bits of u16"),
    ('address = 1\ntype = "u32"\nbits = [31, 2]', "reaches bit 32, beyond the 32 bits of u32"),
    ('address = 1\ntype = "f64"\nbits = [0, 1]', "bit fields need an integer register type"),
    ('address = 1\ntable = "coil"\nbits = [0, 1]', "a coil is a single bit; remove bits"),
    ("address = 40001", "reference 40001 is address = 0"),
    ('address = 30011\ntable = "input"', "reference 30011 is address = 10"),
    ("address = 400101", "outside the Modbus address space 0..65535 (1 register(s) from it);"
                         " Modbus addresses are 0-based: reference 400101 is address = 100"),
    ("address = 65535\ntype = \"u32\"", "outside the Modbus address space"),
    ("address = -1", "outside the Modbus address space"),
    ("address = 1.5", "points.car_running: 1.5 is not an integer"),
    ("address = 1\nnot_available = [65536]", "65536 cannot occur in u16 (0..65535)"),
    ('address = 1\ntype = "f32"\nnot_available = [0]', "NaN and infinity already mean"),
    ('address = 1\ntable = "coil"\nnot_available = [2]', "2 cannot occur in a bit (0..1)"),
    ('address = 1\nenum = { 0 = "no", 1 = "maybe" }', "'maybe' of bool quantity car_running"),
    ("address = 1\nscale = 0", "scale: 0 makes every value the offset"),
    ("address = 1\nscal = 2", "points.car_running.scal: unknown key"),
])
def test_points_the_decoder_cannot_honour_are_refused(tmp_path: Path, point: str,
                                                       message: str) -> None:
    msg = load_error(write(tmp_path, f"[points.car_running]\n{point}\n"))
    assert msg.count("\n") == 0, msg  # exactly one problem
    assert message in msg


@pytest.mark.parametrize(("quantity", "point", "ok"), [
    ("fault_code", 'enum = { 0 = "0", 1 = "7" }', True),
    ("fault_code", 'enum = { 0 = "none" }', False),
    ("speed", 'enum = { 0 = "0.5", 1 = "1.75" }', True),
    ("speed", 'enum = { 0 = "fast" }', False),
    ("trip_count", 'type = "f32"\nscale = 1e-30', True),
    ("trip_count", 'type = "f32"', False),
    ("trip_count", 'type = "f64"\nscale = 1e-300', True),
    ("trip_count", 'type = "u32"\nscale = 1e5', True),
    ("trip_count", 'type = "u32"\nscale = 1e6', False),
    ("trip_count", 'type = "u64"', True),  # exact; values beyond 1e15 are refused per reading
    ("trip_count", 'type = "u64"\nscale = 2', False),
    ("fault_code", 'bits = [8, 7]\nscale = 1e12', True),
    ("fault_code", 'bits = [8, 7]\nscale = 1e13', False),
    ("floor", 'type = "i16"\nnot_available = [-32768]', True),
])
def test_enum_labels_and_integer_ranges(tmp_path: Path, quantity: str, point: str,
                                        ok: bool) -> None:
    path = write(tmp_path, f"[points.{quantity}]\naddress = 0\n{point}\n")
    if ok:
        load_profile(path)
    else:
        assert f"points.{quantity}." in load_error(path)


def test_high_addresses_allows_registers_above_40000(tmp_path: Path) -> None:
    body = "[points.floor]\naddress = 40070\n"
    assert "Modicon" in load_error(write(tmp_path, body))
    profile = load_profile(write(tmp_path, "high_addresses = true\n" + body, head=HEAD + "\n"))
    assert profile.point("floor").address == 40070


def test_every_problem_of_a_file_in_one_error(tmp_path: Path) -> None:
    path = write(tmp_path, "colour = 1\n[points.floor]\naddress = 40001\n[points.speed]\n"
                 "address = 2\nbits = [0, 0]\n[points.nope]\naddress = 3\n"
                 '[timing]\nresponse_timeout = "soon"\n')
    with pytest.raises(ProfileError) as info:
        load_profile(path)
    keys = [p.partition(":")[0] for p in info.value.problems]
    assert keys == ["unknown top-level key(s) ['colour']", "points.floor.address",
                    "points.speed.bits", "points.nope", "[timing]/[report]"]
    assert str(info.value).splitlines() == [f"{path}: {p}" for p in info.value.problems]
