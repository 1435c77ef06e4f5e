"""MQTT wire contract v1: topics and JSON envelopes between gateways and collectors.

Sans-IO: building topic names and payload bytes, and validating payloads received. The contract
is written up in docs/mqtt-contract.md; change both together and bump VERSION for breaking
changes. Everything here works on MQTT 3.1.1 (no MQTT-5-only feature is required).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from devices.model import Action, Event, Quality, Reading, Severity
from devices.quantities import QUANTITIES, ValueKind

if TYPE_CHECKING:
    from devices.contract_models import (
        ClockInfo,
        Message,
    )

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
    if not GATEWAY_ID_RE.fullmatch(gateway):
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
    if not GATEWAY_ID_RE.fullmatch(gateway):
        raise ContractError("bad_gateway_id", f"{gateway!r} in topic {name!r}")
    if channel not in UPLINK_CHANNELS:
        raise ContractError("bad_topic", f"unknown channel {channel!r} in {name!r}")
    return gateway, channel


_EPOCH_MS_MIN = 946_684_800_000  # 2000-01-01: anything older is an unsynchronised clock
MAX_PAYLOAD = 4 * 1024 * 1024

# --- limits: what every store holds (SQLite and PostgreSQL), defined once --------------------
# The validation models (contract_models.py) and the pure checks below both use these, so a
# gateway that checks with reading_problem/event_problem never emits what a collector refuses.
INT64_MAX = 2**63 - 1  # BIGINT columns: seq, sent, ts, mono
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1  # INTEGER columns: an event's code
# Numbers: finite and |v| <= 1e15. Sums of a day of 1 s readings (history aggregates) stay far
# from float overflow, and every integer in range is exact in the DOUBLE PRECISION value column
# (1e15 < 2**53), so an integer quantity reads back as the integer sent.
MAX_NUMBER = 1e15
MAX_BATCH = 10_000  # readings or events per envelope
MAX_VALUES = 256  # values per reading, evidence entries per event, fields per device entry
MAX_NAME = 128  # a key: evidence key, counter name, field name of an inventory or health entry
MAX_KIND = 64  # an event's kind
MAX_FLAG = 8  # a reading's raw source flag (HJ 212 data flags are 1-2 characters)
MAX_TEXT = 1024  # a text value: in readings, evidence, inventory and health entries
MAX_MESSAGE = 500  # an event's message
MAX_SHORT = 128  # boot ids, versions, reasons, command names and ids
MAX_DEVICES = 50_000  # entries of a state inventory or of a health message's devices
MAX_COUNTERS = 1_000  # counters of a health message
MAX_DEPTH = 16  # nesting of a reply's free-form detail
QUANTITY_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")

Problem = tuple[str, str]  # (reason code, detail), as in ContractError
_KINDS: dict[str, ValueKind] = {name: q.kind for name, q in QUANTITIES.items()}
_RANGES: dict[str, tuple[int, int]] = {
    name: q.limits for name, q in QUANTITIES.items() if q.limits is not None}
_WHOLE = (ValueKind.INTEGER, ValueKind.ENUM)
_QUALITIES = frozenset(q.value for q in Quality)
_ACTIONS = frozenset(a.value for a in Action)
_SEVERITIES = frozenset(s.value for s in Severity)


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def text_problem(text: object, limit: int, what: str = "text") -> Problem | None:
    """Why a string cannot be stored (too long, NUL, lone surrogate), or None if it can."""
    if not isinstance(text, str):
        return "bad_text", f"{what}: {_show(text)} is not text"
    if len(text) > limit:
        return "too_long", f"{what}: {len(text)} characters, at most {limit}"
    if "\x00" in text:
        return "nul_in_text", f"{what}: NUL character in {_show(text)}"
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:
            return "bad_text", f"{what}: lone surrogate in {_show(text)}"
    return None


def _number_problem(name: str, value: float) -> Problem | None:
    if isinstance(value, float) and not math.isfinite(value):
        return "bad_value", f"{name}: {value!r} is not a finite number"
    if not -MAX_NUMBER <= value <= MAX_NUMBER:
        return "out_of_range", f"{name}: {_show(value)} is beyond ±{MAX_NUMBER:.0e}"
    return None


def scalar_problem(name: str, value: object) -> Problem | None:
    """Why a free scalar (evidence, health) cannot be stored, or None: null, bool, a bounded
    finite number or bounded text."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return _number_problem(name, value)
    if isinstance(value, str):
        return text_problem(value, MAX_TEXT, name)
    return "bad_value", f"{name}: {type(value).__name__} is not a scalar"


