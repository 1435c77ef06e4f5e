"""Parking report encoder for the sensor node (MicroPython and CPython).

Byte-identical to devices/parking.py (proved by tests/firmware/test_firmware.py); the format is
docs/protocols/parking-serial.md. Only `struct` is used so it runs unchanged on MicroPython.
Values are saturated or wrapped instead of raising: a node must always be able to report.
"""

import struct

VERSION = 1
SYNC = b"\xa5\x5a"
BODY_FORMAT = ">BIBB3h3hHbhHHB"
BODY_LEN = 29

MSG_OCCUPANCY_CHANGE = 1
MSG_HEARTBEAT = 2
MSG_STARTUP = 3

# "Not available" sentinels.
BATTERY_UNKNOWN = 0xFFFF
RSSI_UNKNOWN = -128
TEMPERATURE_UNKNOWN = -32768

RESET_UNKNOWN = 0
RESET_POWER_ON = 1
RESET_HARD = 2
RESET_WATCHDOG = 3
RESET_DEEP_SLEEP_WAKE = 4
RESET_SOFT = 5
RESET_BROWN_OUT = 6
RESET_FIRMWARE_UPDATE = 7

# Commands in the CoAP reply after the config, acked after the next report body (as in
# devices/parking.py: NODE_OPS, SETTINGS, ACK_RESULTS, ACK_MARK).
OP_CONFIGURE = 1
OP_RECALIBRATE = 2
SET_HEARTBEAT_S = 1
SET_ENTER_MG = 2
SET_LEAVE_MG = 3
SET_ENTER_SAMPLES = 4
SET_LEAVE_SAMPLES = 5
SET_SETTLE_MG = 6
SETTING_BOUNDS = {
    SET_HEARTBEAT_S: (60, 86400),
    SET_ENTER_MG: (20, 1000),
    SET_LEAVE_MG: (10, 900),
    SET_ENTER_SAMPLES: (1, 30),
    SET_LEAVE_SAMPLES: (1, 30),
    SET_SETTLE_MG: (2, 200),
}
RESULT_OK = 0
RESULT_BAD_SETTING = 1
RESULT_INCONSISTENT = 2
RESULT_UNSUPPORTED = 3
ACK_MARK = 0xAC
MAX_SETTINGS = 8
_CONFIG_LEN = 5
_CMD_HEAD_LEN = 6  # op u8, tag u32, count u8


def _clamp(value: int, low: int, high: int) -> int:
    if value < low:
        return low
    if value > high:
        return high
    return value


def _i16(value: int) -> int:
    # -32768 is kept free as the temperature sentinel; for fields it is just saturation.
    return _clamp(value, -32767, 32767)


def encode_body(
    sensor_id: int,
    msg_type: int,
    occupied: bool,
    mag: tuple,
    baseline: tuple,
    battery_mv: int,
    rssi_dbm: int,
    temperature_dc: int,
    send_counter: int,
    park_counter: int,
    reset_cause: int,
) -> bytes:
    """Encode the 29-byte v1 report body; temperature is in 0.1 degC, sentinels mean unknown."""
    return struct.pack(
        BODY_FORMAT,
        VERSION,
        sensor_id & 0xFFFFFFFF,
        msg_type,
        1 if occupied else 0,
        _clamp(mag[0], -32768, 32767),
        _clamp(mag[1], -32768, 32767),
        _clamp(mag[2], -32768, 32767),
        _clamp(baseline[0], -32768, 32767),
        _clamp(baseline[1], -32768, 32767),
        _clamp(baseline[2], -32768, 32767),
        _clamp(battery_mv, 0, BATTERY_UNKNOWN),
        _clamp(rssi_dbm, RSSI_UNKNOWN, 127),
        temperature_dc if temperature_dc == TEMPERATURE_UNKNOWN else _i16(temperature_dc),
        send_counter & 0xFFFF,
        park_counter & 0xFFFF,
        reset_cause & 0xFF,
    )


def crc16(data: bytes) -> int:
    """CRC-16/CCITT-FALSE: poly 0x1021, init 0xFFFF, not reflected, no final XOR."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            if crc & 0x8000:
                crc = ((crc << 1) ^ 0x1021) & 0xFFFF
            else:
                crc = (crc << 1) & 0xFFFF
    return crc


def encode_frame(body: bytes) -> bytes:
    """Wrap a report body in the concentrator serial frame: sync, length, body, CRC."""
    covered = bytes([len(body)]) + body
    crc = crc16(covered)
    return SYNC + covered + bytes([crc >> 8, crc & 0xFF])


def decode_config(payload: bytes) -> int:
    """Heartbeat seconds from a POST /p/r response payload, or 0 if it is not usable."""
    if len(payload) < 5 or payload[0] != 1:
        return 0
    heartbeat_s = struct.unpack_from(">I", payload, 1)[0]
    if heartbeat_s < 60 or heartbeat_s > 86400:
        return 0
    return heartbeat_s


def decode_command(payload: bytes) -> tuple | None:
    """(op, tag, [(code, value), ...]) of the command after the config in a response, or None
    when there is none or it is malformed (the node then ignores it)."""
    start = _CONFIG_LEN + _CMD_HEAD_LEN
    if len(payload) < start or payload[0] != 1:
        return None
    op, tag, count = struct.unpack_from(">BIB", payload, _CONFIG_LEN)
    if tag == 0 or count > MAX_SETTINGS or len(payload) != start + 5 * count:
        return None
    items = [struct.unpack_from(">BI", payload, start + 5 * i) for i in range(count)]
    return (op, tag, items)


def encode_ack(tag: int, result: int, settings: list) -> bytes:
    """The ack appended to the next report body: tag, result, the settings now in force."""
    out = struct.pack(">BIBB", ACK_MARK, tag & 0xFFFFFFFF, result & 0xFF, len(settings))
    for code, value in settings:
        out += struct.pack(">BI", code, value & 0xFFFFFFFF)
    return out
