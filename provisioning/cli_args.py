"""Arguments of every `citygate provision` subcommand."""

from __future__ import annotations

import argparse
from pathlib import Path
from types import ModuleType
from typing import Any

from devices.modbus.units import parse_units


def _units(text: str) -> list[int]:
    """Unit ids to scan ("1-247"; 0 is allowed for devices that answer there)."""
    try:
        return parse_units(text, lowest=0)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None

def _host_port(p: argparse.ArgumentParser, cli: ModuleType, *, units: bool) -> None:
    p.add_argument("--host", help="Modbus TCP host")
    p.add_argument("--port", type=int, default=502, help="Modbus TCP port (default 502)")
    p.add_argument("--serial", help="serial port (e.g. /dev/ttyUSB0) for Modbus RTU")
    p.add_argument("--timeout", type=float, default=0.25, help="seconds per request")
    if units:
        p.add_argument("--units", type=_units, default=_units("1-247"),
                       help="unit ids to try, e.g. 1-32 (default 1-247)")


def _seconds(text: str) -> float:
    """A duration: 90, 90s, 15m or 2h."""
    units = {"s": 1.0, "m": 60.0, "h": 3600.0}
    try:
        if text and text[-1] in units:
            return float(text[:-1]) * units[text[-1]]
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 90s, 15m") from None


def _config_rollouts(sub: Any, cmd: Any, cli: ModuleType) -> None:
    cfg = sub.add_parser("config", help="config rollouts to many gateways").add_subparsers(
        dest="cfg_cmd", required=True)
    p = cmd("push", cli.cmd_config_push, "push a config (or a patch) to gateways in stages: "
            "canaries first, the rest once they are confirmed", cfg)
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--gateway", action="append", metavar="ID",
                     help="a gateway (repeatable)")
    who.add_argument("--group", metavar="NAME", help="the gateways of the sites of a district")
    who.add_argument("--site", metavar="SITE", help="the gateways of a site")
    who.add_argument("--all", action="store_true", help="every registered gateway")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--config", type=Path, metavar="FILE",
                      help="a whole gateway.toml; each gateway gets its own [gateway] id/site")
    what.add_argument("--patch", type=Path, metavar="FILE",
                      help="TOML tables merged into each gateway's known config")
    first = p.add_mutually_exclusive_group()
    first.add_argument("--canaries", type=int, metavar="N", help="the first N go first "
                                                                 "(default 1)")
    first.add_argument("--canary-percent", type=float, metavar="P",
                       help="or this share of the gateways, rounded up")
    p.add_argument("--batch", type=int, default=10,
                   help="gateways of the rest in flight at once (default 10)")
    p.add_argument("--max-failures", type=int, default=0,
                   help="failures tolerated in the rest before the rollout halts (default 0)")
    p.add_argument("--deadline", type=_seconds, default=900.0,
                   help="per gateway, from the command to confirmed (default 15m)")
    p.add_argument("--device-grace", type=_seconds,
                   help="how long devices may stay silent after the change before the "
                        "gateway rolls back (default: the gateway's own)")
    p.add_argument("--wait", type=_seconds, metavar="DURATION",
                   help="follow the rollout until it is done or halted, at most this long")
    for name, func, what_ in (("status", cli.cmd_config_status, "a rollout's stage and each "
                               "gateway's state"),
                              ("revert", cli.cmd_config_revert, "send the previous config "
                               "back to every gateway a rollout changed")):
        p = cmd(name, func, what_, cfg)
        p.add_argument("--rollout", required=True, metavar="ID")
        p.add_argument("--wait", type=_seconds, metavar="DURATION",
                       help="follow the rollout until it is done or halted")


