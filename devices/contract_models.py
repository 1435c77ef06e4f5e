"""MQTT wire contract v1: the validation models of what gateways send (versioned).

Separate from devices/contract.py so that a gateway, which only builds payloads, does not load
pydantic models it never uses; `devices.contract` re-exports these names on first use. A data or
events envelope is held as a struct of devices/contract_structs.py: its model here says what
is wrong with a payload the fast path refused, and its result is converted to the struct. Every
limit comes from devices/contract.py, and the composite checks (a reading's values, an event's
evidence, text) are the same pure functions a gateway calls before its outbox.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic_core import PydanticCustomError

from devices.contract import (
    DATA,
    DEVICE_ID_RE,
    EVENTS,
    GATEWAY_ID_RE,
    HEALTH,
    INT32_MAX,
    INT32_MIN,
    INT64_MAX,
    MAX_BATCH,
    MAX_COUNTERS,
    MAX_DEVICES,
    MAX_FLAG,
    MAX_KIND,
    MAX_MESSAGE,
    MAX_NAME,
    MAX_NUMBER,
    MAX_SHORT,
    MAX_TEXT,
    MAX_VALUES,
    REPLY,
    STATE,
    Problem,
    entries_problem,
    evidence_problem,
    json_problem,
    text_problem,
    values_problem,
)
from devices.contract_structs import (  # what the data and events models validate into
    ClockInfo,
    DataEnvelope,
    EventsEnvelope,
    WireEvent,
    WireReading,
)

__all__ = ["MODELS", "ClockInfo", "DataEnvelope", "EventsEnvelope", "HealthMessage", "Message",
           "ReplyMessage", "StateMessage", "WireEvent", "WireReading"]

Scalar = float | int | bool | str | None
DeviceId = Annotated[str, Field(strict=True, pattern=DEVICE_ID_RE.pattern)]
GatewayId = Annotated[str, Field(strict=True, pattern=GATEWAY_ID_RE.pattern)]
Ms = Annotated[int, Field(strict=True, ge=0, le=INT64_MAX)]  # epoch or monotonic milliseconds


def _refuse(problem: Problem) -> None:
    """Raise the contract's reason code as the validation error's type."""
    raise PydanticCustomError(problem[0], "{detail}", {"detail": problem[1]})


def _checked(check: Callable[[Any], Problem | None]) -> AfterValidator:
    def validate(value: Any) -> Any:
        problem = check(value)
        if problem is not None:
            _refuse(problem)
        return value
    return AfterValidator(validate)


def _text(limit: int, what: str) -> AfterValidator:
    """No NUL and no lone surrogate in a string of at most `limit` characters."""
    return _checked(lambda s: text_problem(s, limit, what))


Name = Annotated[str, Field(strict=True, max_length=MAX_NAME), _text(MAX_NAME, "name")]
Short = Annotated[str, Field(strict=True, max_length=MAX_SHORT), _text(MAX_SHORT, "text")]
Text = Annotated[str, Field(strict=True, max_length=MAX_TEXT), _text(MAX_TEXT, "text")]
Flag = Annotated[str, Field(strict=True, max_length=MAX_FLAG), _text(MAX_FLAG, "flag")]
Kind = Annotated[str, Field(strict=True, min_length=1, max_length=MAX_KIND),
                 _text(MAX_KIND, "kind")]
EventMessage = Annotated[str, Field(strict=True, max_length=MAX_MESSAGE),
                         _text(MAX_MESSAGE, "message")]
Number = Annotated[float, Field(allow_inf_nan=False, ge=-MAX_NUMBER, le=MAX_NUMBER)]
Values = Annotated[dict[str, Any], _checked(values_problem)]
Evidence = Annotated[dict[str, Any], _checked(evidence_problem)]
Entry = Annotated[dict[str, Any], Field(max_length=MAX_VALUES), _checked(entries_problem)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class WireReadingModel(_Strict):
    """A reading as carried in a data envelope (see devices.contract.reading_problem)."""

    device: DeviceId
    ts: Ms
    values: Values
    q: Literal["good", "uncertain", "bad"] = "good"
    mono: Ms | None = None
    flag: Flag | None = None
    station_time: Annotated[bool, Field(strict=True)] = False  # ts is the instrument's clock


class WireEventModel(_Strict):
    """An event as carried in an events envelope (see devices.contract.event_problem)."""

    device: DeviceId
    ts: Ms
    kind: Kind
    action: Literal["raise", "clear", "info"]
    severity: Literal["critical", "major", "minor", "warning", "info"]
    code: Annotated[int, Field(strict=True, ge=INT32_MIN, le=INT32_MAX)] | None = None
    evidence: Evidence = Field(default_factory=dict)
    message: EventMessage = ""
    mono: Ms | None = None


class ClockInfoModel(_Strict):
    """What the gateway knew of its clock when it observed, and its clock when it sends."""

    synced: bool = True  # was the wall clock synchronised when these readings were taken
    boot: Short = ""  # boot id when the readings were taken: `mono` values are of that boot
    mono: Ms | None = None  # monotonic ms at send time, of boot `sent_boot`
    sent_boot: Short = ""  # boot id at send time (empty: same as `boot`)


class _Envelope(_Strict):
    v: Literal[1]
    gateway: GatewayId
    seq: Annotated[int, Field(strict=True, ge=1, le=INT64_MAX)]
    sent: Ms
    clock: ClockInfoModel = Field(default_factory=ClockInfoModel)
    replay: bool = False


class DataEnvelopeModel(_Envelope):
    """A batch of readings."""

    readings: list[WireReadingModel] = Field(max_length=MAX_BATCH)


class EventsEnvelopeModel(_Envelope):
    """A batch of events."""

    events: list[WireEventModel] = Field(max_length=MAX_BATCH)


class StateMessage(_Strict):
    """Retained birth/death state of a gateway (the death message is also its last will)."""

    v: Literal[1]
    gateway: GatewayId
    state: Literal["online", "offline"]
    ts: Ms = 0
    reason: Short = ""
    version: Short = ""
    boot: Short = ""
    devices: Annotated[  # id -> kind, profile
        dict[DeviceId, Annotated[dict[Name, Text], Field(max_length=MAX_VALUES)]],
        Field(max_length=MAX_DEVICES)] = Field(default_factory=dict)


class HealthMessage(_Strict):
    """Periodic health of a gateway: counters by name, per-device state."""

    v: Literal[1]
    gateway: GatewayId
    sent: Ms
    counters: Annotated[dict[Name, Number], Field(max_length=MAX_COUNTERS)] = Field(
        default_factory=dict)
    devices: Annotated[dict[Name, Entry], Field(max_length=MAX_DEVICES)] = Field(
        default_factory=dict)


class ReplyMessage(_Strict):
    """A gateway's answer to a command."""

    v: Literal[1]
    gateway: GatewayId
    command: Short
    id: Short
    ok: bool
    detail: Annotated[dict[str, Any], _checked(json_problem)] = Field(default_factory=dict)


Message = DataEnvelope | EventsEnvelope | StateMessage | HealthMessage | ReplyMessage
MODELS: dict[str, type[BaseModel]] = {
    DATA: DataEnvelopeModel,
    EVENTS: EventsEnvelopeModel,
    STATE: StateMessage,
    HEALTH: HealthMessage,
    REPLY: ReplyMessage,
}
