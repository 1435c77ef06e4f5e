"""Gateway config: a full valid file, and errors that name the file, the key and a fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.config import ConfigError, ModbusRtuBus, ModbusTcpBus, explain, load_config, parse_config

PATH = "/etc/citygate/gateway.toml"

FULL = """
schema_version = 1

[gateway]
id = "zz-jinshui-01"
site = "Jinshui district, block 7"
data_dir = "/var/lib/citygate-test"

[uplink]
brokers = ["mqtts://collector-a.city.example:8883", "mqtt://10.0.0.2:1883"]
username = "zz-jinshui-01"
password_file = "/etc/citygate/mqtt.pass"
ca_file = "/etc/citygate/ca.pem"
keepalive = "20s"
connect_timeout = "5s"
reconnect_min = "250ms"
reconnect_max = "2min"
boot_delay_max = "30s"
max_inflight = 32
health_interval = "1min"
wait_for_collector = true

[outbox]
path = "/data/outbox.sqlite"
durability_window = "250ms"
synchronous = "FULL"
max_batch = 200
max_bytes = "512MB"
max_age = "7d"

[[buses]]
name = "rs485-1"
type = "modbus-rtu"
port = "/dev/ttyS1"
baudrate = 19200
parity = "E"
bytesize = 8
stopbits = 1

[[buses]]
name = "plant-net"
type = "modbus-tcp"
host = "192.168.10.20"
port = 5020

[[devices]]
id = "lift-A1"
bus = "rs485-1"
profile = "elevator-gbt24476"
unit = 1
poll = "500ms"

[[devices]]
id = "lift-A2"
bus = "rs485-1"
profile = "elevator-gbt24476"
unit = 2
heartbeat = "2min"
response_timeout = "300ms"
retries = 2

[[devices]]
id = "lift-B1"
bus = "plant-net"
profile = "elevator-gbt24476"
unit = 1
"""

MINIMAL = """
[gateway]
id = "gw-01"

[[buses]]
name = "rs485-1"
type = "modbus-rtu"
port = "/dev/ttyS1"

