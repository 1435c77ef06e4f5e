"""Public REST API of the data hub (FastAPI): models here are what integrators receive."""

from __future__ import annotations

import gc
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request, Response
from pydantic import BaseModel, Field

from collector import pages
from collector.auth import Role, require
from collector.clock import iso
from collector.memory import frozen
from collector.pages import page
from collector.params import DeviceIdPath, GatewayIdPath, install_error_shape, invalid, parse_time
from collector.store import Store, typed_value
from devices.contract import DEVICE_ID_RE, GATEWAY_ID_RE
from devices.process import process_figures
from devices.quantities import QUANTITIES

__all__ = ["create_app", "iso", "parse_time"]  # parse_time: one helper for every router


# --- public models ------------------------------------------------------------------------------

class HealthOut(BaseModel):
    """Collector health: database, broker link and ingest counters."""

    status: str
    reasons: list[str] = Field(default_factory=list, description="why it is degraded")
    database: str
    ingest: dict[str, Any]
    counts: dict[str, int]
    counts_estimated: list[str] = Field(
        default_factory=list, description="tables whose count is PostgreSQL's estimate "
        "(its statistics say 1,000,000 rows or more), not a count")
    features: dict[str, dict[str, dict[str, Any]]] = Field(
        default_factory=dict, description="failures of feature hooks and tasks: "
        "{feature: {hook: {failures, failing, last_error}}}; only hooks that ever failed")
    streams: dict[str, dict[str, int]] = Field(
        default_factory=dict, description="live SSE streams: items published, subscribers "
        "connected, subscribers dropped for being too slow")
    process: dict[str, Any] = Field(
        default_factory=dict, description="this process: CPU seconds, resident memory (bytes), "
        "threads, open files, bytes written, and the garbage collector's collections per "
        "generation, thresholds and objects frozen at start")


class GatewayOut(BaseModel):
    """A gateway and its state."""

    id: str
    state: str = Field(description="online, offline or unknown (from the retained state topic)")
    state_reason: str
    state_since: str | None
    last_seen: str | None
    version: str
    last_seq: int | None
    device_count: int
    health: dict[str, Any] | None
    clock: dict[str, Any] = Field(description="the gateway's clock as measured by the collector: "
                                  "offset_ms (gateway minus collector), measured_at, source "
                                  "(live or ahead) and wrong (its times are not used)")


class DeviceOut(BaseModel):
    """A field device."""

    id: str
    kind: str
    profile: str
    gateway: str
    last_seen: str | None


class LatestValue(BaseModel):
    """The latest value of one quantity."""

    value: Any
    unit: str
    observed_at: str
    quality: str


class LatestOut(BaseModel):
    """Latest value per quantity of a device."""

    device: str
    quantities: dict[str, LatestValue]


class ReadingOut(BaseModel):
    """One stored value."""

    quantity: str
    value: Any
    unit: str
    observed_at: str
    quality: str
    replayed: bool


class ReadingsOut(BaseModel):
    """A page of readings in time order."""

    device: str
    readings: list[ReadingOut]
    truncated: bool


# --- dependencies -------------------------------------------------------------------------------

def get_store(request: Request) -> Store:
    """The store attached to the app."""
    store: Store = request.app.state.store
    return store


StoreDep = Annotated[Store, Depends(get_store)]
# Data for people and downstream systems: every route needs a token (health stays open).
READ_ROLES = (Role.READER, Role.CREW, Role.TECHNICIAN, Role.OPS)
router = APIRouter(prefix="/api/v1", dependencies=[Depends(require(*READ_ROLES))])
public = APIRouter(prefix="/api/v1")


def _device_out(d: dict[str, Any]) -> DeviceOut:
    return DeviceOut(id=d["device_id"], kind=d["kind"], profile=d["profile"],
                     gateway=d["gateway_id"], last_seen=iso(d["last_seen"]))


