"""Lifts at the collector: daily trip/fault statistics, risk ranking and a live event stream.

Wiring (collector/features.py): `install(app, dependencies)` includes the router behind the
readers' token check and returns the event stream, whose `on_stored` the feature's adapter
calls. No tables of its own: everything is computed from `readings` and `events`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI

from collector.elevators.api import router
from collector.elevators.stats import Risk, rank, risk_of, trips_per_day
from collector.elevators.stream import EventStream


def install(app: FastAPI, dependencies: Sequence[Any] = ()) -> EventStream:
    """Add the lift routes to the app; return the live event stream to feed."""
    stream = EventStream()
    app.state.event_stream = stream
    app.include_router(router, dependencies=list(dependencies))
    return stream


__all__ = ["EventStream", "Risk", "install", "rank", "risk_of", "router", "trips_per_day"]