def add_arguments(sub: Any, cli: ModuleType) -> None:
    """Add the subcommands; their handlers are functions of the `cli` module."""
    def cmd(name: str, func: Any, help_: str, parent: Any = sub) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = parent.add_parser(name, help=help_, description=help_)
        p.set_defaults(func=cli.run, prov_func=func)
        return p

    p = cmd("login", cli.cmd_login, "store the collector URL and your technician token")
    p.add_argument("--collector", required=True, help="collector base URL, https://...")
    p.add_argument("--token", required=True, help="your technician token")

    gw = sub.add_parser("gateway", help="gateway identities").add_subparsers(
        dest="gw_cmd", required=True)
    p = cmd("new", cli.cmd_gateway_new, "create a gateway identity and its config bundle", gw)
    p.add_argument("--site", required=True, help="site id the gateway is installed at")
    p.add_argument("--id", help="gateway id (default: generated from the site)")
    p.add_argument("--out", type=Path, help="bundle directory (default bundle-<id>)")

    p = cmd("token", cli.cmd_token, "create a one-time zero-touch provisioning token")
    p.add_argument("--site", required=True)

    p = cmd("claim", cli.cmd_claim, "exchange a provisioning token for an identity")
    p.add_argument("--collector", required=True)
    p.add_argument("--token", required=True, help="the one-time provisioning token")
    p.add_argument("--id", help="gateway id to ask for")
    p.add_argument("--out", type=Path)
    p.add_argument("--to", type=Path, help="also install the bundle here (e.g. /etc/citygate)")

    p = cmd("apply", cli.cmd_apply, "install a config bundle (e.g. from a USB stick)")
    p.add_argument("bundle", type=Path)
    p.add_argument("--to", type=Path, default=Path("/etc/citygate"))

    dev = sub.add_parser("device", help="devices in a gateway config").add_subparsers(
        dest="dev_cmd", required=True)
    p = cmd("add", cli.cmd_device_add, "add a device to a gateway config", dev)
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--id", required=True, help="device id, e.g. lift-erqi-3")
    p.add_argument("--profile", required=True, help="device profile name or file")
    p.add_argument("--bus", required=True, help="bus name (created when --bus-type is given)")
    p.add_argument("--unit", type=int, default=1, help="Modbus unit id")
    p.add_argument("--poll", default="1s")
    p.add_argument("--mn", help="HJ 212 MN of an environmental station")
    p.add_argument("--bus-type", choices=["modbus-tcp", "modbus-rtu", "hj212-serial",
                                          "parking-serial"], help="create the bus")
    p.add_argument("--host")
    p.add_argument("--port", help="TCP port, or serial device path for serial buses")
    p.add_argument("--baud", type=int, default=9600)
    p.add_argument("--parity", choices=["N", "E", "O"], default="N")

    p = cmd("scan", cli.cmd_scan, "find responding unit ids, serial settings or protocols")
    _host_port(p, cli, units=True)
    p.add_argument("--profile", help="probe with this profile's first block instead of "
                                     "holding register 0")
    p.add_argument("--listen", type=float, metavar="SECONDS",
                   help="listen on --serial for HJ 212 or parking frames at each setting")

    p = cmd("preview", cli.cmd_preview, "show registers as every type and word order")
    _host_port(p, cli, units=False)
    p.add_argument("--baud", type=int, default=9600)
    p.add_argument("--parity", choices=["N", "E", "O"], default="N")
    p.add_argument("--unit", type=int, required=True)
    p.add_argument("--address", type=int, required=True)
    p.add_argument("--count", type=int, default=4)
    p.add_argument("--table", choices=["holding", "input"], default="holding")
    p.add_argument("--all-offsets", action="store_true",
                   help="also interpret starting at every later register")

    p = cmd("commission", cli.cmd_commission, "run the commissioning checklist")
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--offline", action="store_true", help="do not contact the collector")

    _config_rollouts(sub, cmd, cli)

    cmd("sync", cli.cmd_sync, "upload commissioning results queued while offline")
    p = cmd("log", cli.cmd_log, "show the local install log")
    p.add_argument("--gateway")