def _require_device(store: Store, device_id: str) -> dict[str, Any]:
    if not DEVICE_ID_RE.fullmatch(device_id):
        raise invalid("path", "device_id", "has characters a device id cannot have", device_id)
    dev = store.device(device_id)
    if dev is None:
        raise HTTPException(404, f"no device {device_id!r}")
    return dev


def process_stats() -> dict[str, Any]:
    """This process's figures (as a gateway reports its own) and its garbage collector
    (collector.memory.settle_heap)."""
    return {**process_figures(), "gc_collections": [g["collections"] for g in gc.get_stats()],
            "gc_thresholds": list(gc.get_threshold()), "gc_frozen": frozen()}


@public.get("/health")
def health(request: Request, store: StoreDep) -> HealthOut:
    """Is the collector working: database reachable, broker connected, ingest counters."""
    ingest = request.app.state.ingest_stats()
    try:
        counts, estimated = store.row_counts()
        db = "ok"
    except Exception as exc:  # report, never crash the health check
        counts, estimated, db = {}, [], f"error: {type(exc).__name__}"
    reasons = [] if db == "ok" else [f"database: {db}"]
    if not ingest.get("broker_connected", True):
        reasons.append("broker: not connected")
    if ingest.get("stuck"):
        reasons.append(f"ingest: {ingest['stuck']}")
    features: dict[str, dict[str, dict[str, Any]]] = getattr(
        request.app.state, "feature_failures", dict)()
    reasons += [f"feature {name}: {hook} failing" for name, hooks in features.items()
                for hook, rec in hooks.items() if rec["failing"]]
    return HealthOut(status="degraded" if reasons else "ok", reasons=reasons, database=db,
                     ingest=ingest, counts=counts, counts_estimated=estimated,
                     features=features,
                     streams={name: bus.stats() for name, bus in
                              getattr(request.app.state, "live_streams", {}).items()},
                     process=process_stats())


def _gateway_out(g: dict[str, Any]) -> GatewayOut:
    clock = Store.gateway_clock(g).as_dict()
    clock["measured_at"] = iso(g["clock_measured_at"])
    return GatewayOut(id=g["gateway_id"], state=g["state"], state_reason=g["state_reason"],
                      state_since=iso(g["state_ts"]), last_seen=iso(g["last_seen"]),
                      version=g["version"], last_seq=g["last_seq"],
                      device_count=g["device_count"],
                      health=orjson.loads(g["health"]) if g["health"] else None, clock=clock)


@router.get("/gateways")
def gateways(store: StoreDep) -> list[GatewayOut]:
    """Every gateway with its online state, last sequence number, latest health and clock."""
    return [_gateway_out(g) for g in store.gateways()]


@router.get("/gateways/{gateway_id}")
def gateway(gateway_id: GatewayIdPath, store: StoreDep) -> GatewayOut:
    """One gateway: its state, latest health and measured clock."""
    for g in store.gateways():
        if g["gateway_id"] == gateway_id:
            return _gateway_out(g)
    raise HTTPException(404, f"no gateway {gateway_id!r}")


@router.get("/devices")
def devices(store: StoreDep,
            kind: Annotated[str | None, Query(
                max_length=128, description="device kind, e.g. elevator, dust_monitor, "
                                            "boiler_cems")] = None,
            gateway: Annotated[str | None, Query(
                max_length=128, description="only the devices of this gateway")] = None,
            ) -> list[DeviceOut]:
    """Every field device: id, kind, gateway and when it last reported."""
    return [_device_out(d) for d in store.devices(kind=kind, gateway=gateway)]


@router.get("/devices/{device_id}/latest")
def latest(device_id: DeviceIdPath, store: StoreDep) -> LatestOut:
    """Latest value and observation time of every quantity of a device."""
    _require_device(store, device_id)
    out = {}
    for row in store.latest(device_id):
        q = QUANTITIES.get(row["quantity"])
        out[row["quantity"]] = LatestValue(
            value=typed_value(row["quantity"], row["value"], row["vtext"]),
            unit=q.unit if q else "", observed_at=iso(row["ts"]) or "",
            quality=row["quality"])
    return LatestOut(device=device_id, quantities=out)