[[devices]]
id = "lift-1"
bus = "rs485-1"
profile = "elevator-gbt24476"
"""


def problems(text: str, path: str = PATH) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, path)
    err = info.value
    assert err.path == path
    # The message has one line per problem, each naming the file and the key.
    lines = str(err).splitlines()
    assert lines == [f"{path}: {key}: {msg}" for key, msg in err.problems]
    return err.problems


def one_problem(text: str) -> tuple[str, str]:
    found = problems(text)
    assert len(found) == 1, found
    return found[0]


# --- valid configs -------------------------------------------------------------------------------

def test_full_valid_config() -> None:
    cfg = parse_config(FULL, PATH)
    assert cfg.schema_version == 1
    assert cfg.gateway.id == "zz-jinshui-01"
    assert cfg.gateway.data_dir == Path("/var/lib/citygate-test")
    up = cfg.uplink
    assert up.brokers == ["mqtts://collector-a.city.example:8883", "mqtt://10.0.0.2:1883"]
    assert up.password_file == Path("/etc/citygate/mqtt.pass")
    assert (up.keepalive, up.connect_timeout, up.reconnect_min, up.reconnect_max) == (
        20.0, 5.0, 0.25, 120.0)
    assert (up.boot_delay_max, up.health_interval, up.max_inflight) == (30.0, 60.0, 32)
    assert up.wait_for_collector is True
    ob = cfg.outbox
    assert ob.durability_window == pytest.approx(0.25)
    assert (ob.synchronous, ob.max_batch, ob.max_bytes, ob.max_age) == (
        "FULL", 200, 512_000_000, 7 * 86400.0)
    assert cfg.outbox_path == Path("/data/outbox.sqlite")
    rtu = cfg.bus("rs485-1")
    assert isinstance(rtu, ModbusRtuBus)
    assert (rtu.port, rtu.baudrate, rtu.parity, rtu.bytesize, rtu.stopbits) == (
        "/dev/ttyS1", 19200, "E", 8, 1)
    tcp = cfg.bus("plant-net")
    assert isinstance(tcp, ModbusTcpBus)
    assert (tcp.host, tcp.port) == ("192.168.10.20", 5020)
    a1, a2, b1 = cfg.devices
    assert (a1.id, a1.unit, a1.poll, a1.heartbeat, a1.retries) == ("lift-A1", 1, 0.5, None, None)
    assert (a2.heartbeat, a2.response_timeout, a2.retries) == (120.0, pytest.approx(0.3), 2)
    assert (b1.bus, b1.unit, b1.poll) == ("plant-net", 1, 1.0)


def test_minimal_config_defaults() -> None:
    cfg = parse_config(MINIMAL)
    assert cfg.uplink.brokers == ["mqtt://127.0.0.1:1883"]
    assert cfg.outbox.durability_window == pytest.approx(1.0)
    assert cfg.outbox.send_delay == pytest.approx(0.02)
    assert cfg.outbox.max_bytes == 256 * 1024 * 1024
    assert cfg.outbox_path == Path("/var/lib/citygate/outbox.sqlite")
    assert cfg.bus("rs485-1").baudrate == 9600
    assert cfg.devices[0].unit == 1


@pytest.mark.parametrize(("text", "seconds"), [
    ("250ms", 0.25), ("2min", 120.0), ("1.5s", 1.5), ("2h", 7200.0), ("3", 3.0), ("10m", 600.0),
])
def test_durations_parse(text: str, seconds: float) -> None:
    cfg = parse_config(MINIMAL.replace('[gateway]', f'[uplink]\nkeepalive = "{text}"\n[gateway]'))
    assert cfg.uplink.keepalive == pytest.approx(seconds)


def test_bare_number_duration() -> None:
    cfg = parse_config(MINIMAL.replace("[gateway]", "[uplink]\nkeepalive = 45\n[gateway]"))
    assert cfg.uplink.keepalive == 45.0


@pytest.mark.parametrize(("text", "size"), [
    ('"512MB"', 512_000_000), ('"64KiB"', 65536), ('"2GB"', 2_000_000_000),
    ('"1GiB"', 2**30), ("1024", 1024), ('"100 b"', 100),
])
def test_sizes_parse(text: str, size: int) -> None:
    cfg = parse_config(MINIMAL.replace("[gateway]", f"[outbox]\nmax_bytes = {text}\n[gateway]"))
    assert cfg.outbox.max_bytes == size


def test_load_config_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(FULL, encoding="utf-8")
    assert load_config(path) == parse_config(FULL)
    assert load_config(str(path)).gateway.id == "zz-jinshui-01"


def test_explain_describes_the_config() -> None:
    lines = explain(parse_config(FULL))
    assert lines[0] == ("gateway zz-jinshui-01 (site Jinshui district, block 7),"
                        " data in /var/lib/citygate-test")
    assert lines[1] == "uplink: mqtts://collector-a.city.example:8883, mqtt://10.0.0.2:1883"
    assert lines[2] == ("outbox: /data/outbox.sqlite, group commit every 250 ms, sent within "
                        "20 ms through its journal")
    assert "bus rs485-1: modbus-rtu at /dev/ttyS1 19200 8E1, 2 device(s)" in lines
    assert "bus plant-net: modbus-tcp at 192.168.10.20:5020, 1 device(s)" in lines
    assert "  lift-A1: unit 1, elevator-gbt24476 (21 points), every 0.5s" in lines
    # Devices are listed under their own bus.
    assert lines.index("  lift-B1: unit 1, elevator-gbt24476 (21 points), every 1s") > lines.index(
        "bus plant-net: modbus-tcp at 192.168.10.20:5020, 1 device(s)")


def test_explain_without_site_or_buses() -> None:
    lines = explain(parse_config('[gateway]\nid = "gw"\n'))
    assert lines[0].startswith("gateway gw (site -)")
    assert len(lines) == 3


# --- errors: file, key and fix -------------------------------------------------------------------

def test_missing_gateway_id() -> None:
    key, msg = one_problem(MINIMAL.replace('id = "gw-01"', 'site = "x"'))
    assert key == "gateway.id"
    assert "add this key" in msg


def test_missing_gateway_section() -> None:
    key, msg = one_problem('[uplink]\nkeepalive = "5s"\n')
    assert key == "gateway"
    assert "add this key" in msg


@pytest.mark.parametrize("bad", ["GW-01", "gw 01", "gw/01", "-gw", "gw.01", "", "g" * 64])
def test_bad_gateway_id_characters(bad: str) -> None:
    key, msg = one_problem(MINIMAL.replace('"gw-01"', f'"{bad}"'))
    assert key == "gateway.id"
    assert "use lower-case letters, digits, '-' and '_'" in msg


def test_unknown_key_is_a_typo() -> None:
    key, msg = one_problem(MINIMAL.replace("[gateway]", '[uplink]\nkeepalvie = "5s"\n[gateway]'))
    assert key == "uplink.keepalvie"
    assert "check its spelling or remove it" in msg


def test_unknown_section() -> None:
    key, msg = one_problem(MINIMAL + '\n[outboxx]\npath = "/tmp/x"\n')
    assert key == "outboxx"
    assert "check its spelling" in msg


def test_unknown_key_in_device() -> None:
    key, msg = one_problem(MINIMAL + "pol = 2\n")
    assert key == "devices.0.pol"
    assert "check its spelling" in msg


def test_bad_duration() -> None:
    key, msg = one_problem(MINIMAL.replace("[gateway]",
                                           '[uplink]\nkeepalive = "5 parsecs"\n[gateway]'))
    assert key == "uplink.keepalive"
    assert "'5 parsecs' is not a duration" in msg
    assert "write e.g. '250ms'" in msg


@pytest.mark.parametrize(("bad", "words"), [
    ('"-5s"', "not a duration"), ("true", "not a duration"), ('"five"', "not a duration"),
    ("-5", "is negative"), ('"5 s s"', "not a duration"),
])
def test_other_bad_durations(bad: str, words: str) -> None:
    key, msg = one_problem(
        MINIMAL.replace("[gateway]", f"[outbox]\ndurability_window = {bad}\n[gateway]"))
    assert key == "outbox.durability_window"
    assert words in msg


def test_bad_size() -> None:
    key, msg = one_problem(MINIMAL.replace("[gateway]", '[outbox]\nmax_bytes = "lots"\n[gateway]'))
    assert key == "outbox.max_bytes"
    assert "write e.g. '512MB'" in msg


@pytest.mark.parametrize("url", [
    "tcp://broker:1883", "broker:1883", "mqtt://broker", "mqtt://user:pw@broker:1883",
])
def test_bad_broker_url(url: str) -> None:
    text = MINIMAL.replace("[gateway]", f'[uplink]\nbrokers = ["{url}"]\n[gateway]')
    key, msg = one_problem(text)
    assert key == "uplink.brokers"
    assert repr(url) in msg
    assert "write mqtt://HOST:PORT or mqtts://HOST:PORT" in msg


def test_empty_broker_list() -> None:
    key, _ = one_problem(MINIMAL.replace("[gateway]", "[uplink]\nbrokers = []\n[gateway]"))
    assert key == "uplink.brokers"


def test_unknown_profile() -> None:
    key, msg = one_problem(MINIMAL.replace('"elevator-gbt24476"', '"elevator-gbt2447"'))
    assert key == "devices.0.profile"
    assert "no profile named 'elevator-gbt2447'" in msg
    assert "shipped profiles: " in msg
    assert "elevator-gbt24476" in msg.partition("shipped profiles: ")[2]


def test_device_on_undefined_bus() -> None:
    key, msg = one_problem(MINIMAL.replace('bus = "rs485-1"', 'bus = "rs485-9"'))
    assert key == "devices[0].bus"
    assert "no bus named 'rs485-9'" in msg
    assert "['rs485-1']" in msg  # the names to choose from


def test_duplicate_unit_on_one_bus() -> None:
    text = MINIMAL + (
        '\n[[devices]]\nid = "lift-2"\nbus = "rs485-1"\nprofile = "elevator-gbt24476"\n')
    key, msg = one_problem(text)
    assert key == "devices[1].unit"
    assert "unit 1 is used twice on bus 'rs485-1'" in msg
    assert "give each device on a bus its own unit" in msg


def test_same_unit_on_different_buses_is_fine() -> None:
    cfg = parse_config(FULL)
    assert {(d.bus, d.unit) for d in cfg.devices} == {
        ("rs485-1", 1), ("rs485-1", 2), ("plant-net", 1)}


def test_two_rtu_buses_on_one_serial_port() -> None:
    text = MINIMAL + '\n[[buses]]\nname = "rs485-2"\ntype = "modbus-rtu"\nport = "/dev/ttyS1"\n'
    key, msg = one_problem(text)
    assert key == "buses[1].port"
    assert "'/dev/ttyS1' appears twice" in msg
    assert "a serial port has exactly one owner" in msg
    assert "give each bus its own port" in msg


def test_duplicate_bus_names() -> None:
    text = MINIMAL + '\n[[buses]]\nname = "rs485-1"\ntype = "modbus-tcp"\nhost = "10.0.0.9"\n'
    key, msg = one_problem(text)
    assert key == "buses[1].name"
    assert "give each bus its own name" in msg


def test_duplicate_device_ids() -> None:
    text = MINIMAL + '\n[[devices]]\nid = "lift-1"\nbus = "rs485-1"\nunit = 2\n' \
        'profile = "elevator-gbt24476"\n'
    key, msg = one_problem(text)
    assert key == "devices[1].id"
    assert "'lift-1' appears twice" in msg
    assert "give each device its own id" in msg


def test_bad_bus_type() -> None:
    key, msg = one_problem(MINIMAL.replace('"modbus-rtu"', '"modbus-udp"'))
    assert key.startswith("buses.0")
    assert "modbus-rtu" in msg
    assert "modbus-tcp" in msg


def test_literal_values_hint() -> None:
    key, msg = one_problem(MINIMAL.replace("[gateway]", '[outbox]\nsynchronous = "ON"\n[gateway]'))
    assert key == "outbox.synchronous"
    assert "use one of the allowed values" in msg
    assert "'NORMAL'" in msg


@pytest.mark.parametrize(("line", "key"), [
    ("unit = 248", "devices.0.unit"),
    ("poll = 0", "devices.0.poll"),
    ("retries = 9", "devices.0.retries"),
])
def test_device_ranges(line: str, key: str) -> None:
    assert one_problem(MINIMAL + line + "\n")[0] == key


def test_wrong_schema_version() -> None:
    key, msg = one_problem("schema_version = 2\n" + MINIMAL)
    assert key == "schema_version"
    assert "use one of the allowed values" in msg


def test_toml_syntax_error() -> None:
    key, msg = one_problem(MINIMAL.replace('id = "gw-01"', 'id = "gw-01'))
    assert key == "(syntax)"
    assert "this is not valid TOML" in msg
    assert "line 3" in msg


def test_unreadable_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(missing)
    assert info.value.path == str(missing)
    assert info.value.problems == [("(file)", "cannot read: No such file or directory")]
    assert str(info.value) == f"{missing}: (file): cannot read: No such file or directory"


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert str(info.value).startswith(f"{tmp_path}: (file): cannot read: ")


def test_load_config_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(MINIMAL.replace('"gw-01"', '"GW!"'), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: gateway.id: ")


def test_several_problems_reported_at_once() -> None:
    text = """
