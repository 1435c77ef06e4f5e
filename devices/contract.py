"""MQTT wire contract v1: topics and JSON envelopes between gateways and collectors.

Sans-IO: building topic names and payload bytes, and validating payloads received. The contract
is written up in docs/mqtt-contract.md; change both together and bump VERSION for breaking
changes. Everything here works on MQTT 3.1.1 (no MQTT-5-only feature is required).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from devices.model import Event, Reading

VERSION = 1
ROOT = f"citygate/v{VERSION}"
COLLECTOR_STATE_FILTER = f"{ROOT}/_collector/+/state"  # retained, one topic per collector
GATEWAY_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
DEVICE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
QOS = 1

# Channels a gateway publishes on, and the one it subscribes to.
DATA, EVENTS, HEALTH, STATE, REPLY, CMD = "data", "events", "health", "state", "reply", "cmd"
UPLINK_CHANNELS = (DATA, EVENTS, HEALTH, STATE, REPLY)


class ContractError(ValueError):
    """A message that does not follow the wire contract; `reason` is a stable short code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def topic(gateway: str, channel: str, name: str | None = None) -> str:
    """Return the topic of a gateway's channel (`cmd` channels take a command name)."""
    if not GATEWAY_ID_RE.match(gateway):
        raise ContractError("bad_gateway_id", f"{gateway!r} is not a valid gateway id")
    base = f"{ROOT}/{gateway}/{channel}"
    return f"{base}/{name}" if name else base


def collector_state_topic(collector_id: str) -> str:
    """Retained online/offline state of one collector (its last will says offline)."""
    return f"{ROOT}/_collector/{collector_id}/state"


def collector_state_payload(collector_id: str, state: str, ts: int) -> bytes:
    """The collector's state message."""
    return orjson.dumps({"v": VERSION, "collector": collector_id, "state": state, "ts": ts})


def subscriptions(share_group: str | None = None) -> list[str]:
    """Return the topic filters a collector subscribes to (all gateways, all uplink channels).

    With a share group, collectors split the data, events, health and replies between them
    (`$share/<group>/...`, Mosquitto 2 and EMQX); every collector still sees every gateway's
    state, which is retained and idempotent to store.
    """
    if not share_group:
        return [f"{ROOT}/+/{ch}" for ch in UPLINK_CHANNELS]
    shared = [f"$share/{share_group}/{ROOT}/+/{ch}" for ch in UPLINK_CHANNELS if ch != STATE]
    return [*shared, f"{ROOT}/+/{STATE}"]


def parse_topic(name: str) -> tuple[str, str]:
    """Split an uplink topic into (gateway id, channel), or raise ContractError."""
    parts = name.split("/")
    if len(parts) != 4 or f"{parts[0]}/{parts[1]}" != ROOT:
        raise ContractError("bad_topic", f"{name!r} is not a {ROOT}/<gateway>/<channel> topic")
    gateway, channel = parts[2], parts[3]
    if not GATEWAY_ID_RE.match(gateway):
        raise ContractError("bad_gateway_id", f"{gateway!r} in topic {name!r}")
    if channel not in UPLINK_CHANNELS:
        raise ContractError("bad_topic", f"unknown channel {channel!r} in {name!r}")
    return gateway, channel


# --- payloads gateways send (ingest models, versioned) ---------------------------------------

