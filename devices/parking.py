"""Roadside parking sensor codec: concentrator serial frames, CoAP report bodies, CBOR maps.

Sans-IO: every function maps bytes to typed values and back. The wire format is specified in
docs/protocols/parking-serial.md; firmware/codec.py produces byte-identical frames on the node.
"""

from __future__ import annotations

import binascii
import dataclasses
import io
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Literal

import cbor2

__all__ = [
    "BODY_LEN_V1",
    "CONFIG_VERSION",
    "MAX_BODY_LEN",
    "MAX_FRAME_LEN",
    "SETTINGS",
    "SYNC",
    "VERSION",
    "CommandAck",
    "MessageType",
    "NodeCommand",
    "ParkingFrameError",
    "ResetCause",
    "SensorReport",
    "StreamDecoder",
    "StreamStats",
    "config_response",
    "crc16_ccitt_false",
    "decode_ack",
    "decode_body",
    "decode_cbor",
    "decode_coap_body",
    "decode_config",
    "decode_frame",
    "decode_node_command",
    "encode_ack",
    "encode_body",
    "encode_cbor",
    "encode_coap_body",
    "encode_frame",
    "encode_node_command",
    "response_command",
]

SYNC = b"\xa5\x5a"
VERSION = 1
# Body = version .. reset cause. v1 bodies are exactly 29 bytes; later versions may only append
# fields, up to MAX_BODY_LEN, so a v1 stream decoder can still skip them whole.
_BODY = struct.Struct(">BIBB3h3hHbhHHB")
BODY_LEN_V1 = _BODY.size
MAX_BODY_LEN = 64
_HEADER_LEN = 3  # sync (2) + length (1)
_CRC_LEN = 2
MAX_FRAME_LEN = _HEADER_LEN + MAX_BODY_LEN + _CRC_LEN
MAX_CBOR_LEN = 256

# "Not available" sentinels on the wire (the dataclass uses None).
BATTERY_UNKNOWN = 0xFFFF
RSSI_UNKNOWN = -128
TEMPERATURE_UNKNOWN = -32768

CONFIG_VERSION = 1
_CONFIG = struct.Struct(">BI")
HEARTBEAT_MIN_S = 60
HEARTBEAT_MAX_S = 86_400

# Node commands: piggybacked on the config response, acknowledged in the node's next report.
# Settings the node firmware has, by name: (code on the wire, min, max).
SETTINGS: dict[str, tuple[int, int, int]] = {
    "heartbeat_s": (1, HEARTBEAT_MIN_S, HEARTBEAT_MAX_S),  # heartbeat period
    "enter_mg": (2, 20, 1000),  # field change that means a car (detector threshold)
    "leave_mg": (3, 10, 900),  # below this the bay is free again (must stay < enter_mg)
    "enter_samples": (4, 1, 30),  # settled samples before a car is reported (1 Hz: seconds)
    "leave_samples": (5, 1, 30),  # samples below leave_mg before the bay is reported free
    "settle_mg": (6, 2, 200),  # how still the field must be for a car to count as parked
}
SETTING_NAMES = {code: name for name, (code, _, _) in SETTINGS.items()}
OP_CONFIGURE = 1
OP_RECALIBRATE = 2
NODE_OPS = {"configure": OP_CONFIGURE, "recalibrate": OP_RECALIBRATE}
# Results a node acknowledges a command with (0 = applied).
ACK_RESULTS = {0: "ok", 1: "bad_setting", 2: "inconsistent", 3: "unsupported_operation"}
ACK_MARK = 0xAC  # first byte of the ack appended to a report body
MAX_SETTINGS = 8
_CMD_HEAD = struct.Struct(">BIB")  # op, tag, number of settings
_ACK_HEAD = struct.Struct(">BIBB")  # mark, tag, result, number of settings
_SETTING = struct.Struct(">BI")  # setting code, value

Reason = Literal[
    "bad_sync",
    "bad_length",
    "bad_crc",
    "bad_version",
    "bad_type",
    "truncated",
    "bad_cbor",
    "bad_field",
]