@router.get("/devices/{device_id}/readings")
def readings(
    device_id: DeviceIdPath, store: StoreDep,
    quantity: Annotated[str | None, Query(
        max_length=128, description="canonical quantity name (docs/data-model.md); omit for "
                                    "all")] = None,
    since: Annotated[str | None, Query(description="ISO 8601 or epoch ms, inclusive")] = None,
    until: Annotated[str | None, Query(description="ISO 8601 or epoch ms, exclusive")] = None,
    limit: Annotated[int, Query(ge=1, le=100_000, description="at most this many readings")]
    = 10_000,
) -> ReadingsOut:
    """Stored readings of a device in observation-time order."""
    _require_device(store, device_id)
    if quantity is not None and quantity not in QUANTITIES:
        raise invalid("query", "quantity", "unknown quantity", quantity)
    rows = store.readings(device_id, quantity, parse_time(since, "since"),
                          parse_time(until, "until"), limit + 1)
    out = [
        ReadingOut(quantity=r["quantity"],
                   value=typed_value(r["quantity"], r["value"], r["vtext"]),
                   unit=QUANTITIES[r["quantity"]].unit if r["quantity"] in QUANTITIES else "",
                   observed_at=iso(r["ts"]) or "", quality=r["quality"],
                   replayed=bool(r["replay"]))
        for r in rows[:limit]
    ]
    return ReadingsOut(device=device_id, readings=out, truncated=len(rows) > limit)


class EventOut(BaseModel):
    """A fault, alarm or state event as raised or cleared at the edge."""

    id: int
    device: str
    gateway: str
    kind: str
    action: str
    severity: str
    code: int | None
    evidence: dict[str, Any]
    message: str
    observed_at: str


class FaultOut(BaseModel):
    """A condition currently raised on a device."""

    device: str
    kind: str
    severity: str
    code: int | None
    since: str
    evidence: dict[str, Any]


class SequenceOut(BaseModel):
    """Sequence numbers of a gateway not received (yet), and the gaps it reported itself."""

    gateway: str
    last_seq: int | None
    missing: list[tuple[int, int]] = Field(
        description="sequence numbers not received (yet), as inclusive ranges: message "
                    "numbers, not readings (a gateway may skip numbers it never used)")
    lost_readings: int = Field(description="readings the gateway reported lost (data gaps)")
    lost_by_device: dict[str, int] = Field(description="lost_readings per device")
    reported_gaps: list[EventOut]


def _event_out(e: dict[str, Any]) -> EventOut:
    return EventOut(id=e["id"], device=e["device_id"], gateway=e["gateway_id"], kind=e["kind"],
                    action=e["action"], severity=e["severity"], code=e["code"],
                    evidence=orjson.loads(e["evidence"]), message=e["message"],
                    observed_at=iso(e["ts"]) or "")


@router.get("/events")
def events(
    store: StoreDep,
    device: Annotated[str | None, Query(max_length=128, description="only this device's "
                                                                    "events")] = None,
    kind: Annotated[str | None, Query(max_length=128, description="event kind, e.g. "
                                      "trapped_passenger, data_gap")] = None,
    since: Annotated[str | None, Query(description="ISO 8601 or epoch ms")] = None,
    until: Annotated[str | None, Query(description="ISO 8601 or epoch ms")] = None,
    limit: Annotated[int, Query(ge=1, le=10_000, description="at most this many events")]
    = 1000,
) -> list[EventOut]:
    """Events (faults raised and cleared, alarms, state changes, data gaps), newest first."""
    rows = store.events(device, kind, parse_time(since, "since"), parse_time(until, "until"),
                        limit)
    return [_event_out(e) for e in rows]


