"""Lift controller simulator: a motion model per unit id, served as Modbus registers.

The model is pure (state advanced by `advance(now)`); `serve_tcp` / `serve_rtu` put many
units behind one pymodbus endpoint, and every read refreshes the registers from the model,
so what the gateway reads is what the model holds at that instant.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, TextIO

from devices.modbus.codec import Table
from devices.model import Value
from devices.profiles import Profile, load_profile
from devices.sim.registers import encode_registers, register_span

if TYPE_CHECKING:
    from devices.sim.scenarios import ScenarioSchedule

FLOOR_TIME = 2.5  # seconds per floor at rated speed
RATED_SPEED = 1.0  # m/s


def idle_values(unit: int) -> dict[str, Value]:
    """A deterministic parked state for a unit (used by static simulations and tests)."""
    return {
        "service_mode": 1,
        "car_running": False,
        "direction": 0,
        "floor": 1 + unit % 17,
        "door_zone": True,
        "door_closed": unit % 2 == 0,
        "passenger_present": unit % 3 == 0,
        "fault_code": 0,
        "trip_count": 10_000 + unit * 137,
        "running_hours": 1234.5 + unit,
        "speed": 0.0,
        "power_supply": 0,
        "door_lock": unit % 2 == 0,
        "safety_circuit": True,
        "alarm_button": False,
        "machine_room_temp": 21.5 + unit % 5,
        "load_percent": 0.0 if unit % 3 else 12.5,
        "brake_open": False,
        "door_cycles": 20_000 + unit * 311,
        "overload": False,
        "home_floor": 1,
    }


@dataclass
class ElevatorModel:
    """One lift: phases of doors open, doors closed, travel; or frozen when `static`."""

    unit: int
    floors: int = 18
    static: bool = False
    seed: int | None = None
    values: dict[str, Value] = field(default_factory=dict)
    overrides: dict[str, Value] = field(default_factory=dict)  # scenario-forced values
    _phase: str = "doors_open"
    _until: float = 0.0
    _target: int = 1
    _rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed if self.seed is not None else self.unit)
        if not self.values:
            self.values = idle_values(self.unit)

    def snapshot(self, now: float) -> dict[str, Value]:
        """Advance the model to `now` and return the values a controller would show."""
        if not self.static:
            self.advance(now)
        return {**self.values, **self.overrides}

    def advance(self, now: float) -> None:
        """Run the motion model's phases up to `now`."""
        guard = 0
        while now >= self._until and guard < 100:
            guard += 1
            self._next_phase(now if self._until == 0.0 else self._until)
        if self._phase == "moving":
            self._move(now)

    def _next_phase(self, t: float) -> None:
        v = self.values
        if self._phase == "doors_open":
            self._phase, self._until = "doors_closed", t + 1.0
            v.update(door_closed=True, door_lock=True)
            v["door_cycles"] = int(v["door_cycles"] or 0) + 1
        elif self._phase == "doors_closed":
            self._start_trip(t)
        elif self._phase == "moving":
            self._arrive(t)
        else:  # idle with doors closed, or just arrived
            self._phase, self._until = "doors_open", t + self._rng.uniform(3, 8)
            v.update(door_closed=False, door_lock=False,
                     passenger_present=self._rng.random() < 0.6)

    def _start_trip(self, t: float) -> None:
        v = self.values
        floor = int(v["floor"] or 1)
        if self._rng.random() < 0.25:
            self._phase, self._until = "idle", t + self._rng.uniform(5, 20)
            v["passenger_present"] = False
            return
        target = floor
        while target == floor:
            target = self._rng.randint(1, self.floors)
        self._target, self._start, self._from = target, t, floor
        self._phase, self._until = "moving", t + abs(target - floor) * FLOOR_TIME
        v.update(car_running=True, brake_open=True, direction=1 if target > floor else 2)

    def _move(self, now: float) -> None:
        v = self.values
        travelled = (now - self._start) / FLOOR_TIME
        step = 1 if self._target > self._from else -1
        v["floor"] = self._from + step * int(travelled)
        frac = travelled - int(travelled)
        v["door_zone"] = frac < 0.1 or frac > 0.9
        v["speed"] = RATED_SPEED

    def _arrive(self, t: float) -> None:
        v = self.values
        v.update(floor=self._target, car_running=False, brake_open=False, direction=0,
                 speed=0.0, door_zone=True)
        v["trip_count"] = int(v["trip_count"] or 0) + 1
        v["running_hours"] = round(float(v["running_hours"] or 0.0) + 0.1, 1)
        self._phase, self._until = "arrived", t + 0.5


