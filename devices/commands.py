"""Device commands on the wire (contract v1, command version 1), sans-IO.

Down: `citygate/v1/<gateway>/cmd/device`, one command per message:

    {"v": 1, "cv": 1, "id": "c-…", "key": "…", "device": "lift-t01", "op": "write",
     "args": {"point": "home_floor", "value": 5}, "issuer": "ops-anna",
     "issued": 1763690000000, "expires": 1763690060000}

Up: the gateway's `reply` channel (command "device", id = the command's id), one reply per
status change: `accepted` (stored durably, waiting for the bus), then one final status —
`done` (with `value` read back), `failed` (with `reason`, a stable code) or `expired`
(`expires` passed before the command could run; it never runs afterwards). The `key` is the
issuer's idempotency key: a gateway that has seen a key answers with that command's status and
never executes it a second time. See docs/mqtt-contract.md "Device commands".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from devices.contract import (
    DEVICE_ID_RE,
    INT64_MAX,
    MAX_SHORT,
    VERSION,
    ContractError,
    json_problem,
    text_problem,
)

COMMAND_VERSION = 1
COMMAND_NAME = "device"  # the cmd/<name> topic and the reply's `command`
# Which kind of device carries out each operation (the gateway dispatches on it).
OP_KINDS = {"write": "modbus", "configure": "parking", "recalibrate": "parking"}
OPERATIONS = frozenset(OP_KINDS)
ACCEPTED, DONE, FAILED, EXPIRED = "accepted", "done", "failed", "expired"
FINAL = frozenset({DONE, FAILED, EXPIRED})
STATUSES = frozenset({ACCEPTED, *FINAL})
MAX_TTL_MS = 7 * 24 * 3600 * 1000  # a command lives at most a week
# Stable reasons of a failed command (besides devices.modbus.writes.WRITE_REFUSALS).
FAIL_REASONS = frozenset({"unknown_device", "unsupported_operation", "device_error",
                          "read_back_mismatch", "interrupted", "bad_command",
                          "not_acknowledged", "no_answer", "node_busy"})


@dataclass(frozen=True, slots=True)
class DeviceCommand:
    """One command for one device, as the collector sends it and the gateway stores it."""

    id: str
    key: str
    device: str
    op: str
    args: dict[str, Any]
    issuer: str
    issued: int  # epoch ms
    expires: int  # epoch ms; never executed at or after this instant

    def expired(self, now_ms: int) -> bool:
        """True once the command may no longer run."""
        return now_ms >= self.expires

    def to_json(self) -> bytes:
        """The command message."""
        return orjson.dumps({"v": VERSION, "cv": COMMAND_VERSION, "id": self.id,
                             "key": self.key, "device": self.device, "op": self.op,
                             "args": self.args, "issuer": self.issuer, "issued": self.issued,
                             "expires": self.expires})


@dataclass(frozen=True, slots=True)
class CommandResult:
    """A status of a command, as carried by a reply's `detail`."""

    status: str
    at: int  # epoch ms at the gateway
    value: Any = None  # done: the value read back
    reason: str = ""  # failed: a stable code
    message: str = ""  # for people
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Whether the command did (or, accepted, may still do) what was asked."""
        return self.status in (ACCEPTED, DONE)

    def detail(self) -> dict[str, Any]:
        """The reply's `detail` object."""
        out: dict[str, Any] = {"cv": COMMAND_VERSION, "status": self.status, "at": self.at}
        if self.status == DONE:
            out["value"] = self.value
        if self.reason:
            out["reason"] = self.reason
        if self.message:
            out["message"] = self.message[:MAX_SHORT * 4]
        return out


def _text(doc: dict[str, Any], key: str, limit: int = MAX_SHORT) -> str:
    value = doc.get(key)
    if not isinstance(value, str) or not value:
        raise ContractError("bad_command", f"{key!r} must be a non-empty string")
    problem = text_problem(value, limit, key)
    if problem is not None:
        raise ContractError("bad_command", problem[1])
    return value


def _ms(doc: dict[str, Any], key: str) -> int:
    value = doc.get(key)
    if type(value) is not int or not 0 <= value <= INT64_MAX:
        raise ContractError("bad_command", f"{key!r} must be epoch milliseconds")
    return value


def parse_command(payload: bytes) -> DeviceCommand:
    """Validate a command message; ContractError (reason `bad_command`) says what is wrong."""
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise ContractError("bad_command", f"not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("v") != VERSION or doc.get("cv") != COMMAND_VERSION:
        raise ContractError("bad_command", f"needs v={VERSION} and cv={COMMAND_VERSION}")
    device = _text(doc, "device")
    if not DEVICE_ID_RE.fullmatch(device):
        raise ContractError("bad_command", f"{device!r} is not a device id")
    args = doc.get("args", {})
    if not isinstance(args, dict) or json_problem(args) is not None:
        raise ContractError("bad_command", "'args' must be a bounded JSON object")
    issued, expires = _ms(doc, "issued"), _ms(doc, "expires")
    if not issued < expires <= issued + MAX_TTL_MS:
        raise ContractError("bad_command", "'expires' must follow 'issued' by at most a week")
    return DeviceCommand(id=_text(doc, "id"), key=_text(doc, "key"), device=device,
                         op=_text(doc, "op"), args=args, issuer=_text(doc, "issuer"),
                         issued=issued, expires=expires)


def parse_result(detail: dict[str, Any]) -> CommandResult:
    """A reply's detail as a CommandResult; ContractError when it is not one."""
    status = detail.get("status")
    at = detail.get("at")
    if status not in STATUSES or type(at) is not int:
        raise ContractError("bad_result", f"status {status!r} / at {at!r}")
    reason, message = detail.get("reason", ""), detail.get("message", "")
    return CommandResult(status=str(status), at=at, value=detail.get("value"),
                         reason=str(reason)[:MAX_SHORT], message=str(message)[:MAX_SHORT * 4])
