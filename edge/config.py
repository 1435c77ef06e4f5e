"""Gateway configuration: one typed TOML schema; errors name the file, the key and the fix.

The schema is msgspec Structs rather than pydantic models (STYLE.md §7 names pydantic): the
agent lives on 40 MB of RAM, and on the idle gateway pydantic with this schema cost about
10.6 MB of RSS against about 1.2 MB for msgspec (docs/field-install.md, "Memory"). msgspec
checks each value (types, ranges, patterns, allowed values, durations); `parse_config` walks the
document key by key so that one run reports every problem, as a technician fixing a config on a
roadside wants, and then runs the cross-field checks.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import msgspec
from msgspec import Meta, Struct, field

from devices.contract import DEVICE_ID_RE, GATEWAY_ID_RE
from devices.durations import parse_duration, parse_size
from devices.profiles import ProfileError, load_profile

SCHEMA_VERSION = 1


class Seconds(float):
    """A duration in seconds, written "250ms", "5s", "10min", "2h" or a bare number."""


class PositiveSeconds(Seconds):
    """A duration that must be longer than zero (a poll interval, a deadline)."""


class Bytes(int):
    """A size in bytes, written "512MB", "64KiB" or a bare number."""


def _dec_hook(tp: type, value: Any) -> Any:
    """Build the custom value types from what TOML gives (msgspec calls this for them)."""
    if tp is Seconds or tp is PositiveSeconds:
        seconds = parse_duration(value)  # refuses anything but a number or a duration string
        if tp is PositiveSeconds and seconds <= 0:
            raise ValueError(f"{value!r} must be longer than zero")
        return tp(seconds)
    if tp is Bytes:
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise ValueError(f"{value!r} is not a size; write e.g. '512MB', '64KiB', '2GB'")
        return Bytes(parse_size(value))
    if tp is Path:
        if not isinstance(value, str) or not value:
            raise ValueError(f"{value!r} is not a path; write it as a string")
        return Path(value)
    raise NotImplementedError(tp)


class ConfigError(ValueError):
    """A gateway config that cannot be used; each problem names the file, key and a fix."""

    def __init__(self, path: str, problems: list[tuple[str, str]]) -> None:
        self.path = path
        self.problems = problems
        lines = [f"{path}: {key}: {msg}" for key, msg in problems]
        super().__init__("\n".join(lines))


class _Section(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A config table: immutable, every key typed (each table repeats `frozen` and `kw_only`:
    msgspec does not inherit `kw_only`, and type checkers read `frozen` per class)."""


GatewayId = Annotated[str, Meta(pattern=GATEWAY_ID_RE.pattern)]
DeviceId = Annotated[str, Meta(pattern=DEVICE_ID_RE.pattern)]
Port = Annotated[int, Meta(ge=1, le=65535)]
Baudrate = Annotated[int, Meta(ge=300, le=921600)]


class GatewaySection(_Section, frozen=True, kw_only=True):
    """Identity of this gateway."""

    id: GatewayId
    site: str = ""
    data_dir: Path = Path("/var/lib/citygate")
    # "auto": trust the wall clock only when plausible and kernel-synchronised; "trust"; or
    # "untrusted": the collector places readings on its own clock via monotonic time.
    clock: Literal["auto", "trust", "untrusted"] = "auto"


class UplinkSection(_Section, frozen=True, kw_only=True):
    """MQTT uplink to the collector."""

    brokers: Annotated[list[str], Meta(min_length=1)] = field(
        default_factory=lambda: ["mqtt://127.0.0.1:1883"])
    username: str | None = None
    password: str | None = None
    password_file: Path | None = None
    ca_file: Path | None = None
    keepalive: Seconds = Seconds(30.0)
    connect_timeout: Seconds = Seconds(10.0)
    reconnect_min: Seconds = Seconds(1.0)
    reconnect_max: Seconds = Seconds(120.0)
    # random delay after boot, so a city does not reconnect at once
    boot_delay_max: Seconds = Seconds(0.0)
    max_inflight: Annotated[int, Meta(ge=1, le=1000)] = 16
    health_interval: Seconds = Seconds(60.0)
    wait_for_collector: bool = True  # hold data while every collector's retained state is offline