_HINTS: dict[str, str] = {
    "bad_sync": "bytes outside a frame: line noise, wrong baud rate, or a non-parking device "
    "on the port",
    "bad_length": "length byte out of range or not matching the version: corrupt frame",
    "bad_crc": "CRC-16/CCITT-FALSE mismatch: line noise or wrong serial settings "
    "(check baud rate and parity of the concentrator)",
    "bad_version": "frame version not supported: upgrade CityGate or the concentrator firmware",
    "bad_type": "unknown message type: upgrade CityGate or check the sensor firmware",
    "truncated": "input ends inside a frame",
    "bad_cbor": "payload is not a single well-formed CBOR map",
    "bad_field": "a field is missing, of the wrong type or out of range",
}


class MessageType(IntEnum):
    """Why the sensor sent this report."""

    OCCUPANCY_CHANGE = 1
    HEARTBEAT = 2
    STARTUP = 3


class ResetCause(IntEnum):
    """Cause of the node's last reset (mirrors MicroPython's machine.reset_cause())."""

    UNKNOWN = 0
    POWER_ON = 1
    HARD_RESET = 2
    WATCHDOG = 3
    DEEP_SLEEP_WAKE = 4
    SOFT_RESET = 5
    BROWN_OUT = 6
    FIRMWARE_UPDATE = 7


class ParkingFrameError(Exception):
    """A frame or payload that cannot be decoded; `reason` says which check failed."""

    def __init__(self, reason: Reason, detail: str = "", *, discarded: int = 0) -> None:
        self.reason: Reason = reason
        self.detail = detail
        self.discarded = discarded
        text = f"{reason}: {detail}" if detail else reason
        super().__init__(f"{text} ({_HINTS[reason]})")


def _check_range(name: str, value: int, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name}={value!r} must be an integer in [{low}, {high}]")


@dataclass(frozen=True, slots=True)
class SensorReport:
    """One report from a geomagnetic parking sensor (magnetic values in mG, 1 LSB = 0.1 µT)."""

    sensor_id: int
    msg_type: MessageType
    occupied: bool
    mag: tuple[int, int, int]
    baseline: tuple[int, int, int]
    battery_mv: int | None = None
    rssi_dbm: int | None = None
    temperature_c: float | None = None
    send_counter: int = 0
    park_counter: int = 0
    reset_cause: int = ResetCause.UNKNOWN
    ack: CommandAck | None = None  # the node's answer to the last command (CoAP only)

    def __post_init__(self) -> None:
        _check_range("sensor_id", self.sensor_id, 0, 0xFFFF_FFFF)
        if self.msg_type not in MessageType.__members__.values():
            raise ValueError(f"msg_type={self.msg_type!r} is not a MessageType")
        if len(self.mag) != 3 or len(self.baseline) != 3:
            raise ValueError("mag and baseline must have exactly three axes (x, y, z)")
        for axis, value in zip("xyz", self.mag, strict=True):
            _check_range(f"mag.{axis}", value, -32768, 32767)
        for axis, value in zip("xyz", self.baseline, strict=True):
            _check_range(f"baseline.{axis}", value, -32768, 32767)
        if self.battery_mv is not None:
            _check_range("battery_mv", self.battery_mv, 0, BATTERY_UNKNOWN - 1)
        if self.rssi_dbm is not None:
            _check_range("rssi_dbm", self.rssi_dbm, RSSI_UNKNOWN + 1, 127)
        if self.temperature_c is not None:
            if not math.isfinite(self.temperature_c):
                raise ValueError(f"temperature_c={self.temperature_c!r} must be finite")
            _check_range("temperature_c*10", round(self.temperature_c * 10), -32767, 32767)
        _check_range("send_counter", self.send_counter, 0, 0xFFFF)
        _check_range("park_counter", self.park_counter, 0, 0xFFFF)
        _check_range("reset_cause", self.reset_cause, 0, 0xFF)


