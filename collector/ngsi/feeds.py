"""Live feeds: what changed in a committed batch, SSE streams with filters.

`changes` is pure: from envelopes to (entity id, changed attributes) and to stream items.
The stored hook only computes these and hands them over without blocking; entity building,
matching and delivery happen in the hub-feed worker (collector.ngsi.worker).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from collector.broadcast import DROPPED, HEARTBEAT, Broadcast, updates
from collector.ngsi import model
from collector.params import SSE_RESPONSES
from collector.store import Accepted
from devices.contract import DataEnvelope, EventsEnvelope
from devices.hj212.normalise import Interval, split_series_id


@dataclass
class Topology:
    """Where devices are: their kind, environment site and parking zone (for routing/filters)."""

    kind: dict[str, str] = field(default_factory=dict)
    site: dict[str, str] = field(default_factory=dict)
    zone: dict[str, str] = field(default_factory=dict)

    def place(self, device: str) -> dict[str, str | None]:
        """kind, site and zone of a device (series ids map to their device)."""
        base, _ = split_series_id(device)
        return {"kind": self.kind.get(base) or self.kind.get(device),
                "site": self.site.get(base), "zone": self.zone.get(base)}


Change = tuple[str, frozenset[str]]  # entity id, attribute names
_ATTRS: dict[str, str] = {"battery_mv": "batteryLevel"}  # quantity -> Device attribute name


def _attr(quantity: str) -> str:
    name = _ATTRS.get(quantity)
    if name is None:
        name = model.camel(quantity)
        if len(_ATTRS) < 10_000:  # quantity names are bounded by the contract, not by count
            _ATTRS[quantity] = name
    return name


def changes(items: Iterable[Accepted], topo: Topology) -> list[Change]:
    """Entities and attributes a committed batch changed."""
    out: dict[str, set[str]] = {}
    attr = _ATTRS.get
    for a in items:
        env = a.envelope
        if isinstance(env, EventsEnvelope):
            for e in env.events:
                out.setdefault(model.urn("Device", e.device), set()).add("deviceState")
            continue
        for r in env.readings:
            base, interval = split_series_id(r.device)
            dev = out.setdefault(model.urn("Device", r.device), {"dateLastValueReported"})
            dev.update([attr(q) or _attr(q) for q in r.values])
            site = topo.site.get(base)
            if site and interval is Interval.REALTIME:
                attrs = {model.AIR_ATTRS[q][0] for q in r.values if q in model.AIR_ATTRS}
                out.setdefault(model.urn("AirQualityObserved", site), set()).update(
                    attrs | {"dateObserved"})
            if "occupied" in r.values and base in topo.zone:
                out.setdefault(model.urn("ParkingSpot", base), set()).add("status")
                out.setdefault(model.urn("OnStreetParking", topo.zone[base]), set()).add(
                    "availableSpotNumber")
    return [(k, frozenset(v)) for k, v in out.items()]


def stream_items(items: Iterable[Accepted], topo: Topology) -> list[tuple[str, dict[str, Any]]]:
    """(channel, item) for the readings and events streams."""
    out: list[tuple[str, dict[str, Any]]] = []
    for a in items:
        env = a.envelope
        if isinstance(env, DataEnvelope):
            for r in env.readings:
                out.append(("readings", {"device": r.device, "gateway": a.gateway,
                                         "observedAt": model.iso(r.ts), "values": r.values,
                                         "quality": r.q, "replay": env.replay,
                                         **topo.place(r.device)}))
        else:
            for e in env.events:
                out.append(("events", {"device": e.device, "gateway": a.gateway,
                                       "observedAt": model.iso(e.ts), "kind": e.kind,
                                       "action": e.action, "severity": e.severity,
                                       "code": e.code, "message": e.message,
                                       "place": topo.place(e.device)}))
    return out


def matches(item: Mapping[str, Any], filters: Mapping[str, str | None]) -> bool:
    """Does a stream item pass the kind/site/zone/device filters (None = any)."""
    place = item.get("place") or item
    for key, want in filters.items():
        if want is None:
            continue
        if key == "device":
            got = item.get("device")
        elif key == "kind":
            got = item.get("kind") if "action" in item else place.get("kind")
        else:
            got = place.get(key)
        if got != want:
            return False
    return True


class FeedBus:
    """Readings and events fanned out to SSE listeners (one Broadcast per channel)."""

    def __init__(self, maxsize: int = 1000) -> None:
        self.channels = {"readings": Broadcast(maxsize), "events": Broadcast(maxsize)}

    def publish(self, channel: str, item: dict[str, Any]) -> None:
        """Hand an item to the channel's listeners (never blocks)."""
        self.channels[channel].publish(item)

    def listening(self) -> bool:
        """Is any stream open? (Items are built for listeners only.)"""
        return any(bus.subscribers for bus in self.channels.values())