@dataclass(frozen=True, slots=True)
class UnitBehaviour:
    """How one simulated controller misbehaves on the bus (all off by default)."""

    dead: bool = False  # never answers
    delay: float = 0.0  # answers this many seconds late
    reject: tuple[int, int] | None = None  # exception 2 for reads touching these addresses

    def rejects(self, start: int, count: int) -> bool:
        """Whether a read of `count` registers from `start` touches the rejected range."""
        if self.reject is None:
            return False
        lo, hi = self.reject
        return start <= hi and start + count - 1 >= lo


@dataclass
class ElevatorBank:
    """Many lifts behind one Modbus endpoint, keyed by unit id."""

    profile: Profile
    models: dict[int, ElevatorModel]
    clock: Callable[[], float] = field(default_factory=lambda: asyncio.get_running_loop().time)
    reads: int = 0
    writes: int = 0  # write requests applied to a model
    # Counting mode (chaos tests): every read of a unit bumps its trip counter, so each reading
    # is unique, and "<monotonic s> <unit> <value>" is appended to `count_log` before answering.
    count_log: TextIO | None = None
    schedule: ScenarioSchedule | None = None  # scripted faults, times relative to `started`
    started: float | None = None
    behaviours: dict[int, UnitBehaviour] = field(default_factory=dict)
    _requests: int = 0  # requests seen; a slow answer overtaken by a newer one is dropped

    def registers(self, unit: int, table: Table, now: float) -> dict[int, int]:
        """Encoded registers of one table of one unit at `now` (scenarios applied first)."""
        if self.schedule is not None:
            if self.started is None:
                self.started = now
            self.schedule.apply(self.models, now - self.started)
        return encode_registers(self.profile, self.models[unit].snapshot(now)).get(table, {})

    async def on_access(self, unit: int, function_code: int, start_address: int,
                        address: int, count: int, current: list[int],
                        set_values: Any) -> Any:
        """pymodbus action hook: refresh the block from the model before it is answered; a
        write (function 6 or 16) to writable points goes into the model."""
        if function_code in (6, 16):  # pymodbus also calls without values before it writes
            return self.on_write(unit, address, list(set_values)) if set_values else None
        table = {3: Table.HOLDING, 4: Table.INPUT}.get(function_code)
        if table is None:
            return None
        self.reads += 1
        self._requests += 1
        behaviour = self.behaviours.get(unit, UnitBehaviour())
        if self.schedule is not None:  # before the silence check: a silent unit must recover
            now = self.clock()
            self.started = now if self.started is None else self.started
            self.schedule.apply(self.models, now - self.started)
        silent = self.schedule is not None and unit in self.schedule.silent_units()
        if silent or behaviour.dead:
            from pymodbus.exceptions import NoSuchIdException

            raise NoSuchIdException(f"unit {unit} is dead")  # no answer at all
        if behaviour.rejects(address, count):
            from pymodbus.constants import ExcCodes

            return ExcCodes.ILLEGAL_ADDRESS
        if behaviour.delay > 0:
            await self._late(unit, behaviour.delay)
        if self.count_log is not None and table is Table.HOLDING:
            model = self.models[unit]
            model.values["trip_count"] = int(model.values["trip_count"] or 0) + 1
            self.count_log.write(f"{time.monotonic():.6f} {unit} {model.values['trip_count']}\n")
            self.count_log.flush()
        for addr, word in self.registers(unit, table, self.clock()).items():
            i = addr - start_address
            if 0 <= i < len(current):
                current[i] = word
        return None

    def on_write(self, unit: int, address: int, words: list[int]) -> Any:
        """Apply written holding registers to the model, as a controller would; exception 2
        (illegal data address) for registers that are not writable settings."""
        from pymodbus.constants import ExcCodes

        from devices.modbus.codec import CodecError, decode

        end = address + len(words)
        points = [p for p in self.profile.points if p.table is Table.HOLDING
                  and p.address < end and p.end > address]
        if not points or any(p.write is None or p.address < address or p.end > end
                             for p in points):
            return ExcCodes.ILLEGAL_ADDRESS
        model = self.models[unit]
        try:
            for p in points:
                model.values[p.quantity] = decode(p, words[p.address - address:
                                                         p.end - address])
        except CodecError:
            return ExcCodes.ILLEGAL_VALUE
        self.writes += 1
        return None

    async def _late(self, unit: int, delay: float) -> None:
        """Wait before answering; drop the answer if another request came in meanwhile.

        pymodbus' request handler keeps one `last_pdu` per connection and reads it again after
        this hook returns: had a newer request arrived during the wait, the late answer would
        go out under the newer request's unit id (corrupting another unit's reading). On a
        real half-duplex line a late answer that collides with the next request is lost too.
        """
        seen = self._requests
        await asyncio.sleep(delay)
        if self._requests != seen:
            from pymodbus.exceptions import NoSuchIdException

            raise NoSuchIdException(f"unit {unit}: late answer overtaken by a newer request")

    def sim_devices(self) -> list[Any]:
        """pymodbus SimDevice objects for every unit."""
        from pymodbus.simulator import DataType, SimData, SimDevice

        def block(table: Table) -> list[SimData]:
            first, count = register_span(self.profile, table)
            if count == 0:
                return [SimData(address=0, count=1, values=0, datatype=DataType.REGISTERS)]
            return [SimData(address=first, count=count, values=0, datatype=DataType.REGISTERS)]

        bits = [SimData(address=0, count=16, values=False, datatype=DataType.BITS)]
        return [
            SimDevice(
                id=unit,
                simdata=(list(bits), list(bits), block(Table.HOLDING), block(Table.INPUT)),
                action=partial(self.on_access, unit),
            )
            for unit in sorted(self.models)
        ]