@dataclass(frozen=True, slots=True)
class NodeCommand:
    """A command for a node, as carried after the config in a POST /p/r response."""

    op: int  # OP_CONFIGURE or OP_RECALIBRATE
    tag: int  # the command's short id (u32, never 0), what the node acknowledges
    settings: tuple[tuple[int, int], ...] = ()  # (setting code, value), configure only


@dataclass(frozen=True, slots=True)
class CommandAck:
    """A node's acknowledgement of a command: its tag, result and the settings now in force."""

    tag: int
    result: int  # ACK_RESULTS
    settings: tuple[tuple[int, int], ...] = ()

    def named_settings(self) -> dict[str, int]:
        """The settings by name (codes this side does not know are left out)."""
        return {SETTING_NAMES[c]: v for c, v in self.settings if c in SETTING_NAMES}


def _encode_settings(settings: tuple[tuple[int, int], ...]) -> bytes:
    if len(settings) > MAX_SETTINGS:
        raise ValueError(f"at most {MAX_SETTINGS} settings")
    return b"".join(_SETTING.pack(c, v) for c, v in settings)


def _decode_settings(data: bytes, offset: int, count: int) -> tuple[tuple[int, int], ...]:
    if count > MAX_SETTINGS or len(data) != offset + count * _SETTING.size:
        raise ParkingFrameError("bad_field", f"{count} settings in {len(data) - offset} bytes")
    return tuple(_SETTING.unpack_from(data, offset + i * _SETTING.size) for i in range(count))


def encode_node_command(cmd: NodeCommand) -> bytes:
    """The command block appended to the config response (at most 51 bytes)."""
    _check_range("tag", cmd.tag, 1, 0xFFFF_FFFF)
    return _CMD_HEAD.pack(cmd.op, cmd.tag, len(cmd.settings)) + _encode_settings(cmd.settings)


def decode_node_command(data: bytes) -> NodeCommand:
    """Decode a command block (the bytes after the config); ParkingFrameError on a defect."""
    if len(data) < _CMD_HEAD.size:
        raise ParkingFrameError("truncated", f"command block of {len(data)} bytes")
    op, tag, count = _CMD_HEAD.unpack_from(data)
    if op not in NODE_OPS.values() or tag == 0:
        raise ParkingFrameError("bad_field", f"command op {op} / tag {tag}")
    return NodeCommand(op, tag, _decode_settings(data, _CMD_HEAD.size, count))


def encode_ack(ack: CommandAck) -> bytes:
    """The ack a node appends to its next report body (CoAP only)."""
    return (_ACK_HEAD.pack(ACK_MARK, ack.tag, ack.result, len(ack.settings))
            + _encode_settings(ack.settings))


def decode_ack(data: bytes) -> CommandAck:
    """Decode an ack appended to a report body; ParkingFrameError on a defect."""
    if len(data) < _ACK_HEAD.size or data[0] != ACK_MARK:
        raise ParkingFrameError("bad_field", f"{len(data)} bytes after the report body are "
                                "not a command ack")
    _, tag, result, count = _ACK_HEAD.unpack_from(data)
    return CommandAck(tag, result, _decode_settings(data, _ACK_HEAD.size, count))


def encode_coap_body(report: SensorReport) -> bytes:
    """The CoAP payload (Content-Format 42): the report body, then the ack if there is one."""
    body = encode_body(report)
    return body if report.ack is None else body + encode_ack(report.ack)


def decode_coap_body(data: bytes) -> SensorReport:
    """Decode a CoAP report payload: a v1 body, optionally followed by a command ack."""
    if len(data) > BODY_LEN_V1 and data[0] == VERSION:
        report = decode_body(data[:BODY_LEN_V1])
        return dataclasses.replace(report, ack=decode_ack(data[BODY_LEN_V1:]))
    return decode_body(data)


def crc16_ccitt_false(data: bytes) -> int:
    """CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, no reflection, no final XOR)."""
    return binascii.crc_hqx(data, 0xFFFF)


