"""A minimal Modbus RTU read for line scanning: build a request, parse an answer (sans-IO), and
one blocking exchange over pyserial.

The scan opens the port at up to twelve settings in a row; plain pyserial opens and closes
cleanly each time (a failed open leaves nothing behind), which the reconnecting pymodbus client
the gateway uses is not made for.
"""

from __future__ import annotations

import time
from typing import Any


def crc16_modbus(data: bytes) -> int:
    """CRC-16/MODBUS of a frame (sent low byte first)."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def request(unit: int, function: int, address: int, count: int) -> bytes:
    """A read request (function 3 or 4) with its CRC."""
    body = bytes([unit, function]) + address.to_bytes(2, "big") + count.to_bytes(2, "big")
    return body + crc16_modbus(body).to_bytes(2, "little")


def expected_length(count: int) -> int:
    """Length of a normal answer to a read of `count` registers."""
    return 5 + 2 * count


def parse(unit: int, function: int, count: int, frame: bytes) -> list[int] | int | None:
    """Registers, an exception code (int), or None for no valid answer from this unit."""
    if len(frame) >= 5 and frame[0] == unit and frame[1] == function | 0x80:
        ok = crc16_modbus(frame[:3]) == int.from_bytes(frame[3:5], "little")
        return frame[2] if ok else None
    n = expected_length(count)
    if len(frame) < n or frame[0] != unit or frame[1] != function or frame[2] != 2 * count:
        return None
    if crc16_modbus(frame[: n - 2]) != int.from_bytes(frame[n - 2 : n], "little"):
        return None
    data = frame[3 : n - 2]
    return [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]


def exchange(line: Any, unit: int, function: int, address: int, count: int,
             timeout: float) -> list[int] | int | None:
    """Send one read on an open pyserial port and wait up to `timeout` for its answer."""
    line.reset_input_buffer()
    line.write(request(unit, function, address, count))
    line.flush()
    got = bytearray()
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got += line.read(max(1, expected_length(count) - len(got)))
        answer = parse(unit, function, count, bytes(got))
        if answer is not None:
            return answer
    return None
