"""MQTT wire contract v1: data and events envelopes as typed structs, decoded in one pass.

These are what a collector holds for every envelope on its hot path: msgspec decodes a payload
straight into them (devices.contract.decode), and the contract's bounds are then checked on the
typed fields with the same pure checks a gateway runs before its outbox. Only a payload that
fails somewhere goes through the pydantic models of devices/contract_models.py, which say
exactly what is wrong and which readings or events to leave out; their result is converted to
these structs, so every consumer sees one type whichever path a message took.

The `model_*` methods keep the calls written for the pydantic models working (tests, tools
that build envelopes from documents): `model_validate` validates through those models.
"""

from __future__ import annotations

from typing import Any, ClassVar, Self

import msgspec


class _Wire(msgspec.Struct, frozen=True, kw_only=True):
    _model: ClassVar[str] = ""  # the pydantic model in contract_models that validates it

    @classmethod
    def model_validate(cls, doc: Any) -> Self:
        """Validate a document with the contract's pydantic model (raises its ValidationError)."""
        from devices import contract_models

        model = getattr(contract_models, cls._model)
        return msgspec.convert(model.model_validate(doc).model_dump(), cls)

    @classmethod
    def model_construct(cls, **fields: Any) -> Self:
        """Build without any check (tests of what the store does with what slips through)."""
        return cls(**fields)

    def model_copy(self, *, update: dict[str, Any] | None = None) -> Self:
        """A copy with some fields replaced."""
        return msgspec.structs.replace(self, **(update or {}))

    def model_dump(self, *, exclude_none: bool = False) -> dict[str, Any]:
        """The fields as plain data."""
        doc: dict[str, Any] = msgspec.to_builtins(self)
        return {k: v for k, v in doc.items() if v is not None} if exclude_none else doc


class WireReading(_Wire, frozen=True, kw_only=True):
    """A reading as carried in a data envelope (see devices.contract.reading_problem)."""

    _model: ClassVar[str] = "WireReadingModel"
    device: str
    ts: int
    values: dict[str, Any]
    q: str = "good"
    mono: int | None = None
    flag: str | None = None
    station_time: bool = False  # ts is the instrument's clock (HJ 212 DataTime)


class WireEvent(_Wire, frozen=True, kw_only=True):
    """An event as carried in an events envelope (see devices.contract.event_problem)."""

    _model: ClassVar[str] = "WireEventModel"
    device: str
    ts: int
    kind: str
    action: str
    severity: str
    code: int | None = None
    evidence: dict[str, Any] = msgspec.field(default_factory=dict)
    message: str = ""
    mono: int | None = None


class ClockInfo(_Wire, frozen=True, kw_only=True):
    """What the gateway knew of its clock when it observed, and its clock when it sends."""

    _model: ClassVar[str] = "ClockInfoModel"
    synced: bool = True  # was the wall clock synchronised when these readings were taken
    boot: str = ""  # boot id when the readings were taken: `mono` values are of that boot
    mono: int | None = None  # monotonic ms at send time, of boot `sent_boot`
    sent_boot: str = ""  # boot id at send time (empty: same as `boot`)


class _Envelope(_Wire, frozen=True, kw_only=True):
    """The header every envelope carries."""

    v: int
    gateway: str
    seq: int
    sent: int
    clock: ClockInfo = msgspec.field(default_factory=ClockInfo)
    replay: bool = False


class DataEnvelope(_Envelope, frozen=True, kw_only=True):
    """A batch of readings."""

    _model: ClassVar[str] = "DataEnvelopeModel"
    readings: list[WireReading]


class EventsEnvelope(_Envelope, frozen=True, kw_only=True):
    """A batch of events."""

    _model: ClassVar[str] = "EventsEnvelopeModel"
    events: list[WireEvent]


DATA_DECODER = msgspec.json.Decoder(DataEnvelope)
EVENTS_DECODER = msgspec.json.Decoder(EventsEnvelope)