def _temperature_dc(report: SensorReport) -> int:
    if report.temperature_c is None:
        return TEMPERATURE_UNKNOWN
    return round(report.temperature_c * 10)


def encode_body(report: SensorReport) -> bytes:
    """Encode the report body (version .. reset cause) used in frames and CoAP payloads."""
    return _BODY.pack(
        VERSION,
        report.sensor_id,
        report.msg_type,
        int(report.occupied),
        *report.mag,
        *report.baseline,
        BATTERY_UNKNOWN if report.battery_mv is None else report.battery_mv,
        RSSI_UNKNOWN if report.rssi_dbm is None else report.rssi_dbm,
        _temperature_dc(report),
        report.send_counter,
        report.park_counter,
        report.reset_cause,
    )


def decode_body(data: bytes) -> SensorReport:
    """Decode a report body; raises ParkingFrameError on any defect."""
    if not data:
        raise ParkingFrameError("truncated", "empty body")
    if data[0] != VERSION:
        raise ParkingFrameError("bad_version", f"version {data[0]}, supported {VERSION}")
    if len(data) != BODY_LEN_V1:
        reason: Reason = "truncated" if len(data) < BODY_LEN_V1 else "bad_length"
        raise ParkingFrameError(reason, f"v1 body is {BODY_LEN_V1} bytes, got {len(data)}")
    (_, sensor_id, msg_type, flags, mx, my, mz, bx, by, bz, battery, rssi, temp_dc, send,
     park, reset) = _BODY.unpack(data)  # fmt: skip
    if msg_type not in MessageType.__members__.values():
        raise ParkingFrameError("bad_type", f"message type {msg_type}")
    return SensorReport(
        sensor_id=sensor_id,
        msg_type=MessageType(msg_type),
        occupied=bool(flags & 1),
        mag=(mx, my, mz),
        baseline=(bx, by, bz),
        battery_mv=None if battery == BATTERY_UNKNOWN else battery,
        rssi_dbm=None if rssi == RSSI_UNKNOWN else rssi,
        temperature_c=None if temp_dc == TEMPERATURE_UNKNOWN else temp_dc / 10,
        send_counter=send,
        park_counter=park,
        reset_cause=_reset_cause(reset),
    )


def _reset_cause(value: int) -> int:
    # Unknown causes from newer firmware stay plain ints rather than failing the report.
    try:
        return ResetCause(value)
    except ValueError:
        return value


def encode_frame(report: SensorReport) -> bytes:
    """Encode a complete concentrator serial frame: sync, length, body, CRC."""
    body = encode_body(report)
    covered = bytes((len(body),)) + body
    return SYNC + covered + crc16_ccitt_false(covered).to_bytes(2, "big")


def _frame_length(data: bytes | bytearray) -> int:
    """Total frame length announced by a header that starts with SYNC; checks the range."""
    body_len = data[2]
    if not 1 <= body_len <= MAX_BODY_LEN:
        raise ParkingFrameError("bad_length", f"length byte {body_len}, allowed 1..{MAX_BODY_LEN}")
    return _HEADER_LEN + body_len + _CRC_LEN


def decode_frame(data: bytes) -> SensorReport:
    """Decode exactly one complete frame; raises ParkingFrameError(reason=...) on any defect."""
    if data[:2] != SYNC[: len(data)]:
        raise ParkingFrameError("bad_sync", f"starts with {bytes(data[:2]).hex()}, expected a55a")
    if len(data) < _HEADER_LEN:
        raise ParkingFrameError("truncated", f"{len(data)} bytes, header needs {_HEADER_LEN}")
    total = _frame_length(data)
    if len(data) < total:
        raise ParkingFrameError("truncated", f"{len(data)} of {total} bytes")
    if len(data) > total:
        raise ParkingFrameError("bad_length", f"{len(data) - total} bytes after the frame")
    covered = bytes(data[2:-_CRC_LEN])
    sent = int.from_bytes(data[-_CRC_LEN:], "big")
    computed = crc16_ccitt_false(covered)
    if sent != computed:
        raise ParkingFrameError("bad_crc", f"frame says {sent:04x}, computed {computed:04x}")
    body = covered[1:]
    if body[0] == VERSION and len(body) != BODY_LEN_V1:
        raise ParkingFrameError("bad_length", f"v1 body is {BODY_LEN_V1} bytes, got {len(body)}")
    return decode_body(body)


