"""MQTT wire contract v1: topics and JSON envelopes between gateways and collectors.

Sans-IO: building topic names and payload bytes, and validating payloads received. The contract
is written up in docs/mqtt-contract.md; change both together and bump VERSION for breaking
changes. Everything here works on MQTT 3.1.1 (no MQTT-5-only feature is required).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
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
MAX_TEXT = 4096  # a text value: in readings, evidence, inventory and health entries
MAX_MESSAGE = 500  # an event's message
MAX_SHORT = 128  # boot ids, versions, reasons, command names and ids
MAX_DEVICES = 50_000  # entries of a state inventory or of a health message's devices
MAX_COUNTERS = 1_000  # counters of a health message
MAX_DEPTH = 16  # nesting of a reply's free-form detail
MAX_DETAIL_TEXT = 65_536  # a text in a reply's detail
QUANTITY_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")

Problem = tuple[str, str]  # (reason code, detail), as in ContractError
_KINDS: dict[str, ValueKind] = {name: q.kind for name, q in QUANTITIES.items()}
_RANGES: dict[str, tuple[int, int]] = {
    name: q.limits for name, q in QUANTITIES.items() if q.limits is not None}
_WHOLE = (ValueKind.INTEGER, ValueKind.ENUM)
# Per known quantity, the two exact types and the range that need no further check (a float
# for an integer quantity, null and every bad value take the full path of value_problem).
_FAST: dict[str, tuple[type, type, float, float]] = {
    name: (bool, bool, 0, 1) if q.kind is ValueKind.BOOL
    else (float, int, -MAX_NUMBER, MAX_NUMBER) if q.kind is ValueKind.NUMBER
    else (int, int, *(q.limits or (-MAX_NUMBER, MAX_NUMBER)))
    for name, q in QUANTITIES.items()
}
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
    fast = _FAST
    for name, value in values.items():
        accepts = fast.get(name)
        if accepts is not None:  # the common case without a call: exact type, in range
            t = type(value)
            if (t is accepts[0] or t is accepts[1]) and accepts[2] <= value <= accepts[3]:
                continue
        problem = value_problem(name, value)  # the rest, and why
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
    return _entries_problem(evidence, "evidence key")


def _entries_problem(entries: dict[Any, Any], what: str) -> Problem | None:
    for key, value in entries.items():
        t = type(value)
        plain = value is None or t is bool or (
            (t is int or t is float) and -MAX_NUMBER <= value <= MAX_NUMBER)
        if plain and type(key) is str and len(key) <= MAX_NAME and key.isascii() and (
                "\x00" not in key):
            continue  # the common case without a call
        problem = text_problem(key, MAX_NAME, what) or scalar_problem(str(key), value)
        if problem is not None:
            return problem
    return None


def entries_problem(entries: object) -> Problem | None:
    """Why a health message's per-device entry cannot be stored, or None: keys of at most
    MAX_NAME characters, scalar values (see scalar_problem)."""
    if not isinstance(entries, dict):
        return "bad_value", f"{type(entries).__name__} is not an object"
    return _entries_problem(entries, "key")


def _int_problem(value: object, low: int, high: int, reason: str, what: str) -> Problem | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return reason, f"{what} {_show(value)} is not an integer"
    if not low <= value <= high:
        return reason, f"{what} {value} outside {low}..{high}"
    return None


def _first(*checks: Callable[[], Problem | None]) -> Problem | None:
    for check in checks:
        problem = check()
        if problem is not None:
            return problem
    return None


def _device_problem(device: object) -> Problem | None:
    if not isinstance(device, str) or not DEVICE_ID_RE.fullmatch(device):
        return "bad_device_id", f"{_show(device)} is not a valid device id"
    return None


def _ms_problem(ms: object, reason: str, what: str, optional: bool = False) -> Problem | None:
    if optional and ms is None:
        return None
    return _int_problem(ms, 0, INT64_MAX, reason, what)


def _choice_problem(value: object, choices: frozenset[str], reason: str,
                    what: str) -> Problem | None:
    if not isinstance(value, str) or value not in choices:
        return reason, f"{what} {_show(value)} is not one of {sorted(choices)}"
    return None


def _flag_problem(flag: object) -> Problem | None:
    if flag is None:
        return None
    if not isinstance(flag, str):
        return "bad_flag", f"flag {_show(flag)} is not text"
    return text_problem(flag, MAX_FLAG, "flag")


def reading_problem(reading: Reading) -> Problem | None:
    """Why a collector would refuse this reading, as (reason, detail), or None if it is fine.

    The reading's contract: a valid device id; `ts` and `mono` integers in 0..2**63-1 (epoch
    and monotonic ms); at most MAX_VALUES values, each passing value_problem (canonical name,
    value of the quantity's kind, finite, |v| <= MAX_NUMBER, within the quantity's range); a
    quality of good/uncertain/bad; a source flag of at most MAX_FLAG characters. No text holds
    a NUL or a lone surrogate. The reason is the one a collector reports for this reading in
    `Received.refused` (the first problem in that order). Pure and free of pydantic: a gateway
    calls it before its outbox.
    """
    return _first(
        lambda: _device_problem(reading.device),
        lambda: _ms_problem(reading.ts, "bad_ts", "ts"),
        lambda: values_problem(reading.values),
        lambda: _choice_problem(reading.quality, _QUALITIES, "bad_quality", "quality"),
        lambda: _ms_problem(reading.mono, "bad_mono", "mono", optional=True),
        lambda: _flag_problem(reading.source_flag),
    )


def _kind_problem(kind: object) -> Problem | None:
    if not isinstance(kind, str) or not kind:
        return "bad_kind", f"kind {_show(kind)} is not a non-empty text"
    return text_problem(kind, MAX_KIND, "kind")


def _code_problem(code: object) -> Problem | None:
    if code is None:
        return None
    return _int_problem(code, INT32_MIN, INT32_MAX, "bad_code", "code")


def _message_problem(message: object) -> Problem | None:
    if not isinstance(message, str):
        return "bad_message", f"message {_show(message)} is not text"
    return text_problem(message, MAX_MESSAGE, "message")


def event_problem(event: Event) -> Problem | None:
    """Why a collector would refuse this event, as (reason, detail), or None if it is fine.

    The event's contract: device and `ts` as for a reading; a kind of 1 to MAX_KIND
    characters; a known action and severity; a code that is null or a 32-bit signed integer
    (the stores' INTEGER column); evidence passing evidence_problem; a message of at most
    MAX_MESSAGE characters; `mono` as for a reading. No text holds a NUL or a lone surrogate.
    Pure and free of pydantic, like reading_problem, with the reason a collector reports.
    """
    return _first(
        lambda: _device_problem(event.device),
        lambda: _ms_problem(event.ts, "bad_ts", "ts"),
        lambda: _kind_problem(event.kind),
        lambda: _choice_problem(event.action, _ACTIONS, "bad_action", "action"),
        lambda: _choice_problem(event.severity, _SEVERITIES, "bad_severity", "severity"),
        lambda: _code_problem(event.code),
        lambda: evidence_problem(event.evidence),
        lambda: _message_problem(event.message),
        lambda: _ms_problem(event.mono, "bad_mono", "mono", optional=True),
    )


def json_problem(doc: object, depth: int = 0) -> Problem | None:
    """Why free-form JSON (a reply's detail) cannot be stored, or None: scalars as in
    scalar_problem but text of up to MAX_DETAIL_TEXT characters (a refused config lists every
    problem), keys as names, at most MAX_DEPTH levels of nesting."""
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
    if isinstance(doc, str):
        return text_problem(doc, MAX_DETAIL_TEXT, "detail")
    return scalar_problem("detail", doc)


# The validation models (pydantic) live in devices/contract_models.py and are loaded on first
# use: collectors need them, a gateway that only builds payloads does not carry them.
_MODEL_NAMES = frozenset({
    "StateMessage", "HealthMessage", "ReplyMessage", "Message", "Scalar", "DeviceId",
})
_STRUCT_NAMES = frozenset({"WireReading", "WireEvent", "ClockInfo", "DataEnvelope",
                           "EventsEnvelope"})


def __getattr__(name: str) -> Any:
    if name in _STRUCT_NAMES:
        from devices import contract_structs

        return getattr(contract_structs, name)
    if name in _MODEL_NAMES:
        from devices import contract_models

        return getattr(contract_models, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(frozen=True, slots=True)
class Refused:
    """A reading or event left out of an otherwise sound envelope, and why.

    `index` is its position in the envelope's `readings` or `events` as sent; `device` its
    device id if that was valid, else ""; `reason` a stable short code (REFUSAL_REASONS).
    """

    index: int
    device: str
    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class Received:
    """A validated uplink message and the gateway/channel it arrived on.

    In a data or events envelope, `message` holds the readings or events that passed, in the
    order sent, and `refused` the others: together they are exactly the batch as sent.
    """

    gateway: str
    channel: str
    message: Message
    refused: tuple[Refused, ...] = ()


# Why a single reading or event is refused (Refused.reason); the envelope around it is kept.
REFUSAL_REASONS = frozenset({
    "bad_reading", "bad_event",  # not an object of the right shape
    "bad_device_id", "bad_ts", "bad_mono", "bad_quality", "bad_flag", "bad_values",
    "bad_kind", "bad_action", "bad_severity", "bad_code", "bad_evidence", "bad_message",
    "bad_quantity", "type_mismatch", "not_integral", "out_of_range", "bad_value",
    "too_many_values", "too_long", "nul_in_text", "bad_text",
})
_FIELD_REASONS = {
    "device": "bad_device_id", "ts": "bad_ts", "mono": "bad_mono", "q": "bad_quality",
    "flag": "bad_flag", "values": "bad_values", "kind": "bad_kind", "action": "bad_action",
    "severity": "bad_severity", "code": "bad_code", "evidence": "bad_evidence",
    "message": "bad_message",
}
_BATCH_KEYS = {DATA: "readings", EVENTS: "events"}


def decode(topic_name: str, payload: bytes) -> Received:
    """Validate an uplink message; raise ContractError with a short reason if it is bad.

    A data or events envelope whose own fields are sound is accepted with the readings or
    events that pass, the others listed in `Received.refused` (possibly all of them).

    A data or events envelope is decoded by msgspec straight into its struct
    (devices.contract_structs) and its bounds checked on the typed fields; one that fails
    anywhere is decoded again by the pydantic models, which say why and what to leave out.
    Both paths accept exactly the same payloads into equal structs.
    """
    gateway, channel = parse_topic(topic_name)
    if len(payload) > MAX_PAYLOAD:
        raise ContractError("too_large", f"{len(payload)} bytes")
    if channel in _BATCH_KEYS:
        fast = _decode_sound(channel, payload)
        if fast is not None:
            if fast.gateway != gateway:
                raise ContractError(
                    "gateway_mismatch", f"topic says {gateway!r}, envelope says {fast.gateway!r}")
            return Received(gateway, channel, fast)
    try:
        raw = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise ContractError("bad_json", str(exc)) from None
    if not isinstance(raw, dict):
        raise ContractError("bad_envelope", "payload is not a JSON object")
    version = raw.get("v")
    if type(version) is not int or version != VERSION:
        raise ContractError("bad_version", f"v={version!r}, this collector speaks v{VERSION}")
    from pydantic import ValidationError

    from devices.contract_models import MODELS

    model = MODELS[channel]
    refused: tuple[Refused, ...] = ()
    try:
        message: Any = model.model_validate(raw)
    except ValidationError as exc:
        key = _BATCH_KEYS.get(channel)
        if key is None:
            raise _envelope_error(exc.errors(include_url=False)[0]) from None
        message, refused = _without_refused(model, raw, key, exc)
    if message.gateway != gateway:
        raise ContractError(
            "gateway_mismatch", f"topic says {gateway!r}, envelope says {message.gateway!r}"
        )
    if channel in _BATCH_KEYS:
        import msgspec

        from devices import contract_structs

        struct = (contract_structs.DataEnvelope if channel == DATA
                  else contract_structs.EventsEnvelope)
        message = msgspec.convert(message.model_dump(), struct)
    return Received(gateway, channel, message, refused)


def _decode_sound(channel: str, payload: bytes) -> Any:
    """The envelope as a struct if the payload is sound in every field, else None.

    A payload with a \\u escape takes the other path: a lone surrogate escape is bad JSON to
    orjson, text to msgspec.
    """
    if b"\\u" in payload:
        return None
    import msgspec

    from devices import contract_structs as cs

    sound: Callable[[Any], bool]
    try:
        if channel == DATA:
            env: Any = cs.DATA_DECODER.decode(payload)
            items, sound = env.readings, _reading_sound
        else:
            env = cs.EVENTS_DECODER.decode(payload)
            items, sound = env.events, _event_sound
    except msgspec.DecodeError:
        return None
    clock = env.clock
    if not (env.v == VERSION and 1 <= env.seq <= INT64_MAX and 0 <= env.sent <= INT64_MAX
            and GATEWAY_ID_RE.fullmatch(env.gateway) and len(items) <= MAX_BATCH
            and (clock.mono is None or 0 <= clock.mono <= INT64_MAX)
            and _short_sound(clock.boot) and _short_sound(clock.sent_boot)):
        return None
    for item in items:
        if not sound(item):
            return None
    return env


def _short_sound(text: str) -> bool:
    return not text or text_problem(text, MAX_SHORT) is None


def _reading_sound(r: Any) -> bool:
    mono, flag = r.mono, r.flag
    return (0 <= r.ts <= INT64_MAX and (mono is None or 0 <= mono <= INT64_MAX)
            and r.q in _QUALITIES and DEVICE_ID_RE.fullmatch(r.device) is not None
            and (flag is None or text_problem(flag, MAX_FLAG) is None)
            and values_problem(r.values) is None)


def _event_sound(e: Any) -> bool:
    mono, code = e.mono, e.code
    return (0 <= e.ts <= INT64_MAX and (mono is None or 0 <= mono <= INT64_MAX)
            and DEVICE_ID_RE.fullmatch(e.device) is not None
            and len(e.kind) > 0 and text_problem(e.kind, MAX_KIND) is None
            and e.action in _ACTIONS and e.severity in _SEVERITIES
            and (code is None or INT32_MIN <= code <= INT32_MAX)
            and (not e.message or text_problem(e.message, MAX_MESSAGE) is None)
            and evidence_problem(e.evidence) is None)


def _envelope_error(error: Mapping[str, Any]) -> ContractError:
    where = ".".join(str(p) for p in error["loc"])
    return ContractError("bad_envelope", f"{where}: {error['msg']}")


def _without_refused(model: Any, raw: dict[str, Any], key: str,
                     exc: Any) -> tuple[Any, tuple[Refused, ...]]:
    """Validate the envelope again without the readings/events that failed on their own;
    an error in the envelope's own fields refuses it whole."""
    items = raw.get(key)
    bad: dict[int, Refused] = {}
    for error in exc.errors(include_url=False, include_input=False):
        loc = error["loc"]
        if len(loc) < 2 or loc[0] != key or not isinstance(items, list):
            raise _envelope_error(error) from None
        index = loc[1]
        if index not in bad:
            bad[index] = _refusal(index, items[index], key, error)
    kept = [item for i, item in enumerate(items) if i not in bad]  # type: ignore[arg-type]
    message = model.model_validate({**raw, key: kept})  # what passed alone passes together
    return message, tuple(bad[i] for i in sorted(bad))


def _refusal(index: int, item: Any, key: str, error: Mapping[str, Any]) -> Refused:
    device = item.get("device") if isinstance(item, dict) else None
    if not isinstance(device, str) or not DEVICE_ID_RE.fullmatch(device):
        device = ""
    kind, where = error["type"], error["loc"][2:]
    if kind in REFUSAL_REASONS:  # raised by the checks above, detail included
        return Refused(index, device, kind, error["msg"])
    if kind == "string_too_long":
        reason = "too_long"
    else:
        field = where[0] if where else None
        reason = _FIELD_REASONS.get(str(field), "bad_reading" if key == "readings" else "bad_event")
    detail = ".".join(str(p) for p in where)
    return Refused(index, device, reason, f"{detail}: {error['msg']}" if detail else error["msg"])


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