class OutboxSection(_Section, frozen=True, kw_only=True):
    """Durable store-and-forward buffer."""

    path: Path | None = None  # default: <data_dir>/outbox.sqlite
    # group commit: readings wait in memory at most this long; longer windows write less to the
    # SD card per reading (bench/bench_outbox.py), shorter ones risk less at a power cut
    durability_window: Seconds = Seconds(1.0)
    # readings and events read within this long share one message, journaled and sent at once
    # (the commit above follows); at most the durability window; 0 = one message per poll
    send_delay: Seconds = Seconds(0.02)
    synchronous: Literal["OFF", "NORMAL", "FULL"] = "NORMAL"
    max_batch: Annotated[int, Meta(ge=1, le=10_000)] = 500  # readings per MQTT message
    max_bytes: Bytes = Bytes(256 * 1024 * 1024)  # oldest telemetry is evicted beyond this
    max_age: Seconds = Seconds(30 * 86400.0)  # ... and beyond this age (events never are)
    min_free_disk: Bytes = Bytes(64 * 1024 * 1024)  # never fill the disk below this
    live_window: Seconds = Seconds(10.0)  # data younger than this is live; older is backlog
    backlog_rate: Annotated[float, Meta(gt=0)] = 2000.0  # backlog readings/s while draining


class LoggingSection(_Section, frozen=True, kw_only=True):
    """Where the agent logs: stderr (journald under systemd) or a size-capped file."""

    file: Path | None = None
    max_bytes: Bytes = Bytes(5 * 1024 * 1024)
    backups: Annotated[int, Meta(ge=0, le=20)] = 2
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class WatchdogSection(_Section, frozen=True, kw_only=True):
    """systemd watchdog: WATCHDOG=1 is sent only while every loop of the agent makes progress."""

    # A loop whose last progress is older than this (beyond its own expected period) is hung.
    stall_after: PositiveSeconds = PositiveSeconds(60.0)


class MetricsSection(_Section, frozen=True, kw_only=True):
    """Prometheus text endpoint on the gateway; off unless `listen` is set (local by default)."""

    listen: str = ""  # e.g. "127.0.0.1:9464"; "" = off


class UpdateSection(_Section, frozen=True, kw_only=True):
    """Signed agent updates offered by the collector (docs/field-install.md)."""

    # Ed25519 release public key: a PEM file, or the raw 32 bytes in hex. Empty = updates off.
    public_key: str = ""
    root: Path = Path("/opt/citygate")  # venvs/<version> and the `current` symlink live here
    health_deadline: PositiveSeconds = PositiveSeconds(60.0)  # new version healthy by then
    download_timeout: PositiveSeconds = PositiveSeconds(120.0)


class ModbusTcpBus(_Section, frozen=True, kw_only=True):
    """A Modbus TCP endpoint (one connection per endpoint, requests in series)."""

    name: str
    type: Literal["modbus-tcp"] = "modbus-tcp"
    host: str
    port: Port = 502


class SerialSettings(_Section, frozen=True, kw_only=True):
    """Serial line settings shared by every serial bus type."""

    port: str
    baudrate: Baudrate = 9600
    parity: Literal["N", "E", "O"] = "N"
    bytesize: Literal[7, 8] = 8
    stopbits: Literal[1, 2] = 1


class ModbusRtuBus(SerialSettings, frozen=True, kw_only=True):
    """An RS-485 line speaking Modbus RTU; the bus is the only owner of its serial port."""

    name: str
    type: Literal["modbus-rtu"] = "modbus-rtu"


class Hj212SerialBus(SerialSettings, frozen=True, kw_only=True):
    """An RS-232/RS-485 line on which an environmental data logger sends HJ 212 frames."""

    name: str
    type: Literal["hj212-serial"] = "hj212-serial"


class Hj212TcpBus(_Section, frozen=True, kw_only=True):
    """A TCP listener accepting HJ 212 uploads from existing data loggers."""

    name: str
    type: Literal["hj212-tcp"] = "hj212-tcp"
    host: str = "0.0.0.0"
    port: Port = 9212


# Parking reports by exception: a value is sent again when it moved this far from the value last
# sent (magnetometer axes in mG, far below the collector's 300 mG jump alert; RSSI in dB;
# temperature in degC; battery in mV, under the 100 mV low-battery hysteresis) or changed at
# all (every other value), and every value at least every `full_report_every`.
PARKING_DEADBANDS = {"mag_x": 10.0, "mag_y": 10.0, "mag_z": 10.0, "rssi": 3.0,
                     "temperature": 0.5, "battery_mv": 20.0}
