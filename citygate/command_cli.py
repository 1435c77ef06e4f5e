"""`citygate command ...`: commands to field devices over the collector's REST API.

    citygate command send lift-t01 home_floor 5 --ttl 60 --wait 20   (token: CITYGATE_TOKEN)
    citygate command send lift-t01 service_mode 0                     (a dangerous point:
    citygate command confirm c-1a2b… --wait 20                         another person confirms)
    citygate command run p-1001 configure --arg heartbeat_s=900 --wait 60   (a parking node)
    citygate command run p-1001 recalibrate
    citygate command run dust-1 request_history --arg cn=2051 --arg begin=2026-01-05T08:00Z \
        --arg end=2026-01-05T10:00Z --wait 60                       (an operation with args)
    citygate command run dust-1 set_rtd_interval --arg rtd_interval=60 --wait 30
    citygate command list lift-t01
    citygate command show c-1a2b…

Exit status: 0 done (or issued, without --wait), 1 failed, expired or still open after
--wait, 2 refused by the collector or unreachable.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from citygate.rest_cli import CliError, answer, common_options, guarded
from citygate.rest_cli import client as rest_client

NODE_OPS = ("configure", "recalibrate")  # a parking node takes them at its next report
NODE_TTL_S = 3600.0

PROG = "citygate command"
ROLES = "role ops, crew, or technician while the gateway is being commissioned"


def parse_value(text: str) -> bool | int | float:
    """A value from the command line: true/false, an integer or a number."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise CliError(f"{text!r} is not true, false or a number") from None


def parse_arg(text: str) -> tuple[str, object]:
    """`--arg key=value`: an integer when the value is all digits, else the text."""
    key, eq, value = text.partition("=")
    if not eq or not key:
        raise CliError(f"--arg {text!r} is not key=value")
    return key, int(value) if value.isdigit() and len(value) <= 18 else value


def _line(c: dict[str, Any]) -> str:
    if c.get("op", "write") == "write":
        what, done = f"{c['point']}={c['value_written']!r}", "read back"
    else:
        args = " ".join(f"{k}={','.join(map(str, v)) if isinstance(v, list) else v}"
                        for k, v in (c.get("args") or {}).items())
        what, done = f"{c['op']}({args})", "answered"
    result = {"done": f"{done} {json.dumps(c['value_read_back'], ensure_ascii=False)}"
              if c["op"] != "write" else f"{done} {c['value_read_back']!r}",
              "failed": f"{c['reason']}: {c['message']}"}.get(c["status"], c["message"] or "")
    return (f"{c['id']}  {c['device']}  {what}  {c['status']}"
            + (f"  ({result})" if result else ""))


def _exit(c: dict[str, Any], waited: bool) -> int:
    if c["status"] == "done" or (not waited and c["status"] not in ("failed", "expired")):
        return 0
    return 1


def cmd_send(args: argparse.Namespace) -> int:
    """Issue a write; with --confirm also confirm a dangerous one; with --wait, wait for it."""
    body: dict[str, Any] = {"point": args.point, "value": parse_value(args.value),
                            "ttl_s": args.ttl, "wait_s": args.wait}
    if args.key:
        body["key"] = args.key
    with rest_client(args, ROLES) as client:
        out = answer(client.post(f"/api/v1/devices/{args.device}/commands", json=body))
        if out["status"] == "awaiting_confirmation":
            if not args.confirm:
                print(_line(out))
                print(f"{args.point} is marked dangerous: another person confirms it with "
                      f"`{PROG} confirm {out['id']}`", file=sys.stderr)
                return 0
            out = answer(client.post(f"/api/v1/commands/{out['id']}/confirm",
                                      params={"wait_s": args.wait}))
    print(_line(out))
    return _exit(out, bool(args.wait))


def cmd_run(args: argparse.Namespace) -> int:
    """Issue an operation with its arguments (HJ 212 station operations, ...)."""
    op_args = dict(parse_arg(a) for a in args.arg)
    ttl = args.ttl if args.ttl is not None else NODE_TTL_S if args.op in NODE_OPS else 60.0
    body: dict[str, Any] = {"op": args.op, "args": op_args, "ttl_s": ttl, "wait_s": args.wait}
    if args.key:
        body["key"] = args.key
    with rest_client(args, ROLES) as client:
        out = answer(client.post(f"/api/v1/devices/{args.device}/commands", json=body))
    print(_line(out))
    return _exit(out, bool(args.wait))


