"""REST of department assessment (JSON and CSV) and its page. Readers (the city's evaluation
system), ops and admin may read it."""

from __future__ import annotations

from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import HTMLResponse

from collector.api import iso, parse_time
from collector.auth import Principal, Role, require
from collector.grid.assessment import assess, cases, to_csv
from collector.grid.config import GridSettings
from collector.grid.models import AssessmentOut
from collector.pages import page
from collector.params import invalid

router = APIRouter(prefix="/api/v1", tags=["assessment"])
pages = APIRouter(include_in_schema=False)
Reader = Annotated[Principal, Depends(require(Role.READER, Role.OPS))]
MAX_PERIOD_MS = 3 * 366 * 86_400_000


CSV_RESPONSE: dict[int | str, dict[str, Any]] = {200: {
    "description": "the figures (JSON), or with format=csv one row per group and week",
    "content": {"text/csv": {"schema": {"type": "string"}}}}}


@router.get("/assessment", response_model=AssessmentOut, responses=CSV_RESPONSE)
def assessment(request: Request, _who: Reader,
               start: Annotated[str, Query(alias="from", min_length=1, max_length=40,
                                           description="period start, ISO 8601 or epoch ms")],
               end: Annotated[str, Query(alias="to", min_length=1, max_length=40, description=(
                   "period end (excluded), ISO 8601 or epoch ms; at most 3 years on"))],
               by: Annotated[Literal["unit", "grid", "district"], Query(
                   description="group the incidents by unit, grid or district")] = "unit",
               format: Annotated[Literal["json", "csv"], Query(
                   description="json, or csv to download a table")] = "json",
               ) -> dict[str, Any] | Response:
    """Per unit, grid or district over [from, to): found (by source), dispatched,
    acknowledged, arrived, handled, closed, reopened, overdue; mean and p90 times; share
    within SLA; the same per week."""
    lo, hi = parse_time(start, "from"), parse_time(end, "to")
    if lo is None or hi is None or not lo < hi <= lo + MAX_PERIOD_MS:
        raise invalid("query", "to", "the period ends after it starts, within 3 years")
    settings: GridSettings = request.app.state.grid_settings
    engine = request.app.state.alarms.engine
    with request.app.state.store.engine.connect() as conn:
        rows = cases(conn, lo, hi, settings.resolve_sla)
    result = {"from": iso(lo), "to": iso(hi), "as_of": iso(engine.clock()),
              **assess(rows, by, engine.clock(), ZoneInfo(settings.week_timezone))}
    if format == "csv":
        days = [(iso(t) or "")[:10] for t in (lo, hi)]
        name = f"assessment-{by}-{days[0]}-{days[1]}.csv"
        return Response(to_csv(result), media_type="text/csv; charset=utf-8", headers={
            "Content-Disposition": f'attachment; filename="{name}"'})
    return result


@pages.get("/assessment", response_class=HTMLResponse)
def assessment_page() -> HTMLResponse:
    """The assessment page: figures per unit, grid or district over a period."""
    return page("assessment.html")
