"""A small TOML writer for gateway configs: scalars, arrays of scalars, tables, arrays of tables."""

from __future__ import annotations

import json
import math
from typing import Any


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            raise ValueError("TOML cannot hold NaN/inf in a gateway config")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a valid TOML string
    if isinstance(value, list):
        return "[" + ", ".join(_scalar(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_scalar(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def _key(key: str) -> str:
    bare = key.replace("_", "").replace("-", "").isalnum() and key.isascii()
    return key if bare else json.dumps(key)


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _body(table: dict[str, Any]) -> list[str]:
    return [f"{_key(k)} = {_scalar(v)}" for k, v in table.items()
            if v is not None and not isinstance(v, dict) and not _is_table_array(v)]


def dumps(doc: dict[str, Any]) -> str:
    """Write a document whose tables are one level deep (as the gateway config is)."""
    out = _body(doc)
    for key, value in doc.items():
        if isinstance(value, dict):
            out += ["", f"[{_key(key)}]", *_body(value)]
        elif _is_table_array(value):
            for item in value:
                out += ["", f"[[{_key(key)}]]", *_body(item)]
    return "\n".join(out) + "\n"
