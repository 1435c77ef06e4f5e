"""Schemathesis against the whole app's OpenAPI document: no request may answer 500.

Every operation gets a few valid and invalid requests (schemathesis' positive and negative
generation) with an admin token, on each store. A 5xx is a failure unless the operation
documents it (the command routes answer 503 while the broker is away). Bounded: a few examples
per operation, and one each for the operations still left when the time budget is spent.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.collector.full_hub import FullHub, full_hub

__all__ = ["full_hub"]

EXAMPLES = 8
BUDGET_S = 35.0
SENT = ("method", "url", "headers", "params", "json", "content", "data", "files")


def _documented(op: Any, status: int) -> bool:
    return str(status) in op.definition.raw.get("responses", {})


def fuzz(op: Any, hub: FullHub, examples: int, failures: dict[str, str]) -> int:
    """Send `examples` generated requests to one operation; record its first undocumented 5xx."""
    name = f"{op.method.upper()} {op.path}"
    sent = 0
    cases = st.one_of(op.as_strategy(),
                      op.as_strategy(generation_mode=schemathesis.GenerationMode.NEGATIVE))

    @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(cases)
    def call(case: Any) -> None:
        nonlocal sent
        kw = case.as_transport_kwargs(base_url="http://testserver")
        kw["headers"] = {**(kw.get("headers") or {}), **hub.headers()}
        if isinstance(kw.get("data"), str | bytes):  # raw bodies go as content for httpx
            kw["content"] = kw.pop("data")
        try:
            r = hub.client.request(**{k: v for k, v in kw.items() if k in SENT})
        except httpx.InvalidURL:  # longer than any client sends (64 KiB): never reaches a server
            return
        sent += 1
        if r.status_code >= 500 and not _documented(op, r.status_code):
            failures.setdefault(name, f"{r.status_code} for {kw['method']} {kw['url']} "
                                      f"params={kw.get('params')} body={kw.get('json')!r}"[:400])

    call()
    return sent


def test_no_request_answers_a_server_error(full_hub: FullHub,
                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.CRITICAL)  # generated garbage is logged as refused; not the point
    schema = schemathesis.openapi.from_dict(full_hub.openapi)
    ops = [r.ok() for r in schema.get_all_operations()]
    ops = [op for op in ops if "stream" not in op.path]  # endless SSE answers
    assert len(ops) >= 50
    failures: dict[str, str] = {}
    end = time.monotonic() + BUDGET_S
    sent = sum(fuzz(op, full_hub, EXAMPLES if time.monotonic() < end else 1, failures)
               for op in ops)
    assert sent >= len(ops)
    assert not failures, "\n".join(f"{k}: {v}" for k, v in failures.items())
