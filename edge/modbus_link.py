"""The one small adapter between CityGate and pymodbus (3.x): connect, read, classify failures.

Everything pymodbus-specific lives here so a pymodbus upgrade touches one file. The bus that
owns a link sends one request at a time, so per-device timeout and retries can be set on the
shared transaction manager just before each request.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from devices.modbus.codec import Table

# pymodbus logs every timeout at ERROR; the bus logs once per state change and counts the rest.
logging.getLogger("pymodbus").setLevel(logging.CRITICAL)


class ModbusReadError(Exception):
    """A read that produced no value; `kind` is "timeout", "exception", or "io"."""

    def __init__(self, kind: str, detail: str, exception_code: int | None = None) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.exception_code = exception_code


class ModbusLink:
    """A Modbus TCP connection or RTU serial port, opened by `open()` and closed by `close()`."""

    def __init__(self, client: Any, describe: str) -> None:
        self._client = client
        self.describe = describe

    @classmethod
    def tcp(cls, host: str, port: int) -> ModbusLink:
        """A link to a Modbus TCP endpoint."""
        from pymodbus.client import AsyncModbusTcpClient

        client = AsyncModbusTcpClient(host, port=port, timeout=1.0, retries=0,
                                      reconnect_delay=0.5, reconnect_delay_max=30)
        return cls(client, f"{host}:{port}")

    @classmethod
    def rtu(cls, port: str, baudrate: int, parity: str, bytesize: int,
            stopbits: int) -> ModbusLink:
        """A link over an RS-485 serial port speaking Modbus RTU."""
        from pymodbus.client import AsyncModbusSerialClient

        client = AsyncModbusSerialClient(port, baudrate=baudrate, parity=parity,
                                         bytesize=bytesize, stopbits=stopbits, timeout=1.0,
                                         retries=0, reconnect_delay=0.5, reconnect_delay_max=30)
        return cls(client, f"{port} {baudrate} {bytesize}{parity}{stopbits}")

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

    async def read(self, table: Table, start: int, count: int, unit: int,
                   timeout: float, retries: int) -> list[int]:
        """Read `count` registers/bits from `unit`; raise ModbusReadError when no value came."""
        from pymodbus.exceptions import ConnectionException, ModbusIOException

        ctx = self._client.ctx
        ctx.comm_params.timeout_connect = timeout
        ctx.retries = retries
        call = {
            Table.HOLDING: self._client.read_holding_registers,
            Table.INPUT: self._client.read_input_registers,
            Table.COIL: self._client.read_coils,
            Table.DISCRETE: self._client.read_discrete_inputs,
        }[table]
        try:
            rr = await call(start, count=count, device_id=unit)
        except ModbusIOException as exc:
            raise ModbusReadError("timeout", str(exc).splitlines()[0][:200]) from None
        except (ConnectionException, OSError) as exc:
            raise ModbusReadError("io", str(exc)[:200]) from None
        if rr.isError():
            code = getattr(rr, "exception_code", None)
            raise ModbusReadError("exception", f"exception code {code}", code)
        data = rr.bits[:count] if table.is_bits else rr.registers
        if len(data) < count:
            raise ModbusReadError("io", f"short answer: {len(data)} of {count}")
        return [int(v) for v in data]

    def close(self) -> None:
        """Close the transport (idempotent)."""
        with contextlib.suppress(Exception):
            self._client.close()