[gateway]
id = "Bad Id"
sight = "typo"

[uplink]
keepalive = "5 parsecs"
brokers = ["tcp://x:1"]

[outbox]
max_bytes = "lots"

[[devices]]
id = "lift-1"
bus = "rs485-1"
profile = "nope"
"""
    found = dict(problems(text))
    assert set(found) == {
        "gateway.id", "gateway.sight", "uplink.keepalive", "uplink.brokers", "outbox.max_bytes",
        "devices.0.profile",
    }
    assert "lower-case" in found["gateway.id"]
    assert "spelling" in found["gateway.sight"]
    assert "parsecs" in found["uplink.keepalive"]
    assert "mqtt://HOST:PORT" in found["uplink.brokers"]
    assert "512MB" in found["outbox.max_bytes"]
    assert "shipped profiles" in found["devices.0.profile"]


def test_config_error_is_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


def test_serial_port_conflict_across_bus_types() -> None:
    text = MINIMAL + '\n[[buses]]\nname = "pk"\ntype = "parking-serial"\nport = "/dev/ttyS1"\n'
    key, msg = one_problem(text)
    assert key == "buses[1].port"
    assert "a serial port has exactly one owner" in msg


def test_units_only_checked_on_modbus_buses() -> None:
    text = MINIMAL + """
