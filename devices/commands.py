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

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
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
ACCEPTED, DONE, FAILED, EXPIRED = "accepted", "done", "failed", "expired"
FINAL = frozenset({DONE, FAILED, EXPIRED})
STATUSES = frozenset({ACCEPTED, *FINAL})
MAX_TTL_MS = 7 * 24 * 3600 * 1000  # a command lives at most a week
# Stable reasons of a failed command (besides devices.modbus.writes.WRITE_REFUSALS).
FAIL_REASONS = frozenset({"unknown_device", "unsupported_operation", "device_error",
                          "read_back_mismatch", "interrupted", "bad_command",
                          # parking nodes (docs/commands.md "Parking nodes")
                          "not_acknowledged", "node_busy",
                          # HJ 212 stations (docs/commands.md "HJ 212 stations")
                          "no_answer", "wrong_password", "station_refused", "execution_failed",
                          "clock_not_synced"})


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


# --- operations ---------------------------------------------------------------------------------
#
# One entry per operation: the device kinds it applies to and the check of its arguments. The
# same pure check runs at the collector when a command is issued (a refusal is 422 `bad_args`)
# and at the gateway when it arrives (a refusal is `failed: bad_command`), and returns the
# arguments in their canonical form (times as epoch ms), which is what travels and is stored.

EARLIEST_ARG_MS = 946_684_800_000  # 2000-01-01T00:00:00Z: no station time lies before it
LATEST_ARG_MS = 4_102_444_800_000  # 2100-01-01T00:00:00Z
MAX_HISTORY_MS = 7 * 86_400_000  # a history request spans at most a week
HISTORY_CNS = {"2051": "minute", "2061": "hour", "2031": "day"}  # CN -> data asked for
STATION_PARAMS = {"time": "1011", "rtd_interval": "1061"}  # read_params name -> HJ 212 CN
RTD_INTERVAL_S = (10, 3600)  # set_rtd_interval: the real-time interval's bounds (CN 1062)
HJ212_KINDS = frozenset({"dust_monitor", "boiler_cems", "fume_monitor"})
PARKING_NODE = "parking_node"  # the kind of a device that reports without a profile
_ISO_MAX = 40


