"""Gateway configuration: one typed TOML schema; errors name the file, the key and the fix."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from devices.contract import DEVICE_ID_RE, GATEWAY_ID_RE
from devices.durations import parse_duration, parse_size
from devices.profiles import ProfileError, load_profile

SCHEMA_VERSION = 1

Duration = Annotated[float, BeforeValidator(parse_duration), Field(ge=0)]
Size = Annotated[int, BeforeValidator(parse_size), Field(ge=0)]


class ConfigError(ValueError):
    """A gateway config that cannot be used; each problem names the file, key and a fix."""

    def __init__(self, path: str, problems: list[tuple[str, str]]) -> None:
        self.path = path
        self.problems = problems
        lines = [f"{path}: {key}: {msg}" for key, msg in problems]
        super().__init__("\n".join(lines))


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GatewaySection(_Model):
    """Identity of this gateway."""

    id: str = Field(pattern=GATEWAY_ID_RE.pattern)
    site: str = ""
    data_dir: Path = Path("/var/lib/citygate")
    # "auto": trust the wall clock only when plausible and kernel-synchronised; "trust"; or
    # "untrusted": the collector places readings on its own clock via monotonic time.
    clock: Literal["auto", "trust", "untrusted"] = "auto"


class UplinkSection(_Model):
    """MQTT uplink to the collector."""

    brokers: list[str] = Field(default_factory=lambda: ["mqtt://127.0.0.1:1883"], min_length=1)
    username: str | None = None
    password: str | None = None
    password_file: Path | None = None
    ca_file: Path | None = None
    keepalive: Duration = 30.0
    connect_timeout: Duration = 10.0
    reconnect_min: Duration = 1.0
    reconnect_max: Duration = 120.0
    boot_delay_max: Duration = 0.0  # random delay after boot, so a city does not reconnect at once
    max_inflight: int = Field(default=16, ge=1, le=1000)
    health_interval: Duration = 60.0
    wait_for_collector: bool = True  # hold data while every collector's retained state is offline

    @field_validator("brokers")
    @classmethod
    def _check_urls(cls, urls: list[str]) -> list[str]:
        for url in urls:
            if not url.startswith(("mqtt://", "mqtts://")) or url.count(":") != 2:
                raise ValueError(
                    f"{url!r} is not a broker URL; write mqtt://HOST:PORT or mqtts://HOST:PORT"
                )
        return urls


class OutboxSection(_Model):
    """Durable store-and-forward buffer."""

    path: Path | None = None  # default: <data_dir>/outbox.sqlite
    # group commit: readings wait in memory at most this long; longer windows write less to the
    # SD card per reading (bench/bench_outbox.py), shorter ones risk less at a power cut
    durability_window: Duration = 1.0
    synchronous: Literal["OFF", "NORMAL", "FULL"] = "NORMAL"
    max_batch: int = Field(default=500, ge=1, le=10_000)  # readings per MQTT message
    max_bytes: Size = 256 * 1024 * 1024  # oldest telemetry is evicted beyond this
    max_age: Duration = 30 * 86400.0  # ... and beyond this age (events are never evicted)
    min_free_disk: Size = 64 * 1024 * 1024  # never fill the disk below this
    live_window: Duration = 10.0  # data younger than this is live; older is backlog
    backlog_rate: float = Field(default=2000.0, gt=0)  # backlog readings/s while draining


class LoggingSection(_Model):
    """Where the agent logs: stderr (journald under systemd) or a size-capped file."""

    file: Path | None = None
    max_bytes: Size = 5 * 1024 * 1024
    backups: int = Field(default=2, ge=0, le=20)
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class WatchdogSection(_Model):
    """systemd watchdog: WATCHDOG=1 is sent only while every loop of the agent makes progress."""

    # A loop whose last progress is older than this (beyond its own expected period) is hung.
    stall_after: Duration = Field(default=60.0, gt=0)


class MetricsSection(_Model):
    """Prometheus text endpoint on the gateway; off unless `listen` is set (local by default)."""

    listen: str = ""  # e.g. "127.0.0.1:9464"; "" = off

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, text: str) -> str:
        host, _, port = text.rpartition(":")
        if text and (not host or not port.isdigit() or not 0 < int(port) < 65536):
            raise ValueError(f"{text!r} is not HOST:PORT; write e.g. \"127.0.0.1:9464\"")
        return text


class UpdateSection(_Model):
    """Signed agent updates offered by the collector (docs/field-install.md)."""

    # Ed25519 release public key: a PEM file, or the raw 32 bytes in hex. Empty = updates off.
    public_key: str = ""
    root: Path = Path("/opt/citygate")  # venvs/<version> and the `current` symlink live here
    health_deadline: Duration = Field(default=60.0, gt=0)  # new version must be healthy by then
    download_timeout: Duration = Field(default=120.0, gt=0)


class ModbusTcpBus(_Model):
    """A Modbus TCP endpoint (one connection per endpoint, requests in series)."""

    name: str
    type: Literal["modbus-tcp"]
    host: str
    port: int = Field(default=502, ge=1, le=65535)


class ModbusRtuBus(_Model):
    """An RS-485 line speaking Modbus RTU; the bus is the only owner of its serial port."""

    name: str
    type: Literal["modbus-rtu"]
    port: str
    baudrate: int = Field(default=9600, ge=300, le=921600)
    parity: Literal["N", "E", "O"] = "N"
    bytesize: Literal[7, 8] = 8
    stopbits: Literal[1, 2] = 1


class SerialSettings(_Model):
    """Serial line settings shared by every serial bus type."""

    port: str
    baudrate: int = Field(default=9600, ge=300, le=921600)
    parity: Literal["N", "E", "O"] = "N"
    bytesize: Literal[7, 8] = 8
    stopbits: Literal[1, 2] = 1


class Hj212SerialBus(SerialSettings):
    """An RS-232/RS-485 line on which an environmental data logger sends HJ 212 frames."""

    name: str
    type: Literal["hj212-serial"]


class Hj212TcpBus(_Model):
    """A TCP listener accepting HJ 212 uploads from existing data loggers."""

    name: str
    type: Literal["hj212-tcp"]
    host: str = "0.0.0.0"
    port: int = Field(default=9212, ge=1, le=65535)


class ParkingSerialBus(SerialSettings):
    """A parking-sensor concentrator on a serial line (docs/protocols/parking-serial.md)."""

    name: str
    type: Literal["parking-serial"]
    device_prefix: str = "pk-"  # device id = prefix + sensor id


class CoapBus(_Model):
    """A CoAP endpoint receiving reports from IP / NB-IoT parking nodes."""

    name: str
    type: Literal["coap"]
    host: str = "::"
    port: int = Field(default=5683, ge=1, le=65535)
    device_prefix: str = "pk-"
    heartbeat: Duration = 1800.0  # heartbeat period handed back to nodes


MODBUS_BUS_TYPES = ("modbus-tcp", "modbus-rtu")
Bus = Annotated[
    ModbusTcpBus | ModbusRtuBus | Hj212SerialBus | Hj212TcpBus | ParkingSerialBus | CoapBus,
    Field(discriminator="type"),
]
SerialBus = ModbusRtuBus | Hj212SerialBus | ParkingSerialBus


class DeviceSection(_Model):
    """A field device on one of the buses."""

    id: str = Field(pattern=DEVICE_ID_RE.pattern)
    bus: str
    profile: str
    unit: int = Field(default=1, ge=0, le=247)  # Modbus unit id
    mn: str | None = None  # HJ 212 device code (MN) of an environmental station
    # Edge-rule thresholds for this device (e.g. top_floor, rated_speed), over the profile's.
    rules: dict[str, Any] = Field(default_factory=dict)
    poll: Duration = Field(default=1.0, gt=0)
    heartbeat: Duration | None = None  # default: the profile's
    response_timeout: Duration | None = None  # default: the profile's
    retries: int | None = Field(default=None, ge=0, le=5)

    @model_validator(mode="after")
    def _valid_rules(self) -> DeviceSection:
        from edge.rules import rules_for

        try:
            rules_for(self.id, load_profile(self.profile), self.rules)
        except ValueError as exc:
            raise ValueError(f"rules: {exc}") from None
        return self

    @field_validator("profile")
    @classmethod
    def _known_profile(cls, name: str) -> str:
        try:
            load_profile(name)
        except ProfileError as exc:
            raise ValueError(str(exc)) from None
        return name


class GatewayConfig(_Model):
    """The whole gateway config file."""

    schema_version: Literal[1] = 1
    gateway: GatewaySection
    uplink: UplinkSection = Field(default_factory=UplinkSection)
    outbox: OutboxSection = Field(default_factory=OutboxSection)
    logging: LoggingSection = Field(default_factory=LoggingSection)
    watchdog: WatchdogSection = Field(default_factory=WatchdogSection)
    metrics: MetricsSection = Field(default_factory=MetricsSection)
    update: UpdateSection = Field(default_factory=UpdateSection)
    buses: list[Bus] = Field(default_factory=list)
    devices: list[DeviceSection] = Field(default_factory=list)

    @model_validator(mode="after")
    def _cross_checks(self) -> GatewayConfig:
        names = [b.name for b in self.buses]
        _no_duplicates(names, "buses", "name", fix="give each bus its own name")
        ports = [b.port for b in self.buses if isinstance(b, SerialSettings | ModbusRtuBus)]
        _no_duplicates(ports, "buses", "port", "a serial port has exactly one owner",
                       fix="give each bus its own port, or put the devices on one bus")
        _no_duplicates([d.id for d in self.devices], "devices", "id",
                       fix="give each device its own id")
        seen: set[tuple[str, int]] = set()
        for i, d in enumerate(self.devices):
            if d.bus not in names:
                raise ValueError(
                    f"devices[{i}].bus: no bus named {d.bus!r}; defined buses: {names or 'none'}"
                    " — use one of them or add a [[buses]] entry"
                )
            if self.bus(d.bus).type not in MODBUS_BUS_TYPES:
                continue
            if (d.bus, d.unit) in seen:
                raise ValueError(
                    f"devices[{i}].unit: unit {d.unit} is used twice on bus {d.bus!r}"
                    " — give each device on a bus its own unit address"
                )
            seen.add((d.bus, d.unit))
        return self

    @property
    def outbox_path(self) -> Path:
        """Where the outbox file lives."""
        return self.outbox.path or self.gateway.data_dir / "outbox.sqlite"

    def bus(self, name: str) -> Any:
        """Return the bus of this name."""
        return next(b for b in self.buses if b.name == name)


def _no_duplicates(
    values: list[Any], section: str, key: str, why: str = "", *, fix: str
) -> None:
    seen: set[Any] = set()
    for i, v in enumerate(values):
        if v in seen:
            hint = f" ({why})" if why else ""
            raise ValueError(f"{section}[{i}].{key}: {v!r} appears twice{hint} — {fix}")
        seen.add(v)


_HINTS = {
    "missing": "add this key",
    "extra_forbidden": "unknown key: check its spelling or remove it",
    "literal_error": "use one of the allowed values",
    "string_pattern_mismatch": "use lower-case letters, digits, '-' and '_'",
}


def parse_config(text: str, path: str = "<config>") -> GatewayConfig:
    """Validate a config document; raise ConfigError listing every problem."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, [("(syntax)", f"{exc} — this is not valid TOML")]) from None
    try:
        return GatewayConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(path, [_problem(e) for e in exc.errors()]) from None