_EPOCH_MS_MIN = 946_684_800_000  # 2000-01-01: anything older is an unsynchronised clock
Scalar = float | int | bool | str | None
DeviceId = Annotated[str, Field(pattern=DEVICE_ID_RE.pattern)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class WireReading(_Strict):
    """A reading as carried in a data envelope."""

    device: DeviceId
    ts: int = Field(ge=0)
    values: dict[str, Scalar]
    q: Literal["good", "uncertain", "bad"] = "good"
    mono: int | None = None
    flag: str | None = Field(default=None, max_length=8)


class WireEvent(_Strict):
    """An event as carried in an events envelope."""

    device: DeviceId
    ts: int = Field(ge=0)
    kind: str = Field(min_length=1, max_length=64)
    action: Literal["raise", "clear", "info"]
    severity: Literal["critical", "major", "minor", "warning", "info"]
    code: int | None = None
    evidence: dict[str, Scalar] = Field(default_factory=dict)
    message: str = Field(default="", max_length=500)
    mono: int | None = None


class ClockInfo(_Strict):
    """What the gateway knew of its clock when it observed, and its clock when it sends."""

    synced: bool = True  # was the wall clock synchronised when these readings were taken
    boot: str = ""  # boot id when the readings were taken: `mono` values are of that boot
    mono: int | None = None  # monotonic ms at send time, of boot `sent_boot`
    sent_boot: str = ""  # boot id at send time (empty: same as `boot`)


class _Envelope(_Strict):
    v: Literal[1]
    gateway: str = Field(pattern=GATEWAY_ID_RE.pattern)
    seq: int = Field(ge=1)
    sent: int = Field(ge=0)
    clock: ClockInfo = Field(default_factory=ClockInfo)
    replay: bool = False


class DataEnvelope(_Envelope):
    """A batch of readings."""

    readings: list[WireReading] = Field(max_length=10_000)


class EventsEnvelope(_Envelope):
    """A batch of events."""

    events: list[WireEvent] = Field(max_length=10_000)


class StateMessage(_Strict):
    """Retained birth/death state of a gateway (the death message is also its last will)."""

    v: Literal[1]
    gateway: str = Field(pattern=GATEWAY_ID_RE.pattern)
    state: Literal["online", "offline"]
    ts: int = 0
    reason: str = ""
    version: str = ""
    boot: str = ""
    devices: dict[str, dict[str, str]] = Field(default_factory=dict)  # id -> kind, profile


class HealthMessage(_Strict):
    """Periodic health of a gateway: counters by name, per-device state."""

    v: Literal[1]
    gateway: str = Field(pattern=GATEWAY_ID_RE.pattern)
    sent: int = Field(ge=0)
    counters: dict[str, float] = Field(default_factory=dict)
    devices: dict[str, dict[str, Scalar]] = Field(default_factory=dict)


class ReplyMessage(_Strict):
    """A gateway's answer to a command."""

    v: Literal[1]
    gateway: str = Field(pattern=GATEWAY_ID_RE.pattern)
    command: str
    id: str
    ok: bool
    detail: dict[str, Any] = Field(default_factory=dict)


Message = DataEnvelope | EventsEnvelope | StateMessage | HealthMessage | ReplyMessage
_MODELS: dict[str, type[BaseModel]] = {
    DATA: DataEnvelope,
    EVENTS: EventsEnvelope,
    STATE: StateMessage,
    HEALTH: HealthMessage,
    REPLY: ReplyMessage,
}
MAX_PAYLOAD = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Received:
    """A validated uplink message and the gateway/channel it arrived on."""

    gateway: str
    channel: str
    message: Message


def decode(topic_name: str, payload: bytes) -> Received:
    """Validate an uplink message; raise ContractError with a short reason if it is bad."""
    gateway, channel = parse_topic(topic_name)
    if len(payload) > MAX_PAYLOAD:
        raise ContractError("too_large", f"{len(payload)} bytes")
    try:
        raw = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise ContractError("bad_json", str(exc)) from None
    if not isinstance(raw, dict):
        raise ContractError("bad_envelope", "payload is not a JSON object")
    if raw.get("v") != VERSION:
        raise ContractError("bad_version", f"v={raw.get('v')!r}, this collector speaks v{VERSION}")
    try:
        message: Any = _MODELS[channel].model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ContractError("bad_envelope", f"{where}: {first['msg']}") from None
    if message.gateway != gateway:
        raise ContractError(
            "gateway_mismatch", f"topic says {gateway!r}, envelope says {message.gateway!r}"
        )
    return Received(gateway, channel, message)


# --- building payloads at the gateway ----------------------------------------------------------

def encode_batch(items: Iterable[Reading | Event]) -> bytes:
    """Encode readings or events as the JSON array stored in the outbox and sent as-is."""
    return orjson.dumps([item.to_wire() for item in items])


def envelope(
    gateway: str,
    channel: str,
    seq: int,
    sent: int,
    batch: bytes,
    *,
    clock: ClockInfo | None = None,
    replay: bool = False,
) -> bytes:
    """Wrap an already-encoded batch (see encode_batch) in a v1 envelope, without re-parsing it."""
    key = {DATA: b"readings", EVENTS: b"events"}[channel]
    head = {
        "v": VERSION,
        "gateway": gateway,
        "seq": seq,
        "sent": sent,
        "clock": (clock or ClockInfo()).model_dump(exclude_none=True),
        "replay": replay,
    }
    return orjson.dumps(head)[:-1] + b',"' + key + b'":' + batch + b"}"


def state_payload(
    gateway: str, state: str, ts: int, *, reason: str = "", version: str = "", boot: str = "",
    devices: dict[str, dict[str, str]] | None = None,
) -> bytes:
    """Encode the retained birth/death state message (with the device inventory)."""
    return orjson.dumps(
        {"v": VERSION, "gateway": gateway, "state": state, "ts": ts, "reason": reason,
         "version": version, "boot": boot, "devices": devices or {}}
    )


def is_plausible_time(ts_ms: int) -> bool:
    """Say whether an epoch-ms timestamp can come from a synchronised clock (not 1970)."""
    return ts_ms >= _EPOCH_MS_MIN
