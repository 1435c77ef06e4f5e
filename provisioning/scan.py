"""Find what is on a line: responding Modbus unit ids, the serial settings, or a talking protocol.

`recognise` is sans-IO (bytes in, verdict out, with the codecs the gateway uses); the probing
functions do the I/O with short timeouts through the gateway's own Modbus adapter.
"""

from __future__ import annotations

import asyncio
import termios
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from devices import hj212, parking
from devices.modbus.codec import Table
from devices.modbus.planner import plan_reads
from devices.profiles import load_profile
from edge.modbus_link import ModbusLink, ModbusReadError
from provisioning import rtu_probe
from provisioning.errors import ProvisionError

BAUDS = (9600, 19200, 38400, 115200)
PARITIES = ("N", "E", "O")
QUICK_UNITS = tuple(range(1, 9))  # probed at each serial setting before a full scan
# Exceptions a Modbus TCP-to-RTU gateway answers for units that are not there.
GATEWAY_PATH_UNAVAILABLE, GATEWAY_NO_RESPONSE = 0x0A, 0x0B


@dataclass(frozen=True, slots=True)
class Probe:
    """What to read from each unit: a table, a start address and a count."""

    table: Table = Table.HOLDING
    address: int = 0
    count: int = 1

    @classmethod
    def for_profile(cls, name: str) -> Probe:
        """The first read block of a device profile."""
        block = plan_reads(load_profile(name).points)[0]
        return cls(block.table, block.start, min(block.count, 8))


@dataclass(frozen=True, slots=True)
class UnitFound:
    """A unit that answered: with registers, or with a Modbus exception (it is there)."""

    unit: int
    registers: tuple[int, ...] = ()
    exception_code: int | None = None


@dataclass(frozen=True, slots=True)
class SerialSetting:
    """Baud rate and parity of a line (8 data bits, 1 stop bit)."""

    baudrate: int
    parity: str

    def __str__(self) -> str:
        return f"{self.baudrate} 8{self.parity}1"


Progress = Callable[[str], None]


async def probe_unit(link: ModbusLink, unit: int, probe: Probe,
                     timeout: float) -> UnitFound | None:
    """Read the probe from one unit; None when nothing answered."""
    try:
        regs = await link.read(probe.table, probe.address, probe.count, unit, timeout, 0)
    except ModbusReadError as exc:
        absent = (GATEWAY_PATH_UNAVAILABLE, GATEWAY_NO_RESPONSE)
        if exc.kind == "exception" and exc.exception_code not in absent:
            return UnitFound(unit, exception_code=exc.exception_code)
        return None
    return UnitFound(unit, tuple(regs))


async def scan_units(link: ModbusLink, units: Iterable[int], probe: Probe, timeout: float,
                     progress: Progress | None = None) -> list[UnitFound]:
    """Every unit of `units` that answers the probe, in order."""
    found = []
    for unit in units:
        if progress:
            progress(f"unit {unit}")
        hit = await probe_unit(link, unit, probe, timeout)
        if hit is not None:
            found.append(hit)
    return found


async def scan_tcp(host: str, port: int, units: Sequence[int], probe: Probe,
                   timeout: float = 0.2, progress: Progress | None = None) -> list[UnitFound]:
    """Scan a Modbus TCP endpoint (or a TCP-to-RTU converter) for responding units."""
    link = ModbusLink.tcp(host, port)
    if not await link.open():
        raise ProvisionError(f"nothing accepts Modbus TCP connections at {host}:{port}",
                             "check the address and port (502 is usual), the cable, and that "
                             "the device's Modbus TCP server is enabled")
    try:
        return await scan_units(link, units, probe, timeout, progress)
    finally:
        link.close()


def with_data(found: Sequence[UnitFound]) -> list[UnitFound]:
    """Units that answered with registers (an exception alone may come from a server that
    answers for absent units, as some TCP gateways and simulators do)."""
    return [u for u in found if u.exception_code is None]


def _open_serial(port: str, setting: SerialSetting) -> Any | None:
    """The port opened at `setting`; None when the driver refuses that setting."""
    import serial

    try:
        return serial.Serial(port, setting.baudrate, parity=setting.parity, bytesize=8,
                             stopbits=1, timeout=0.02)
    except termios.error:
        return None  # e.g. an adapter without that baud rate or parity
    except (serial.SerialException, OSError) as exc:
        raise ProvisionError(f"cannot open serial port {port}: {exc}",
                             "check the device path (ls /dev/serial/by-id), that no other "
                             "program (a running gateway?) holds it, and your permissions"
                             ) from None


