"""The OpenAPI document of the whole collector describes every operation and parameter.

Integrators generate clients from it: an operation without a typed 2xx answer, or a parameter
without a description, is a hole in the contract.
"""

from __future__ import annotations

from typing import Any

from tests.collector.full_hub import FullHub, full_hub

__all__ = ["full_hub"]

UNTYPED = ({}, {"type": "object"}, {"type": "object", "additionalProperties": True})


def _untyped(schema: dict[str, Any]) -> bool:
    bare = {k: v for k, v in schema.items() if k not in ("title", "description")}
    if bare.get("type") == "array":
        return _untyped(bare.get("items", {}))
    return bare in UNTYPED


def holes(openapi: dict[str, Any]) -> list[str]:
    """Every operation without a typed 2xx schema and every parameter without a description."""
    out = []
    for path, ops in openapi["paths"].items():
        for method, op in ops.items():
            where = f"{method.upper()} {path}"
            ok = {code: r for code, r in op.get("responses", {}).items()
                  if code.startswith("2")}
            if not ok:
                out.append(f"{where}: no 2xx response")
            for code, r in ok.items():
                content = r.get("content", {})
                if code == "204" and not content:
                    continue
                schemas = [c.get("schema") for c in content.values()]
                if not schemas or any(s is None or _untyped(s) for s in schemas):
                    out.append(f"{where}: {code} has no typed schema")
            out += [f"{where}: parameter {p['name']!r} has no description"
                    for p in op.get("parameters", [])
                    if not (p.get("description") or p.get("schema", {}).get("description"))]
    return out


def test_every_operation_is_typed_and_every_parameter_described(full_hub: FullHub) -> None:
    assert holes(full_hub.openapi) == []


def test_the_walk_finds_holes() -> None:
    doc = {"paths": {"/x": {"get": {
        "parameters": [{"name": "q", "in": "query", "schema": {"type": "string"}}],
        "responses": {"200": {"content": {"application/json": {"schema": {
            "type": "array", "items": {"type": "object", "additionalProperties": True}}}}}}},
        "post": {"responses": {"422": {}}}}}}
    assert holes(doc) == ["GET /x: 200 has no typed schema",
                          "GET /x: parameter 'q' has no description",
                          "POST /x: no 2xx response"]


def test_ngsi_parameters_say_what_they_do(full_hub: FullHub) -> None:
    params = {p["name"]: p for p in
              full_hub.openapi["paths"]["/ngsi-ld/v1/entities"]["get"]["parameters"]}
    assert {"q", "georel", "geometry", "coordinates", "type", "attrs", "options"} <= set(params)
    assert "near;maxDistance" in params["georel"]["description"]
    assert "/ngsi-ld/v1/types" in full_hub.openapi["paths"]
