"""`citygate sources ...`: the pollution-source registry from the command line, over the REST API.

    citygate sources import sources.csv --collector http://collector:8080   (token: CITYGATE_TOKEN)
    citygate sources list --kind restaurant
    citygate sources attribute --lat 34.75 --lon 113.65
    citygate sources tasks --state pushed
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from citygate.rest_cli import CliError, answer, common_options, guarded
from citygate.rest_cli import client as rest_client

CONTENT_TYPES = {"csv": "text/csv", "geojson": "application/geo+json"}




def _format(path: Path, given: str | None) -> str:
    if given:
        return given
    if path.suffix.lower() in (".geojson", ".json"):
        return "geojson"
    return "csv"


def cmd_import(args: argparse.Namespace) -> int:
    """Upsert the file's sources; list refused rows; exit 1 when any was refused."""
    path = Path(args.file)
    try:
        data = sys.stdin.buffer.read() if args.file == "-" else path.read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read {args.file}: {exc.strerror}") from None
    kind = CONTENT_TYPES[_format(path, args.format)]
    with rest_client(args, "role ops to import") as client:
        result = answer(client.post("/api/v1/sources/import", content=data,
                                     headers={"Content-Type": kind}))
    print(f"{result['created']} created, {result['updated']} updated,"
          f" {result['refused']} refused")
    for error in result["errors"]:
        print(f"  {error}", file=sys.stderr)
    return 1 if result["refused"] else 0


def cmd_list(args: argparse.Namespace) -> int:
    """Print registered sources as JSON lines."""
    params = {k: v for k, v in (("kind", args.kind), ("district", args.district)) if v}
    with rest_client(args, "role ops to import") as client:
        for row in answer(client.get("/api/v1/sources", params=params)):
            print(json.dumps(row, ensure_ascii=False))
    return 0


def cmd_attribute(args: argparse.Namespace) -> int:
    """Rank the sources around a point, with reasons (nothing is pushed)."""
    body: dict[str, Any] = {"lat": args.lat, "lon": args.lon}
    if args.ts is not None:
        body["ts"] = args.ts
    if args.radius is not None:
        body["radius_m"] = args.radius
    with rest_client(args, "role ops to import") as client:
        result = answer(client.post("/api/v1/sources/attribution", json=body))
    wind = result["wind"]
    print("wind: none" if wind is None else
          f"wind: from {wind['direction']:.0f}° at {wind['speed']:.1f} m/s ({wind['station']})")
    for n, c in enumerate(result["candidates"][:args.top], 1):
        print(f"{n:>2}. {c['source']}  score {c['score']:.1f}")
        for reason in c["reasons"]:
            print(f"      - {reason}")
    return 0


def cmd_tasks(args: argparse.Namespace) -> int:
    """Print owner tasks as JSON lines."""
    params = {"state": args.state} if args.state else {}
    with rest_client(args, "role ops to import") as client:
        for row in answer(client.get("/api/v1/sources/tasks", params=params)):
            print(json.dumps(row, ensure_ascii=False))
    return 0


def add_parser(sub: Any) -> None:
    """Register `citygate sources` and its subcommands."""
    top = sub.add_parser("sources", help="pollution-source registry: import, list, attribute,"
                                         " tasks").add_subparsers(dest="sources_cmd",
                                                                  required=True)
    imp = top.add_parser("import", help="upsert sources from a CSV or GeoJSON file (- = stdin)")
    imp.add_argument("file")
    imp.add_argument("--format", choices=tuple(CONTENT_TYPES),
                     help="default: from the file name (.geojson/.json, else csv)")
    lst = top.add_parser("list", help="registered sources as JSON lines")
    lst.add_argument("--kind")
    lst.add_argument("--district")
    att = top.add_parser("attribute", help="rank the sources around a point, with reasons")
    att.add_argument("--lat", type=float, required=True)
    att.add_argument("--lon", type=float, required=True)
    att.add_argument("--ts", type=int, help="epoch ms (default now)")
    att.add_argument("--radius", type=float, help="metres (default: the collector's)")
    att.add_argument("--top", type=int, default=10)
    tsk = top.add_parser("tasks", help="owner tasks as JSON lines")
    tsk.add_argument("--state", choices=("pushed", "acknowledged", "reported", "closed"))
    for p, func in ((imp, cmd_import), (lst, cmd_list), (att, cmd_attribute),
                    (tsk, cmd_tasks)):
        common_options(p, 60.0)
        p.set_defaults(func=guarded("citygate sources", func))
