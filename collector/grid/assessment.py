"""Department assessment: what each unit, grid or district found, handled and closed over a
period, how fast, how much within its SLA, week by week.

The figures are pure functions of incident rows (`Case`); the query reads the rows of the
period. Definitions (docs/grid-governance.md, "Assessment"):
- found: incidents opened in the period, also split by who found them (device, patrol, citizen);
- dispatched: given to a named person or paged; acknowledged, arrived: those steps happened;
- handled: resolved by a person (not cleared by the device); closed: closed;
- reopened: the condition came back after it was resolved;
- overdue: not resolved within the kind's resolve SLA (resolved late, or still open past it);
- within SLA: resolved in time, of those resolved or already past due.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from collector.alarms.lifecycle import percentile
from collector.alarms.tables import incident_history, incidents

By = Literal["unit", "grid", "district"]
SOURCES = ("device", "patrol", "citizen")
STEPS = ("acknowledge", "arrive", "resolve", "close")
COUNTS = ("found", "dispatched", "acknowledged", "arrived", "handled", "closed", "reopened",
          "overdue")


@dataclass(frozen=True, slots=True)
class Case:
    """The times of one incident that assessment is made of (epoch ms)."""

    unit: str
    grid: str
    district: str
    kind: str
    found_by: str
    opened_at: int
    dispatched: bool
    acked_at: int | None
    arrived_at: int | None
    resolved_at: int | None
    by_person: bool  # resolved by a person, not by the device clearing
    closed_at: int | None
    reopened: bool
    sla_ms: int | None  # time to resolve within which it is in time


def _stat(values: list[int]) -> dict[str, Any]:
    if not values:
        return {"n": 0, "mean_s": None, "p90_s": None}
    p90 = percentile([float(v) for v in values], 90)
    return {"n": len(values), "mean_s": round(sum(values) / len(values) / 1000, 1),
            "p90_s": None if p90 is None else round(p90 / 1000, 1)}


def _overdue(c: Case, now: int) -> bool | None:
    """True: not resolved in time; False: resolved in time; None: not yet judged (or no SLA)."""
    if c.sla_ms is None:
        return None
    due = c.opened_at + c.sla_ms
    if c.resolved_at is not None:
        return c.resolved_at > due
    return True if now > due else None


def figures(cases: Sequence[Case], now: int) -> dict[str, Any]:
    """Counts, times (mean and p90 seconds) and share within SLA of some incidents."""
    judged = [j for c in cases if (j := _overdue(c, now)) is not None]
    step_at: dict[str, Callable[[Case], int | None]] = {
        "acknowledge": lambda c: c.acked_at, "arrive": lambda c: c.arrived_at,
        "resolve": lambda c: c.resolved_at, "close": lambda c: c.closed_at}
    return {
        "found": len(cases),
        "found_by": {s: sum(1 for c in cases if c.found_by == s) for s in SOURCES},
        "dispatched": sum(c.dispatched for c in cases),
        "acknowledged": sum(c.acked_at is not None for c in cases),
        "arrived": sum(c.arrived_at is not None for c in cases),
        "handled": sum(c.resolved_at is not None and c.by_person for c in cases),
        "closed": sum(c.closed_at is not None for c in cases),
        "reopened": sum(c.reopened for c in cases),
        "overdue": sum(judged),
        "within_sla": round(judged.count(False) / len(judged), 3) if judged else None,
        "times": {step: _stat([t - c.opened_at for c in cases
                               if (t := at(c)) is not None])
                  for step, at in step_at.items()},
    }


def week_of(ms: int, zone: ZoneInfo) -> str:
    """The Monday (a date in the zone) of the week an instant falls in."""
    day = datetime.fromtimestamp(ms / 1000, UTC).astimezone(zone).date()
    return (day - timedelta(days=day.weekday())).isoformat()


def assess(cases: Iterable[Case], by: By, now: int, zone: ZoneInfo) -> dict[str, Any]:
    """Figures per group (unit, grid or district) and in all, each with weekly trends."""
    every = list(cases)
    groups: dict[str, list[Case]] = {}
    for c in every:
        groups.setdefault(getattr(c, by), []).append(c)

    def with_weeks(rows: list[Case]) -> dict[str, Any]:
        weeks: dict[str, list[Case]] = {}
        for c in rows:
            weeks.setdefault(week_of(c.opened_at, zone), []).append(c)
        return {**figures(rows, now),
                "weeks": [{"week": w, **figures(v, now)} for w, v in sorted(weeks.items())]}

    return {"by": by, "groups": [{"key": k, **with_weeks(v)} for k, v in sorted(groups.items())],
            "total": with_weeks(every)}


def cases(conn: sa.Connection, start: int, end: int,
          sla: Callable[[str], int | None]) -> list[Case]:
    """The incidents opened in [start, end)."""
    i, h = incidents, incident_history
    reopened = set(conn.scalars(
        sa.select(h.c.incident_id).join(i, i.c.id == h.c.incident_id)
        .where(i.c.opened_at >= start, i.c.opened_at < end, h.c.event == "recurred",
               h.c.from_state == "resolved")))
    rows = conn.execute(sa.select(
        i.c.id, i.c.unit, i.c.grid, i.c.district, i.c.kind, i.c.found_by, i.c.opened_at,
        i.c.assigned_at, i.c.stages_sent, i.c.acked_at, i.c.arrived_at, i.c.resolved_at,
        i.c.resolved_by, i.c.closed_at).where(i.c.opened_at >= start, i.c.opened_at < end))
    return [Case(r.unit, r.grid, r.district, r.kind, r.found_by, r.opened_at,
                 r.assigned_at is not None or r.stages_sent > 0, r.acked_at, r.arrived_at,
                 r.resolved_at, r.resolved_at is not None and r.resolved_by != "system",
                 r.closed_at, r.id in reopened, sla(r.kind)) for r in rows]


CSV_COLUMNS = ("by", "key", "week", *COUNTS, *(f"found_{s}" for s in SOURCES), "within_sla",
               *(f"{s}_{m}" for s in STEPS for m in ("mean_s", "p90_s")))


def _cell(value: Any) -> Any:
    """A CSV cell that a spreadsheet will not run as a formula."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return "" if value is None else value


def _csv_row(by: str, key: str, week: str, f: dict[str, Any]) -> list[Any]:
    return [_cell(v) for v in (
        by, key, week, *(f[c] for c in COUNTS), *(f["found_by"][s] for s in SOURCES),
        f["within_sla"], *(f["times"][s][m] for s in STEPS for m in ("mean_s", "p90_s")))]


def to_csv(result: dict[str, Any]) -> str:
    """One row per group and period (week empty), then one per group and week; `*`: all."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\r\n")
    w.writerow(CSV_COLUMNS)
    by = result["by"]
    groups = [*result["groups"], {"key": "*", **result["total"]}]
    for g in groups:
        w.writerow(_csv_row(by, g["key"], "", g))
    for g in groups:
        for week in g["weeks"]:
            w.writerow(_csv_row(by, g["key"], week["week"], week))
    return out.getvalue()