PING_S = 15.0


async def sse(bus: Broadcast, request: Request,
              filters: Mapping[str, str | None]) -> AsyncIterator[bytes]:
    """Server-sent events of a bus, filtered; a comment line every PING_S keeps proxies open.
    A listener too slow to keep up gets `event: overflow` and the stream ends (reconnect)."""
    with bus.subscribe(lambda item: matches(item, filters)) as sub:
        yield b": connected\n\n"
        async for item in updates(sub, request, PING_S):
            if item is HEARTBEAT:
                yield b": ping\n\n"
            elif item is DROPPED:
                yield b"event: overflow\ndata: {}\n\n"
            else:
                yield b"data: " + orjson.dumps(item) + b"\n\n"


stream_router = APIRouter(prefix="/api/v1/stream", tags=["live feeds"])
KindQ = Annotated[str | None, Query(max_length=128, description="device kind (readings) or "
                                     "event/incident kind")]
SiteQ = Annotated[str | None, Query(max_length=128, description="environment site id")]
ZoneQ = Annotated[str | None, Query(max_length=64, description="parking zone id")]
DeviceQ = Annotated[str | None, Query(max_length=128, description="one device id")]


def _stream(request: Request, channel: str, filters: dict[str, str | None]) -> \
        StreamingResponse:
    feeds: FeedBus = request.app.state.ngsi_feeds
    if channel == "incidents":
        desk = getattr(request.app.state, "alarms", None)
        bus = desk.engine.bus if desk is not None else feeds.channels["events"]
    else:
        bus = feeds.channels[channel]
    return StreamingResponse(sse(bus, request, filters), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store"})


@stream_router.get("/readings", response_class=StreamingResponse, responses=SSE_RESPONSES)
def stream_readings(request: Request, kind: KindQ = None, site: SiteQ = None,
                    zone: ZoneQ = None, device: DeviceQ = None) -> StreamingResponse:
    """Live readings as SSE, filtered by device kind, site, parking zone or device."""
    return _stream(request, "readings", {"kind": kind, "site": site, "zone": zone,
                                         "device": device})


@stream_router.get("/events", response_class=StreamingResponse, responses=SSE_RESPONSES)
def stream_events(request: Request, kind: KindQ = None, site: SiteQ = None,
                  zone: ZoneQ = None, device: DeviceQ = None) -> StreamingResponse:
    """Live events (faults raised/cleared, alarms) as SSE, filtered by event kind and place."""
    return _stream(request, "events", {"kind": kind, "site": site, "zone": zone,
                                       "device": device})


@stream_router.get("/incidents", response_class=StreamingResponse, responses=SSE_RESPONSES)
def stream_incidents(request: Request, kind: KindQ = None, site: SiteQ = None,
                     device: DeviceQ = None) -> StreamingResponse:
    """Live incident changes as SSE (from the alarm engine), filtered by kind, site, device."""
    return _stream(request, "incidents", {"kind": kind, "site": site, "device": device})

