"""`citygate grid ...`: import outlines and fetch department figures from a running collector."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from collector.grid.geo import MAX_BYTES

TOKEN_ENV = "CITYGATE_TOKEN"


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--collector", default=os.environ.get("CITYGATE_URL",
                                                         "http://127.0.0.1:8080"),
                   help="collector base URL (default: $CITYGATE_URL or http://127.0.0.1:8080)")
    p.add_argument("--token", default=None,
                   help=f"an API token (default: ${TOKEN_ENV}); import needs admin")


def add_parser(sub: Any) -> None:
    """Register `grid` and its subcommands on the citygate parser."""
    grid = sub.add_parser("grid", help="district/area/grid outlines and department figures")
    cmds = grid.add_subparsers(dest="grid_cmd", required=True)
    imp = cmds.add_parser("import", help="import a GeoJSON FeatureCollection of outlines",
                          description="Replace the outlines by FILE (or, with --merge, add "
                                      "and change only the features in it).")
    imp.add_argument("file", type=Path)
    imp.add_argument("--merge", action="store_true", help="keep outlines not in FILE")
    _common(imp)
    imp.set_defaults(func=cmd_import)
    ass = cmds.add_parser("assess", help="department figures over a period, as CSV")
    ass.add_argument("--by", choices=("unit", "grid", "district"), default="unit")
    ass.add_argument("--from", dest="start", required=True, help="ISO 8601 date or time")
    ass.add_argument("--to", dest="end", required=True, help="ISO 8601 date or time")
    _common(ass)
    ass.set_defaults(func=cmd_assess)


def _token(args: argparse.Namespace) -> str:
    token = args.token or os.environ.get(TOKEN_ENV, "")
    if not token:
        raise SystemExit(f"error: give --token or set ${TOKEN_ENV}")
    return str(token)


def _fail(what: str, status: int, body: Any) -> int:
    detail = body.get("detail") if isinstance(body, dict) else body
    if isinstance(detail, list) and detail and isinstance(detail[0], dict):
        where = ".".join(str(p) for p in detail[0].get("loc", [])[1:])
        detail = f"{where}: {detail[0].get('msg')}"
    print(f"error: {what} refused ({status}): {detail}", file=sys.stderr)
    return 2


def cmd_import(args: argparse.Namespace) -> int:
    """Send the file to PUT (or POST, --merge) /api/v1/grid/outlines."""
    import httpx

    path: Path = args.file
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            print(f"error: {path}: {size} bytes; at most {MAX_BYTES}", file=sys.stderr)
            return 2
        body = path.read_bytes()
    except OSError as exc:
        print(f"error: {path}: cannot read: {exc.strerror}", file=sys.stderr)
        return 2
    method = "POST" if args.merge else "PUT"
    r = httpx.request(method, f"{args.collector.rstrip('/')}/api/v1/grid/outlines",
                      content=body, timeout=60,
                      headers={"Authorization": f"Bearer {_token(args)}",
                               "Content-Type": "application/geo+json"})
    if r.status_code != 200:
        try:
            return _fail(f"import of {path}", r.status_code, r.json())
        except ValueError:
            return _fail(f"import of {path}", r.status_code, r.text)
    got = r.json()
    print(f"imported {got['imported']} outlines: {got['districts']} districts, "
          f"{got['areas']} areas, {got['grids']} grids")
    return 0


def cmd_assess(args: argparse.Namespace) -> int:
    """Print GET /api/v1/assessment as CSV."""
    import httpx

    r = httpx.get(f"{args.collector.rstrip('/')}/api/v1/assessment",
                  params={"by": args.by, "from": args.start, "to": args.end, "format": "csv"},
                  headers={"Authorization": f"Bearer {_token(args)}"}, timeout=60)
    if r.status_code != 200:
        return _fail("assessment", r.status_code, r.json())
    sys.stdout.write(r.text)
    return 0
