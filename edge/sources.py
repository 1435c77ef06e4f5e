"""Which code runs each bus type: every source takes its bus config, its devices and a sink.

A source is an object with `async run()` (until cancelled), a `counters` dict for the health
message and a `progress` monotonic timestamp for the watchdog. Sources are imported lazily so
a gateway without parking sensors never imports the CoAP stack.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Protocol

from devices.model import Event, Reading
from edge.config import DeviceSection

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
    """Construct the source for a configured bus."""
    module, _, cls = SOURCES[bus.type].partition(":")
    factory = getattr(importlib.import_module(module), cls)
    source: Source = factory(bus, devices, sink)
    return source