# --- CBOR map form (CoAP, Content-Format 60) -------------------------------------------------

_CBOR_INT_KEYS: dict[str, tuple[int, int]] = {
    "i": (0, 0xFFFF_FFFF),
    "t": (1, 255),
    "sc": (0, 0xFFFF),
    "pc": (0, 0xFFFF),
    "rc": (0, 0xFF),
    "bv": (0, BATTERY_UNKNOWN - 1),
    "r": (RSSI_UNKNOWN + 1, 127),
    "tc": (-32767, 32767),
}


def encode_cbor(report: SensorReport) -> bytes:
    """Encode the report as the CBOR map with short keys (absent keys = not available)."""
    doc: dict[str, object] = {
        "v": VERSION,
        "i": report.sensor_id,
        "t": int(report.msg_type),
        "o": report.occupied,
        "m": list(report.mag),
        "b": list(report.baseline),
        "sc": report.send_counter,
        "pc": report.park_counter,
        "rc": int(report.reset_cause),
    }
    if report.battery_mv is not None:
        doc["bv"] = report.battery_mv
    if report.rssi_dbm is not None:
        doc["r"] = report.rssi_dbm
    if report.temperature_c is not None:
        doc["tc"] = _temperature_dc(report)
    if report.ack is not None:
        doc["a"] = [report.ack.tag, report.ack.result,
                    [x for item in report.ack.settings for x in item]]
    return cbor2.dumps(doc)


def _load_cbor_map(data: bytes) -> Mapping[Any, Any]:
    if len(data) > MAX_CBOR_LEN:
        raise ParkingFrameError("bad_cbor", f"{len(data)} bytes, limit {MAX_CBOR_LEN}")
    stream = io.BytesIO(data)
    try:
        doc = cbor2.CBORDecoder(stream, max_depth=4, allow_duplicate_keys=False).decode()
    except (cbor2.CBORError, ValueError, TypeError, OverflowError, EOFError) as exc:
        raise ParkingFrameError("bad_cbor", str(exc)[:120]) from exc
    if stream.tell() != len(data):
        raise ParkingFrameError("bad_cbor", f"{len(data) - stream.tell()} bytes after the map")
    if not isinstance(doc, Mapping):
        raise ParkingFrameError("bad_cbor", f"top level is {type(doc).__name__}, not a map")
    return doc


def _cbor_int(doc: Mapping[Any, Any], key: str) -> int:
    value = doc[key]
    low, high = _CBOR_INT_KEYS[key]
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ParkingFrameError("bad_field", f"{key!r}={value!r}, want int in [{low}, {high}]")
    return value


def _cbor_xyz(doc: Mapping[Any, Any], key: str) -> tuple[int, int, int]:
    value = doc[key]
    ok = isinstance(value, list) and len(value) == 3
    if not ok or not all(type(v) is int and -32768 <= v <= 32767 for v in value):
        raise ParkingFrameError("bad_field", f"{key!r}={value!r}, want three i16 ints")
    return (value[0], value[1], value[2])


def _cbor_ack(value: Any) -> CommandAck:
    ok = isinstance(value, list) and len(value) == 3 and isinstance(value[2], list)
    flat = value[2] if ok else []
    ok = ok and len(flat) % 2 == 0 and len(flat) <= 2 * MAX_SETTINGS and all(
        type(v) is int and 0 <= v <= 0xFFFF_FFFF for v in [value[0], value[1], *flat])
    if not ok or value[1] > 0xFF or any(c > 0xFF for c in flat[::2]):
        raise ParkingFrameError("bad_field", f"'a'={value!r}, want [tag, result, [code, "
                                "value, ...]]")
    return CommandAck(value[0], value[1], tuple(zip(flat[::2], flat[1::2], strict=True)))