class ArgsRefused(ValueError):
    """Arguments an operation does not accept: a stable reason and a message for people."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True, slots=True)
class OpSpec:
    """What an operation needs: the device kinds it applies to and its argument check."""

    kinds: frozenset[str] | None  # profile `kind`s; None: any (the profile decides)
    check: Callable[[dict[str, Any]], dict[str, Any]]  # args -> canonical args; ArgsRefused
    summary: str


def _keys(args: dict[str, Any], allowed: set[str]) -> None:
    unknown = set(args) - allowed
    if unknown:
        raise ArgsRefused("bad_args", f"unknown argument(s) {sorted(unknown)[:5]}; "
                          f"expected {sorted(allowed)}")


def arg_time_ms(name: str, value: object) -> int:
    """A time argument as epoch ms: an integer of epoch ms, or an ISO 8601 text (without an
    offset it is UTC); within 2000..2100."""
    if type(value) is int:
        ms = value
    elif isinstance(value, str) and value.isdigit() and len(value) <= 16:
        ms = int(value)
    elif isinstance(value, str) and 0 < len(value) <= _ISO_MAX and value.isascii():
        try:
            when = datetime.fromisoformat(value)
        except ValueError:
            raise ArgsRefused("bad_args", f"{name}={value!r} is neither epoch milliseconds "
                              "nor an ISO 8601 time") from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        ms = int(when.timestamp() * 1000)
    else:
        raise ArgsRefused("bad_args", f"{name} must be epoch milliseconds or an ISO 8601 time"
                          f" (got {str(value)[:_ISO_MAX]!r})")
    if not EARLIEST_ARG_MS <= ms < LATEST_ARG_MS:
        raise ArgsRefused("bad_args", f"{name}={ms} is not a time between 2000 and 2100")
    return ms


def _write_args(args: dict[str, Any]) -> dict[str, Any]:
    # Checked against the device profile by devices.modbus.writes.plan_write (both ends).
    return args


def _set_time_args(args: dict[str, Any]) -> dict[str, Any]:
    _keys(args, {"time"})
    return {} if args.get("time") is None else {"time": arg_time_ms("time", args["time"])}


def _history_args(args: dict[str, Any]) -> dict[str, Any]:
    _keys(args, {"cn", "begin", "end"})
    cn = str(args.get("cn", ""))[:8] if type(args.get("cn")) in (int, str) else ""
    if cn not in HISTORY_CNS:
        raise ArgsRefused("bad_args", f"cn must be one of {sorted(HISTORY_CNS)} "
                          "(minute, hour, day data)")
    for name in ("begin", "end"):
        if name not in args:
            raise ArgsRefused("bad_args", f"{name} is required")
    begin, end = arg_time_ms("begin", args["begin"]), arg_time_ms("end", args["end"])
    if end < begin:
        raise ArgsRefused("bad_args", "end is before begin")
    if end - begin > MAX_HISTORY_MS:
        raise ArgsRefused("bad_args", f"a history request spans at most "
                          f"{MAX_HISTORY_MS // 86_400_000} days")
    return {"cn": cn, "begin": begin, "end": end}


def _read_params_args(args: dict[str, Any]) -> dict[str, Any]:
    _keys(args, {"params"})
    raw = args.get("params", sorted(STATION_PARAMS))
    if isinstance(raw, str):
        raw = [p.strip() for p in raw[:200].split(",") if p.strip()]
    if not isinstance(raw, list) or not raw or len(raw) > len(STATION_PARAMS) or any(
            p not in STATION_PARAMS for p in raw):
        raise ArgsRefused("bad_args", f"params must name some of {sorted(STATION_PARAMS)}")
    return {"params": sorted(set(raw))}


def _rtd_interval_args(args: dict[str, Any]) -> dict[str, Any]:
    _keys(args, {"rtd_interval"})
    raw = args.get("rtd_interval")
    if isinstance(raw, str) and raw.isascii() and raw.isdigit() and len(raw) <= 6:
        raw = int(raw)
    low, high = RTD_INTERVAL_S
    if type(raw) is not int or not low <= raw <= high:
        raise ArgsRefused("bad_args", f"rtd_interval must be whole seconds {low}..{high} "
                          f"(got {str(raw)[:_ISO_MAX]!r})")
    return {"rtd_interval": raw}


def _node_args(op: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def check(args: dict[str, Any]) -> dict[str, Any]:
        from devices.parking_commands import NodeCommandRefused, check_node_command

        try:
            return dict(check_node_command(op, args))
        except NodeCommandRefused as exc:  # keeps its own reason (out_of_range, ...)
            raise ArgsRefused(exc.reason, exc.detail) from None

    return check


OPS: dict[str, OpSpec] = {
    "write": OpSpec(None, _write_args, "write a value to a writable point (Modbus)"),
    "set_time": OpSpec(HJ212_KINDS, _set_time_args,
                       "set the station's clock (CN 1012), to the gateway's synced clock or"
                       " `time`"),
    "request_history": OpSpec(HJ212_KINDS, _history_args,
                              "ask the station for minute/hour/day data (CN 2051/2061/2031)"
                              " of [begin, end]"),
    "read_params": OpSpec(HJ212_KINDS, _read_params_args,
                          "read the station's time (CN 1011) and real-time interval"
                          " (CN 1061)"),
    "set_rtd_interval": OpSpec(HJ212_KINDS, _rtd_interval_args,
                               "set the station's real-time (2011) upload interval (CN 1062)"),
    "configure": OpSpec(frozenset({PARKING_NODE}), _node_args("configure"),
                        "change a parking node's settings, delivered in the CoAP reply to its"
                        " next report"),
    "recalibrate": OpSpec(frozenset({PARKING_NODE}), _node_args("recalibrate"),
                          "make a parking node re-learn its empty-bay magnetic field"),
}
OPERATIONS = frozenset(OPS)
_OP_RE = re.compile(r"^[a-z][a-z_]{0,31}$")


def check_args(op: str, kind: str | None, args: object) -> dict[str, Any]:
    """The canonical arguments of `op` for a device of `kind` (None: not known here);
    ArgsRefused with `unsupported_operation` or `bad_args` says why not."""
    spec = OPS.get(op) if _OP_RE.fullmatch(op) else None
    if spec is None:
        raise ArgsRefused("unsupported_operation", f"operation {op[:32]!r} is not one of "
                          f"{sorted(OPS)}")
    if kind is not None and spec.kinds is not None and kind not in spec.kinds:
        raise ArgsRefused("unsupported_operation", f"{op} does not apply to a {kind[:32]} "
                          f"device (only {', '.join(sorted(spec.kinds))})")
    if not isinstance(args, dict) or json_problem(args) is not None:
        raise ArgsRefused("bad_args", "args must be a bounded JSON object")
    return spec.check(args)
