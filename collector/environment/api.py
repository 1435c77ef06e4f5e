"""REST API of the environment "one map": sites with latest values and status, history, alarms.

Wiring: ``install(app, monitor)`` sets ``app.state.environment`` and includes `router`
(JSON under /api/v1/environment, the page at /environment).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field

from collector.clock import iso
from collector.environment.averages import DEFAULT_RANGE_MS, MAX_RANGE_MS, averages
from collector.environment.config import Site
from collector.environment.exceedance import exceedance, is_measurement
from collector.environment.monitor import EnvironmentMonitor
from collector.environment.rules import Status, site_status
from collector.pages import page
from collector.params import SiteIdPath, parse_time
from collector.store import typed_value
from devices.hj212.normalise import Interval, split_series_id
from devices.quantities import QUANTITIES


class ValueOut(BaseModel):
    """The latest value of one quantity at a site."""

    value: Any
    unit: str
    observed_at: str
    quality: str
    device: str


class AlarmOut(BaseModel):
    """A threshold alarm episode of a site."""

    id: int
    site: str
    rule: str = Field(description="nox_limit or pm10_district")
    quantity: str
    active: bool
    raised_at: str
    cleared_at: str | None
    value: float | None
    threshold: float | None
    message: str


class OverOut(BaseModel):
    """A quantity above its limit now."""

    quantity: str
    value: float
    unit: str
    limit: float
    since: str = Field(description="when the values went above the limit (this run)")
    since_exact: bool = Field(description="false: above for longer than the 24 h looked at")


class ExceedanceOut(BaseModel):
    """Whether the site is over its limits now, judged from values (not the data flag)."""

    state: Literal["exceeded", "normal", "unknown"] = Field(
        description="exceeded: a fresh real-time value above its limit; unknown: no fresh "
                    "measurement (offline)")
    since: str | None = Field(description="start of the oldest current exceedance")
    duration_s: float | None = Field(description="how long it has lasted so far")
    quantities: list[OverOut]


class ResponsibleOut(BaseModel):
    """The person answerable for the site."""

    name: str
    phone: str
    unit: str


class SiteOut(BaseModel):
    """A site on the map: where, what, its status and latest values."""

    id: str
    name: str
    lat: float
    lon: float
    district: str
    kind: str
    devices: list[str]
    status: Status
    status_reason: str
    last_seen: str | None
    latest: dict[str, ValueOut] = Field(description="real-time values (CN=2011)")
    hourly: dict[str, ValueOut] = Field(description="hourly averages (CN=2061)")
    limits: dict[str, float] = Field(description="thresholds the site is coloured by")
    alarms: list[AlarmOut] = Field(description="active alarms")
    exceedance: ExceedanceOut
    responsible: ResponsibleOut


class PointOut(BaseModel):
    """One stored value of a history."""

    t: str
    v: Any
    q: str
    device: str


class HistoryOut(BaseModel):
    """Values of one site over time, for one averaging period."""

    site: str
    quantity: str | None
    unit: str
    interval: Interval
    limit: float | None
    points: list[PointOut]
    truncated: bool


class DistrictOut(BaseModel):
    """A district outline as [lon, lat] points."""

    id: str
    name: str
    outline: list[tuple[float, float]]


def get_monitor(request: Request) -> EnvironmentMonitor:
    """The monitor attached to the app."""
    monitor: EnvironmentMonitor = request.app.state.environment
    return monitor


MonitorDep = Annotated[EnvironmentMonitor, Depends(get_monitor)]
router = APIRouter()
pages = APIRouter()  # the page itself holds no data: it fetches with the viewer's token
API = "/api/v1/environment"


def _alarm_out(a: dict[str, Any]) -> AlarmOut:
    return AlarmOut(id=a["id"], site=a["site_id"], rule=a["rule"], quantity=a["quantity"],
                    active=a["active"], raised_at=iso(a["raised_at"]) or "",
                    cleared_at=iso(a["cleared_at"]), value=a["value"],
                    threshold=a["threshold"], message=a["message"])


def _value(row: dict[str, Any]) -> ValueOut:
    q = QUANTITIES.get(row["quantity"])
    return ValueOut(value=typed_value(row["quantity"], row["value"], row["vtext"]),
                    unit=q.unit if q else "", observed_at=iso(row["ts"]) or "",
                    quality=row["quality"], device=row["device_id"])


def _newest(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for row in rows:
        if row["quantity"] not in out or row["ts"] > out[row["quantity"]]["ts"]:
            out[row["quantity"]] = row
    return out


def site_out(monitor: EnvironmentMonitor, site: Site, rows: list[dict[str, Any]],
             alarms: list[dict[str, Any]], faulty: set[str], now: int) -> SiteOut:
    """Assemble a site's view from its latest rows, active alarms and device faults."""
    by_interval: dict[Interval, list[dict[str, Any]]] = {i: [] for i in Interval}
    for row in rows:
        by_interval[split_series_id(row["device_id"])[1]].append(row)
    latest, hourly = _newest(by_interval[Interval.REALTIME]), _newest(by_interval[Interval.HOUR])
    limits = monitor.config.limits_of(site)
    colour = limits.colour_limits(site.kind)
    status, reason = site_status(
        alarm_active=bool(alarms), last_seen=max((r["ts"] for r in rows), default=None),
        now=now, offline_after_ms=int(limits.offline_after * 1000),
        bad_values=any(r["quality"] == "bad" for r in latest.values()),
        fault_events=bool(faulty & set(site.devices)),
        over_limit=any(latest[q]["quality"] == "good" and (latest[q]["value"] or 0) > lim
                       for q, lim in colour.items() if q in latest))
    last = max((r["ts"] for r in rows), default=None)
    exc = exceedance_of(monitor, site, latest, colour, now, int(limits.offline_after * 1000))
    return SiteOut(id=site.id, name=site.name, lat=site.lat, lon=site.lon,
                   district=site.district, kind=site.kind, devices=site.devices,
                   status=status, status_reason=reason, last_seen=iso(last),
                   latest={q: _value(r) for q, r in sorted(latest.items())},
                   hourly={q: _value(r) for q, r in sorted(hourly.items())},
                   limits=colour, alarms=[_alarm_out(a) for a in alarms], exceedance=exc,
                   responsible=ResponsibleOut(**site.responsible.model_dump()))