def decode_cbor(data: bytes) -> SensorReport:
    """Decode the CBOR map form; unknown keys are ignored, defects raise ParkingFrameError."""
    doc = _load_cbor_map(data)
    missing = [k for k in ("v", "i", "t", "o", "m", "b") if k not in doc]
    if missing:
        raise ParkingFrameError("bad_field", f"missing keys {missing}")
    if doc["v"] != VERSION or isinstance(doc["v"], bool):
        raise ParkingFrameError("bad_version", f"version {doc['v']!r}, supported {VERSION}")
    msg_type = _cbor_int(doc, "t")
    if msg_type not in MessageType.__members__.values():
        raise ParkingFrameError("bad_type", f"message type {msg_type}")
    if not isinstance(doc["o"], bool):
        raise ParkingFrameError("bad_field", f"'o'={doc['o']!r}, want true/false")
    temp_dc = _cbor_int(doc, "tc") if "tc" in doc else None
    return SensorReport(
        sensor_id=_cbor_int(doc, "i"),
        msg_type=MessageType(msg_type),
        occupied=doc["o"],
        mag=_cbor_xyz(doc, "m"),
        baseline=_cbor_xyz(doc, "b"),
        battery_mv=_cbor_int(doc, "bv") if "bv" in doc else None,
        rssi_dbm=_cbor_int(doc, "r") if "r" in doc else None,
        temperature_c=None if temp_dc is None else temp_dc / 10,
        send_counter=_cbor_int(doc, "sc") if "sc" in doc else 0,
        park_counter=_cbor_int(doc, "pc") if "pc" in doc else 0,
        reset_cause=_reset_cause(_cbor_int(doc, "rc")) if "rc" in doc else ResetCause.UNKNOWN,
        ack=_cbor_ack(doc["a"]) if "a" in doc else None,
    )


# --- CoAP response: configuration for the node -----------------------------------------------


def config_response(heartbeat_s: int, command: NodeCommand | None = None) -> bytes:
    """Encode the 2.04 response payload to POST /p/r: config version and heartbeat period,
    then the command block of a command for the node, if one is due."""
    _check_range("heartbeat_s", heartbeat_s, HEARTBEAT_MIN_S, HEARTBEAT_MAX_S)
    head = _CONFIG.pack(CONFIG_VERSION, heartbeat_s)
    return head if command is None else head + encode_node_command(command)


def decode_config(data: bytes) -> int:
    """Decode a config response payload to the heartbeat period in seconds."""
    if not data:
        raise ParkingFrameError("truncated", "empty config payload")
    if data[0] != CONFIG_VERSION:
        raise ParkingFrameError("bad_version", f"config version {data[0]}")
    if len(data) < _CONFIG.size:
        raise ParkingFrameError("truncated", f"config needs {_CONFIG.size} bytes, got {len(data)}")
    # Trailing bytes are fields a newer collector appended: ignored by design.
    _, heartbeat_s = _CONFIG.unpack_from(data)
    if not HEARTBEAT_MIN_S <= heartbeat_s <= HEARTBEAT_MAX_S:
        raise ParkingFrameError("bad_field", f"heartbeat {heartbeat_s} s out of range")
    return int(heartbeat_s)


def response_command(data: bytes) -> NodeCommand | None:
    """The command block after the config in a response payload (None when there is none)."""
    decode_config(data)
    return decode_node_command(data[_CONFIG.size:]) if len(data) > _CONFIG.size else None


# --- stream decoder for the concentrator serial line -----------------------------------------


@dataclass(slots=True)
class StreamStats:
    """Counters of a StreamDecoder (monotonic; read them, never reset them in place)."""

    bytes_in: int = 0
    frames_ok: int = 0
    bytes_discarded: int = 0
    errors: dict[str, int] = field(default_factory=dict)


