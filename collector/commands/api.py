"""REST API of device commands: issue, confirm, follow and audit writes to field devices.

Ops and admin tokens command every device; a crew token (a maintenance company's unit) only
the devices of the sites its unit is responsible for (`[alarms.sites.<site>] unit`); a
technician token only the devices of a gateway being commissioned; others none. Each token
may issue `[commands] rate_per_min` commands a minute. A write to a point the profile marks
dangerous waits for `POST /api/v1/commands/{id}/confirm` by another token (four eyes).
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from collector.auth import Principal, Role, require
from collector.commands import capabilities as caps
from collector.commands.service import CommandError, CommandService
from devices.contract import DEVICE_ID_RE

router = APIRouter(prefix="/api/v1", tags=["commands"])
Commander = Annotated[Principal, Depends(require(Role.OPS, Role.CREW, Role.TECHNICIAN))]
DeviceId = Annotated[str, Path(max_length=128, pattern=DEVICE_ID_RE.pattern,
                                description="device id")]
CommandId = Annotated[str, Path(max_length=64, pattern=r"^[A-Za-z0-9_-]+$",
                                description="command id")]
Scalar = float | int | bool


class CommandIn(BaseModel):
    """A write to one point of a device (`point`, `value`), or an operation with arguments
    (`op`, `args`; docs/commands.md lists them)."""

    model_config = ConfigDict(extra="forbid")

    op: str = Field("write", pattern=r"^[a-z][a-z_]{0,31}$",
                    description="the operation: write, set_time, request_history, read_params,"
                                " configure, recalibrate")
    point: str | None = Field(None, max_length=64, pattern=r"^[a-z][a-z0-9_]{0,63}$",
                              description="write: canonical quantity of a writable point")
    value: Scalar | None = Field(None, description="write: canonical value (unit of "
                                                   "docs/data-model.md)")
    args: dict[str, Any] | None = Field(None, max_length=16,
                                        description="the operation's arguments")
    ttl_s: float = Field(60.0, ge=1, le=7 * 86400,
                         description="seconds until it expires; never executed after")
    key: str | None = Field(None, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$",
                            description="idempotency key: the same key gives the same command")
    wait_s: float = Field(0.0, ge=0, le=60, description="wait this long for a final status")


class CommandOut(BaseModel):
    """A command and where it stands."""

    id: str = Field(description="command id")
    device: str = Field(description="target device")
    gateway: str = Field(description="the gateway that owns the device")
    op: str = Field(description="operation (write, set_time, request_history, read_params, "
                                "configure, recalibrate)")
    args: dict[str, Any] = Field(description="the operation's arguments, canonical")
    point: str | None = Field(description="canonical quantity written")
    value_written: Scalar | None = Field(description="value asked for")
    issuer: str = Field(description="token name of who issued it")
    issued: int = Field(description="issued at, ms since the epoch")
    expires: int = Field(description="never executed at or after this time (ms)")
    dangerous: bool = Field(description="the profile marks the point dangerous (two steps)")
    confirmed_by: str | None = Field(description="who confirmed a dangerous command")
    status: str = Field(description="awaiting_confirmation, pending, sent, accepted, done, "
                                    "failed, expired, interrupted")
    reason: str = Field(description="machine-readable reason of a failure or refusal")
    message: str = Field(description="what happened, for people")
    value_read_back: Any = Field(description="done: the value read back after a write, what "
                                 "the station answered (time, interval, history frames), or a "
                                 "node's settings as it acknowledged them")
    sends: int = Field(description="times sent to the gateway")
    updated: int = Field(description="last change, ms since the epoch")


class AuditEntry(BaseModel):
    """One step of a command's life."""

    at: int = Field(description="ms since the epoch")
    who: str = Field(description="a token name, a gateway id, or collector")
    what: str = Field(description="issued, confirmed, sent, or a status")
    detail: dict[str, Any] = Field(description="what the step carried")


