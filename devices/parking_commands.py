"""Commands for parking nodes (`configure`, `recalibrate`): the one check of their arguments.

Pure. The collector runs `check_node_command` when a command is issued and the gateway again
when it receives it; a refusal carries a stable reason (NODE_REFUSALS). `node_command` turns a
checked DeviceCommand into what rides in the CoAP reply (devices/parking.py): the node applies
it and acknowledges it by its tag in its next report. See docs/commands.md "Parking nodes".
"""

from __future__ import annotations

import zlib
from typing import Any

from devices.commands import DeviceCommand
from devices.parking import NODE_OPS, SETTINGS, NodeCommand

NODE_REFUSALS = frozenset({"unsupported_operation", "unknown_setting", "bad_value",
                           "out_of_range", "no_settings", "unexpected_args", "inconsistent"})


class NodeCommandRefused(ValueError):
    """A node command that must not be sent; `reason` is one of NODE_REFUSALS."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def check_node_command(op: str, args: Any) -> dict[str, int]:
    """The settings of a node command, checked: `configure` takes one to all of SETTINGS
    (integers within their bounds, leave_mg below enter_mg when both are given),
    `recalibrate` takes none. NodeCommandRefused says what is wrong."""
    if op not in NODE_OPS:
        raise NodeCommandRefused("unsupported_operation", f"a parking node has no {op!r}; "
                                 f"use one of {sorted(NODE_OPS)}")
    if not isinstance(args, dict):
        raise NodeCommandRefused("bad_value", "args must be an object")
    if op == "recalibrate":
        if args:
            raise NodeCommandRefused("unexpected_args", "recalibrate takes no arguments "
                                     "(the node re-learns the empty-bay field it measures)")
        return {}
    if not args:
        raise NodeCommandRefused("no_settings", f"configure needs at least one of "
                                 f"{', '.join(SETTINGS)}")
    out: dict[str, int] = {}
    for name, value in args.items():
        spec = SETTINGS.get(name) if isinstance(name, str) else None
        if spec is None:
            shown = repr(name)[:40]
            raise NodeCommandRefused("unknown_setting", f"{shown} is not a node setting; "
                                     f"known: {', '.join(SETTINGS)}")
        _, low, high = spec
        if type(value) is not int:
            raise NodeCommandRefused("bad_value", f"{name} must be an integer, got "
                                     f"{type(value).__name__}")
        if not low <= value <= high:
            raise NodeCommandRefused("out_of_range", f"{name}={value} outside {low}..{high}")
        out[name] = value
    if "enter_mg" in out and "leave_mg" in out and out["leave_mg"] >= out["enter_mg"]:
        raise NodeCommandRefused("inconsistent", f"leave_mg ({out['leave_mg']}) must be below "
                                 f"enter_mg ({out['enter_mg']})")
    return out


def command_tag(key: str) -> int:
    """The short id a node acknowledges: a u32 of the command's key, never 0, the same after
    a gateway restart (so a re-delivered command is recognised by the node)."""
    return zlib.crc32(key.encode()) or 1


def node_command(cmd: DeviceCommand) -> NodeCommand:
    """The wire form of a checked command (NodeCommandRefused when its arguments are bad)."""
    settings = check_node_command(cmd.op, cmd.args)
    return NodeCommand(NODE_OPS[cmd.op], command_tag(cmd.key),
                       tuple(sorted((SETTINGS[n][0], v) for n, v in settings.items())))
