"""REST routes for lifts: daily statistics, the risk ranking and the live event stream."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from collector.api import StoreDep
from collector.broadcast import DROPPED, HEARTBEAT, updates
from collector.clock import iso, now_ms
from collector.elevators import queries
from collector.elevators.stats import (
    DAY_MS,
    ENTRAPMENT,
    days_between,
    faults_per_day,
    rank,
    risk_of,
    trips_per_day,
    usage_scaled,
)
from collector.elevators.stream import EventStream
from collector.params import SSE_RESPONSES, DeviceIdPath
from devices.contract import DEVICE_ID_RE

KEEPALIVE = 15.0  # seconds between SSE comments on a quiet stream (proxies drop idle streams)


class DayStats(BaseModel):
    """One UTC day of one lift."""

    date: str
    trips: int
    faults: dict[str, int]
    entrapments: int


class StatsOut(BaseModel):
    """Trips and raised faults per day of one lift."""

    device: str
    days: int
    since: str | None
    until: str | None
    totals: DayStats
    per_day: list[DayStats]


class RiskOut(BaseModel):
    """A lift's risk score and the plain-words reasons for it."""

    device: str
    score: float
    faults_30d: int
    entrapments_30d: int
    door_faults_30d: int
    faults_last_7d: int
    faults_previous_23d: int
    explanation: list[str]
    trips_30d: int = Field(description="trips in the last 30 days (from trip_count)")
    score_per_1000_trips: float = Field(
        description="score x 1000 / trips, with at least 1000 trips assumed so that a lift "
                    "barely used is not ranked on a handful of trips")
    site: str = Field(description="the lift's site ('' when not configured)")
    district: str = Field(description="the site's district ('' when not known)")


def get_stream(request: Request) -> EventStream:
    """The event stream attached to the app by `install`."""
    stream: EventStream = request.app.state.event_stream
    return stream


StreamDep = Annotated[EventStream, Depends(get_stream)]
router = APIRouter(prefix="/api/v1", tags=["elevators"])


def _lift(store: Any, device_id: str) -> None:
    if not DEVICE_ID_RE.fullmatch(device_id):
        raise HTTPException(422, "device id has characters a device id cannot have")
    dev = store.device(device_id)
    if dev is None:
        raise HTTPException(404, f"no device {device_id!r}")
    if dev["kind"] != "elevator":
        raise HTTPException(404, f"device {device_id!r} is a {dev['kind']}, not a lift")


@router.get("/elevators/risk")
def risk(
    request: Request, store: StoreDep,
    limit: Annotated[int, Query(ge=1, le=10_000, description="at most this many lifts")] = 100,
    district: Annotated[str | None, Query(max_length=128, description="only lifts of this "
                                                                      "district")] = None,
    rank_by: Annotated[Literal["score", "per_1000_trips"], Query(
        description="score: the 30-day fault score; per_1000_trips: the score per 1000 trips "
                    "(usage-scaled: a busy lift's faults weigh less than an idle one's)")]
    = "score",
) -> list[RiskOut]:
    """Lifts ranked by risk from their last 30 days of faults, each score explained, with the
    trips that scale it, per district."""
    from collector.cityview.places import Places

    now = now_ms()
    events = queries.raised_events(store, now - 30 * DAY_MS, now + 1)
    by_device: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        by_device.setdefault(e["device_id"], []).append(e)
    places = Places(request.app.state, store)
    lifts = [(d["device_id"], places.lift(d["device_id"], d["gateway_id"]))
             for d in store.devices(kind="elevator")]
    if district is not None:
        lifts = [(d, p) for d, p in lifts if p.district == district]
    ranked = rank(risk_of(d, by_device.get(d, []), now) for d, _ in lifts)
    if rank_by == "score":  # trips are read only for the lifts returned
        ranked = ranked[:limit]
    where = dict(lifts)
    trips = queries.trip_samples_many(store, [r.device for r in ranked], now - 30 * DAY_MS,
                                      now + 1)
    out = []
    for r in ranked:
        baseline, samples = trips[r.device]
        usage = usage_scaled(r, sum(trips_per_day(samples, baseline).values()))
        place = where[r.device]
        out.append(RiskOut(device=r.device, score=r.score, faults_30d=r.faults,
                           entrapments_30d=r.entrapments, door_faults_30d=r.door_faults,
                           faults_last_7d=r.last_7_days,
                           faults_previous_23d=r.previous_23_days,
                           explanation=[*r.explanation, usage.words], trips_30d=usage.trips,
                           score_per_1000_trips=usage.per_1000, site=place.site,
                           district=place.district))
    if rank_by == "per_1000_trips":
        out.sort(key=lambda o: (-o.score_per_1000_trips, -o.entrapments_30d, o.device))
    return out[:limit]


@router.get("/elevators/{device_id}/stats")
def stats(device_id: DeviceIdPath, store: StoreDep,
          days: Annotated[int, Query(ge=1, le=366, description="whole UTC days back, today "
                                                               "included")] = 30) -> StatsOut:
    """Trips (from trip_count increases), faults per kind and entrapments per UTC day."""
    _lift(store, device_id)
    until = now_ms() + 1
    since = until - until % DAY_MS - (days - 1) * DAY_MS  # whole UTC days, today included
    baseline, samples = queries.trip_samples(store, device_id, since, until)
    trips = trips_per_day(samples, baseline)
    faults = faults_per_day(queries.raised_events(store, since, until, device_id))
    per_day = [DayStats(date=d, trips=trips.get(d, 0), faults=dict(faults.get(d, {})),
                        entrapments=faults.get(d, Counter())[ENTRAPMENT])
               for d in days_between(since, until)]
    total: Counter[str] = Counter()
    for day in per_day:
        total.update(day.faults)
    totals = DayStats(date="total", trips=sum(d.trips for d in per_day), faults=dict(total),
                      entrapments=sum(d.entrapments for d in per_day))
    return StatsOut(device=device_id, days=days, since=iso(since), until=iso(until),
                    totals=totals, per_day=per_day)


@router.get("/events/stream", response_class=StreamingResponse, responses=SSE_RESPONSES)
async def event_stream(
    request: Request, stream: StreamDep,
    device: Annotated[str | None, Query(max_length=128, description="only this device")] = None,
    kind: Annotated[str | None, Query(max_length=128, description="only this event kind")]
    = None,
) -> StreamingResponse:
    """Server-sent events: every event as the collector commits it (filters: device, kind)."""
    sub = stream.subscribe(device, kind)

    async def frames() -> AsyncIterator[bytes]:
        try:
            yield b": connected\n\n"
            async for event in updates(sub, request, KEEPALIVE):
                if event is HEARTBEAT:
                    yield b": keep-alive\n\n"
                elif event is DROPPED:  # too slow: say so and end; the client reconnects
                    yield b"event: overflow\ndata: {}\n\n"
                else:
                    data = {**event, "observed_at": iso(event["ts"])}
                    yield (f"id: {event['id']}\nevent: {event['kind']}\n".encode()
                           + b"data: " + orjson.dumps(data) + b"\n\n")
        finally:
            stream.unsubscribe(sub)

    return StreamingResponse(frames(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
