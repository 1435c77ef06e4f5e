"""MQTT wire contract v1: the validation models of what gateways send (versioned).

Separate from devices/contract.py so that a gateway, which only builds payloads, does not load
pydantic models it never uses; `devices.contract` re-exports these names on first use.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from devices.contract import DATA, DEVICE_ID_RE, EVENTS, GATEWAY_ID_RE, HEALTH, REPLY, STATE

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
MODELS: dict[str, type[BaseModel]] = {
    DATA: DataEnvelope,
    EVENTS: EventsEnvelope,
    STATE: StateMessage,
    HEALTH: HealthMessage,
    REPLY: ReplyMessage,
}