Deadbands = dict[str, Annotated[float, Meta(ge=0, le=1e6)]]


def _parking_deadbands() -> Any:
    return dict(PARKING_DEADBANDS)


def _check_deadbands(deadbands: dict[str, float]) -> None:
    unknown = sorted(set(deadbands) - set(PARKING_DEADBANDS))
    if unknown:
        raise ValueError(f"no deadband for {', '.join(unknown)}: a deadband applies to "
                         f"{', '.join(PARKING_DEADBANDS)}")


class ParkingSerialBus(SerialSettings, frozen=True, kw_only=True):
    """A parking-sensor concentrator on a serial line (docs/protocols/parking-serial.md)."""

    name: str
    type: Literal["parking-serial"] = "parking-serial"
    device_prefix: str = "pk-"  # device id = prefix + sensor id
    full_report_every: Seconds = Seconds(3600.0)  # every value this often ("0s": every report)
    deadbands: Deadbands = field(default_factory=_parking_deadbands)

    def __post_init__(self) -> None:
        _check_deadbands(self.deadbands)


class CoapBus(_Section, frozen=True, kw_only=True):
    """A CoAP endpoint receiving reports from IP / NB-IoT parking nodes."""

    name: str
    type: Literal["coap"] = "coap"
    host: str = "::"
    port: Port = 5683
    device_prefix: str = "pk-"
    heartbeat: Seconds = Seconds(1800.0)  # heartbeat period handed back to nodes
    full_report_every: Seconds = Seconds(3600.0)  # every value this often ("0s": every report)
    deadbands: Deadbands = field(default_factory=_parking_deadbands)

    def __post_init__(self) -> None:
        _check_deadbands(self.deadbands)


MODBUS_BUS_TYPES = ("modbus-tcp", "modbus-rtu")
Bus = ModbusTcpBus | ModbusRtuBus | Hj212SerialBus | Hj212TcpBus | ParkingSerialBus | CoapBus
SerialBus = ModbusRtuBus | Hj212SerialBus | ParkingSerialBus
BUS_TYPES: dict[str, type[Bus]] = {
    next(f.default for f in msgspec.structs.fields(cls) if f.name == "type"): cls
    for cls in (ModbusTcpBus, ModbusRtuBus, Hj212SerialBus, Hj212TcpBus, ParkingSerialBus,
                CoapBus)
}


class DeviceSection(_Section, frozen=True, kw_only=True):
    """A field device on one of the buses."""

    id: DeviceId
    bus: str
    profile: str
    unit: Annotated[int, Meta(ge=0, le=247)] = 1  # Modbus unit id
    mn: str | None = None  # HJ 212 device code (MN) of an environmental station
    pw: str | None = None  # HJ 212 access password (PW) of its commands; default 123456
    # Edge-rule thresholds for this device (e.g. top_floor, rated_speed), over the profile's.
    rules: dict[str, Any] = field(default_factory=dict)
    poll: PositiveSeconds = PositiveSeconds(1.0)
    heartbeat: Seconds | None = None  # default: the profile's
    response_timeout: Seconds | None = None  # default: the profile's
    retries: Annotated[int, Meta(ge=0, le=5)] | None = None

    def __post_init__(self) -> None:
        from edge.rules import rules_for

        profile = load_profile(self.profile)  # ProfileError, a ValueError, names the profile
        try:
            rules_for(self.id, profile, self.rules)
        except ValueError as exc:
            raise ValueError(f"rules: {exc}") from None


class GatewayConfig(_Section, frozen=True, kw_only=True):
    """The whole gateway config file."""

    schema_version: Literal[1] = 1
    gateway: GatewaySection
    uplink: UplinkSection = field(default_factory=UplinkSection)
    outbox: OutboxSection = field(default_factory=OutboxSection)
    logging: LoggingSection = field(default_factory=LoggingSection)
    watchdog: WatchdogSection = field(default_factory=WatchdogSection)
    metrics: MetricsSection = field(default_factory=MetricsSection)
    update: UpdateSection = field(default_factory=UpdateSection)
    buses: list[Bus] = field(default_factory=list)
    devices: list[DeviceSection] = field(default_factory=list)

    @property
    def outbox_path(self) -> Path:
        """Where the outbox file lives."""
        return self.outbox.path or self.gateway.data_dir / "outbox.sqlite"

    def bus(self, name: str) -> Any:
        """Return the bus of this name."""
        return next(b for b in self.buses if b.name == name)


