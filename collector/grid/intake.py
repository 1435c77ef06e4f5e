"""Events people report (a patrol member, a citizen): stored with their photo, placed in their
grid, and handed to the alarm engine to be routed and tracked like a device's.

The photo's type is sniffed from its bytes (JPEG, PNG, WebP only); what the client claims is
never trusted, and the photo is served back only with that sniffed type and `nosniff`.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from collector.alarms.engine import AlarmEngine
from collector.grid.config import GridSettings
from collector.grid.service import GridService
from collector.grid.tables import reports


class ReportError(ValueError):
    """A report that cannot be accepted: `field` names what, `status` the HTTP answer."""

    def __init__(self, field: str, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.field, self.status = field, status


def sniff_image(data: bytes) -> str | None:
    """The image type of some bytes by their signature (JPEG, PNG, WebP), else None."""
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def decode_photo(text: str, limit: int) -> tuple[bytes, str]:
    """A base64 photo (a data: URL prefix is allowed) as bytes and its sniffed type."""
    if text.startswith("data:"):
        text = text.partition(",")[2]
    if len(text) > (limit * 4) // 3 + 8:
        raise ReportError("photo", f"photo larger than {limit} bytes", 413)
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ReportError("photo", "photo is not valid base64") from None
    if len(data) > limit:
        raise ReportError("photo", f"photo larger than {limit} bytes", 413)
    kind = sniff_image(data)
    if kind is None:
        raise ReportError("photo", "photo must be a JPEG, PNG or WebP image")
    return data, kind


@dataclass(frozen=True, slots=True)
class Report:
    """What a person reports."""

    kind: str
    lat: float
    lon: float
    text: str = ""
    photo: str | None = None  # base64
    site: str = ""
    severity: str = "major"
    contact: str = ""


class Intake:
    """Accepts reported events and opens their incidents."""

    def __init__(self, db: sa.Engine, grid: GridService, engine: AlarmEngine,
                 settings: GridSettings) -> None:
        self.db, self.grid, self.alarms, self.settings = db, grid, engine, settings

    def accept(self, report: Report, found_by: str, reporter: str) -> dict[str, Any]:
        """Store, place, route: the report's id, placement and incident id."""
        photo, photo_type = (None, None) if not report.photo else \
            decode_photo(report.photo, self.settings.photo_max_bytes)
        placed = self.grid.outlines.locate(report.lat, report.lon)
        if found_by == "citizen":
            if report.kind not in self.settings.citizen_kinds:
                raise ReportError("kind", f"kind must be one of "
                                          f"{', '.join(self.settings.citizen_kinds)}")
            if not placed.placed:
                raise ReportError("lat", "this place is outside the city's grids")
        now = self.alarms.clock()
        with self.db.begin() as conn:
            res = conn.execute(sa.insert(reports).values(
                found_by=found_by, reporter=reporter, contact=report.contact, kind=report.kind,
                severity=report.severity, lat=report.lat, lon=report.lon, text=report.text,
                site=report.site, grid=placed.grid, area=placed.area,
                district=placed.district, photo_type=photo_type, photo=photo, created_at=now))
            key = res.inserted_primary_key
            assert key is not None
            rid = int(key[0])
        device = f"report-{rid}"
        incident = self.alarms.report(
            report.site or device, device, report.kind, report.severity,
            report.text[:200] or f"{report.kind} reported by {found_by}",
            {"found_by": found_by, "report": rid, "lat": report.lat, "lon": report.lon,
             "photo": photo_type is not None})
        if incident is None:
            raise ReportError("report", f"report {rid} is stored but no incident could be "
                                        "opened now; it is retried by ops", 503)
        with self.db.begin() as conn:
            conn.execute(sa.update(reports).where(reports.c.id == rid)
                         .values(incident_id=incident))
        return {"id": rid, "incident": incident, "found_by": found_by, **placed.as_dict()}

    def get(self, report_id: int) -> dict[str, Any] | None:
        """One report without its photo bytes (None when there is none)."""
        cols = [c for c in reports.c if c.name != "photo"]
        with self.db.connect() as conn:
            row = conn.execute(sa.select(*cols).where(reports.c.id == report_id)) \
                .mappings().first()
        return dict(row) if row else None

    def photo(self, report_id: int) -> tuple[bytes, str] | None:
        """A report's photo and its sniffed type."""
        with self.db.connect() as conn:
            row = conn.execute(sa.select(reports.c.photo, reports.c.photo_type)
                               .where(reports.c.id == report_id)).first()
        if row is None or row.photo is None:
            return None
        return bytes(row.photo), str(row.photo_type)

    def of_incident(self, incident_id: int) -> int | None:
        """The report an incident came from, if any."""
        with self.db.connect() as conn:
            found = conn.scalar(sa.select(reports.c.id)
                                .where(reports.c.incident_id == incident_id))
        return None if found is None else int(found)
