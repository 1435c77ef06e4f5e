"""`citygate command ...`: writes to field devices over the collector's REST API.

    citygate command send lift-t01 home_floor 5 --ttl 60 --wait 20   (token: CITYGATE_TOKEN)
    citygate command send lift-t01 service_mode 0 --confirm           (a dangerous point)
    citygate command list lift-t01
    citygate command show c-1a2b…

Exit status: 0 done (or issued, without --wait), 1 failed, expired or still open after
--wait, 2 refused by the collector or unreachable.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import httpx

TOKEN_ENV = "CITYGATE_TOKEN"
PROG = "citygate command"


class CliError(Exception):
    """A failure to report in one line, with what to do."""


def _client(args: argparse.Namespace) -> httpx.Client:
    token = args.token or os.environ.get(TOKEN_ENV, "")
    if not token:
        raise CliError(f"no token: pass --token or set {TOKEN_ENV} (role ops, or crew)")
    return httpx.Client(base_url=args.collector.rstrip("/"), timeout=args.timeout,
                        headers={"Authorization": f"Bearer {token}"})


def _answer(response: httpx.Response) -> Any:
    if response.status_code >= 400:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        if isinstance(detail, dict):
            detail = f"{detail.get('reason')}: {detail.get('message')}"
        raise CliError(f"collector answered {response.status_code}: {detail}")
    return response.json()


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


def _line(c: dict[str, Any]) -> str:
    result = {"done": f"read back {c['value_read_back']!r}",
              "failed": f"{c['reason']}: {c['message']}"}.get(c["status"], c["message"] or "")
    return (f"{c['id']}  {c['device']}  {c['point']}={c['value_written']!r}  {c['status']}"
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
    with _client(args) as client:
        out = _answer(client.post(f"/api/v1/devices/{args.device}/commands", json=body))
        if out["status"] == "awaiting_confirmation":
            if not args.confirm:
                print(_line(out))
                print(f"{args.point} is marked dangerous: confirm with `{PROG} confirm "
                      f"{out['id']}` (or send again with --confirm)", file=sys.stderr)
                return 0
            out = _answer(client.post(f"/api/v1/commands/{out['id']}/confirm",
                                      params={"wait_s": args.wait}))
    print(_line(out))
    return _exit(out, bool(args.wait))


def cmd_confirm(args: argparse.Namespace) -> int:
    """Confirm a dangerous command."""
    with _client(args) as client:
        out = _answer(client.post(f"/api/v1/commands/{args.id}/confirm",
                                  params={"wait_s": args.wait}))
    print(_line(out))
    return _exit(out, bool(args.wait))


def cmd_list(args: argparse.Namespace) -> int:
    """A device's commands, newest first."""
    with _client(args) as client:
        rows = _answer(client.get(f"/api/v1/devices/{args.device}/commands",
                                  params={"limit": args.limit}))
    for row in rows:
        print(json.dumps(row, ensure_ascii=False) if args.json else _line(row))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    """One command and its audit trail."""
    with _client(args) as client:
        out = _answer(client.get(f"/api/v1/commands/{args.id}"))
    if args.json:
        print(json.dumps(out, ensure_ascii=False, indent=2))
        return 0
    print(_line(out))
    for entry in out["audit"]:
        print(f"  {entry['at']}  {entry['who']:<20} {entry['what']:<10} "
              f"{json.dumps(entry['detail'], ensure_ascii=False)}")
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--collector", default="http://127.0.0.1:8080", help="collector base URL")
    p.add_argument("--token", help=f"API token (default: ${TOKEN_ENV})")
    p.add_argument("--timeout", type=float, default=90.0)


def _guarded(func: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            return int(func(args))
        except CliError as exc:
            print(f"{PROG}: {exc}", file=sys.stderr)
            return 2
        except httpx.HTTPError as exc:
            print(f"{PROG}: cannot reach {args.collector}: {exc}", file=sys.stderr)
            return 2
    return run


def add_parser(sub: Any) -> None:
    """Register `citygate command` and its subcommands."""
    top = sub.add_parser("command", help="writes to field devices: send, confirm, list, show"
                         ).add_subparsers(dest="command_cmd", required=True)
    send = top.add_parser("send", help="write a value to a writable point of a device")
    send.add_argument("device")
    send.add_argument("point", help="canonical quantity, e.g. home_floor")
    send.add_argument("value", help="true, false or a number (canonical unit)")
    send.add_argument("--ttl", type=float, default=60.0, help="seconds until it expires")
    send.add_argument("--key", help="idempotency key: sending it again gives the same command")
    send.add_argument("--wait", type=float, default=0.0, help="wait up to this many seconds "
                      "for the result (max 60)")
    send.add_argument("--confirm", action="store_true",
                      help="also confirm a write to a point marked dangerous")
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
    for p, func in ((send, cmd_send), (conf, cmd_confirm), (lst, cmd_list), (show, cmd_show)):
        _common(p)
        p.set_defaults(func=_guarded(func))
