"""`citygate sources ...`: the pollution-source registry from the command line, over the REST API.

    citygate sources import sources.csv --collector http://collector:8080   (token: CITYGATE_TOKEN)
    citygate sources list --kind restaurant
    citygate sources attribute --lat 34.75 --lon 113.65
    citygate sources tasks --state pushed
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import httpx

TOKEN_ENV = "CITYGATE_TOKEN"
CONTENT_TYPES = {"csv": "text/csv", "geojson": "application/geo+json"}


class CliError(Exception):
    """A failure to report in one line, with what to do."""


def _client(args: argparse.Namespace) -> httpx.Client:
    token = args.token or os.environ.get(TOKEN_ENV, "")
    if not token:
        raise CliError(f"no token: pass --token or set {TOKEN_ENV} (role ops to import)")
    return httpx.Client(base_url=args.collector.rstrip("/"), timeout=args.timeout,
                        headers={"Authorization": f"Bearer {token}"})


def _answer(response: httpx.Response) -> Any:
    if response.status_code >= 400:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        raise CliError(f"collector answered {response.status_code}: {detail}")
    return response.json()


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
    with _client(args) as client:
        result = _answer(client.post("/api/v1/sources/import", content=data,
                                     headers={"Content-Type": kind}))
    print(f"{result['created']} created, {result['updated']} updated,"
          f" {result['refused']} refused")
    for error in result["errors"]:
        print(f"  {error}", file=sys.stderr)
    return 1 if result["refused"] else 0


def cmd_list(args: argparse.Namespace) -> int:
    """Print registered sources as JSON lines."""
    params = {k: v for k, v in (("kind", args.kind), ("district", args.district)) if v}
    with _client(args) as client:
        for row in _answer(client.get("/api/v1/sources", params=params)):
            print(json.dumps(row, ensure_ascii=False))
    return 0


def cmd_attribute(args: argparse.Namespace) -> int:
    """Rank the sources around a point, with reasons (nothing is pushed)."""
    body: dict[str, Any] = {"lat": args.lat, "lon": args.lon}
    if args.ts is not None:
        body["ts"] = args.ts
    if args.radius is not None:
        body["radius_m"] = args.radius
    with _client(args) as client:
        result = _answer(client.post("/api/v1/sources/attribution", json=body))
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
    with _client(args) as client:
        for row in _answer(client.get("/api/v1/sources/tasks", params=params)):
            print(json.dumps(row, ensure_ascii=False))
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--collector", default="http://127.0.0.1:8080", help="collector base URL")
    p.add_argument("--token", help=f"API token (default: ${TOKEN_ENV})")
    p.add_argument("--timeout", type=float, default=60.0)


def _guarded(func: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            return int(func(args))
        except CliError as exc:
            print(f"citygate sources: {exc}", file=sys.stderr)
            return 2
        except httpx.HTTPError as exc:
            print(f"citygate sources: cannot reach {args.collector}: {exc}", file=sys.stderr)
            return 2
    return run


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
        _common(p)
        p.set_defaults(func=_guarded(func))