[[buses]]
name = "loggers"
type = "hj212-tcp"

[[devices]]
id = "dust-1"
bus = "loggers"
profile = "dust-hj212"
mn = "88888880000001"

[[devices]]
id = "dust-2"
bus = "loggers"
profile = "dust-hj212"
mn = "88888880000002"
"""
    cfg = parse_config(text)
    assert [d.unit for d in cfg.devices] == [1, 1, 1]
    lines = explain(cfg)
    assert "bus loggers: hj212-tcp at 0.0.0.0:9212, 2 device(s)" in lines
    assert "  dust-1: dust-hj212, MN 88888880000001" in lines
    assert "  dust-2: dust-hj212, MN 88888880000002" in lines


def test_problems_in_bus_and_device_tables_are_reported_together() -> None:
    text = """
[gateway]
id = "gw-01"

[uplink]
max_inflight = "many"

[[buses]]
name = "rs485-1"
type = "modbus-rtu"
port = "/dev/ttyS1"
bytesize = 9

[[buses]]
name = "x"
type = "modbus-udp"

[[devices]]
id = "lift-1"
bus = "rs485-1"
profile = "elevator-gbt24476"
unit = 300
poll = 0
"""
    found = dict(problems(text))
    assert set(found) == {"uplink.max_inflight", "buses.0.bytesize", "buses.1.type",
                          "devices.0.unit", "devices.0.poll"}
    assert found["uplink.max_inflight"] == "expected int (got 'many')"
    assert "7, 8" in found["buses.0.bytesize"]
    assert "'modbus-tcp'" in found["buses.1.type"] and "'coap'" in found["buses.1.type"]
    assert "<= 247" in found["devices.0.unit"]
    assert "longer than zero" in found["devices.0.poll"]


def test_config_is_immutable() -> None:
    cfg = parse_config(MINIMAL)
    with pytest.raises(AttributeError):
        cfg.gateway.id = "other"  # type: ignore[misc]


@pytest.mark.parametrize(("text", "key", "words"), [
    ('buses = ["rs485"]\n[gateway]\nid = "gw"\n', "buses.0", "expected a [[buses]] table"),
    ('buses = 5\n[gateway]\nid = "gw"\n', "buses", "expected a list of [[buses]] tables"),
    ('gateway = "gw"\n', "gateway", "expected a table"),
    ('[gateway]\nid = "gw"\n[[buses]]\nname = "b"\ntype = {x = 1}\n', "buses.0.type",
     "is not a bus type"),
    ('[gateway]\nid = "gw"\n[[devices]]\nid = "lift 1"\nbus = "b"\nprofile = "x"\n',
     "devices.0.id", "at most 128 characters"),
])
def test_wrong_shapes_name_the_key(text: str, key: str, words: str) -> None:
    found = dict(problems(text))
    assert key in found, found
    assert words in found[key]


def test_parking_buses_report_by_exception_with_deadbands_from_the_config() -> None:
    cfg = parse_config(MINIMAL + '\n[[buses]]\nname = "nb"\ntype = "coap"\n')
    [bus] = [b for b in cfg.buses if b.name == "nb"]
    assert bus.full_report_every == 3600.0  # type: ignore[union-attr]
    assert bus.deadbands["mag_x"] == 10.0  # type: ignore[union-attr]
    cfg = parse_config(MINIMAL + '\n[[buses]]\nname = "pk"\ntype = "parking-serial"\n'
                       'port = "/dev/ttyS9"\nfull_report_every = "0s"\n'
                       'deadbands = { rssi = 6, temperature = 1 }\n')
    [bus] = [b for b in cfg.buses if b.name == "pk"]
    assert bus.full_report_every == 0.0  # type: ignore[union-attr]
    assert bus.deadbands == {"rssi": 6.0, "temperature": 1.0}  # type: ignore[union-attr]


@pytest.mark.parametrize(("line", "key"), [
    ("deadbands = { occupied = 1 }", "deadband for occupied"),  # a state has none
    ("deadbands = { mag_x = -1 }", "deadbands"),
    ('full_report_every = "soon"', "full_report_every"),
])
def test_bad_parking_report_settings_name_the_key(line: str, key: str) -> None:
    found_key, msg = one_problem(MINIMAL + f'\n[[buses]]\nname = "nb"\ntype = "coap"\n{line}\n')
    assert found_key.startswith("buses") and key in f"{found_key} {msg}"
