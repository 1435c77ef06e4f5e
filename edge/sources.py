"""Which code runs each bus type: every source takes its bus config, its devices and a sink.

A source is an object with `async run()` (until cancelled), a `counters` dict for the health
message and a `progress` monotonic timestamp for the watchdog. Sources are imported lazily so
a gateway without parking sensors never imports the CoAP stack.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Protocol

from devices import contract
from devices.model import Event, Reading
from edge.config import DeviceSection

log = logging.getLogger(__name__)

Sink = Callable[[Sequence[Reading | Event]], None]


class Source(Protocol):
    """What the agent needs of a bus.

    A polling source may also have `finish() -> bool`: stop after the read in progress (True
    when one is), so a graceful stop does not drop a value a device has already answered
    (ModbusBus). Event-driven sources have nothing in flight and are simply cancelled.
    """

    counters: dict[str, int]
    progress: float

    def run(self) -> Coroutine[Any, Any, None]:
        """Read the bus until cancelled."""


# bus type -> "module:Class"; the class is constructed as Class(bus_cfg, devices, sink)
SOURCES: dict[str, str] = {
    "modbus-tcp": "edge.bus:ModbusBus",
    "modbus-rtu": "edge.bus:ModbusBus",
    "hj212-serial": "edge.hj212_source:Hj212Source",
    "hj212-tcp": "edge.hj212_source:Hj212Source",
    "parking-serial": "edge.parking_source:ParkingSerialSource",
    "coap": "edge.parking_source:CoapSource",
}


def build_source(bus: Any, devices: Sequence[DeviceSection], sink: Sink) -> Source:
    """Construct the source for a configured bus, its items checked by a ContractGuard."""
    module, _, cls = SOURCES[bus.type].partition(":")
    factory = getattr(importlib.import_module(module), cls)
    guard = ContractGuard(sink, bus.name)
    source: Source = factory(bus, devices, guard)
    guard.counters = source.counters  # refusals reach the health message with the bus's own
    return source


MAX_LOGGED = 1000  # (device, reason) pairs logged once each; beyond, only counted


class ContractGuard:
    """The sink every source hands its items to: nothing the wire contract refuses reaches the
    outbox, so one bad value never makes a collector refuse its neighbours' envelope.

    A reading keeps its good values and loses only the bad ones (devices.contract.value_problem);
    a reading otherwise refused (its time, device id or flag) and a refused event are dropped.
    Each refusal is counted as `contract_refused` and `contract_refused_<reason>` and logged
    once per device and reason.
    """

    def __init__(self, sink: Sink, bus: str) -> None:
        self.sink = sink
        self.bus = bus
        self.counters: dict[str, int] = {}
        self._logged: set[tuple[str, str]] = set()

    def __call__(self, items: Sequence[Reading | Event]) -> None:
        """Check each item and pass on what a collector accepts."""
        passed = [kept for item in items if (kept := self.check(item)) is not None]
        if passed:
            self.sink(passed)

    def check(self, item: Reading | Event) -> Reading | Event | None:
        """The item as it may be sent (a reading without its bad values), or None."""
        if isinstance(item, Event):
            problem = contract.event_problem(item)
            if problem is not None:
                self._refuse(item.device, problem, "an event")
                return None
            return item
        problem = contract.reading_problem(item)
        if problem is None:
            return item
        good = {name: value for name, value in item.values.items()
                if not self._refused_value(item.device, name, value)}
        if len(good) < len(item.values):
            if not good:
                return None  # every value refused, each one counted
            item = dataclasses.replace(item, values=good)
            problem = contract.reading_problem(item)
        if problem is not None:
            self._refuse(item.device, problem, "a reading")
            return None
        return item

    def _refused_value(self, device: str, name: str, value: object) -> bool:
        problem = contract.value_problem(name, value)
        if problem is not None:
            self._refuse(device, problem, f"value {name!r}")
        return problem is not None

    def _refuse(self, device: str, problem: contract.Problem, what: str) -> None:
        reason, detail = problem
        # "contract_": the source's own counters share this dict ("refused" is a TCP count)
        self.counters["contract_refused"] = self.counters.get("contract_refused", 0) + 1
        key = f"contract_refused_{reason}"
        self.counters[key] = self.counters.get(key, 0) + 1
        if (device, reason) not in self._logged and len(self._logged) < MAX_LOGGED:
            self._logged.add((device, reason))
            log.warning("bus %s: device %s: dropped %s the collector would refuse (%s: %s);"
                        " counting further ones", self.bus, str(device)[:128], what, reason,
                        detail)
