"""Lifts at the collector: daily trip/fault statistics, risk ranking and a live event stream.

Wiring (collector/hub.py): call `install(hub, dependencies=_readers())` in `build_hub`; it
adds the stored-batch hook feeding the stream and includes the router behind the readers'
token check. No tables of its own: everything is computed from `readings` and `events`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from collector.elevators.api import router
from collector.elevators.stats import Risk, rank, risk_of, trips_per_day
from collector.elevators.stream import EventStream


def install(hub: Any, dependencies: Sequence[Any] = ()) -> EventStream:
    """Wire the lift features into a collector hub; return the event stream."""
    stream = EventStream()
    hub.stored_hooks.append(stream.on_stored)
    hub.app.state.event_stream = stream
    hub.app.include_router(router, dependencies=list(dependencies))
    return stream


__all__ = ["EventStream", "Risk", "install", "rank", "risk_of", "router", "trips_per_day"]
