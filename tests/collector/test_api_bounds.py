"""Numbers and times out of what the stores hold are client errors on every route, never 500.

Every operation of the OpenAPI document gets, in each integer path or query parameter and each
time parameter, values past BIGINT, past every clock, and digits `str.isdigit` accepts but
`int` does not; every answer is 4xx, and every 422 has the documented HTTPValidationError shape.
"""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest

from tests.collector.full_hub import FullHub, full_hub

__all__ = ["full_hub"]

HOSTILE = ["9223372036854775808", "99999999999999999999", "²", "-9223372036854775809"]
TIME_PARAMS = {"since", "until", "timeAt", "endTimeAt"}
EXAMPLE = {"integer": "1", "string": "x", "number": "1", "boolean": "true"}


def _schema_type(param: dict[str, Any]) -> str:
    s = param.get("schema", {})
    types = [s.get("type")] + [x.get("type") for x in s.get("anyOf", [])]
    return next((t for t in types if t and t != "null"), "string")


def _enum(param: dict[str, Any]) -> str | None:
    s = param.get("schema", {})
    for x in [s, *s.get("anyOf", [])]:
        if "enum" in x:
            return str(x["enum"][0])
        if "$ref" in x:
            return None
    return None


def hostile_requests(openapi: dict[str, Any]) -> list[tuple[str, str, dict[str, str], str]]:
    """(method, url, query, what) for each hostile value in each numeric or time parameter."""
    out = []
    for path, ops in openapi["paths"].items():
        for method, op in ops.items():
            if "stream" in path:
                continue  # endless SSE answers; their parameters are the list routes' own
            params = op.get("parameters", [])
            base = {p["name"]: (_enum(p) or EXAMPLE[_schema_type(p)]) for p in params
                    if p["in"] == "path"}
            for p in params:
                numeric = _schema_type(p) == "integer" or p["name"] in TIME_PARAMS
                if not numeric or p["in"] not in ("path", "query"):
                    continue
                for value in HOSTILE:
                    names = {**base, **({p["name"]: value} if p["in"] == "path" else {})}
                    url = path.format(**names)
                    query = {p["name"]: value} if p["in"] == "query" else {}
                    out.append((method.upper(), url, query, f"{p['in']} {p['name']}={value}"))
    return out


def check_422_shape(openapi: dict[str, Any], body: Any) -> None:
    """Validate a 422 body against the document's HTTPValidationError schema."""
    schemas = openapi["components"]["schemas"]
    jsonschema.validate(body, {"$ref": "#/components/schemas/HTTPValidationError",
                               "components": {"schemas": schemas}})


def test_the_issue_examples_are_422_with_the_documented_shape(full_hub: FullHub) -> None:
    h = full_hub.headers()
    cases = [("/api/v1/incidents/9223372036854775809", {}, ["path", "incident_id"]),
             ("/api/v1/events", {"since": "99999999999999999999"}, ["query", "since"]),
             ("/api/v1/events", {"since": "²"}, ["query", "since"]),
             ("/api/v1/events", {"until": "10000-01-01"}, ["query", "until"])]
    for url, query, loc in cases:
        r = full_hub.client.get(url, params=query, headers=h)
        assert r.status_code == 422, (url, query, r.status_code, r.text)
        check_422_shape(full_hub.openapi, r.json())
        assert r.json()["detail"][0]["loc"] == loc
    ok = full_hub.client.get("/api/v1/events", params={"since": "9223372036854"}, headers=h)
    assert ok.status_code == 200 and ok.json() == []


def test_out_of_range_numbers_are_client_errors_on_every_route(full_hub: FullHub) -> None:
    requests = hostile_requests(full_hub.openapi)
    assert len(requests) >= 60  # every router's numbers and times, not a handful
    failures = []
    for method, url, query, what in requests:
        r = full_hub.client.request(method, url, params=query, headers=full_hub.headers())
        if not 400 <= r.status_code < 500:
            failures.append(f"{method} {url} {what}: {r.status_code} {r.text[:120]}")
        elif r.status_code == 422:
            try:
                check_422_shape(full_hub.openapi, r.json())
            except jsonschema.ValidationError:
                failures.append(f"{method} {url} {what}: 422 not in the documented shape")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("raise_422", ["router text", "pydantic"])
def test_every_422_has_the_documented_shape(full_hub: FullHub, raise_422: str) -> None:
    h = full_hub.headers()
    if raise_422 == "router text":  # a router's own HTTPException(422, "...")
        r = full_hub.client.get("/api/v1/parking/zones", params={"near": "north"}, headers=h)
    else:
        r = full_hub.client.get("/api/v1/events", params={"limit": "0"}, headers=h)
    assert r.status_code == 422
    check_422_shape(full_hub.openapi, r.json())
    assert r.json()["detail"][0]["msg"]