def value_problem(name: object, value: object) -> Problem | None:
    """Why one value of a reading breaks the contract, or None.

    The name must be a canonical quantity name (snake_case, at most 64 characters); a name
    the data model does not know yet passes here with its value bounded (the store drops and
    counts it as `unknown_quantity`). A known quantity's value must be of its kind: a bool for
    a bool quantity, a number (never a bool) for a number, an integral number for an integer
    or enum, within the quantity's range; text fits no canonical quantity. null is "no value".
    """
    kind = _KINDS.get(name) if isinstance(name, str) else None
    if kind is None and not (isinstance(name, str) and QUANTITY_NAME_RE.fullmatch(name)):
        return "bad_quantity", f"{_show(name)} is not a quantity name"
    if value is None:
        return None
    if isinstance(value, bool):
        if kind is None or kind is ValueKind.BOOL:
            return None
        return "type_mismatch", f"{name} is of kind {kind}, got a bool"
    if isinstance(value, int | float):
        if kind is ValueKind.BOOL:
            return "type_mismatch", f"{name} is of kind bool, got {_show(value)}"
        problem = _number_problem(str(name), value)
        if problem is not None:
            return problem
        if kind in _WHOLE and isinstance(value, float) and not value.is_integer():
            return "not_integral", f"{name} is of kind {kind}, got {value!r}"
        bounds = _RANGES.get(str(name))
        if bounds is not None and not bounds[0] <= value <= bounds[1]:
            return "out_of_range", f"{name}: {_show(value)} outside {bounds[0]}..{bounds[1]}"
        return None
    if isinstance(value, str):
        if kind is not None:
            return "type_mismatch", f"{name} is of kind {kind}, got text {_show(value)}"
        return text_problem(value, MAX_TEXT, str(name))
    return "bad_value", f"{name}: {type(value).__name__} is not a scalar"


def values_problem(values: object) -> Problem | None:
    """Why a reading's values break the contract (the first bad one), or None."""
    if not isinstance(values, dict):
        return "bad_values", f"values is {type(values).__name__}, not an object"
    if len(values) > MAX_VALUES:
        return "too_many_values", f"{len(values)} values, at most {MAX_VALUES}"
    for name, value in values.items():
        problem = value_problem(name, value)
        if problem is not None:
            return problem
    return None


def evidence_problem(evidence: object) -> Problem | None:
    """Why an event's evidence breaks the contract, or None: at most MAX_VALUES entries,
    keys of at most MAX_NAME characters, scalar values (see scalar_problem)."""
    if not isinstance(evidence, dict):
        return "bad_evidence", f"evidence is {type(evidence).__name__}, not an object"
    if len(evidence) > MAX_VALUES:
        return "too_many_values", f"{len(evidence)} evidence entries, at most {MAX_VALUES}"
    for key, value in evidence.items():
        problem = text_problem(key, MAX_NAME, "evidence key") or scalar_problem(str(key), value)
        if problem is not None:
            return problem
    return None


def _int_problem(value: object, low: int, high: int, reason: str, what: str) -> Problem | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return reason, f"{what} {_show(value)} is not an integer"
    if not low <= value <= high:
        return reason, f"{what} {value} outside {low}..{high}"
    return None


def _common_problem(device: object, ts: object, mono: object) -> Problem | None:
    if not isinstance(device, str) or not DEVICE_ID_RE.fullmatch(device):
        return "bad_device_id", f"{_show(device)} is not a valid device id"
    problem = _int_problem(ts, 0, INT64_MAX, "bad_ts", "ts")
    if problem is None and mono is not None:
        problem = _int_problem(mono, 0, INT64_MAX, "bad_mono", "mono")
    return problem


