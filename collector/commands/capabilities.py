"""What a device can be commanded to do, and whether the caller may: the device page's panel.

One read of the device row and its profile gives the operations of `devices.commands.OPS`
that apply to the device's kind, each with the arguments it takes and their bounds, and the
profile's writable points with their bounds, allowed values and whether they need a
confirmation. The server still judges every command when it is issued; this only lets a form
offer what would be accepted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import sqlalchemy as sa
from pydantic import BaseModel, Field

from collector.auth import Principal
from collector.clock import iso
from collector.commands import policy
from collector.schema import devices as device_table
from collector.schema import gateways as gateway_table
from devices.commands import (
    HISTORY_CNS,
    MAX_HISTORY_MS,
    OPS,
    PARKING_NODE,
    RTD_INTERVAL_S,
    STATION_PARAMS,
)
from devices.modbus.codec import Point
from devices.parking import SETTINGS
from devices.profiles import ProfileError, load_profile
from devices.quantities import QUANTITIES, ValueKind

Scalar = float | int | bool
SiteOf = Callable[[str, str], str]  # (device, gateway) -> site id
ArgType = Literal["integer", "time", "choice", "choices"]


class ArgOut(BaseModel):
    """One argument of an operation: its name, type and bounds."""

    name: str = Field(description="the argument's name in `args`")
    type: ArgType = Field(description="integer, time (epoch ms or ISO 8601 UTC), choice (one "
                                      "of `choices`) or choices (some of `choices`)")
    required: bool = Field(description="the operation needs it")
    minimum: float | None = Field(default=None, description="integer: the smallest value accepted")
    maximum: float | None = Field(default=None, description="integer: the largest value accepted")
    choices: dict[str, str] = Field(default_factory=dict,
                                    description="choice(s): value -> what it means")
    description: str = Field(default="", description="what it does")


class OpOut(BaseModel):
    """An operation that applies to the device."""

    op: str = Field(description="the operation's name (POST .../commands `op`)")
    summary: str = Field(description="what it does")
    args: list[ArgOut] = Field(description="the arguments it takes")
    args_known: bool = Field(description="false: the arguments are not described here; the "
                                         "server checks whatever `args` are given")
    rule: str = Field(default="", description="a rule across arguments the form should say")


class WritablePointOut(BaseModel):
    """A point of the device's profile that may be written."""

    point: str = Field(description="canonical quantity")
    type: str = Field(description="number, integer, bool or enum")
    unit: str = Field(description="canonical unit (docs/data-model.md)")
    minimum: float | None = Field(description="the smallest value accepted")
    maximum: float | None = Field(description="the largest value accepted")
    allowed: list[Scalar] = Field(description="the only values accepted (empty: any in range)")
    labels: dict[str, str] = Field(description="enum: code -> label")
    dangerous: bool = Field(description="a write waits for a second, confirming step")


class CapabilitiesOut(BaseModel):
    """A device, what it may be commanded to do, and whether the caller may command it."""

    device: str = Field(description="device id")
    kind: str = Field(description="device kind (the profile's kind, or parking_node)")
    profile: str = Field(description="device profile ('' for a node reporting without one)")
    gateway: str = Field(description="the gateway that owns the device")
    gateway_state: str = Field(description="online, offline or unknown")
    site: str = Field(description="the site the device belongs to ('' when not known)")
    unit: str = Field(description="the unit responsible for it ('' when none)")
    last_seen: str | None = Field(description="when it last reported (ISO 8601 UTC)")
    may_command: bool = Field(description="the caller may issue commands to this device")
    why_not: str = Field(description="why the caller may not ('' when it may)")
    ops: list[OpOut] = Field(description="the operations that apply to the device")
    points: list[WritablePointOut] = Field(description="its writable points (write)")
    profile_problem: str = Field(description="the profile is not known here ('' when it is)")
    max_ttl_s: float = Field(description="the longest ttl_s accepted")
    confirm_within_s: float = Field(description="a dangerous command not confirmed by then "
                                                "expires")


class NoSuchDevice(LookupError):
    """The device has never reported."""


def _time(name: str, required: bool, what: str) -> ArgOut:
    return ArgOut(name=name, type="time", required=required, description=what)