# --- checks of one value beyond its type (run even when other keys of the table are wrong) ----

def _broker_urls(urls: list[str]) -> None:
    for url in urls:
        if not url.startswith(("mqtt://", "mqtts://")) or url.count(":") != 2:
            raise ValueError(
                f"{url!r} is not a broker URL; write mqtt://HOST:PORT or mqtts://HOST:PORT")


def _listen_address(text: str) -> None:
    host, _, port = text.rpartition(":")
    if text and (not host or not port.isdigit() or not 0 < int(port) < 65536):
        raise ValueError(f"{text!r} is not HOST:PORT; write e.g. \"127.0.0.1:9464\"")


_VALUE_CHECKS: dict[tuple[type, str], Callable[[Any], object]] = {
    (UplinkSection, "brokers"): _broker_urls,
    (MetricsSection, "listen"): _listen_address,
    (DeviceSection, "profile"): load_profile,  # ProfileError lists the shipped profiles
}


# --- cross-field checks -------------------------------------------------------------------------

def cross_problems(cfg: GatewayConfig) -> list[tuple[str, str]]:
    """Problems between tables: duplicate names, ports and units, devices on unknown buses."""
    names = [b.name for b in cfg.buses]
    problems = _duplicates(names, "buses", "name", fix="give each bus its own name")
    ports = [b.port for b in cfg.buses if isinstance(b, SerialSettings)]
    problems += _duplicates(ports, "buses", "port", "a serial port has exactly one owner",
                            fix="give each bus its own port, or put the devices on one bus")
    problems += _duplicates([d.id for d in cfg.devices], "devices", "id",
                            fix="give each device its own id")
    seen: set[tuple[str, int]] = set()
    for i, d in enumerate(cfg.devices):
        if d.bus not in names:
            problems.append((f"devices[{i}].bus", f"no bus named {d.bus!r}; defined buses: "
                             f"{names or 'none'} — use one of them or add a [[buses]] entry"))
            continue
        bus_type = cfg.bus(d.bus).type
        problems += _protocol_problems(i, d, bus_type)
        if bus_type not in MODBUS_BUS_TYPES:
            continue
        if (d.bus, d.unit) in seen:
            problems.append((f"devices[{i}].unit", f"unit {d.unit} is used twice on bus "
                             f"{d.bus!r} — give each device on a bus its own unit address"))
        seen.add((d.bus, d.unit))
    return problems + _station_problems(cfg)


# Which profile protocol each bus type speaks (parking buses take no profile's points).
_BUS_PROTOCOL = {"modbus-tcp": "modbus", "modbus-rtu": "modbus", "hj212-serial": "hj212",
                 "hj212-tcp": "hj212"}
_HJ212_BUS_TYPES = ("hj212-serial", "hj212-tcp")
MN_FORBIDDEN = ";&,= "  # characters that would break an HJ 212 header


def _protocol_problems(i: int, d: DeviceSection, bus_type: str) -> list[tuple[str, str]]:
    want = _BUS_PROTOCOL.get(bus_type)
    protocol = load_profile(d.profile).protocol
    if want is None or protocol == want:
        return []
    return [(f"devices[{i}].profile", f"profile {d.profile!r} speaks {protocol}, but bus"
             f" {d.bus!r} is {bus_type} — use a {want} profile or put the device on a"
             f" {protocol} bus")]


def _station_problems(cfg: GatewayConfig) -> list[tuple[str, str]]:
    """Each HJ 212 station needs its own MN: frames are matched to devices by it."""
    problems: list[tuple[str, str]] = []
    owners: dict[tuple[str, str], str] = {}
    hj212 = {b.name for b in cfg.buses if b.type in _HJ212_BUS_TYPES}
    for i, d in enumerate(cfg.devices):
        if d.bus not in hj212:
            continue
        if not d.mn:
            problems.append((f"devices[{i}].mn", f"missing — device {d.id} is on HJ 212 bus"
                             f" {d.bus!r}: add mn = \"...\", the station's MN code (24"
                             " characters in HJ 212-2017, 14 in HJ/T 212-2005)"))
        elif any(c in d.mn for c in MN_FORBIDDEN) or not d.mn.isprintable():
            problems.append((f"devices[{i}].mn", f"{d.mn!r} cannot be an MN: it may not"
                             " contain spaces or any of ;&,="))
        elif (d.bus, d.mn) in owners:
            problems.append((f"devices[{i}].mn", f"{d.mn!r} is also the MN of device"
                             f" {owners[(d.bus, d.mn)]} on bus {d.bus!r} — give each station"
                             " its own MN"))
        else:
            owners[(d.bus, d.mn)] = d.id
        if d.pw is not None and (len(d.pw) > 32 or not d.pw.isprintable()
                                 or any(c in d.pw for c in MN_FORBIDDEN)):
            problems.append((f"devices[{i}].pw", "an HJ 212 password is at most 32 printable"
                             " characters without spaces or any of ;&,="))
    return problems


