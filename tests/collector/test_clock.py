"""The collector's one wall clock: `collector.clock`, and no second copy of it."""

from __future__ import annotations

import ast
import time
from pathlib import Path

from collector.clock import iso, iso_seconds, now_ms

COLLECTOR = Path(__file__).resolve().parents[2] / "collector"


def test_iso_is_utc_with_milliseconds_and_z() -> None:
    assert iso(0) == "1970-01-01T00:00:00.000Z"
    assert iso(1_764_761_761_250) == "2025-12-03T11:36:01.250Z"
    assert iso(None) is None
    assert iso_seconds(1_764_761_761_250) == "2025-12-03T11:36:01Z"


def test_now_ms_is_the_wall_clock_in_milliseconds() -> None:
    before = int(time.time() * 1000)
    assert before - 1 <= now_ms() <= int(time.time() * 1000) + 1


def test_no_module_of_the_collector_defines_its_own_clock() -> None:
    copies = []
    for path in COLLECTOR.rglob("*.py"):
        if path.name == "clock.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and node.name.lstrip("_") in {"now_ms", "iso"}:
                copies.append(f"{path.relative_to(COLLECTOR)}:{node.lineno} {node.name}")
    assert copies == []