def _problem(err: Any) -> tuple[str, str]:
    key = ".".join(str(p) for p in err["loc"]) or "(top level)"
    msg = str(err["msg"]).removeprefix("Value error, ")
    if msg.startswith(("devices[", "buses[")):  # cross-field checks name their own key
        key, _, msg = msg.partition(": ")
    hint = _HINTS.get(err["type"])
    return key, f"{msg} — {hint}" if hint else msg


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
             f"{config.outbox.durability_window * 1000:.0f} ms"]
    for bus in config.buses:
        devs = [d for d in config.devices if d.bus == bus.name]
        where = (f"{bus.port} {bus.baudrate} {bus.bytesize}{bus.parity}{bus.stopbits}"
                 if isinstance(bus, SerialSettings | ModbusRtuBus) else f"{bus.host}:{bus.port}")
        lines.append(f"bus {bus.name}: {bus.type} at {where}, {len(devs)} device(s)")
        for d in devs:
            prof = load_profile(d.profile)
            if bus.type in MODBUS_BUS_TYPES:
                lines.append(f"  {d.id}: unit {d.unit}, {prof.name} ({len(prof.points)} points),"
                             f" every {d.poll:g}s")
            else:
                lines.append(f"  {d.id}: {prof.name}" + (f", MN {d.mn}" if d.mn else ""))
    return lines