def reading_problem(reading: Reading) -> Problem | None:
    """Why a collector would refuse this reading, as (reason, detail), or None if it is fine.

    The reading's contract: a valid device id; `ts` and `mono` integers in 0..2**63-1 (epoch
    and monotonic ms); a quality of good/uncertain/bad; a source flag of at most MAX_FLAG
    characters; at most MAX_VALUES values, each passing value_problem (canonical name, value of
    the quantity's kind, finite, |v| <= MAX_NUMBER, within the quantity's range). No text
    holds a NUL or a lone surrogate. The reasons are those a collector reports for the reading
    in `Received.refused`. Pure and free of pydantic: a gateway calls it before its outbox.
    """
    problem = _common_problem(reading.device, reading.ts, reading.mono)
    if problem is not None:
        return problem
    if reading.quality not in _QUALITIES:
        return "bad_quality", f"quality {_show(reading.quality)}"
    flag = reading.source_flag
    if flag is not None:
        if not isinstance(flag, str):
            return "bad_flag", f"flag {_show(flag)} is not text"
        problem = text_problem(flag, MAX_FLAG, "flag")
        if problem is not None:
            return problem
    return values_problem(reading.values)


def event_problem(event: Event) -> Problem | None:
    """Why a collector would refuse this event, as (reason, detail), or None if it is fine.

    The event's contract: device, `ts` and `mono` as for a reading; a kind of 1 to MAX_KIND
    characters; a known action and severity; a code that is null or a 32-bit signed integer;
    evidence passing evidence_problem; a message of at most MAX_MESSAGE characters. No text
    holds a NUL or a lone surrogate. Pure and free of pydantic, like reading_problem.
    """
    problem = _common_problem(event.device, event.ts, event.mono)
    if problem is not None:
        return problem
    if not isinstance(event.kind, str) or not event.kind:
        return "bad_kind", f"kind {_show(event.kind)} is not a non-empty text"
    problem = text_problem(event.kind, MAX_KIND, "kind")
    if problem is not None:
        return problem
    if event.action not in _ACTIONS:
        return "bad_action", f"action {_show(event.action)}"
    if event.severity not in _SEVERITIES:
        return "bad_severity", f"severity {_show(event.severity)}"
    if event.code is not None:
        problem = _int_problem(event.code, INT32_MIN, INT32_MAX, "bad_code", "code")
        if problem is not None:
            return problem
    problem = evidence_problem(event.evidence)
    if problem is not None:
        return problem
    if not isinstance(event.message, str):
        return "bad_message", f"message {_show(event.message)} is not text"
    return text_problem(event.message, MAX_MESSAGE, "message")


def json_problem(doc: object, depth: int = 0) -> Problem | None:
    """Why free-form JSON (a reply's detail) cannot be stored, or None: scalars as in
    scalar_problem, keys as names, at most MAX_DEPTH levels of nesting."""
    if depth > MAX_DEPTH:
        return "too_deep", f"nested deeper than {MAX_DEPTH} levels"
    if isinstance(doc, dict):
        for key, value in doc.items():
            problem = text_problem(key, MAX_NAME, "key") or json_problem(value, depth + 1)
            if problem is not None:
                return problem
        return None
    if isinstance(doc, list):
        for value in doc:
            problem = json_problem(value, depth + 1)
            if problem is not None:
                return problem
        return None
    return scalar_problem("detail", doc)

# The validation models (pydantic) live in devices/contract_models.py and are loaded on first
# use: collectors need them, a gateway that only builds payloads does not carry them.
_MODEL_NAMES = frozenset({
    "WireReading", "WireEvent", "ClockInfo", "DataEnvelope", "EventsEnvelope", "StateMessage",
    "HealthMessage", "ReplyMessage", "Message", "Scalar", "DeviceId",
})


def __getattr__(name: str) -> Any:
    if name in _MODEL_NAMES:
        from devices import contract_models

        return getattr(contract_models, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    from pydantic import ValidationError

    from devices.contract_models import MODELS

    try:
        message: Any = MODELS[channel].model_validate(raw)
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
    clock: ClockInfo | Mapping[str, Any] | None = None,
    replay: bool = False,
) -> bytes:
    """Wrap an already-encoded batch (see encode_batch) in a v1 envelope, without re-parsing it.

    `clock` holds the ClockInfo fields (synced, boot, mono, sent_boot) as a model or a dict.
    """
    key = {DATA: b"readings", EVENTS: b"events"}[channel]
    if clock is None:
        clock_doc: dict[str, Any] = {"synced": True, "boot": "", "sent_boot": ""}
    elif isinstance(clock, Mapping):
        clock_doc = {k: v for k, v in clock.items() if v is not None}
    else:
        clock_doc = clock.model_dump(exclude_none=True)
    head = {
        "v": VERSION,
        "gateway": gateway,
        "seq": seq,
        "sent": sent,
        "clock": clock_doc,
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