EXCEEDANCE_LOOKBACK_MS = 86_400_000


def exceedance_of(monitor: EnvironmentMonitor, site: Site, latest: dict[str, dict[str, Any]],
                  limits: dict[str, float], now: int, fresh_ms: int) -> ExceedanceOut:
    """The site's exceedance now and since when (one bounded query per quantity over)."""
    runs: dict[str, tuple[int, bool]] = {}
    latest = dict(latest)
    for q in limits:  # a fault-flagged newest value is no all-clear: use the last measurement
        if q in latest and not is_measurement(latest[q]):
            measured = [r for r in monitor.newest_values(site, q, now - fresh_ms, 1000)
                        if is_measurement(r)]
            if measured:
                latest[q] = measured[0]
            else:
                del latest[q]
    for q, row in latest.items():
        if q in limits and is_measurement(row) and float(row["value"]) > limits[q]:
            found = monitor.run_above(site, q, limits[q], now - EXCEEDANCE_LOOKBACK_MS)
            if found is not None:
                runs[q] = found
    e = exceedance(latest, limits, now, fresh_ms, runs)
    since = e.since
    return ExceedanceOut(
        state=e.state, since=iso(since),
        duration_s=None if since is None else max(0.0, (now - since) / 1000),
        quantities=[OverOut(quantity=o.quantity, value=o.value, limit=o.limit,
                            unit=QUANTITIES[o.quantity].unit if o.quantity in QUANTITIES
                            else "", since=iso(o.since) or "", since_exact=o.since_exact)
                    for o in e.over])


