"""The one small adapter between CityGate and pymodbus (3.x): connect, read, classify failures.

Everything pymodbus-specific lives here so a pymodbus upgrade touches one file. The bus that
owns a link sends one request at a time, so per-device timeout and retries can be set on the
shared transaction manager just before each request.

What pymodbus 3.16 does and does not do for us (verified against its source, see
docs/elevators.md "Bus behaviour"):
- `TransactionManager.execute` empties its own receive buffer (`recv_buffer = b""`) before each
  attempt, but bytes still queued in the OS driver are read *after* the request goes out and
  are glued in front of the answer. So the link also discards the serial driver's input queue
  (`reset_input_buffer`, i.e. tcflush) before each request and counts what it threw away.
- The async RTU client does not keep the 3.5-character silent interval between frames (only
  the sync client sets an inter-byte timeout); its framer finds frames by hunting for a valid
  CRC instead. The link therefore waits `inter_frame_gap` after the end of each exchange.
- After `retries + 3` unanswered requests pymodbus closes a TCP connection ("CLOSING
  CONNECTION"), which would punish the healthy units behind a gateway for one dead unit. The
  bus keeps per-device health itself, so the link resets that counter before each request.
- A serial port that vanishes (USB adapter unplugged) makes pyserial raise; the transport
  closes and `execute` tries to reconnect by itself on the next request, which reopens the
  path once it exists again. The link reports "io" in between.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from devices.modbus.codec import Table

# pymodbus logs every timeout at ERROR; the bus logs once per state change and counts the rest.
logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

ILLEGAL_DATA_ADDRESS = 2  # Modbus exception code: the device rejects (part of) the address range


class ModbusReadError(Exception):
    """A read that produced no value; `kind` is "timeout", "exception", or "io"."""

    def __init__(self, kind: str, detail: str, exception_code: int | None = None) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.exception_code = exception_code


class ModbusLink:
    """A Modbus TCP connection or RTU serial port, opened by `open()` and closed by `close()`."""

    def __init__(self, client: Any, describe: str, inter_frame_gap: float = 0.0) -> None:
        self._client = client
        self.describe = describe
        self.inter_frame_gap = inter_frame_gap  # seconds of silence kept between frames
        self._quiet_from = 0.0  # monotonic time the line went quiet after the last exchange
        self.counters = {"flushed_bytes": 0, "gap_waits": 0}

    @classmethod
    def tcp(cls, host: str, port: int) -> ModbusLink:
        """A link to a Modbus TCP endpoint."""
        from pymodbus.client import AsyncModbusTcpClient

        client = AsyncModbusTcpClient(host, port=port, timeout=1.0, retries=0,
                                      reconnect_delay=0.5, reconnect_delay_max=30)
        return cls(client, f"{host}:{port}")

    @classmethod
    def rtu(cls, port: str, baudrate: int, parity: str, bytesize: int,
            stopbits: int, inter_frame_gap: float = 0.0) -> ModbusLink:
        """A link over an RS-485 serial port speaking Modbus RTU."""
        from pymodbus.client import AsyncModbusSerialClient

        client = AsyncModbusSerialClient(port, baudrate=baudrate, parity=parity,
                                         bytesize=bytesize, stopbits=stopbits, timeout=1.0,
                                         retries=0, reconnect_delay=0.5, reconnect_delay_max=30)
        return cls(client, f"{port} {baudrate} {bytesize}{parity}{stopbits}", inter_frame_gap)

    @property
    def connected(self) -> bool:
        """True while the transport is up."""
        return bool(self._client.connected)

    async def open(self) -> bool:
        """Connect; return False (not raise) when the endpoint is unreachable."""
        try:
            return bool(await self._client.connect())
        except OSError:
            return False
        except Exception:  # pyserial's SerialException is an OSError subclass; be safe anyway
            return False

    def flush_input(self) -> int:
        """Discard everything received but not yet answered; return the bytes dropped."""
        ctx = self._client.ctx
        dropped = len(ctx.recv_buffer)
        ctx.recv_buffer = b""
        serial = getattr(ctx.transport, "sync_serial", None)
        if serial is not None:
            with contextlib.suppress(Exception):  # a vanished port: the read reports it
                dropped += int(serial.in_waiting)
                serial.reset_input_buffer()
        self.counters["flushed_bytes"] += dropped
        return dropped

    async def _keep_gap(self) -> None:
        wait = self._quiet_from + self.inter_frame_gap - time.monotonic()
        if wait > 0:
            self.counters["gap_waits"] += 1
            await asyncio.sleep(wait)

    async def read(self, table: Table, start: int, count: int, unit: int,
                   timeout: float, retries: int) -> list[int]:
        """Read `count` registers/bits from `unit`; raise ModbusReadError when no value came."""
        from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

        ctx = self._client.ctx
        ctx.comm_params.timeout_connect = timeout
        ctx.retries = retries
        ctx.count_until_disconnect = ctx.max_until_disconnect  # health is the bus's business
        call = {
            Table.HOLDING: self._client.read_holding_registers,
            Table.INPUT: self._client.read_input_registers,
            Table.COIL: self._client.read_coils,
            Table.DISCRETE: self._client.read_discrete_inputs,
        }[table]
        await self._keep_gap()
        self.flush_input()
        try:
            rr = await call(start, count=count, device_id=unit)
        except ModbusIOException as exc:
            raise ModbusReadError("timeout", str(exc).splitlines()[0][:200]) from None
        except (ConnectionException, OSError) as exc:
            raise ModbusReadError("io", str(exc)[:200]) from None
        except ModbusException as exc:  # e.g. a garbled frame pymodbus could not decode
            raise ModbusReadError("io", str(exc)[:200]) from None
        finally:
            self._quiet_from = time.monotonic()
        if rr.isError():
            code = getattr(rr, "exception_code", None)
            raise ModbusReadError("exception", f"exception code {code}", code)
        data = rr.bits[:count] if table.is_bits else rr.registers
        if len(data) < count:
            raise ModbusReadError("io", f"short answer: {len(data)} of {count}")
        return [int(v) for v in data]

    async def write(self, function: int, address: int, words: list[int], unit: int,
                    timeout: float) -> None:
        """Write with function 5, 6, 15 or 16; raise ModbusReadError when it was not confirmed.

        Never retried here: a write whose answer was lost may have been applied, and the
        caller reads the point back to find out.
        """
        from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

        ctx = self._client.ctx
        ctx.comm_params.timeout_connect = timeout
        ctx.retries = 0
        ctx.count_until_disconnect = ctx.max_until_disconnect
        c = self._client
        call = {5: lambda: c.write_coil(address, bool(words[0]), device_id=unit),
                6: lambda: c.write_register(address, words[0], device_id=unit),
                15: lambda: c.write_coils(address, [bool(w) for w in words], device_id=unit),
                16: lambda: c.write_registers(address, words, device_id=unit)}[function]
        await self._keep_gap()
        self.flush_input()
        try:
            rr = await call()
        except ModbusIOException as exc:
            raise ModbusReadError("timeout", str(exc).splitlines()[0][:200]) from None
        except (ConnectionException, OSError, ModbusException) as exc:
            raise ModbusReadError("io", str(exc)[:200]) from None
        finally:
            self._quiet_from = time.monotonic()
        if rr.isError():
            code = getattr(rr, "exception_code", None)
            raise ModbusReadError("exception", f"exception code {code}", code)

    def close(self) -> None:
        """Close the transport (idempotent)."""
        with contextlib.suppress(Exception):
            self._client.close()
