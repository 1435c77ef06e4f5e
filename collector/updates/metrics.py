"""The collector's Prometheus endpoint: ingest counters and store counts (`GET /metrics`).

It lives with the updates feature only because that is the package this change owns; it
depends on nothing of it, and the lead may move it to `collector/metrics.py` as is.
Unauthenticated like `/api/v1/health` (figures, no data): put it behind the reverse proxy's
allow-list, or mount it with a reader dependency, if the network is not trusted.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, Request, Response

from collector.params import binary_response

router = APIRouter(tags=["metrics"])
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_NAME_OK = re.compile(r"[^a-zA-Z0-9_]")


def render(ingest: dict[str, Any], counts: dict[str, Any], up: bool) -> bytes:
    """Prometheus text: ingest figures (counters, or gauges for levels) and store row counts."""
    lines = ["# TYPE citygate_collector_up gauge", f"citygate_collector_up {int(up)}"]
    for key, value in sorted(ingest.items()):
        if isinstance(value, bool):
            name, kind, v = f"citygate_ingest_{_NAME_OK.sub('_', key)}", "gauge", float(value)
        elif isinstance(value, int | float):
            name, kind, v = f"citygate_ingest_{_NAME_OK.sub('_', key)}_total", "counter", value
        else:
            continue
        lines += [f"# TYPE {name} {kind}", f"{name} {float(v):g}"]
    if counts:
        lines.append("# TYPE citygate_store_rows gauge")
        lines += [f'citygate_store_rows{{table="{_NAME_OK.sub("_", str(k))}"}} {float(v):g}'
                  for k, v in sorted(counts.items()) if isinstance(v, int | float)]
    return ("\n".join(lines) + "\n").encode()


@router.get("/metrics", response_class=Response,
            responses=binary_response("text/plain", "Prometheus text exposition format"))
def metrics(request: Request) -> Response:
    """Ingest counters and store counts in the Prometheus text format."""
    ingest = dict(request.app.state.ingest_stats())
    try:
        counts, up = request.app.state.store.row_counts()[0], True
    except Exception:  # a scrape reports a broken database, it never fails because of it
        counts, up = {}, False
    return Response(render(ingest, counts, up), media_type=CONTENT_TYPE)