class StreamDecoder:
    """Splits a concentrator byte stream into reports; survives garbage, splits and babbling.

    Invariants: results never depend on how the stream is chunked, and between feeds at most
    MAX_FRAME_LEN - 1 bytes are buffered (a frame candidate or a lone first sync byte).
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._garbage = 0  # discarded bytes of the current run, reported when it ends
        self._after_reject = False  # the current garbage run is the tail of a rejected frame
        self.stats = StreamStats()

    @property
    def buffered(self) -> int:
        """Bytes held while waiting for the rest of a frame."""
        return len(self._buf)

    def feed(self, chunk: bytes) -> list[SensorReport | ParkingFrameError]:
        """Consume a chunk; return decoded reports and the errors seen, in stream order."""
        self.stats.bytes_in += len(chunk)
        self._buf += chunk
        out: list[SensorReport | ParkingFrameError] = []
        pos = self._scan(out)
        del self._buf[:pos]
        return out

    def idle(self) -> list[SensorReport | ParkingFrameError]:
        """The line went quiet: a frame still incomplete now never will be; rescan past it.

        Call it when the serial read times out with nothing received (the concentrator sends a
        frame without gaps). Without it, a false sync with a large length byte would hold the
        next real frame back until more traffic arrives.
        """
        out: list[SensorReport | ParkingFrameError] = []
        while self._buf[:2] == SYNC:
            exc = ParkingFrameError("truncated", f"line idle with {len(self._buf)} bytes")
            pos = self._reject(out, exc, 0, 1)
            del self._buf[:pos]
            del self._buf[: self._scan(out)]
        self._discard(len(self._buf))
        self._buf.clear()
        return out

    def _scan(self, out: list[SensorReport | ParkingFrameError]) -> int:
        buf, pos = self._buf, 0
        while True:
            start = buf.find(SYNC, pos)
            if start < 0:
                keep = 1 if buf[-1:] == SYNC[:1] else 0
                self._discard(len(buf) - keep - pos)
                return len(buf) - keep
            self._discard(start - pos)
            self._end_garbage_run(out)
            if len(buf) - start < _HEADER_LEN:
                return start
            try:
                total = _frame_length(buf[start:])
            except ParkingFrameError as exc:
                pos = self._reject(out, exc, start, 1)
                continue
            if len(buf) - start < total:
                return start
            pos = self._take(out, bytes(buf[start : start + total]), start)

    def _take(self, out: list[SensorReport | ParkingFrameError], frame: bytes, start: int) -> int:
        try:
            report = decode_frame(frame)
        except ParkingFrameError as exc:
            # A CRC failure means the sync may have been payload: rescan from the next byte.
            # Any later check passed the CRC, so the framing is right: skip the whole frame.
            skip = 1 if exc.reason == "bad_crc" else len(frame)
            return self._reject(out, exc, start, skip)
        self.stats.frames_ok += 1
        out.append(report)
        return start + len(frame)

    def _reject(
        self, out: list[SensorReport | ParkingFrameError], exc: ParkingFrameError, start: int,
        skip: int,
    ) -> int:
        self._count(exc.reason)
        self.stats.bytes_discarded += skip
        exc.discarded = skip
        out.append(exc)
        self._after_reject = True
        return start + skip

    def _discard(self, count: int) -> None:
        self._garbage += count
        self.stats.bytes_discarded += count

    def _end_garbage_run(self, out: list[SensorReport | ParkingFrameError]) -> None:
        if self._garbage and not self._after_reject:
            self._count("bad_sync")
            out.append(
                ParkingFrameError("bad_sync", f"{self._garbage} bytes skipped",
                                  discarded=self._garbage)
            )
        self._garbage = 0
        self._after_reject = False

    def _count(self, reason: str) -> None:
        self.stats.errors[reason] = self.stats.errors.get(reason, 0) + 1