def cmd_confirm(args: argparse.Namespace) -> int:
    """Confirm a dangerous command."""
    with rest_client(args, ROLES) as client:
        out = answer(client.post(f"/api/v1/commands/{args.id}/confirm",
                                  params={"wait_s": args.wait}))
    print(_line(out))
    return _exit(out, bool(args.wait))


def cmd_list(args: argparse.Namespace) -> int:
    """A device's commands, newest first."""
    with rest_client(args, ROLES) as client:
        rows = answer(client.get(f"/api/v1/devices/{args.device}/commands",
                                  params={"limit": args.limit}))
    for row in rows:
        print(json.dumps(row, ensure_ascii=False) if args.json else _line(row))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    """One command and its audit trail."""
    with rest_client(args, ROLES) as client:
        out = answer(client.get(f"/api/v1/commands/{args.id}"))
    if args.json:
        print(json.dumps(out, ensure_ascii=False, indent=2))
        return 0
    print(_line(out))
    for entry in out["audit"]:
        print(f"  {entry['at']}  {entry['who']:<20} {entry['what']:<10} "
              f"{json.dumps(entry['detail'], ensure_ascii=False)}")
    return 0


def add_parser(sub: Any) -> None:
    """Register `citygate command` and its subcommands."""
    top = sub.add_parser("command", help="commands to field devices: send, run, confirm, list,"
                         " show").add_subparsers(dest="command_cmd", required=True)
    send = top.add_parser("send", help="write a value to a writable point of a device")
    send.add_argument("device")
    send.add_argument("point", help="canonical quantity, e.g. home_floor")
    send.add_argument("value", help="true, false or a number (canonical unit)")
    send.add_argument("--ttl", type=float, default=60.0, help="seconds until it expires")
    send.add_argument("--key", help="idempotency key: sending it again gives the same command")
    send.add_argument("--wait", type=float, default=0.0, help="wait up to this many seconds "
                      "for the result (max 60)")
    send.add_argument("--confirm", action="store_true",
                      help="also confirm a write to a point marked dangerous (only where the "
                           "collector's [commands] four_eyes = false; else another person "
                           "confirms)")
    run = top.add_parser("run", help="run an operation on a device (set_time, "
                         "set_rtd_interval, read_params, request_history on an HJ 212 "
                         "station; configure, recalibrate on a parking node; "
                         "docs/commands.md)")
    run.add_argument("device")
    run.add_argument("op", help="the operation, e.g. request_history")
    run.add_argument("--arg", action="append", default=[], metavar="KEY=VALUE",
                     help="an argument of the operation (repeat), e.g. cn=2051 or "
                          "heartbeat_s=1800")
    run.add_argument("--ttl", type=float, default=None, help="seconds until it expires (default"
                     " 60; 3600 for configure and recalibrate, which a parking node takes at its"
                     " next report)")
    run.add_argument("--key", help="idempotency key: sending it again gives the same command")
    run.add_argument("--wait", type=float, default=0.0, help="wait up to this many seconds "
                     "for the result (max 60)")
    conf = top.add_parser("confirm", help="confirm a dangerous command")
    conf.add_argument("id")
    conf.add_argument("--wait", type=float, default=0.0)
    lst = top.add_parser("list", help="a device's commands, newest first")
    lst.add_argument("device")
    lst.add_argument("--limit", type=int, default=50)
    lst.add_argument("--json", action="store_true")
    show = top.add_parser("show", help="one command and its audit trail")
    show.add_argument("id")
    show.add_argument("--json", action="store_true")
    for p, func in ((send, cmd_send), (run, cmd_run), (conf, cmd_confirm), (lst, cmd_list),
                    (show, cmd_show)):
        common_options(p, 90.0)
        p.set_defaults(func=guarded(PROG, func))