def all_sites(monitor: EnvironmentMonitor) -> list[SiteOut]:
    """Every configured site with its status, latest values, alarms and exceedance."""
    rows = monitor.latest_rows()
    active: dict[str, list[dict[str, Any]]] = {}
    for a in monitor.alarms(active=True):
        active.setdefault(a["site_id"], []).append(a)
    faulty = monitor.faulty_devices()
    now = monitor.now()
    return [site_out(monitor, s, rows.get(s.id, []), active.get(s.id, []), faulty, now)
            for s in monitor.config.sites]


def _require_site(monitor: EnvironmentMonitor, site_id: str) -> Site:
    site = monitor.config.site(site_id)
    if site is None:
        raise HTTPException(404, f"no site {site_id!r}")
    return site


@router.get(f"{API}/sites")
def sites(
    monitor: MonitorDep,
    status: Annotated[Status | None, Query(description="only sites in this status")] = None,
    district: Annotated[str | None, Query(max_length=128, description="only this district")]
    = None,
    kind: Annotated[Literal["dust", "boiler", "restaurant"] | None,
                    Query(description="dust (construction), boiler or restaurant sites")] = None,
) -> list[SiteOut]:
    """Every site with status (ok, exceeded, fault, offline), latest values and alarms."""
    return [s for s in all_sites(monitor)
            if (status is None or s.status == status)
            and (district is None or s.district == district)
            and (kind is None or s.kind == kind)]


@router.get(f"{API}/sites/{{site_id}}")
def site(site_id: SiteIdPath, monitor: MonitorDep) -> SiteOut:
    """One site with its latest real-time and hourly values, status and active alarms."""
    _require_site(monitor, site_id)
    return next(s for s in all_sites(monitor) if s.id == site_id)


@router.get(f"{API}/sites/{{site_id}}/history")
def history(
    site_id: SiteIdPath, monitor: MonitorDep,
    quantity: Annotated[str | None, Query(max_length=64, description="canonical quantity; "
                                          "omit for all")] = None,
    since: Annotated[str | None, Query(description="ISO 8601 or epoch ms, inclusive")] = None,
    until: Annotated[str | None, Query(description="ISO 8601 or epoch ms, exclusive")] = None,
    interval: Annotated[Interval, Query(description="rt, min, hour or day")] = Interval.REALTIME,
    limit: Annotated[int, Query(ge=1, le=100_000, description="at most this many values")]
    = 5000,
) -> HistoryOut:
    """A site's stored values of one averaging period in observation-time order."""
    s = _require_site(monitor, site_id)
    if quantity is not None and quantity not in QUANTITIES:
        raise HTTPException(422, f"unknown quantity {quantity!r}")
    rows = monitor.history(s, quantity, interval, parse_time(since, "since"),
                           parse_time(until, "until"), limit + 1)
    colour = monitor.config.limits_of(s).colour_limits(s.kind)
    return HistoryOut(
        site=site_id, quantity=quantity,
        unit=QUANTITIES[quantity].unit if quantity else "", interval=interval,
        limit=colour.get(quantity or ""), truncated=len(rows) > limit,
        points=[PointOut(t=iso(r["ts"]) or "", v=typed_value(r["quantity"], r["value"],
                         r["vtext"]), q=r["quality"], device=r["device"])
                for r in rows[:limit]])


class AveragePoint(BaseModel):
    """One period: its start and mean; min, max and count when computed from raw values."""

    t: str
    avg: float
    min: float | None
    max: float | None
    n: int | None
    device: str = Field(description="the logger series it came from ('' when computed)")