# Rates UARTs and RS-485 devices actually offer; anything else is usually a typo.
STANDARD_BAUDRATES = (300, 600, 1200, 2400, 4800, 9600, 14400, 19200, 28800, 38400, 57600,
                      76800, 115200, 230400, 460800, 921600)


def config_warnings(cfg: GatewayConfig) -> list[tuple[str, str]]:
    """Things that are valid but probably wrong: (key, warning) pairs, e.g. an odd baud rate."""
    warnings = []
    for i, bus in enumerate(cfg.buses):
        if isinstance(bus, SerialSettings) and bus.baudrate not in STANDARD_BAUDRATES:
            nearest = min(STANDARD_BAUDRATES, key=lambda r: abs(r - bus.baudrate))
            warnings.append((f"buses[{i}].baudrate", f"{bus.baudrate} is not a standard baud"
                             f" rate (nearest: {nearest}); check the device's setting"))
    return warnings


def _duplicates(values: list[Any], section: str, key: str, why: str = "", *,
                fix: str) -> list[tuple[str, str]]:
    seen: set[Any] = set()
    problems = []
    for i, v in enumerate(values):
        if v in seen:
            hint = f" ({why})" if why else ""
            problems.append((f"{section}[{i}].{key}", f"{v!r} appears twice{hint} — {fix}"))
        seen.add(v)
    return problems


# --- reading a document: every problem at once ----------------------------------------------------

def _join(loc: str, key: str | int) -> str:
    return f"{loc}.{key}" if loc else str(key)


def _value_problem(tp: Any, value: Any, exc: msgspec.ValidationError) -> tuple[str, str]:
    """(path suffix inside the value, message with a fix) from a msgspec error."""
    text, _, where = str(exc).partition(" - at `$")
    suffix = where.rstrip("`").replace("[", ".").replace("]", "")
    text = text.replace("`", "")
    if text.startswith("Invalid enum value"):
        allowed = ", ".join(repr(a) for a in get_args(tp))
        return suffix, f"{value!r} is not allowed — use one of the allowed values: {allowed}"
    if "matching regex" in text:
        allowed = ("lower-case letters, digits, '-' and '_', at most 63 characters"
                   if GATEWAY_ID_RE.pattern in text
                   else "letters, digits, '-', '_', '.' and ':', at most 128 characters")
        return suffix, f"{value!r} is not a valid id — use {allowed}"
    if text.startswith("Expected"):
        text = f"{text[0].lower()}{text[1:].partition(', got')[0]} (got {value!r})"
    return suffix, text


def _section_type(tp: Any) -> type[Struct] | None:
    return tp if isinstance(tp, type) and issubclass(tp, Struct) else None


def _convert_value(owner: type, name: str, tp: Any, value: Any, loc: str,
                   problems: list[tuple[str, str]]) -> Any:
    """One key's value: a nested table, a list of tables, or a plain value."""
    if (sub := _section_type(tp)) is not None:
        return _convert_section(sub, value, loc, problems)
    item = get_args(tp)[0] if get_origin(tp) is list else None
    table = _section_type(item)
    if item == Bus or table is not None:
        if not isinstance(value, list):
            problems.append((loc, f"expected a list of [[{name}]] tables (got {value!r})"))
            return None
        return [_convert_bus(v, _join(loc, i), problems) if table is None
                else _convert_section(table, v, _join(loc, i), problems)
                for i, v in enumerate(value)]
    try:
        out = msgspec.convert(value, tp, dec_hook=_dec_hook)
    except msgspec.ValidationError as exc:
        suffix, msg = _value_problem(tp, value, exc)
        problems.append((loc + suffix, msg))
        return None
    if (check := _VALUE_CHECKS.get((owner, name))) is not None:
        try:
            check(out)
        except ProfileError as exc:  # one problem per line, each naming the profile file
            problems += [(loc, f"{exc.where}: {p}" if exc.where else p) for p in exc.problems]
            return None
        except ValueError as exc:
            problems.append((loc, str(exc)))
            return None
    return out