def _probe_rtu(line: Any, unit: int, probe: Probe, timeout: float) -> UnitFound | None:
    function = 4 if probe.table is Table.INPUT else 3
    answer = rtu_probe.exchange(line, unit, function, probe.address, probe.count, timeout)
    if answer is None:
        return None
    if isinstance(answer, int):
        return UnitFound(unit, exception_code=answer)
    return UnitFound(unit, tuple(answer))


def scan_serial_sync(port: str, units: Sequence[int], probe: Probe, *,
                     settings: Sequence[SerialSetting] | None = None, timeout: float = 0.25,
                     progress: Progress | None = None
                     ) -> tuple[SerialSetting, list[UnitFound]] | None:
    """Find the serial setting at which units answer, then every unit at that setting."""
    candidates = settings or [SerialSetting(b, p) for b in BAUDS for p in PARITIES]
    quick = [u for u in QUICK_UNITS if u in units] or list(units)[:8]
    for setting in candidates:
        if progress:
            progress(f"trying {setting}")
        line = _open_serial(port, setting)
        if line is None:
            if progress:
                progress(f"the port refuses {setting}: skipped")
            continue
        with line:
            if not any(_probe_rtu(line, u, probe, timeout) for u in quick):
                continue
            found = []
            for unit in units:
                if progress:
                    progress(f"unit {unit} at {setting}")
                hit = _probe_rtu(line, unit, probe, timeout)
                if hit is not None:
                    found.append(hit)
            return setting, found
    return None


async def scan_serial(port: str, units: Sequence[int], probe: Probe, *,
                      settings: Sequence[SerialSetting] | None = None, timeout: float = 0.25,
                      progress: Progress | None = None
                      ) -> tuple[SerialSetting, list[UnitFound]] | None:
    """scan_serial_sync in a worker thread."""
    return await asyncio.to_thread(scan_serial_sync, port, units, probe, settings=settings,
                                   timeout=timeout, progress=progress)


# --- listening for talking devices -------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Heard:
    """What a line carried while we listened."""

    protocol: str  # "hj212", "parking" or "unknown"
    frames: int
    detail: str


def recognise(data: bytes) -> Heard:
    """Say which protocol a captured byte stream speaks, by decoding frames with our codecs."""
    hj = hj212.StreamDecoder()
    hj_frames = [f for f in hj.feed(data) if isinstance(f, hj212.Frame)]
    if hj_frames:
        mns = sorted({f.mn for f in hj_frames if f.mn})
        return Heard("hj212", len(hj_frames), f"MN {', '.join(mns) or '?'}")
    pk = parking.StreamDecoder()
    reports = [r for r in pk.feed(data) + pk.idle() if isinstance(r, parking.SensorReport)]
    if reports:
        ids = sorted({r.sensor_id for r in reports})
        return Heard("parking", len(reports), f"sensors {', '.join(map(str, ids[:10]))}")
    if b"##" in data:
        return Heard("hj212", 0, "'##' frame starts but no valid frame: wrong baud rate?")
    if parking.SYNC in data:
        return Heard("parking", 0, "A5 5A sync bytes but no valid frame: wrong baud rate?")
    return Heard("unknown", 0, f"{len(data)} bytes, no known frame")


def listen(port: str, setting: SerialSetting, seconds: float) -> bytes:
    """Capture what a serial line carries for `seconds`."""
    import serial

    try:
        with serial.Serial(port, setting.baudrate, parity=setting.parity, bytesize=8,
                           stopbits=1, timeout=0.1) as line:
            data = bytearray()
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                data += line.read(4096)
            return bytes(data)
    except serial.SerialException as exc:
        raise ProvisionError(f"cannot open serial port {port}: {exc}",
                             "check the device path and that no other program holds it") from None


def listen_all(port: str, seconds: float, settings: Sequence[SerialSetting] | None = None,
               progress: Progress | None = None) -> tuple[SerialSetting, Heard] | None:
    """Listen at each serial setting until a known protocol decodes; None if none did."""
    for setting in settings or [SerialSetting(b, p) for b in BAUDS for p in PARITIES]:
        if progress:
            progress(f"listening at {setting}")
        heard = recognise(listen(port, setting, seconds))
        if heard.frames:
            return setting, heard
    return None
