"""REST of reported events: patrols (crew and ops tokens) and citizens (no token, rate-limited
per address and in all, strict bounds), the report's photo, and the phone report page."""

from __future__ import annotations

from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field, ValidationError

from collector.alarms.api import PrincipalDep
from collector.alarms.config import Severity
from collector.alarms.tables import incidents
from collector.api import iso
from collector.auth import RateLimiter
from collector.grid.api import bounded_json
from collector.grid.intake import Intake, Report, ReportError
from collector.grid.models import AcceptedReportOut, CitizenReceiptOut, ReportKindsOut, ReportOut
from collector.pages import page
from collector.params import RowId, invalid

router = APIRouter(prefix="/api/v1", tags=["reports"])
pages = APIRouter(include_in_schema=False)
KIND = r"^[a-z][a-z0-9_]{0,63}$"
PHOTO_RESPONSES: dict[int | str, dict[str, Any]] = {200: {
    "description": "the photo, of the type sniffed when the report was accepted",
    "content": {t: {"schema": {"type": "string", "format": "binary"}}
                for t in ("image/jpeg", "image/png", "image/webp")}}}
NoNul = r"^[^\x00]*$"


class ReportIn(BaseModel):
    """An event a person found: what, where (WGS-84), a few words, a photo (base64)."""

    kind: str = Field(pattern=KIND)
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)
    text: str = Field(default="", max_length=1000, pattern=NoNul)
    photo: str | None = Field(default=None, description="JPEG, PNG or WebP, base64")
    site: str = Field(default="", max_length=100, pattern=r"^[^\x00-\x1f\x7f/]*$")
    severity: Severity = "major"


class CitizenReportIn(BaseModel):
    """A citizen's report: a kind from the city's list, where, a few words, a photo."""

    kind: str = Field(pattern=KIND)
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)
    text: str = Field(default="", max_length=500, pattern=NoNul)
    photo: str | None = None
    contact: str = Field(default="", max_length=40, pattern=r"^[0-9+() -]*$")


def get_intake(request: Request) -> Intake:
    """The intake attached to the app."""
    intake: Intake = request.app.state.intake
    return intake


IntakeDep = Annotated[Intake, Depends(get_intake)]


def _accept(intake: Intake, report: Report, found_by: str, reporter: str) -> dict[str, Any]:
    try:
        return intake.accept(report, found_by, reporter)
    except ReportError as exc:
        if exc.status == 422:
            raise invalid("body", exc.field, str(exc)) from None
        raise HTTPException(exc.status, str(exc)) from None


async def _body(request: Request, intake: Intake) -> Any:
    return await bounded_json(request, intake.settings.photo_max_bytes * 4 // 3 + 20_000)


@router.post("/reports", status_code=201, response_model=AcceptedReportOut)
async def patrol_report(request: Request, intake: IntakeDep,
                        who: PrincipalDep) -> dict[str, Any]:
    """A grid member (crew or ops token) reports an event found on patrol."""
    try:
        body = ReportIn.model_validate(await _body(request, intake))
    except ValidationError as exc:
        raise invalid("body", ".".join(str(p) for p in exc.errors()[0]["loc"]),
                      exc.errors()[0]["msg"]) from None
    return _accept(intake, Report(body.kind, body.lat, body.lon, body.text, body.photo,
                                  body.site, body.severity), "patrol", who.name)


def _limiter(request: Request) -> RateLimiter:
    limiter: RateLimiter | None = getattr(request.app.state, "citizen_limiter", None)
    if limiter is None:
        limiter = request.app.state.citizen_limiter = RateLimiter()
    return limiter


@router.get("/public/report-kinds", response_model=ReportKindsOut)
def report_kinds(intake: IntakeDep) -> dict[str, Any]:
    """The kinds a citizen may report and the largest photo, for the report page (no token)."""
    s = intake.settings
    return {"kinds": list(s.citizen_kinds), "photo_max_bytes": s.photo_max_bytes}


@router.post("/public/reports", status_code=201, response_model=CitizenReceiptOut)
async def citizen_report(request: Request, intake: IntakeDep) -> dict[str, Any]:
    """A citizen reports an event (no token): at most a few a minute from one address."""
    s = intake.settings
    limiter = _limiter(request)
    address = request.client.host if request.client else "?"
    for key, rate in ((f"addr:{address}", s.citizen_per_minute),
                      ("all", s.citizen_total_per_minute)):
        wait = limiter.allow(key, rate)
        if wait > 0:
            raise HTTPException(429, "too many reports; try again in a minute",
                                headers={"Retry-After": str(max(1, round(wait)))})
    try:
        body = CitizenReportIn.model_validate(await _body(request, intake))
    except ValidationError as exc:
        raise invalid("body", ".".join(str(p) for p in exc.errors()[0]["loc"]),
                      exc.errors()[0]["msg"]) from None
    got = _accept(intake, Report(body.kind, body.lat, body.lon, body.text, body.photo,
                                 severity="minor", contact=body.contact), "citizen", "")
    return {"id": got["id"], "grid": got["grid"], "district": got["district"]}


def _visible(intake: Intake, report_id: int, who: Any) -> dict[str, Any]:
    row = intake.get(report_id)
    if row is None:
        raise HTTPException(404, f"no report {report_id}")
    unit = ""
    if row["incident_id"] is not None:
        with intake.db.connect() as conn:
            unit = conn.scalar(sa.select(incidents.c.unit)
                               .where(incidents.c.id == row["incident_id"])) or ""
    if not who.may_see(unit):
        raise HTTPException(403, f"{who.name} is not in unit {unit!r}")
    return row


@router.get("/reports/{report_id}", response_model=ReportOut)
def get_report(report_id: RowId, intake: IntakeDep, who: PrincipalDep) -> dict[str, Any]:
    """A reported event: who found it, where, and the incident it became."""
    r = _visible(intake, report_id, who)
    return {"id": r["id"], "found_by": r["found_by"], "reporter": r["reporter"],
            "contact": r["contact"], "kind": r["kind"], "severity": r["severity"],
            "lat": r["lat"], "lon": r["lon"], "text": r["text"], "site": r["site"],
            "grid": r["grid"], "area": r["area"], "district": r["district"],
            "photo": f"/api/v1/reports/{r['id']}/photo" if r["photo_type"] else None,
            "incident": r["incident_id"], "created_at": iso(r["created_at"])}


@router.get("/reports/{report_id}/photo", response_class=Response, responses=PHOTO_RESPONSES)
def get_photo(report_id: RowId, intake: IntakeDep, who: PrincipalDep) -> Response:
    """The report's photo, with the type sniffed when it was accepted."""
    _visible(intake, report_id, who)
    found = intake.photo(report_id)
    if found is None:
        raise HTTPException(404, f"report {report_id} has no photo")
    data, media = found
    return Response(data, media_type=media, headers={
        "X-Content-Type-Options": "nosniff", "Cache-Control": "private, max-age=3600",
        "Content-Security-Policy": "default-src 'none'", "Content-Disposition": "inline"})


@pages.get("/report", response_class=HTMLResponse)
def report_page() -> HTMLResponse:
    """The phone page to report an event (patrol with a token link, or citizen)."""
    return page("report.html")