def make_bank(units: list[int], profile: str = "elevator-gbt24476", *, static: bool = False,
              floors: int = 18, seed: int | None = None) -> ElevatorBank:
    """Build a bank of simulated lifts."""
    models = {
        u: ElevatorModel(u, floors=floors, static=static,
                         seed=None if seed is None else seed + u)
        for u in units
    }
    return ElevatorBank(load_profile(profile), models)


async def serve_tcp(bank: ElevatorBank, host: str, port: int,
                    started: asyncio.Event | None = None) -> None:
    """Serve the bank over Modbus TCP until cancelled."""
    from pymodbus.server import ModbusTcpServer

    server = ModbusTcpServer(bank.sim_devices(), address=(host, port),
                             ignore_missing_devices=True)
    await _serve(server, started)


async def serve_rtu(bank: ElevatorBank, port: str, baudrate: int = 9600,
                    started: asyncio.Event | None = None) -> None:
    """Serve the bank over Modbus RTU on a serial port (or a pseudo-terminal) until cancelled."""
    from pymodbus.server import ModbusSerialServer

    server = ModbusSerialServer(bank.sim_devices(), port=port, baudrate=baudrate,
                                ignore_missing_devices=True)
    await _serve(server, started)


async def _serve(server: Any, started: asyncio.Event | None) -> None:
    await server.serve_forever(background=True)
    if started is not None:
        started.set()
    try:
        await asyncio.Event().wait()
    finally:
        with contextlib.suppress(Exception):
            await server.shutdown()


def parse_value(text: str) -> Value:
    """A control-channel value: true/false, an integer or a number."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    try:
        return int(text)
    except ValueError:
        return float(text)


def control(banks: list[ElevatorBank], line: str) -> str:
    """Apply one control command to every bank; return the reply line.

    `set UNIT QUANTITY VALUE` forces a value (as a scenario would), `clear UNIT [QUANTITY]`
    removes forced values. The reply is `ok <epoch seconds>` taken after the change, so a
    caller can time what follows from the instant the registers changed.
    """
    parts = line.split()
    try:
        if parts[0] == "set" and len(parts) == 4:
            for bank in banks:
                bank.models[int(parts[1])].overrides[parts[2]] = parse_value(parts[3])
        elif parts[0] == "clear" and len(parts) in (2, 3):
            for bank in banks:
                overrides = bank.models[int(parts[1])].overrides
                if len(parts) == 3:
                    overrides.pop(parts[2], None)
                else:
                    overrides.clear()
        else:
            return "error: write `set UNIT QUANTITY VALUE` or `clear UNIT [QUANTITY]`"
    except (IndexError, KeyError, ValueError) as exc:
        return f"error: {exc!r}"
    return f"ok {time.time():.6f}"


async def serve_control(banks: list[ElevatorBank], path: str) -> None:
    """Answer control commands (one per line) on a Unix socket until cancelled."""
    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                writer.write((control(banks, line.decode(errors="replace")) + "\n").encode())
                await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_unix_server(session, path)
    async with server:
        await server.serve_forever()
