"""MQTT wire contract v1: topics and JSON envelopes between gateways and collectors.

Sans-IO: building topic names and payload bytes, and validating payloads received. The contract
is written up in docs/mqtt-contract.md; change both together and bump VERSION for breaking
changes. Everything here works on MQTT 3.1.1 (no MQTT-5-only feature is required).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from devices.model import Event, Reading

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


_EPOCH_MS_MIN = 946_684_800_000  # 2000-01-01: anything older is an unsynchronised clock
MAX_PAYLOAD = 4 * 1024 * 1024

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