class CommandWithAudit(CommandOut):
    """A command with its audit trail."""

    audit: list[AuditEntry] = Field(description="every step, in order")


class CommandStats(BaseModel):
    """Counters of the command service."""

    counters: dict[str, int] = Field(description="issued, refused, sent, send failures, ...")
    broker_connected: bool = Field(description="the link to the broker is up")


def _service(request: Request) -> CommandService:
    service: CommandService = request.app.state.commands
    return service


Service = Annotated[CommandService, Depends(_service)]


def _http(exc: CommandError) -> HTTPException:
    headers = {"Retry-After": "60"} if exc.status == 429 else None
    return HTTPException(exc.status, {"reason": exc.reason, "message": str(exc)},
                         headers=headers)


@router.post("/devices/{device_id}/commands", status_code=202, response_model=CommandOut)
async def issue(device_id: DeviceId, body: CommandIn, who: Commander,
                service: Service) -> dict[str, Any]:
    """Issue a command; 202 with it (status awaiting_confirmation for dangerous points)."""
    try:
        out = await asyncio.to_thread(service.submit, who, device_id, body.point, body.value,
                                      body.ttl_s, body.key, op=body.op, args=body.args)
        if body.wait_s and out["status"] != "awaiting_confirmation":
            out = await asyncio.to_thread(service.wait, out["id"], body.wait_s)
    except CommandError as exc:
        raise _http(exc) from None
    return out


@router.get("/devices/{device_id}/commands", response_model=list[CommandOut])
async def of_device(device_id: DeviceId, who: Commander, service: Service,
                    limit: Annotated[int, Query(ge=1, le=1000, description="at most this many")]
                    = 100) -> list[dict[str, Any]]:
    """The device's commands, newest first."""
    try:
        return await asyncio.to_thread(service.of_device, who, device_id, limit)
    except CommandError as exc:
        raise _http(exc) from None


@router.get("/devices/{device_id}/commands/capabilities", response_model=caps.CapabilitiesOut)
async def capabilities(device_id: DeviceId, request: Request, service: Service,
                       who: Annotated[Principal, Depends(require(
                           Role.OPS, Role.CREW, Role.READER, Role.TECHNICIAN))],
                       ) -> dict[str, Any]:
    """The device, the operations and writable points it takes with their bounds, and
    whether the caller may command it (any role that reads devices may ask)."""
    try:
        return await asyncio.to_thread(
            caps.capabilities, service.engine, who, device_id, service.unit_of,
            getattr(request.app.state, "device_site_of", None), service.settings.max_ttl_s,
            service.settings.confirm_within_s)
    except caps.NoSuchDevice:
        raise HTTPException(404, {"reason": "unknown_device",
                                  "message": f"no device {device_id!r} has reported"}) from None


@router.get("/commands/stats", response_model=CommandStats)
async def stats(_who: Commander, service: Service) -> dict[str, Any]:
    """Counters of the command service (issued, refused, sent, bad replies, ...) and whether
    its broker link is up."""
    return {"counters": dict(service.counters),
            "broker_connected": service.channel.connected.is_set()}


@router.get("/commands/{command_id}", response_model=CommandWithAudit)
async def show(command_id: CommandId, who: Commander, service: Service) -> dict[str, Any]:
    """One command with its audit trail (who, when, what, result)."""
    try:
        return await asyncio.to_thread(service.get, command_id, who)
    except CommandError as exc:
        raise _http(exc) from None


@router.post("/commands/{command_id}/confirm", response_model=CommandOut)
async def confirm(command_id: CommandId, who: Commander, service: Service,
                  wait_s: Annotated[float, Query(ge=0, le=60, description="wait this long "
                                                 "for a final status")] = 0.0) -> dict[str, Any]:
    """Confirm a dangerous command (the second step); it is sent at once."""
    try:
        out = await asyncio.to_thread(service.confirm, who, command_id)
        if wait_s:
            out = await asyncio.to_thread(service.wait, command_id, wait_s)
    except CommandError as exc:
        raise _http(exc) from None
    return out