@router.get("/devices/{device_id}/faults")
def device_faults(device_id: DeviceIdPath, store: StoreDep) -> list[FaultOut]:
    """Faults currently active on a device."""
    _require_device(store, device_id)
    return [FaultOut(device=f["device_id"], kind=f["kind"], severity=f["severity"],
                     code=f["code"], since=iso(f["since"]) or "",
                     evidence=orjson.loads(f["evidence"]))
            for f in store.active_faults(device_id)]


@router.get("/gateways/{gateway_id}/sequence")
def gateway_sequence(gateway_id: GatewayIdPath, store: StoreDep) -> SequenceOut:
    """Missing sequence ranges of a gateway and the data gaps it reported (outbox evictions)."""
    gws = {g["gateway_id"]: g for g in store.gateways()}
    if gateway_id not in gws:
        raise HTTPException(404, f"no gateway {gateway_id!r}")
    reported = [_event_out(e) for e in store.events(kind="data_gap", limit=10_000)
                if e["gateway_id"] == gateway_id]
    lost: dict[str, int] = {}
    for e in reported:
        lost[e.device] = lost.get(e.device, 0) + int(e.evidence.get("count", 0))
    return SequenceOut(gateway=gateway_id, last_seq=gws[gateway_id]["last_seq"],
                       missing=store.seq_gaps(gateway_id), lost_readings=sum(lost.values()),
                       lost_by_device=lost, reported_gaps=reported)


class QuarantinedOut(BaseModel):
    """A message the store refused on its values, kept as received."""

    id: int
    gateway: str
    channel: str
    topic: str
    seq: str | None
    error: str
    received: str | None
    quarantined_at: str | None
    payload: str = Field(description="the message as received (UTF-8, invalid bytes replaced)")


@router.get("/quarantine")
def quarantine(store: StoreDep,
               limit: Annotated[int, Query(ge=1, le=10_000, description="at most this many "
                                                                     "messages")] = 1000,
               ) -> list[QuarantinedOut]:
    """Messages the store refused (a poison message), newest first: kept, never retried."""
    return [QuarantinedOut(id=q["id"], gateway=q["gateway_id"], channel=q["channel"],
                           topic=q["topic"], seq=q["seq"], error=q["error"],
                           received=iso(q["received"]),
                           quarantined_at=iso(q["quarantined_at"]),
                           payload=bytes(q["payload"]).decode("utf-8", "replace"))
            for q in store.quarantined(limit)]


class DeviceMoveIn(BaseModel):
    """The gateway a device now belongs to."""

    gateway: str = Field(pattern=GATEWAY_ID_RE.pattern)


admin = APIRouter(prefix="/api/v1", dependencies=[Depends(require(Role.ADMIN))])


@admin.put("/devices/{device_id}/gateway")
def move_device(device_id: DeviceIdPath, body: DeviceMoveIn, store: StoreDep) -> DeviceOut:
    """Give a device to another gateway (a replacement gateway): from now on only that
    gateway's readings, events and inventory of it are stored."""
    _require_device(store, device_id)
    store.move_device(device_id, body.gateway)
    return _device_out(_require_device(store, device_id))


def create_app(store: Store, ingest_stats: Any = None) -> FastAPI:
    """Build the collector's web app around a store."""
    # /docs is Swagger UI from the package's own assets (collector.pages), not from a CDN.
    app = FastAPI(title="CityGate data hub", version="1", docs_url=None, redoc_url=None,
                  description="Normalised data from the city's field equipment. "
                              "Times are ISO 8601 UTC; values use the canonical units of "
                              "docs/data-model.md.")
    app.state.store = store
    app.state.ingest_stats = ingest_stats or (dict)
    app.state.live_streams = {}  # name -> collector.broadcast.Broadcast, shown by health
    install_error_shape(app)
    app.include_router(public)
    app.include_router(router)
    app.include_router(admin)
    pages.install(app)

    @app.get("/", include_in_schema=False)
    def status_page() -> Response:
        return page("status.html")

    return app