class AveragesOut(BaseModel):
    """A site's values of one quantity per averaging period, with the limit to draw."""

    site: str
    quantity: str
    unit: str
    interval: Interval
    since: str
    until: str
    limit: float | None = Field(description="the site's limit for this quantity, if any")
    limit_label: str = Field(description="e.g. 'PM10 limit 150 µg/m³' ('' without limit)")
    source: Literal["raw", "logger", "computed"] = Field(
        description="raw: real-time values; logger: the averages the data logger sent "
                    "(HJ 212 CN 2051/2061/2031); computed: from the real-time values")
    points: list[AveragePoint]
    truncated: bool


@router.get(f"{API}/sites/{{site_id}}/averages")
def site_averages(
    site_id: SiteIdPath, monitor: MonitorDep,
    quantity: Annotated[str, Query(max_length=64, description="canonical quantity, e.g. pm10 "
                                                              "or nox_converted")],
    interval: Annotated[Interval, Query(description="rt (real time), min, hour or day")]
    = Interval.HOUR,
    since: Annotated[str | None, Query(description="ISO 8601 or epoch ms, inclusive; default "
                                                   "1 h / 6 h / 7 d / 90 d back by interval")]
    = None,
    until: Annotated[str | None, Query(description="ISO 8601 or epoch ms, exclusive; default "
                                                   "now")] = None,
    limit: Annotated[int, Query(ge=1, le=20_000, description="at most this many points")]
    = 5000,
) -> AveragesOut:
    """Real-time values or minute, hour, day averages of one quantity at a site, with the
    site's limit; ranges are bounded per interval (2 d, 14 d, 92 d, 3 years)."""
    s = _require_site(monitor, site_id)
    if quantity not in QUANTITIES:
        raise HTTPException(422, f"unknown quantity {quantity!r}")
    end = parse_time(until, "until") or monitor.now()
    start = parse_time(since, "since")
    if start is None:
        start = end - DEFAULT_RANGE_MS[interval]
    if start >= end or end - start > MAX_RANGE_MS[interval]:
        raise HTTPException(422, f"since must be before until and at most "
                                 f"{MAX_RANGE_MS[interval] // 3_600_000} h apart for "
                                 f"interval={interval.value}")
    source, points = averages(monitor.store, s.devices, quantity, interval, start, end,
                              limit + 1)
    lim = monitor.config.limits_of(s).colour_limits(s.kind).get(quantity)
    unit = QUANTITIES[quantity].unit
    return AveragesOut(
        site=site_id, quantity=quantity, unit=unit, interval=interval, since=iso(start) or "",
        until=iso(end) or "", limit=lim,
        limit_label="" if lim is None else f"{quantity} limit {lim:g} {unit}",
        source=source, truncated=len(points) > limit,
        points=[AveragePoint(t=iso(p.t) or "", avg=p.avg, min=p.min, max=p.max, n=p.n,
                             device=p.device) for p in points[:limit]])


@router.get(f"{API}/alarms")
def alarms(
    monitor: MonitorDep,
    active: Annotated[bool | None, Query(description="true: active; false: cleared; omit: "
                                         "both")] = None,
    site: Annotated[str | None, Query(max_length=128, description="only this site")] = None,
) -> list[AlarmOut]:
    """Threshold alarm episodes, newest first."""
    return [_alarm_out(a) for a in monitor.alarms(active=active, site=site)]


@router.get(f"{API}/districts")
def districts(monitor: MonitorDep) -> list[DistrictOut]:
    """District outlines for the map."""
    return [DistrictOut(id=d.id, name=d.name or d.id, outline=d.outline)
            for d in monitor.config.districts]


@pages.get("/environment", response_class=HTMLResponse, include_in_schema=False)
def one_map_page() -> HTMLResponse:
    """The one-map page."""
    return page("environment.html")


def install(app: FastAPI, monitor: EnvironmentMonitor, dependencies: list[Any] | None = None,
            ) -> None:
    """Attach the monitor, the data routes (behind `dependencies`) and the page to the app."""
    app.state.environment = monitor
    app.include_router(router, dependencies=dependencies or [])
    app.include_router(pages)