def _convert_bus(value: Any, loc: str, problems: list[tuple[str, str]]) -> Any:
    kinds = ", ".join(repr(k) for k in BUS_TYPES)
    if not isinstance(value, dict):
        problems.append((loc, f"expected a [[buses]] table (got {value!r})"))
        return None
    kind = value.get("type")
    if kind is None:
        problems.append((_join(loc, "type"), f"missing — add this key: one of {kinds}"))
        return None
    if not isinstance(kind, str) or kind not in BUS_TYPES:
        problems.append((_join(loc, "type"), f"{kind!r} is not a bus type — use one of the "
                                             f"allowed values: {kinds}"))
        return None
    return _convert_section(BUS_TYPES[kind], value, loc, problems)


def _convert_section(cls: type[Struct], data: Any, loc: str,
                     problems: list[tuple[str, str]]) -> Any:
    """Build one table, adding each problem found in it to `problems` (None if any)."""
    if not isinstance(data, dict):
        problems.append((loc or "(top level)", f"expected a table (got {data!r})"))
        return None
    fields = {f.encode_name: f for f in msgspec.structs.fields(cls)}
    before = len(problems)
    for key in data:
        if key not in fields:
            problems.append((_join(loc, key), "unknown key: check its spelling or remove it"))
    values: dict[str, Any] = {}
    for name, f in fields.items():
        where = _join(loc, name)
        if name in data:
            values[name] = _convert_value(cls, name, f.type, data[name], where, problems)
        elif f.default is msgspec.NODEFAULT and f.default_factory is msgspec.NODEFAULT:
            problems.append((where, "missing — add this key"))
    if len(problems) > before:
        return None
    try:
        return cls(**values)
    except ValueError as exc:  # a check over several keys of this table (__post_init__)
        key, _, msg = str(exc).partition(": ")
        problems.append((_join(loc, key), msg) if msg and " " not in key else (loc, str(exc)))
        return None


def parse_config(text: str, path: str = "<config>") -> GatewayConfig:
    """Validate a config document; raise ConfigError listing every problem."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, [("(syntax)", f"{exc} — this is not valid TOML")]) from None
    problems: list[tuple[str, str]] = []
    cfg = _convert_section(GatewayConfig, data, "", problems)
    if cfg is not None:
        problems += cross_problems(cfg)
    if problems:
        raise ConfigError(path, problems)
    assert isinstance(cfg, GatewayConfig)
    return cfg


def load_config(path: str | Path) -> GatewayConfig:
    """Read and validate a gateway config file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(p), [("(file)", f"cannot read: {exc.strerror}")]) from None
    return parse_config(text, str(p))


def explain(config: GatewayConfig) -> list[str]:
    """Describe in plain words what a valid config will do."""
    lines = [f"gateway {config.gateway.id} (site {config.gateway.site or '-'}),"
             f" data in {config.gateway.data_dir}",
             f"uplink: {', '.join(config.uplink.brokers)}",
             f"outbox: {config.outbox_path}, group commit every "
             f"{config.outbox.durability_window * 1000:.0f} ms"
             + (f", sent within {config.outbox.send_delay * 1000:.0f} ms through its journal"
                if config.outbox.durability_window else ", sent after each commit")]
    for bus in config.buses:
        devs = [d for d in config.devices if d.bus == bus.name]
        where = (f"{bus.port} {bus.baudrate} {bus.bytesize}{bus.parity}{bus.stopbits}"
                 if isinstance(bus, SerialSettings) else f"{bus.host}:{bus.port}")
        lines.append(f"bus {bus.name}: {bus.type} at {where}, {len(devs)} device(s)")
        for d in devs:
            prof = load_profile(d.profile)
            if bus.type in MODBUS_BUS_TYPES:
                lines.append(f"  {d.id}: unit {d.unit}, {prof.name} ({len(prof.points)} points),"
                             f" every {d.poll:g}s")
            else:
                lines.append(f"  {d.id}: {prof.name}" + (f", MN {d.mn}" if d.mn else ""))
    return lines
