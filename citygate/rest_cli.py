"""What the `citygate` subcommands that talk to a collector's REST API share.

A subcommand module keeps its own commands and wording; the token, the client, reading an
answer, the common options and turning failures into one line on stderr (exit status 2) are
here, so that every such command behaves the same.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

import httpx

TOKEN_ENV = "CITYGATE_TOKEN"


class CliError(Exception):
    """A failure to report in one line, with what to do."""


def client(args: argparse.Namespace, roles: str) -> httpx.Client:
    """A client of `args.collector` with the token of --token or $CITYGATE_TOKEN (`roles`
    says which roles the command needs, for the error when there is none)."""
    token = args.token or os.environ.get(TOKEN_ENV, "")
    if not token:
        raise CliError(f"no token: pass --token or set {TOKEN_ENV} ({roles})")
    return httpx.Client(base_url=args.collector.rstrip("/"), timeout=args.timeout,
                        headers={"Authorization": f"Bearer {token}"})


def answer(response: httpx.Response) -> Any:
    """The JSON of a successful answer; a CliError with the collector's reason otherwise."""
    if response.status_code >= 400:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        if isinstance(detail, dict):
            detail = f"{detail.get('reason')}: {detail.get('message')}"
        raise CliError(f"collector answered {response.status_code}: {detail}")
    return response.json()


def common_options(p: argparse.ArgumentParser, timeout: float) -> None:
    """--collector, --token and --timeout."""
    p.add_argument("--collector", default="http://127.0.0.1:8080", help="collector base URL")
    p.add_argument("--token", help=f"API token (default: ${TOKEN_ENV})")
    p.add_argument("--timeout", type=float, default=timeout)


def guarded(prog: str, func: Callable[[argparse.Namespace], int]
            ) -> Callable[[argparse.Namespace], int]:
    """`func` with its CliError and connection failures printed as `prog: ...` (exit 2)."""
    def run(args: argparse.Namespace) -> int:
        try:
            return int(func(args))
        except CliError as exc:
            print(f"{prog}: {exc}", file=sys.stderr)
            return 2
        except httpx.HTTPError as exc:
            print(f"{prog}: cannot reach {args.collector}: {exc}", file=sys.stderr)
            return 2
    return run