# Argument schemas of the operations of devices.commands.OPS (their checks are the judges).
ARGS: dict[str, tuple[list[ArgOut], str]] = {
    "write": ([], ""),
    "set_time": ([_time("time", False, "leave empty to send the gateway's synchronised "
                        "clock")], ""),
    "read_params": ([ArgOut(name="params", type="choices", required=False,
                            choices={p: f"CN {cn}" for p, cn in STATION_PARAMS.items()},
                            description="what to read (default: all)")], ""),
    "request_history": ([ArgOut(name="cn", type="choice", required=True,
                                choices=dict(HISTORY_CNS), description="which data"),
                         _time("begin", True, "from (UTC)"), _time("end", True, "to (UTC)")],
                        f"begin <= end, at most {MAX_HISTORY_MS // 86_400_000} days apart"),
    "set_rtd_interval": ([ArgOut(name="rtd_interval", type="integer", required=True,
                                 minimum=RTD_INTERVAL_S[0], maximum=RTD_INTERVAL_S[1],
                                 description="seconds between real-time uploads (CN 1062)")],
                         ""),
    "configure": ([ArgOut(name=name, type="integer", required=False, minimum=lo, maximum=hi)
                   for name, (_code, lo, hi) in SETTINGS.items()],
                  "at least one setting; leave_mg must stay below enter_mg"),
    "recalibrate": ([], "the bay must be empty"),
}


def writable_point(p: Point) -> WritablePointOut:
    """A profile point's write rules as the panel shows them."""
    assert p.write is not None
    q = QUANTITIES.get(p.quantity)
    labels = {str(code): label for code, label in (p.enum or (q.labels if q else {})).items()}
    return WritablePointOut(point=p.quantity, type=(q.kind if q else ValueKind.NUMBER).value,
                            unit=q.unit if q else "", minimum=p.write.minimum,
                            maximum=p.write.maximum, allowed=list(p.write.allowed),
                            labels=labels, dangerous=p.write.dangerous)


def applicable_ops(kind: str, writable: bool) -> list[OpOut]:
    """The operations of the table that apply to a device of `kind`."""
    out = []
    for name, spec in OPS.items():
        if spec.kinds is None and not writable:  # write: only with writable points
            continue
        if spec.kinds is not None and kind not in spec.kinds:
            continue
        args, rule = ARGS.get(name, ([], ""))
        out.append(OpOut(op=name, summary=spec.summary, args=args, args_known=name in ARGS,
                         rule=rule))
    return out


def capabilities(engine: sa.Engine, who: Principal, device: str,
                 unit_of: Callable[[str, str], str], site_of: SiteOf | None,
                 max_ttl_s: float, confirm_within_s: float) -> dict[str, Any]:
    """What `device` may be commanded to do, and whether `who` may (NoSuchDevice if unknown)."""
    d, g = device_table.c, gateway_table.c
    with engine.connect() as conn:
        row = conn.execute(sa.select(d.gateway_id, d.kind, d.profile, d.last_seen, g.state)
                           .select_from(device_table.outerjoin(
                               gateway_table, g.gateway_id == d.gateway_id))
                           .where(d.device_id == device)).first()
    if row is None:
        raise NoSuchDevice(device)
    gateway, problem, points = str(row.gateway_id), "", []
    kind = PARKING_NODE if not row.profile else str(row.kind)
    if row.profile:
        try:
            profile = load_profile(row.profile)
            kind = profile.kind
            points = [writable_point(p) for p in profile.points if p.write is not None]
        except ProfileError:
            problem = f"profile {row.profile!r} is not known here: no commands"
    unit = unit_of(device, gateway)
    why = policy.refusal(who.role.value, who.unit, unit) or ""
    return {"device": device, "kind": kind, "profile": row.profile or "", "gateway": gateway,
            "gateway_state": row.state or "unknown",
            "site": site_of(device, gateway) if site_of else "", "unit": unit,
            "last_seen": iso(row.last_seen), "may_command": not why, "why_not": why,
            "ops": [] if problem else applicable_ops(kind, bool(points)), "points": points,
            "profile_problem": problem, "max_ttl_s": max_ttl_s,
            "confirm_within_s": confirm_within_s}
